"""Record the id of an item whose files are all stored: the crawl's commit point.

The last pipeline: an id reaches the id store only once its image and metadata files are
durably stored (:class:`~civitai_spider.stores.recorder.IdRecorder` makes the file store
durable and records the ids in batches), so a recorded id always has every file, and the next
crawl skips it. A store error (the file store's commit, a full disk under the ID file, Redis
out of reach) fails the item as the pipelines before do: one WARNING line, one
``error_log.txt`` line, the id not recorded (the next run tries again), the crawl goes on,
unless it is one of ``CIVITAI_MAX_STORE_FAILURES`` in a row
(:mod:`civitai_spider.stores.failures`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from civitai_spider.stores import Stores, stores_of
from civitai_spider.stores.failures import describe_store_error, item_failed
from civitai_spider.stores.recorder import IdRecorder

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class RecordIdPipeline:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.recorder = IdRecorder(stores.files, stores.ids)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(stores_of(crawler))

    async def open_spider(self) -> None:
        await self.stores.open()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        try:
            await self.recorder.record(adapter["id"])
        except OSError as error:
            # The file store's commit or the id store's record: the reason says which.
            reason = f"id not recorded: {describe_store_error(error)}"
            raise item_failed(
                self.stores.error_log, adapter, reason, store=self.stores.ids.describe()
            ) from error
        return item
