"""The ``civitai`` spider: walks ``/api/v1/images`` page by page and yields one item per image.

Pagination follows the opaque ``metadata.nextCursor`` the API returns; the next page is
requested as soon as a page arrives, before its items go through the pipelines.

With JOBDIR, a job paused by a graceful stop (finish reason ``shutdown``) goes on from its
saved page request; a job that ended any other way walks again from the first page.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import scrapy
from scrapy.exceptions import CloseSpider
from scrapy.http import Response
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.defer import deferred_from_coro
from twisted.python.failure import Failure

from civitai_spider import outcomes
from civitai_spider.api import (
    API_DOWNLOAD_SLOT,
    API_PAGE_META_KEY,
    origin,
    page_problem,
    server_error_message,
)
from civitai_spider.items import CivitaiImage, InvalidApiItem
from civitai_spider.local_files import ERROR_LOG_NAME, append_line, log_line
from civitai_spider.stores import log_directory

if TYPE_CHECKING:
    from scrapy.core.scheduler import BaseScheduler

logger = logging.getLogger(__name__)

#: Keys of ``self.state`` (JOBDIR): the walk's progress, and how the last run of the job ended.
_PROGRESS_KEY = "civitai_progress"
_LAST_END_KEY = "civitai_last_end"

SORTS = ("Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random")
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")
NSFW_LEVELS = ("None", "Soft", "Mature", "X", "true", "false")
MAX_LIMIT = 200
_USERNAME = re.compile(r"[A-Za-z0-9_]+")
#: ``media=`` -> the item types a crawl keeps (the API's ``type``; none sent for ``all``).
MEDIA_TYPES = {"image": ("image",), "video": ("video",), "all": ("image", "video")}
#: Item types the spider knows; any other is dropped as ``unknown_type``.
_KNOWN_TYPES = ("image", "video", "audio")
#: The API's browsingLevel bitmask: PG=1, PG13=2, R=4, X=8, XXX=16, Blocked=32.
MAX_BROWSING_LEVEL = 63
_ARGUMENTS = (
    "sort", "period", "nsfw", "browsing_level", "media", "limit", "username", "user_id",
    "model_id", "model_version_id", "post_id", "image_id", "tags", "base_models",
    "max_pages", "stop_after_seen",
)  # fmt: skip
#: Spider arguments that are sent as the API's integer parameters.
_INTEGER_PARAMETERS = (
    ("user_id", "userId"),
    ("model_id", "modelId"),
    ("model_version_id", "modelVersionId"),
    ("post_id", "postId"),
    ("image_id", "imageId"),
)


class CivitaiSpider(scrapy.Spider):
    """Spider arguments (``-a name=value``) map to the API's query parameters."""

    name = "civitai"

    def __init__(self, *args: Any, **kwargs: Any):
        _check_argument_names(kwargs)
        arguments = {name: kwargs.pop(name) for name in _ARGUMENTS if name in kwargs}
        super().__init__(*args, **kwargs)
        self.query, self.max_pages, self.stop_after_seen = parse_arguments(arguments)
        self.media_types = MEDIA_TYPES[arguments.get("media", "image")]
        if "browsing_level" in arguments and "nsfw" in arguments:
            logger.info("browsing_level=%s overrides nsfw=%s", arguments["browsing_level"], arguments["nsfw"])
        #: Cursors followed and pages done. With JOBDIR it lives in ``self.state``, which
        #: Scrapy saves on a pause, so a resumed job still catches a loop and counts pages.
        self._progress: dict[str, Any] = {"cursors_seen": set(), "pages": 0}

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, str]) -> None:
        """Raise ``ValueError`` naming the first bad spider argument (used by ``scrapy crawl``)."""
        _check_argument_names(arguments)
        parse_arguments({name: value for name, value in arguments.items() if name in _ARGUMENTS})

    async def start(self) -> AsyncIterator[scrapy.Request]:
        settings = self.crawler.settings
        self.api_url: str = settings.get("CIVITAI_API_URL")
        if settings.getbool("CIVITAI_WITH_TAGS"):
            self.query["withTags"] = "true"
        self._error_log = log_directory(settings) / ERROR_LOG_NAME
        self._error_log.parent.mkdir(parents=True, exist_ok=True)
        if self._resume_paused_job():
            return
        yield self._page_request(cursor=None)

    def _resume_paused_job(self) -> bool:
        """With JOBDIR, whether a paused job goes on from its saved page request.

        Otherwise the job state is set up for a new walk from the first page.
        """
        job_state = getattr(self, "state", None)  # set by Scrapy's SpiderState with JOBDIR
        if job_state is None:
            return False
        last_end = job_state.get(_LAST_END_KEY)
        scheduler = self.crawler.engine.scheduler
        if last_end == outcomes.SHUTDOWN and scheduler is not None and scheduler.has_pending_requests():
            self._progress = job_state.setdefault(_PROGRESS_KEY, self._progress)
            logger.info(
                "Resuming a paused job after %d page(s): continuing from its saved page request",
                self._progress["pages"],
            )
            return True
        # A job that ended (or a pause with no page left to ask for) starts over: the
        # cursors it followed would look like a loop now. An end that did not wait for the
        # last page (CLOSESPIDER_ITEMCOUNT...) may have left the next page request queued,
        # since it is asked for before a page's items: that is no place to start from either.
        job_state[_PROGRESS_KEY] = self._progress
        dropped = _drop_queued_requests(scheduler) if scheduler is not None else 0
        if last_end is not None:
            logger.info("The last run of this job ended (%s): starting a new walk from page 1", last_end)
        if dropped:
            logger.info("Dropped %d page request(s) that the last run left queued in JOBDIR", dropped)
        return False

    def closed(self, reason: str) -> None:
        """With JOBDIR, keep how this run ended in the job state: the next run resumes a pause only."""
        job_state = getattr(self, "state", None)
        if job_state is not None:
            # Scrapy's SpiderState pickles self.state in its own spider_closed handler, which
            # runs after this one: the spider connects its handler when it is built, before
            # the extensions are, and the handlers are called in that order.
            job_state[_LAST_END_KEY] = reason

    def _page_request(self, cursor: str | None) -> scrapy.Request:
        query = dict(self.query)
        if cursor is not None:
            query["cursor"] = cursor
        return self._api_request(f"{self.api_url}?{urlencode(query)}")

    def _api_request(self, url: str) -> scrapy.Request:
        return scrapy.Request(
            url,
            callback=self.parse_page,
            errback=self.api_failed,
            # A page that used up its retries is reported by api_failed or parse_page, as one
            # ERROR with the reason; Scrapy's "Gave up retrying" would be a second one.
            meta={API_PAGE_META_KEY: True, "download_slot": API_DOWNLOAD_SLOT, "give_up_log_level": "DEBUG"},
            # Cursor loops are detected below, with a clear reason; the dupefilter
            # would end them silently.
            dont_filter=True,
        )

    def parse_page(self, response: Response) -> Iterator[scrapy.Request | CivitaiImage]:
        problem = page_problem(response)
        if problem is not None:
            # The retry middleware already retried this page; give up loudly.
            self._stop_for_api_error(problem, response.url)
        payload = response.json()
        self._progress["pages"] += 1
        records = payload["items"]
        metadata = payload.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}

        # Ask for the next page first, so that it downloads while this page's images do.
        next_request = self._next_page_request(metadata, len(records))
        if next_request is not None:
            yield next_request

        stats = self.crawler.stats
        stats.inc_value(outcomes.ITEMS_SEEN, len(records))
        for record in records:
            try:
                item = CivitaiImage.from_api(record)
            except InvalidApiItem as error:
                self._reject(error.reason, str(error), record)
                continue
            if item.type not in self.media_types:
                # The API filters by `type` already; this catches what it lets through anyway
                # (with media=all: audio, which nothing here can save).
                reason = item.type if item.type in _KNOWN_TYPES else "unknown_type"
                stats.inc_value(outcomes.dropped_key(reason))
                logger.debug("Skipped %s %s: not asked for (%s)", item.type, item.id, reason)
                continue
            yield item

    def _next_page_request(self, metadata: dict[str, Any], item_count: int) -> scrapy.Request | None:
        pages = self._progress["pages"]
        if self.max_pages is not None and pages >= self.max_pages:
            logger.info("Stopping after max_pages=%d page(s)", self.max_pages)
            return None
        cursor = metadata.get("nextCursor")
        cursor = "" if cursor is None else str(cursor)
        next_page = metadata.get("nextPage")
        if cursor:
            seen_key, request = cursor, self._page_request(cursor)
        elif isinstance(next_page, str) and next_page:
            if origin(next_page) != origin(self.api_url):
                logger.error(
                    "Not following nextPage %s: it is not on the API host %s", next_page, self.api_url
                )
                return None
            seen_key, request = next_page, self._api_request(next_page)
        else:
            if item_count == 0 and pages > 1:
                # Civitai's older query path answers an empty page without a cursor when
                # its database query times out, so this end may not be the real one.
                logger.warning("Page %d was empty with no cursor: the listing may have ended early", pages)
            return None
        cursors_seen = self._progress["cursors_seen"]
        if seen_key in cursors_seen:
            logger.error("The API returned cursor %r a second time: stopping to avoid a loop", seen_key)
            raise CloseSpider(outcomes.CURSOR_LOOP)
        cursors_seen.add(seen_key)
        return request

    def api_failed(self, failure: Failure) -> None:
        request = failure.request
        if failure.check(HttpError):
            response = failure.value.response
            reason = f"HTTP {response.status}: {server_error_message(response)}"
        else:
            reason = outcomes.describe_error(failure.value)
        _log_api_error(reason, request.url)
        # CloseSpider raised from an errback would make Scrapy log the download error as a
        # second ERROR ("Error downloading"). Close as CloseSpider would: what is in flight
        # finishes, nothing new starts.
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=outcomes.API_ERROR))

    def _stop_for_api_error(self, reason: str, url: str) -> None:
        # From a callback, CloseSpider closes the spider without a log line of Scrapy's.
        _log_api_error(reason, url)
        raise CloseSpider(outcomes.API_ERROR)

    def _reject(self, reason: str, message: str, record: Any) -> None:
        self.crawler.stats.inc_value(outcomes.dropped_key(reason))
        logger.warning("Skipped an API item: %s", message)
        image_id = record.get("id") if isinstance(record, dict) else None
        url = record.get("url") if isinstance(record, dict) else None
        append_line(self._error_log, log_line(repr(image_id), repr(url), message))


