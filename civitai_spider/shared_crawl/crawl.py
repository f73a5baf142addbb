"""A crawl shared by many workers, kept in Redis: its keys, and the atomic steps that change it.

Redis Streams with one consumer group give what a shared crawl needs: a message read with
``XREADGROUP`` stays pending until its worker ``XACK``\\ s it, and ``XAUTOCLAIM`` hands one
that stayed pending longer than ``CIVITAI_REDIS_CLAIM_AFTER`` to a live worker. So a worker
that dies loses nothing: what it held is taken over, and only the glue below is ours. A
worker's takes are :mod:`~civitai_spider.shared_crawl.consumer`, the retries of its commands
:mod:`~civitai_spider.shared_crawl.connection`.

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

import hashlib
import importlib.resources
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from civitai_spider.local_files import pid_alive
from civitai_spider.outcomes import CURSOR_LOOP
from civitai_spider.shared_crawl.consumer import GROUP, Consumer
from civitai_spider.shared_crawl.messages import HandOn, ImageMessage, PageMessage
from civitai_spider.stores.redis_ids import CHUNK_BITS, CHUNK_MASK

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a worker (``scrapy civitai-status`` shows the last one).
HEARTBEAT_INTERVAL = 5.0


def _script(name: str) -> str:
    """The Lua source of the step ``name``: ``scripts/<name>.lua``, package data (in the egg too)."""
    scripts = importlib.resources.files("civitai_spider.shared_crawl") / "scripts"
    return (scripts / f"{name}.lua").read_text(encoding="utf-8")


_JOIN, _HAND_ON, _FINISH, _DONE = (_script(name) for name in ("join", "hand_on", "finish", "done"))


def crawl_digest(definition: Mapping[str, Any]) -> str:
    """The crawl's name in Redis: the same arguments (and API) always give the same one."""
    text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def worker_name() -> str:
    """This process's consumer name: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


#: Messages a leaving worker makes claimable at once, per stream: it holds a few dozen at most
#: (what it takes is bounded by its downloads in flight).
_RELEASED_AT_ONCE = 10_000


class SharedCrawl(Consumer):
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
        super().__init__(url, timeout=timeout, worker=worker or worker_name(), claim_after=claim_after)
        self.prefix, self.definition = prefix, dict(definition)
        self.digest = crawl_digest(definition)
        self._join = self.client.register_script(_JOIN)
        self._hand_on = self.client.register_script(_HAND_ON)
        self._finish = self.client.register_script(_FINISH)
        self._done = self.client.register_script(_DONE)
        self.run = 0

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
                released += await self._release(key, name, consumer["pending"])
        if released:
            logger.info(
                "%d message(s) held by stopped workers of this host can be taken over at once", released
            )
        return released

    async def take_pages(self, count: int) -> list[PageMessage]:
        messages = await self._take("pages", self.key("pages"), count)
        return [PageMessage.from_fields(*message) for message in messages]

    async def take_images(self, count: int) -> list[ImageMessage]:
        messages = await self._take("images", self.key("images"), count)
        return [ImageMessage.from_fields(*message) for message in messages]

    async def queued_images(self) -> int:
        """Images in the stream, taken or not (acknowledged ones are deleted)."""
        return int(await self._call(lambda: self.client.xlen(self.key("images"))))

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
        """Leave the crawl: forget this worker as a consumer if it holds nothing, else make what
        it holds (what a stop left unstarted) claimable by a live worker now, not after
        ``claim_after``."""
        for stream in ("pages", "images"):
            key = self.key(stream)
            held = await self._call(
                lambda key=key: self.client.xpending_range(
                    key, GROUP, "-", "+", _RELEASED_AT_ONCE, self.worker
                )
            )
            if not held:
                await self._call(lambda key=key: self.client.xgroup_delconsumer(key, GROUP, self.worker))
                continue
            released = await self._release(key, self.worker, len(held))
            logger.info("Left %d %s message(s) to the other workers", released, stream)

    async def _release(self, key: str, consumer: str, count: int) -> int:
        """Make up to ``count`` messages ``consumer`` holds in stream ``key`` claimable now: their
        idle time becomes ``claim_after``, so the next claim scan of any worker takes them (the
        delivery count is left as it is). How many."""
        entries = await self._call(lambda: self.client.xpending_range(key, GROUP, "-", "+", count, consumer))
        ids = [entry["message_id"] for entry in entries]
        if ids:
            await self._call(
                lambda ids=ids: self.client.xclaim(
                    key, GROUP, consumer, 0, ids, idle=int(self.claim_after * 1000), justid=True
                )
            )
        return len(ids)


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
