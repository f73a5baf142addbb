"""Tests of :class:`ApiKeyMiddleware`: the key goes to the API origin only, and only while on the wire."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy import Request
from scrapy.http import Response
from twisted.internet.error import ConnectionRefusedError

from civitai_spider.api import API_META_KEY
from civitai_spider.middlewares.api_key import ApiKeyMiddleware
from tests.support.crawls import project_crawler

API_URL = "https://civitai.com/api/v1/images"
BEARER = b"Bearer s3cret-key"


def middleware(api_key: str = "s3cret-key", api_url: str = API_URL, **settings: Any) -> ApiKeyMiddleware:
    return ApiKeyMiddleware.from_crawler(
        project_crawler(CIVITAI_API_KEY=api_key, CIVITAI_API_URL=api_url, **settings)
    )


def page_request(url: str, **headers: str) -> Request:
    """A request the spider makes for an API page (images are never marked so)."""
    return Request(url, headers=headers, meta={API_META_KEY: True})


def sent_header(mw: ApiKeyMiddleware, url: str, **headers: str) -> bytes | None:
    request = page_request(url, **headers)
    assert mw.process_request(request) is None
    return request.headers.get("Authorization")


@pytest.mark.parametrize(
    "url",
    [
        API_URL + "?limit=200&cursor=2%7C1",
        "https://civitai.com/api/v1/images",
        "https://civitai.com:443/api/v1/images?x=1",
        "https://CIVITAI.com/api/v1/models",
    ],
)
def test_key_is_sent_to_the_api_origin(url: str) -> None:
    assert sent_header(middleware(), url) == BEARER


@pytest.mark.parametrize(
    "url",
    [
        "http://civitai.com/api/v1/images",  # http, not https
        "https://civitai.com:8443/api/v1/images",  # another port
        "https://image.civitai.com/xG1/uuid/original=true/uuid.jpeg",  # the CDN
        "https://civitai.com.evil.example/api/v1/images",
        "https://evil.example/?https://civitai.com/api/v1/images",
    ],
)
def test_key_is_not_sent_elsewhere(url: str) -> None:
    assert sent_header(middleware(), url) is None


def test_loopback_api_with_a_port() -> None:
    mw = middleware(api_url="http://127.0.0.1:8765/api/v1/images")
    assert sent_header(mw, "http://127.0.0.1:8765/api/v1/images?limit=2") == BEARER
    assert sent_header(mw, "http://127.0.0.1:8766/api/v1/images?limit=2") is None
    assert sent_header(mw, "http://localhost:8765/api/v1/images?limit=2") is None
    assert sent_header(mw, "https://127.0.0.1:8765/api/v1/images?limit=2") is None


def test_existing_authorization_on_a_foreign_request_is_removed() -> None:
    mw = middleware()
    assert sent_header(mw, "https://image.civitai.com/a.jpeg", Authorization="Bearer s3cret-key") is None


def test_existing_authorization_on_an_api_request_is_replaced() -> None:
    assert sent_header(middleware(), API_URL, Authorization="Basic dXNlcjpwYXNz") == BEARER


def test_no_key_sends_no_header() -> None:
    mw = middleware(api_key="")
    assert sent_header(mw, API_URL) is None
    assert sent_header(mw, API_URL, Authorization="Bearer stale") is None


def test_header_is_gone_after_the_response() -> None:
    mw = middleware()
    request = page_request(API_URL)
    mw.process_request(request)
    assert request.headers.get("Authorization") == BEARER
    answer = Response(API_URL, status=503, request=request)
    assert mw.process_response(request, answer) is answer
    assert "Authorization" not in request.headers
    assert "Authorization" not in request.copy().headers
    assert "Authorization" not in request.replace(url=API_URL + "?retry=1").headers


def test_header_is_gone_after_an_exception() -> None:
    mw = middleware()
    request = page_request(API_URL)
    mw.process_request(request)
    assert request.headers.get("Authorization") == BEARER
    assert mw.process_exception(request, ConnectionRefusedError()) is None
    assert "Authorization" not in request.headers
    assert "Authorization" not in request.copy().headers


def test_key_is_not_in_the_url() -> None:
    request = page_request(API_URL + "?limit=2")
    middleware().process_request(request)
    assert "s3cret" not in request.url


def test_an_image_download_never_carries_the_key_even_from_the_api_host() -> None:
    # An image whose address (or a redirect) points at the API host is still not an API page.
    request = Request(API_URL + "/../image.jpeg")
    assert middleware().process_request(request) is None
    assert request.headers.get("Authorization") is None
