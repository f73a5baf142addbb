"""What a usable answer of Civitai's ``/api/v1/images`` looks like.

Shared by the spider (which reads pages) and the retry middleware (which retries a
page that is not one: Civitai's edge sometimes answers an HTML error page with
status 200).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from scrapy.http import Response, TextResponse

#: ``Request.meta`` key marking a request for an API page (not an image).
API_PAGE_META_KEY = "civitai_api_page"
#: The download slot of API pages (the spider gives it ``CIVITAI_API_CONCURRENCY`` places).
API_DOWNLOAD_SLOT = "civitai-api"


def page_problem(response: Response) -> str | None:
    """Why ``response`` is not an API page (``None`` when it is one)."""
    if not isinstance(response, TextResponse):
        return f"not JSON (Content-Type {_content_type(response)!r})"
    try:
        # TextResponse caches the decoded JSON: the spider's own call is free.
        payload = response.json()
    except ValueError:
        return f"not JSON (Content-Type {_content_type(response)!r}, body starts {response.body[:60]!r})"
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
        return "JSON without an 'items' list"
    return None


def server_error_message(response: Response, limit: int = 300) -> str:
    """The ``error`` text of an API error answer, or the start of its body."""
    body = response.body[: 64 * 1024]
    try:
        payload: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
    else:
        text = payload.get("error", payload) if isinstance(payload, dict) else payload
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _content_type(response: Response) -> str:
    return response.headers.get("Content-Type", b"").decode("latin-1")


def origin(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of ``url``, with the scheme's default port filled in."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, parts.hostname, port
