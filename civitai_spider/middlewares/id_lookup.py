"""Ask the id store about every image of an API page at once, before the page's items go on.

The pipelines then check the items one by one (:mod:`civitai_spider.pipelines.already_downloaded`),
and, with Redis, find each answer already there: one round trip per page instead of one per
item, whatever the number of items processed at once (``CONCURRENT_ITEMS``). A store that
answers from memory (the ID file) ignores the lookup.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter, is_item
from scrapy import Request

from civitai_spider.stores import stores_of

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class IdLookupMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.ids = stores_of(crawler).ids

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Request | Any]:
        # A page is parsed whole before its first item leaves the callback anyway.
        items = []
        async for element in result:
            if is_item(element):
                items.append(element)
            else:
                yield element  # the next page's request goes out before the lookup, not after
        ids = [image_id for image_id in map(_id_of, items) if isinstance(image_id, int)]
        if ids:
            try:
                await self.ids.prefetch(ids)
            except OSError as error:
                # Each item asks again in the pipeline, and fails there with the reason.
                logger.debug("Looking up the ids of %s failed: %s", response.url, error)
        for item in items:
            yield item


def _id_of(item: Any) -> Any:
    return ItemAdapter(item).get("id")
