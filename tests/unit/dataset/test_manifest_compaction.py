"""Tests of how ``update_manifest`` compacts the crawl's parts: their rows once, no file read for
them, the crawl parts removed only once their rows are stored, whatever a kill interrupts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from itemadapter import ItemAdapter

from civitai_spider.dataset.manifest import ManifestRun, update_manifest
from civitai_spider.dataset.stored import StoredItem, stored_items
from civitai_spider.items import CivitaiImage
from civitai_spider.manifest_rows import NO_ROW, write_rows
from civitai_spider.pipelines.manifest import CRAWL_PART_NAME, crawl_part_name
from civitai_spider.pipelines.metadata import metadata_files
from civitai_spider.stores.folder import FolderStore
from tests.support.crawls import project_crawler
from tests.support.records import RECORD, write_store

_parts_written = iter(range(1, 10**6))


def crawl_part(store: Path, ids: list[int], tag: str = "0badcafe") -> str:
    """A crawl's part of ``ids``, as the pipeline writes it: the rows of their stored records."""
    name = crawl_part_name("20261204T080000Z", tag, next(_parts_written))
    entries = []
    for image_id in ids:
        record = json.loads((store / f"{image_id}_meta.json").read_text())
        entries.append((image_id, record, (store / record["image_file"]).stat().st_size))
    folder = FolderStore(store / "manifest")
    folder.open()
    with folder.writing(name) as file:
        write_rows(file, entries)
    return name


def compact(
    store: Path,
    *,
    part_rows: int = 100_000,
    crawl_parts: Path | None = None,
    problems: list[StoredItem] | None = None,
) -> ManifestRun:
    expected_problems = problems is not None
    problems = [] if problems is None else problems
    settings = project_crawler(IMAGES_STORE=str(store)).settings
    items = stored_items(settings)
    output = FolderStore(store / "manifest")
    other = FolderStore(crawl_parts) if crawl_parts is not None else None
    try:
        run = update_manifest(
            items, output, part_rows=part_rows, on_problem=problems.append, crawl_parts=other
        )
    finally:
        items.files.close()
    assert expected_problems or not problems
    return run


def manifest_ids(folder: Path) -> list[int]:
    return sorted(pq.read_table(folder).column("id").to_pylist())


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def record(store: Path, ids: list[int]) -> None:
    """The ID file lists ``ids`` and no other."""
    (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{image_id}\n" for image_id in ids))


def remove_metadata(store: Path) -> None:
    for path in store.glob("*_meta.json"):
        path.unlink()


def test_crawl_parts_become_parts_without_a_file_read_and_are_removed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 10)
    crawl_part(store, ids[:4])
    crawl_part(store, ids[4:], tag="12345678")
    expected = pq.read_table(store / "manifest").to_pylist()
    remove_metadata(store)  # a read of any item's file would leave it out

    run = compact(store)

    assert (run.added, run.from_crawl_parts, run.crawl_parts, run.crawl_parts_removed) == (10, 10, 2, 2)
    assert names(store / "manifest") == ["part-000000.parquet"]
    assert pq.read_table(store / "manifest").to_pylist() == expected


def test_recorded_ids_without_a_row_get_theirs_from_their_files(tmp_path: Path) -> None:
    # A crawl killed before its last part: its first rows are in a part, the rest only in files.
    store = tmp_path / "store"
    ids = write_store(store, 10)
    crawl_part(store, ids[:3])
    run = compact(store)
    assert (run.added, run.from_crawl_parts) == (10, 3)
    assert manifest_ids(store / "manifest") == ids
    # The same rows as a manifest made from the files alone.
    alone = tmp_path / "alone"
    write_store(alone, 10)
    compact(alone)
    key = lambda row: row["id"]  # noqa: E731
    assert sorted(pq.read_table(store / "manifest").to_pylist(), key=key) == sorted(
        pq.read_table(alone / "manifest").to_pylist(), key=key
    )


