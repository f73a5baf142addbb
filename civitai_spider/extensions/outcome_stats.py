"""Count what became of each item: ``civitai/saved`` (also by media), ``civitai/dropped/<reason>``,
``civitai/failed``.

Counted from Scrapy's item signals, so every pipeline outcome lands in exactly one
bucket; the spider counts the records it rejects itself (they never become items).

When the spider closes, one INFO line sums it up: saved, dropped by reason, failed. Images
that one chain listed twice (``duplicate``) are the trace of a ranking that moved while the
crawl paged through it, which can also skip images without any trace: the line says so.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals

from civitai_spider import outcomes
from civitai_spider.items import media_of

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class OutcomeStats:
    def __init__(self, crawler: Crawler):
        self.stats = crawler.stats
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.item_dropped, signal=signals.item_dropped)
        crawler.signals.connect(self.item_error, signal=signals.item_error)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

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

    def spider_closed(self, reason: str) -> None:
        logger.info("%s", summary(self.stats.get_stats(), reason))


def summary(stats: dict[str, Any], reason: str) -> str:
    """The crawl's outcome in one line, from its stats."""
    dropped = {
        key.removeprefix(outcomes.DROPPED_PREFIX): count
        for key, count in stats.items()
        if key.startswith(outcomes.DROPPED_PREFIX) and count
    }
    saved = stats.get(outcomes.SAVED, 0)
    media = ", ".join(
        f"{stats[key]:,} {name}{'s' if stats[key] != 1 else ''}"
        for name in ("image", "video")
        if stats.get(key := outcomes.saved_key(name))
    )
    reasons = ", ".join(f"{name} {count:,}" for name, count in sorted(dropped.items(), key=lambda kv: -kv[1]))
    line = (
        f"Crawl ended ({reason}): {saved:,} saved{f' ({media})' if media else ''}, "
        f"{sum(dropped.values()):,} dropped{f' ({reasons})' if reasons else ''}, "
        f"{stats.get(outcomes.FAILED, 0):,} failed, of {stats.get(outcomes.ITEMS_SEEN, 0):,} listed"
    )
    duplicates = dropped.get(outcomes.DUPLICATE_REASON, 0)
    if duplicates:
        line += (
            f"; {duplicates:,} came twice in one chain: the listing moved while the crawl paged "
            "through it, so others may have been skipped without a trace (sort=Newest or "
            "sort=Oldest lists every image once; README: metric sorts)"
        )
    return line
