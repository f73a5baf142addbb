"""Retry with exponential backoff and ``Retry-After``, without blocking other downloads.

Scrapy's RetryMiddleware retries at once and ignores ``Retry-After``: against a busy API
(503 + ``Retry-After: 2``, 429 from the edge) that burns every try in a second. This
subclass keeps its settings (``RETRY_TIMES``, ``RETRY_HTTP_CODES``, ``RETRY_EXCEPTIONS``,
``dont_retry``...) and waits ``max(base * 2^(try-1), Retry-After)`` seconds, at most
``CIVITAI_RETRY_MAX_DELAY``, before handing the retry back. The wait is an asynchronous
sleep, so the reactor keeps every other download going meanwhile.

An API page that is not a page (HTML with status 200, JSON without ``items``) is
retried the same way.
"""

from __future__ import annotations

import logging
import math
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, cast

from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.utils.asyncio import sleep
from scrapy.utils.response import response_status_message

from civitai_spider.api import API_PAGE_META_KEY, page_problem

if TYPE_CHECKING:
    from scrapy.http import Request, Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


class BackoffRetryMiddleware(RetryMiddleware):
    def __init__(self, settings: BaseSettings):
        super().__init__(settings)
        self.base_delay = settings.getfloat("CIVITAI_RETRY_BASE_DELAY")
        self.max_delay = settings.getfloat("CIVITAI_RETRY_MAX_DELAY")

    # Scrapy calls these without the deprecated spider argument and awaits a coroutine, but
    # RetryMiddleware keeps its synchronous signatures with spider: hence the ignores.
    async def process_response(  # type: ignore[override]
        self, request: Request, response: Response
    ) -> Request | Response:
        if request.meta.get("dont_retry", False):
            return response
        reason: str | None
        if response.status in self.retry_http_codes:
            reason = response_status_message(response.status)
        elif response.status == 200 and request.meta.get(API_PAGE_META_KEY):
            reason = page_problem(response)
            if reason is None:
                return response
            logger.warning("The API answered something that is not a page: %s (%s)", reason, request.url)
        else:
            return response
        retry = self._retry(request, reason)
        if retry is None:
            return response
        await self._wait(retry, _retry_after_seconds(response))
        return retry

    async def process_exception(  # type: ignore[override]
        self, request: Request, exception: Exception
    ) -> Request | Response | None:
        # A retry or None (RetryMiddleware._retry()), though typed as any middleware's answer.
        retry = cast("Request | None", super().process_exception(request, exception))
        if retry is not None:
            await self._wait(retry, None)
        return retry

    async def _wait(self, retry: Request, retry_after: float | None) -> None:
        backoff = self.base_delay * 2 ** (retry.meta["retry_times"] - 1)
        delay = min(max(backoff, retry_after or 0.0), self.max_delay)
        if delay > 0:
            logger.debug("Waiting %.2f s before retry %d of %s", delay, retry.meta["retry_times"], retry)
            await sleep(delay)


def _retry_after_seconds(response: Response) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (``None`` when absent or junk)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    text = value.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        return max(parsedate_to_datetime(text).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None