def _log_api_error(reason: str, url: str) -> None:
    logger.error("The API request failed, stopping the crawl: %s (%s)", reason, url)


def _drop_queued_requests(scheduler: BaseScheduler) -> int:
    """Take every request out of ``scheduler`` (a JOBDIR queue) without sending it; how many."""
    dropped = 0
    while scheduler.next_request() is not None:
        dropped += 1
    return dropped


def parse_arguments(arguments: Mapping[str, Any]) -> tuple[dict[str, str], int | None, int | None]:
    """Validate spider arguments; return the API query, ``max_pages`` and ``stop_after_seen``."""
    query: dict[str, str] = {
        "limit": str(_integer(arguments, "limit", MAX_LIMIT, maximum=MAX_LIMIT)),
        "withMeta": "true",
        # Without it the API nests meta ({"id": ..., "meta": {...}}) on its older query path
        # (imageId, or modelId without modelVersionId); items.py unwraps that shape anyway.
        "flatMeta": "true",
        "sort": _choice(arguments, "sort", "Most Reactions", SORTS),
        "period": _choice(arguments, "period", "AllTime", PERIODS),
    }
    media = _choice(arguments, "media", "image", tuple(MEDIA_TYPES))
    if media != "all":
        query["type"] = media  # without it videos take room in every page of an image crawl
    if arguments.get("browsing_level") is not None:
        # The API lets browsingLevel override nsfw; sending only one keeps the query honest.
        level = _integer(arguments, "browsing_level", None, maximum=MAX_BROWSING_LEVEL)
        query["browsingLevel"] = str(level)
    elif arguments.get("nsfw") is not None:
        query["nsfw"] = _choice(arguments, "nsfw", None, NSFW_LEVELS)
    username = arguments.get("username")
    if username is not None:
        if not _USERNAME.fullmatch(str(username)):
            raise ValueError(f"username={username!r} is not valid: allowed are letters, digits and _")
        query["username"] = str(username)
    for argument, parameter in _INTEGER_PARAMETERS:
        if arguments.get(argument) is not None:
            query[parameter] = str(_integer(arguments, argument, None))
    tags = arguments.get("tags")
    if tags is not None:
        ids = [tag.strip() for tag in str(tags).split(",") if tag.strip()]
        if not ids or not all(tag.isascii() and tag.isdigit() and int(tag) > 0 for tag in ids):
            raise ValueError(
                f"tags={tags!r} is not valid: allowed are comma-separated tag ids, e.g. '5133,4'"
            )
        query["tags"] = ",".join(str(int(tag)) for tag in ids)
    base_models = arguments.get("base_models")
    if base_models is not None:
        # The server owns the list of base models and answers 400 for unknown ones.
        names = [name.strip() for name in str(base_models).split(",") if name.strip()]
        if not names:
            raise ValueError(
                f"base_models={base_models!r} is empty: give comma-separated names, e.g. 'SDXL 1.0,Pony'"
            )
        query["baseModels"] = ",".join(names)
    max_pages = _integer(arguments, "max_pages", None) if arguments.get("max_pages") is not None else None
    stop_after_seen = None
    if arguments.get("stop_after_seen") is not None:
        stop_after_seen = _integer(arguments, "stop_after_seen", None)
        # Only newest first do the already-downloaded images come after all the new ones; in
        # any other order a run of them says nothing about what is left.
        if query["sort"] != "Newest":
            raise ValueError(
                f"stop_after_seen={arguments['stop_after_seen']!r} requires sort='Newest', "
                f"not sort={query['sort']!r}"
            )
    return query, max_pages, stop_after_seen


def _check_argument_names(arguments: Mapping[str, Any]) -> None:
    # A misspelt argument would otherwise be ignored and crawl everything. Names starting
    # with "_" are Scrapy's and Scrapyd's own (e.g. _job).
    for name in arguments:
        if name not in _ARGUMENTS and not name.startswith("_"):
            raise ValueError(f"unknown spider argument {name!r}: allowed are {', '.join(_ARGUMENTS)}")


def _choice(arguments: Mapping[str, Any], name: str, default: str | None, allowed: tuple[str, ...]) -> str:
    value = arguments.get(name, default)
    if value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{name}={value!r} is not valid: allowed are {choices}")
    return value


def _integer(arguments: Mapping[str, Any], name: str, default: int | None, maximum: int | None = None) -> int:
    value = arguments.get(name, default)
    try:
        number = int(str(value), 10)
    except ValueError:
        number = 0
    if number < 1 or (maximum is not None and number > maximum):
        allowed = f"an integer from 1 to {maximum}" if maximum else "a positive integer"
        raise ValueError(f"{name}={value!r} is not valid: allowed is {allowed}")
    return number
