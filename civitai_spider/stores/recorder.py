"""Records ids in the id store in batches, each once its files are durably stored."""

from __future__ import annotations

import asyncio

from civitai_spider.stores.base import FileStore, IdStore


class IdRecorder:
    """A group commit of ids.

    While one commit runs (make the file store durable, then record the waiting ids in
    the id store), the next ids gather for the one after: for a local folder, one
    ``syncfs()`` and one append with its fsync per batch instead of about five syncs per
    image; for Redis, one transaction per batch. ``record()`` returns when its id is
    recorded, so an image counts as saved only once it would survive a power cut.
    """

    def __init__(self, files: FileStore, ids: IdStore) -> None:
        self.files, self.ids = files, ids
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
                    await self.files.commit()
                    await self.ids.record([image_id for image_id, _ in batch])
                except Exception as error:
                    for _, done in batch:
                        done.set_exception(error)
                else:
                    for _, done in batch:
                        done.set_result(None)
        finally:
            self._committer = None
