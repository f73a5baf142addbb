"""Drop images below the reaction thresholds, or without a prompt (:mod:`civitai_spider.thresholds`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from civitai_spider.thresholds import Thresholds

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class ReactionThresholdsPipeline:
    def __init__(self, thresholds: Thresholds):
        self.thresholds = thresholds

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(Thresholds.build(crawler.settings))

    def process_item(self, item: Any) -> Any:
        self.thresholds.check(item)
        return item
