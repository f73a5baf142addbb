"""Tests of :class:`BackoffRetryMiddleware`: backoff, ``Retry-After``, API pages that are not pages."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from email.utils import formatdate
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse, Response, TextResponse
from scrapy.settings import Settings
from twisted.internet.error import ConnectionRefusedError

from civitai_spider.api import API_PAGE_META_KEY
from civitai_spider.middlewares.retry import BackoffRetryMiddleware, _retry_after_seconds
from civitai_spider.setting_rules import check_settings
from civitai_spider.spiders.civitai import CivitaiSpider
from tests.support.crawls import project_crawler

URL = "http://127.0.0.1:9/api/v1/images?limit=200"


def middleware(**settings: Any) -> BackoffRetryMiddleware:
    crawler = project_crawler(**settings)
    # _retry() needs the running spider (for its settings, stats and log context).
    crawler.spider = CivitaiSpider.from_crawler(crawler)
    return BackoffRetryMiddleware.from_crawler(crawler)


def response(
    status: int = 200, headers: dict[str, str] | None = None, request: Request | None = None
) -> Response:
    return Response(URL, status=status, headers=headers or {}, request=request)


def api_request(**meta: Any) -> Request:
    return Request(URL, meta={API_PAGE_META_KEY: True, **meta})


def timed(awaitable: Any) -> tuple[Any, float]:
    async def run() -> tuple[Any, float]:
        started = time.monotonic()
        result = await awaitable
        return result, time.monotonic() - started

    return asyncio.run(run())


def logged_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        record.args[0]
        for record in caplog.records
        if record.name == "civitai_spider.middlewares.retry" and record.msg.startswith("Waiting")
    ]


# --- _retry_after_seconds --------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [("2", 2.0), ("0", 0.0), (" 5 ", 5.0), ("1.5", 1.5), ("-3", 0.0)],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert _retry_after_seconds(response(503, {"Retry-After": value})) == seconds


@pytest.mark.parametrize("value", ["soon", "", "Mon, 99 Foo 2024", "2 seconds"])
def test_retry_after_junk_is_none(value: str) -> None:
    assert _retry_after_seconds(response(503, {"Retry-After": value})) is None


@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_retry_after_nan_is_junk(value: str) -> None:
    # float() accepts "nan"; it is not a number of seconds.
    assert _retry_after_seconds(response(503, {"Retry-After": value})) is None


def test_retry_after_nan_waits_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.01)
    request = api_request()
    with caplog.at_level(logging.DEBUG, logger="civitai_spider.middlewares.retry"):
        result, _ = timed(mw.process_response(request, response(503, {"Retry-After": "nan"}, request)))
    assert isinstance(result, Request)
    assert logged_delays(caplog) == pytest.approx([0.01])


def test_retry_after_absent_is_none() -> None:
    assert _retry_after_seconds(response(503)) is None


def test_retry_after_http_date_in_the_future_is_its_distance() -> None:
    value = formatdate(time.time() + 30, usegmt=True)
    assert 28.0 <= _retry_after_seconds(response(503, {"Retry-After": value})) <= 30.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    value = formatdate(time.time() - 3600, usegmt=True)
    assert _retry_after_seconds(response(503, {"Retry-After": value})) == 0.0


# --- process_response ------------------------------------------------------------------


def test_503_with_retry_after_waits_for_it() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.01)
    request = api_request()
    result, elapsed = timed(mw.process_response(request, response(503, {"Retry-After": "1"}, request)))
    assert isinstance(result, Request)
    assert result.url == request.url
    assert result.meta["retry_times"] == 1
    assert result.meta[API_PAGE_META_KEY] is True
    assert result.dont_filter is True
    assert elapsed >= 0.9
    assert mw.crawler.stats.get_value("retry/count") == 1


def test_backoff_doubles_per_try(caplog: pytest.LogCaptureFixture) -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.05, CIVITAI_RETRY_MAX_DELAY=10)
    request = api_request()
    elapsed = []
    with caplog.at_level(logging.DEBUG, logger="civitai_spider.middlewares.retry"):
        for _ in range(3):
            request, seconds = timed(mw.process_response(request, response(503, request=request)))
            assert isinstance(request, Request)
            elapsed.append(seconds)
    assert request.meta["retry_times"] == 3
    assert logged_delays(caplog) == pytest.approx([0.05, 0.1, 0.2])
    for seconds, expected in zip(elapsed, (0.05, 0.1, 0.2), strict=True):
        assert seconds >= expected * 0.9


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it(caplog: pytest.LogCaptureFixture) -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.1)
    request = api_request()
    with caplog.at_level(logging.DEBUG, logger="civitai_spider.middlewares.retry"):
        result, elapsed = timed(mw.process_response(request, response(429, {"Retry-After": "0"}, request)))
    assert isinstance(result, Request)
    assert logged_delays(caplog) == pytest.approx([0.1])
    assert elapsed >= 0.09


def test_wait_is_capped_by_the_maximum_delay() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.01, CIVITAI_RETRY_MAX_DELAY=0.2)
    request = api_request()
    result, elapsed = timed(mw.process_response(request, response(503, {"Retry-After": "30"}, request)))
    assert isinstance(result, Request)
    assert 0.18 <= elapsed < 5


def test_zero_delays_do_not_wait(caplog: pytest.LogCaptureFixture) -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0, CIVITAI_RETRY_MAX_DELAY=0)
    request = api_request()
    with caplog.at_level(logging.DEBUG, logger="civitai_spider.middlewares.retry"):
        result, _ = timed(mw.process_response(request, response(503, {"Retry-After": "30"}, request)))
    assert isinstance(result, Request)
    assert logged_delays(caplog) == []


def test_html_200_api_page_is_retried() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0)
    request = api_request()
    html = HtmlResponse(URL, status=200, body=b"<html><body>Bad gateway</body></html>", request=request)
    result, _ = timed(mw.process_response(request, html))
    assert isinstance(result, Request)
    assert result.meta["retry_times"] == 1


def test_json_200_without_items_is_retried() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0)
    request = api_request()
    body = json.dumps({"error": "oops"}).encode()
    page = TextResponse(URL, status=200, body=body, encoding="utf-8", request=request)
    result, _ = timed(mw.process_response(request, page))
    assert isinstance(result, Request)


def test_json_200_api_page_with_items_passes_through() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0)
    request = api_request()
    body = json.dumps({"items": [{"id": 1}], "metadata": {}}).encode()
    page = TextResponse(URL, status=200, body=body, encoding="utf-8", request=request)
    result, _ = timed(mw.process_response(request, page))
    assert result is page


def test_html_200_image_response_is_not_checked() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0)
    request = Request("https://image.civitai.com/k/u/original=true/u.jpeg")
    html = HtmlResponse(request.url, status=200, body=b"<html></html>", request=request)
    result, _ = timed(mw.process_response(request, html))
    assert result is html


def test_non_retryable_status_passes_through() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0)
    request = api_request()
    answer = response(404, request=request)
    result, _ = timed(mw.process_response(request, answer))
    assert result is answer


def test_exhausted_retries_return_the_response() -> None:
    mw = middleware(RETRY_TIMES=1, CIVITAI_RETRY_BASE_DELAY=0)
    request = api_request(retry_times=1)
    answer = response(503, request=request)
    result, _ = timed(mw.process_response(request, answer))
    assert result is answer
    assert mw.crawler.stats.get_value("retry/max_reached") == 1


def test_dont_retry_is_respected() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0)
    request = api_request(dont_retry=True)
    answer = response(503, {"Retry-After": "30"}, request)
    result, _ = timed(mw.process_response(request, answer))
    assert result is answer
    html = HtmlResponse(URL, status=200, body=b"<html></html>", request=request)
    assert timed(mw.process_response(request, html))[0] is html


# --- process_exception -----------------------------------------------------------------


def test_retryable_exception_is_retried_after_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.1)
    request = api_request()
    with caplog.at_level(logging.DEBUG, logger="civitai_spider.middlewares.retry"):
        result, elapsed = timed(mw.process_exception(request, ConnectionRefusedError()))
    assert isinstance(result, Request)
    assert result.meta["retry_times"] == 1
    assert logged_delays(caplog) == pytest.approx([0.1])
    assert elapsed >= 0.09


def test_other_exception_is_not_retried() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.1)
    result, _ = timed(mw.process_exception(api_request(), ValueError("a bug")))
    assert result is None


def test_exception_with_dont_retry_is_not_retried() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY=0.1)
    result, _ = timed(mw.process_exception(api_request(dont_retry=True), ConnectionRefusedError()))
    assert result is None


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CIVITAI_RETRY_BASE_DELAY", "CIVITAI_RETRY_MAX_DELAY"])
def test_negative_delays_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        check_settings(Settings({name: "-1"}))
    with pytest.raises(ValueError, match=name):
        check_settings(project_crawler(**{name: -0.5}).settings)


def test_settings_are_read() -> None:
    mw = middleware(CIVITAI_RETRY_BASE_DELAY="0.25", CIVITAI_RETRY_MAX_DELAY="7")
    assert (mw.base_delay, mw.max_delay) == (0.25, 7.0)
    assert mw.max_retry_times == 5  # the project's RETRY_TIMES
