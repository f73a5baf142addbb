"""The file store in a local folder: ``IMAGES_STORE=path`` or ``file://path``.

Each file is written under a temporary name and renamed into place (whole or absent after
a ``kill -9``) without an fsync of its own; :meth:`FolderStore.commit` flushes a whole
batch with one ``syncfs()`` before the batch's ids are recorded, then lets the page cache
drop the batch's images and videos (see :data:`_CACHED_FILE_BYTES`). The logs live in the
folder itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from scrapy.utils.asyncio import run_in_thread

from civitai_spider.local_files import (
    TEMPORARY_PREFIX,
    copy_atomically,
    drop_from_page_cache,
    remove_temporary_files,
    sync_file_system,
    write_atomically,
    writing_atomically,
)
from civitai_spider.stores import check_writable
from civitai_spider.stores.base import ReadableFileStore
from civitai_spider.stores.id_file import check_id_file_folder

#: Files larger than this (images and videos; metadata files are a few KB) leave the page
#: cache once durable. A crawl never reads them again, and new page-cache pages cost far more
#: than pages just freed: on the 2-core VM of the README, writing 1,500 JPEGs of 490 KB and
#: their metadata files took 2.4-4.5 s of system CPU when the cache kept them, 0.7-0.8 s when
#: each batch's images were dropped after its sync (the freed pages are reused at once).
_CACHED_FILE_BYTES = 64 * 1024

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


class FolderStore(ReadableFileStore):
    # A write to the page cache costs less than the trip to another thread would.
    put_where_prepared = True
    # Reading back waits for the disk unless the page cache holds the store, which a store
    # of a million items (four million files, a page each) outgrows. 100,000 metadata files of
    # a manifest, read cold: 28 s with four threads, 39 s with 16 or 32 (GIL handoffs, futex
    # time), about 25 minutes with one (65 files/s: one random read at a time); warm, 16.4 s
    # with four and 15.0 s with one.
    read_threads = 4

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Reading back a million files, a str join costs a fraction of a Path's.
        self._root = os.path.join(directory, "")
        #: Large files written since the last commit began: dropped from the cache after it.
        self._uncommitted_large: list[str] = []

    @classmethod
    def build(cls, settings: BaseSettings) -> Self:
        return cls(_folder(settings))

    @classmethod
    def check(cls, settings: BaseSettings, *, read_only: bool = False) -> None:
        if not read_only:
            # Created, as the crawl would anyway, and written: a read-only mount, a full disk or
            # /proc fail here, in one line, rather than every item of the crawl.
            check_writable("IMAGES_STORE", settings.get("IMAGES_STORE"), _folder(settings))
            check_id_file_folder(settings)

    @classmethod
    def log_directory_for(cls, settings: BaseSettings) -> Path:
        return _folder(settings)

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(self.directory)

    def put(self, name: str, data: bytes) -> None:
        path = self._root + name
        write_atomically(path, data, sync=False)
        if len(data) > _CACHED_FILE_BYTES:
            self._uncommitted_large.append(path)  # list.append is atomic: any thread may put

    def spool_directory(self) -> Path:
        return self.directory

    def put_file(self, name: str, path: str) -> None:
        target = self._root + name
        try:
            # The same folder: a rename, as write_atomically's own.
            os.replace(path, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._uncommitted_large.append(target)

    async def save(self, files: Mapping[str, bytes]) -> None:
        # One thread trip for all of an item's files: each is a few kilobytes.
        await run_in_thread(self._put_all, files)

    def _put_all(self, files: Mapping[str, bytes]) -> None:
        for name, data in files.items():
            self.put(name, data)

    async def copy(self, source: str, target: str) -> None:
        await run_in_thread(copy_atomically, self.directory / source, self.directory / target, sync=False)

    async def commit(self) -> None:
        await run_in_thread(self._commit)

    def _commit(self) -> None:
        # Files put after the swap are synced too, and dropped after the next commit.
        written, self._uncommitted_large = self._uncommitted_large, []
        sync_file_system(self.directory)
        for path in written:
            drop_from_page_cache(path)

    def describe(self, name: str) -> str:
        return str(self.directory / name)

    def listing(self) -> Iterator[tuple[str, int | None]]:
        # No stat per file: a million images are four million files, and few need a size.
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file():
                    yield entry.name, None

    def size(self, name: str) -> int:
        return os.stat(self._root + name).st_size

    def read(self, name: str) -> bytes:
        with open(self._root + name, "rb") as file:
            return file.read()

    def reader(self, name: str) -> BinaryIO:
        return open(self._root + name, "rb")

    def writing(self, name: str) -> AbstractContextManager[BinaryIO]:
        # A dataset file is written once and read for years: worth its own fsync.
        return writing_atomically(self.directory / name, sync=True)

    def remove(self, name: str) -> None:
        # A removal that a crash undoes leaves what the next run removes again.
        (self.directory / name).unlink(missing_ok=True)


def _folder(settings: BaseSettings) -> Path:
    uri = str(settings.get("IMAGES_STORE"))
    # The scheme is case-insensitive, as file_store_class reads it: FILE://x is the folder x.
    return Path(uri[len("file://") :] if uri[: len("file://")].lower() == "file://" else uri)
