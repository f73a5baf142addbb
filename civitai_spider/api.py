"""Civitai's API as a client sees it: its addresses, what a usable page is, what an error says.

Shared by the spider (which reads pages), the retry middleware (which retries a page that
is not one: Civitai's edge sometimes answers an HTML error page with status 200) and the
API key middleware (which sends the key to the API's origin only).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urljoin, urlsplit

from scrapy.http import Response, TextResponse

from civitai_spider import outcomes

logger = logging.getLogger(__name__)

#: ``Request.meta`` key marking a request to the API (a page, ``/me``, ``/models/<id>``): it
#: carries the API key, to the API's origin only.
API_META_KEY = "civitai_api"
#: ``Request.meta`` key marking a request for an API page (checked as one, retried if it is not).
API_PAGE_META_KEY = "civitai_api_page"
#: The download slot of API requests (the spider gives it ``CIVITAI_API_CONCURRENCY`` places).
API_DOWNLOAD_SLOT = "civitai-api"
#: Status of the API's answer to a country where Civitai blocks its API (``REGION_BLOCKED``).
REGION_BLOCKED_STATUS = 451


def request_meta(*, page: bool = False) -> dict[str, Any]:
    """``Request.meta`` of an API request (``page``: of an images page): the key, the API's
    slot, and Scrapy's "Gave up retrying" at DEBUG (the caller logs one ERROR with the reason)."""
    meta: dict[str, Any] = {
        API_META_KEY: True,
        "download_slot": API_DOWNLOAD_SLOT,
        "give_up_log_level": "DEBUG",
    }
    if page:
        meta[API_PAGE_META_KEY] = True
    return meta


def log_failure(reason: str, url: str, status: int | None = None) -> str:
    """Log why an API request failed for good (one ERROR line); the finish reason it gives."""
    if status == REGION_BLOCKED_STATUS:
        logger.error(
            "The API refuses requests from this country, stopping the crawl: %s. Civitai blocks "
            "its API in some regions; crawl from a machine elsewhere (%s)",
            reason,
            url,
        )
        return outcomes.REGION_BLOCKED
    logger.error("The API request failed, stopping the crawl: %s (%s)", reason, url)
    return outcomes.API_ERROR


def json_object(response: Response) -> dict[str, Any] | None:
    """The JSON object of an answer (``None`` when it is not one)."""
    try:
        payload = json.loads(response.body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


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


def endpoint_url(api_url: str, path: str) -> str:
    """The address of another API endpoint beside the images one: ``me``, ``models/123``.

    ``https://civitai.red/api/v1/images`` -> ``https://civitai.red/api/v1/me``: the same
    origin, so the key goes where the images' key goes and nowhere else.
    """
    return urljoin(urlsplit(api_url)._replace(query="", fragment="").geturl(), path)


def server_error_message(response: Response, limit: int = 300) -> str:
    """The ``error`` text of an API error answer, or the start of its body."""
    body = response.body[: 64 * 1024]
    try:
        payload: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
    else:
        text = _error_text(payload.get("error", payload) if isinstance(payload, dict) else payload)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(error: Any) -> str:
    """An ``error`` value as one readable text: a string, or the messages of zod's issues.

    A 400 of the images endpoint is ``{"error": <ZodError>}`` (src/pages/api/v1/images/index.ts);
    zod 4 serialises it as ``{"name": "ZodError", "message": "<the issues as JSON text>"}``,
    zod 3 as ``{"issues": [...], "name": "ZodError"}``. Either way each issue has a ``path``
    and a ``message``: ``limit: Too big: expected number to be <=200``.
    """
    if isinstance(error, str):
        return error
    issues = error.get("issues") if isinstance(error, dict) else None
    if issues is None and isinstance(error, dict) and isinstance(error.get("message"), str):
        try:
            issues = json.loads(error["message"])
        except ValueError:
            return error["message"]
    if isinstance(issues, list) and issues and all(isinstance(issue, dict) for issue in issues):
        return "; ".join(_issue_text(issue) for issue in issues)
    return json.dumps(error, ensure_ascii=False)


def _issue_text(issue: dict[str, Any]) -> str:
    path = issue.get("path")
    where = ".".join(str(part) for part in path) if isinstance(path, list) and path else ""
    message = issue.get("message")
    message = message if isinstance(message, str) else json.dumps(issue, ensure_ascii=False)
    return f"{where}: {message}" if where else message


def _content_type(response: Response) -> str:
    content_type = response.headers.get("Content-Type", b"")
    assert content_type is not None  # the header's last value, or the default
    return content_type.decode("latin-1")


def origin(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of ``url``, with the scheme's default port filled in."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, parts.hostname, port
