"""Where a crawl keeps its files and its ids: the stores, chosen from the settings.

File stores, by the scheme of ``IMAGES_STORE`` (as Scrapy's own pipelines choose theirs):
a local folder (a path or ``file://``, :mod:`~civitai_spider.stores.folder`) or an
S3-compatible bucket (``s3://bucket/prefix``, :mod:`~civitai_spider.stores.s3`).

Id stores: the ID file (:mod:`~civitai_spider.stores.id_file`), or Redis when
``CIVITAI_REDIS_URL`` is set (:mod:`~civitai_spider.stores.redis_ids`).

The components of one crawl share one instance of each through the :class:`Stores`
extension (``EXTENSIONS``; :func:`stores_of` fetches it): one S3 client and its connection
pool, one Redis connection pool, and the two logs of the log folder. A store that keeps
failing ends the crawl (:class:`~civitai_spider.stores.failures.StoreFailures`, an extension
too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.utils.asyncio import run_in_thread
from scrapy.utils.misc import load_object

from civitai_spider.local_files import BOMB_LOG_NAME, ERROR_LOG_NAME, LogFile, prove_writable
from civitai_spider.stores.base import FileStore, IdStore, ReadableFileStore

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: ``IMAGES_STORE`` scheme -> file store class. A new backend is one more line here.
FILE_STORES = {
    "": "civitai_spider.stores.folder.FolderStore",
    "file": "civitai_spider.stores.folder.FolderStore",
    "s3": "civitai_spider.stores.s3.S3Store",
}
ID_FILE_STORE = "civitai_spider.stores.id_file.IdFile"
REDIS_ID_STORE = "civitai_spider.stores.redis_ids.RedisIds"


def file_store_class(settings: BaseSettings) -> type[ReadableFileStore]:
    uri = str(settings.get("IMAGES_STORE") or "")
    if not uri:
        raise ValueError("IMAGES_STORE is empty: name a folder, file://folder or s3://bucket/prefix")
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in FILE_STORES:
        raise ValueError(
            f"IMAGES_STORE={uri!r}: unknown scheme {scheme + '://'!r}; "
            "allowed: a folder, file://folder, s3://bucket/prefix"
        )
    return load_object(FILE_STORES[scheme])


def file_store_at(settings: BaseSettings, uri: str) -> ReadableFileStore:
    """The file store at ``uri`` (a folder, ``file://``, ``s3://``), with the other settings of
    ``settings`` (a bucket's credentials and endpoint), checked: ``ValueError`` (one line) if it
    cannot work."""
    at = settings.copy()
    at.set("IMAGES_STORE", uri, priority=at.maxpriority() + 1)
    store_class = file_store_class(at)
    store_class.check(at)
    return store_class.build(at)


def id_store_class(settings: BaseSettings) -> type[IdStore]:
    return load_object(REDIS_ID_STORE if settings.get("CIVITAI_REDIS_URL") else ID_FILE_STORE)


def log_directory(settings: BaseSettings) -> Path:
    """The local folder of ``error_log.txt`` and ``DecompressionBombWarning_log.txt``."""
    return file_store_class(settings).log_directory_for(settings)


def check_writable(setting: str, value: object, folder: Path) -> None:
    """Create ``folder`` and prove it writable (:func:`~civitai_spider.local_files.prove_writable`),
    or raise ``ValueError`` naming the setting, its value and the system's reason, in one line."""
    try:
        prove_writable(folder)
    except OSError as error:
        raise ValueError(f"{setting}={str(value)!r} cannot be used: {error}") from None


class Stores:
    """The file store and the id store of one crawl, opened once and closed at its end, and
    the logs of its log folder.

    An extension, so that every component of the crawl shares the one instance: each fetches it
    with :func:`stores_of` and opens it in its ``open_spider`` (the first opening is awaited by
    all); it closes at ``spider_closed``, after every pipeline's ``close_spider``.
    """

    def __init__(self, files: FileStore, ids: IdStore, log_folder: Path) -> None:
        self.files, self.ids = files, ids
        self.error_log = LogFile(log_folder / ERROR_LOG_NAME)
        self.bomb_log = LogFile(log_folder / BOMB_LOG_NAME)
        self._opened: asyncio.Future[None] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        stores = cls(
            file_store_class(settings).build(settings),
            id_store_class(settings).build(settings),
            log_directory(settings),
        )
        # spider_closed comes after every pipeline's close_spider.
        crawler.signals.connect(stores.close, signal=signals.spider_closed)
        return stores

    async def open(self) -> None:
        """Open both stores; every caller after the first waits for the same opening."""
        if self._opened is None:
            self._opened = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opened)

    async def _open(self) -> None:
        await run_in_thread(self.files.open)  # a folder's scan, a bucket's first request
        await self.ids.open()

    async def close(self) -> None:
        try:
            await self.ids.close()
        finally:
            self.files.close()


def stores_of(crawler: Crawler) -> Stores:
    """The :class:`Stores` of ``crawler``; ``RuntimeError`` if ``EXTENSIONS`` leaves them out."""
    stores = crawler.get_extension(Stores)
    if stores is None:
        raise RuntimeError(
            "civitai_spider.stores.Stores is not enabled in EXTENSIONS: the crawl has nowhere to "
            "keep its files (add it back to EXTENSIONS rather than replacing the whole setting)"
        )
    return stores
