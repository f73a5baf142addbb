"""The ``civitai`` spider: walks ``/api/v1/images`` page by page and yields one item per image.

Pagination follows the opaque ``metadata.nextCursor`` the API returns; a chain's next page
is requested as soon as a page arrives, before its items go through the pipelines. With
``split`` a crawl is several chains (:mod:`civitai_spider.chains`), walked at once, at most
``CIVITAI_API_CONCURRENCY`` pages in flight.

With ``CIVITAI_REDIS_URL`` the crawl is shared by every worker with the same arguments
(:mod:`civitai_spider.shared`): pages and images come from Redis, a page's new images go
back there, and any worker saves them.

With JOBDIR, a job paused by a graceful stop (finish reason ``shutdown``) goes on where its
chains stopped; a job that ended any other way walks again from the first page.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, deque
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
from civitai_spider.chains import (
    CAUGHT_UP,
    CURSOR_LOOP,
    END_OF_LISTING,
    MAX_PAGES,
    WHOLE_QUERY,
    Chain,
    crawl_end,
    parse_split,
    split_query,
)
from civitai_spider.items import CivitaiImage, InvalidApiItem
from civitai_spider.local_files import ERROR_LOG_NAME, append_line, log_line
from civitai_spider.outcomes import DropImage
from civitai_spider.pipelines.thresholds import Thresholds
from civitai_spider.shared.crawl import PageMessage, SharedCrawl
from civitai_spider.shared.worker import Worker
from civitai_spider.stores import log_directory, stores_of

if TYPE_CHECKING:
    from scrapy.core.scheduler import BaseScheduler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: Keys of ``self.state`` (JOBDIR): the chains of the walk, and how the last run of the job ended.
_CHAINS_KEY = "civitai_chains"
_LAST_END_KEY = "civitai_last_end"
#: ``Request.meta`` keys of page requests: the chain's name, or a shared crawl's page message.
_CHAIN_META_KEY = "civitai_chain"
_PAGE_MESSAGE_META_KEY = "civitai_page_message"
#: Settings of the spider's own that must be positive numbers (checked before the crawl).
_POSITIVE_SETTINGS: dict[str, int | float] = {
    "CIVITAI_API_CONCURRENCY": 1,
    "CIVITAI_REDIS_CLAIM_AFTER": 1.0,
    "CIVITAI_REDIS_TIMEOUT": 1.0,
}

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
    "max_pages", "stop_after_seen", "split",
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
        self.chain_queries = split_query(self.query, _split_of(arguments))
        self.media_types = MEDIA_TYPES[arguments.get("media", "image")]
        if "browsing_level" in arguments and "nsfw" in arguments:
            logger.info("browsing_level=%s overrides nsfw=%s", arguments["browsing_level"], arguments["nsfw"])
        #: The chains of this walk by name (not in a shared crawl: they are in Redis then). With
        #: JOBDIR they live in ``self.state``, which Scrapy saves on a pause.
        self.chains: dict[str, Chain] = {}
        self.worker: Worker | None = None
        self._pages_in_flight = 0
        #: Page requests waiting for one of the CIVITAI_API_CONCURRENCY places.
        self._waiting_pages: deque[scrapy.Request] = deque()

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, str]) -> None:
        """Raise ``ValueError`` naming the first bad spider argument (used by ``scrapy crawl``)."""
        _check_argument_names(arguments)
        known = {name: value for name, value in arguments.items() if name in _ARGUMENTS}
        query, _, _ = parse_arguments(known)
        split_query(query, _split_of(known))

    @classmethod
    def check_settings(cls, settings: BaseSettings) -> None:
        """Raise ``ValueError`` naming the first bad setting of the spider's (used by ``scrapy crawl``)."""
        for name, minimum in _POSITIVE_SETTINGS.items():
            try:
                value = settings.getfloat(name) if isinstance(minimum, float) else settings.getint(name)
            except ValueError:
                value = None
            if value is None or value < minimum:
                raise ValueError(
                    f"{name}={settings.get(name)!r} is not valid: allowed is a number >= {minimum}"
                )

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        super().update_settings(settings)
        # The API's download slot lets as many pages through as the spider sends at once
        # (CIVITAI_API_CONCURRENCY); the spider's own count is what bounds them.
        slots = dict(settings.getdict("DOWNLOAD_SLOTS"))
        try:
            concurrency = max(settings.getint("CIVITAI_API_CONCURRENCY"), 1)
        except ValueError:
            concurrency = 1  # check_settings reports it
        slots[API_DOWNLOAD_SLOT] = {**slots.get(API_DOWNLOAD_SLOT, {}), "concurrency": concurrency}
        settings.set("DOWNLOAD_SLOTS", slots, priority="spider")

    async def start(self) -> AsyncIterator[scrapy.Request | CivitaiImage]:
        settings = self.crawler.settings
        self.api_url: str = settings.get("CIVITAI_API_URL")
        self.api_concurrency = settings.getint("CIVITAI_API_CONCURRENCY")
        self.thresholds = Thresholds.build(settings)
        if settings.getbool("CIVITAI_WITH_TAGS"):
            for query in (self.query, *self.chain_queries.values()):
                query["withTags"] = "true"
        self._error_log = log_directory(settings) / ERROR_LOG_NAME
        self._error_log.parent.mkdir(parents=True, exist_ok=True)
        first_pages = {
            name: f"{self.api_url}?{urlencode(query)}" for name, query in self.chain_queries.items()
        }
        if len(first_pages) > 1:
            logger.info(
                "Walking %d chains, %s API page(s) at once: %s",
                len(first_pages),
                self.api_concurrency,
                ", ".join(first_pages),
            )
        if settings.get("CIVITAI_REDIS_URL"):
            self.worker = Worker(self.crawler, self._shared_crawl(settings))
            async for element in self.worker.work(self, first_pages):
                yield element
            return
        self.chains = self._chains_to_walk(first_pages)
        self._waiting_pages.extend(self._chain_request(chain) for chain in self.chains.values() if chain.live)
        for request in self._send_pages():
            yield request

    def _shared_crawl(self, settings: BaseSettings) -> SharedCrawl:
        # What makes two workers' crawls the same crawl: the same API and spider arguments.
        definition = {
            "api_url": self.api_url,
            "chains": self.chain_queries,
            "max_pages": self.max_pages,
            "stop_after_seen": self.stop_after_seen,
        }
        if getattr(self, "state", None) is not None:
            logger.warning("JOBDIR is not used by a shared crawl: its state is in Redis")
        return SharedCrawl(
            settings.get("CIVITAI_REDIS_URL"),
            settings.get("CIVITAI_REDIS_PREFIX"),
            definition,
            timeout=settings.getfloat("CIVITAI_REDIS_TIMEOUT"),
            claim_after=settings.getfloat("CIVITAI_REDIS_CLAIM_AFTER"),
        )

    def _chains_to_walk(self, first_pages: dict[str, str]) -> dict[str, Chain]:
        """The chains of this run: a paused job's where it stopped (JOBDIR), else new ones."""
        fresh = {name: Chain(name, url) for name, url in first_pages.items()}
        job_state = getattr(self, "state", None)  # set by Scrapy's SpiderState with JOBDIR
        if job_state is None:
            return fresh
        last_end = job_state.get(_LAST_END_KEY)
        saved = job_state.get(_CHAINS_KEY)
        # Where each chain stands is in the job state; the page requests a pause left queued
        # say the same (or less: a request waiting for its turn is not queued) and are dropped.
        # An end that did not wait for the last page (CLOSESPIDER_ITEMCOUNT...) may have left
        # requests queued too: no place to start a new walk from either.
        scheduler = self.crawler.engine.scheduler
        dropped = _drop_queued_requests(scheduler) if scheduler is not None else 0
        if (
            last_end == outcomes.SHUTDOWN
            and isinstance(saved, dict)
            and saved.keys() == fresh.keys()
            and any(chain.live for chain in saved.values())
        ):
            logger.info(
                "Resuming a paused job after %d page(s): continuing %d chain(s) where they stopped",
                sum(chain.pages for chain in saved.values()),
                sum(chain.live for chain in saved.values()),
            )
            return saved
        # A job that ended starts over: the cursors it followed would look like a loop now.
        job_state[_CHAINS_KEY] = fresh
        if last_end is not None:
            logger.info("The last run of this job ended (%s): starting a new walk from page 1", last_end)
        if dropped:
            logger.info("Dropped %d page request(s) that the last run left queued in JOBDIR", dropped)
        return fresh

    def closed(self, reason: str) -> None:
        """With JOBDIR, keep how this run ended in the job state: the next run resumes a pause only."""
        job_state = getattr(self, "state", None)
        if job_state is not None:
            # Scrapy's SpiderState pickles self.state in its own spider_closed handler, which
            # runs after this one: the spider connects its handler when it is built, before
            # the extensions are, and the handlers are called in that order.
            job_state[_LAST_END_KEY] = reason

    def _chain_request(self, chain: Chain) -> scrapy.Request:
        assert chain.next_url is not None
        return self._api_request(chain.next_url, self.parse_page, {_CHAIN_META_KEY: chain.name})

    def shared_page_request(self, page: PageMessage) -> scrapy.Request:
        """The request for a page message of a shared crawl."""
        return self._api_request(page.url, self.parse_shared_page, {_PAGE_MESSAGE_META_KEY: page})

    def _api_request(self, url: str, callback: Any, meta: dict[str, Any]) -> scrapy.Request:
        return scrapy.Request(
            url,
            callback=callback,
            errback=self.api_failed,
            # A page that used up its retries is reported by api_failed or parse_page, as one
            # ERROR with the reason; Scrapy's "Gave up retrying" would be a second one.
            meta={
                API_PAGE_META_KEY: True,
                "download_slot": API_DOWNLOAD_SLOT,
                "give_up_log_level": "DEBUG",
                **meta,
            },
            # Cursor loops are detected below, with a clear reason; the dupefilter
            # would end them silently.
            dont_filter=True,
        )

    def _send_pages(self) -> Iterator[scrapy.Request]:
        """The waiting page requests that fit in CIVITAI_API_CONCURRENCY, oldest first."""
        # Scrapy's slot concurrency does not hold for requests sent together (settings.py):
        # this count does. A chain has one page in flight at most, so chains take turns.
        while self._waiting_pages and self._pages_in_flight < self.api_concurrency:
            self._pages_in_flight += 1
            yield self._waiting_pages.popleft()

    async def parse_page(self, response: Response) -> AsyncIterator[scrapy.Request | CivitaiImage]:
        self._pages_in_flight -= 1
        records, metadata = self._page_of(response)
        chain = self.chains[response.meta[_CHAIN_META_KEY]]
        chain.pages += 1
        items, counts = self._items_of(records)
        self._count(counts)
        caught_up = False
        if self.stop_after_seen is not None:
            chain.seen_streak, caught_up = await self._seen_streak(chain.seen_streak, items, chain.name)
        chain.end, following = self._next_of(chain.name, chain.pages, metadata, len(records), caught_up)
        if following is not None:
            url, seen_key = following
            if seen_key in chain.cursors_seen:
                self._log_cursor_loop(seen_key, chain.name)
                chain.end = CURSOR_LOOP
            else:
                chain.cursors_seen.add(seen_key)
                chain.next_url = url
                # Asked for before this page's items go on, so that it downloads while they do.
                self._waiting_pages.append(self._chain_request(chain))
        if not chain.live:
            self._chain_ended(chain)
        for request in self._send_pages():
            yield request
        for item in items:
            yield item

    async def parse_shared_page(self, response: Response) -> None:
        """A shared crawl's page: its new images are queued in Redis, with the chain's next page."""
        assert self.worker is not None
        page: PageMessage = response.meta[_PAGE_MESSAGE_META_KEY]
        try:
            records, metadata = self._page_of(response)
        except CloseSpider:
            self.worker.page_done(page)  # unacknowledged: another worker takes it over later
            raise
        items, counts = self._items_of(records)
        new = self._passing(items, counts)
        # Only work that is real goes into the queue: not what an earlier walk saved.
        try:
            recorded = await self._recorded(new)
        except OSError as error:
            self.worker.page_done(page)
            self.worker.stop_for_redis(f"the id store does not answer: {error}")
            raise CloseSpider(outcomes.REDIS_ERROR) from None
        counts["dropped/already_downloaded"] += sum(recorded)
        queue = [item for item, seen in zip(new, recorded, strict=True) if not seen]
        streak, caught_up = self._streak_after(page.streak, recorded, page.chain)
        pages = page.step + 1
        end, following = self._next_of(page.chain, pages, metadata, len(records), caught_up)
        result = await self.worker.hand_on(
            page,
            next_url=following[0] if following else None,
            cursor_key=following[1] if following else None,
            end=end,
            streak=streak,
            counts=counts,
            images=[(item.id, json.dumps(item.api_item)) for item in queue],
        )
        if not result.accepted:
            return
        counts["dropped/duplicate"] += result.duplicates
        self._count(counts)
        if result.end == CURSOR_LOOP:
            self._log_cursor_loop(following[1] if following else "", page.chain)
        elif result.end and len(self.chain_queries) > 1:
            logger.info("Chain %s ended (%s) after %d page(s)", page.chain, result.end, pages)

    def _page_of(self, response: Response) -> tuple[list[Any], dict[str, Any]]:
        problem = page_problem(response)
        if problem is not None:
            # The retry middleware already retried this page; give up loudly.
            self._stop_for_api_error(problem, response.url)
        payload = response.json()
        metadata = payload.get("metadata")
        return payload["items"], metadata if isinstance(metadata, dict) else {}

    def _items_of(self, records: list[Any]) -> tuple[list[CivitaiImage], Counter[str]]:
        """The items of a page's records, and the page's counts (``items_seen``, ``dropped/<reason>``)."""
        counts: Counter[str] = Counter(items_seen=len(records))
        items = []
        for record in records:
            try:
                item = CivitaiImage.from_api(record)
            except InvalidApiItem as error:
                self._reject(error.reason, str(error), record)
                counts[f"dropped/{error.reason}"] += 1
                continue
            if item.type not in self.media_types:
                # The API filters by `type` already; this catches what it lets through anyway
                # (with media=all: audio, which nothing here can save).
                reason = item.type if item.type in _KNOWN_TYPES else "unknown_type"
                counts[f"dropped/{reason}"] += 1
                logger.debug("Skipped %s %s: not asked for (%s)", item.type, item.id, reason)
                continue
            items.append(item)
        return items, counts

    def _count(self, counts: Counter[str]) -> None:
        stats = self.crawler.stats
        for name, count in counts.items():
            if count:
                stats.inc_value(f"{outcomes.STATS_PREFIX}{name}", count)

    async def _recorded(self, items: list[CivitaiImage]) -> list[bool]:
        ids = stores_of(self.crawler).ids
        image_ids = [item.id for item in items]
        await ids.prefetch(image_ids)
        return await ids.contains(image_ids)

    def _passing(self, items: list[CivitaiImage], counts: Counter[str]) -> list[CivitaiImage]:
        """The items that pass the thresholds; the others are counted by reason in ``counts``."""
        passing = []
        for item in items:
            try:
                self.thresholds.check(item)
            except DropImage as drop:
                counts[f"dropped/{drop.reason}"] += 1
            else:
                passing.append(item)
        return passing

    async def _seen_streak(self, streak: int, items: list[CivitaiImage], chain: str) -> tuple[int, bool]:
        """The already-downloaded streak after ``items`` (among those that pass the thresholds),
        and whether it reached ``stop_after_seen``."""
        # The pipeline drops and counts the others: they say nothing about what was saved.
        passing = self._passing(items, Counter())
        try:
            recorded = await self._recorded(passing)
        except OSError as error:
            logger.debug("The id store did not answer for stop_after_seen: %s", error)
            return 0, False  # the pipeline fails these items, with the reason
        return self._streak_after(streak, recorded, chain)

    def _streak_after(self, streak: int, recorded: list[bool], chain: str) -> tuple[int, bool]:
        """The streak after a page's answers from the id store, and whether it reached ``stop_after_seen``."""
        caught_up = False
        for seen in recorded:
            streak = streak + 1 if seen else 0
            caught_up = caught_up or (self.stop_after_seen is not None and streak >= self.stop_after_seen)
        if caught_up:
            self._log_caught_up(chain)
        return streak, caught_up

    def _log_caught_up(self, chain: str) -> None:
        logger.info(
            "Caught up%s: %d image(s) in a row were already in the id store (stop_after_seen=%d), stopping",
            "" if chain == WHOLE_QUERY else f" in chain {chain}",
            self.stop_after_seen,
            self.stop_after_seen,
        )

    def _next_of(
        self, chain: str, pages: int, metadata: dict[str, Any], item_count: int, caught_up: bool
    ) -> tuple[str | None, tuple[str, str] | None]:
        """How a chain goes on after page ``pages``: (its end, ``None``) or (``None``, (url, loop key))."""
        if caught_up:
            return CAUGHT_UP, None
        if self.max_pages is not None and pages >= self.max_pages:
            logger.info("Stopping%s after max_pages=%d page(s)", _in_chain(chain), self.max_pages)
            return MAX_PAGES, None
        cursor = metadata.get("nextCursor")
        cursor = "" if cursor is None else str(cursor)
        next_page = metadata.get("nextPage")
        if cursor:
            query = {**self.chain_queries[chain], "cursor": cursor}
            return None, (f"{self.api_url}?{urlencode(query)}", cursor)
        if isinstance(next_page, str) and next_page:
            if origin(next_page) != origin(self.api_url):
                logger.error(
                    "Not following nextPage %s: it is not on the API host %s", next_page, self.api_url
                )
                return END_OF_LISTING, None
            return None, (next_page, next_page)
        if item_count == 0 and pages > 1:
            # Civitai's older query path answers an empty page without a cursor when
            # its database query times out, so this end may not be the real one.
            logger.warning(
                "Page %d%s was empty with no cursor: the listing may have ended early",
                pages,
                _in_chain(chain),
            )
        return END_OF_LISTING, None

    def _log_cursor_loop(self, seen_key: str, chain: str) -> None:
        logger.error(
            "The API returned cursor %r a second time%s: stopping it to avoid a loop",
            seen_key,
            _in_chain(chain),
        )

    def _chain_ended(self, chain: Chain) -> None:
        chain.next_url = None
        if len(self.chains) > 1:
            logger.info("Chain %s ended (%s) after %d page(s)", chain.name, chain.end, chain.pages)
        if any(other.live for other in self.chains.values()):
            return
        reason = crawl_end([other.end for other in self.chains.values()])
        if reason is not None:
            # As Scrapy's CloseSpider does: what is in flight finishes, nothing new starts.
            deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason))

    def api_failed(self, failure: Failure) -> None:
        request = failure.request
        page = request.meta.get(_PAGE_MESSAGE_META_KEY)
        if page is not None and self.worker is not None:
            self.worker.page_done(page)  # unacknowledged: another worker takes it over later
        self._pages_in_flight -= 1
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
        logger.warning("Skipped an API item: %s", message)
        image_id = record.get("id") if isinstance(record, dict) else None
        url = record.get("url") if isinstance(record, dict) else None
        append_line(self._error_log, log_line(repr(image_id), repr(url), message))


def _in_chain(chain: str) -> str:
    return "" if chain == WHOLE_QUERY else f" in chain {chain}"


def _split_of(arguments: Mapping[str, Any]) -> tuple[str, ...]:
    return parse_split(arguments["split"]) if arguments.get("split") is not None else ()


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
