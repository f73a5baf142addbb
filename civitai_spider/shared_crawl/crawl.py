"""A crawl shared by many workers, kept in Redis: its cursor chains and images as stream messages.

Redis Streams with one consumer group give what a shared crawl needs: a message read with
``XREADGROUP`` stays pending until its worker ``XACK``\\ s it, and ``XAUTOCLAIM`` hands one
that stayed pending longer than ``CIVITAI_REDIS_CLAIM_AFTER`` to a live worker. So a worker
that dies loses nothing: what it held is taken over, and only the glue below is ours.

Every step that changes the crawl is one Lua script, atomic in Redis (``scripts/<step>.lua``,
each saying what its keys and its one argument, a JSON object, are):

- *join*: the first worker of a crawl seeds it (one page message per chain); the others
  join it; once a walk is done, the next worker with the same arguments starts a new one.
- *hand on* a page: queue its images (each id once per walk, crawl-wide), put the chain's
  next page in the stream, acknowledge the page, count. It checks first that the chain is
  still at the step the worker took: a worker whose page was taken over meanwhile (it was
  too slow) hands on nothing, so a chain can never fork.
- *finish* an image: acknowledge it and count its outcome, once, even if two workers had it.
- *done*: nothing pending in either stream means every chain ended and every image is
  through; the walk is marked done.

Keys, with ``P`` the prefix (``CIVITAI_REDIS_PREFIX``), ``D`` a digest of the crawl's spider
arguments and API URL, and ``R`` the walk's number::

    P:crawls                    SET of D
    P:crawl:D                   HASH definition (JSON), run (R)
    P:crawl:D:R:state           HASH status (running, done), started, finished, chains (their order)
    P:crawl:D:R:chains          HASH chain -> JSON {pages, url, end}
    P:crawl:D:R:pages           STREAM one message per live chain: chain, step, url, streak, full
    P:crawl:D:R:images          STREAM one message per image to save: record (the API's JSON)
    P:crawl:D:R:stats           HASH crawl-wide counts (items_seen, saved, dropped/<reason>...)
    P:crawl:D:R:workers         HASH worker -> JSON heartbeat
    P:crawl:D:R:cursors         SET chain + cursor, for the loop check (deleted when done)
    P:crawl:D:R:queued:<n>      bitmaps of the ids queued in this walk, in chunks as the id
                                store's (CHUNK_BITS); deleted when done
    P:crawl:D:R:queued-chunks   SET of those bitmaps' keys (deleted when done)

Acknowledged messages are deleted, so a stream's length is its outstanding work. The scripts
name keys they build themselves: fine on one Redis server, not on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from civitai_spider.local_files import pid_alive
from civitai_spider.outcomes import CURSOR_LOOP
from civitai_spider.stores.redis_ids import CHUNK_BITS, CHUNK_MASK, safe_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

GROUP = "workers"
#: Deliveries of an image after which it is given up (failed, logged): a message whose
#: workers keep dying must not go round for ever.
MAX_DELIVERIES = 3
#: Seconds between two XAUTOCLAIM scans of one stream.
_CLAIM_SCAN_INTERVAL = 1.0
#: Seconds between two heartbeats of a worker (``scrapy civitai-status`` shows the last one).
HEARTBEAT_INTERVAL = 5.0
#: Pending entries read per XPENDING call when a worker reads back what it was given.
_PENDING_PAGE = 1000


def _script(name: str) -> str:
    """The Lua source of the step ``name``: ``scripts/<name>.lua``, package data (in the egg too)."""
    scripts = importlib.resources.files("civitai_spider.shared_crawl") / "scripts"
    return (scripts / f"{name}.lua").read_text(encoding="utf-8")


_JOIN, _HAND_ON, _FINISH, _DONE = (_script(name) for name in ("join", "hand_on", "finish", "done"))


class SharedCrawlError(OSError):
    """Redis stayed out of reach for longer than ``CIVITAI_REDIS_TIMEOUT``."""


@dataclass(frozen=True)
class PageMessage:
    """A chain's next page, as taken from the pages stream."""

    message_id: str
    chain: str
    step: int
    url: str
    streak: int
    #: Times it was delivered (1 unless it was taken over from a worker that stopped).
    deliveries: int = 1
    #: Whether the chain's page before it held ``limit`` items (an empty answer is asked again).
    after_full: bool = False


