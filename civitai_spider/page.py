"""Reading one API page of a chain: what it lists, and how its chain goes on.

Both walks, the spider's own and a shared crawl's (:mod:`civitai_spider.shared_crawl.walk`),
read each page they receive once, with :meth:`PageReader.read`:

- a page that is not one (an error status, not JSON, no ``items``) ends the crawl
  (``api_error``, or ``region_blocked``), one ERROR line;
- an empty page without a cursor right after a full one is asked again before it is believed;
- each record becomes an item, or is rejected (logged, ``error_log.txt``, counted);
- with ``stop_after_seen`` (or for a shared crawl's queue) the id store says which passing
  items are already downloaded: the streak of them, and whether the chain caught up;
- the chain's next page: ``nextCursor`` (or a ``nextPage`` on the API's own host), or its end.

What the walk does with a page's items (yield them, or queue the new ones in Redis) and where
it keeps its chains is the walk's own business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

import scrapy
from scrapy.exceptions import CloseSpider
from scrapy.http import Response, TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.defer import deferred_from_coro

from civitai_spider import api, outcomes
from civitai_spider.chains import CAUGHT_UP, END_OF_LISTING, MAX_PAGES
from civitai_spider.extensions.stop import stop_of
from civitai_spider.item_filter import ItemFilter
from civitai_spider.items import CivitaiImage, InvalidApiItem
from civitai_spider.outcomes import DropImage
from civitai_spider.query import WHOLE_QUERY
from civitai_spider.stores import stores_of

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure

    from civitai_spider.query import CrawlQuery

logger = logging.getLogger(__name__)

#: Stat: times an empty page without a cursor after a full page was asked again.
EMPTY_PAGE_RETRIES_STAT = f"{outcomes.STATS_PREFIX}empty_page_retries"
#: Item types the spider knows; any other is dropped as ``unknown_type``.
_KNOWN_TYPES = ("image", "video", "audio")


class Interrupted(Exception):
    """The crawl began to close while a page was being asked again: leave its chain as it is."""


@dataclass
class Page:
    """One page of a chain, read."""

    #: The items of the kinds the crawl keeps, in the page's order.
    items: list[CivitaiImage]
    #: With ``new=True``: those of them that pass the item filter and are not in the id store.
    new: list[CivitaiImage]
    #: ``items_seen`` and ``dropped/<reason>``: what this page adds to the crawl's counts.
    counts: Counter[str]
    #: Whether it held ``limit`` records: an empty page without a cursor after it is doubted.
    full: bool
    #: The already-downloaded streak after it.
    streak: int
    #: How the chain ended with it, ``None`` if it goes on (then ``next_url`` and ``cursor``).
    end: str | None
    next_url: str | None = None
    #: What names the next page: a loop is this given twice in one chain.
    cursor: str | None = None
    #: The ids the id store was asked about, with its answers (only what passes the item filter).
    recorded: dict[int, bool] = field(default_factory=dict)


class PageReader:
    """Reads the pages of a crawl's chains (``chain_queries``: name -> API query)."""

    def __init__(self, crawler: Crawler, crawl_query: CrawlQuery, chain_queries: dict[str, dict[str, str]]):
        settings = crawler.settings
        self.crawler = crawler
        self.api_url: str = settings.get("CIVITAI_API_URL")
        self.chain_queries = chain_queries
        self.media_types = crawl_query.media_types
        self.max_pages = crawl_query.max_pages
        self.stop_after_seen = crawl_query.stop_after_seen
        self.item_filter = ItemFilter.build(settings)
        self.empty_page_retries = settings.getint("CIVITAI_EMPTY_PAGE_RETRIES")
        self.empty_page_delay = settings.getfloat("CIVITAI_EMPTY_PAGE_DELAY")
        self._stores = stores_of(crawler)

    async def read(
        self, response: Response, chain: str, pages: int, after_full: bool, streak: int, *, new: bool = False
    ) -> Page:
        """Read page ``pages + 1`` of ``chain``, whose page before was full (``after_full``) and
        which had met ``streak`` already-downloaded images in a row; with ``new``, find which
        passing items are not in the id store (an ``OSError`` if it does not answer).

        Raises ``CloseSpider`` for a page that is not one, :class:`Interrupted` when the crawl
        closes while an empty page waits to be asked again.
        """
        records, metadata = await self._settled(response, chain, after_full)
        items, counts = self._items_of(records, chain)
        page = Page(
            items,
            [],
            counts,
            full=len(records) >= int(self.chain_queries[chain]["limit"]),
            streak=streak,
            end=None,
        )
        if new or self.stop_after_seen is not None:
            await self._ask_id_store(page, chain, strict=new)
        if page.end is None:
            page.end, page.next_url, page.cursor = self._next_of(chain, pages + 1, metadata)
        return page

    def count(self, counts: Counter[str]) -> None:
        """Add a page's counts to the crawl's stats."""
        stats = self.crawler.stats
        for name, count in counts.items():
            if count:
                stats.inc_value(f"{outcomes.STATS_PREFIX}{name}", count)

    def page_request(self, url: str, callback: Any, errback: Any, meta: dict[str, Any]) -> scrapy.Request:
        """The request of an API page; its callback and errback are the walk's."""
        return scrapy.Request(
            url,
            callback=callback,
            errback=errback,
            meta={**api.request_meta(page=True), **meta},
            # Cursor loops are detected by the walks, with a clear reason; the dupefilter
            # would end them silently.
            dont_filter=True,
        )

    # --- the page's records -----------------------------------------------------------------

    async def _settled(
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
        """
        records, metadata = _page_of(response)
        retries = 0
        while after_full and not records and not _names_a_next_page(metadata):
            if retries == self.empty_page_retries:
                logger.warning(
                    "%s%s was empty without a cursor right after a full page, %s: the chain ends "
                    "there, maybe before the listing does",
                    response.url,
                    in_chain(chain),
                    f"still after {retries} more tries" if retries else "CIVITAI_EMPTY_PAGE_RETRIES=0",
                )
                break
            retries += 1
            delay = self.empty_page_delay * 2 ** (retries - 1)
            logger.warning(
                "%s%s came back empty without a cursor right after a full page: asking again in "
                "%g s (%d of %d)",
                response.url,
                in_chain(chain),
                delay,
                retries,
                self.empty_page_retries,
            )
            self.crawler.stats.inc_value(EMPTY_PAGE_RETRIES_STAT)
            await self._wait(delay)
            request = scrapy.Request(response.url, meta=api.request_meta(page=True), dont_filter=True)
            try:
                response = await self.crawler.engine.download_async(request)
            except Exception as error:  # the download's own errors, after its retries
                stop_for_api_error(outcomes.describe_error(error), response.url)
            records, metadata = _page_of(response)
        if retries and (records or _names_a_next_page(metadata)):
            logger.info(
                "%s%s answered %d item(s) when asked again (%d of %d): going on",
                response.url,
                in_chain(chain),
                len(records),
                retries,
                self.empty_page_retries,
            )
        return records, metadata

    async def _wait(self, seconds: float) -> None:
        """Sleep, unless the crawl starts closing meanwhile (then :class:`Interrupted`)."""
        deadline = time.monotonic() + seconds
        stop = stop_of(self.crawler)
        while not stop.closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.2))
        raise Interrupted

    def _items_of(self, records: list[Any], chain: str) -> tuple[list[CivitaiImage], Counter[str]]:
        """The items of a page's records, and the page's counts (``items_seen``, ``dropped/<reason>``)."""
        counts: Counter[str] = Counter(items_seen=len(records))
        items = []
        for record in records:
            try:
                item = CivitaiImage.from_api(record, chain=chain)
            except InvalidApiItem as error:
                self._reject(str(error), record)
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

    def _reject(self, message: str, record: Any) -> None:
        logger.warning("Skipped an API item: %s", message)
        image_id = record.get("id") if isinstance(record, dict) else None
        url = record.get("url") if isinstance(record, dict) else None
        self._stores.error_log.add(repr(image_id), repr(url), message)

    # --- the id store: what is new, the already-downloaded streak ---------------------------

    async def _ask_id_store(self, page: Page, chain: str, *, strict: bool) -> None:
        """Which of the page's passing items are recorded: ``page.new``, ``page.recorded``, the
        streak. ``strict``: an id store that does not answer raises; else it counts as no
        answer (the pipelines fail those items then, with the reason)."""
        # What fails the item filter is dropped and counted by the pipelines (or, for a
        # shared crawl's queue, here): it says nothing about what was saved.
        passing = []
        for item in page.items:
            try:
                self.item_filter.check(item)
            except DropImage as drop:
                if strict:
                    # Never queued, so no pipeline logs it: its DEBUG line is here.
                    logger.debug("Dropped: %s", drop)
                    page.counts[f"dropped/{drop.reason}"] += 1
            else:
                passing.append(item)
        ids = self._stores.ids
        image_ids = [item.id for item in passing]
        try:
            await ids.prefetch(image_ids)
            answers = await ids.contains(image_ids)
        except OSError as error:
            if strict:
                raise
            logger.debug("The id store did not answer for stop_after_seen: %s", error)
            page.streak = 0
            return
        page.recorded = dict(zip(image_ids, answers, strict=True))
        page.new = [item for item, seen in zip(passing, answers, strict=True) if not seen]
        caught_up = False
        for seen in answers:
            page.streak = page.streak + 1 if seen else 0
            caught_up = caught_up or (
                self.stop_after_seen is not None and page.streak >= self.stop_after_seen
            )
        if caught_up:
            logger.info(
                "Caught up%s: %d image(s) in a row were already in the id store "
                "(stop_after_seen=%d), stopping",
                in_chain(chain),
                self.stop_after_seen,
                self.stop_after_seen,
            )
            page.end = CAUGHT_UP

    # --- the chain's next page --------------------------------------------------------------

    def _next_of(
        self, chain: str, pages: int, metadata: dict[str, Any]
    ) -> tuple[str | None, str | None, str | None]:
        """How a chain goes on after page ``pages``: (its end, None, None) or (None, url, cursor)."""
        if self.max_pages is not None and pages >= self.max_pages:
            logger.info("Stopping%s after max_pages=%d page(s)", in_chain(chain), self.max_pages)
            return MAX_PAGES, None, None
        cursor = _cursor_text(metadata.get("nextCursor"))
        next_page = metadata.get("nextPage")
        if cursor:
            query = {**self.chain_queries[chain], "cursor": cursor}
            return None, f"{self.api_url}?{urlencode(query)}", cursor
        if isinstance(next_page, str) and next_page:
            if api.origin(next_page) != api.origin(self.api_url):
                logger.error(
                    "Not following nextPage %s: it is not on the API host %s", next_page, self.api_url
                )
                return END_OF_LISTING, None, None
            return None, next_page, next_page
        return END_OF_LISTING, None, None


def log_cursor_loop(cursor: str, chain: str) -> None:
    logger.error(
        "The API returned cursor %r a second time%s: stopping it to avoid a loop", cursor, in_chain(chain)
    )


def in_chain(chain: str) -> str:
    """`` in chain <name>`` for a log line, nothing for the one chain of an unsplit crawl."""
    return "" if chain == WHOLE_QUERY else f" in chain {chain}"


def stop_for_api_error(reason: str, url: str, status: int | None = None) -> NoReturn:
    """End the crawl from a callback (or ``start()``): CloseSpider closes it without a line of Scrapy's."""
    raise CloseSpider(api.log_failure(reason, url, status))


def end_for_failure(crawler: Crawler, failure: Failure) -> None:
    """End the crawl for a page request that failed for good (an errback's ``failure``): one
    ERROR line with the reason, then ``api_error`` (or ``region_blocked``)."""
    if failure.check(HttpError):
        assert isinstance(failure.value, HttpError)
        response = failure.value.response
        reason, status = f"HTTP {response.status}: {api.server_error_message(response)}", response.status
    else:
        assert failure.value is not None  # a Failure always holds its exception
        reason, status = outcomes.describe_error(failure.value), None
    # Scrapy sets request on the Failure it passes to an errback; Twisted's class lacks it.
    url = failure.request.url  # type: ignore[attr-defined]
    # CloseSpider raised from an errback would make Scrapy log the download error as a second
    # ERROR ("Error downloading"). Close as CloseSpider would: what is in flight finishes,
    # nothing new starts.
    deferred_from_coro(crawler.engine.close_spider_async(reason=api.log_failure(reason, url, status)))


def _page_of(response: Response) -> tuple[list[Any], dict[str, Any]]:
    if not 200 <= response.status < 300:  # a page asked again answers without HttpError
        reason = f"HTTP {response.status}: {api.server_error_message(response)}"
        stop_for_api_error(reason, response.url, response.status)
    problem = api.page_problem(response)
    if problem is not None:
        # The retry middleware already retried this page; give up loudly.
        stop_for_api_error(problem, response.url)
    assert isinstance(response, TextResponse)  # page_problem() said so otherwise
    payload = response.json()
    metadata = payload.get("metadata")
    return payload["items"], metadata if isinstance(metadata, dict) else {}


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
