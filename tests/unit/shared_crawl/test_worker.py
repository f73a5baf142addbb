"""Tests of :mod:`civitai_spider.shared_crawl.worker`, one process's part in a shared crawl, on a real Redis.

No engine runs: each test builds a :class:`Worker` on a crawler with the project's settings
(and a stand-in engine) and a real :class:`SharedCrawl`, drives it by hand as
``work()`` and Scrapy would (join, hand a page on, hold its images, fire Scrapy's item
signals), then reads what Redis holds: the messages still pending, the crawl's stats hash.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from scrapy import signals
from scrapy.exceptions import CloseSpider

from civitai_spider import outcomes
from civitai_spider.extensions.stop import STOPPED_REASON, Stop
from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import DropImage
from civitai_spider.shared_crawl.consumer import GROUP
from civitai_spider.shared_crawl.crawl import SharedCrawl, crawl_digest
from civitai_spider.shared_crawl.messages import PageMessage
from civitai_spider.shared_crawl.worker import Worker
from tests.support.crawls import project_crawler
from tests.support.servers import RedisServer

T = TypeVar("T")
DEFINITION = {"api_url": "http://127.0.0.1:9/api/v1/images", "chains": {"a": {}}}
CHAINS = {"a": "http://127.0.0.1:9/api/v1/images?level=1"}
#: Stats a hand-on counts itself; the rest of the hash is the images' outcomes.
HAND_ON_COUNTS = {"items_seen", "queued", "pages"}


class _Engine:
    """What the worker asks of Scrapy's engine, without one running."""

    spider = None
    scraper = None

    def __init__(self) -> None:
        self.closed_for: list[str] = []

    def needs_backout(self) -> bool:
        return False

    async def close_spider_async(self, *, reason: str) -> None:
        self.closed_for.append(reason)


def new_worker(redis_url: str, tmp_path: Path, **options: Any) -> Worker:
    """A worker of the crawl :data:`DEFINITION` in ``redis_url`` (``options``: SharedCrawl's)."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)  # as the pipelines make it when the spider opens
    crawler = project_crawler(CIVITAI_SHARED_CRAWL=True, CIVITAI_REDIS_URL=redis_url, IMAGES_STORE=str(store))
    crawler.engine = _Engine()  # type: ignore[assignment]
    values = {"timeout": 5.0, "claim_after": 300.0, **options}
    return Worker(crawler, SharedCrawl(redis_url, "test", DEFINITION, worker="worker-0", **values))


def run(redis_url: str, tmp_path: Path, work: Callable[[Worker], Awaitable[T]], **options: Any) -> T:
    """Run ``work(worker)`` in a new event loop; the worker's Redis client closed after it."""

    async def main() -> T:
        worker = new_worker(redis_url, tmp_path, **options)
        try:
            return await work(worker)
        finally:
            await worker.crawl.close()

    return asyncio.run(main())


def record(image_id: int, media: str = "image") -> tuple[int, str]:
    return image_id, json.dumps({"id": image_id, "url": f"http://cdn/{image_id}.jpeg", "type": media})


async def page_handed_on(crawl: SharedCrawl, images: list[tuple[int, str]]) -> PageMessage:
    """Join the crawl, take its one page and hand it on with ``images``: the chain ends there."""
    await crawl.join(CHAINS)
    [page] = await crawl.take_pages(1)
    result = await crawl.hand_on(
        page,
        next_url=None,
        cursor_key=None,
        end="end",
        streak=0,
        full=False,
        counts={"items_seen": len(images)},
        images=images,
    )
    assert result.accepted
    return page


async def held_items(worker: Worker, images: list[tuple[int, str]]) -> list[CivitaiImage]:
    """Queue ``images`` and take them as ``work()`` does: their items held in ``worker.images``."""
    await page_handed_on(worker.crawl, images)
    items = []
    for message in await worker.crawl.take_images(len(images)):
        item = CivitaiImage.from_api(json.loads(message.record))
        worker.images[id(item)] = (message, item)
        items.append(item)
    return items


