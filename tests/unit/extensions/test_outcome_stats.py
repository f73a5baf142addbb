"""Tests of :class:`OutcomeStats`: each item signal lands in exactly one ``civitai/`` stat."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy import signals
from scrapy.exceptions import DropItem
from twisted.python.failure import Failure

from civitai_spider import outcomes
from civitai_spider.extensions.outcome_stats import OutcomeStats, summary
from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import DropImage
from civitai_spider.spiders.civitai import CivitaiSpider
from tests.support.crawls import project_crawler


@pytest.fixture
def crawler() -> Any:
    crawler = project_crawler()
    crawler.spider = CivitaiSpider.from_crawler(crawler)
    return crawler


def item(image_id: int = 1, **fields: Any) -> CivitaiImage:
    url = f"https://image.civitai.com/k/{image_id}.jpeg"
    return CivitaiImage.from_api({"id": image_id, "url": url, **fields})


def civitai_stats(crawler: Any) -> dict[str, Any]:
    return {key: value for key, value in crawler.stats.get_stats().items() if key.startswith("civitai/")}


def send(crawler: Any, signal: object, **kwargs: Any) -> None:
    results = crawler.signals.send_catch_log(signal, spider=crawler.spider, response=None, **kwargs)
    # send_catch_log turns a handler's exception into a Failure in the results.
    assert not [result for _, result in results if isinstance(result, Failure)]


def test_the_extension_is_enabled_by_the_project_settings(crawler: Any) -> None:
    assert any(isinstance(extension, OutcomeStats) for extension in crawler.extensions.middlewares)


def test_item_scraped_counts_saved(crawler: Any) -> None:
    send(crawler, signals.item_scraped, item=item(1))
    send(crawler, signals.item_scraped, item=item(2))
    assert civitai_stats(crawler) == {outcomes.SAVED: 2, "civitai/saved/image": 2}


def test_saved_videos_and_images_are_counted_apart(crawler: Any) -> None:
    send(crawler, signals.item_scraped, item=item(1))
    send(crawler, signals.item_scraped, item=item(2, type="video"))
    send(crawler, signals.item_scraped, item=item(3, type="video"))
    assert civitai_stats(crawler) == {
        outcomes.SAVED: 3,
        "civitai/saved/image": 1,
        "civitai/saved/video": 2,
    }


def test_drop_reasons_are_counted_separately(crawler: Any) -> None:
    for reason in ("below_threshold", "below_threshold", "duplicate", "no_prompt"):
        send(crawler, signals.item_dropped, item=item(), exception=DropImage(reason, "message"))
    assert civitai_stats(crawler) == {
        "civitai/dropped/below_threshold": 2,
        "civitai/dropped/duplicate": 1,
        "civitai/dropped/no_prompt": 1,
    }


def test_plain_drop_item_counts_as_other(crawler: Any) -> None:
    send(crawler, signals.item_dropped, item=item(), exception=DropItem("another pipeline"))
    assert civitai_stats(crawler) == {"civitai/dropped/other": 1}


def test_failed_reason_counts_as_failed_not_dropped(crawler: Any) -> None:
    exception = DropImage(outcomes.FAILED_REASON, "image 1 failed: HTTP 404", log_level="WARNING")
    send(crawler, signals.item_dropped, item=item(), exception=exception)
    assert civitai_stats(crawler) == {outcomes.FAILED: 1}


def test_item_error_counts_as_failed(crawler: Any) -> None:
    try:
        raise OSError("disk full")
    except OSError:
        failure = Failure()
    send(crawler, signals.item_error, item=item(), failure=failure)
    send(crawler, signals.item_dropped, item=item(), exception=DropImage("failed", "x"))
    assert civitai_stats(crawler) == {outcomes.FAILED: 2}


def test_every_outcome_lands_in_one_bucket(crawler: Any) -> None:
    send(crawler, signals.item_scraped, item=item())
    send(crawler, signals.item_dropped, item=item(), exception=DropImage("duplicate", "x"))
    send(crawler, signals.item_dropped, item=item(), exception=DropImage("failed", "x"))
    send(crawler, signals.item_error, item=item(), failure=Failure(ValueError("x")))
    values = civitai_stats(crawler)
    assert values.pop("civitai/saved/image") == 1  # a part of civitai/saved, not a bucket of its own
    assert sum(values.values()) == 4
    assert values == {outcomes.SAVED: 1, "civitai/dropped/duplicate": 1, outcomes.FAILED: 2}


def test_the_summary_line_adds_up_the_outcomes() -> None:
    stats = {
        "civitai/items_seen": 1290,
        "civitai/saved": 1210,
        "civitai/saved/image": 1200,
        "civitai/saved/video": 10,
        "civitai/dropped/below_threshold": 20,
        "civitai/dropped/other_chain": 50,
        "civitai/failed": 2,
    }
    assert summary(stats, "finished") == (
        "Crawl ended (finished): 1,210 saved (1,200 images, 10 videos), 70 dropped "
        "(other_chain 50, below_threshold 20), 2 failed, of 1,290 listed"
    )


def test_the_summary_line_tells_what_images_listed_twice_mean() -> None:
    line = summary({"civitai/items_seen": 9, "civitai/saved": 2, "civitai/dropped/duplicate": 7}, "shutdown")
    assert line.startswith(
        "Crawl ended (shutdown): 2 saved, 7 dropped (duplicate 7), 0 failed, of 9 listed; "
    )
    assert "7 came twice in one chain: the listing moved" in line
    assert "skipped without a trace" in line
    assert "came twice" not in summary({"civitai/dropped/other_chain": 7}, "finished")


def test_the_summary_is_logged_when_the_spider_closes(caplog: pytest.LogCaptureFixture) -> None:
    crawler = project_crawler(EXTENSIONS_BASE={}, EXTENSIONS={OutcomeStats: 100})
    crawler.spider = CivitaiSpider.from_crawler(crawler)
    send(crawler, signals.item_scraped, item=item(1))
    with caplog.at_level("INFO"):
        send(crawler, signals.spider_closed, reason="finished")
    assert "Crawl ended (finished): 1 saved (1 image), 0 dropped, 0 failed, of 0 listed" in caplog.text
