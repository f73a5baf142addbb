"""The id store in a local file (the default): ids of images already downloaded, one per line.

The file is append-only. Ids are written after their image and all its metadata files
are in place and on disk, so an id in the file always means a complete set. A ``kill -9``
can only leave a last line without its newline; loading drops that torn line (and cuts
it off the file, so the next append does not glue onto it).

The whole file is read at the start of a crawl: 1,000,000 ids take about 0.3 s and 50 MB.
For tens of millions, the Redis id store (:mod:`civitai_spider.stores.redis_ids`) answers
without holding them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy.utils.asyncio import run_in_thread

from civitai_spider.local_files import append_bytes
from civitai_spider.stores import check_writable, id_store_class, log_directory
from civitai_spider.stores.base import IdStore

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


#: How many ids :meth:`IdFile.all_ids` hands out at a time.
_BATCH = 100_000


class IdFile(IdStore):
    def __init__(self, path: Path) -> None:
        self.path = path
        #: The ids in the file when the crawl started.
        self._ids: set[int] | None = None

    @classmethod
    def build(cls, settings: BaseSettings) -> Self:
        return cls(id_file_path(settings))

    async def open(self) -> None:
        if self._ids is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._ids = await run_in_thread(load_ids, self.path)
        logger.info(
            "Loaded %d downloaded id(s) from %s in %.3f s",
            len(self._ids),
            self.path,
            time.perf_counter() - started,
        )

    async def contains(self, ids: Sequence[int]) -> list[bool]:
        if self._ids is None:
            await self.open()
        assert self._ids is not None
        return [image_id in self._ids for image_id in ids]

    async def record(self, ids: Sequence[int]) -> None:
        await run_in_thread(record_ids, self.path, list(ids))

    async def all_ids(self) -> AsyncIterator[list[int]]:
        # Only read: a crawl may be appending to the file meanwhile, its last line unfinished.
        ids = sorted(await run_in_thread(functools.partial(load_ids, self.path, repair=False)))
        for start in range(0, len(ids), _BATCH):
            yield ids[start : start + _BATCH]

    def describe(self) -> str:
        return str(self.path)


def id_file_path(settings: BaseSettings) -> Path:
    """``CIVITAI_ID_FILE``; a relative path is inside the store's log folder.

    That is ``IMAGES_STORE`` itself for a local folder, ``CIVITAI_LOG_DIR`` for a bucket.
    """
    path = Path(settings.get("CIVITAI_ID_FILE") or "downloaded_image_ID_DB.txt")
    return path if path.is_absolute() else log_directory(settings) / path


def check_id_file_folder(settings: BaseSettings) -> None:
    """Prove the ID file's folder writable when the ID file is the id store and lies outside
    the log folder (which the file store's check proves); ``ValueError`` (one line) if not."""
    if id_store_class(settings) is not IdFile:
        return
    folder = id_file_path(settings).parent
    if folder != log_directory(settings):
        check_writable("CIVITAI_ID_FILE", settings.get("CIVITAI_ID_FILE"), folder)


def load_ids(path: Path, *, repair: bool = True) -> set[int]:
    """Read the ids in ``path`` (a missing file is an empty set), repairing a torn end.

    ``repair=False`` leaves the file as it is (a file being imported is only read).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    lines = data.split(b"\n")
    torn = lines.pop()  # the text after the last newline: b"" when the file is whole
    if torn:
        logger.warning("Ignoring the unfinished last line %r of %s (an interrupted run)", torn[:40], path)
        if repair:
            with open(path, "r+b") as file:
                file.truncate(len(data) - len(torn))
    ids: set[int] = set()
    for number, line in enumerate(lines, start=1):
        try:
            ids.add(int(line))
        except ValueError:
            if line.strip():
                logger.warning("Ignoring line %d of %s: %r is not an id", number, path, line[:40])
    return ids


def record_ids(path: Path, image_ids: list[int]) -> None:
    """Append ids with one ``write()`` (a kill tears at most the last line), then fsync."""
    append_bytes(path, "".join(f"{image_id}\n" for image_id in image_ids).encode(), sync=True)
