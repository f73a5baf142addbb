"""``scrapy civitai-ids import FILE`` and ``scrapy civitai-ids export FILE``.

Moves ids between an ID file (one id per line, the format of ``CIVITAI_ID_FILE``) and the
id store the settings name (Redis with ``CIVITAI_REDIS_URL``, else the ID file), with the
same ``-s`` settings as the crawl: years of an ID file go into Redis, and back out.

``import`` records only the ids the store does not have yet, in batches; the file is only
read. ``export`` writes every id of the store to FILE in id order, under a temporary name
renamed into place once complete and on disk. A store or file that fails after the checks
(Redis gone) ends the command with one ``error:`` line and exit status 1; what was recorded
before stays recorded.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from civitai_spider.commands import check_command_settings
from civitai_spider.stores import id_store_class
from civitai_spider.stores.id_file import load_ids

if TYPE_CHECKING:
    import argparse

    from civitai_spider.stores.base import IdStore

#: Ids recorded per round trip of an import.
_BATCH = 50_000


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings = {"LOG_LEVEL": "WARNING"}

    def syntax(self) -> str:
        return "import FILE | export FILE"

    def short_desc(self) -> str:
        return "Copy the ids of an ID file into the id store, or the id store's ids into a file"

    def long_desc(self) -> str:
        return (
            "Copy ids between a file and the crawl's id store. import FILE adds the ids of FILE (one "
            "id per line, the format of the ID file) that the id store lacks; export FILE writes "
            "every id of the id store to FILE, in id order. The id store is the crawl's, from the "
            "same settings: Redis with -s CIVITAI_REDIS_URL=..., else the ID file (CIVITAI_ID_FILE, "
            "in IMAGES_STORE, or in CIVITAI_LOG_DIR for a bucket). See README.md, section Moving "
            "between id stores."
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if len(args) != 2 or args[0] not in {"import", "export"}:
            raise UsageError("expected: import FILE or export FILE", print_help=False)
        action, path = args[0], Path(args[1])
        if action == "import" and not path.is_file():
            raise UsageError(f"{path}: no such file to import", print_help=False)
        check_command_settings(self.settings)
        store_class = id_store_class(self.settings)
        try:
            store_class.check(self.settings)
            store = store_class.build(self.settings)
        except ValueError as error:
            raise UsageError(str(error), print_help=False) from None
        work = _import if action == "import" else _export
        try:
            print(asyncio.run(_with_store(store, work, path)))
        except OSError as error:  # Redis gone, or the file, after the checks passed
            print(f"error: {error}", file=sys.stderr)
            self.exitcode = 1


async def _with_store(store: IdStore, work: Callable[[IdStore, Path], Awaitable[str]], path: Path) -> str:
    await store.open()
    try:
        return await work(store, path)
    finally:
        await store.close()


async def _import(store: IdStore, path: Path) -> str:
    ids = sorted(load_ids(path, repair=False))
    added = 0
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        new = [
            image_id for image_id, known in zip(batch, await store.contains(batch), strict=True) if not known
        ]
        if new:
            await store.record(new)
        added += len(new)
    return (
        f"Imported {added} new id(s) from {path} into {store.describe()} ({len(ids) - added} already there)"
    )


async def _export(store: IdStore, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    count = 0
    try:
        with open(descriptor, "wb") as file:
            async for batch in store.all_ids():
                file.write(b"".join(b"%d\n" % image_id for image_id in batch))
                count += len(batch)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return f"Exported {count} id(s) from {store.describe()} to {path}"
