"""Tests of :class:`RecordIdPipeline`: the commit point, the id recorded once the files are durable."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest

from civitai_spider import settings as project_settings
from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import FAILED_REASON
from civitai_spider.pipelines.record_id import RecordIdPipeline
from civitai_spider.stores import folder, id_file, stores_of
from civitai_spider.stores.failures import StoreFailed
from tests.support.crawls import project_crawler

URL = "https://image.civitai.com/k/u/original=true/u.jpeg"


def saved_item(image_id: int = 42) -> CivitaiImage:
    item = CivitaiImage.from_api({"id": image_id, "url": URL})
    item.image_file = f"{image_id}.jpg"
    return item


def pipeline(store: Path) -> RecordIdPipeline:
    return RecordIdPipeline.from_crawler(project_crawler(IMAGES_STORE=str(store)))


def test_it_runs_right_after_the_metadata_pipeline_and_before_the_manifest_s_rows() -> None:
    order = sorted(project_settings.ITEM_PIPELINES, key=project_settings.ITEM_PIPELINES.__getitem__)
    # The manifest's row of an item is written only once its id is recorded.
    assert order[-3:] == [
        "civitai_spider.pipelines.metadata.MetadataPipeline",
        "civitai_spider.pipelines.record_id.RecordIdPipeline",
        "civitai_spider.pipelines.manifest.ManifestPipeline",
    ]


def test_it_records_through_the_crawls_stores(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = RecordIdPipeline.from_crawler(crawler)
    assert pipe.stores is stores_of(crawler)


def test_the_id_is_recorded_after_the_store_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_sync, real_record = folder.sync_file_system, id_file.record_ids

    def sync(directory: Path) -> None:
        events.append("commit")
        real_sync(directory)

    def record(path: Path, image_ids: list[int]) -> None:
        events.append(f"record {image_ids}")
        real_record(path, image_ids)

    monkeypatch.setattr(folder, "sync_file_system", sync)
    monkeypatch.setattr(id_file, "record_ids", record)
    pipe = pipeline(tmp_path)
    item = saved_item()

    async def run() -> object:
        await pipe.open_spider()
        return await pipe.process_item(item)

    assert asyncio.run(run()) is item
    assert events == ["commit", "record [42]"]
    assert (tmp_path / "downloaded_image_ID_DB.txt").read_text() == "42\n"
    assert not (tmp_path / "error_log.txt").exists()


def assert_failed_cleanly(store: Path, failure: pytest.ExceptionInfo[StoreFailed], reason: str) -> None:
    assert failure.value.reason == FAILED_REASON and failure.value.log_level == "WARNING"
    assert failure.value.store == str(store / "downloaded_image_ID_DB.txt")
    assert failure.value.error == reason
    assert str(failure.value) == f"image 42 failed: {reason} <{URL}>"
    [line] = (store / "error_log.txt").read_text().splitlines()
    assert line.split("\t")[1:] == ["42", URL, reason]
    assert not (store / "downloaded_image_ID_DB.txt").exists()


def test_an_id_store_that_cannot_record_fails_the_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(path: Path, image_ids: list[int]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(id_file, "record_ids", full_disk)
    with pytest.raises(StoreFailed) as failure:
        asyncio.run(pipeline(tmp_path).process_item(saved_item()))
    assert_failed_cleanly(tmp_path, failure, "id not recorded: OSError: No space left on device")


def test_a_commit_that_fails_fails_the_item_without_recording_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_sync(directory: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(folder, "sync_file_system", broken_sync)
    with caplog.at_level(logging.WARNING), pytest.raises(StoreFailed) as failure:
        asyncio.run(pipeline(tmp_path).process_item(saved_item()))
    assert_failed_cleanly(tmp_path, failure, "id not recorded: OSError: Input/output error")
    assert caplog.records == []  # the drop's WARNING line is Scrapy's, once the item is dropped
