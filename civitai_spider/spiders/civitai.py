"""The ``civitai`` spider: walks ``/api/v1/images`` page by page and yields one item per image.

Pagination follows the opaque ``metadata.nextCursor`` the API returns; a chain's next page
is requested as soon as a page arrives, before its items go through the pipelines. With
``split`` a crawl is several chains (:mod:`civitai_spider.chains`), walked at once, at most
``CIVITAI_API_CONCURRENCY`` pages in flight.

With ``CIVITAI_SHARED_CRAWL`` the crawl is shared by every worker with the same arguments
(:mod:`civitai_spider.shared_crawl`): pages and images come from Redis, a page's new images go
back there, and any worker saves them.

With JOBDIR, a job paused by a graceful stop (finish reason ``shutdown``) goes on where its
chains stopped; a job that ended any other way walks again from the first page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

import scrapy
from scrapy import signals
from scrapy.exceptions import CloseSpider
from scrapy.http import Response, TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.defer import deferred_from_coro
from twisted.python.failure import Failure

from civitai_spider import job, outcomes
from civitai_spider.api import (
    API_DOWNLOAD_SLOT,
    API_META_KEY,
    API_PAGE_META_KEY,
    REGION_BLOCKED_STATUS,
    endpoint_url,
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
    ListedPage,
    crawl_end,
    parse_split,
    split_query,
)
from civitai_spider.extensions.stop import STOPPED_REASON
from civitai_spider.items import CivitaiImage, InvalidApiItem
from civitai_spider.outcomes import DropImage
from civitai_spider.pipelines.thresholds import Thresholds
from civitai_spider.shared_crawl.crawl import PageMessage, SharedCrawl
from civitai_spider.shared_crawl.worker import Worker
from civitai_spider.stores import stores_of

if TYPE_CHECKING:
    from typing import Self

    from scrapy.core.scheduler import BaseScheduler
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: ``Request.meta`` keys of page requests: the chain's name, or a shared crawl's page message.
_CHAIN_META_KEY = "civitai_chain"
_PAGE_MESSAGE_META_KEY = "civitai_page_message"
#: Stat: times an empty page without a cursor after a full page was asked again.
EMPTY_PAGE_RETRIES_STAT = f"{outcomes.STATS_PREFIX}empty_page_retries"
#: Tries of ``/api/v1/me`` beyond the first: it only checks the key, a crawl does not wait long on it.
_KEY_CHECK_RETRIES = 2

SORTS = ("Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random")
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")
NSFW_LEVELS = ("None", "Soft", "Mature", "X", "true", "false")
MAX_LIMIT = 200
_USERNAME = re.compile(r"[A-Za-z0-9_]+")
#: ``media=`` -> the item types a crawl keeps (the API's ``type``; none sent for ``all``).
MEDIA_TYPES = {"image": ("image",), "video": ("video",), "all": ("image", "video")}
#: Item types the spider knows; any other is dropped as ``unknown_type``.
_KNOWN_TYPES = ("image", "video", "audio")
#: The API's browsingLevel bitmask: PG=1, PG13=2, R=4, X=8, XXX=16; its Blocked bit (32) the
#: server strips from every query (onlySelectableLevels), so a level with it asks for less.
MAX_BROWSING_LEVEL = 31
_BLOCKED_LEVEL = 32
#: Model ids are Postgres int4: the models endpoint refuses larger ones.
MAX_MODEL_ID = 2**31 - 1
ARGUMENTS = (
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


class _Interrupted(Exception):
    """The crawl began to close while a page was being asked again: leave its chain as it is."""


class CivitaiSpider(scrapy.Spider):
    """Spider arguments (``-a name=value``) map to the API's query parameters."""

    name = "civitai"

    def __init__(self, *args: Any, **kwargs: Any):
        _check_argument_names(kwargs)
        arguments = {name: kwargs.pop(name) for name in ARGUMENTS if name in kwargs}
        super().__init__(*args, **kwargs)
        self.query, self.max_pages, self.stop_after_seen = parse_arguments(arguments)
        self.split = _split_of(arguments)
        #: The model whose versions are listed before the crawl (``model_id`` alone), else None.
        self.model_id = model_to_list(self.query)
        #: Chain name -> its API query; a model's crawl knows its chains once its versions are listed.
        self.chain_queries = {} if self.model_id else split_query(self.query, self.split)
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
        #: (chain, page) -> a page whose items are not all done: a pause rewinds to it.
        self._listed_pages: dict[tuple[str, int], ListedPage] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(spider._item_done, signal=signal)
        return spider

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, str]) -> None:
        """Raise ``ValueError`` naming the first bad spider argument (used by ``scrapy crawl``)."""
        _check_argument_names(arguments)
        known = {name: value for name, value in arguments.items() if name in ARGUMENTS}
        query, _, _ = parse_arguments(known)
        split_query(query, _split_of(known))

    @classmethod
    def check_job(cls, arguments: Mapping[str, str], settings: BaseSettings) -> None:
        """Raise ``ValueError`` if JOBDIR holds a paused walk of other arguments (for ``scrapy crawl``)."""
        jobdir = settings.get("JOBDIR")
        if not jobdir or settings.getbool("CIVITAI_NEW_WALK"):
            return
        known = {name: value for name, value in arguments.items() if name in ARGUMENTS}
        query, max_pages, stop_after_seen = parse_arguments(known)
        current = job.walk(
            settings.get("CIVITAI_API_URL"),
            query,
            _split_of(known),
            max_pages,
            stop_after_seen,
            settings.getbool("CIVITAI_WITH_TAGS"),
        )
        job.check_resume(jobdir, current)

    def _walk(self) -> dict[str, Any]:
        settings = self.crawler.settings
        return job.walk(
            self.api_url,
            {name: value for name, value in self.query.items() if name != "withTags"},  # with_tags
            self.split,
            self.max_pages,
            self.stop_after_seen,
            settings.getbool("CIVITAI_WITH_TAGS"),
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
        self.empty_page_retries = settings.getint("CIVITAI_EMPTY_PAGE_RETRIES")
        self.empty_page_delay = settings.getfloat("CIVITAI_EMPTY_PAGE_DELAY")
        self.thresholds = Thresholds.build(settings)
        self._error_log = stores_of(self.crawler).error_log
        self._error_log.path.parent.mkdir(parents=True, exist_ok=True)
        # Before the first await: from then on the engine sends what its scheduler holds.
        stale_requests = self._drop_stale_requests()
        if settings.get("CIVITAI_API_KEY"):
            await self._check_api_key()
        elif (asked := self._asked_beyond_pg()) is not None:
            # The API answers such a query without a key, with PG images only and no error.
            logger.warning(
                "%s asks for more than PG, but the API serves PG images only to anonymous requests: "
                "set CIVITAI_API_KEY (README: NSFW levels and civitai.red)",
                asked,
            )
        if self.model_id:
            versions = await self._model_versions(self.model_id)
            self.chain_queries = split_query(self.query, self.split, versions)
        if settings.getbool("CIVITAI_WITH_TAGS"):
            for query in (self.query, *self.chain_queries.values()):
                query["withTags"] = "true"
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
        if settings.getbool("CIVITAI_SHARED_CRAWL"):
            self.worker = Worker(self.crawler, self._shared_crawl(settings))
            async for element in self.worker.work(self, first_pages):
                yield element
            return
        self.chains = self._chains_to_walk(first_pages, stale_requests)
        self._waiting_pages.extend(self._chain_request(chain) for chain in self.chains.values() if chain.live)
        for request in self._send_pages():
            yield request

    # --- before the first page: the key, the model's versions -------------------------------

    async def _check_api_key(self) -> None:
        """End the crawl (``api_key_refused``) if ``/api/v1/me`` refuses CIVITAI_API_KEY.

        The images endpoint serves a key it does not accept (invalid, expired, revoked) as
        anonymous, PG only, without an error (src/server/auth/bearer-token.ts): a crawl would
        "work" and save the wrong images. ``/api/v1/me`` answers 401 to such a key.
        """
        url = endpoint_url(self.api_url, "me")
        try:
            response = await self._api_get(url, max_retry_times=_KEY_CHECK_RETRIES)
        except Exception as error:  # the download's own errors, after its retries
            self._warn_key_unchecked(url, outcomes.describe_error(error))
            return
        if response.status in (401, 403):
            logger.error(
                "CIVITAI_API_KEY is not accepted by the API: %s answered HTTP %d (%s). The images "
                "API serves such a key as anonymous (PG images only), so the crawl stops here: "
                "check the key, or make a new one in your Civitai account settings",
                url,
                response.status,
                server_error_message(response),
            )
            raise CloseSpider(outcomes.API_KEY_REFUSED)
        if response.status == REGION_BLOCKED_STATUS:
            self._stop_for_api_error(f"HTTP 451: {server_error_message(response)}", url, response.status)
        user = _json_object(response)
        if response.status != 200 or user is None:
            self._warn_key_unchecked(url, f"HTTP {response.status}: {server_error_message(response)}")
            return
        username = user.get("username")
        logger.info("CIVITAI_API_KEY is accepted (user %s)", username if isinstance(username, str) else "?")

    def _asked_beyond_pg(self) -> str | None:
        """The argument that asks for more than PG images (``nsfw=X``, ``browsing_level=12``), or None."""
        if self.query.get("browsingLevel", "1") != "1":
            return f"browsing_level={self.query['browsingLevel']}"
        if self.query.get("nsfw", "None") not in ("None", "false"):
            return f"nsfw={self.query['nsfw']}"
        return None

    def _warn_key_unchecked(self, url: str, reason: str) -> None:
        logger.warning(
            "Could not check CIVITAI_API_KEY with %s (%s): crawling on. A key the API does not "
            "accept would give PG images only",
            url,
            reason,
        )

    async def _model_versions(self, model_id: int) -> tuple[int, ...]:
        """The ids of ``model_id``'s versions, from ``/api/v1/models/<id>``; ends the crawl if none."""
        url = endpoint_url(self.api_url, f"models/{model_id}")
        try:
            response = await self._api_get(url)
        except Exception as error:  # the download's own errors, after its retries
            self._stop_for_api_error(outcomes.describe_error(error), url)
        if response.status == 404:
            logger.error(
                "model_id=%d: the API has no such model (%s answered HTTP 404: %s)",
                model_id,
                url,
                server_error_message(response),
            )
            raise CloseSpider(outcomes.MODEL_NOT_FOUND)
        if response.status != 200:
            reason = f"HTTP {response.status}: {server_error_message(response)}"
            self._stop_for_api_error(reason, url, response.status)
        versions = _version_ids(_json_object(response))
        if versions is None:
            self._stop_for_api_error("the answer has no list of modelVersions with their ids", url)
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

    async def _api_get(self, url: str, **meta: Any) -> Response:
        """GET an API address through Scrapy's downloader (retries, the key, the API's slot)."""
        request = scrapy.Request(url, meta={**_api_meta(), **meta}, dont_filter=True)
        return await self.crawler.engine.download_async(request)

    def _shared_crawl(self, settings: BaseSettings) -> SharedCrawl:
        # What makes two workers' crawls the same crawl: the same API and spider arguments.
        definition = {
            "api_url": self.api_url,
            "chains": self.chain_queries,
            "max_pages": self.max_pages,
            "stop_after_seen": self.stop_after_seen,
        }
        return SharedCrawl(
            settings.get("CIVITAI_REDIS_URL"),
            settings.get("CIVITAI_REDIS_PREFIX"),
            definition,
            timeout=settings.getfloat("CIVITAI_REDIS_TIMEOUT"),
            claim_after=settings.getfloat("CIVITAI_REDIS_CLAIM_AFTER"),
        )

    def _drop_stale_requests(self) -> int:
        """Take the page requests a last run left queued in JOBDIR out of the scheduler; how many.

        Where each chain stands is in the job state; the page requests a pause left queued say
        the same (or less: a request waiting for its turn is not queued). An end that did not
        wait for the last page (CLOSESPIDER_ITEMCOUNT...) may have left requests queued too: no
        place to start a new walk from either.
        """
        if getattr(self, "state", None) is None:  # set by Scrapy's SpiderState with JOBDIR
            return 0
        scheduler = self.crawler.engine.scheduler
        return _drop_queued_requests(scheduler) if scheduler is not None else 0

    def _chains_to_walk(self, first_pages: dict[str, str], dropped: int) -> dict[str, Chain]:
        """The chains of this run: a paused job's where it stopped (JOBDIR), else new ones."""
        fresh = {name: Chain(name, url) for name, url in first_pages.items()}
        job_state = getattr(self, "state", None)  # set by Scrapy's SpiderState with JOBDIR
        if job_state is None:
            return fresh
        last_end = job_state.get(job.LAST_END_KEY)
        saved = job_state.get(job.CHAINS_KEY)
        new_walk = self.crawler.settings.getbool("CIVITAI_NEW_WALK")
        job_state[job.WALK_KEY] = self._walk()
        if job.is_paused(job_state) and new_walk:
            logger.info("CIVITAI_NEW_WALK: not resuming the paused job, starting a new walk from page 1")
        elif job.is_paused(job_state) and saved.keys() == fresh.keys():
            logger.info(
                "Resuming a paused job after %d page(s): continuing %d chain(s) where they stopped",
                sum(chain.pages for chain in saved.values()),
                sum(chain.live for chain in saved.values()),
            )
            return saved
        # A job that ended starts over: the cursors it followed would look like a loop now.
        job_state[job.CHAINS_KEY] = fresh
        if last_end is not None and not new_walk:
            logger.info("The last run of this job ended (%s): starting a new walk from page 1", last_end)
        if dropped:
            logger.info("Dropped %d page request(s) that the last run left queued in JOBDIR", dropped)
        return fresh

    def closed(self, reason: str) -> None:
        """With JOBDIR, keep how this run ended in the job state: the next run resumes a pause only."""
        job_state = getattr(self, "state", None)
        if job_state is not None:
            if reason == outcomes.SHUTDOWN:
                self._rewind_to_unsaved_items()
            # Scrapy's SpiderState pickles self.state in its own spider_closed handler, which
            # runs after this one: the spider connects its handler when it is built, before
            # the extensions are, and the handlers are called in that order.
            job_state[job.LAST_END_KEY] = reason

    def _rewind_to_unsaved_items(self) -> None:
        """Put each chain back before its oldest page with items a stop left undone, so that
        the resumed job lists them again (the ones that were saved then drop as already
        downloaded)."""
        oldest: dict[str, int] = {}
        for chain_name, page in self._listed_pages:
            oldest[chain_name] = min(page, oldest.get(chain_name, page))
        for chain_name, page in sorted(oldest.items()):
            chain = self.chains[chain_name]
            unsaved = sum(
                listed.pending for (name, number), listed in self._listed_pages.items() if name == chain_name
            )
            chain.rewind(page, self._listed_pages[chain_name, page])
            logger.info(
                "Paused%s with %d listed item(s) not done: the job resumes at page %d",
                _in_chain(chain_name),
                unsaved,
                page,
            )

    def _item_done(self, item: Any, exception: BaseException | None = None) -> None:
        """An item's outcome: its page is done once every item of it is (a stopped one is not)."""
        if getattr(exception, "reason", None) == STOPPED_REASON or not isinstance(item, CivitaiImage):
            return
        if item.chain is None or item.page is None:
            return  # a shared crawl's item: Redis keeps what is not done
        key = (item.chain, item.page)
        listed = self._listed_pages[key]
        listed.pending -= 1
        if not listed.pending:
            del self._listed_pages[key]

    # --- pages ------------------------------------------------------------------------------

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
            meta={**_page_meta(), **meta},
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
        chain = self.chains[response.meta[_CHAIN_META_KEY]]
        try:
            records, metadata = await self._settled_page(response, chain.name, chain.last_page_full)
        except _Interrupted:
            return  # the chain stays at this page: a paused job asks it again
        finally:
            self._pages_in_flight -= 1
        assert chain.next_url is not None
        before = ListedPage(chain.next_url, chain.seen_streak, chain.last_page_full, pending=0)
        chain.pages += 1
        chain.last_page_full = len(records) >= self._limit(chain.name)
        items, counts = self._items_of(records, chain.name)
        self._count(counts)
        caught_up = False
        if self.stop_after_seen is not None:
            chain.seen_streak, caught_up = await self._seen_streak(chain.seen_streak, items, chain.name)
        chain.end, following = self._next_of(chain.name, chain.pages, metadata, caught_up)
        if following is not None:
            url, seen_key = following
            if seen_key in chain.cursors_seen:
                self._log_cursor_loop(seen_key, chain.name)
                chain.end = CURSOR_LOOP
            else:
                chain.cursors_seen[seen_key] = chain.pages + 1
                chain.next_url = url
                # Asked for before this page's items go on, so that it downloads while they do.
                self._waiting_pages.append(self._chain_request(chain))
        if not chain.live:
            self._chain_ended(chain)
        for request in self._send_pages():
            yield request
        if items:
            before.pending = len(items)
            self._listed_pages[chain.name, chain.pages] = before
        for item in items:
            item.page = chain.pages
            yield item

    async def parse_shared_page(self, response: Response) -> None:
        """A shared crawl's page: its new images are queued in Redis, with the chain's next page."""
        assert self.worker is not None
        page: PageMessage = response.meta[_PAGE_MESSAGE_META_KEY]
        try:
            records, metadata = await self._settled_page(response, page.chain, page.after_full)
        except _Interrupted:
            self.worker.page_done(page)  # unacknowledged: taken over later, asked again then
            return
        except CloseSpider:
            self.worker.page_done(page)  # unacknowledged: another worker takes it over later
            raise
        items, counts = self._items_of(records, page.chain)
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
        end, following = self._next_of(page.chain, pages, metadata, caught_up)
        result = await self.worker.hand_on(
            page,
            next_url=following[0] if following else None,
            cursor_key=following[1] if following else None,
            end=end,
            streak=streak,
            full=len(records) >= self._limit(page.chain),
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

    async def _settled_page(
        self, response: Response, chain: str, after_full: bool
    ) -> tuple[list[Any], dict[str, Any]]:
        """The records and metadata of a page, once an empty page is no longer in doubt.

        An empty page without a next one, right after a full page, is not proof of the end:
        the server filters after it computes the cursor (a page whose hits were all filtered
        out loses it, image.service.ts getAllImagesIndex), a database timeout answers an empty
        page without a cursor (getAllImages), and a live report (civitai/civitai#1800) shows a
        cursor answering an empty page, then a full one minutes later. Such a page is asked
        again, CIVITAI_EMPTY_PAGE_RETRIES times, waiting CIVITAI_EMPTY_PAGE_DELAY seconds and
        twice as long each time; a full answer goes on as if the empty one had not come.
        Raises :class:`_Interrupted` when the crawl closes meanwhile.
        """
        records, metadata = self._page_of(response)
        retries = 0
        while after_full and not records and not _names_a_next_page(metadata):
            if retries == self.empty_page_retries:
                logger.warning(
                    "%s%s was empty without a cursor right after a full page, %s: the chain ends "
                    "there, maybe before the listing does",
                    response.url,
                    _in_chain(chain),
                    f"still after {retries} more tries" if retries else "CIVITAI_EMPTY_PAGE_RETRIES=0",
                )
                break
            retries += 1
            delay = self.empty_page_delay * 2 ** (retries - 1)
            logger.warning(
                "%s%s came back empty without a cursor right after a full page: asking again in "
                "%g s (%d of %d)",
                response.url,
                _in_chain(chain),
                delay,
                retries,
                self.empty_page_retries,
            )
            self.crawler.stats.inc_value(EMPTY_PAGE_RETRIES_STAT)
            await self._wait(delay)
            try:
                response = await self._api_get(response.url, **_page_meta())
            except Exception as error:  # the download's own errors, after its retries
                self._stop_for_api_error(outcomes.describe_error(error), response.url)
            records, metadata = self._page_of(response)
        if retries and (records or _names_a_next_page(metadata)):
            logger.info(
                "%s%s answered %d item(s) when asked again (%d of %d): going on",
                response.url,
                _in_chain(chain),
                len(records),
                retries,
                self.empty_page_retries,
            )
        return records, metadata

    async def _wait(self, seconds: float) -> None:
        """Sleep, unless the crawl starts closing meanwhile (then :class:`_Interrupted`)."""
        deadline = time.monotonic() + seconds
        while not self._closing():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.2))
        raise _Interrupted

    def _closing(self) -> bool:
        engine = self.crawler.engine
        # Scrapy has no public "closing" flag: a graceful stop clears engine.running, a
        # close_spider (CLOSESPIDER_*, the end of the chains) sets the engine slot's closing.
        slot = getattr(engine, "_slot", None)
        return engine is None or not engine.running or (slot is not None and slot.closing is not None)

    def _limit(self, chain: str) -> int:
        return int(self.chain_queries[chain]["limit"])

    def _page_of(self, response: Response) -> tuple[list[Any], dict[str, Any]]:
        if not 200 <= response.status < 300:  # a page asked again answers without HttpError
            reason = f"HTTP {response.status}: {server_error_message(response)}"
            self._stop_for_api_error(reason, response.url, response.status)
        problem = page_problem(response)
        if problem is not None:
            # The retry middleware already retried this page; give up loudly.
            self._stop_for_api_error(problem, response.url)
        assert isinstance(response, TextResponse)  # page_problem() said so otherwise
        payload = response.json()
        metadata = payload.get("metadata")
        return payload["items"], metadata if isinstance(metadata, dict) else {}

    def _items_of(self, records: list[Any], chain: str) -> tuple[list[CivitaiImage], Counter[str]]:
        """The items of a page's records, and the page's counts (``items_seen``, ``dropped/<reason>``)."""
        counts: Counter[str] = Counter(items_seen=len(records))
        items = []
        for record in records:
            try:
                item = CivitaiImage.from_api(record, chain=chain)
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
        self, chain: str, pages: int, metadata: dict[str, Any], caught_up: bool
    ) -> tuple[str | None, tuple[str, str] | None]:
        """How a chain goes on after page ``pages``: (its end, ``None``) or (``None``, (url, loop key))."""
        if caught_up:
            return CAUGHT_UP, None
        if self.max_pages is not None and pages >= self.max_pages:
            logger.info("Stopping%s after max_pages=%d page(s)", _in_chain(chain), self.max_pages)
            return MAX_PAGES, None
        cursor = _cursor_text(metadata.get("nextCursor"))
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
        # Scrapy sets request on the Failure it passes to an errback; Twisted's class lacks it.
        request = failure.request  # type: ignore[attr-defined]
        page = request.meta.get(_PAGE_MESSAGE_META_KEY)
        if page is not None and self.worker is not None:
            self.worker.page_done(page)  # unacknowledged: another worker takes it over later
        self._pages_in_flight -= 1
        status = None
        if failure.check(HttpError):
            assert isinstance(failure.value, HttpError)
            response = failure.value.response
            status = response.status
            reason = f"HTTP {status}: {server_error_message(response)}"
        else:
            assert failure.value is not None  # a Failure always holds its exception
            reason = outcomes.describe_error(failure.value)
        # CloseSpider raised from an errback would make Scrapy log the download error as a
        # second ERROR ("Error downloading"). Close as CloseSpider would: what is in flight
        # finishes, nothing new starts.
        finish_reason = _log_api_error(reason, request.url, status)
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=finish_reason))

    def _stop_for_api_error(self, reason: str, url: str, status: int | None = None) -> NoReturn:
        # From a callback (or start()), CloseSpider closes the spider without a log line of Scrapy's.
        raise CloseSpider(_log_api_error(reason, url, status))

    def _reject(self, reason: str, message: str, record: Any) -> None:
        logger.warning("Skipped an API item: %s", message)
        image_id = record.get("id") if isinstance(record, dict) else None
        url = record.get("url") if isinstance(record, dict) else None
        self._error_log.add(repr(image_id), repr(url), message)


