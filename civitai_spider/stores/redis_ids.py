"""The id store in Redis: ``CIVITAI_REDIS_URL``, keys under ``CIVITAI_REDIS_PREFIX``.

The ids are a bitmap by id: bit ``id`` set means recorded. Civitai's ids are dense
integers counting up from 1 (past 100 million in 2026), so one bit per possible id is the
small structure: every id up to 100 million fits in 12.5 MB, however many are
recorded, where a Redis set costs about 50 MB per million ids (5 GB for 100 million), and a
crawl looks ids up without loading any of them. The bitmap is cut into strings of 2**20
bits (128 KiB), ``<prefix>:ids:<id // 2**20>``, so that a crawl of recent images allocates
only the chunks its ids fall in, and no single key grows towards Redis's 512 MB limit.

Lookups go a page at a time (:meth:`RedisIds.prefetch`): one ``BITFIELD_RO`` per chunk,
all in one pipelined round trip. A batch of ids is recorded with one ``BITFIELD ... SET``
per chunk (or, for thousands of ids, the chunk's bits OR-ed in with ``BITOP``) in a
``MULTI``/``EXEC`` transaction: all of the batch or none of it. Recorded
means acknowledged by Redis; with ``appendonly yes`` (which :meth:`RedisIds.open` checks) a
restart keeps every acknowledged write.

The async client of redis-py runs on the asyncio reactor; nothing blocks the reactor
thread. A dropped connection is retried with backoff for ``CIVITAI_REDIS_TIMEOUT`` seconds,
so a Redis restart costs no item; a longer outage fails the items it hits (their files are
stored, their ids not recorded: they are downloaded again) and ends the crawl:
``CIVITAI_MAX_STORE_FAILURES`` such items in a row (:mod:`civitai_spider.stores.failures`), or
at once for a worker of a shared crawl (:mod:`civitai_spider.shared_crawl.worker`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from civitai_spider.errors import safe_url
from civitai_spider.stores.base import IdStore, StoreError

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: Bits per bitmap key: 2**20 ids, 128 KiB once full.
CHUNK_BITS = 20
CHUNK_MASK = (1 << CHUNK_BITS) - 1
#: The largest id a bitmap offset can hold (Redis strings are at most 2**32 bits).
MAX_ID = (1 << 32) - 1
#: Prefetched answers kept for the pipeline; items of a page that never reach it (below
#: the thresholds) would otherwise pile up.
_PREFETCHED_LIMIT = 10_000
#: Ids of one chunk in one record() from which the chunk's bitmap is sent whole (imports).
_BITMAP_WRITE_MIN = 1_000
#: Backoff between retries of a command whose connection broke: 0.1 s, 0.2 s ... then 1 s.
_BACKOFF_CAP = 1.0
_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 30}


class RedisIds(IdStore):
    def __init__(self, url: str, prefix: str, timeout: float = 60.0) -> None:
        self.url, self.prefix, self.timeout = url, prefix, timeout
        self.client = redis.asyncio.Redis.from_url(
            url,
            retry=retry_for(timeout),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            **_TIMEOUTS,
        )
        self._prefetched: dict[int, bool] = {}

    @classmethod
    def build(cls, settings: BaseSettings) -> Self:
        url, prefix = _url_and_prefix(settings)
        return cls(url, prefix, settings.getfloat("CIVITAI_REDIS_TIMEOUT"))

    @classmethod
    def check(cls, settings: BaseSettings) -> None:
        url, _ = _url_and_prefix(settings)
        client = redis.Redis.from_url(url, **_TIMEOUTS)
        try:
            client.ping()
        except redis.RedisError as error:
            raise ValueError(f"CIVITAI_REDIS_URL={safe_url(url)}: Redis does not answer: {error}") from None
        finally:
            client.close()

    async def open(self) -> None:
        try:
            config: dict[Any, Any] = await self.client.config_get("appendonly")
        except redis.ResponseError:
            return  # CONFIG is disabled on many managed servers: nothing to tell then
        except redis.RedisError as error:
            raise self._failed(error) from None
        # str in redis-py 8 (CONFIG GET is decoded), bytes in older releases.
        if config.get(b"appendonly", config.get("appendonly")) in {b"no", "no"}:
            logger.warning(
                "Redis %s runs with appendonly no: if it stops, the ids recorded since its last "
                "snapshot are lost (their images are downloaded again); set appendonly yes",
                self.describe(),
            )

    async def close(self) -> None:
        await self.client.aclose()

    async def prefetch(self, ids: Sequence[int]) -> None:
        answers = await self._look_up([image_id for image_id in ids if image_id not in self._prefetched])
        self._prefetched.update(answers)
        for _ in range(len(self._prefetched) - _PREFETCHED_LIMIT):
            del self._prefetched[next(iter(self._prefetched))]

    async def contains(self, ids: Sequence[int]) -> list[bool]:
        # The prefetched answers are taken before the round trip: meanwhile another page (a
        # model's chains list the same image under each version) may take the same ids.
        answers = {
            image_id: self._prefetched.pop(image_id) for image_id in ids if image_id in self._prefetched
        }
        missing = [image_id for image_id in dict.fromkeys(ids) if image_id not in answers]
        if missing:
            answers.update(await self._look_up(missing))
        return [answers[image_id] for image_id in ids]

    async def _look_up(self, ids: Sequence[int]) -> dict[int, bool]:
        chunks = _by_chunk(ids)
        if not chunks:
            return {}
        pipeline = self.client.pipeline(transaction=False)
        for chunk, offsets in chunks.items():
            pipeline.bitfield_ro(
                self._key(chunk), "u1", offsets[0], [("u1", offset) for offset in offsets[1:]]
            )
        try:
            replies = await pipeline.execute()
        except redis.RedisError as error:
            raise self._failed(error) from None
        answers: dict[int, bool] = {}
        for (chunk, offsets), bits in zip(chunks.items(), replies, strict=True):
            for offset, bit in zip(offsets, bits, strict=True):
                answers[(chunk << CHUNK_BITS) | offset] = bool(bit)
        return answers

    async def record(self, ids: Sequence[int]) -> None:
        chunks = _by_chunk(ids)
        pipeline = self.client.pipeline(transaction=True)
        for chunk, offsets in chunks.items():
            if len(offsets) >= _BITMAP_WRITE_MIN:
                # An import: the chunk's bits made here and OR-ed in, 128 KiB on the wire at
                # most, instead of four BITFIELD arguments an id (about 20 times faster).
                incoming = f"{self.prefix}:incoming:{uuid.uuid4().hex}"
                pipeline.set(incoming, _bitmap(offsets))
                pipeline.bitop("OR", self._key(chunk), self._key(chunk), incoming)
                pipeline.delete(incoming)
                continue
            field = pipeline.bitfield(self._key(chunk))
            for offset in offsets:
                field.set("u1", offset, 1)
            field.execute()
        try:
            await pipeline.execute()
        except redis.RedisError as error:
            raise self._failed(error) from None
        for image_id in ids:
            self._prefetched.pop(image_id, None)

    async def all_ids(self) -> AsyncIterator[list[int]]:
        """Chunk by chunk in id order: at most 4,096 keys to list, one 128 KiB value at a time."""
        try:
            keys = [key async for key in self.client.scan_iter(match=self._key("*"), count=1000)]
            chunks = sorted(int(suffix) for key in keys if (suffix := key.rsplit(b":", 1)[1]).isdigit())
            for chunk in chunks:
                # bytes (no decode_responses), which redis-py types as bytes | str whatever the client.
                bitmap = cast("bytes | None", await self.client.get(self._key(chunk)))
                yield list(_ids_in(chunk, bitmap or b""))
        except redis.RedisError as error:
            raise self._failed(error) from None

    def describe(self) -> str:
        return f"{safe_url(self.url)} (keys {self.prefix}:ids:*)"

    def _failed(self, error: redis.RedisError) -> StoreError:
        """The store's error for ``error``; one that is out of reach has been retried, and says
        so as the shared crawl's Redis side does (either may be the first to give up)."""
        if isinstance(error, redis.ConnectionError | redis.TimeoutError):
            return StoreError(
                f"Redis {safe_url(self.url)} did not answer for {self.timeout:g} s "
                f"(keys {self.prefix}:ids:*): {error}"
            )
        return StoreError(f"Redis {self.describe()}: {error}")

    def _key(self, chunk: int | str) -> str:
        return f"{self.prefix}:ids:{chunk}"


