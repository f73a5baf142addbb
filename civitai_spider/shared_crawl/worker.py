"""One ``scrapy crawl`` process's part in a shared crawl: take work, yield it, acknowledge it.

The spider's ``start()`` runs :meth:`Worker.work` for as long as the crawl lasts. It takes
page messages while fewer than ``CIVITAI_API_CONCURRENCY`` pages are in flight and image
messages while fewer than twice ``CIVITAI_IMAGES_IN_FLIGHT + CIVITAI_VIDEOS_IN_FLIGHT`` are
(so the downloads never wait for Redis, and a worker holds no more than it is working on),
and yields page requests and items. A page's answer is handed on
(:mod:`civitai_spider.shared_crawl.walk`, :meth:`Worker.hand_on`); an item's outcome (saved,
dropped, failed) acknowledges its message (Scrapy's item signals), only once the item is
through every pipeline: its files stored and its id recorded.

When Redis stays out of reach for ``CIVITAI_REDIS_TIMEOUT`` seconds the worker stops with
the finish reason ``redis_error``; what it held is taken over by a live worker later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import CloseSpider

from civitai_spider import outcomes
from civitai_spider.chains import crawl_end
from civitai_spider.extensions.stop import STOPPED_REASON, stop_crawl
from civitai_spider.items import CivitaiImage, InvalidApiItem, media_of
from civitai_spider.shared_crawl.crawl import HEARTBEAT_INTERVAL, SharedCrawl
from civitai_spider.shared_crawl.messages import MAX_DELIVERIES, HandOn, ImageMessage, PageMessage
from civitai_spider.stores import stores_of

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Seconds between two looks for new work while there is none.
_POLL_INTERVAL = 0.25
#: No new page is taken while this many images wait in the stream: the pages can run far
#: ahead of the downloads, and Redis holds about 2 KB per queued image.
MAX_QUEUED_IMAGES = 10_000


class Worker:
    def __init__(self, crawler: Crawler, crawl: SharedCrawl) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.crawl = crawl
        self.api_concurrency = settings.getint("CIVITAI_API_CONCURRENCY")
        self.max_images = 2 * (
            settings.getint("CIVITAI_IMAGES_IN_FLIGHT") + settings.getint("CIVITAI_VIDEOS_IN_FLIGHT")
        )
        self.error_log = stores_of(crawler).error_log
        #: Page messages whose request is out, by message id.
        self.pages: dict[str, PageMessage] = {}
        #: Items in the pipelines, by id(item): their message and the item (which keeps the id unique).
        self.images: dict[int, tuple[ImageMessage, Any]] = {}
        self._wake = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing_watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._acknowledgements: set[asyncio.Task[None]] = set()
        self._counts = {"pages": 0, "images": 0}
        crawler.signals.connect(self._item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self._item_dropped, signal=signals.item_dropped)
        crawler.signals.connect(self._item_error, signal=signals.item_error)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    async def work(
        self, chains: Mapping[str, str], page_request: Callable[[PageMessage], Request]
    ) -> AsyncIterator[Request | CivitaiImage]:
        """Join the crawl and yield its work until it is done (``chains``: name -> first page):
        items, and the requests ``page_request`` makes of page messages."""
        try:
            seeded = await self.crawl.join(chains)
            logger.info(
                "%s shared crawl %s (walk %d) in Redis as worker %s",
                "Started" if seeded else "Joined",
                self.crawl.digest,
                self.crawl.run,
                self.crawl.worker,
            )
            await self.crawl.release_dead_local_workers()
            self._heartbeat = asyncio.ensure_future(self._beat())
            self._closing_watch = asyncio.ensure_future(_finish_closing_scraper(self.crawler))
            async for element in self._work(page_request):
                yield element
        except OSError as error:  # SharedCrawlError, or the id store out of reach
            self.stop_for_redis(str(error))

    async def _work(
        self, page_request: Callable[[PageMessage], Request]
    ) -> AsyncIterator[Request | CivitaiImage]:
        ids = stores_of(self.crawler).ids
        engine = self.crawler.engine
        while True:
            self._wake.clear()
            took = False
            if engine.needs_backout():
                # The downloader is full, or the spider is closing: it would take work that
                # nobody then does (until it is taken over).
                await asyncio.sleep(_POLL_INTERVAL)
                continue
            free_pages = self.api_concurrency - len(self.pages)
            if free_pages > 0 and await self.crawl.queued_images() < MAX_QUEUED_IMAGES:
                for page in await self.crawl.take_pages(free_pages):
                    if page.message_id in self.pages:
                        # Ours, out longer than CIVITAI_REDIS_CLAIM_AFTER and claimed back (which
                        # refreshed its idle time): it is still being fetched, not a second time.
                        continue
                    took = True
                    if page.deliveries > MAX_DELIVERIES:
                        logger.warning(
                            "Page %d of chain %s was taken %d times: its workers keep stopping",
                            page.step + 1,
                            page.chain,
                            page.deliveries,
                        )
                    self.pages[page.message_id] = page
                    yield page_request(page)
            free_images = self.max_images - len(self.images)
            if free_images > 0:
                held = {message.message_id for message, _ in self.images.values()}
                # An image of ours still in the pipelines after CIVITAI_REDIS_CLAIM_AFTER (a slow
                # video) is claimed back too: it is not downloaded twice nor given up for it.
                messages = [
                    message
                    for message in await self.crawl.take_images(free_images)
                    if message.message_id not in held
                ]
                took = took or bool(messages)
                items = [(message, item) for message in messages if (item := await self._item_of(message))]
                if items:
                    await ids.prefetch([item.id for _, item in items])  # one round trip for them all
                for message, item in items:
                    self.images[id(item)] = (message, item)
                    yield item
            if took:
                continue
            if not self.pages and not self.images and await self.crawl.is_done():
                await self._end_as_the_chains_did()
                return
            try:
                await asyncio.wait_for(self._wake.wait(), _POLL_INTERVAL)
            except TimeoutError:
                pass

    async def _item_of(self, message: ImageMessage) -> CivitaiImage | None:
        """The item of an image message, or ``None`` when it is given up (acknowledged as failed)."""
        record = json.loads(message.record)
        if message.deliveries <= MAX_DELIVERIES:
            try:
                return CivitaiImage.from_api(record)
            except InvalidApiItem as error:  # checked before it was queued: cannot happen
                reason = str(error)
        else:
            reason = f"given up after {message.deliveries} deliveries: the workers holding it stopped"
        image_id, url = record.get("id"), record.get("url")
        logger.warning("Image %s failed: %s <%s>", image_id, reason, url)
        self.error_log.add(image_id, url, reason)
        self.crawler.stats.inc_value(outcomes.FAILED)
        await self.crawl.finish_image(message.message_id, ["failed"])
        return None

    async def hand_on(self, page: PageMessage, **hand_on: Any) -> HandOn:
        """Hand ``page`` on (see :meth:`SharedCrawl.hand_on`); stops the crawl if Redis is gone."""
        try:
            result = await self.crawl.hand_on(page, **hand_on)
        except OSError as error:
            self.stop_for_redis(str(error))
            raise CloseSpider(outcomes.REDIS_ERROR) from None
        finally:
            self.page_done(page)
        if not result.accepted:
            logger.warning(
                "Page %d of chain %s was taken over by another worker while this one fetched it: "
                "its images are left to that worker",
                page.step + 1,
                page.chain,
            )
        self._counts["pages"] += result.accepted
        return result

    def page_done(self, page: PageMessage) -> None:
        self.pages.pop(page.message_id, None)
        self._wake.set()

    # --- acknowledgements -------------------------------------------------------------------

    def _item_scraped(self, item: Any) -> None:
        self._finish(item, outcomes.counted_as(media_of(item)))

    def _item_dropped(self, item: Any, exception: BaseException) -> None:
        if getattr(exception, "reason", None) == STOPPED_REASON:
            # Not started: unacknowledged, it is taken over (by a live worker, or this one
            # when it runs again), as the images of a worker that died are.
            self.images.pop(id(item), None)
            return
        self._finish(item, outcomes.counted_as(media_of(item), exception))

    def _item_error(self, item: Any, failure: Any) -> None:
        self._finish(item, ["failed"])

    def _finish(self, item: Any, counted: Sequence[str]) -> None:
        held = self.images.pop(id(item), None)
        if held is None:
            return  # not one of ours (cannot happen in a shared crawl)
        message, _ = held
        self._counts["images"] += 1
        task = asyncio.ensure_future(self._acknowledge(message, counted, ItemAdapter(item).get("id")))
        self._acknowledgements.add(task)
        task.add_done_callback(self._acknowledgements.discard)
        self._wake.set()

    async def _acknowledge(self, message: ImageMessage, counted: Sequence[str], image_id: Any) -> None:
        try:
            await self.crawl.finish_image(message.message_id, counted)
        except OSError as error:
            # Unacknowledged, the image is taken over by a live worker (or this one, later).
            self.stop_for_redis(f"{error} (image {image_id} stays queued)")

    # --- the rest -------------------------------------------------------------------------

    async def _end_as_the_chains_did(self) -> None:
        ends = await self.crawl.chain_ends()
        reason = crawl_end(list(ends.values()))
        logger.info("The shared crawl is done: %d chain(s) ended (%s)", len(ends), _ends_text(ends))
        if reason is not None:
            self._close(reason)

    async def _beat(self) -> None:
        while True:
            try:
                await self.crawl.heartbeat(self._report("working"))
            except OSError as error:
                self.stop_for_redis(str(error))
                return
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _report(self, state: str) -> dict[str, Any]:
        return {
            "state": state,
            "pages_in_flight": len(self.pages),
            "images_in_flight": len(self.images),
            "pages_handed_on": self._counts["pages"],
            "images_finished": self._counts["images"],
        }

    def stop_for_redis(self, reason: str) -> None:
        """Stop the worker with ``redis_error``: one ERROR line, however many things failed."""
        if not self._stopping:  # one ERROR line, not one per image in flight
            self._stopping = True
            logger.error("Stopping: %s", reason)
        # A stop: what is not started stays queued in Redis, for when it answers again.
        stop_crawl(self.crawler, outcomes.REDIS_ERROR)

    def _close(self, reason: str) -> None:
        # Not awaited: closing waits for spider_closed, whose handler below waits for the
        # acknowledgements, one of which may be the caller.
        if self.crawler.engine is not None and self.crawler.engine.spider is not None:
            asyncio.ensure_future(self.crawler.engine.close_spider_async(reason=reason))

    async def _spider_closed(self, reason: str) -> None:
        for task in (self._heartbeat, self._closing_watch):
            if task is not None:
                task.cancel()
        # The last items' acknowledgements; one that waits for Redis gives up at the timeout.
        await asyncio.gather(*self._acknowledgements, return_exceptions=True)
        try:
            if self.crawl.run:
                await self.crawl.heartbeat(self._report(f"stopped: {reason}"))
                await self.crawl.leave()
        except OSError as error:
            logger.debug("Could not say goodbye to Redis: %s", error)
        await self.crawl.close()


def _ends_text(ends: Mapping[str, str | None]) -> str:
    counted: dict[str, int] = {}
    for end in ends.values():
        counted[end or "live"] = counted.get(end or "live", 0) + 1
    return ", ".join(f"{count} {end}" for end, count in sorted(counted.items()))


async def _finish_closing_scraper(crawler: Crawler) -> None:
    """Let a closing spider close once its last item from ``start()`` is through.

    Scrapy 2.19's ``Scraper.start_itemproc_async`` (items from ``start()``, as every image of a
    shared crawl is) does not check, when an item is done, whether a closing scraper is now
    idle; only responses do. A worker closed while images were in flight would then wait for
    ever. This checks as Scrapy does after a response, every tenth of a second.
    """
    while True:
        await asyncio.sleep(0.1)
        scraper = crawler.engine.scraper if crawler.engine is not None else None
        slot = scraper.slot if scraper is not None else None
        if slot is not None and slot.closing is not None and not slot.closing.called:
            scraper._check_if_closing()
