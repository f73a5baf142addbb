"""Download each item's image and save it as ``<id>.jpg`` or ``<id>.png`` in ``IMAGES_STORE``.

A subclass of Scrapy's ImagesPipeline that keeps its download machinery and replaces
what it does with the bytes: stock ImagesPipeline re-encodes every image as JPEG quality
75 in the reactor thread, flattens transparency onto white and names files by URL hash.
Here the bytes decide (see :mod:`civitai_spider.imaging`), Pillow runs in a pool of
``CIVITAI_IMAGE_THREADS`` worker threads, files are written atomically, and a failure is
one log line plus one line in ``error_log.txt`` instead of a traceback, then the item is
dropped (its id is not recorded, so the next run tries again).

At most ``CIVITAI_IMAGES_IN_FLIGHT`` images are between request and saved file at once,
whatever the number of pages being processed: that, not the number of items, is what
bounds memory (a 3 MB PNG is held two or three times while it is downloaded and checked).
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from itemadapter import ItemAdapter
from PIL import Image
from scrapy.http import Request
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.images import ImagesPipeline
from scrapy.pipelines.media import FileException
from scrapy.utils.asyncio import run_in_thread

from civitai_spider.imaging import ImageRejected, PreparedImage, prepare_image
from civitai_spider.outcomes import FAILED_REASON, DropImage
from civitai_spider.store import (
    BOMB_LOG_NAME,
    ERROR_LOG_NAME,
    append_line,
    copy_atomically,
    log_line,
    remove_temporary_files,
    store_directory,
    write_atomically,
)

if TYPE_CHECKING:
    from os import PathLike

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.pipelines.media import FileInfo, FileInfoOrError, MediaPipeline
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)


class ImageFailed(FileException):
    """An image that could not be downloaded or stored; the message is the reason."""


class CivitaiImagesPipeline(ImagesPipeline):
    def __init__(self, store_uri: str | PathLike[str], *, crawler: Crawler):
        settings = crawler.settings
        self.check_settings(settings)
        super().__init__(store_uri, crawler=crawler)
        self.directory = store_directory(settings)
        self.max_pixels = settings.getint("CIVITAI_MAX_IMAGE_PIXELS")
        self.jpeg_quality = settings.getint("CIVITAI_JPEG_QUALITY")
        self.error_log = self.directory / ERROR_LOG_NAME
        self.bomb_log = self.directory / BOMB_LOG_NAME
        threads = settings.getint("CIVITAI_IMAGE_THREADS", -1)
        if threads < 0:
            threads = (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            )
        # Pillow releases the GIL while it decodes and encodes: one thread per core keeps
        # every core busy without holding more decoded images in memory than that.
        self.pillow = ThreadPoolExecutor(threads, thread_name_prefix="pillow") if threads else None
        self.in_flight = asyncio.Semaphore(settings.getint("CIVITAI_IMAGES_IN_FLIGHT"))

    @classmethod
    def check_settings(cls, settings: BaseSettings) -> None:
        store_directory(settings)
        quality = settings.getint("CIVITAI_JPEG_QUALITY")
        if not 1 <= quality <= 100:
            raise ValueError(f"CIVITAI_JPEG_QUALITY={quality} is not valid: allowed is 1 to 100")
        if settings.getint("CIVITAI_MAX_IMAGE_PIXELS") < 1:
            raise ValueError("CIVITAI_MAX_IMAGE_PIXELS must be a positive number of pixels")
        if settings.getint("CIVITAI_IMAGE_THREADS", -1) < -1:
            raise ValueError("CIVITAI_IMAGE_THREADS must be -1 (one per core), 0 (inline) or more")
        if settings.getint("CIVITAI_IMAGES_IN_FLIGHT") < 1:
            raise ValueError("CIVITAI_IMAGES_IN_FLIGHT must be at least 1")

    def open_spider(self) -> None:
        super().open_spider()
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(self.directory)
        # prepare_image() enforces CIVITAI_MAX_IMAGE_PIXELS itself, from the header and
        # before decoding; Pillow's own check would only add a process-wide warning.
        Image.MAX_IMAGE_PIXELS = None
        # MediaPipeline logs every failure with a traceback; ours are reported in one
        # line by item_completed() instead.
        logging.getLogger("scrapy.pipelines.media").addFilter(_hide_reported_failures)

    def close_spider(self) -> None:
        logging.getLogger("scrapy.pipelines.media").removeFilter(_hide_reported_failures)
        if self.pillow is not None:
            self.pillow.shutdown(wait=False)

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        try:
            async with self.in_flight:
                item = await super().process_item(item)
        finally:
            # MediaPipeline keeps each URL's result for the whole run. Files here are
            # named by id and the ID pipeline already drops repeated ids, so the cache
            # only costs memory, and would hand a second id sharing this URL the first
            # id's file.
            for url in adapter["image_urls"]:
                self.spiderinfo.downloaded.pop(
                    self.crawler.request_fingerprinter.fingerprint(Request(url)), None
                )
        own_name = _file_name(adapter["id"], adapter["image_file"].rsplit(".", 1)[1])
        if adapter["image_file"] != own_name:
            # Another item with the same URL was downloading at the same moment and we
            # were handed its result: give this id its own copy.
            await run_in_thread(
                copy_atomically, self.directory / adapter["image_file"], self.directory / own_name, sync=False
            )
            adapter["image_file"] = own_name
        return item

    def get_media_requests(self, item: Any, info: MediaPipeline.SpiderInfo) -> list[Request]:
        # An image that used up its retries is reported here, one WARNING with the reason;
        # Scrapy's own "Gave up retrying" would add an ERROR, the level of a broken crawl.
        meta = {"give_up_log_level": "DEBUG"}
        return [Request(url, callback=NO_CALLBACK, meta=meta) for url in ItemAdapter(item)["image_urls"]]

    def media_to_download(
        self, request: Request, info: MediaPipeline.SpiderInfo, *, item: Any = None
    ) -> None:
        # Always download: the ID file, not the store's file dates, says what is done.
        return None

    async def media_downloaded(
        self,
        response: Response,
        request: Request,
        info: MediaPipeline.SpiderInfo,
        *,
        item: Any = None,
    ) -> FileInfo:
        image_id = ItemAdapter(item)["id"]
        if response.status != 200:
            raise ImageFailed(f"HTTP {response.status}")
        try:
            prepared = await self._in_pillow_thread(
                _prepare_and_write,
                response.body,
                self.directory,
                image_id,
                self.max_pixels,
                self.jpeg_quality,
            )
        except ImageRejected as error:
            if error.size is not None:
                self._log_bomb(image_id, request.url, error.size, "refused")
            raise ImageFailed(str(error)) from None
        if prepared.over_pixel_limit:
            self._log_bomb(image_id, request.url, (prepared.width, prepared.height), "saved")
        self.inc_stats("converted" if prepared.converted else "kept")
        name = _file_name(image_id, prepared.extension)
        return {"url": request.url, "path": name, "checksum": None, "status": "downloaded"}

    def media_failed(self, failure: Failure, request: Request, info: MediaPipeline.SpiderInfo) -> NoReturn:
        error = failure.value
        if isinstance(error, ImageFailed):
            raise error
        text = str(error)
        raise ImageFailed(f"{type(error).__name__}: {text}" if text else type(error).__name__) from None

    def item_completed(
        self, results: list[FileInfoOrError], item: Any, info: MediaPipeline.SpiderInfo
    ) -> Any:
        adapter = ItemAdapter(item)
        for ok, result in results:
            if not ok:
                reason = str(result.value) or type(result.value).__name__
                url = adapter["url"]
                append_line(self.error_log, log_line(adapter["id"], url, reason))
                raise DropImage(
                    FAILED_REASON, f"image {adapter['id']} failed: {reason} <{url}>", log_level="WARNING"
                )
        adapter["images"] = [result for _, result in results]
        adapter["image_file"] = adapter["images"][0]["path"]
        return item

    async def _in_pillow_thread(self, function: Any, *args: Any) -> Any:
        if self.pillow is None:  # CIVITAI_IMAGE_THREADS=0: inline, for comparison only
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pillow, function, *args)

    def _log_bomb(self, image_id: int, url: str, size: tuple[int, int], outcome: str) -> None:
        width, height = size
        logger.warning(
            "Image %s is %dx%d pixels, over CIVITAI_MAX_IMAGE_PIXELS: %s", image_id, width, height, outcome
        )
        self.crawler.stats.inc_value(f"civitai/decompression_bomb/{outcome}")
        append_line(self.bomb_log, log_line(image_id, url, f"{width}x{height}", outcome))


def _prepare_and_write(
    body: bytes, directory: Path, image_id: int, max_pixels: int, jpeg_quality: int
) -> PreparedImage:
    # One trip to a worker thread for the check (or conversion) and the write. The file is
    # flushed to disk with its metadata files, in a batch, before its id is recorded.
    prepared = prepare_image(body, max_pixels=max_pixels, jpeg_quality=jpeg_quality)
    write_atomically(directory / _file_name(image_id, prepared.extension), prepared.data, sync=False)
    return prepared


def _file_name(image_id: int, extension: str) -> str:
    return f"{image_id}.{extension}"


def _hide_reported_failures(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], ImageFailed))
