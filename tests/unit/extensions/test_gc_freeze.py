"""Tests of :mod:`civitai_spider.extensions.gc_freeze`."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from scrapy import signals

from civitai_spider import settings as project_settings
from civitai_spider.extensions.gc_freeze import FreezeStartupObjects
from tests.support.crawls import project_crawler


@pytest.fixture(autouse=True)
def _unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_objects_alive_at_spider_open_are_frozen_until_close() -> None:
    # Without the stores: they close in a coroutine, which the synchronous send_catch_log below
    # would leave unawaited.
    crawler = project_crawler(
        EXTENSIONS={**project_settings.EXTENSIONS, "civitai_spider.stores.Stores": None}
    )
    FreezeStartupObjects.from_crawler(crawler)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    crawler.signals.send_catch_log(signals.spider_opened, spider=None)
    assert gc.get_freeze_count() > 1000  # at least Scrapy's own modules and settings

    crawler.signals.send_catch_log(signals.spider_closed, spider=None, reason="finished")
    assert gc.get_freeze_count() == 0


def test_garbage_left_by_start_up_is_collected_not_frozen() -> None:
    crawler = project_crawler()
    FreezeStartupObjects.from_crawler(crawler)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    collected_before = gc.get_stats()[2]["collected"]

    crawler.signals.send_catch_log(signals.spider_opened, spider=None)

    assert gc.get_stats()[2]["collected"] > collected_before
