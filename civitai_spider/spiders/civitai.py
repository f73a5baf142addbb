"""The ``civitai`` spider: walks ``/api/v1/images`` page by page and yields one item per image.

Pagination follows the opaque ``metadata.nextCursor`` the API returns; a chain's next page
is requested as soon as a page arrives, before its items go through the pipelines. With
``split`` a crawl is several chains (:mod:`civitai_spider.query`), walked at once, at most
``CIVITAI_API_CONCURRENCY`` pages in flight. Each page is read by
:class:`~civitai_spider.page.PageReader`; the spider keeps where its chains stand.

With ``CIVITAI_SHARED_CRAWL`` the crawl is shared by every worker with the same arguments
(:mod:`civitai_spider.shared_crawl`): pages and images come from Redis, a page's new images go
back there, and any worker saves them.

With JOBDIR, a job paused by a graceful stop (finish reason ``shutdown``) goes on where its
chains stopped; a job that ended any other way walks again from the first page.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import scrapy
from scrapy import signals
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro
from twisted.python.failure import Failure

from civitai_spider import job, outcomes, preflight
from civitai_spider.api import API_DOWNLOAD_SLOT
from civitai_spider.chains import Chain, ListedPage, crawl_end
from civitai_spider.extensions.stop import STOPPED_REASON
from civitai_spider.items import CivitaiImage
from civitai_spider.page import Interrupted, PageReader, end_for_failure, in_chain, log_cursor_loop
from civitai_spider.query import ARGUMENTS, api_url, parse_arguments

if TYPE_CHECKING:
    from typing import Self

    from scrapy.core.scheduler import BaseScheduler
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

__all__ = ["ARGUMENTS", "CivitaiSpider"]

logger = logging.getLogger(__name__)

#: ``Request.meta`` key of a page request: its chain's name.
_CHAIN_META_KEY = "civitai_chain"


class CivitaiSpider(scrapy.Spider):
    """Spider arguments (``-a name=value``, :mod:`civitai_spider.query`) map to the API's query parameters."""

    name = "civitai"

    def __init__(self, *args: Any, **kwargs: Any):
        arguments = {name: kwargs.pop(name) for name in ARGUMENTS if name in kwargs}
        self.crawl_query = parse_arguments(kwargs | arguments)
        super().__init__(*args, **kwargs)
        self.query = self.crawl_query.query
        #: The model whose versions are listed before the crawl (``model_id`` alone), else None.
        self.model_id = self.crawl_query.model_id
        #: Chain name -> its API query; a model's crawl knows its chains once its versions are listed.
        self.chain_queries = {} if self.model_id else self.crawl_query.chain_queries()
        if "browsing_level" in arguments and "nsfw" in arguments:
            logger.info("browsing_level=%s overrides nsfw=%s", arguments["browsing_level"], arguments["nsfw"])
        if self.crawl_query.address_overridden is not None:
            logger.info("%s", self.crawl_query.address_overridden)
        #: The chains of this walk by name (not in a shared crawl: they are in Redis then). With
        #: JOBDIR they live in ``self.state``, which Scrapy saves on a pause.
        self.chains: dict[str, Chain] = {}
        self._pages_in_flight = 0
        #: Page requests waiting for one of the CIVITAI_API_CONCURRENCY places.
        self._waiting_pages: deque[scrapy.Request] = deque()
        #: (chain, page) -> a page whose items are not all done: a pause rewinds to it.
        self._listed_pages: dict[tuple[str, int], ListedPage] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider._set_api_url(crawler.settings)
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(spider._item_done, signal=signal)
        return spider

    def _set_api_url(self, settings: BaseSettings) -> None:
        """Make the API of the ``url`` argument's host the crawl's CIVITAI_API_URL.

        Here, before Scrapy freezes the settings, and as a setting, so that every reader of
        CIVITAI_API_URL (the API key middleware, ``/me``, ``/models/<id>``, the pages, JOBDIR,
        the shared crawl) asks that API, and sends the key to its origin only.
        """
        address_api = self.crawl_query.address_api_url
        if address_api is None:
            return
        effective = api_url(settings, self.crawl_query)
        if effective != address_api:
            logger.info(
                "CIVITAI_API_URL=%s, given explicitly, wins over the url's API %s", effective, address_api
            )
        # The spider's priority is above the project's default and below the command line's.
        settings.set("CIVITAI_API_URL", effective, priority="spider")

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, str]) -> None:
        """Raise ``ValueError`` naming the first bad spider argument (used by ``scrapy crawl``)."""
        parse_arguments(arguments)

    @classmethod
    def check_job(cls, arguments: Mapping[str, str], settings: BaseSettings) -> None:
        """Raise ``ValueError`` if JOBDIR holds a paused walk of other arguments (for ``scrapy crawl``)."""
        jobdir = settings.get("JOBDIR")
        if jobdir and not settings.getbool("CIVITAI_NEW_WALK"):
            job.check_resume(jobdir, job.walk(settings, parse_arguments(arguments)))

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
        api_url: str = settings.get("CIVITAI_API_URL")
        self.api_concurrency = settings.getint("CIVITAI_API_CONCURRENCY")
        # Before the first await: from then on the engine sends what its scheduler holds.
        stale_requests = self._drop_stale_requests()
        if settings.get("CIVITAI_API_KEY"):
            await preflight.check_api_key(self.crawler, api_url)
        elif (asked := self.crawl_query.beyond_pg()) is not None:
            # The API answers such a query without a key, with PG images only and no error.
            logger.warning(
                "%s asks for more than PG, but the API serves PG images only to anonymous requests: "
                "set CIVITAI_API_KEY (README: NSFW levels and civitai.red)",
                asked,
            )
        if self.model_id:
            versions = await preflight.model_versions(self.crawler, api_url, self.model_id)
            self.chain_queries = self.crawl_query.chain_queries(versions)
        if settings.getbool("CIVITAI_WITH_TAGS"):
            for query in self.chain_queries.values():
                query["withTags"] = "true"
        first_pages = {name: f"{api_url}?{urlencode(query)}" for name, query in self.chain_queries.items()}
        if len(first_pages) > 1:
            logger.info(
                "Walking %d chains, %s API page(s) at once: %s",
                len(first_pages),
                self.api_concurrency,
                ", ".join(first_pages),
            )
        self.reader = PageReader(self.crawler, self.crawl_query, self.chain_queries)
        if settings.getbool("CIVITAI_SHARED_CRAWL"):
            # Here, not at the top: the shared crawl brings redis, 0.04 s of every other start.
            from civitai_spider.shared_crawl import walk as shared_walk  # noqa: PLC0415

            async for element in shared_walk.walk(self.crawler, self.crawl_query, self.reader, first_pages):
                yield element
            return
        self.chains = self._chains_to_walk(first_pages, stale_requests)
        self._waiting_pages.extend(self._chain_request(chain) for chain in self.chains.values() if chain.live)
        for request in self._send_pages():
            yield request

    # --- JOBDIR: resume a pause, rewind to what it left undone ------------------------------

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
        job_state[job.WALK_KEY] = job.walk(self.crawler.settings, self.crawl_query)
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
                in_chain(chain_name),
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

    # --- the local walk: the page gate, a chain's pages -------------------------------------

    def _chain_request(self, chain: Chain) -> scrapy.Request:
        assert chain.next_url is not None
        return self.reader.page_request(
            chain.next_url, self.parse_page, self.api_failed, {_CHAIN_META_KEY: chain.name}
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
            page = await self.reader.read(
                response, chain.name, chain.pages, chain.last_page_full, chain.seen_streak
            )
        except Interrupted:
            return  # the chain stays at this page: a paused job asks it again
        finally:
            self._pages_in_flight -= 1
        assert chain.next_url is not None
        before = ListedPage(chain.next_url, chain.seen_streak, chain.last_page_full, pending=0)
        self.reader.count(page.counts)
        chain.pages += 1
        chain.last_page_full = page.full
        chain.seen_streak = page.streak
        chain.end = page.end
        if page.next_url is not None and page.cursor is not None:
            if chain.follow(page.next_url, page.cursor):
                # Asked for before this page's items go on, so that it downloads while they do.
                self._waiting_pages.append(self._chain_request(chain))
            else:
                log_cursor_loop(page.cursor, chain.name)
        if not chain.live:
            self._chain_ended(chain)
        for request in self._send_pages():
            yield request
        if page.items:
            before.pending = len(page.items)
            self._listed_pages[chain.name, chain.pages] = before
        for item in page.items:
            item.page = chain.pages
            yield item

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
        """A page request that failed for good ends the crawl (``api_error``)."""
        self._pages_in_flight -= 1
        end_for_failure(self.crawler, failure)


def _drop_queued_requests(scheduler: BaseScheduler) -> int:
    """Take every request out of ``scheduler`` (a JOBDIR queue) without sending it; how many."""
    dropped = 0
    while scheduler.next_request() is not None:
        dropped += 1
    return dropped
