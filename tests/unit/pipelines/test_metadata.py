"""Tests of the metadata files and :class:`MetadataPipeline` (files first, then the ID file, which
:class:`RecordIdPipeline` records next, as ``ITEM_PIPELINES`` runs them)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from itemadapter import ItemAdapter

from civitai_spider import local_files
from civitai_spider.items import CivitaiImage
from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.outcomes import FAILED_REASON, METADATA_FILES_SAVED, DropImage
from civitai_spider.pipelines.metadata import MetadataPipeline, metadata_files
from civitai_spider.pipelines.record_id import RecordIdPipeline
from civitai_spider.setting_rules import check_settings
from civitai_spider.stores import id_file
from civitai_spider.stores.failures import StoreFailed
from tests.support.crawls import project_crawler

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

_UNSET = object()


class MetadataThenId:
    """:class:`MetadataPipeline` then :class:`RecordIdPipeline`, one after the other as
    ``ITEM_PIPELINES`` runs them: the files, then the id."""

    def __init__(self, crawler: Crawler) -> None:
        self.steps = (MetadataPipeline.from_crawler(crawler), RecordIdPipeline.from_crawler(crawler))

    async def process_item(self, item: Any) -> Any:
        for step in self.steps:
            item = await step.process_item(item)
        return item


def make_record(meta: Any = _UNSET, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": 42,
        "url": "https://image.civitai.com/k/u/original=true/u.jpeg",
        "width": 64,
        "height": 48,
        "stats": {"heartCount": 5, "likeCount": 3},
        "meta": {"prompt": "a cat", "negativePrompt": "blurry", "seed": 1} if meta is _UNSET else meta,
        "someFutureField": {"nested": [1, 2, None]},
        **extra,
    }
    return record


def saved_item(record: dict[str, Any], image_file: str = "42.jpg") -> CivitaiImage:
    item = CivitaiImage.from_api(record)
    item.image_file = image_file
    return item


def files_of(record: dict[str, Any]) -> dict[str, bytes]:
    return metadata_files(ItemAdapter(saved_item(record)))


# --- metadata_files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "masterpiece, best quality",
        "一只猫在茶杯里, Ünïcödé, emoji 🐱🍵",
        "trailing spaces and newline  \n",
        "  leading spaces",
        "x" * 100_000,
    ],
    ids=["ascii", "non_ascii", "trailing", "leading", "long"],
)
def test_positive_prompt_is_written_exactly(prompt: str) -> None:
    files = files_of(make_record({"prompt": prompt}))
    assert files["42_pos-prompt.txt"] == prompt.encode("utf-8")


def test_positive_prompt_file_exists_even_without_a_prompt() -> None:
    assert files_of(make_record(None))["42_pos-prompt.txt"] == b""
    assert files_of(make_record({"seed": 1}))["42_pos-prompt.txt"] == b""


def test_non_string_prompt_is_written_as_json() -> None:
    files = files_of(make_record({"prompt": ["a", "猫"]}))
    assert files["42_pos-prompt.txt"] == '["a", "猫"]'.encode()


def test_negative_prompt_file_with_a_negative_prompt() -> None:
    files = files_of(make_record({"prompt": "p", "negativePrompt": "worst quality, 模糊  "}))
    assert files["42_neg-prompt.txt"] == "worst quality, 模糊  ".encode()
    assert sorted(files) == ["42_meta.json", "42_neg-prompt.txt", "42_pos-prompt.txt"]


@pytest.mark.parametrize("negative", ["absent", None, "", "  \n ", 3, ["x"]], ids=repr)
def test_no_negative_prompt_file_without_a_negative_prompt(negative: Any) -> None:
    meta: dict[str, Any] = {"prompt": "p"}
    if negative != "absent":
        meta["negativePrompt"] = negative
    files = files_of(make_record(meta))
    assert sorted(files) == ["42_meta.json", "42_pos-prompt.txt"]


def test_no_negative_prompt_file_without_meta() -> None:
    assert sorted(files_of(make_record(None))) == ["42_meta.json", "42_pos-prompt.txt"]


def test_meta_json_is_the_whole_record_plus_image_file() -> None:
    record = make_record({"prompt": "猫 🐱", "negativePrompt": "bad", "comfy": '{"nodes": []}'})
    data = files_of(record)["42_meta.json"]
    assert json.loads(data) == {**record, "image_file": "42.jpg"}
    assert "image_file" not in record  # the API record itself is not changed


def test_meta_json_keeps_non_ascii_text_as_utf8() -> None:
    data = files_of(make_record({"prompt": "猫 🐱 é"}))["42_meta.json"]
    text = data.decode("utf-8")
    assert "猫 🐱 é" in text
    assert "\\u" not in text


def test_meta_json_of_a_png_item_names_the_png() -> None:
    item = saved_item(make_record(), image_file="42.png")
    assert json.loads(metadata_files(ItemAdapter(item))["42_meta.json"])["image_file"] == "42.png"


@pytest.mark.parametrize(
    ("raw", "caption"),
    [
        (False, "yor briar (spy x family), masterpiece, smile"),
        (True, "<lora:x:0.8>, yor briar \\(spy x family\\), (masterpiece:1.2), [smile]"),
    ],
)
def test_the_caption_file_holds_the_cleaned_or_the_raw_prompt(raw: bool, caption: str) -> None:
    record = make_record({"prompt": "<lora:x:0.8>, yor briar \\(spy x family\\), (masterpiece:1.2), [smile]"})
    files = metadata_files(ItemAdapter(saved_item(record)), captions=True, raw_captions=raw)
    assert files["42.txt"].decode("utf-8") == caption
    assert files["42_pos-prompt.txt"].decode("utf-8") == record["meta"]["prompt"]  # as received


def test_no_caption_file_unless_asked_for() -> None:
    assert "42.txt" not in files_of(make_record())


@pytest.mark.parametrize("meta", [None, {}, {"prompt": ""}, {"prompt": ["not", "text"]}])
def test_an_item_without_a_prompt_gets_an_empty_caption_file(meta: Any) -> None:
    files = metadata_files(ItemAdapter(saved_item(make_record(meta))), captions=True)
    assert files["42.txt"] == b""


def test_with_caption_files_the_id_is_recorded_after_the_caption_is_stored(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path), CIVITAI_CAPTION_FILES=True)
    pipe = MetadataThenId(crawler)
    (tmp_path / "42.txt").mkdir()  # the caption cannot be stored: a folder in the way
    (tmp_path / "42.txt" / "x").write_text("x")
    with pytest.raises(DropImage) as failure:
        asyncio.run(pipe.process_item(saved_item(make_record())))
    _assert_failed_cleanly(tmp_path, failure, "metadata not saved: IsADirectoryError")
    (tmp_path / "42.txt" / "x").unlink()
    (tmp_path / "42.txt").rmdir()
    (tmp_path / "error_log.txt").unlink()
    asyncio.run(pipe.process_item(saved_item(make_record())))
    assert (tmp_path / "42.txt").read_text("utf-8") == "a cat"
    assert (tmp_path / "downloaded_image_ID_DB.txt").read_text() == "42\n"
    assert crawler.stats.get_value(METADATA_FILES_SAVED) == 4


@pytest.mark.parametrize("name", ["CIVITAI_CAPTION_FILES", "CIVITAI_CAPTION_RAW"])
def test_a_caption_switch_that_is_not_a_boolean_names_itself_and_the_allowed_values(name: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_settings(project_crawler(**{name: "maybe"}).settings)
    assert str(caught.value) == f"{name}='maybe' is not valid: allowed is true or false (also 1 or 0)"


# --- MetadataPipeline ------------------------------------------------------------------


def test_process_item_writes_the_files_then_records_the_id(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = MetadataThenId(crawler)
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("1\n")
    item = saved_item(make_record())

    result = asyncio.run(pipe.process_item(item))

    assert result is item
    assert (tmp_path / "42_pos-prompt.txt").read_text("utf-8") == "a cat"
    assert (tmp_path / "42_neg-prompt.txt").read_text("utf-8") == "blurry"
    assert json.loads((tmp_path / "42_meta.json").read_bytes())["image_file"] == "42.jpg"
    assert (tmp_path / "downloaded_image_ID_DB.txt").read_text() == "1\n42\n"
    assert crawler.stats.get_value(METADATA_FILES_SAVED) == 3
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_stat_counts_every_file_saved(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = MetadataThenId(crawler)
    asyncio.run(pipe.process_item(saved_item(make_record())))  # 3 files
    second = make_record({"prompt": "only a prompt"}, id=43)
    asyncio.run(pipe.process_item(saved_item(second, image_file="43.png")))  # 2 files
    assert crawler.stats.get_value(METADATA_FILES_SAVED) == 5
    assert (tmp_path / "downloaded_image_ID_DB.txt").read_text() == "42\n43\n"
    assert not (tmp_path / "43_neg-prompt.txt").exists()


def _assert_failed_cleanly(tmp_path: Path, failure: pytest.ExceptionInfo[DropImage], reason: str) -> None:
    assert failure.value.reason == FAILED_REASON
    assert isinstance(failure.value, StoreFailed)  # counted towards CIVITAI_MAX_STORE_FAILURES
    assert reason in str(failure.value) and "image 42 failed" in str(failure.value)
    [line] = (tmp_path / "error_log.txt").read_text().splitlines()
    assert line.split("\t")[1:3] == ["42", make_record()["url"]] and reason in line
    assert not (tmp_path / "downloaded_image_ID_DB.txt").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(TEMPORARY_PREFIX)]


def test_id_is_not_recorded_when_a_file_cannot_be_written(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = MetadataThenId(crawler)
    (tmp_path / "42_meta.json").mkdir()  # a folder in the way: the rename fails
    (tmp_path / "42_meta.json" / "x").write_text("x")
    with pytest.raises(DropImage) as failure:
        asyncio.run(pipe.process_item(saved_item(make_record())))
    _assert_failed_cleanly(tmp_path, failure, "metadata not saved: IsADirectoryError")
    assert crawler.stats.get_value(METADATA_FILES_SAVED) is None


def test_read_only_store_fails_the_item_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = MetadataThenId(crawler)

    real_open = os.open

    def read_only(path: str, *args: Any, **kwargs: Any) -> Any:
        # Every new file of the store is created under a temporary name first.
        if local_files.TEMPORARY_PREFIX in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(local_files.os, "open", read_only)
    with pytest.raises(DropImage) as failure:
        asyncio.run(pipe.process_item(saved_item(make_record())))
    _assert_failed_cleanly(tmp_path, failure, "metadata not saved: OSError: Read-only file system")


def test_disk_full_while_writing_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = MetadataThenId(crawler)
    real_replace = os.replace

    def full_disk(source: Any, target: Any) -> None:
        if str(target).endswith("_meta.json"):  # the first files went in; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(local_files.os, "replace", full_disk)
    with pytest.raises(DropImage) as failure:
        asyncio.run(pipe.process_item(saved_item(make_record())))
    _assert_failed_cleanly(tmp_path, failure, "metadata not saved: OSError: No space left on device")
    assert not (tmp_path / "42_meta.json").exists()


def test_id_file_that_cannot_be_written_fails_the_item_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    pipe = MetadataThenId(crawler)

    def full_disk(path: Path, image_ids: list[int]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(id_file, "record_ids", full_disk)
    with pytest.raises(DropImage) as failure:
        asyncio.run(pipe.process_item(saved_item(make_record())))
    _assert_failed_cleanly(tmp_path, failure, "id not recorded: OSError: No space left on device")


def test_a_store_gone_mid_crawl_fails_the_item_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    pipe = MetadataThenId(project_crawler(IMAGES_STORE=str(store)))
    store.write_text("a file where the folder was")
    with caplog.at_level(logging.WARNING), pytest.raises(StoreFailed) as failure:
        asyncio.run(pipe.process_item(saved_item(make_record())))
    assert failure.value.store == str(store)
    assert failure.value.error == "metadata not saved: NotADirectoryError: Not a directory"
    [record] = caplog.records  # error_log.txt's line, in the log instead
    assert record.exc_info is None and f"Could not write {store / 'error_log.txt'}" in record.getMessage()
    assert record.getMessage().endswith("\tmetadata not saved: NotADirectoryError: Not a directory")


def test_custom_id_file_is_used(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path), CIVITAI_ID_FILE="ids.txt")
    asyncio.run(MetadataThenId(crawler).process_item(saved_item(make_record())))
    assert (tmp_path / "ids.txt").read_text() == "42\n"


def test_lone_surrogate_from_json_is_written_as_its_escape() -> None:
    # The API's JSON may hold "\ud800", a code point UTF-8 cannot encode.
    files = files_of(make_record({"prompt": "a \ud800 cat", "negativePrompt": "\udfff"}))
    assert files["42_pos-prompt.txt"] == b"a \\ud800 cat"
    assert files["42_neg-prompt.txt"] == b"\\udfff"
    assert json.loads(files["42_meta.json"])["meta"]["prompt"] == "a \ud800 cat"
