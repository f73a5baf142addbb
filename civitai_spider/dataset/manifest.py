"""The Parquet manifest: one row per recorded id, with typed columns and the whole ``meta``.

The manifest is a folder (a prefix in a bucket) of part files, ``part-000000.parquet``,
``part-000001.parquet``..., one dataset for pyarrow, pandas, DuckDB and Hugging Face
``datasets`` alike. A crawl adds its rows as it records ids, in small *crawl parts*
(:data:`~civitai_spider.pipelines.manifest.CRAWL_PART_NAME`, written by
:mod:`civitai_spider.pipelines.manifest`), so the folder is a readable dataset while the crawl
runs. ``scrapy civitai-manifest`` (:func:`update_manifest`) then compacts: the crawl parts'
rows go into ``part-NNNNNN`` files of ``CIVITAI_MANIFEST_PART_ROWS`` rows, with a row read from
the store's files for each recorded id that has none (a crawl killed before its part was
written, a crawl with ``CIVITAI_MANIFEST=False``), and the crawl parts are removed once every
compacted part is stored. Which ids the manifest has is read from its parts' ``id`` column (a
few kilobytes per part), so an unchanged store costs that and one listing. Every part is
written under a temporary name and renamed when complete (uploaded whole to a bucket): a killed
run leaves the parts it finished, which are readable, and the next run adds the rest; a crawl
part whose rows a compacted part already holds (a run killed before removing it) gives no row
twice and is removed by the next run.

Rows are written a row group at a time, so memory does not grow with the store; each row is
made by :func:`~civitai_spider.manifest_rows.row_of`, as the crawl makes its own.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pyarrow as pa
import pyarrow.parquet as pq

from civitai_spider.manifest_rows import NO_ROW, SCHEMA, Entry, has_row, rows_table
from civitai_spider.pipelines.manifest import CRAWL_PART_NAME

if TYPE_CHECKING:
    from civitai_spider.dataset.stored import StoredItem, StoredItems
    from civitai_spider.stores.base import ReadableFileStore

logger = logging.getLogger(__name__)
PART_NAME = re.compile(r"part-([0-9]{6,})\.parquet")
#: Rows per row group: what one write holds in memory (a row is a kilobyte or two: a prompt,
#: ``meta_json``). Rows per part file: ``CIVITAI_MANIFEST_PART_ROWS``.
ROW_GROUP_ROWS = 10_000


@dataclass
class ManifestRun:
    """What one run of :func:`update_manifest` did."""

    added: int = 0
    parts: int = 0
    #: Rows in the manifest after the run.
    rows: int = 0
    #: Of ``added``, the rows taken from crawl parts (no file of theirs read).
    from_crawl_parts: int = 0
    #: Crawl parts read, and of those the ones removed (compacted into ``part-NNNNNN`` files).
    crawl_parts: int = 0
    crawl_parts_removed: int = 0
    #: Recorded ids without a ``<id>_meta.json`` in the store: not in the manifest.
    without_metadata: int = 0
    #: Items whose files could not be used (each reported to ``on_problem``).
    problems: int = 0


def update_manifest(
    items: StoredItems,
    output: ReadableFileStore,
    *,
    part_rows: int,
    on_problem: Callable[[StoredItem], None],
    crawl_parts: ReadableFileStore | None = None,
) -> ManifestRun:
    """Add a row for every recorded id of ``items`` that the manifest in ``output`` lacks,
    in new part files of at most ``part_rows`` rows: the rows of the crawl parts first, then
    rows read from the store's files for the ids still without one.

    The crawl parts are those of ``output``, removed once compacted; with ``crawl_parts`` (the
    store's own manifest folder, when ``--output`` is elsewhere) those, read and left in place.
    """
    output.open()  # a folder: removes the temporary part files of a killed run
    listing = [name for name, _ in output.listing()]
    parts = sorted((int(match[1]), name) for name in listing if (match := PART_NAME.fullmatch(name)))
    source = output if crawl_parts is None else crawl_parts
    crawl_names = sorted(
        name
        for name in (listing if crawl_parts is None else _names(crawl_parts))
        if CRAWL_PART_NAME.fullmatch(name)
    )
    done: set[int] = set()
    for _, name in parts:
        with output.reader(name) as file:
            # A column of ids (int64, not null), which pyarrow-stubs types as list[Any | None].
            done.update(cast("list[int]", pq.ParquetFile(file).read(columns=["id"]).column("id").to_pylist()))
    run = ManifestRun(rows=len(done))
    absorbed: list[str] = []

    def crawled() -> Iterator[pa.Table]:
        for name in crawl_names:
            table = _read_crawl_part(source, name)
            if table is None:
                continue  # unreadable: its ids get their rows from their files, below
            run.crawl_parts += 1
            absorbed.append(name)
            fresh = _new_rows(table, done)
            run.from_crawl_parts += fresh.num_rows
            if fresh.num_rows:
                yield fresh

    def usable() -> Iterator[StoredItem]:
        # Called once every crawl part is read: done then holds their ids too.
        pending = items.pending(done)
        run.without_metadata = pending.without_metadata
        for item in items.read(pending):
            if item.problem is None and not has_row(item.id):
                item.problem = NO_ROW
            if item.problem is None:
                yield item
            else:
                run.problems += 1
                on_problem(item)

    # Parts end on a row group's end: a part of part_rows rows is whole row groups.
    group_rows = min(ROW_GROUP_ROWS, part_rows)
    groups = _regrouped(itertools.chain(crawled(), _row_groups(usable(), group_rows)), group_rows)
    number = parts[-1][0] + 1 if parts else 0
    while (group := next(groups, None)) is not None:
        name = f"part-{number:06d}.parquet"
        with output.writing(name) as file, pq.ParquetWriter(file, SCHEMA, compression="zstd") as writer:
            rows = 0
            while group is not None:
                writer.write_table(group)
                rows += group.num_rows
                group = next(groups, None) if rows < part_rows else None
        run.added += rows
        run.parts += 1
        number += 1
    run.rows += run.added
    if crawl_parts is None:
        # Only now that every row of theirs is in a stored part: a run killed before leaves
        # crawl parts whose rows the next run finds in the parts, skips and removes.
        for name in absorbed:
            output.remove(name)
            run.crawl_parts_removed += 1
    return run


def _names(store: ReadableFileStore) -> list[str]:
    try:
        return [name for name, _ in store.listing()]
    except FileNotFoundError:  # no crawl wrote a part into this folder yet
        return []


def _read_crawl_part(store: ReadableFileStore, name: str) -> pa.Table | None:
    try:
        with store.reader(name) as file:
            return pq.ParquetFile(file).read().cast(SCHEMA)
    except FileNotFoundError:
        return None  # compacted and removed by another run since the listing
    except (OSError, ValueError, pa.ArrowException) as error:
        # Never a half-written part (each is renamed or uploaded whole); a disk's bad sector,
        # a file put there by hand. Left in place for someone to look at.
        logger.warning(
            "Manifest part %s left out, its ids are read from their files: %s", store.describe(name), error
        )
        return None


def _new_rows(table: pa.Table, done: set[int]) -> pa.Table:
    """The rows of ``table`` whose ids are not in ``done`` (each id once); ``done`` takes them."""
    keep = []
    for image_id in cast("list[int]", table.column("id").to_pylist()):
        keep.append(image_id not in done)
        done.add(image_id)
    return table if all(keep) else table.filter(pa.array(keep, type=pa.bool_()))


def _regrouped(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``tables`` in order, as tables of ``rows`` rows (the last one fewer): a crawl
    part's thousand rows would make a row group too small to read fast."""
    waiting: list[pa.Table] = []
    count = 0
    for table in tables:
        waiting.append(table)
        count += table.num_rows
        while count >= rows:
            whole = pa.concat_tables(waiting)
            yield whole.slice(0, rows).combine_chunks()
            rest = whole.slice(rows)
            waiting, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(waiting).combine_chunks()


def _row_groups(items: Iterator[StoredItem], rows: int) -> Iterator[pa.Table]:
    entries: list[Entry] = []
    for item in items:
        entries.append((item.id, item.record or {}, item.size))
        if len(entries) == rows:
            yield rows_table(entries)
            entries = []
    if entries:
        yield rows_table(entries)
