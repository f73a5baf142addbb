"""A worker's taking of messages from a shared crawl's streams, as a consumer of their one group.

A take gives first what a stopped worker left (``XAUTOCLAIM``), then new messages
(``XREADGROUP``); after a command had to be sent again, it reads back instead what Redis holds
as this worker's, in case the lost reply was a take's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from civitai_spider.shared_crawl.connection import Connection

logger = logging.getLogger(__name__)

GROUP = "workers"
#: Seconds between two XAUTOCLAIM scans of one stream.
_CLAIM_SCAN_INTERVAL = 1.0
#: Pending entries read per XPENDING call when a worker reads back what it was given.
_PENDING_PAGE = 1000


class Consumer(Connection):
    """The consumer ``worker`` of the group ``GROUP`` on the streams pages and images."""

    def __init__(self, url: str, *, timeout: float, worker: str, claim_after: float) -> None:
        super().__init__(url, timeout=timeout)
        self.worker, self.claim_after = worker, claim_after
        self._claim_cursor = {"pages": "0-0", "images": "0-0"}
        self._last_claim_scan = {"pages": 0.0, "images": 0.0}
        #: Messages whose hand-on or finish is under way: this worker's in Redis until it is
        #: through, but no longer work the worker holds (see _take_back).
        self._acknowledging: set[str] = set()

    async def _take(self, stream: str, key: str, count: int) -> list[tuple[str, dict[str, str], int]]:
        """Up to ``count`` messages: first any a stopped worker left, then new ones.

        After a command had to be sent again, this worker's own pending messages instead (see
        :meth:`_take_back`), those it holds among them: the caller skips those.
        """
        if stream in self._take_back_due:
            self._take_back_due.discard(stream)  # set again if this take has to be sent again
            return await self._take_back(stream, key)
        taken: list[tuple[str, dict[str, str], int]] = []
        if time.monotonic() - self._last_claim_scan[stream] >= _CLAIM_SCAN_INTERVAL:
            self._last_claim_scan[stream] = time.monotonic()
            taken += await self._claim(stream, key, count)
        if len(taken) < count:
            # [[stream, [(id, fields), ...]]]: the list shape in redis-py's union of reply shapes.
            answer = cast(
                "list[list[Any]] | None",
                await self._call(
                    lambda: self.client.xreadgroup(GROUP, self.worker, {key: ">"}, count=count - len(taken))
                ),
            )
            for _, messages in answer or []:
                taken += [(message_id, fields, 1) for message_id, fields in messages if fields]
        return taken

    async def _take_back(self, stream: str, key: str) -> list[tuple[str, dict[str, str], int]]:
        """Every message pending under this worker's name in the stream ``key``, with its deliveries.

        An XREADGROUP or XAUTOCLAIM whose reply was lost (the connection broke after Redis ran
        it: a restart) gave this worker messages it never saw; sent again, it skips them, and
        they would wait ``claim_after`` for a claim scan, the crawl idle meanwhile. XPENDING
        then XRANGE, not XREADGROUP with id 0: reading the history counts one more delivery of
        each message (Redis 7), those this worker is working on too. The fields are read last,
        so that a message handed on or finished meanwhile, deleted, is not returned; nor is one
        whose hand-on or finish is under way: the worker forgets an image once its finish
        starts, and after a reconnection that finish may still be retrying while this reads.
        """
        entries: list[dict[str, Any]] = []
        start = "-"
        while True:
            # [{message_id, consumer, time_since_delivered, times_delivered}], str values.
            part = cast(
                "list[dict[str, Any]]",
                await self._call(
                    lambda start=start: self.client.xpending_range(
                        key, GROUP, start, "+", _PENDING_PAGE, self.worker
                    )
                ),
            )
            entries += part
            if len(part) < _PENDING_PAGE:
                break
            start = "(" + part[-1]["message_id"]  # exclusive
        if not entries:
            return []

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipeline:
                for entry in entries:
                    pipeline.xrange(key, entry["message_id"], entry["message_id"])
                return await pipeline.execute()

        answers = await self._call(read)
        taken = [
            (message_id, fields, int(entry["times_delivered"]))
            for entry, messages in zip(entries, answers, strict=True)
            for message_id, fields in messages
            if message_id not in self._acknowledging
        ]
        if taken:
            logger.info(
                "After a lost connection, read back the %d %s message(s) Redis holds as this worker's",
                len(taken),
                stream,
            )
        return taken

    async def _claim(self, stream: str, key: str, count: int) -> list[tuple[str, dict[str, str], int]]:
        # The scan goes on from where the last one stopped, so that over a few calls every
        # pending message is looked at, however long the list.
        next_start, claimed, _ = await self._call(
            lambda: self.client.xautoclaim(
                key,
                GROUP,
                self.worker,
                min_idle_time=int(self.claim_after * 1000),
                start_id=self._claim_cursor[stream],
                count=count,
            )
        )
        self._claim_cursor[stream] = next_start
        claimed = [(message_id, fields) for message_id, fields in claimed if fields]
        if not claimed:
            return []
        ids = [message_id for message_id, _ in claimed]
        pending = await self._call(
            lambda: self.client.xpending_range(key, GROUP, min=min(ids), max=max(ids), count=len(ids) + 100)
        )
        deliveries = {entry["message_id"]: int(entry["times_delivered"]) for entry in pending}
        logger.info(
            "Took over %d %s message(s) that a stopped or stalled worker held for over %g s",
            len(claimed),
            stream,
            self.claim_after,
        )
        return [(message_id, fields, deliveries.get(message_id, 2)) for message_id, fields in claimed]

    @contextmanager
    def _acknowledging_message(self, message_id: str) -> Iterator[None]:
        self._acknowledging.add(message_id)
        try:
            yield
        finally:
            self._acknowledging.discard(message_id)
