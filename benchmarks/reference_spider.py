"""The benchmark's reference crawls, over the same API pages and image urls as ours.

``-a mode=discard``: bare Scrapy, downloading every image and throwing the bytes away, the
ceiling for any pipeline. ``-a mode=stock``: Scrapy's stock ImagesPipeline saving them.
Run with ``scrapy runspider`` outside this project, so that only Scrapy's defaults and the
benchmark's ``-s`` settings apply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import scrapy
from scrapy.http import Response, TextResponse


class ReferenceSpider(scrapy.Spider):
    name = "reference"

    def __init__(self, api_url: str, mode: str = "discard", limit: str = "200", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_url, self.mode, self.limit = api_url, mode, int(limit)

    async def start(self) -> AsyncIterator[scrapy.Request]:
        yield self._page(None)

    def _page(self, cursor: str | None) -> scrapy.Request:
        query: dict[str, Any] = {"limit": self.limit, "withMeta": "true"}
        if cursor is not None:
            query["cursor"] = cursor
        return scrapy.Request(
            f"{self.api_url}?{urlencode(query)}", callback=self.parse_page, dont_filter=True
        )

    def parse_page(self, response: Response) -> Iterator[Any]:
        assert isinstance(response, TextResponse)  # the API answers JSON
        page = response.json()
        cursor = page["metadata"].get("nextCursor")
        if cursor is not None:
            yield self._page(cursor)
        for item in page["items"]:
            if self.mode == "stock":
                yield {"id": item["id"], "image_urls": [item["url"]]}
            else:
                yield scrapy.Request(item["url"], callback=self.discard, dont_filter=True)

    def discard(self, response: Response) -> None:
        return None
