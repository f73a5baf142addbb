"""Tests of :class:`CivitaiLogFormatter`: an item is one line, without the item; a media download none."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from scrapy import Request
from scrapy.exceptions import DropItem
from scrapy.http import Response
from scrapy.utils.log import logformatter_adapter

from civitai_spider.api import API_META_KEY
from civitai_spider.items import CivitaiImage
from civitai_spider.logformatter import CivitaiLogFormatter
from civitai_spider.outcomes import DropImage
from civitai_spider.spiders.civitai import CivitaiSpider
from tests.support.crawls import project_crawler

PROMPT = "a very long prompt that must not be logged " * 20


def item() -> CivitaiImage:
    return CivitaiImage.from_api(
        {"id": 77, "url": "https://image.civitai.com/k/77.jpeg", "meta": {"prompt": PROMPT}}
    )


def formatted(exception: BaseException, **settings: Any) -> tuple[int, str]:
    crawler = project_crawler(**settings)
    spider = CivitaiSpider.from_crawler(crawler)
    formatter = crawler.logformatter
    assert isinstance(formatter, CivitaiLogFormatter)  # the project's LOG_FORMATTER
    result = formatter.dropped(item(), exception, None, spider)
    assert set(result["args"]) == {"exception"}  # the item is not passed to the log
    level, message, args = logformatter_adapter(result)
    return level, message % args


def test_filter_drop_is_one_debug_line_without_the_item() -> None:
    level, text = formatted(DropImage("below_threshold", "image 77: heartCount 1 < 2"))
    assert level == logging.DEBUG
    assert text == "Dropped: image 77: heartCount 1 < 2"
    assert "\n" not in text
    assert PROMPT not in text


def test_failure_drop_is_a_warning() -> None:
    level, text = formatted(
        DropImage("failed", "image 77 failed: HTTP 404 <https://x/77.jpeg>", log_level="WARNING")
    )
    assert level == logging.WARNING
    assert text == "Dropped: image 77 failed: HTTP 404 <https://x/77.jpeg>"


@pytest.mark.parametrize("setting, level", [("WARNING", logging.WARNING), ("INFO", logging.INFO)])
def test_plain_drop_item_uses_the_default_level(setting: str, level: int) -> None:
    got_level, text = formatted(DropItem("some other pipeline"), DEFAULT_DROPITEM_LOG_LEVEL=setting)
    assert got_level == level
    assert text == "Dropped: some other pipeline"


def test_logged_record_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    crawler = project_crawler()
    spider = CivitaiSpider.from_crawler(crawler)
    logger = logging.getLogger("tests.logformatter")
    result = crawler.logformatter.dropped(
        item(), DropImage("duplicate", "image 77: listed again"), None, spider
    )
    with caplog.at_level(logging.DEBUG, logger="tests.logformatter"):
        logger.log(*logformatter_adapter(result))
    assert [record.getMessage() for record in caplog.records] == ["Dropped: image 77: listed again"]
    assert caplog.records[0].levelno == logging.DEBUG


def test_a_media_download_has_no_crawled_line_and_an_api_page_has_scrapys() -> None:
    crawler = project_crawler()
    spider = CivitaiSpider.from_crawler(crawler)
    image = Request("https://image.civitai.com/k/77.jpeg")
    assert crawler.logformatter.crawled(image, Response(image.url), spider) is None
    page = Request("https://civitai.com/api/v1/images?limit=200", meta={API_META_KEY: True})
    result = crawler.logformatter.crawled(page, Response(page.url), spider)
    assert result is not None
    level, message, args = logformatter_adapter(result)
    assert level == logging.DEBUG
    assert message % args == f"Crawled (200) <GET {page.url}> (referer: None)"


def test_a_saved_item_is_one_debug_line_without_the_item() -> None:
    crawler = project_crawler()
    spider = CivitaiSpider.from_crawler(crawler)
    saved = item()
    saved.image_file = "77.png"
    page = Response("https://civitai.com/api/v1/images?limit=200")
    result = crawler.logformatter.scraped(saved, page, spider)
    assert result is not None
    level, message, args = logformatter_adapter(result)
    assert (level, message % args) == (logging.DEBUG, "Saved image 77 as 77.png")


def test_another_item_keeps_scrapys_scraped_line() -> None:
    crawler = project_crawler()
    spider = CivitaiSpider.from_crawler(crawler)
    result = crawler.logformatter.scraped({"name": "other"}, None, spider)
    assert result is not None
    _, message, args = logformatter_adapter(result)
    text = message % args
    assert text.startswith("Scraped from ") and text.endswith("{'name': 'other'}"), text
