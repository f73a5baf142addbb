"""What a crawl stored, read back: the ids its id store lists, and each one's files.

An id is in the id store only once every file of it is stored, so a recorded id with its
``<id>_meta.json`` is a complete item. :class:`StoredItems` finds those a dataset does not
have yet with one listing of the store (no read per file), then reads their metadata
files in id order (and, for the shards, their media files), a few threads ahead of the
caller (a bucket answers each GET after a round trip), in chunks so that memory stays
bounded whatever the store's size.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from civitai_spider.local_files import ERROR_LOG_NAME, append_line, log_line
from civitai_spider.stores import file_store_at, file_store_class, id_store_class, log_directory
from civitai_spider.stores.failures import describe_store_error

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from civitai_spider.stores.base import IdStore, ReadableFileStore

logger = logging.getLogger(__name__)

METADATA_SUFFIX = "_meta.json"
#: Ids read per task of the reading threads: fewer trips between threads than one per id.
_CHUNK = 64
_ID_PREFIX = re.compile(r"[0-9]+")
#: Media bytes read ahead of the caller at most: a few videos, a hundred images.
READ_AHEAD_BYTES = 64 << 20


@dataclass
class StoredItem:
    """One recorded id as its files in the store say, or why they cannot be used."""

    id: int
    #: The API record of ``<id>_meta.json`` (with ``image_file``, the media file's name).
    record: dict[str, Any] | None = None
    #: ``<id>_meta.json`` as stored.
    metadata: bytes = b""
    #: The size of the media file in bytes.
    size: int | None = None
    #: The media file's bytes, once :meth:`StoredItems.with_media` read them.
    media: bytes | None = None
    #: Why the item cannot be used (its metadata file unreadable, its media file gone), or None.
    problem: str | None = None

    @property
    def file(self) -> str:
        """The media file's name in the store (``<id>.jpg``, ``<id>.mp4``...)."""
        assert self.record is not None
        return self.record["image_file"]


@dataclass
class Pending:
    """The recorded ids a dataset lacks, in id order, and what the listing showed of them."""

    ids: list[int]
    #: Media file name -> size, for the stores whose listing tells sizes.
    sizes: dict[str, int]
    #: Recorded ids without a ``<id>_meta.json`` (ids imported from an old ID file...).
    without_metadata: int


class StoredItems:
    """The complete items of one file store and its id store."""

    def __init__(self, files: ReadableFileStore, ids: IdStore, *, threads: int = 4) -> None:
        self.files, self.ids = files, ids
        self._threads = threads

    def recorded_ids(self) -> set[int]:
        """Every id of the id store (blocking)."""
        return asyncio.run(self._recorded_ids())

    async def _recorded_ids(self) -> set[int]:
        await self.ids.open()
        try:
            return {image_id async for batch in self.ids.all_ids() for image_id in batch}
        finally:
            await self.ids.close()

    def pending(self, done: Collection[int]) -> Pending:
        """The recorded ids not in ``done`` whose metadata file is in the store."""
        wanted = self.recorded_ids()
        wanted.difference_update(done)
        with_metadata: set[int] = set()
        sizes: dict[str, int] = {}
        for name, size in self.files.listing() if wanted else ():
            image_id = _id_in(name)
            if image_id is None or image_id not in wanted:
                continue
            if name.endswith(METADATA_SUFFIX) and name == f"{image_id}{METADATA_SUFFIX}":
                with_metadata.add(image_id)
            elif size is not None:
                sizes[name] = size
        return Pending(sorted(with_metadata), sizes, len(wanted) - len(with_metadata))

    def read(self, pending: Pending) -> Iterator[StoredItem]:
        """Each pending item, in id order."""
        chunks = (pending.ids[start : start + _CHUNK] for start in range(0, len(pending.ids), _CHUNK))
        with ThreadPoolExecutor(self._threads, thread_name_prefix="dataset-read") as pool:
            work = functools.partial(self._read_chunk, sizes=pending.sizes)
            for chunk in _ahead(pool, work, chunks, window=2 * self._threads):
                yield from chunk

    def with_media(self, items: Iterable[StoredItem]) -> Iterator[StoredItem]:
        """Each of ``items`` in order with its media file read into :attr:`StoredItem.media`, a
        few threads ahead, holding at most :data:`READ_AHEAD_BYTES` of files read ahead; an
        unreadable media file is the item's ``problem``."""
        with ThreadPoolExecutor(self._threads, thread_name_prefix="dataset-media") as pool:
            yield from _ahead(
                pool,
                self._read_media,
                items,
                window=2 * self._threads,
                cost=lambda item: item.size or 0,
                budget=READ_AHEAD_BYTES,
            )

    def _read_media(self, item: StoredItem) -> StoredItem:
        if item.problem is None:
            try:
                item.media = self.files.read(item.file)
            except OSError as error:  # removed since the listing, a bucket out of reach
                item.problem = f"{self.files.describe(item.file)} unreadable: {describe_store_error(error)}"
        return item

    def _read_chunk(self, ids: list[int], sizes: dict[str, int]) -> list[StoredItem]:
        return [self._read(image_id, sizes) for image_id in ids]

    def _read(self, image_id: int, sizes: dict[str, int]) -> StoredItem:
        item = StoredItem(image_id)
        name = f"{image_id}{METADATA_SUFFIX}"
        try:
            item.metadata = self.files.read(name)
        except OSError as error:  # removed since the listing, a bucket out of reach
            item.problem = f"{self.files.describe(name)} unreadable: {describe_store_error(error)}"
            return item
        try:
            record = json.loads(item.metadata)
        except ValueError as error:
            item.problem = f"{self.files.describe(name)} is not JSON: {error}"
            return item
        if not isinstance(record, dict) or not isinstance(record.get("image_file"), str):
            item.problem = f"{self.files.describe(name)} names no media file (image_file)"
            return item
        item.record = record
        try:
            item.size = sizes[item.file] if item.file in sizes else self.files.size(item.file)
        except OSError as error:
            item.problem = f"{self.files.describe(item.file)} unreadable: {describe_store_error(error)}"
        return item


