"""Drop the items that fail the crawl's filter (:mod:`civitai_spider.item_filter`): reactions,
prompt, level, size, prompt words; before any request for their files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from civitai_spider.item_filter import ItemFilter

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class ItemFilterPipeline:
    def __init__(self, item_filter: ItemFilter):
        self.item_filter = item_filter

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(ItemFilter.build(crawler.settings))

    def process_item(self, item: Any) -> Any:
        self.item_filter.check(item)
        return item
