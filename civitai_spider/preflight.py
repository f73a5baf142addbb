"""What the spider asks the API before the first page: whether it accepts the key, and which
versions a model has.

Both go through Scrapy's downloader (``engine.download_async``), so they get the same retries,
proxy and key handling as pages. Each ends the crawl with its own finish reason when the answer
leaves nothing to crawl, with one ERROR line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy.exceptions import CloseSpider

from civitai_spider import api, outcomes
from civitai_spider.page import stop_for_api_error

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

#: Tries of ``/api/v1/me`` beyond the first: it only checks the key, a crawl does not wait long on it.
_KEY_CHECK_RETRIES = 2


async def check_api_key(crawler: Crawler, api_url: str) -> None:
    """End the crawl (``api_key_refused``) if ``/api/v1/me`` refuses CIVITAI_API_KEY.

    The images endpoint serves a key it does not accept (invalid, expired, revoked) as
    anonymous, PG only, without an error (src/server/auth/bearer-token.ts): a crawl would
    "work" and save the wrong images. ``/api/v1/me`` answers 401 to such a key.
    """
    url = api.endpoint_url(api_url, "me")
    try:
        response = await _get(crawler, url, max_retry_times=_KEY_CHECK_RETRIES)
    except Exception as error:  # the download's own errors, after its retries
        _warn_key_unchecked(url, outcomes.describe_error(error))
        return
    if response.status in (401, 403):
        logger.error(
            "CIVITAI_API_KEY is not accepted by the API: %s answered HTTP %d (%s). The images "
            "API serves such a key as anonymous (PG images only), so the crawl stops here: "
            "check the key, or make a new one in your Civitai account settings",
            url,
            response.status,
            api.server_error_message(response),
        )
        raise CloseSpider(outcomes.API_KEY_REFUSED)
    if response.status == api.REGION_BLOCKED_STATUS:
        stop_for_api_error(f"HTTP 451: {api.server_error_message(response)}", url, response.status)
    user = api.json_object(response)
    if response.status != 200 or user is None:
        _warn_key_unchecked(url, f"HTTP {response.status}: {api.server_error_message(response)}")
        return
    username = user.get("username")
    logger.info("CIVITAI_API_KEY is accepted (user %s)", username if isinstance(username, str) else "?")


async def model_versions(crawler: Crawler, api_url: str, model_id: int) -> tuple[int, ...]:
    """The ids of ``model_id``'s versions, from ``/api/v1/models/<id>``; ends the crawl if none."""
    url = api.endpoint_url(api_url, f"models/{model_id}")
    try:
        response = await _get(crawler, url)
    except Exception as error:  # the download's own errors, after its retries
        stop_for_api_error(outcomes.describe_error(error), url)
    if response.status == 404:
        logger.error(
            "model_id=%d: the API has no such model (%s answered HTTP 404: %s)",
            model_id,
            url,
            api.server_error_message(response),
        )
        raise CloseSpider(outcomes.MODEL_NOT_FOUND)
    if response.status != 200:
        reason = f"HTTP {response.status}: {api.server_error_message(response)}"
        stop_for_api_error(reason, url, response.status)
    versions = _version_ids(api.json_object(response))
    if versions is None:
        stop_for_api_error("the answer has no list of modelVersions with their ids", url)
    if not versions:
        logger.warning("Model %d lists no published version: there is nothing to crawl", model_id)
        raise CloseSpider("finished")
    logger.info(
        "Model %d has %d version(s): one chain per version (modelVersionId %s)",
        model_id,
        len(versions),
        ", ".join(map(str, versions)),
    )
    return versions


async def _get(crawler: Crawler, url: str, **meta: Any) -> Response:
    """GET an API address through Scrapy's downloader (retries, the key, the API's slot)."""
    request = scrapy.Request(url, meta={**api.request_meta(), **meta}, dont_filter=True)
    return await crawler.engine.download_async(request)


def _warn_key_unchecked(url: str, reason: str) -> None:
    logger.warning(
        "Could not check CIVITAI_API_KEY with %s (%s): crawling on. A key the API does not "
        "accept would give PG images only",
        url,
        reason,
    )


def _version_ids(model: dict[str, Any] | None) -> tuple[int, ...] | None:
    """The version ids in a ``/api/v1/models/<id>`` answer, in its order, once each (``None``:
    not such an answer)."""
    versions = model.get("modelVersions") if model is not None else None
    if not isinstance(versions, list):
        return None
    ids: list[Any] = [version.get("id") if isinstance(version, dict) else None for version in versions]
    if not all(type(version_id) is int and version_id > 0 for version_id in ids):
        return None
    return tuple(dict.fromkeys(ids))