def _in_chain(chain: str) -> str:
    return "" if chain == WHOLE_QUERY else f" in chain {chain}"


def _split_of(arguments: Mapping[str, Any]) -> tuple[str, ...]:
    return parse_split(arguments["split"]) if arguments.get("split") is not None else ()


def _log_api_error(reason: str, url: str, status: int | None) -> str:
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


def _api_meta() -> dict[str, Any]:
    """``Request.meta`` of any API request: the key, the API's slot, one ERROR line of ours."""
    return {API_META_KEY: True, "download_slot": API_DOWNLOAD_SLOT, "give_up_log_level": "DEBUG"}


def _page_meta() -> dict[str, Any]:
    """``Request.meta`` of an API page request."""
    return {**_api_meta(), API_PAGE_META_KEY: True}


def _names_a_next_page(metadata: dict[str, Any]) -> bool:
    next_page = metadata.get("nextPage")
    return bool(_cursor_text(metadata.get("nextCursor"))) or (isinstance(next_page, str) and bool(next_page))


def _cursor_text(cursor: Any) -> str:
    """``nextCursor`` as the text to send back: a string as it is, a number (the older database
    path's cursor is an image id) in digits; anything else is no cursor."""
    if isinstance(cursor, str):
        return cursor
    if type(cursor) is int:
        return str(cursor)
    if cursor is not None:
        logger.warning("The API's nextCursor %r is neither text nor an integer: ignored", cursor)
    return ""


