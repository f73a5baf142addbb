"""Download each item's image or video and store it as ``<id>.<extension>`` in the file store.

A subclass of Scrapy's ImagesPipeline that keeps its download machinery and replaces
what it does with the bytes: stock ImagesPipeline re-encodes every image as JPEG quality
75 in the reactor thread, flattens transparency onto white, names files by URL hash and
has no notion of video. Here the bytes decide:

- an image is kept or converted by :mod:`civitai_spider.imaging`, in a pool of
  ``CIVITAI_IMAGE_THREADS`` Pillow threads;
- a video is checked for a whole container by :mod:`civitai_spider.video` and saved as the
  original bytes, never re-encoded, in a worker thread (a video is hundreds of megabytes:
  nothing walks or writes it in the reactor thread). Its body is never in memory: the
  download handler (:mod:`civitai_spider.download_handler`) writes it to a temporary file in
  the store's spool folder as it arrives; the check reads that file, which is then renamed
  into place (a folder) or uploaded in parts (a bucket).

Files are stored atomically, in the folder or the bucket ``IMAGES_STORE`` names
(:mod:`civitai_spider.stores`); a failure is one log line plus one line in ``error_log.txt``
instead of a traceback, then the item is dropped (its id is not recorded, so the next run
tries again). A file the store could not take is a store failure
(:mod:`civitai_spider.stores.failures`): many in a row end the crawl.

At most ``CIVITAI_IMAGES_IN_FLIGHT`` images and ``CIVITAI_VIDEOS_IN_FLIGHT`` videos are
between request and recorded id at once, whatever the number of pages being processed:
that, not the number of items, is what bounds memory (an image's body is held whole until it
is written, a 3 MB PNG two or three times while it is checked; a video's is on disk) and how
many more a stop saves.
Once the crawl is told to stop (:mod:`civitai_spider.extensions.stop`), no download starts:
the items waiting for a place are dropped as ``stopped``.

With ``CIVITAI_IMAGE_WIDTH``, an image is asked from the CDN at that width
(:mod:`civitai_spider.cdn_width`) and stored as the CDN sent it, once checked, never converted;
an image whose URL has no transform segment is fetched as the original, counted
(``civitai/cdn_width/original``) and said once in the log. Videos are fetched as they are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, cast

from itemadapter import ItemAdapter
from PIL import Image
from scrapy import signals
from scrapy.exceptions import DownloadCancelledError
from scrapy.http import Request
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.images import ImagesPipeline
from scrapy.pipelines.media import FileException
from scrapy.utils.asyncio import run_in_thread
from twisted.internet.defer import CancelledError

from civitai_spider.cdn_width import resized_url, snapped_width
from civitai_spider.download_handler import SPOOL_META_KEY, Spool
from civitai_spider.errors import describe_os_error
from civitai_spider.extensions.stop import STOPPED_REASON, Stop, stop_of
from civitai_spider.imaging import ImageRejected, PreparedImage, keep_image, prepare_image
from civitai_spider.items import media_of
from civitai_spider.outcomes import FAILED_REASON, DropImage, describe_error
from civitai_spider.stores import log_directory, stores_of
from civitai_spider.stores.base import FileStore, StoreError
from civitai_spider.stores.failures import StoreFailed
from civitai_spider.video import VideoRejected, check_video_file

if TYPE_CHECKING:
    from os import PathLike

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.pipelines.media import FileInfo, FileInfoOrError, MediaPipeline
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: ``Request.meta`` key: the size cap of this download and the setting that set it.
_SIZE_CAP_META_KEY = "civitai_size_cap"
#: Images asked from the CDN at CIVITAI_IMAGE_WIDTH, and those fetched as originals instead.
CDN_RESIZED_STAT = "civitai/cdn_width/resized"
CDN_ORIGINAL_STAT = "civitai/cdn_width/original"
#: The logger of Scrapy's HTTP/1.1 download handler, which warns about downloads over their cap.
_HTTP_HANDLER_LOGGER = "scrapy.core.downloader.handlers.http11"


class MediaFailed(FileException):
    """A file that could not be downloaded or stored; the message is the reason."""


class _NotStarted(MediaFailed):
    """The crawl began to stop before this file's download did: it is not started."""


