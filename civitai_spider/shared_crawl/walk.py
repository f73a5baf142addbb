"""A shared crawl's walk: this process joins it as a worker, and walks the pages it takes.

:func:`walk` is what the spider's ``start()`` runs instead of its own walk with
``CIVITAI_SHARED_CRAWL``. The :class:`~civitai_spider.shared_crawl.worker.Worker` takes page
messages from Redis and yields :meth:`SharedPages.request` for each; the answer is read like any page
(:class:`~civitai_spider.page.PageReader`), and its new images and the chain's next page go
back to Redis in one step (:meth:`Worker.hand_on`). A page that could not be read or handed
on is released unacknowledged: another worker (or this one, later) takes it over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy.exceptions import CloseSpider

from civitai_spider import outcomes
from civitai_spider.items import CivitaiImage
from civitai_spider.page import Interrupted, PageReader, end_for_failure, log_cursor_loop
from civitai_spider.shared_crawl.crawl import SharedCrawl
from civitai_spider.shared_crawl.worker import Worker

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure

    from civitai_spider.query import CrawlQuery
    from civitai_spider.shared_crawl.messages import PageMessage

logger = logging.getLogger(__name__)

#: ``Request.meta`` key of a shared crawl's page request: its page message.
_PAGE_MESSAGE_META_KEY = "civitai_page_message"


async def walk(
    crawler: Crawler, crawl_query: CrawlQuery, reader: PageReader, first_pages: Mapping[str, str]
) -> AsyncIterator[scrapy.Request | CivitaiImage]:
    """Join (or seed) the shared crawl of these arguments and yield its work until it is done."""
    settings = crawler.settings
    # What makes two workers' crawls the same crawl: the same API and chains' queries. Unlike
    # a JOBDIR's walk (job.walk, checked before any request), it is known only once a model's
    # versions are listed; its digest names the crawl in Redis, so a change would orphan the
    # crawls already there.
    definition: dict[str, Any] = {
        "api_url": reader.api_url,
        "chains": reader.chain_queries,
        "max_pages": crawl_query.max_pages,
        "stop_after_seen": crawl_query.stop_after_seen,
    }
    crawl = SharedCrawl(
        settings.get("CIVITAI_REDIS_URL"),
        settings.get("CIVITAI_REDIS_PREFIX"),
        definition,
        timeout=settings.getfloat("CIVITAI_REDIS_TIMEOUT"),
        claim_after=settings.getfloat("CIVITAI_REDIS_CLAIM_AFTER"),
    )
    worker = Worker(crawler, crawl)
    pages = SharedPages(reader, worker)
    async for element in worker.work(first_pages, pages.request):
        yield element


class SharedPages:
    """The page requests of one worker: their callback and errback."""

    def __init__(self, reader: PageReader, worker: Worker):
        self.reader = reader
        self.worker = worker

    def request(self, page: PageMessage) -> scrapy.Request:
        """The request for a page message."""
        return self.reader.page_request(page.url, self.parse, self.failed, {_PAGE_MESSAGE_META_KEY: page})

    async def parse(self, response: Response) -> None:
        """Queue the page's new images in Redis, with the chain's next page."""
        page: PageMessage = response.meta[_PAGE_MESSAGE_META_KEY]
        try:
            await self._hand_on(page, response)
        except Interrupted:
            pass  # unacknowledged: taken over later, asked again then
        finally:
            # Unless handed on, the page stays pending in Redis: another worker takes it over.
            self.worker.page_done(page)

    async def _hand_on(self, page: PageMessage, response: Response) -> None:
        try:
            read = await self.reader.read(
                response, page.chain, page.step, page.after_full, page.streak, new=True
            )
        except OSError as error:  # the id store
            self.worker.stop_for_redis(str(error))  # it names Redis and the id keys
            raise CloseSpider(outcomes.REDIS_ERROR) from None
        read.counts["dropped/already_downloaded"] += sum(read.recorded.values())
        result = await self.worker.hand_on(
            page,
            next_url=read.next_url,
            cursor_key=read.cursor,
            end=read.end,
            streak=read.streak,
            full=read.full,
            counts=read.counts,
            # Only work that is real goes into the queue: not what an earlier walk saved.
            images=[(item.id, json.dumps(item.api_item)) for item in read.new],
        )
        if not result.accepted:
            return
        read.counts["dropped/duplicate"] += result.duplicates
        self.reader.count(read.counts)
        if result.end == outcomes.CURSOR_LOOP:
            log_cursor_loop(read.cursor or "", page.chain)
        elif result.end and len(self.reader.chain_queries) > 1:
            logger.info("Chain %s ended (%s) after %d page(s)", page.chain, result.end, page.step + 1)

    def failed(self, failure: Failure) -> None:
        """A page request that failed for good ends the crawl (``api_error``); its page stays queued."""
        # Scrapy sets request on the Failure it passes to an errback; Twisted's class lacks it.
        self.worker.page_done(failure.request.meta[_PAGE_MESSAGE_META_KEY])  # type: ignore[attr-defined]
        end_for_failure(self.worker.crawler, failure)
