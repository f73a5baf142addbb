"""Tests of :mod:`civitai_spider.shared_crawl.crawl`, the Redis side of a shared crawl, on a real Redis.

Each test drives one or two :class:`SharedCrawl` views (two workers) of one crawl by hand:
join, take, hand on, finish, done; then reads what Redis holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import redis

from civitai_spider.shared_crawl.crawl import PageMessage, SharedCrawl, SharedCrawlError, crawl_digest
from tests.support.servers import free_ports
from tests.support.workers import dead_pid

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


def stats(url: str, digest: str, run_number: int = 1) -> dict[str, int]:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return {k: int(v) for k, v in client.hgetall(f"test:crawl:{digest}:{run_number}:stats").items()}


def test_the_first_worker_seeds_one_page_per_chain_and_the_next_joins(redis_url: str) -> None:
    async def work(first: SharedCrawl, second: SharedCrawl) -> Any:
        seeded = [await first.join(FIRST_PAGES), await second.join(FIRST_PAGES)]
        pages = await first.take_pages(10)
        return seeded, pages, await second.take_pages(10)

    seeded, pages, left = run(redis_url, work, workers=2)
    assert seeded == [True, False]
    assert [(page.chain, page.step, page.url) for page in pages] == [
        ("a", 0, FIRST_PAGES["a"]),
        ("b", 0, FIRST_PAGES["b"]),
    ]
    assert left == []  # each message goes to one worker


def test_a_hand_on_queues_new_images_once_and_the_chains_next_page(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join(FIRST_PAGES)
        a, b = await view.take_pages(2)
        first = await hand_on(view, a, images=[1, 2, 2], next_url="http://x/?cursor=c1")
        # Chain b lists 1 again: the id is queued once per walk, crawl-wide.
        second = await hand_on(view, b, images=[1, 3, 2**33 + 5], next_url=None)
        return first, second, await view.take_pages(5), await view.take_images(10)

    first, second, pages, images = run(redis_url, work)
    assert (first.accepted, first.queued, first.duplicates, first.end) == (True, 2, 1, "")
    assert (second.accepted, second.queued, second.duplicates, second.end) == (True, 2, 1, "end")
    [page] = pages
    assert (page.chain, page.step, page.url) == ("a", 1, "http://x/?cursor=c1")
    assert [json.loads(image.record)["id"] for image in images] == [1, 2, 3, 2**33 + 5]
    counted = stats(redis_url, crawl_digest(DEFINITION))
    assert counted == {"items_seen": 6, "queued": 4, "dropped/duplicate": 2, "pages": 2}


def test_the_next_page_says_whether_the_page_before_it_was_full(redis_url: str) -> None:
    # An empty page after a full one is asked again (the spider): the worker that takes the
    # next page must know, whichever worker handed the full one on.
    async def work(view: SharedCrawl) -> Any:
        await view.join(FIRST_PAGES)
        a, b = await view.take_pages(2)
        await hand_on(view, a, images=[1], next_url="http://x/?cursor=a1", full=True)
        await hand_on(view, b, images=[2], next_url="http://x/?cursor=b1", full=False)
        return a, b, await view.take_pages(2)

    a, b, following = run(redis_url, work)
    assert (a.after_full, b.after_full) == (False, False)  # a chain's first page follows none
    assert {page.chain: page.after_full for page in following} == {"a": True, "b": False}


def test_a_page_taken_over_is_handed_on_once_so_the_chain_never_forks(redis_url: str) -> None:
    async def work(slow: SharedCrawl, fast: SharedCrawl) -> Any:
        await slow.join(FIRST_PAGES)
        await fast.join(FIRST_PAGES)
        pages = await slow.take_pages(2)
        await asyncio.sleep(0.3)
        fast._last_claim_scan = {"pages": 0.0, "images": 0.0}
        taken_over = await fast.take_pages(2)  # the slow worker held them past claim_after
        results = [
            await hand_on(fast, page, images=[page.step + 10], next_url=f"http://x/?cursor={page.chain}1")
            for page in taken_over
        ]
        late = [await hand_on(slow, page, images=[99], next_url="http://x/?cursor=forked") for page in pages]
        return taken_over, results, late, await fast.take_pages(5)

    taken_over, results, late, pages = run(redis_url, work, workers=2, claim_after=0.2)
    assert [page.deliveries for page in taken_over] == [2, 2]
    assert all(result.accepted for result in results)
    assert [result.accepted for result in late] == [False, False]
    assert sorted(page.url for page in pages) == ["http://x/?cursor=a1", "http://x/?cursor=b1"]
    assert stats(redis_url, crawl_digest(DEFINITION))["queued"] == 1  # image 99 was never queued


def test_a_cursor_given_twice_ends_the_chain(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join({"a": FIRST_PAGES["a"]})
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[], next_url="http://x/?cursor=c1")
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[], next_url="http://x/?cursor=c2")
        [page] = await view.take_pages(1)
        looped = await hand_on(view, page, images=[], next_url="http://x/?cursor=c1")
        return looped, await view.take_pages(1), await view.chain_ends()

    looped, pages, ends = run(redis_url, work)
    assert (looped.accepted, looped.end) == (True, "cursor_loop")
    assert pages == []
    assert ends == {"a": "cursor_loop"}


def test_an_image_is_counted_once_even_if_two_workers_finish_it(redis_url: str) -> None:
    async def work(first: SharedCrawl, second: SharedCrawl) -> Any:
        await first.join({"a": FIRST_PAGES["a"]})
        await second.join({"a": FIRST_PAGES["a"]})
        [page] = await first.take_pages(1)
        await hand_on(first, page, images=[7], next_url=None)
        [image] = await first.take_images(1)
        return [
            await first.finish_image(image.message_id, ["saved", "saved/image"]),
            await second.finish_image(image.message_id, ["dropped/already_downloaded"]),
            await first.queued_images(),
        ]

    assert run(redis_url, work, workers=2) == [True, False, 0]
    counted = stats(redis_url, crawl_digest(DEFINITION))
    assert (counted["saved"], counted.get("dropped/already_downloaded")) == (1, None)


def test_the_walk_is_done_when_every_chain_ended_and_every_image_is_finished(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        done = [await view.join({"a": FIRST_PAGES["a"]}) and await view.is_done()]
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[7], next_url=None)
        done.append(await view.is_done())  # the image is queued
        [image] = await view.take_images(1)
        done.append(await view.is_done())  # and now in flight
        await view.finish_image(image.message_id, ["saved"])
        done.append(await view.is_done())
        return done

    assert run(redis_url, work) == [False, False, False, True]
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert not client.keys("test:crawl:*:queued:*")  # the dedup bitmaps go with the walk
        assert client.hget(f"test:crawl:{crawl_digest(DEFINITION)}:1:state", "status") == "done"


def test_after_a_walk_is_done_the_same_crawl_starts_a_new_walk(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join({"a": FIRST_PAGES["a"]})
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[7], next_url=None)
        [image] = await view.take_images(1)
        await view.finish_image(image.message_id, ["saved"])
        assert await view.is_done()
        again = await view.join({"a": FIRST_PAGES["a"]})
        return again, view.run, await view.take_pages(1)

    seeded, run_number, pages = run(redis_url, work)
    assert (seeded, run_number) == (True, 2)
    assert [(page.step, page.url) for page in pages] == [(0, FIRST_PAGES["a"])]


def test_an_image_taken_over_too_often_is_marked_as_such(redis_url: str) -> None:
    async def work(*views: SharedCrawl) -> Any:
        for view in views:
            await view.join({"a": FIRST_PAGES["a"]})
        [page] = await views[0].take_pages(1)
        await hand_on(views[0], page, images=[7], next_url=None)
        deliveries = []
        for view in views:
            view._last_claim_scan = {"pages": 0.0, "images": 0.0}
            [image] = await view.take_images(1)
            deliveries.append(image.deliveries)
            await asyncio.sleep(0.15)
        return deliveries

    assert run(redis_url, work, workers=4, claim_after=0.1) == [1, 2, 3, 4]


def test_what_a_dead_worker_of_this_host_held_is_taken_at_once(redis_url: str) -> None:
    dead = f"{socket.gethostname()}:{dead_pid()}:abc123"
    elsewhere = "another-host:1:abc123"  # pid 1 means nothing there

    async def work(restarted: SharedCrawl) -> Any:
        holders = [crawl(redis_url, name) for name in (dead, elsewhere)]
        try:
            await holders[0].join(FIRST_PAGES)
            await holders[1].join(FIRST_PAGES)
            await holders[0].take_pages(1)
            await holders[1].take_pages(1)
        finally:
            for holder in holders:
                await holder.close()
        await restarted.join(FIRST_PAGES)
        released = await restarted.release_dead_local_workers()
        return released, await restarted.take_pages(5)

    released, pages = run(redis_url, work)  # claim_after is 300 s
    assert released == 1
    assert [(page.chain, page.deliveries) for page in pages] == [("a", 2)]  # not the other host's


class ReplyLoser:
    """A TCP proxy to Redis that loses the reply to one XREADGROUP: it breaks the connection
    instead of passing the reply on, as a Redis restart between a command and its reply does."""

    def __init__(self, redis_url: str) -> None:
        target = urlsplit(redis_url)
        self.target = (target.hostname or "", target.port or 6379)
        #: Whether the next XREADGROUP's reply is to be lost.
        self.armed = False
        self.lost = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        """Stop listening and wait for the connections to end (their client closed first)."""
        if self._server is not None:
            self._server.close()
        await asyncio.wait_for(asyncio.gather(*self._connections), 5)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        redis_reader, redis_writer = await asyncio.open_connection(*self.target)
        lose_next_reply = False

        async def up() -> None:
            nonlocal lose_next_reply
            while data := await client_reader.read(65536):
                if self.armed and b"XREADGROUP" in data:
                    self.armed, lose_next_reply = False, True
                redis_writer.write(data)
                await redis_writer.drain()
            redis_writer.close()

        async def down() -> None:
            while data := await redis_reader.read(65536):
                if lose_next_reply:  # Redis ran the command: its messages are the worker's now
                    self.lost += 1
                    client_writer.transport.abort()
                    redis_writer.close()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        try:
            await asyncio.gather(up(), down(), return_exceptions=True)
        finally:
            for writer in (client_writer, redis_writer):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()


def test_messages_whose_reply_was_lost_come_with_the_next_take(redis_url: str) -> None:
    # Redis ran a take (XREADGROUP) whose reply the connection's reset lost: both pages are
    # pending under this worker's name, which never saw them. Sent again, the take finds
    # nothing new; unless the next take reads them back, they wait for claim_after (300 s),
    # every worker idle and the walk not done.
    loser = ReplyLoser(redis_url)

    async def main() -> Any:
        view = crawl(await loser.start(), "worker-0")
        try:
            await view.join(FIRST_PAGES)
            loser.armed = True
            return [await view.take_pages(10) for _ in range(3)]
        finally:
            await view.close()
            await loser.close()

    lost_take, next_take, after = asyncio.run(main())
    assert loser.lost == 1 and lost_take == []
    assert [(page.chain, page.step, page.deliveries) for page in next_take] == [("a", 0, 1), ("b", 0, 1)]
    assert after == []  # read back once, not at every take
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        pages = f"test:crawl:{crawl_digest(DEFINITION)}:1:pages"
        pending = client.xpending_range(pages, "workers", "-", "+", 10)
    # Read back without counting a delivery (XREADGROUP with id 0 would): if this worker dies
    # now, its successor sees them delivered once, not twice.
    assert [(entry["consumer"], entry["times_delivered"]) for entry in pending] == [("worker-0", 1)] * 2


def test_an_image_whose_finish_is_under_way_is_not_read_back(redis_url: str) -> None:
    # The worker forgets an image once its finish starts; after a reconnection the finish
    # may still be on its way (retrying) when the next take reads back this worker's pending
    # messages: that image is not work to do again.
    async def work(view: SharedCrawl) -> Any:
        await view.join({"a": FIRST_PAGES["a"]})
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[7, 8], next_url=None)
        finished, held = await view.take_images(2)
        with redis.Redis.from_url(redis_url) as side:
            side.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # scripts wait, reads go on
            try:
                finish = asyncio.ensure_future(view.finish_image(finished.message_id, ["saved"]))
                await asyncio.sleep(0.1)
                view._take_back_due.add("images")  # as after a reconnection
                taken_back = await view.take_images(10)
            finally:
                side.execute_command("CLIENT", "UNPAUSE")
        return held, taken_back, await finish

    held, taken_back, finished = run(redis_url, work)
    assert [image.message_id for image in taken_back] == [held.message_id]
    assert finished


def test_redis_out_of_reach_for_longer_than_the_timeout_raises(caplog: pytest.LogCaptureFixture) -> None:
    [port] = free_ports(1)
    started = time.monotonic()
    with pytest.raises(SharedCrawlError, match=r"did not answer for 1 s"), caplog.at_level("WARNING"):
        run(f"redis://127.0.0.1:{port}/0", lambda view: view.join(FIRST_PAGES), timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    assert "does not answer" in caplog.text and "retrying for up to 1 s" in caplog.text


def test_the_crawl_is_named_by_its_definition() -> None:
    assert crawl_digest({"a": 1, "b": [2]}) == crawl_digest({"b": [2], "a": 1})
    assert crawl_digest({"a": 1}) != crawl_digest({"a": 2})