def _json_object(response: Response) -> dict[str, Any] | None:
    """The JSON object of an answer (``None`` when it is not one)."""
    try:
        payload = json.loads(response.body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


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


def model_to_list(query: Mapping[str, str]) -> int | None:
    """The model whose versions a crawl of ``query`` lists first, else ``None``.

    ``modelId`` alone is answered from the server's older database path (image-search.service.ts
    runImageSearch: ``imageId``, or ``modelId`` without ``modelVersionId``), which skips one image
    at every page boundary (getAllImages pops the row it takes as the cursor and then asks
    ``id < cursor``), ignores metric sorts, refuses ``sort=Random`` and ends with an empty page
    when its query times out. With ``imageId`` (one image) there is nothing to lose.
    """
    if "modelId" in query and "modelVersionId" not in query and "imageId" not in query:
        return int(query["modelId"])
    return None


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
        query["browsingLevel"] = str(_browsing_level(arguments["browsing_level"]))
    elif arguments.get("nsfw") is not None:
        query["nsfw"] = _choice(arguments, "nsfw", None, NSFW_LEVELS)
    username = arguments.get("username")
    if username is not None:
        if not _USERNAME.fullmatch(str(username)):
            raise ValueError(f"username={username!r} is not valid: allowed are letters, digits and _")
        query["username"] = str(username)
    for argument, parameter in _INTEGER_PARAMETERS:
        if arguments.get(argument) is not None:
            maximum = MAX_MODEL_ID if argument == "model_id" else None
            query[parameter] = str(_integer(arguments, argument, None, maximum=maximum))
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
        if name not in ARGUMENTS and not name.startswith("_"):
            raise ValueError(f"unknown spider argument {name!r}: allowed are {', '.join(ARGUMENTS)}")


def _browsing_level(value: Any) -> int:
    allowed = "allowed is 1 to 31, a sum of PG=1, PG13=2, R=4, X=8, XXX=16"
    level = _whole_number(value)
    if level & _BLOCKED_LEVEL and level < 2 * _BLOCKED_LEVEL:
        # The server strips Blocked (onlySelectableLevels) and serves what is left, or PG.
        raise ValueError(
            f"browsing_level={value!r} is not valid: it has the Blocked level (32), which the API "
            f"never serves (it strips it, and 32 alone comes back as PG); {allowed}"
        )
    if not 1 <= level <= MAX_BROWSING_LEVEL:
        raise ValueError(f"browsing_level={value!r} is not valid: {allowed}")
    return level


def _choice(arguments: Mapping[str, Any], name: str, default: str | None, allowed: tuple[str, ...]) -> str:
    value = arguments.get(name, default)
    if value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{name}={value!r} is not valid: allowed are {choices}")
    return value


def _integer(arguments: Mapping[str, Any], name: str, default: int | None, maximum: int | None = None) -> int:
    value = arguments.get(name, default)
    number = _whole_number(value)
    if number < 1 or (maximum is not None and number > maximum):
        allowed = f"an integer from 1 to {maximum}" if maximum else "a positive integer"
        raise ValueError(f"{name}={value!r} is not valid: allowed is {allowed}")
    return number


def _whole_number(value: Any) -> int:
    """``value`` as a base-10 integer, 0 when it is not one (every caller refuses 0)."""
    try:
        return int(str(value), 10)
    except ValueError:
        return 0
