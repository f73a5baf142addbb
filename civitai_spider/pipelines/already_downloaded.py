"""Drop images downloaded by an earlier run (the ID file) or already seen in this one.

The API repeats items across pages (offset cursors under metric sorts), and two copies
may be in flight at once: an id is claimed here, synchronously, before any download.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from civitai_spider.id_file import id_file_path, load_ids
from civitai_spider.outcomes import DropImage

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class AlreadyDownloadedPipeline:
    def __init__(self, crawler: Crawler):
        self.id_file = id_file_path(crawler.settings)
        self.downloaded: set[int] = set()
        self.seen_this_run: set[int] = set()

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

    def process_item(self, item: Any) -> Any:
        image_id = ItemAdapter(item)["id"]
        if image_id in self.downloaded:
            raise DropImage("already_downloaded", f"image {image_id}: already downloaded")
        if image_id in self.seen_this_run:
            raise DropImage("duplicate", f"image {image_id}: listed again by the API")
        self.seen_this_run.add(image_id)
        return item
