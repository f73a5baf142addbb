"""WebDataset shards: tar files of each item's media, metadata and caption, and their index.

A shard, ``shard-000000.tar``, ``shard-000001.tar``..., holds up to ``shard_size`` items,
each as three members named after its id, the sample's key in the WebDataset convention
(the members of a sample share the name before the first dot): ``<id>.jpg`` (``.png``,
``.mp4``, ``.webm``...: the stored bytes), ``<id>.json`` (its ``<id>_meta.json``) and
``<id>.txt`` (its training caption, :func:`~civitai_spider.captions.caption_of`).
The index, one Parquet part per shard (``index/shard-000000.parquet``...), says which id is
in which shard.

A shard is written under a temporary name and renamed when complete (uploaded whole to a
bucket), then its index part the same way: a shard is in the index only once it is whole.
A run starts by removing what a killed one left half done (a shard without its index part,
an index part without its shard), so the index's ids are exactly the shards' ids, and it
adds shards for the recorded ids in none.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pyarrow as pa
import pyarrow.parquet as pq

from civitai_spider.captions import caption_of
from civitai_spider.items import flat_meta

if TYPE_CHECKING:
    from civitai_spider.dataset.stored import StoredItem, StoredItems
    from civitai_spider.stores.base import ReadableFileStore

SHARD_NAME = re.compile(r"shard-([0-9]{6,})\.tar")
INDEX_NAME = re.compile(r"shard-([0-9]{6,})\.parquet")
INDEX_SCHEMA = pa.schema(
    # pyarrow-stubs' schema() turns down any list literal under mypy, pyarrow's own examples
    # too: it infers list[object] from fields of different types. Hence the ignore.
    [  # type: ignore[arg-type]
        pa.field("id", pa.int64(), nullable=False),
        #: The sample's key in the shard: the name of its members before the extension.
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        #: The media file's name in the store.
        pa.field("file", pa.string(), nullable=False),
    ],
    metadata={"civitai_webdataset_index": "1"},
)


@dataclass
class ExportRun:
    """What one run of :func:`export_webdataset` did."""

    added: int = 0
    shards: int = 0
    #: Items in the shards after the run.
    items: int = 0
    #: Shards and index parts a killed run left half done, removed.
    removed: int = 0
    #: Recorded ids without a ``<id>_meta.json`` in the store: in no shard.
    without_metadata: int = 0
    #: Items whose files could not be used (each reported to ``on_problem``).
    problems: int = 0


def export_webdataset(
    items: StoredItems,
    shards: ReadableFileStore,
    index: ReadableFileStore,
    *,
    shard_size: int,
    raw_captions: bool,
    on_problem: Callable[[StoredItem], None],
) -> ExportRun:
    """Add shards of at most ``shard_size`` items to ``shards`` (their index parts to
    ``index``) for every recorded id of ``items`` in no shard yet."""
    run = ExportRun()
    shards.open()  # a folder: removes the temporary files of a killed run
    index.open()
    shard_numbers = _numbered(shards, SHARD_NAME)
    index_numbers = _numbered(index, INDEX_NAME)
    # The index part goes last: a shard without one is the one a killed run was finishing.
    for number in shard_numbers.keys() - index_numbers.keys():
        shards.remove(shard_numbers.pop(number))
        run.removed += 1
    for number in index_numbers.keys() - shard_numbers.keys():
        index.remove(index_numbers.pop(number))  # its shard removed by hand: its ids go again
        run.removed += 1
    done: set[int] = set()
    for name in index_numbers.values():
        with index.reader(name) as file:
            # A column of ids (int64, not null), which pyarrow-stubs types as list[Any | None].
            done.update(cast("list[int]", pq.ParquetFile(file).read(columns=["id"]).column("id").to_pylist()))
    pending = items.pending(done)
    run.items, run.without_metadata = len(done), pending.without_metadata

    def usable() -> Iterator[StoredItem]:
        for item in items.with_media(items.read(pending)):
            if item.problem is None:
                yield item
            else:
                run.problems += 1
                on_problem(item)

    mtime = int(time.time())
    number = max(index_numbers, default=-1) + 1
    ready = usable()
    item = next(ready, None)
    while item is not None:
        shard = f"shard-{number:06d}.tar"
        rows: dict[str, list[object]] = {field: [] for field in INDEX_SCHEMA.names}
        # Stream mode ("w|"): the members go straight to the file, nothing is sought back.
        with shards.writing(shard) as file, tarfile.open(fileobj=file, mode="w|") as tar:
            while item is not None and len(rows["id"]) < shard_size:
                key = str(item.id)
                for member, data in _members(item, key, raw_captions):
                    _add(tar, member, data, mtime)
                for field, value in zip(INDEX_SCHEMA.names, (item.id, key, shard, item.file), strict=True):
                    rows[field].append(value)
                item.media = None  # written: its bytes may go
                item = next(ready, None)
        with index.writing(f"shard-{number:06d}.parquet") as file:
            pq.write_table(pa.table(rows, schema=INDEX_SCHEMA), file, compression="zstd")
        run.added += len(rows["id"])
        run.shards += 1
        number += 1
    run.items += run.added
    return run


def _numbered(store: ReadableFileStore, pattern: re.Pattern[str]) -> dict[int, str]:
    return {int(match[1]): name for name, _ in store.listing() if (match := pattern.fullmatch(name))}


def _members(item: StoredItem, key: str, raw_captions: bool) -> Iterator[tuple[str, bytes]]:
    assert item.record is not None and item.media is not None
    extension = item.file.rsplit(".", 1)[-1].lower()
    yield f"{key}.{extension}", item.media
    yield f"{key}.json", item.metadata
    prompt = (flat_meta(item.record.get("meta")) or {}).get("prompt")
    # A lone surrogate from the JSON has no UTF-8 form: written as its escape, as in meta.json.
    yield f"{key}.txt", caption_of(prompt, raw=raw_captions).encode("utf-8", "backslashreplace")


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = len(data), mtime, 0o644
    tar.addfile(member, io.BytesIO(data))
