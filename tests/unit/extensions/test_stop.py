"""Tests of :mod:`civitai_spider.extensions.stop` and :mod:`civitai_spider.extensions.close_spider`."""

from __future__ import annotations

import asyncio

from scrapy import signals

from civitai_spider.extensions.close_spider import CloseSpider
from civitai_spider.extensions.stop import Stop
from tests.support.crawls import project_crawler


class _Engine:
    def __init__(self) -> None:
        self.running = True
        self.closed_for: list[str] = []

    async def close_spider_async(self, *, reason: str) -> None:
        self.closed_for.append(reason)


def opened_stop() -> tuple[Stop, _Engine]:
    crawler = project_crawler()
    engine = _Engine()
    crawler.engine = engine  # type: ignore[assignment]
    stop = Stop.from_crawler(crawler)
    crawler.signals.send_catch_log(signals.spider_opened, spider=None)
    return stop, engine


def test_a_running_crawl_is_not_stopping() -> None:
    stop, _ = opened_stop()
    assert not stop.stopping


def test_a_graceful_stop_is_a_stop() -> None:
    stop, engine = opened_stop()
    engine.running = False  # what Scrapy's engine does first on Ctrl-C, SIGTERM, a Scrapyd cancel
    assert stop.stopping


def test_a_stop_closes_the_crawl_once_with_the_first_reason() -> None:
    async def run() -> tuple[Stop, _Engine]:
        stop, engine = opened_stop()
        stop.stop("store_error")
        stop.stop("closespider_itemcount")
        await asyncio.sleep(0)
        return stop, engine

    stop, engine = asyncio.run(run())
    assert stop.stopping and stop.reason == "store_error"
    assert engine.closed_for == ["store_error"]


def test_closespider_limits_stop_through_the_stop_extension() -> None:
    async def run() -> tuple[Stop, _Engine]:
        crawler = project_crawler(CLOSESPIDER_ITEMCOUNT=2)
        engine = _Engine()
        crawler.engine = engine  # type: ignore[assignment]
        stop = crawler.get_extension(Stop)
        limits = crawler.get_extension(CloseSpider)
        assert stop is not None and limits is not None
        for _ in range(2):
            crawler.signals.send_catch_log(signals.item_scraped, item={}, response=None, spider=None)
        await asyncio.sleep(0)
        return stop, engine

    stop, engine = asyncio.run(run())
    assert stop.reason == "closespider_itemcount"
    assert engine.closed_for == ["closespider_itemcount"]
