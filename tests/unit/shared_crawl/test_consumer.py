"""Tests of :mod:`civitai_spider.shared_crawl.consumer`, how a worker takes messages, on a real Redis.

Each test drives :class:`SharedCrawl` views (workers) of one crawl by hand: take over what
another held, read back what a lost reply gave, and not what is being acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import redis

from civitai_spider.shared_crawl.crawl import SharedCrawl, crawl_digest
from tests.support.shared_views import DEFINITION, FIRST_PAGES, crawl, hand_on, run


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
