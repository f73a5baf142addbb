"""The interfaces a crawl stores through: a file store and an id store.

A file store keeps the images, videos and metadata files under their names
(``<id>.jpg``, ``<id>_meta.json``...); an id store keeps the ids whose files are all
stored. A file store has two sides, each its own small interface: :class:`FileStore`, what a
crawl writes through (the pipelines and the id recorder), and :class:`ReadBack`, what the
dataset commands read back and write their own files through (:mod:`civitai_spider.dataset`).
A backend implements both (:class:`ReadableFileStore`), so that the dataset commands work on
any store a crawl wrote; which one the components get is chosen from the settings
(:mod:`civitai_spider.stores`). A new backend is one module with one subclass.

The one rule every pair keeps: an id reaches :meth:`IdStore.record` only after
:meth:`FileStore.commit` returned for every file of it (see
:class:`civitai_spider.stores.recorder.IdRecorder`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


class StoreError(OSError):
    """A store could not do what it was asked; the message says why, in one line.

    An ``OSError``, so that the pipelines fail the item as they do for a full disk.
    """


class FileStore(ABC):
    """Where the files of each image or video go, by name: the side a crawl writes through."""

    #: Whether :meth:`put` is cheap enough to call in the worker thread that prepared the
    #: bytes (a local disk), saving a trip to another thread; else the pipelines ``await``
    #: :meth:`save`, which bounds how many run at once.
    put_where_prepared: bool = False

    @classmethod
    @abstractmethod
    def build(cls, settings: BaseSettings) -> Self:
        """The store ``IMAGES_STORE`` names; ``ValueError`` (one line) for a bad value."""

    @classmethod
    def check(cls, settings: BaseSettings, *, read_only: bool = False) -> None:
        """Raise ``ValueError`` (one line) if the store cannot work: called before a crawl.

        Unless ``read_only`` (a dataset command reading a store back), that includes a real
        write in each local folder a crawl writes: a folder store itself, else the log folder
        (:func:`civitai_spider.stores.check_writable`), and the ID file's folder when it is
        elsewhere (:func:`civitai_spider.stores.id_file.check_id_file_folder`).
        """
        cls.build(settings).close()

    @classmethod
    def log_directory_for(cls, settings: BaseSettings) -> Path:
        """The local folder for ``error_log.txt``, the decompression bomb log and a relative
        ``CIVITAI_ID_FILE``: ``CIVITAI_LOG_DIR``, unless the store is a local folder itself."""
        return Path(settings.get("CIVITAI_LOG_DIR") or "civitai-logs")

    def open(self) -> None:
        """Get ready to store (blocking; once, at the start of a crawl)."""
        return None

    def close(self) -> None:
        """Release what the store holds (blocking)."""
        return None

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name``, atomically: a reader sees the whole file or none.

        Blocking and thread-safe; never called in the reactor thread. The file may need a
        :meth:`commit` to be durable.
        """

    @abstractmethod
    async def save(self, files: Mapping[str, bytes]) -> None:
        """:meth:`put` every file, off the reactor thread."""

    @abstractmethod
    def spool_directory(self) -> Path:
        """The local folder where a file too large for memory (a video as it downloads) is
        written under a temporary name before :meth:`put_file` stores it.

        A folder store's own folder (the file is then renamed into place); else the log folder
        (:meth:`log_directory_for`). A leftover of a killed run there is removed at :meth:`open`.
        """

    @abstractmethod
    def put_file(self, name: str, path: str) -> None:
        """Store the local file ``path`` (a temporary file in :meth:`spool_directory`) as
        ``name``, atomically as :meth:`put`, without reading it whole into memory; ``path`` is
        gone afterwards, whether it was stored or not.

        Blocking and thread-safe; never called in the reactor thread.
        """

    async def save_file(self, name: str, path: str) -> None:
        """:meth:`put_file`, off the reactor thread."""
        await asyncio.to_thread(self.put_file, name, path)

    @abstractmethod
    async def copy(self, source: str, target: str) -> None:
        """Store a copy of the stored file ``source`` as ``target``."""

    @abstractmethod
    async def commit(self) -> None:
        """Make every file stored so far durable."""

    @abstractmethod
    def describe(self, name: str) -> str:
        """Where ``name`` is stored, for log lines (a path, an ``s3://`` URI)."""


class ReadBack(ABC):
    """A file store read back, and written whole files at a time: the dataset commands' side.

    Blocking, never called in a crawl's reactor thread.
    """

    #: Threads that read files back at once: a bucket's GETs wait for the network, a folder's
    #: reads mostly for the CPU.
    read_threads: int = 4

    @abstractmethod
    def listing(self) -> Iterator[tuple[str, int | None]]:
        """The name of every file directly in the store (not in a subfolder), each with its
        size in bytes when the listing tells it at no extra cost (a bucket's does), else None:
        :meth:`size` tells it then. Temporary files are not listed."""

    @abstractmethod
    def size(self, name: str) -> int:
        """The size of the stored file ``name`` in bytes; ``FileNotFoundError`` if absent."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The whole stored file ``name``; ``FileNotFoundError`` if absent."""

    @abstractmethod
    def reader(self, name: str) -> BinaryIO:
        """A seekable file to read ``name`` from: a reader of part of it reads only that part."""

    @abstractmethod
    def writing(self, name: str) -> AbstractContextManager[BinaryIO]:
        """A file to write, stored as ``name`` (durably) when the block ends without an error.

        Until then nobody sees it under ``name``; after an error or a ``kill -9`` it never
        appears, and an earlier ``name`` stays as it was.
        """

    @abstractmethod
    def remove(self, name: str) -> None:
        """Remove the stored file ``name``, if there is one."""


class ReadableFileStore(FileStore, ReadBack):
    """A file store with both sides: what every backend of
    :data:`~civitai_spider.stores.FILE_STORES` is, and what the dataset commands take (they
    open, describe and close a store as a crawl does)."""


class IdStore(ABC):
    """The ids whose files are all stored: what the next crawl skips."""

    @classmethod
    @abstractmethod
    def build(cls, settings: BaseSettings) -> Self:
        """The id store the settings name; ``ValueError`` (one line) for a bad value."""

    @classmethod
    def check(cls, settings: BaseSettings) -> None:
        """Raise ``ValueError`` (one line) if the store cannot work: called before a crawl."""
        return None

    async def open(self) -> None:
        """Get ready (once, at the start of a crawl or command)."""
        return None

    async def close(self) -> None:
        """Release what the store holds."""
        return None

    async def prefetch(self, ids: Sequence[int]) -> None:
        """Look ``ids`` up at once, ahead of :meth:`contains` asking for them one by one.

        Called with every id of an API page; a store that answers from memory ignores it.
        """
        return None

    @abstractmethod
    async def contains(self, ids: Sequence[int]) -> list[bool]:
        """Whether each id is recorded."""

    @abstractmethod
    async def record(self, ids: Sequence[int]) -> None:
        """Record ``ids``; durable once this returns."""

    @abstractmethod
    def all_ids(self) -> AsyncIterator[list[int]]:
        """Every recorded id, in batches (any order)."""

    @abstractmethod
    def describe(self) -> str:
        """What the store is, for log lines, without secrets."""