def test_a_run_killed_before_removing_the_crawl_parts_leaves_no_id_twice_after_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 8)
    crawl_part(store, ids[:5])
    crawl_part(store, ids[5:])

    class Killed(BaseException):
        pass

    def killed(self: FolderStore, name: str) -> None:
        raise Killed  # the process dies right after its compacted part is stored

    with monkeypatch.context() as patch:
        patch.setattr(FolderStore, "remove", killed)
        with pytest.raises(Killed):
            compact(store)
    assert len([name for name in names(store / "manifest") if CRAWL_PART_NAME.fullmatch(name)]) == 2
    assert len(pq.read_table(store / "manifest").column("id")) == 16  # for now, twice
    remove_metadata(store)

    run = compact(store)

    assert (run.added, run.crawl_parts_removed, run.rows) == (0, 2, 8)
    assert names(store / "manifest") == ["part-000000.parquet"]
    assert pq.read_table(store / "manifest").column("id").to_pylist() == ids


def test_an_id_in_two_crawl_parts_or_already_in_a_part_is_one_row(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 6)
    record(store, ids[:2])
    crawl_part(store, ids[:2])
    assert compact(store).rows == 2
    crawl_part(store, [ids[1], ids[2], ids[3]])  # ids[1] is compacted already
    crawl_part(store, [ids[3], ids[4]], tag="feedf00d")  # two workers recorded ids[3]
    remove_metadata(store)
    record(store, ids[:5])

    run = compact(store)

    assert (run.added, run.from_crawl_parts, run.rows) == (3, 3, 5)
    assert sorted(pq.read_table(store / "manifest").column("id").to_pylist()) == ids[:5]


def test_parts_hold_part_rows_each_in_order(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 25)
    for start in range(0, 25, 7):
        crawl_part(store, ids[start : start + 7])
    run = compact(store, part_rows=10)
    assert (run.parts, run.added) == (3, 25)
    sizes = [
        pq.ParquetFile(store / "manifest" / name).metadata.num_rows for name in names(store / "manifest")
    ]
    assert sizes == [10, 10, 5]
    assert pq.read_table(store / "manifest").column("id").to_pylist() == ids


def test_an_output_elsewhere_reads_the_store_s_crawl_parts_and_leaves_them(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 5)
    crawl_part(store, ids)
    remove_metadata(store)
    before = names(store / "manifest")
    output = tmp_path / "elsewhere"

    settings = project_crawler(IMAGES_STORE=str(store)).settings
    items = stored_items(settings)
    run = update_manifest(
        items,
        FolderStore(output),
        part_rows=100,
        on_problem=lambda item: None,
        crawl_parts=FolderStore(store / "manifest"),
    )
    items.files.close()

    assert (run.added, run.from_crawl_parts, run.crawl_parts_removed) == (5, 5, 0)
    assert names(store / "manifest") == before
    assert manifest_ids(output) == ids


def test_an_unreadable_crawl_part_is_left_with_a_warning_and_its_ids_read_from_the_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 4)
    bad = crawl_part_name("20261204T080000Z", "deadbeef", 1)
    (store / "manifest").mkdir()
    (store / "manifest" / bad).write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING):
        run = compact(store)
    assert run.added == 4 and run.from_crawl_parts == 0
    [warning] = [record.getMessage() for record in caplog.records]
    assert bad in warning and "left out, its ids are read from their files" in warning
    assert (store / "manifest" / bad).exists()
    ids_read: list[Any] = pq.read_table(store / "manifest" / "part-000000.parquet").column("id").to_pylist()
    assert ids_read == ids


def test_a_recorded_id_beyond_int64_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 3)
    huge = 2**70
    item = CivitaiImage.from_api({**RECORD, "id": huge})
    item.image_file = f"{huge}.jpg"
    for name, data in metadata_files(ItemAdapter(item)).items():
        (store / name).write_bytes(data)
    (store / item.image_file).write_bytes(b"\xff\xd8\xff")
    record(store, [*ids, huge])
    problems: list[StoredItem] = []
    run = compact(store, problems=problems)
    assert (run.added, run.problems) == (3, 1)
    assert [(problem.id, problem.problem) for problem in problems] == [(huge, NO_ROW)]
    assert manifest_ids(store / "manifest") == ids
