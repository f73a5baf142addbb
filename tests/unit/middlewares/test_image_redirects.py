"""Tests of :class:`ImageRedirectPolicyMiddleware`: which image redirects are followed."""

from __future__ import annotations

import pytest
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response

from civitai_spider.api import API_META_KEY
from civitai_spider.middlewares.image_redirects import ImageRedirectPolicyMiddleware
from civitai_spider.setting_rules import check_settings
from tests.support.crawls import project_crawler

IMAGE_URL = "https://image.civitai.com/k/uuid/original=true/uuid.jpeg"


def middleware(policy: str | None = None) -> ImageRedirectPolicyMiddleware:
    settings = {} if policy is None else {"CIVITAI_IMAGE_REDIRECTS": policy}
    return ImageRedirectPolicyMiddleware.from_crawler(project_crawler(**settings))


def redirect(location: str, status: int = 302) -> Response:
    return Response(IMAGE_URL, status=status, headers={"Location": location})


@pytest.mark.parametrize(
    ("policy", "location", "followed"),
    [
        (None, "https://other-cdn.example/a.jpeg", True),  # the default is "https"
        ("https", "/relative/on/the/same/https/host.jpeg", True),
        ("https", "http://image.civitai.com/k/uuid/a.jpeg", False),  # down to plain http
        ("https", "ftp://files.example/a.jpeg", False),
        ("any", "http://other.example/a.jpeg", True),
        ("none", "https://image.civitai.com/k/uuid/b.jpeg", False),
    ],
)
def test_policy_decides_which_image_redirects_are_followed(
    policy: str | None, location: str, followed: bool
) -> None:
    response = redirect(location)
    if followed:
        assert middleware(policy).process_response(Request(IMAGE_URL), response) is response
    else:
        with pytest.raises(IgnoreRequest, match="not followed") as refused:
            middleware(policy).process_response(Request(IMAGE_URL), response)
        assert "CIVITAI_IMAGE_REDIRECTS" in str(refused.value) and "HTTP 302" in str(refused.value)


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_every_redirect_status_is_judged(status: int) -> None:
    with pytest.raises(IgnoreRequest):
        middleware("none").process_response(Request(IMAGE_URL), redirect("https://x.example/", status))


def test_api_pages_and_other_answers_pass_untouched() -> None:
    mw = middleware("none")
    page = Request("https://civitai.com/api/v1/images", meta={API_META_KEY: True})
    moved = redirect("https://civitai.com/api/v1/images?cursor=2")
    assert mw.process_response(page, moved) is moved
    ok = Response(IMAGE_URL, status=200)
    assert mw.process_response(Request(IMAGE_URL), ok) is ok
    without_location = Response(IMAGE_URL, status=302)
    assert mw.process_response(Request(IMAGE_URL), without_location) is without_location


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CIVITAI_IMAGE_REDIRECTS='sometimes' is not valid"):
        check_settings(project_crawler(CIVITAI_IMAGE_REDIRECTS="sometimes").settings)
