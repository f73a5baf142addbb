"""Tests of :class:`IdLookupMiddleware`: one id store lookup per API page, after its next request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import TextResponse

from civitai_spider.items import CivitaiImage
from civitai_spider.middlewares.id_lookup import IdLookupMiddleware
from civitai_spider.stores.base import StoreError
from tests.support.crawls import project_crawler


class RecordingIds:
    """An id store that records the lookups it is asked for, in order with what was yielded."""

    def __init__(self, events: list[Any], fail: bool = False) -> None:
        self.events, self.fail = events, fail

    async def prefetch(self, ids: Sequence[int]) -> None:
        self.events.append(("prefetch", list(ids)))
        if self.fail:
            raise StoreError("Redis redis://127.0.0.1:1/0: Connection refused")


def page_output(events: list[Any], fail: bool = False) -> list[Any]:
    middleware = IdLookupMiddleware(project_crawler())
    middleware.ids = RecordingIds(events, fail)  # type: ignore[assignment]
    next_page = Request("http://127.0.0.1/api/v1/images?cursor=2")
    items = [
        CivitaiImage.from_api({"id": image_id, "url": f"http://127.0.0.2/{image_id}.jpeg"})
        for image_id in (7, 8)
    ]

    async def callback_output() -> AsyncIterator[Any]:
        yield next_page
        for item in items:
            yield item

    async def run() -> list[Any]:
        response = TextResponse("http://127.0.0.1/api/v1/images", body=b"{}")
        output = []
        async for element in middleware.process_spider_output(response, callback_output()):
            events.append(("yield", element))
            output.append(element)
        return output

    return asyncio.run(run())


def test_one_lookup_of_every_id_of_the_page_after_its_next_request() -> None:
    events: list[Any] = []

    output = page_output(events)

    assert [kind for kind, _ in events] == ["yield", "prefetch", "yield", "yield"]
    assert isinstance(events[0][1], Request)
    assert events[1] == ("prefetch", [7, 8])
    assert [element.id for element in output[1:]] == [7, 8]


@pytest.mark.parametrize("fail", [False, True])
def test_every_element_goes_on_even_when_the_store_fails(fail: bool) -> None:
    # A failed lookup is only a missed shortcut: each item asks again in the pipeline.
    assert len(page_output([], fail=fail)) == 3
