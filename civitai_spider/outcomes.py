"""What can happen to an API item, and how a crawl can end.

Every item the API lists ends as exactly one of: saved (``civitai/saved``, split by media
in ``civitai/saved/image`` and ``civitai/saved/video``), dropped for a
reason (``civitai/dropped/<reason>``) or failed (``civitai/failed``); their sum is
``civitai/items_seen``. The counting itself is done by
:class:`civitai_spider.extensions.outcome_stats.OutcomeStats` from Scrapy's item signals.

A crawl ends with a finish reason (the ``finish_reason`` stat); :data:`EXIT_STATUSES` says
which ones make ``scrapy crawl`` exit with a status other than 0.
"""

from __future__ import annotations

from scrapy.exceptions import DropItem

#: Every stat of this project starts with it (a shared crawl's Redis counts are the same without it).
STATS_PREFIX = "civitai/"
ITEMS_SEEN = "civitai/items_seen"
#: Images and videos saved; ``civitai/saved/image`` and ``civitai/saved/video`` count them apart.
SAVED = "civitai/saved"
FAILED = "civitai/failed"
METADATA_FILES_SAVED = "civitai/metadata_files_saved"
DROPPED_PREFIX = "civitai/dropped/"

#: The drop reason used for items whose image could not be downloaded or saved.
FAILED_REASON = "failed"
#: The drop reason of an id listed twice by one chain: the sign that its ranking moved.
DUPLICATE_REASON = "duplicate"

#: Finish reason: an API page failed for good (after its retries, or a 400).
API_ERROR = "api_error"
#: Finish reason: the API gave a cursor a second time.
CURSOR_LOOP = "cursor_loop"
#: Finish reason: Redis stayed out of reach for CIVITAI_REDIS_TIMEOUT seconds (a shared crawl).
REDIS_ERROR = "redis_error"
#: Finish reason: the API answered 451, it refuses requests from this country.
REGION_BLOCKED = "region_blocked"
#: Finish reason: ``GET /api/v1/me`` refused CIVITAI_API_KEY (401 or 403) before any page.
API_KEY_REFUSED = "api_key_refused"
#: Finish reason: ``GET /api/v1/models/<model_id>`` says there is no such model, before any page.
MODEL_NOT_FOUND = "model_not_found"
#: Scrapy's finish reason for a graceful stop (one Ctrl-C, SIGTERM, a Scrapyd cancel): with
#: JOBDIR, a pause that the next run resumes. Every other reason ends the job.
SHUTDOWN = "shutdown"
#: Finish reason -> exit status of ``scrapy crawl``: 1 for a crawl that could not do its work,
#: 2 for a setting or an argument the API refused (as for one refused before the crawl). Any
#: other end (``finished``, ``caught_up``, ``closespider_*``, ``shutdown``) exits with 0.
EXIT_STATUSES = {
    API_ERROR: 1,
    CURSOR_LOOP: 1,
    REDIS_ERROR: 1,
    REGION_BLOCKED: 1,
    API_KEY_REFUSED: 2,
    MODEL_NOT_FOUND: 2,
}


def saved_key(media: str) -> str:
    return f"{SAVED}/{media}"


def dropped_key(reason: str) -> str:
    return DROPPED_PREFIX + reason


class DropImage(DropItem):
    """Drop an item for a named ``reason`` (the stats key suffix).

    Filters drop at DEBUG: a crawl below the thresholds drops thousands of items on
    purpose, which is no news. Failures use WARNING.
    """

    def __init__(self, reason: str, message: str, log_level: str = "DEBUG"):
        super().__init__(message, log_level=log_level)
        self.reason = reason


def counted_as(item_media: str, exception: BaseException | None = None) -> list[str]:
    """The counts (stats keys without :data:`STATS_PREFIX`) of an item saved, or dropped by ``exception``."""
    if exception is None:
        return ["saved", f"saved/{item_media}"]
    reason = getattr(exception, "reason", "other")
    return ["failed"] if reason == FAILED_REASON else [f"dropped/{reason}"]


def describe_error(error: BaseException) -> str:
    """``Type: message`` of a download error, for the log and ``error_log.txt``.

    Scrapy wraps a failed response (a reset, a connection lost) in ``DownloadFailedError``
    whose message is the repr of a list of Twisted failures; the errors behind it read better.
    """
    reasons = getattr(error.__cause__, "reasons", None)
    if isinstance(reasons, list) and reasons:
        inner = "; ".join(_describe(getattr(reason, "value", reason)) for reason in reasons)
        return f"{type(error).__name__}: {inner}"
    return _describe(error)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