class MediaNotStored(MediaFailed):
    """A file that came whole but that the store (``store``, described) could not take."""

    def __init__(self, reason: str, *, store: str) -> None:
        super().__init__(reason)
        self.store = store


class CivitaiMediaPipeline(ImagesPipeline):
    def __init__(self, store_uri: str | PathLike[str], *, crawler: Crawler):
        settings = crawler.settings
        super().__init__(store_uri, crawler=crawler)
        self.stores = stores_of(crawler)
        self.files = self.stores.files
        self.max_pixels = settings.getint("CIVITAI_MAX_IMAGE_PIXELS")
        self.jpeg_quality = settings.getint("CIVITAI_JPEG_QUALITY")
        self.image_width = settings.getint("CIVITAI_IMAGE_WIDTH")
        #: The width asked of the CDN, snapped as the site snaps it; None: the originals.
        self.cdn_width = snapped_width(self.image_width) if self.image_width else None
        self._original_urls_said = False
        self.log_directory = log_directory(settings)
        self.error_log, self.bomb_log = self.stores.error_log, self.stores.bomb_log
        threads = settings.getint("CIVITAI_IMAGE_THREADS", -1)
        if threads < 0:
            threads = (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            )
        # Pillow releases the GIL while it decodes and encodes: one thread per core keeps
        # every core busy without holding more decoded images in memory than that.
        self.pillow = ThreadPoolExecutor(threads, thread_name_prefix="pillow") if threads else None
        self.in_flight = {
            "image": asyncio.Semaphore(settings.getint("CIVITAI_IMAGES_IN_FLIGHT")),
            "video": asyncio.Semaphore(settings.getint("CIVITAI_VIDEOS_IN_FLIGHT")),
        }
        #: id(item) -> the in-flight place an item past this pipeline holds until it is through.
        self._places: dict[int, asyncio.Semaphore] = {}
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(self._item_through, signal=signal)
        self.request_meta: dict[str, dict[str, Any]] = {
            # A file that used up its retries is reported here, one WARNING with the reason;
            # Scrapy's own "Gave up retrying" would add an ERROR, the level of a broken crawl.
            "image": {
                "give_up_log_level": "DEBUG",
                _SIZE_CAP_META_KEY: ("DOWNLOAD_MAXSIZE", settings.getint("DOWNLOAD_MAXSIZE")),
            },
            "video": {
                "give_up_log_level": "DEBUG",
                "download_maxsize": settings.getint("CIVITAI_MAX_VIDEO_BYTES"),
                # Every video is over DOWNLOAD_WARNSIZE's scale for images: no warning each.
                "download_warnsize": 0,
                "download_timeout": settings.getfloat("CIVITAI_VIDEO_DOWNLOAD_TIMEOUT"),
                _SIZE_CAP_META_KEY: ("CIVITAI_MAX_VIDEO_BYTES", settings.getint("CIVITAI_MAX_VIDEO_BYTES")),
            },
        }

    # Scrapy calls these without the deprecated spider argument and awaits a coroutine, but
    # MediaPipeline keeps its signatures with spider (open_spider synchronous): hence the ignores.
    async def open_spider(self) -> None:  # type: ignore[override]
        super().open_spider()
        self.log_directory.mkdir(parents=True, exist_ok=True)
        await self.stores.open()
        # prepare_image() enforces CIVITAI_MAX_IMAGE_PIXELS itself, from the header and
        # before decoding; Pillow's own check would only add a process-wide warning.
        Image.MAX_IMAGE_PIXELS = None
        # At DEBUG, Pillow's plugins log each chunk they read ("STREAM b'IHDR' 16 13", three
        # lines and more per PNG): noise about Pillow's work, never about the crawl's.
        logging.getLogger("PIL").setLevel(logging.INFO)
        # MediaPipeline logs every failure with a traceback, and Scrapy's download handler
        # a WARNING for a download over its size cap; ours are reported in one line by
        # item_completed() instead.
        logging.getLogger("scrapy.pipelines.media").addFilter(_hide_reported_failures)
        logging.getLogger(_HTTP_HANDLER_LOGGER).addFilter(_hide_size_cap_warnings)
        if self.cdn_width is not None:
            logger.info(
                "CIVITAI_IMAGE_WIDTH=%d: images are asked from the CDN %d pixels wide%s, and stored as it "
                "sends them; videos as they are",
                self.image_width,
                self.cdn_width,
                "" if self.cdn_width == self.image_width else " (the next width it serves, as the site asks)",
            )

    def close_spider(self) -> None:
        logging.getLogger("scrapy.pipelines.media").removeFilter(_hide_reported_failures)
        logging.getLogger(_HTTP_HANDLER_LOGGER).removeFilter(_hide_size_cap_warnings)
        if self.pillow is not None:
            self.pillow.shutdown(wait=False)

    async def process_item(self, item: Any) -> Any:  # type: ignore[override]
        adapter = ItemAdapter(item)
        stop = stop_of(self.crawler)
        self._unless_stopping(item, stop)
        place = self.in_flight[media_of(item)]
        if self.cdn_width is not None and media_of(item) == "image":
            self._ask_width(adapter, self.cdn_width)
        await place.acquire()
        try:
            item = await super().process_item(item)
        except BaseException:
            place.release()
            raise
        else:
            # Held until the item is through every pipeline (its id recorded, or it failed):
            # a stop then saves at most the places more, however long the commits take.
            self._places[id(item)] = place
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
            try:
                await self.files.copy(adapter["image_file"], own_name)
            except OSError as error:
                self._fail(item, _not_stored(self.files, own_name, error))
            adapter["image_file"] = own_name
        return item

    def _ask_width(self, adapter: ItemAdapter, width: int) -> None:
        """Point the item's download at its image ``width`` pixels wide, or count it as an original."""
        urls = [resized_url(url, width) for url in adapter["image_urls"]]
        if all(url is not None for url in urls):
            adapter["image_urls"], adapter["cdn_width"] = urls, width
            return
        self.crawler.stats.inc_value(CDN_ORIGINAL_STAT)
        if not self._original_urls_said:
            # Once per crawl: a feed can hold thousands of them; the stat counts them all.
            self._original_urls_said = True
            logger.info(
                "Image %s: its URL has no transform segment to ask a width in (%s): fetched as the "
                "original, as is every such image (counted in %s)",
                adapter["id"],
                adapter["url"],
                CDN_ORIGINAL_STAT,
            )

    def _item_through(self, item: Any) -> None:
        place = self._places.pop(id(item), None)
        if place is not None:
            place.release()

    @staticmethod
    def _unless_stopping(item: Any, stop: Stop) -> None:
        if stop.stopping:
            # Not a failure: listed but not started. A paused job (JOBDIR) lists it again.
            raise DropImage(
                STOPPED_REASON,
                f"{media_of(item)} {ItemAdapter(item)['id']}: not started, the crawl is stopping",
            )

    def get_media_requests(self, item: Any, info: MediaPipeline.SpiderInfo) -> list[Request]:
        adapter = ItemAdapter(item)
        media = media_of(item)
        requests = [
            Request(url, callback=NO_CALLBACK, meta=dict(self.request_meta[media]))
            for url in adapter["image_urls"]
        ]
        if media == "video":
            for request in requests:  # its body goes to a file as it arrives, not to memory
                request.meta[SPOOL_META_KEY] = Spool(self.files.spool_directory(), f"{adapter['id']}.video")
        return requests

    def media_to_download(
        self, request: Request, info: MediaPipeline.SpiderInfo, *, item: Any = None
    ) -> None:
        # Checked here, the last moment before the download joins the engine's requests (nothing
        # is awaited in between): a download started once a closing engine has let its last
        # request go would never be waited for (a shared crawl's items come from no request).
        if stop_of(self.crawler).stopping:
            raise _NotStarted
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
        adapter = ItemAdapter(item)
        spool = request.meta.get(SPOOL_META_KEY)
        if response.status != 200:
            if spool is not None:
                spool.discard()
            raise MediaFailed(f"HTTP {response.status}")
        if spool is not None:
            extension, size = await self._save_video(spool, response.body, adapter["id"])
        else:
            resized = adapter.get("cdn_width") is not None
            extension, size = await self._save_image(response.body, adapter["id"], request.url, keep=resized)
        # The manifest's row tells it (pipelines/manifest.py), without asking the store.
        adapter["image_size"] = size
        name = _file_name(adapter["id"], extension)
        return {"url": request.url, "path": name, "checksum": None, "status": "downloaded"}

    async def _save_image(
        self, body: bytes, image_id: int, url: str, *, keep: bool = False
    ) -> tuple[str, int]:
        """Store ``body`` checked and, unless ``keep`` (a resized image), converted as needed; its
        extension and size."""
        try:
            prepared = await self._in_pillow_thread(
                _prepare_and_put_image, body, self.files, image_id, self.max_pixels, self.jpeg_quality, keep
            )
            if not self.files.put_where_prepared:
                await self._save(_file_name(image_id, prepared.extension), prepared.data)
        except ImageRejected as error:
            if error.size is not None:
                self._log_bomb(image_id, url, error.size, "refused")
            raise MediaFailed(str(error)) from None
        if prepared.over_pixel_limit:
            self._log_bomb(image_id, url, (prepared.width, prepared.height), "saved")
        self.inc_stats("converted" if prepared.converted else "kept")
        if keep:
            self.crawler.stats.inc_value(CDN_RESIZED_STAT)
        return prepared.extension, len(prepared.data)

    async def _save_video(self, spool: Spool, body: bytes, video_id: int) -> tuple[str, int]:
        """Check the file ``spool`` holds and store it, its extension and size; ``body`` is empty
        unless it came whole (another download handler than ours), and is then spooled here first."""
        try:
            if not spool.path and not spool.error:
                await run_in_thread(_spool_body, spool, body)
            if spool.error is not None or spool.path is None:
                raise _not_spooled(self.files, spool, video_id)
            size = os.path.getsize(spool.path)  # before it is moved into the store
            extension = await run_in_thread(_check_and_put_video, spool.path, self.files, video_id)
            if not self.files.put_where_prepared:
                name = _file_name(video_id, extension)
                try:
                    await self.files.save_file(name, spool.path)
                except OSError as error:
                    raise _not_stored(self.files, name, error) from None
        except VideoRejected as error:
            raise MediaFailed(str(error)) from None
        finally:
            spool.discard()  # unless it was moved into place: refused, or the store failed
        self.inc_stats("kept")
        return extension, size

    async def _save(self, name: str, data: bytes) -> None:
        try:
            await self.files.save({name: data})
        except OSError as error:
            raise _not_stored(self.files, name, error) from None

    def media_failed(self, failure: Failure, request: Request, info: MediaPipeline.SpiderInfo) -> NoReturn:
        error = failure.value
        assert error is not None  # a Failure always holds its exception
        spool = request.meta.get(SPOOL_META_KEY)
        if spool is not None:
            spool.discard()  # the download handler removed a failed attempt's file: a safety net
        if isinstance(error, MediaFailed):
            raise error
        if isinstance(error, (DownloadCancelledError, CancelledError)) and _SIZE_CAP_META_KEY in request.meta:
            # Scrapy cancels a download over its download_maxsize: at once when the
            # Content-Length says so (the message has the size), else once that many came.
            setting, limit = request.meta[_SIZE_CAP_META_KEY]
            announced = re.match(r"Expected to receive (\d+) bytes", str(error))
            size = f"{announced[1]} bytes announced" if announced else "more came"
            raise MediaFailed(f"larger than {setting} ({limit} bytes): {size}, download cancelled") from None
        raise MediaFailed(describe_error(error)) from None

    def item_completed(
        self, results: list[FileInfoOrError], item: Any, info: MediaPipeline.SpiderInfo
    ) -> Any:
        adapter = ItemAdapter(item)
        for ok, result in results:
            if not ok:
                # A Failure with its exception: mypy does not narrow the unpacked (False, Failure).
                error = cast("Failure", result).value
                assert error is not None
                if isinstance(error, _NotStarted):
                    self._unless_stopping(item, stop_of(self.crawler))
                self._fail(item, error)
        adapter["images"] = [result for _, result in results]
        adapter["image_file"] = adapter["images"][0]["path"]
        return item

    def _fail(self, item: Any, error: BaseException) -> NoReturn:
        """Drop ``item`` as failed: one WARNING line (the drop's) and one ``error_log.txt`` line."""
        adapter = ItemAdapter(item)
        reason, url = str(error) or type(error).__name__, adapter["url"]
        self.error_log.add(adapter["id"], url, reason)
        message = f"{media_of(item)} {adapter['id']} failed: {reason} <{url}>"
        if isinstance(error, MediaNotStored):
            raise StoreFailed(message, store=error.store, error=reason)
        raise DropImage(FAILED_REASON, message, log_level="WARNING")

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
        self.bomb_log.add(image_id, url, f"{width}x{height}", outcome)


