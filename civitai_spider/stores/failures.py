"""Ends a crawl whose store keeps failing, instead of failing every item it lists.

A full disk, a folder remounted read-only, a bucket or Redis out of reach: each item that
needs the store fails (one WARNING line, its id not recorded), which is right for a passing
fault, but a store that is gone for good would fail the whole listing, item after item.
:class:`StoreFailures` counts the items in a row that failed because of a store (the
pipelines drop them with :class:`StoreFailed`); any item saved starts the count again; a
failed download, an HTTP error or a broken image is no store's fault and counts for nothing.
At ``CIVITAI_MAX_STORE_FAILURES`` in a row, one ERROR line names the store and the last
reason, and the crawl stops as ``store_error`` (exit status 1). An extension of its own
(``EXTENSIONS``): it needs no store, only the item signals.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals

from civitai_spider.errors import describe_os_error
from civitai_spider.extensions.stop import stop_crawl
from civitai_spider.outcomes import FAILED_REASON, STORE_ERROR, DropImage
from civitai_spider.stores.base import StoreError

if TYPE_CHECKING:
    from typing import Self

    from itemadapter import ItemAdapter
    from scrapy.crawler import Crawler

    from civitai_spider.local_files import LogFile

logger = logging.getLogger(__name__)


class StoreFailed(DropImage):
    """An item failed because ``store`` (a folder, a bucket, an id store) did: ``error`` says how."""

    def __init__(self, message: str, *, store: str, error: str) -> None:
        super().__init__(FAILED_REASON, message, log_level="WARNING")
        self.store, self.error = store, error


class StoreFailures:
    """Stops the crawl after ``limit`` items in a row failed with :class:`StoreFailed`."""

    def __init__(self, crawler: Crawler, limit: int) -> None:
        self.crawler, self.limit = crawler, limit
        self.in_a_row = 0
        self._stopped = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        failures = cls(crawler, crawler.settings.getint("CIVITAI_MAX_STORE_FAILURES"))
        crawler.signals.connect(failures.item_saved, signal=signals.item_scraped)
        crawler.signals.connect(failures.item_dropped, signal=signals.item_dropped)
        return failures

    def item_saved(self) -> None:
        self.in_a_row = 0

    def item_dropped(self, exception: BaseException, **_: Any) -> None:
        if not isinstance(exception, StoreFailed):
            return  # a filter, or a failure of the download or the image: the store works
        self.in_a_row += 1
        if self.in_a_row >= self.limit and not self._stopped:
            self._stopped = True
            logger.error(
                "%d items in a row failed because %s did (CIVITAI_MAX_STORE_FAILURES), stopping "
                "the crawl; the last: %s",
                self.in_a_row,
                exception.store,
                exception.error,
            )
            stop_crawl(self.crawler, STORE_ERROR)


def item_failed(error_log: LogFile, adapter: ItemAdapter, reason: str, *, store: str) -> StoreFailed:
    """The drop of the item ``adapter`` because ``store`` failed: ``reason`` goes into
    ``error_log.txt`` now, and the drop's one WARNING line says it again."""
    url = adapter["url"]
    error_log.add(adapter["id"], url, reason)
    return StoreFailed(f"image {adapter['id']} failed: {reason} <{url}>", store=store, error=reason)


def describe_store_error(error: OSError) -> str:
    """What went wrong with a store, in one line for the log and ``error_log.txt``."""
    if isinstance(error, StoreError):  # its message says what and where already
        return str(error)
    return describe_os_error(error)
