"""Tests of :mod:`civitai_spider.stores.id_file` and the group commit of ids over a folder.

Where the ID file goes for each store: ``tests/unit/stores/test_stores.py``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from civitai_spider import local_files
from civitai_spider.stores.folder import FolderStore
from civitai_spider.stores.id_file import IdFile, load_ids, record_ids
from civitai_spider.stores.recorder import IdRecorder


def test_missing_file_is_an_empty_set(tmp_path: Path) -> None:
    assert load_ids(tmp_path / "downloaded_image_ID_DB.txt") == set()
    assert not (tmp_path / "downloaded_image_ID_DB.txt").exists()


def test_empty_file_is_an_empty_set(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"")
    assert load_ids(path) == set()


def test_ids_are_parsed_as_integers(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"26962948\n1\n00123\n44789630\n")
    assert load_ids(path) == {26962948, 1, 123, 44789630}


def test_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"5\r\n6\r\n")
    assert load_ids(path) == {5, 6}


def test_torn_last_line_is_ignored_and_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"1\n2\n33")
    with caplog.at_level(logging.WARNING, logger="civitai_spider.stores.id_file"):
        assert load_ids(path) == {1, 2}
    assert path.read_bytes() == b"1\n2\n"
    assert any("unfinished last line" in record.getMessage() for record in caplog.records)
    record_ids(path, [44])
    assert path.read_bytes() == b"1\n2\n44\n"
    assert load_ids(path) == {1, 2, 44}


def test_file_that_is_only_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"12345")
    assert load_ids(path) == set()
    assert path.read_bytes() == b""
    record_ids(path, [7])
    assert path.read_bytes() == b"7\n"


def test_whole_file_is_not_modified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"1\n2\n")
    with caplog.at_level(logging.WARNING, logger="civitai_spider.stores.id_file"):
        load_ids(path)
    assert path.read_bytes() == b"1\n2\n"
    assert caplog.records == []


def test_junk_lines_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"1\nnot an id\n2\n3.5\n4\n")
    with caplog.at_level(logging.WARNING, logger="civitai_spider.stores.id_file"):
        assert load_ids(path) == {1, 2, 4}
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "line 2" in messages[0] and "not an id" in messages[0]
    assert "line 4" in messages[1] and "3.5" in messages[1]
    assert path.read_bytes() == b"1\nnot an id\n2\n3.5\n4\n"  # junk is not removed


def test_blank_lines_are_ignored_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\n1\n\n   \n2\n\n")
    with caplog.at_level(logging.WARNING, logger="civitai_spider.stores.id_file"):
        assert load_ids(path) == {1, 2}
    assert caplog.records == []


def test_record_ids_appends_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    record_ids(path, [26962948])
    record_ids(path, [5, 6])
    assert path.read_bytes() == b"26962948\n5\n6\n"


def test_record_ids_keeps_existing_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"1\n")
    record_ids(path, [2])
    assert load_ids(path) == {1, 2}


def _recorder_with_counted_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[IdRecorder, list[Path]]:
    syncs: list[Path] = []
    real_sync = local_files.sync_file_system

    def counted_sync(directory: Path) -> None:
        syncs.append(directory)
        real_sync(directory)

    monkeypatch.setattr("civitai_spider.stores.folder.sync_file_system", counted_sync)
    return IdRecorder(FolderStore(tmp_path), IdFile(tmp_path / "ids.txt")), syncs


def test_recorder_commits_ids_waiting_together_in_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, syncs = _recorder_with_counted_syncs(tmp_path, monkeypatch)

    async def record_all() -> None:
        await asyncio.gather(*(recorder.record(image_id) for image_id in range(1, 51)))

    asyncio.run(record_all())

    assert load_ids(tmp_path / "ids.txt") == set(range(1, 51))
    # The committer starts on the loop's next turn: by then all 50 are waiting, one batch.
    assert syncs == [tmp_path]


def test_recorder_returns_only_once_the_id_is_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, _ = _recorder_with_counted_syncs(tmp_path, monkeypatch)
    seen_on_return: list[set[int]] = []

    async def record_one(image_id: int) -> None:
        await recorder.record(image_id)
        seen_on_return.append(load_ids(tmp_path / "ids.txt"))

    async def record_in_turn() -> None:
        await record_one(1)
        await record_one(2)  # after the first commit ended: a new committer starts

    asyncio.run(record_in_turn())

    assert seen_on_return == [{1}, {1, 2}]


def test_recorder_failure_reaches_every_waiting_id(tmp_path: Path) -> None:
    recorder = IdRecorder(FolderStore(tmp_path), IdFile(tmp_path / "missing" / "ids.txt"))

    async def record_all() -> list[BaseException | None]:
        return await asyncio.gather(
            *(recorder.record(image_id) for image_id in (1, 2, 3)), return_exceptions=True
        )

    results = asyncio.run(record_all())

    assert all(isinstance(result, FileNotFoundError) for result in results)


def test_a_million_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"".join(b"%d\n" % number for number in range(1, 1_000_001)))
    ids = load_ids(path)
    assert len(ids) == 1_000_000
    assert 1 in ids and 1_000_000 in ids and 0 not in ids and 1_000_001 not in ids