def _prepare_and_put_image(
    body: bytes, files: FileStore, image_id: int, max_pixels: int, jpeg_quality: int, keep: bool = False
) -> PreparedImage:
    # One trip to a worker thread for the check (or conversion) and, for a local folder,
    # the write. The file is made durable with its metadata files, in a batch, before its
    # id is recorded. A bucket's upload is awaited apart, in the store's own bounded pool.
    if keep:  # resized by the CDN: stored as it came, whatever its format
        prepared = keep_image(body, max_pixels=max_pixels)
    else:
        prepared = prepare_image(body, max_pixels=max_pixels, jpeg_quality=jpeg_quality)
    if files.put_where_prepared:
        _put(files, _file_name(image_id, prepared.extension), prepared.data)
    return prepared


def _check_and_put_video(path: str, files: FileStore, video_id: int) -> str:
    # The same for a video: walking its container from the file it was downloaded to (and,
    # for a folder, renaming that file into place) off the reactor thread. The original
    # bytes are stored, never re-encoded.
    extension = check_video_file(path)
    if files.put_where_prepared:
        name = _file_name(video_id, extension)
        try:
            files.put_file(name, path)
        except OSError as error:
            raise _not_stored(files, name, error) from None
    return extension


def _spool_body(spool: Spool, body: bytes) -> None:
    spool_file = spool.begin()
    try:
        spool_file.write(body)
    finally:
        spool.finish()


def _not_spooled(files: FileStore, spool: Spool, video_id: int) -> MediaNotStored:
    error = spool.error or OSError("no file")
    reason = f"could not write video {video_id} to {spool.target.parent}: {describe_os_error(error)}"
    return MediaNotStored(reason, store=files.describe(""))


def _put(files: FileStore, name: str, data: bytes) -> None:
    try:
        files.put(name, data)
    except OSError as error:
        raise _not_stored(files, name, error) from None


def _not_stored(files: FileStore, name: str, error: OSError) -> MediaNotStored:
    if isinstance(error, StoreError):  # its message says what and where already
        return MediaNotStored(str(error), store=files.describe(""))
    reason = f"could not write {files.describe(name)}: {describe_os_error(error)}"
    return MediaNotStored(reason, store=files.describe(""))


def _file_name(media_id: int, extension: str) -> str:
    return f"{media_id}.{extension}"


def _hide_reported_failures(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], MediaFailed))


def _hide_size_cap_warnings(record: logging.LogRecord) -> bool:
    return "larger than download max size" not in record.getMessage()
