"""Tests of :mod:`civitai_spider.api`: the API's other endpoints, and its errors made readable."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scrapy.http import Response, TextResponse

from civitai_spider.api import endpoint_url, origin, server_error_message

#: The issues of a 400 of /api/v1/images, as zod 4 words them.
ISSUES = [
    {"origin": "number", "code": "too_big", "maximum": 200, "inclusive": True, "path": ["limit"],
     "message": "Too big: expected number to be <=200"},
    {"code": "invalid_value", "values": ["None", "Soft"], "path": ["nsfw"],
     "message": 'Invalid option: expected one of "None"|"Soft"'},
]  # fmt: skip
READABLE = 'limit: Too big: expected number to be <=200; nsfw: Invalid option: expected one of "None"|"Soft"'


def answer(body: Any, status: int = 400) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return TextResponse("https://civitai.com/api/v1/images", status=status, body=raw, encoding="utf-8")


@pytest.mark.parametrize(
    ("api_url", "path", "expected"),
    [
        ("https://civitai.com/api/v1/images", "me", "https://civitai.com/api/v1/me"),
        ("https://civitai.red/api/v1/images", "models/42", "https://civitai.red/api/v1/models/42"),
        ("http://127.0.0.1:8080/api/v1/images?x=1#f", "me", "http://127.0.0.1:8080/api/v1/me"),
    ],
)
def test_other_endpoints_are_on_the_images_origin(api_url: str, path: str, expected: str) -> None:
    url = endpoint_url(api_url, path)
    assert url == expected
    assert origin(url) == origin(api_url)


def test_a_zod_4_error_object_reads_as_its_messages() -> None:
    # src/pages/api/v1/images/index.ts answers res.status(400).json({ error: reqParams.error }):
    # zod 4 serialises a ZodError as its name and its issues as JSON text.
    body = {"error": {"name": "ZodError", "message": json.dumps(ISSUES, indent=2)}}
    assert server_error_message(answer(body)) == READABLE


def test_a_zod_3_error_object_reads_as_its_messages() -> None:
    assert server_error_message(answer({"error": {"issues": ISSUES, "name": "ZodError"}})) == READABLE


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "Server busy, please retry shortly."}, "Server busy, please retry shortly."),
        ({"error": "Random sort requires a collectionId", "code": "BAD_REQUEST"},
         "Random sort requires a collectionId"),
        ({"error": {"name": "ZodError", "message": "not json"}}, "not json"),
        ({"error": {"code": 7}}, '{"code": 7}'),
        ({"error": {"issues": [{"code": "custom"}]}}, '{"code": "custom"}'),
        (b"<html><body>Bad gateway</body></html>", "<html><body>Bad gateway</body></html>"),
        (["x"], '["x"]'),
    ],
)  # fmt: skip
def test_other_errors_read_as_given(body: Any, expected: str) -> None:
    assert server_error_message(answer(body)) == expected


def test_a_long_error_is_cut() -> None:
    message = server_error_message(answer({"error": "x" * 1000}), limit=50)
    assert message == "x" * 47 + "..."
