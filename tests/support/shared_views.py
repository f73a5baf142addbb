"""Views of one shared crawl in Redis (:class:`SharedCrawl` objects, one per worker) driven by
hand, for the tests of :mod:`civitai_spider.shared_crawl`'s Redis side."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from civitai_spider.shared_crawl.crawl import SharedCrawl
from civitai_spider.shared_crawl.messages import PageMessage

T = TypeVar("T")
DEFINITION = {"api_url": "http://127.0.0.1:9/api/v1/images", "chains": {"a": {}, "b": {}}}
FIRST_PAGES = {
    "a": "http://127.0.0.1:9/api/v1/images?level=1",
    "b": "http://127.0.0.1:9/api/v1/images?level=2",
}


def crawl(url: str, worker: str, **options: Any) -> SharedCrawl:
    values = {"timeout": 5.0, "claim_after": 300.0, **options}
    return SharedCrawl(url, "test", DEFINITION, worker=worker, **values)


def run(url: str, work: Callable[..., Awaitable[T]], workers: int = 1, **options: Any) -> T:
    """Run ``work(crawl, ...)`` with ``workers`` views of the crawl, in a new event loop."""

    async def main() -> T:
        views = [crawl(url, f"worker-{n}", **options) for n in range(workers)]
        try:
            return await work(*views)
        finally:
            for view in views:
                await view.close()

    return asyncio.run(main())


def record(image_id: int) -> tuple[int, str]:
    return image_id, json.dumps({"id": image_id, "url": f"http://cdn/{image_id}.jpeg"})


async def hand_on(
    view: SharedCrawl, page: PageMessage, *, images: list[int], next_url: str | None, **more: Any
):
    values: dict[str, Any] = {
        "cursor_key": None if next_url is None else next_url.rsplit("=", 1)[1],
        "end": None if next_url is not None else "end",
        "streak": 0,
        "full": False,
        "counts": {"items_seen": len(images)},
        **more,
    }
    return await view.hand_on(page, next_url=next_url, images=[record(i) for i in images], **values)