@dataclass(frozen=True)
class ImageMessage:
    message_id: str
    record: str
    deliveries: int = 1


@dataclass(frozen=True)
class HandOn:
    """What a hand-on did: ``accepted`` False when the page had been taken over meanwhile."""

    accepted: bool
    queued: int = 0
    duplicates: int = 0
    #: How the chain ended with this page ("" while it goes on).
    end: str = ""


def crawl_digest(definition: Mapping[str, Any]) -> str:
    """The crawl's name in Redis: the same arguments (and API) always give the same one."""
    text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def worker_name() -> str:
    """This process's consumer name: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SharedCrawl:
    """One walk of one crawl in Redis, seen by one worker (consumer ``worker``)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        definition: Mapping[str, Any],
        *,
        timeout: float,
        claim_after: float,
        worker: str | None = None,
    ) -> None:
        self.url, self.prefix, self.definition = url, prefix, dict(definition)
        self.digest = crawl_digest(definition)
        self.timeout, self.claim_after = timeout, claim_after
        self.worker = worker or worker_name()
        # Retries are ours (_call): a deadline of CIVITAI_REDIS_TIMEOUT, and a log line.
        self.client = redis.asyncio.Redis.from_url(
            url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=5,
            socket_timeout=30,
        )
        self._join = self.client.register_script(_JOIN)
        self._hand_on = self.client.register_script(_HAND_ON)
        self._finish = self.client.register_script(_FINISH)
        self._done = self.client.register_script(_DONE)
        self.run = 0
        self._claim_cursor = {"pages": "0-0", "images": "0-0"}
        self._last_claim_scan = {"pages": 0.0, "images": 0.0}
        self._unreachable_since: float | None = None
        #: Streams whose next take reads back what Redis gave this worker: set when a command
        #: had to be sent again (see _take_back).
        self._take_back_due: set[str] = set()
        #: Messages whose hand-on or finish is under way: this worker's in Redis until it is
        #: through, but no longer work the worker holds (see _take_back).
        self._acknowledging: set[str] = set()

    @property
    def crawl_key(self) -> str:
        return f"{self.prefix}:crawl:{self.digest}"

    def key(self, name: str) -> str:
        """The key ``name`` (pages, images, stats...) of this walk."""
        return f"{self.crawl_key}:{self.run}:{name}"

    async def join(self, chains: Mapping[str, str]) -> bool:
        """Join the crawl's current walk, or seed a new one (chain -> first page URL); True if seeded."""
        argument = _json_argument(
            {
                "digest": self.digest,
                "definition": json.dumps(self.definition, sort_keys=True),
                "started": _now(),
                "order": json.dumps(list(chains)),  # for civitai-status
                "chains": [{"name": chain, "url": url} for chain, url in chains.items()],
            }
        )
        run, seeded = await self._call(
            lambda: self._join(keys=[f"{self.prefix}:crawls", self.crawl_key], args=[argument])
        )
        self.run = int(run)
        return bool(seeded)

    async def release_dead_local_workers(self) -> int:
        """Make what dead workers of this host held claimable now, not after ``claim_after``.

        A consumer named with this host and a pid that no longer runs is certainly dead (a
        worker restarted after a crash, on the same machine): its pending messages get an idle
        time of ``claim_after``, so the next claim scan takes them. Returns how many.
        """
        host, released = socket.gethostname(), 0
        for stream in ("pages", "images"):
            key = self.key(stream)
            for consumer in await self._call(lambda key=key: self.client.xinfo_consumers(key, GROUP)):
                name = consumer["name"]
                parts = name.rsplit(":", 2)  # host:pid:token, see worker_name()
                if len(parts) != 3 or name == self.worker or parts[0] != host or not _is_dead(parts[1]):
                    continue
                if not consumer["pending"]:
                    await self._call(
                        lambda key=key, name=name: self.client.xgroup_delconsumer(key, GROUP, name)
                    )
                    continue
                entries = await self._call(
                    lambda key=key, name=name, count=consumer["pending"]: self.client.xpending_range(
                        key, GROUP, "-", "+", count, name
                    )
                )
                ids = [entry["message_id"] for entry in entries]
                await self._call(
                    lambda key=key, name=name, ids=ids: self.client.xclaim(
                        key, GROUP, name, 0, ids, idle=int(self.claim_after * 1000), justid=True
                    )
                )
                released += len(ids)
        if released:
            logger.info(
                "%d message(s) held by stopped workers of this host can be taken over at once", released
            )
        return released

    async def take_pages(self, count: int) -> list[PageMessage]:
        messages = await self._take("pages", count)
        return [
            PageMessage(
                message_id,
                fields["chain"],
                int(fields["step"]),
                fields["url"],
                int(fields.get("streak") or 0),
                deliveries,
                fields.get("full") == "1",
            )
            for message_id, fields, deliveries in messages
        ]

    async def take_images(self, count: int) -> list[ImageMessage]:
        messages = await self._take("images", count)
        return [
            ImageMessage(message_id, fields["record"], deliveries)
            for message_id, fields, deliveries in messages
        ]

    async def queued_images(self) -> int:
        """Images in the stream, taken or not (acknowledged ones are deleted)."""
        return int(await self._call(lambda: self.client.xlen(self.key("images"))))

    async def _take(self, stream: str, count: int) -> list[tuple[str, dict[str, str], int]]:
        """Up to ``count`` messages: first any a stopped worker left, then new ones.

        After a command had to be sent again, this worker's own pending messages instead (see
        :meth:`_take_back`), those it holds among them: the caller skips those.
        """
        key = self.key(stream)
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
            "Took over %d %s message(s) that a stopped or stalled worker held for over %s s",
            len(claimed),
            stream,
            _seconds(self.claim_after),
        )
        return [(message_id, fields, deliveries.get(message_id, 2)) for message_id, fields in claimed]

    async def hand_on(
        self,
        page: PageMessage,
        *,
        next_url: str | None,
        cursor_key: str | None,
        end: str | None,
        streak: int,
        full: bool,
        counts: Mapping[str, int],
        images: Sequence[tuple[int, str]],
    ) -> HandOn:
        """Queue ``images`` (id, record JSON) and the chain's next page, acknowledge ``page``: at once.

        ``next_url`` is the next page (``None`` with ``end``, the way the chain ends);
        ``cursor_key`` what the loop check remembers of it; ``full`` whether ``page`` held
        ``limit`` items; ``counts`` the page's stats.
        """
        chunk_keys: dict[int, int] = {}
        keys = [self.key(name) for name in ("chains", "pages", "images", "stats", "cursors", "queued-chunks")]
        queued_images = []
        for image_id, record in images:
            chunk = image_id >> CHUNK_BITS
            if chunk not in chunk_keys:
                keys.append(self.key(f"queued:{chunk}"))
                chunk_keys[chunk] = len(keys)  # Lua's KEYS are 1-based
            queued_images.append({"key": chunk_keys[chunk], "bit": image_id & CHUNK_MASK, "record": record})
        argument = _json_argument(
            {
                "message_id": page.message_id,
                "chain": page.chain,
                "step": page.step,
                "next_url": next_url or "",
                "cursor_key": cursor_key or "",
                "end_reason": end or "",
                "loop_end": CURSOR_LOOP,
                "streak": streak,
                "full": int(full),
                "counts": dict(counts),
                "images": queued_images,
            }
        )
        with self._acknowledging_message(page.message_id):
            accepted, queued, duplicates, ending = await self._call(
                lambda: self._hand_on(keys=keys, args=[argument])
            )
        return HandOn(bool(accepted), int(queued), int(duplicates), ending or "")

    async def finish_image(self, message_id: str, outcomes: Sequence[str]) -> bool:
        """Acknowledge an image and count ``outcomes`` (stats fields); False if it was already."""
        keys = [self.key("images"), self.key("stats")]
        argument = _json_argument({"message_id": message_id, "counts": list(outcomes)})
        with self._acknowledging_message(message_id):
            return bool(await self._call(lambda: self._finish(keys=keys, args=[argument])))

    @contextmanager
    def _acknowledging_message(self, message_id: str) -> Iterator[None]:
        self._acknowledging.add(message_id)
        try:
            yield
        finally:
            self._acknowledging.discard(message_id)

    async def is_done(self) -> bool:
        """Whether the walk is over (marking it so when nothing is left in either stream)."""
        keys = [self.key(name) for name in ("state", "pages", "images", "queued-chunks", "cursors")]
        argument = _json_argument({"finished": _now()})
        return bool(await self._call(lambda: self._done(keys=keys, args=[argument])))

    async def chain_ends(self) -> dict[str, str | None]:
        # str (decode_responses), which redis-py types as bytes | str whatever the client.
        chains = cast("dict[str, str]", await self._call(lambda: self.client.hgetall(self.key("chains"))))
        return {name: json.loads(value).get("end") for name, value in chains.items()}

    async def heartbeat(self, report: Mapping[str, Any]) -> None:
        beat = {"host": socket.gethostname(), "pid": os.getpid(), "beat": _now(), **report}
        await self._call(lambda: self.client.hset(self.key("workers"), self.worker, json.dumps(beat)))

    async def leave(self) -> None:
        """Forget this worker as a consumer if it holds nothing (what it holds stays claimable)."""
        for stream in ("pages", "images"):
            key = self.key(stream)
            summary = await self._call(
                lambda key=key: self.client.xpending_range(key, GROUP, "-", "+", 1, self.worker)
            )
            if not summary:
                await self._call(lambda key=key: self.client.xgroup_delconsumer(key, GROUP, self.worker))

    async def close(self) -> None:
        await self.client.aclose()

    # Callable[..., ...], not Callable[[], ...]: mypy cannot type a lambda with default
    # arguments (the loop variables it keeps) against the latter (python/mypy#15459).
    async def _call(self, command: Callable[..., Awaitable[T]]) -> T:
        """Run ``command``, retried with backoff while Redis is out of reach, up to the timeout."""
        delay = 0.1
        while True:
            try:
                result = await command()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                now = time.monotonic()
                if self._unreachable_since is None:
                    self._unreachable_since = now
                    logger.warning(
                        "Redis %s does not answer (%s): retrying for up to %s s",
                        safe_url(self.url),
                        error,
                        _seconds(self.timeout),
                    )
                if now - self._unreachable_since >= self.timeout:
                    raise SharedCrawlError(
                        f"Redis {safe_url(self.url)} did not answer for {_seconds(self.timeout)} s: {error}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                if self._unreachable_since is not None:
                    # The command that broke may have been run, its reply lost: a take's
                    # messages are then this worker's without its knowing.
                    self._take_back_due.update(("pages", "images"))
                    logger.info(
                        "Redis %s answers again after %.1f s",
                        safe_url(self.url),
                        time.monotonic() - self._unreachable_since,
                    )
                    self._unreachable_since = None
                return result


def _is_dead(pid: str) -> bool:
    """Whether ``pid``, of a consumer name of this host, is a process that no longer runs."""
    # Not a pid (not a name of ours, see worker_name()): the consumer is left alone.
    return pid.isascii() and pid.isdigit() and 0 < int(pid) < 2**31 and not pid_alive(int(pid))


def _json_argument(fields: Mapping[str, Any]) -> str:
    """A script's one argument. Not ASCII-escaped: the texts in it (records, URLs) reach Redis
    as the same bytes they would as arguments of their own."""
    return json.dumps(fields, ensure_ascii=False)


def _now() -> str:
    return f"{time.time():.3f}"


def _seconds(value: float) -> str:
    return f"{value:g}"
