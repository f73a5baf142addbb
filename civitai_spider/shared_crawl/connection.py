"""A worker's connection to a shared crawl's Redis: each command retried until ``CIVITAI_REDIS_TIMEOUT``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from civitai_spider.errors import safe_url

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SharedCrawlError(OSError):
    """Redis stayed out of reach for longer than ``CIVITAI_REDIS_TIMEOUT``."""


class Connection:
    """A Redis client whose commands (:meth:`_call`) wait for Redis up to ``timeout`` seconds."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        # Retries are ours (_call): a deadline of CIVITAI_REDIS_TIMEOUT, and a log line.
        self.client = redis.asyncio.Redis.from_url(
            url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=5,
            socket_timeout=30,
        )
        self._unreachable_since: float | None = None
        #: Streams whose next take reads back what Redis gave this worker: set when a command
        #: had to be sent again (see Consumer._take_back).
        self._take_back_due: set[str] = set()

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


def _seconds(value: float) -> str:
    return f"{value:g}"
