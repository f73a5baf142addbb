"""The Parquet manifest: one row per recorded id, with typed columns and the whole ``meta``.

The manifest is a folder (a prefix in a bucket) of part files, ``part-000000.parquet``,
``part-000001.parquet``..., one dataset for pyarrow, pandas, DuckDB and Hugging Face
``datasets`` alike. A crawl adds its rows as it records ids, in small *crawl parts*
(:data:`~civitai_spider.dataset.stored.CRAWL_PART_NAME`, :func:`write_crawl_part`, written by
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

Rows are written a row group at a time, so memory does not grow with the store. Every
column is typed (:data:`SCHEMA`); a value of the wrong type in the API record (a string
seed, a junk date, a list where a name goes) becomes null, and ``meta_json`` keeps ``meta``
whole as JSON text.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from civitai_spider.dataset.stored import CRAWL_PART_NAME
from civitai_spider.items import STAT_NAMES, flat_meta, media_of

if TYPE_CHECKING:
    from civitai_spider.dataset.stored import StoredItem, StoredItems
    from civitai_spider.stores.base import ReadableFileStore

logger = logging.getLogger(__name__)
_RESOURCE = pa.struct(
    [("name", pa.string()), ("type", pa.string()), ("weight", pa.float64()), ("hash", pa.string())]
)
#: The stats columns, in ``STAT_NAMES`` order: ``likeCount`` -> ``like_count``.
STAT_COLUMNS = tuple(re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower() for name in STAT_NAMES)
SCHEMA = pa.schema(
    # pyarrow-stubs' schema() turns down any list literal under mypy, pyarrow's own examples
    # too: it infers list[object] from fields of different types. Hence the ignore.
    [  # type: ignore[arg-type]
        pa.field("id", pa.int64(), nullable=False),
        ("file", pa.string()),
        ("media", pa.string()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("url", pa.string()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("post_id", pa.int64()),
        ("username", pa.string()),
        ("base_model", pa.string()),
        ("nsfw_level", pa.string()),
        ("browsing_level", pa.int32()),
        *((name, pa.int64()) for name in STAT_COLUMNS),
        ("tags", pa.list_(pa.string())),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("steps", pa.int32()),
        ("sampler", pa.string()),
        ("cfg_scale", pa.float64()),
        ("clip_skip", pa.int32()),
        ("model", pa.string()),
        ("model_hash", pa.string()),
        ("resources", pa.list_(_RESOURCE)),
        ("meta_json", pa.string()),
    ],
    metadata={"civitai_manifest": "1"},
)
PART_NAME = re.compile(r"part-([0-9]{6,})\.parquet")
#: Rows per row group: what one write holds in memory (a row is a kilobyte or two: a prompt,
#: ``meta_json``). Rows per part file: ``CIVITAI_MANIFEST_PART_ROWS``.
ROW_GROUP_ROWS = 10_000

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+(?:\.0*)?\s*")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MILLISECOND = datetime.timedelta(milliseconds=1)


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


#: One row's makings: the id, the record of its ``<id>_meta.json``, its media file's size.
Entry = tuple[int, dict[str, Any], int | None]


def write_crawl_part(store: ReadableFileStore, name: str, entries: Sequence[Entry]) -> None:
    """Store the rows of ``entries`` as the part ``name`` of ``store`` (blocking): whole or absent."""
    with store.writing(name) as file:
        pq.write_table(rows_table(entries), file, compression="zstd")


def rows_table(entries: Iterable[Entry]) -> pa.Table:
    """The manifest's rows (:func:`row_of`) of ``entries``, as a table of :data:`SCHEMA`."""
    columns: list[list[Any]] = [[] for _ in SCHEMA]
    for image_id, record, size in entries:
        for column, value in zip(columns, row_of(image_id, record, size), strict=True):
            column.append(value)
    return _table(columns)


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


def _table(columns: list[list[Any]]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, SCHEMA, strict=True)],
        schema=SCHEMA,
    )


def row_of(image_id: int, record: dict[str, Any], size: int | None) -> tuple[Any, ...]:
    """The manifest's values for one stored record, in :data:`SCHEMA` order, of its types."""
    file = _text(record.get("image_file"))
    stats = record.get("stats")
    stats = stats if isinstance(stats, dict) else {}
    raw_meta = record.get("meta")
    meta = flat_meta(raw_meta) or {}
    hashes = meta.get("hashes")
    model_hash = _text(meta.get("Model hash"))
    if model_hash is None and isinstance(hashes, dict):
        model_hash = _text(hashes.get("model"))
    return (
        image_id,
        file,
        media_of(record),
        file.rsplit(".", 1)[-1].lower() if file and "." in file else None,
        size,
        _integer(record.get("width"), _INT32),
        _integer(record.get("height"), _INT32),
        _text(record.get("url")),
        _milliseconds(record.get("createdAt")),
        _integer(record.get("postId"), _INT64),
        _text(record.get("username")),
        _text(record.get("baseModel")),
        _text(record.get("nsfwLevel")),
        _integer(record.get("browsingLevel"), _INT32),
        *(_integer(stats.get(name), _INT64) for name in STAT_NAMES),
        _tags(record.get("tags")),
        _text(meta.get("prompt")),
        _text(meta.get("negativePrompt")),
        _integer(meta.get("seed"), _INT64),
        _integer(meta.get("steps"), _INT32),
        _text(meta.get("sampler")),
        _number(meta.get("cfgScale")),
        _integer(meta.get("clipSkip", meta.get("Clip skip")), _INT32),
        _model_name(meta.get("Model", meta.get("model"))),
        model_hash,
        _resources(meta.get("resources")),
        _json(meta if meta else raw_meta),
    )


def _model_name(value: Any) -> str | None:
    # Usually the checkpoint's name; some records carry an object there instead (its name, if any).
    return _text(value.get("name") if isinstance(value, dict) else value)


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON) has no UTF-8 form
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _integer(value: Any, bounds: tuple[int, int]) -> int | None:
    # bool is an int subclass: JSON true is not the number 1.
    if type(value) is float and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        value = int(value.strip().split(".", 1)[0])  # "20", " 7 ", "2.0": what tools write
    if type(value) is not int:
        return None
    return value if bounds[0] <= value <= bounds[1] else None


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if type(value) is int:
        value = float(value)
    if type(value) is not float or value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def _milliseconds(value: Any) -> int | None:
    """An ISO 8601 time (``2024-08-31T01:11:47.021Z``) in ms since the epoch, or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)  # the API's times are UTC
    try:
        return (moment - _EPOCH) // _MILLISECOND
    except OverflowError:
        return None


def _tags(value: Any) -> list[str] | None:
    """Tag names: the API's ``[{"id": ..., "name": ...}]``, or plain names."""
    if not isinstance(value, list):
        return None
    names = (tag.get("name") if isinstance(tag, dict) else tag for tag in value)
    return [text for name in names if (text := _text(name)) is not None]


def _resources(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        return None
    return [
        {
            "name": _text(resource.get("name")),
            "type": _text(resource.get("type")),
            "weight": _number(resource.get("weight")),
            "hash": _text(resource.get("hash")),
        }
        for resource in value
        if isinstance(resource, dict)
    ]


def _json(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False)
    return _text(text)
