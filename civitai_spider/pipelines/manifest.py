"""Add each recorded item's manifest row during the crawl, in small Parquet parts.

The pipeline after the commit point (:mod:`~civitai_spider.pipelines.record_id`): an item
reaches it only once its id is durably recorded, so a part never holds the row of an id that is
not recorded. Its row is the one ``scrapy civitai-manifest`` would read from the store
(:func:`~civitai_spider.manifest_rows.row_of` over the record written to ``<id>_meta.json``
and the media file's size). Rows wait in memory until ``CIVITAI_MANIFEST_FLUSH_ROWS`` of them
are waiting or ``CIVITAI_MANIFEST_FLUSH_SECONDS`` have passed since the first one, and at the
crawl's end (a graceful stop too); then one thread of its own writes them as a part
``crawl-<UTC start>-<random>-<number>.parquet`` of the store's ``manifest`` folder (a prefix in a
bucket), whole or absent (a temporary hidden name renamed, one PUT): the manifest folder is a
dataset readers can open while the crawl runs, and ``scrapy civitai-manifest`` compacts the
parts without reading the store's files (:mod:`civitai_spider.dataset.manifest`).

pyarrow (0.1 s to import) is imported by that thread at the first part, never at start-up. A
part that cannot be written (disk full, bucket down) is a WARNING, the stat
``civitai/manifest/part_failures`` and an ``error_log.txt`` line, and the crawl goes on: its
ids are recorded, so the next ``scrapy civitai-manifest`` reads their rows from their files,
as it does for the rows of a crawl killed before writing them.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.abc
import logging
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured

from civitai_spider.errors import describe
from civitai_spider.pipelines.metadata import stored_record
from civitai_spider.stores import file_store_class, stores_of
from civitai_spider.stores.base import FileStore, ReadBack
from civitai_spider.stores.failures import describe_store_error

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from scrapy.statscollectors import StatsCollector

    from civitai_spider.local_files import LogFile
    from civitai_spider.stores.base import ReadableFileStore

logger = logging.getLogger(__name__)

#: The manifest's folder inside the store (a prefix in a bucket): where a crawl writes its parts,
#: and ``scrapy civitai-manifest`` compacts them unless ``--output`` says otherwise.
MANIFEST_FOLDER = "manifest"
#: A crawl's part (:func:`crawl_part_name`).
CRAWL_PART_NAME = re.compile(r"crawl-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}-[0-9]{6,}\.parquet")

PARTS_WRITTEN = "civitai/manifest/parts_written"
ROWS_WRITTEN = "civitai/manifest/rows_written"
PART_FAILURES = "civitai/manifest/part_failures"
ROWS_NOT_WRITTEN = "civitai/manifest/rows_not_written"

#: The largest id the manifest's ``id`` column (an int64) holds.
_INT64_MAX = 2**63 - 1
#: Parts handed to the writer thread and not written yet, at most, before items wait for it.
_PARTS_QUEUED = 2
#: A waiting row: id, the record of ``<id>_meta.json``, the media file's size (None: ask the store).
_Row = tuple[int, dict[str, Any], int | None]


class ManifestPipeline:
    def __init__(
        self,
        stats: StatsCollector,
        error_log: LogFile,
        files: FileStore,
        open_store: Callable[[], ReadableFileStore],
        folder: str,
        *,
        flush_rows: int,
        flush_seconds: float,
    ) -> None:
        self.stats, self.error_log, self.files = stats, error_log, files
        #: Builds the manifest folder's store, in the writer thread at the first part.
        self._open_store = open_store
        self._store: ReadableFileStore | None = None
        self.folder = folder.rstrip("/")  # for log lines
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._tag = secrets.token_hex(4)
        self._number = 0
        self._waiting: list[_Row] = []
        self._timer: asyncio.TimerHandle | None = None
        # One thread: parts are written one after the other, never in the reactor thread.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="manifest-writer")
        self._writes: set[asyncio.Future[None]] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        if not settings.getbool("CIVITAI_MANIFEST"):
            raise NotConfigured("CIVITAI_MANIFEST is off")
        stores = stores_of(crawler)
        assert crawler.stats is not None
        return cls(
            crawler.stats,
            stores.error_log,
            stores.files,
            functools.partial(manifest_store, settings.copy()),
            manifest_uri(settings),
            flush_rows=settings.getint("CIVITAI_MANIFEST_FLUSH_ROWS"),
            flush_seconds=settings.getfloat("CIVITAI_MANIFEST_FLUSH_SECONDS"),
        )

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        if adapter["id"] > _INT64_MAX:
            # The manifest's id column is an int64; a record may claim a larger id, and one such
            # row would fail its whole part.
            logger.warning("Image %d has no manifest row: its id is beyond int64", adapter["id"])
            self.stats.inc_value(ROWS_NOT_WRITTEN)
            self.error_log.add(adapter["id"], adapter["url"], "no manifest row: its id is beyond int64")
            return item
        self._waiting.append((adapter["id"], stored_record(adapter), adapter.get("image_size")))
        if len(self._waiting) >= self.flush_rows:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self._flush)
        while len(self._writes) > _PARTS_QUEUED:
            # A writer slower than the crawl (a bucket that answers slowly) holds the items
            # back rather than let parts pile up in memory.
            await asyncio.wait(set(self._writes), return_when=asyncio.FIRST_COMPLETED)
        return item

    async def close_spider(self) -> None:
        # Also on a graceful stop (Ctrl-C once, Scrapyd's cancel): the rows waiting are written.
        self._flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._writer.shutdown(wait=False)
        if self._store is not None:
            self._store.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiting:
            return
        rows, self._waiting = self._waiting, []
        self._number += 1
        name = crawl_part_name(self._started, self._tag, self._number)
        write = asyncio.get_running_loop().run_in_executor(self._writer, self._write, name, rows)
        self._writes.add(write)
        write.add_done_callback(functools.partial(self._written, name, len(rows)))

    def _write(self, name: str, rows: list[_Row]) -> None:
        """Store ``rows`` as the part ``name`` (in the writer thread)."""
        # Here: pyarrow's import costs a crawl nothing until its first part.
        from civitai_spider.manifest_rows import write_rows  # noqa: PLC0415

        if self._store is None:
            _spare_pandas()
            store = self._open_store()
            store.open()  # a folder: made, and the temporary files of killed writers removed
            self._store = store
        entries = [(image_id, record, self._size(record, size)) for image_id, record, size in rows]
        # Under a hidden temporary name renamed once whole (a folder), or one PUT (a bucket).
        with self._store.writing(name) as file:
            write_rows(file, entries)

    def _size(self, record: dict[str, Any], size: int | None) -> int | None:
        # Unknown when the item was handed another item's download of the same URL and given a
        # copy of its file: the store tells it then.
        if size is None and isinstance(self.files, ReadBack) and isinstance(record.get("image_file"), str):
            try:
                return self.files.size(record["image_file"])
            except OSError:
                return None
        return size

    def _written(self, name: str, rows: int, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        error = write.exception()
        if error is None:
            self.stats.inc_value(PARTS_WRITTEN)
            self.stats.inc_value(ROWS_WRITTEN, rows)
            return
        reason = describe_store_error(error) if isinstance(error, OSError) else describe(error)
        where = f"{self.folder}/{name}"
        logger.warning(
            "Manifest part %s of %d row(s) not written: %s; their ids are recorded, the next "
            "scrapy civitai-manifest reads their rows from their files",
            where,
            rows,
            reason,
        )
        self.stats.inc_value(PART_FAILURES)
        self.stats.inc_value(ROWS_NOT_WRITTEN, rows)
        self.error_log.add(f"{rows} ids", where, f"manifest part not written: {reason}")


def crawl_part_name(started: str, tag: str, number: int) -> str:
    """The name of a crawl's manifest part ``number``: ``started`` is the crawl's start in UTC
    (``%Y%m%dT%H%M%SZ``), ``tag`` eight hex digits of its own (the workers of a shared crawl
    write into one store), so that no two crawls or workers ever write the same name."""
    return f"crawl-{started}-{tag}-{number:06d}.parquet"


def manifest_uri(settings: BaseSettings) -> str:
    """:data:`MANIFEST_FOLDER` in ``IMAGES_STORE``: a folder, or a prefix in a bucket."""
    return f"{str(settings.get('IMAGES_STORE')).rstrip('/')}/{MANIFEST_FOLDER}"


def manifest_store(settings: BaseSettings) -> ReadableFileStore:
    """The file store of :data:`MANIFEST_FOLDER` in ``IMAGES_STORE``, with the other settings of
    ``settings`` (a bucket's credentials), built but neither checked nor opened (blocking)."""
    at = settings.copy()
    at.frozen = False  # a crawl's settings are frozen, and so is their copy
    at.set("IMAGES_STORE", manifest_uri(settings), priority=at.maxpriority() + 1)
    return file_store_class(at).build(at)


def _spare_pandas() -> None:
    """Keep pyarrow from importing pandas into the crawl.

    At its first array made of a Python list, pyarrow imports pandas (when installed) only to ask
    whether the list is a pandas object: 0.15-0.2 s measured, a quarter of a one-image crawl,
    for a question a crawl never needs answered. pyarrow asks once and keeps the answer, so it
    is asked here while ``import pandas`` fails; then ``import pandas`` works as before, for any
    other code (none in a crawl) and for pyarrow's own ``to_pandas()``, which asks again.
    """
    if "pandas" in sys.modules:
        return
    refuse = _RefusePandas()
    sys.meta_path.insert(0, refuse)
    try:
        import pyarrow  # noqa: PLC0415 - here, in the writer thread: not at start-up

        pyarrow.array([0])
    finally:
        sys.meta_path.remove(refuse)


class _RefusePandas(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.split(".", 1)[0] == "pandas":
            raise ImportError("pandas is not imported by a crawl")
