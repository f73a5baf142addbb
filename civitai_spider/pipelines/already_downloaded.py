"""Drop images downloaded by an earlier run (the ID file) or already seen in this one.

The API repeats items across pages (offset cursors under metric sorts), and two copies
may be in flight at once: an id is claimed here, synchronously, before any download.

With the spider argument ``stop_after_seen=N`` (``sort=Newest`` only), N images in a row
from the ID file mean the run has caught up with the last one: the spider is closed with
the reason ``caught_up``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.utils.defer import deferred_from_coro

from civitai_spider.id_file import id_file_path, load_ids
from civitai_spider.outcomes import DropImage

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: The finish reason of a crawl stopped by ``stop_after_seen``.
CAUGHT_UP = "caught_up"


class AlreadyDownloadedPipeline:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.id_file = id_file_path(crawler.settings)
        self.downloaded: set[int] = set()
        self.seen_this_run: set[int] = set()
        self.stop_after_seen: int | None = None
        #: Items from the ID file in a row, among those that reached this pipeline.
        self.seen_streak = 0
        self._closing = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def open_spider(self) -> None:
        self.id_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.downloaded = load_ids(self.id_file)
        logger.info(
            "Loaded %d downloaded id(s) from %s in %.3f s",
            len(self.downloaded),
            self.id_file,
            time.perf_counter() - started,
        )
        # Set by the civitai spider; another spider simply has no such stop.
        self.stop_after_seen = getattr(self.crawler.spider, "stop_after_seen", None)

    def process_item(self, item: Any) -> Any:
        image_id = ItemAdapter(item)["id"]
        if image_id in self.downloaded:
            self._count_seen()
            raise DropImage("already_downloaded", f"image {image_id}: already downloaded")
        if image_id in self.seen_this_run:
            # A repeat within this run tells nothing about where the new images end.
            raise DropImage("duplicate", f"image {image_id}: listed again by the API")
        self.seen_this_run.add(image_id)
        self.seen_streak = 0
        return item

    def _count_seen(self) -> None:
        self.seen_streak += 1
        if self.stop_after_seen is None or self.seen_streak < self.stop_after_seen or self._closing:
            return
        self._closing = True
        logger.info(
            "Caught up: the last %d image(s) were all in the ID file (stop_after_seen=%d), stopping",
            self.seen_streak,
            self.stop_after_seen,
        )
        # As Scrapy's CloseSpider extension does: what is in flight (items, their downloads,
        # a page already asked for) finishes, nothing new starts.
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=CAUGHT_UP))
