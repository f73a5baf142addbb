"""Drop images downloaded by an earlier run (the id store) or already seen in this one.

The API repeats items across pages (offset cursors under metric sorts), and two copies
may be in flight at once: an id is claimed here, before any download.

The id store is asked once per API page for all its ids
(:class:`civitai_spider.middlewares.id_lookup.IdLookupMiddleware`), not once per item.
If it cannot answer (Redis out of reach), the item fails with the reason and the crawl
goes on.

With the spider argument ``stop_after_seen=N`` (``sort=Newest`` only), N images in a row
from the id store mean the run has caught up with the last one: the spider is closed with
the reason ``caught_up``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.utils.defer import deferred_from_coro

from civitai_spider.local_files import ERROR_LOG_NAME, append_line, log_line
from civitai_spider.outcomes import FAILED_REASON, DropImage
from civitai_spider.stores import id_store_class, log_directory, stores_of

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: The finish reason of a crawl stopped by ``stop_after_seen``.
CAUGHT_UP = "caught_up"


class AlreadyDownloadedPipeline:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stores = stores_of(crawler)
        self.error_log = log_directory(crawler.settings) / ERROR_LOG_NAME
        self.seen_this_run: set[int] = set()
        self.stop_after_seen: int | None = None
        #: Items from the id store in a row, among those that reached this pipeline.
        self.seen_streak = 0
        self._closing = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    @classmethod
    def check_settings(cls, settings: BaseSettings) -> None:
        id_store_class(settings).check(settings)

    async def open_spider(self) -> None:
        await self.stores.open()
        # Set by the civitai spider; another spider simply has no such stop.
        self.stop_after_seen = getattr(self.crawler.spider, "stop_after_seen", None)

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        image_id = adapter["id"]
        self._drop_if_seen(image_id)
        try:
            [recorded] = await self.stores.ids.contains([image_id])
        except OSError as error:
            reason = f"id store not reachable: {error}"
            append_line(self.error_log, log_line(image_id, adapter["url"], reason))
            raise DropImage(
                FAILED_REASON, f"image {image_id} failed: {reason} <{adapter['url']}>", log_level="WARNING"
            ) from None
        if recorded:
            # Not claimed: a repeat of it is "already downloaded" again, as the store says.
            self._count_seen()
            raise DropImage("already_downloaded", f"image {image_id}: already downloaded")
        # Another copy may have been claimed while the store answered.
        self._drop_if_seen(image_id)
        self.seen_this_run.add(image_id)
        self.seen_streak = 0
        return item

    def _drop_if_seen(self, image_id: int) -> None:
        if image_id in self.seen_this_run:
            # A repeat within this run tells nothing about where the new images end.
            raise DropImage("duplicate", f"image {image_id}: listed again by the API")

    def _count_seen(self) -> None:
        self.seen_streak += 1
        if self.stop_after_seen is None or self.seen_streak < self.stop_after_seen or self._closing:
            return
        self._closing = True
        logger.info(
            "Caught up: the last %d image(s) were all in the id store (stop_after_seen=%d), stopping",
            self.seen_streak,
            self.stop_after_seen,
        )
        # As Scrapy's CloseSpider extension does: what is in flight (items, their downloads,
        # a page already asked for) finishes, nothing new starts.
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=CAUGHT_UP))