def retry_for(timeout: float) -> Retry:
    """Retries with backoff that give up after about ``timeout`` seconds of failures.

    redis.asyncio's Retry, not redis.retry's: that one gets back a coroutine that has not
    failed yet, so it never retries. (A pipeline can only be retried by it: it replays the
    pipeline's commands, which a retry around ``execute()`` would have lost.)
    """
    waits, retries = 0.0, 0
    while waits < timeout:
        waits += min(0.1 * 2**retries, _BACKOFF_CAP)
        retries += 1
    return Retry(ExponentialBackoff(cap=_BACKOFF_CAP, base=0.1), retries=retries)


def _url_and_prefix(settings: BaseSettings) -> tuple[str, str]:
    url = str(settings.get("CIVITAI_REDIS_URL"))
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(
            f"CIVITAI_REDIS_URL={safe_url(url)!r}: allowed: redis://host:port/db, rediss://... or unix://path"
        )
    prefix = str(settings.get("CIVITAI_REDIS_PREFIX") or "")
    if not prefix or any(character.isspace() or character in "*?[]" for character in prefix):
        raise ValueError(
            f"CIVITAI_REDIS_PREFIX={prefix!r}: allowed: a non-empty name without spaces or * ? [ ]"
        )
    return url, prefix


def _by_chunk(ids: Iterable[int]) -> dict[int, list[int]]:
    chunks: dict[int, list[int]] = {}
    for image_id in ids:
        if not 0 <= image_id <= MAX_ID:
            raise StoreError(f"id {image_id} is outside the Redis id store's range 0..{MAX_ID}")
        chunks.setdefault(image_id >> CHUNK_BITS, []).append(image_id & CHUNK_MASK)
    return chunks


def _bitmap(offsets: Iterable[int]) -> bytes:
    """The bits of ``offsets`` as Redis lays out a string: bit 0 is the top bit of byte 0."""
    offsets = list(offsets)
    bitmap = bytearray(max(offsets) // 8 + 1)
    for offset in offsets:
        bitmap[offset >> 3] |= 0x80 >> (offset & 7)
    return bytes(bitmap)


def _ids_in(chunk: int, bitmap: bytes) -> Iterable[int]:
    base = chunk << CHUNK_BITS
    for index, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                if byte & (0x80 >> bit):  # Redis numbers bits from the most significant
                    yield base + index * 8 + bit
