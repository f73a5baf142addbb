"""The ID file: ids of images already downloaded, one integer per line.

The file is append-only. Ids are written after their image and all its metadata files
are in place and on disk, so an id in the file always means a complete set. A ``kill -9``
can only leave a last line without its newline; loading drops that torn line (and cuts
it off the file, so the next append does not glue onto it).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from scrapy.settings import BaseSettings
from scrapy.utils.asyncio import run_in_thread

from civitai_spider.store import append_bytes, store_directory, sync_file_system

logger = logging.getLogger(__name__)


def id_file_path(settings: BaseSettings) -> Path:
    """``CIVITAI_ID_FILE``; a relative path is inside ``IMAGES_STORE``."""
    path = Path(settings.get("CIVITAI_ID_FILE") or "downloaded_image_ID_DB.txt")
    return path if path.is_absolute() else store_directory(settings) / path


def load_ids(path: Path) -> set[int]:
    """Read the ids in ``path`` (a missing file is an empty set), repairing a torn end."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    lines = data.split(b"\n")
    torn = lines.pop()  # the text after the last newline: b"" when the file is whole
    if torn:
        logger.warning("Ignoring the unfinished last line %r of %s (an interrupted run)", torn[:40], path)
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


class IdRecorder:
    """Records ids in the ID file in batches, each once its files are safely on disk.

    A group commit: while one commit runs (sync the store's file system, then append the
    waiting ids with one write and one fsync), the next ids gather for the one after. Two
    syncs per batch instead of about five per image; ``record()`` returns when its id is
    in the file, so an image counts as saved only once it would survive a power cut.
    """

    def __init__(self, path: Path, directory: Path) -> None:
        self.path, self.directory = path, directory
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def record(self, image_id: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((image_id, done))
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_while_waiting())
        await done

    async def _commit_while_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await run_in_thread(self._commit, [image_id for image_id, _ in batch])
                except Exception as error:
                    for _, done in batch:
                        done.set_exception(error)
                else:
                    for _, done in batch:
                        done.set_result(None)
        finally:
            self._committer = None

    def _commit(self, image_ids: list[int]) -> None:
        sync_file_system(self.directory)
        record_ids(self.path, image_ids)
