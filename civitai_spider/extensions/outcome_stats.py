"""Count what became of each item: ``civitai/saved`` (also by media), ``civitai/dropped/<reason>``,
``civitai/failed``.

Counted from Scrapy's item signals, so every pipeline outcome lands in exactly one
bucket; the spider counts the records it rejects itself (they never become items).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy import signals

from civitai_spider import outcomes
from civitai_spider.items import media_of

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class OutcomeStats:
    def __init__(self, crawler: Crawler):
        self.stats = crawler.stats
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.item_dropped, signal=signals.item_dropped)
        crawler.signals.connect(self.item_error, signal=signals.item_error)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def item_scraped(self, item: Any) -> None:
        self._count(outcomes.counted_as(media_of(item)))

    def item_dropped(self, item: Any, exception: BaseException) -> None:
        self._count(outcomes.counted_as(media_of(item), exception))

    def item_error(self, item: Any, failure: Any) -> None:
        # An unexpected exception in a pipeline (already logged with its traceback).
        self.stats.inc_value(outcomes.FAILED)

    def _count(self, names: list[str]) -> None:
        for name in names:
            self.stats.inc_value(outcomes.STATS_PREFIX + name)