async def acknowledged(worker: Worker) -> None:
    """Wait for the acknowledgements the item signals started (Redis round trips)."""
    await asyncio.gather(*worker._acknowledgements)


def pending(redis_url: str) -> list[tuple[str, str]]:
    """(message id, consumer) of each image message taken but not acknowledged."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        entries = client.xpending_range(key("images"), GROUP, "-", "+", 100)
    return [(entry["message_id"], entry["consumer"]) for entry in entries]


def counted(redis_url: str) -> dict[str, int]:
    """The outcomes in the crawl's stats hash (without what the hand-on counted)."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        stats = client.hgetall(key("stats"))
    return {name: int(value) for name, value in stats.items() if name not in HAND_ON_COUNTS}


def key(name: str) -> str:
    return f"test:crawl:{crawl_digest(DEFINITION)}:1:{name}"


# --- acknowledgements -------------------------------------------------------------------


def _saved(worker: Worker, item: Any) -> None:
    worker.crawler.signals.send_catch_log(signal=signals.item_scraped, item=item, response=None, spider=None)


def _dropped(reason: str) -> Callable[[Worker, Any], None]:
    def drop(worker: Worker, item: Any) -> None:
        exception = DropImage(reason, f"dropped: {reason}")
        worker.crawler.signals.send_catch_log(
            signal=signals.item_dropped, item=item, response=None, exception=exception, spider=None
        )

    return drop


def _error(worker: Worker, item: Any) -> None:
    worker.crawler.signals.send_catch_log(
        signal=signals.item_error, item=item, response=None, failure=None, spider=None
    )


@pytest.mark.parametrize(
    ("media", "outcome", "expected"),
    [
        ("image", _saved, {"saved": 1, "saved/image": 1}),
        ("video", _saved, {"saved": 1, "saved/video": 1}),
        ("image", _dropped("too_small"), {"dropped/too_small": 1}),
        ("image", _dropped(outcomes.FAILED_REASON), {"failed": 1}),
        ("image", _error, {"failed": 1}),
    ],
    ids=["saved", "saved-video", "dropped", "dropped-as-failed", "item-error"],
)
def test_an_items_outcome_acknowledges_its_message_and_is_counted_in_redis(
    redis_url: str,
    tmp_path: Path,
    media: str,
    outcome: Callable[[Worker, Any], None],
    expected: dict[str, int],
) -> None:
    async def work(worker: Worker) -> Any:
        [item] = await held_items(worker, [record(7, media)])
        held = pending(redis_url)
        outcome(worker, item)
        await acknowledged(worker)
        return held, worker.images

    held, still_held = run(redis_url, tmp_path, work)
    assert [consumer for _, consumer in held] == ["worker-0"]
    assert pending(redis_url) == []
    assert counted(redis_url) == expected
    assert still_held == {}


def test_an_item_dropped_because_the_crawl_stopped_stays_pending_for_another_worker(
    redis_url: str, tmp_path: Path
) -> None:
    async def work(worker: Worker) -> Any:
        [item, other] = await held_items(worker, [record(7), record(8)])
        held = pending(redis_url)
        _dropped(STOPPED_REASON)(worker, item)
        _saved(worker, other)
        await acknowledged(worker)
        return held, worker.images

    held, still_held = run(redis_url, tmp_path, work)
    assert still_held == {}  # the worker lets go of it...
    assert pending(redis_url) == held[:1]  # ...but Redis keeps it, for whoever takes it over
    assert counted(redis_url) == {"saved": 1, "saved/image": 1}  # not counted as dropped


# --- giving up ----------------------------------------------------------------------------