def _ahead(
    pool: ThreadPoolExecutor,
    work: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    window: int,
    cost: Callable[[Any], int] | None = None,
    budget: int = 0,
) -> Iterator[Any]:
    """``work(task)`` for each task, in order, at most ``window`` tasks ahead (not all at once)
    and, with ``cost``, tasks of at most ``budget`` in all ahead (one at least, whatever it costs)."""
    running: deque[tuple[Future[Any], int]] = deque()
    held = 0
    for task in tasks:
        weight = cost(task) if cost else 0
        while running and (len(running) >= window or (cost and held + weight > budget)):
            future, its_cost = running.popleft()
            held -= its_cost
            yield future.result()
        running.append((pool.submit(work, task), weight))
        held += weight
    while running:
        yield running.popleft()[0].result()


def _id_in(name: str) -> int | None:
    """The id a stored file's name starts with (``123.jpg``, ``123_meta.json``), or None."""
    match = _ID_PREFIX.match(name)
    return int(match[0]) if match else None


def stored_items(settings: BaseSettings) -> StoredItems:
    """The complete items of the crawl ``settings`` describe; ``ValueError`` (one line) when its
    store or id store cannot work (a bad ``IMAGES_STORE`` or one that holds nothing, a bucket or
    Redis out of reach)."""
    file_store, id_store = file_store_class(settings), id_store_class(settings)
    file_store.check(settings, read_only=True)  # a store mounted read-only can be read back
    id_store.check(settings)
    files = file_store.build(settings)
    try:
        # Before the id store opens, which would make the ID file's folder.
        _check_something_stored(files, settings)
    except ValueError:
        files.close()
        raise
    return StoredItems(files, id_store.build(settings), threads=files.read_threads)


def _check_something_stored(files: ReadableFileStore, settings: BaseSettings) -> None:
    """``ValueError`` naming ``IMAGES_STORE`` when it holds no file: a mistyped one would give an
    empty dataset, made in a new folder, instead of an error."""
    uri = str(settings.get("IMAGES_STORE"))
    try:
        # The first file listed is enough: a folder reads a few entries, a bucket one page.
        empty = next(iter(files.listing()), None) is None
    except FileNotFoundError:
        raise ValueError(f"IMAGES_STORE={uri!r}: no such folder") from None
    except OSError as error:
        raise ValueError(f"IMAGES_STORE={uri!r} cannot be listed: {describe_store_error(error)}") from None
    if empty:
        raise ValueError(f"IMAGES_STORE={uri!r}: nothing is stored there")


def output_uri(settings: BaseSettings, output: str | None, default: str) -> str:
    """Where a dataset command writes: ``output`` (a folder or ``s3://``), else the folder (a
    prefix in a bucket) ``default`` in ``IMAGES_STORE``."""
    return output or f"{str(settings.get('IMAGES_STORE')).rstrip('/')}/{default}"


def output_store(
    settings: BaseSettings, output: str | None, default: str, folder: str = ""
) -> ReadableFileStore:
    """The file store at :func:`output_uri` (in its subfolder ``folder``, if any); ``ValueError``
    (one line) when it cannot work, naming ``--output`` when ``output`` is where it is."""
    uri = output_uri(settings, output, default)
    if folder:
        uri = f"{uri.rstrip('/')}/{folder}"
    try:
        return file_store_at(settings, uri)
    except ValueError as error:
        if output is None:
            raise  # a folder of IMAGES_STORE: the message names it rightly
        # The stores' messages name the setting they read, IMAGES_STORE, which file_store_at
        # set to the output's location: the user gave that as --output.
        message = str(error)
        named = message.replace(f"IMAGES_STORE={uri!r}", f"--output {uri!r}")
        raise ValueError(named if named != message else f"--output {output!r}: {message}") from None


class ProblemLog:
    """Reports an item that a dataset leaves out: one WARNING line and one ``error_log.txt`` line."""

    def __init__(self, settings: BaseSettings) -> None:
        self.path = log_directory(settings) / ERROR_LOG_NAME

    def __call__(self, item: StoredItem) -> None:
        url = (item.record or {}).get("url", "")
        logger.warning("Image %d left out: %s", item.id, item.problem)
        try:
            append_line(self.path, log_line(item.id, url, f"left out of the dataset: {item.problem}"))
        except OSError:
            pass  # the WARNING line above still says why
