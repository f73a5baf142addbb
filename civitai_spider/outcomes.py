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

from typing import cast

from scrapy.exceptions import DropItem

from civitai_spider.errors import describe

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
#: Finish reason: CIVITAI_MAX_STORE_FAILURES items in a row failed because a store did.
STORE_ERROR = "store_error"
#: Finish reason: the API answered 451, it refuses requests from this country.
REGION_BLOCKED = "region_blocked"
#: Finish reason: ``GET /api/v1/me`` refused CIVITAI_API_KEY (401 or 403) before any page.
API_KEY_REFUSED = "api_key_refused"
#: Finish reason: ``GET /api/v1/models/<model_id>`` says there is no such model, before any page.
MODEL_NOT_FOUND = "model_not_found"
#: Scrapy's finish reason for a graceful stop (one Ctrl-C, SIGTERM, a Scrapyd cancel): with
#: JOBDIR, a pause that the next run resumes. Every other reason ends the job.
SHUTDOWN = "shutdown"
#: Scrapy's finish reason when ``start()`` raised: the crawl never got going.
START_ERROR = "start_error"
#: Scrapy's ``CLOSESPIDER_*`` limits, each its own finish reason.
CLOSESPIDER_REASONS = tuple(
    f"closespider_{limit}"
    for limit in ("itemcount", "pagecount", "timeout", "errorcount", "timeout_no_item", "pagecount_no_item")
)
#: Finish reason -> exit status of ``scrapy crawl``: 0 for an end that did what was asked (the
#: listing done, caught up, a limit, a pause), 1 for a crawl that could not do its work, 2 for
#: a setting or an argument the API refused (as for one refused before the crawl).
EXIT_STATUSES = {
    "finished": 0,
    "caught_up": 0,
    SHUTDOWN: 0,
    **dict.fromkeys(CLOSESPIDER_REASONS, 0),
    API_ERROR: 1,
    CURSOR_LOOP: 1,
    REDIS_ERROR: 1,
    STORE_ERROR: 1,
    REGION_BLOCKED: 1,
    START_ERROR: 1,
    API_KEY_REFUSED: 2,
    MODEL_NOT_FOUND: 2,
}
#: The exit status of a crawl stopped before it could close (Ctrl-C twice): a shell's for SIGINT.
FORCED_STOP_STATUS = 130


def exit_status(reason: str) -> int:
    """The exit status of a crawl that ended with ``reason``; 1 for one nobody planned."""
    return EXIT_STATUSES.get(reason, 1)


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
        # Twisted failures (each has its exception as value), or exceptions. cast: mypy types
        # getattr() with a default of type Any as "Any | None".
        inner = "; ".join(
            describe(cast(BaseException, getattr(reason, "value", reason))) for reason in reasons
        )
        return f"{type(error).__name__}: {inner}"
    return describe(error)
