"""Drop images downloaded by an earlier run (the id store) or already seen in this one.

The API repeats items across pages (offset cursors under metric sorts: ``duplicate``), a
model's crawl lists an image under each version it uses (``other_chain``), and two copies
may be in flight at once: an id is claimed here, before any download.

The id store is asked once per API page for all its ids
(:class:`civitai_spider.middlewares.id_lookup.IdLookupMiddleware`), not once per item.
If it cannot answer (Redis out of reach), the item fails with the reason and the crawl
goes on, unless it is one of ``CIVITAI_MAX_STORE_FAILURES`` in a row
(:mod:`civitai_spider.stores.failures`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from civitai_spider.outcomes import DUPLICATE_REASON, DropImage
from civitai_spider.stores import stores_of
from civitai_spider.stores.failures import StoreFailed

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class AlreadyDownloadedPipeline:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stores = stores_of(crawler)
        self.error_log = self.stores.error_log
        #: Ids claimed in this run -> the chain that listed them first.
        self.seen_this_run: dict[int, str | None] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def open_spider(self) -> None:
        await self.stores.open()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        image_id, chain = adapter["id"], adapter.get("chain")
        self._drop_if_seen(image_id, chain)
        try:
            [recorded] = await self.stores.ids.contains([image_id])
        except OSError as error:
            reason = f"id store not reachable: {error}"
            self.error_log.add(image_id, adapter["url"], reason)
            message = f"image {image_id} failed: {reason} <{adapter['url']}>"
            raise StoreFailed(message, store=self.stores.ids.describe(), error=reason) from None
        if recorded:
            # Not claimed: a repeat of it is "already downloaded" again, as the store says.
            raise DropImage("already_downloaded", f"image {image_id}: already downloaded")
        # Another copy may have been claimed while the store answered.
        self._drop_if_seen(image_id, chain)
        self.seen_this_run[image_id] = chain
        return item

    def _drop_if_seen(self, image_id: int, chain: str | None) -> None:
        if image_id not in self.seen_this_run:
            return
        first = self.seen_this_run[image_id]
        if first is not None and chain is not None and first != chain:
            raise DropImage("other_chain", f"image {image_id}: listed by chain {first} already")
        raise DropImage(DUPLICATE_REASON, f"image {image_id}: listed again by the API")
