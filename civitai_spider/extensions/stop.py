"""Stops that stop: once the crawl is told to stop, no listed item starts downloading.

Scrapy closes a spider by letting everything already begun run out, and every item of every
API page already received is "begun": a page lists up to 200 items, so ``CLOSESPIDER_ITEMCOUNT=50``
saved 1,600 images and a Ctrl-C went on for the whole listing. Here a stop (a graceful stop,
a ``CLOSESPIDER_*`` limit, a store that keeps failing) lets only the downloads already under
way finish; the media pipeline drops every other item as ``stopped`` (counted, so saved +
dropped + failed still equals items seen). With JOBDIR the spider lists those again on resume.

The crawl's own ends (the listing is done, ``max_pages``, ``caught_up``, an API error) are not
stops: what they listed is still saved.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.utils.defer import deferred_from_coro

if TYPE_CHECKING:
    from typing import Self

    from scrapy.core.engine import ExecutionEngine
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: The drop reason of an item that was listed but not started because the crawl stopped.
STOPPED_REASON = "stopped"


class Stop:
    """Whether the crawl was told to stop, and the one way to tell it (:func:`stop_crawl`)."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        #: The finish reason of a stop asked for in this process, ``None`` before one.
        self.reason: str | None = None
        self._engine: ExecutionEngine | None = None
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _spider_opened(self) -> None:
        self._engine = self.crawler.engine

    @property
    def stopping(self) -> bool:
        # A graceful stop (Ctrl-C, SIGTERM, a Scrapyd cancel) clears engine.running before it
        # closes the spider with the reason "shutdown".
        return self.reason is not None or (self._engine is not None and not self._engine.running)

    @property
    def closing(self) -> bool:
        """Whether the crawl is on its way out: a stop, or any close (the crawl's own end, a
        CloseSpider from a callback) that Scrapy has begun."""
        # Scrapy has no public "closing" flag: close_spider sets its engine slot's closing.
        slot = getattr(self._engine, "_slot", None)
        return self.stopping or self._engine is None or (slot is not None and slot.closing is not None)

    def stop(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        logger.info("Stopping (%s): the downloads under way finish, nothing else starts", reason)
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason))


def stop_of(crawler: Crawler) -> Stop:
    stop = crawler.get_extension(Stop)
    assert stop is not None  # enabled in EXTENSIONS
    return stop


def stop_crawl(crawler: Crawler, reason: str) -> None:
    """Close the crawl as ``reason`` now: downloads under way finish, no listed item starts."""
    stop_of(crawler).stop(reason)
