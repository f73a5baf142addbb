"""Tests of :class:`StoreFailures`: items that failed because of a store, counted in a row."""

from __future__ import annotations

import logging

import pytest
from scrapy import signals
from scrapy.crawler import Crawler

from civitai_spider.outcomes import FAILED_REASON, DropImage
from civitai_spider.stores import failures
from civitai_spider.stores.base import StoreError
from civitai_spider.stores.failures import StoreFailed, StoreFailures, describe_store_error
from tests.support.crawls import project_crawler


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    stopped: list[str] = []
    monkeypatch.setattr(failures, "stop_crawl", lambda crawler, reason: stopped.append(reason))
    return stopped


def watched(limit: int) -> Crawler:
    crawler = project_crawler(CIVITAI_MAX_STORE_FAILURES=limit)
    assert isinstance(crawler.get_extension(StoreFailures), StoreFailures)  # enabled in EXTENSIONS
    return crawler


def store_failure(number: int) -> StoreFailed:
    return StoreFailed(f"image {number} failed", store="/data/civitai", error=f"reason {number}")


def dropped(crawler: Crawler, exception: BaseException) -> None:
    crawler.signals.send_catch_log(
        signals.item_dropped, item={}, response=None, spider=None, exception=exception
    )


def saved(crawler: Crawler) -> None:
    crawler.signals.send_catch_log(signals.item_scraped, item={}, response=None, spider=None)


def test_the_limit_in_a_row_stops_the_crawl_once_with_one_error(
    stops: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    crawler = watched(3)
    with caplog.at_level(logging.ERROR):
        for number in range(2):
            dropped(crawler, store_failure(number))
        assert stops == []
        for number in range(2, 6):  # the items in flight fail after the stop
            dropped(crawler, store_failure(number))

    assert stops == ["store_error"]
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith(
        "3 items in a row failed because /data/civitai did (CIVITAI_MAX_STORE_FAILURES)"
    )
    assert message.endswith("the last: reason 2")


def test_a_saved_item_starts_the_count_again(stops: list[str]) -> None:
    crawler = watched(3)
    for _ in range(5):
        dropped(crawler, store_failure(1))
        dropped(crawler, store_failure(2))
        saved(crawler)
    assert stops == []
    for number in range(3):
        dropped(crawler, store_failure(number))
    assert stops == ["store_error"]


def test_other_drops_neither_count_nor_start_the_count_again(stops: list[str]) -> None:
    crawler = watched(2)
    dropped(crawler, store_failure(1))
    for other in (
        DropImage(FAILED_REASON, "image 2 failed: HTTP 404", log_level="WARNING"),
        DropImage(FAILED_REASON, "image 3 failed: not an image", log_level="WARNING"),
        DropImage("already_downloaded", "image 4: already downloaded"),
        DropImage("below_threshold", "image 5: below the thresholds"),
    ):
        dropped(crawler, other)
    assert stops == []
    dropped(crawler, store_failure(6))
    assert stops == ["store_error"]


def test_a_store_failure_is_a_failed_item_at_warning() -> None:
    failure = store_failure(1)
    assert isinstance(failure, DropImage) and failure.reason == FAILED_REASON
    assert failure.log_level == "WARNING"


def test_describe_store_error() -> None:
    assert describe_store_error(StoreError("upload of s3://b/1.jpg failed: boom")) == (
        "upload of s3://b/1.jpg failed: boom"
    )
    assert describe_store_error(OSError(30, "Read-only file system", "/x/.partial")) == (
        "OSError: Read-only file system"
    )
