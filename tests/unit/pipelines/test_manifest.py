"""Tests of :class:`ManifestPipeline`: the recorded items' rows, written as parts off the reactor."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured

from civitai_spider.items import CivitaiImage
from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.manifest_rows import SCHEMA, rows_table
from civitai_spider.pipelines import manifest as manifest_pipeline
from civitai_spider.pipelines.manifest import (
    CRAWL_PART_NAME,
    PART_FAILURES,
    PARTS_WRITTEN,
    ROWS_NOT_WRITTEN,
    ROWS_WRITTEN,
    ManifestPipeline,
)
from civitai_spider.pipelines.metadata import metadata_files
from civitai_spider.stores.folder import FolderStore
from tests.support.crawls import project_crawler
from tests.support.records import RECORD

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


def saved_item(image_id: int, size: int | None = 100) -> CivitaiImage:
    """An item as the pipelines before hand it over: its file stored, its id recorded."""
    item = CivitaiImage.from_api({**RECORD, "id": image_id})
    item.image_file = f"{image_id}.jpg"
    item.image_size = size
    return item


def crawler_at(store: Path, **settings: Any) -> Crawler:
    return project_crawler(IMAGES_STORE=str(store), **settings)


def run(pipe: ManifestPipeline, items: list[CivitaiImage], *, pause: float = 0.0, close: bool = True) -> None:
    """Hand ``items`` to ``pipe`` in a running event loop, as the reactor does, then close it."""

    async def crawl() -> None:
        for item in items:
            assert await pipe.process_item(item) is item
        await asyncio.sleep(pause)
        if close:
            await pipe.close_spider()

    asyncio.run(crawl())


def parts(store: Path) -> list[str]:
    return sorted(path.name for path in (store / "manifest").iterdir())


def test_each_part_holds_the_rows_the_command_would_read_from_the_files(tmp_path: Path) -> None:
    crawler = crawler_at(tmp_path, CIVITAI_MANIFEST_FLUSH_ROWS=2)
    items = [saved_item(image_id, size=image_id * 10) for image_id in (11, 12, 13)]
    run(ManifestPipeline.from_crawler(crawler), items)

    names = parts(tmp_path)
    assert len(names) == 2 and all(CRAWL_PART_NAME.fullmatch(name) for name in names), names
    assert names[0].endswith("-000001.parquet") and names[1].endswith("-000002.parquet")
    assert [pq.read_table(tmp_path / "manifest" / name).num_rows for name in names] == [2, 1]
    table = ds.dataset(tmp_path / "manifest").to_table()
    assert table.schema.equals(SCHEMA)
    # The row of the record as <id>_meta.json stores it, read back as the command reads it.
    stored = [json.loads(metadata_files(ItemAdapter(item))[f"{item.id}_meta.json"]) for item in items]
    entries = [(item.id, record, item.id * 10) for item, record in zip(items, stored, strict=True)]
    assert table.to_pylist() == rows_table(entries).to_pylist()
    assert crawler.stats.get_value(PARTS_WRITTEN) == 2 and crawler.stats.get_value(ROWS_WRITTEN) == 3


def test_waiting_rows_are_written_after_the_flush_seconds_without_the_crawl_closing(tmp_path: Path) -> None:
    pipe = ManifestPipeline.from_crawler(crawler_at(tmp_path, CIVITAI_MANIFEST_FLUSH_SECONDS=0.05))
    run(pipe, [saved_item(21), saved_item(22)], pause=0.5, close=False)
    [name] = parts(tmp_path)
    assert pq.read_table(tmp_path / "manifest" / name).column("id").to_pylist() == [21, 22]


def test_nothing_waits_for_the_flush_seconds_at_close(tmp_path: Path) -> None:
    pipe = ManifestPipeline.from_crawler(crawler_at(tmp_path))  # 60 s, 1,000 rows
    run(pipe, [saved_item(31)])
    [name] = parts(tmp_path)
    assert pq.read_table(tmp_path / "manifest" / name).column("id").to_pylist() == [31]


def test_a_crawl_that_recorded_nothing_writes_nothing(tmp_path: Path) -> None:
    run(ManifestPipeline.from_crawler(crawler_at(tmp_path)), [])
    assert not (tmp_path / "manifest").exists()


def test_parts_are_written_in_the_writer_thread_not_the_event_loop_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = []
    writing = FolderStore.writing

    def recording(store: FolderStore, name: str) -> Any:
        threads.append(threading.current_thread().name)
        return writing(store, name)

    monkeypatch.setattr(FolderStore, "writing", recording)
    run(ManifestPipeline.from_crawler(crawler_at(tmp_path, CIVITAI_MANIFEST_FLUSH_ROWS=1)), [saved_item(41)])
    assert threads and all(name.startswith("manifest-writer") for name in threads), threads


def test_two_crawls_into_one_store_never_write_the_same_part_name(tmp_path: Path) -> None:
    first, second = (ManifestPipeline.from_crawler(crawler_at(tmp_path)) for _ in range(2))
    run(first, [saved_item(51)])
    run(second, [saved_item(52)])
    assert len(parts(tmp_path)) == 2
    assert sorted(ds.dataset(tmp_path / "manifest").to_table().column("id").to_pylist()) == [51, 52]


def test_an_unknown_size_is_asked_of_the_store(tmp_path: Path) -> None:
    # An item handed another item's download of the same URL was given a copy of its file.
    (tmp_path / "61.jpg").write_bytes(b"\xff\xd8" * 21)
    run(ManifestPipeline.from_crawler(crawler_at(tmp_path)), [saved_item(61, size=None)])
    assert ds.dataset(tmp_path / "manifest").to_table().column("bytes").to_pylist() == [42]


def test_a_part_that_cannot_be_written_is_a_warning_a_stat_and_a_log_line_and_the_next_one_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crawler = crawler_at(tmp_path, CIVITAI_MANIFEST_FLUSH_ROWS=2)
    full = [True]
    writing = FolderStore.writing

    def disk_full_once(store: FolderStore, name: str) -> Any:
        if full.pop() if full else False:
            raise OSError(errno.ENOSPC, "No space left on device")
        return writing(store, name)

    monkeypatch.setattr(FolderStore, "writing", disk_full_once)
    with caplog.at_level(logging.WARNING, logger=manifest_pipeline.__name__):
        run(ManifestPipeline.from_crawler(crawler), [saved_item(image_id) for image_id in (71, 72, 73)])

    [warning] = [record.getMessage() for record in caplog.records]
    assert "-000001.parquet of 2 row(s) not written: OSError: No space left on device" in warning
    assert "the next scrapy civitai-manifest reads their rows from their files" in warning
    assert crawler.stats.get_value(PART_FAILURES) == 1 and crawler.stats.get_value(ROWS_NOT_WRITTEN) == 2
    [line] = (tmp_path / "error_log.txt").read_text().splitlines()
    assert line.split("\t")[1:] == [
        "2 ids",
        f"{tmp_path}/manifest/{warning.split('/manifest/')[1].split(' ')[0]}",
        "manifest part not written: OSError: No space left on device",
    ]
    # The crawl's next part is written as if nothing happened.
    [name] = parts(tmp_path)
    assert name.endswith("-000002.parquet")
    assert pq.read_table(tmp_path / "manifest" / name).column("id").to_pylist() == [73]


def test_off_it_is_not_built(tmp_path: Path) -> None:
    with pytest.raises(NotConfigured):
        ManifestPipeline.from_crawler(crawler_at(tmp_path, CIVITAI_MANIFEST=False))


def test_items_wait_for_a_writer_that_falls_behind_rather_than_parts_pile_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = FolderStore.writing

    def slow(store: FolderStore, name: str) -> Any:
        time.sleep(0.05)  # a bucket that answers slowly
        return writing(store, name)

    monkeypatch.setattr(FolderStore, "writing", slow)
    pipe = ManifestPipeline.from_crawler(crawler_at(tmp_path, CIVITAI_MANIFEST_FLUSH_ROWS=1))
    queued = []

    async def crawl() -> None:
        for image_id in range(81, 91):
            await pipe.process_item(saved_item(image_id))
            queued.append(len(pipe._writes))
        await pipe.close_spider()

    asyncio.run(crawl())
    assert max(queued) == manifest_pipeline._PARTS_QUEUED, queued
    assert len(parts(tmp_path)) == 10


def test_an_id_beyond_int64_gets_no_row_and_fails_no_part(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crawler = crawler_at(tmp_path)
    with caplog.at_level(logging.WARNING, logger=manifest_pipeline.__name__):
        run(ManifestPipeline.from_crawler(crawler), [saved_item(2**70), saved_item(91)])
    assert ds.dataset(tmp_path / "manifest").to_table().column("id").to_pylist() == [91]
    assert [record.getMessage() for record in caplog.records] == [
        f"Image {2**70} has no manifest row: its id is beyond int64"
    ]
    assert crawler.stats.get_value(ROWS_NOT_WRITTEN) == 1 and crawler.stats.get_value(PART_FAILURES) is None
    [line] = (tmp_path / "error_log.txt").read_text().splitlines()
    assert line.split("\t")[1::2] == [str(2**70), "no manifest row: its id is beyond int64"]


def test_a_part_being_written_is_invisible_to_readers_of_the_folder(tmp_path: Path) -> None:
    # A part's temporary name starts with "." (local_files.TEMPORARY_PREFIX): pyarrow's datasets
    # (pandas', DuckDB's "*.parquet" too) skip it, half written as it is.
    run(ManifestPipeline.from_crawler(crawler_at(tmp_path)), [saved_item(101)])
    half = tmp_path / "manifest" / f"{TEMPORARY_PREFIX}h0-1-1-crawl-x.parquet.partial"
    half.write_bytes(b"PAR1 half a part")
    assert ds.dataset(tmp_path / "manifest").to_table().column("id").to_pylist() == [101]
