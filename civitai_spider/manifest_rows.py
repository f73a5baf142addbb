"""The manifest's row of one item: its typed columns, and the one function that makes them.

One row builder for both ways a row is made: by the crawl, as it records each item
(:mod:`civitai_spider.pipelines.manifest`, over the record it writes to ``<id>_meta.json``), and
by ``scrapy civitai-manifest`` from that file read back (:mod:`civitai_spider.dataset.manifest`).
Every column is typed (:data:`SCHEMA`); a value of the wrong type in the API record (a string
seed, a junk date, a list where a name goes) becomes null, and ``meta_json`` keeps ``meta``
whole as JSON text. Imported where rows are written, never at a crawl's start: pyarrow's import
costs 0.1 s.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from civitai_spider.items import STAT_NAMES, flat_meta, media_of

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

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+(?:\.0*)?\s*")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MILLISECOND = datetime.timedelta(milliseconds=1)

#: One row's makings: the id, the record of its ``<id>_meta.json``, its media file's size.
Entry = tuple[int, dict[str, Any], int | None]


def has_row(image_id: int) -> bool:
    """Whether the manifest can hold a row of ``image_id``: its ``id`` column is an int64, and
    the API's ids are far below that (a record may still claim one beyond it)."""
    return image_id <= _INT64[1]


#: Why an item whose id :func:`has_row` refuses is not in the manifest.
NO_ROW = "its id is beyond the manifest's int64 id column: no row"


def write_rows(file: BinaryIO, entries: Iterable[Entry]) -> None:
    """Write the rows of ``entries`` to ``file`` as one Parquet file (a crawl's part)."""
    pq.write_table(rows_table(entries), file, compression="zstd")


def rows_table(entries: Iterable[Entry]) -> pa.Table:
    """The manifest's rows (:func:`row_of`) of ``entries``, as a table of :data:`SCHEMA`."""
    columns: list[list[Any]] = [[] for _ in SCHEMA]
    for image_id, record, size in entries:
        for column, value in zip(columns, row_of(image_id, record, size), strict=True):
            column.append(value)
    return _table(columns)


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