def test_an_image_delivered_too_often_is_given_up_as_failed(redis_url: str, tmp_path: Path) -> None:
    async def work(worker: Worker) -> Any:
        await page_handed_on(worker.crawl, [record(7)])
        for n in range(3):  # three workers took it and stopped: delivered 1, 2, 3 times
            stopped = SharedCrawl(redis_url, "test", DEFINITION, timeout=5.0, claim_after=0.1, worker=f"w{n}")
            await stopped.join(CHAINS)
            [message] = await stopped.take_images(1)
            assert message.deliveries == n + 1
            await stopped.close()
            await asyncio.sleep(0.15)
        # The fourth delivery is given up; then nothing is left and the crawl is done.
        yielded: list[Any] = []
        try:
            async with asyncio.timeout(5):
                async for element in worker.work(CHAINS, _no_page_request):
                    yielded.append(element)
        except TimeoutError:
            pass  # the walk never ended: the assertions below say what is left
        finally:
            for task in (worker._heartbeat, worker._closing_watch):
                if task is not None:
                    task.cancel()
        return yielded

    yielded = run(redis_url, tmp_path, work, claim_after=0.1)
    assert yielded == []
    assert pending(redis_url) == []
    assert counted(redis_url) == {"failed": 1}
    lines = (tmp_path / "store" / "error_log.txt").read_text().splitlines()
    assert [line.split("\t")[1:] for line in lines] == [
        ["7", "http://cdn/7.jpeg", "given up after 4 deliveries: the workers holding it stopped"]
    ]


def test_a_worker_does_not_take_back_what_it_still_holds(redis_url: str, tmp_path: Path) -> None:
    async def work(worker: Worker) -> Any:
        [item] = await held_items(worker, [record(7)])  # in the pipelines, a slow download
        await asyncio.sleep(0.3)  # held longer than claim_after
        yielded: list[Any] = []
        try:
            async with asyncio.timeout(1.5):  # claimed back at each scan for stalled work
                async for element in worker.work(CHAINS, _no_page_request):
                    yielded.append(element)
        except TimeoutError:
            pass
        finally:
            for task in (worker._heartbeat, worker._closing_watch):
                if task is not None:
                    task.cancel()
        return item, yielded, list(worker.images.values())

    item, yielded, held = run(redis_url, tmp_path, work, claim_after=0.2)
    assert yielded == []  # not downloaded a second time, not given up
    assert [held_item for _, held_item in held] == [item]
    assert counted(redis_url) == {}


# --- Redis gone ---------------------------------------------------------------------------


def test_losing_redis_logs_one_error_and_stops_the_crawl_once_as_redis_error(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def work(worker: Worker) -> Any:
        with caplog.at_level(logging.ERROR, logger="civitai_spider.shared_crawl.worker"):
            for n in range(3):  # the heartbeat, an acknowledgement, a hand-on...
                worker.stop_for_redis(f"failure {n}")
        await asyncio.sleep(0)  # the engine's close_spider_async runs
        return worker.crawler

    crawler = run(redis_url, tmp_path, work)
    errors = [r.getMessage() for r in caplog.records if r.name == "civitai_spider.shared_crawl.worker"]
    assert errors == ["Stopping: failure 0"]
    stop = crawler.get_extension(Stop)
    assert stop is not None and stop.reason == outcomes.REDIS_ERROR
    assert crawler.engine.closed_for == [outcomes.REDIS_ERROR]


def test_a_hand_on_without_redis_closes_the_spider_and_releases_the_page(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:

        async def work(worker: Worker) -> Any:
            await worker.crawl.join(CHAINS)
            [page] = await worker.crawl.take_pages(1)
            worker.pages[page.message_id] = page  # as work() does when it yields the request
            server.stop()
            with pytest.raises(CloseSpider) as raised:
                await worker.hand_on(
                    page,
                    next_url="http://x/?cursor=c1",
                    cursor_key="c1",
                    end=None,
                    streak=0,
                    full=False,
                    counts={},
                    images=[record(7)],
                )
            return raised.value, worker.pages, worker.crawler

        error, pages, crawler = run(server.url, tmp_path, work, timeout=0.5)
    assert error.reason == outcomes.REDIS_ERROR
    assert pages == {}
    stop = crawler.get_extension(Stop)
    assert stop is not None and stop.reason == outcomes.REDIS_ERROR


def _no_page_request(page: PageMessage) -> Any:
    raise AssertionError(f"no page is asked in this test, not {page}")
