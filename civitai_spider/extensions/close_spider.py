"""Scrapy's ``CLOSESPIDER_*`` limits, stopping as every stop here does.

Scrapy's own extension closes the spider and lets every item already listed run out: with
API pages of 200 items, ``CLOSESPIDER_ITEMCOUNT=50`` saved 1,600 images. This one stops
through :func:`civitai_spider.extensions.stop.stop_crawl`: the downloads under way finish
(at most ``CIVITAI_IMAGES_IN_FLIGHT`` images and ``CIVITAI_VIDEOS_IN_FLIGHT`` videos more),
nothing else starts.
"""

from __future__ import annotations

from scrapy.extensions.closespider import CloseSpider as ScrapyCloseSpider

from civitai_spider.extensions.stop import stop_crawl


class CloseSpider(ScrapyCloseSpider):
    # Scrapy's extension counts and calls _close_spider(reason) at each limit; its counting
    # is kept whole, only how it closes is ours.
    def _close_spider(self, reason: str) -> None:
        stop_crawl(self.crawler, reason)
