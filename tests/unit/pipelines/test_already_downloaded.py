"""Tests of :class:`AlreadyDownloadedPipeline`: ids from the id store or repeated in a run.

With the ID file here; the Redis id store goes through the same pipeline in
``tests/unit/stores/test_redis_ids.py`` and end to end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import DropImage
from civitai_spider.pipelines.already_downloaded import AlreadyDownloadedPipeline
from tests.support.crawls import project_crawler


def make_item(image_id: int, chain: str | None = None) -> CivitaiImage:
    url = f"https://image.civitai.com/k/{image_id}.jpeg"
    return CivitaiImage.from_api({"id": image_id, "url": url}, chain=chain)


def opened_pipeline(store: Path, **settings: Any) -> AlreadyDownloadedPipeline:
    pipe = AlreadyDownloadedPipeline.from_crawler(project_crawler(IMAGES_STORE=str(store), **settings))
    asyncio.run(pipe.open_spider())
    return pipe


def process(pipe: AlreadyDownloadedPipeline, item: Any) -> Any:
    return asyncio.run(pipe.process_item(item))


def dropped_reason(pipe: AlreadyDownloadedPipeline, item: Any) -> str:
    with pytest.raises(DropImage) as caught:
        process(pipe, item)
    return caught.value.reason


def test_ids_are_loaded_at_open_spider(tmp_path: Path) -> None:
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("10\n20\n")
    pipe = opened_pipeline(tmp_path)
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("")  # read once, at the start
    assert asyncio.run(pipe.stores.ids.contains([10, 20, 30])) == [True, True, False]


def test_loaded_id_is_dropped_as_already_downloaded(tmp_path: Path) -> None:
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("10\n20\n")
    pipe = opened_pipeline(tmp_path)
    assert dropped_reason(pipe, make_item(20)) == "already_downloaded"
    assert dropped_reason(pipe, make_item(20)) == "already_downloaded"


def test_new_ids_pass(tmp_path: Path) -> None:
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("10\n")
    pipe = opened_pipeline(tmp_path)
    for image_id in (11, 12, 1):
        item = make_item(image_id)
        assert process(pipe, item) is item


def test_second_copy_in_one_run_is_a_duplicate(tmp_path: Path) -> None:
    pipe = opened_pipeline(tmp_path)
    first = make_item(5)
    assert process(pipe, first) is first
    assert dropped_reason(pipe, make_item(5)) == "duplicate"
    assert process(pipe, make_item(6)) is not None


def test_a_copy_from_another_chain_is_told_apart_from_a_duplicate(tmp_path: Path) -> None:
    # A model's crawl lists an image under each version it uses: not a sign of a moving ranking.
    pipe = opened_pipeline(tmp_path)
    assert process(pipe, make_item(5, chain="modelVersionId=1")) is not None
    assert dropped_reason(pipe, make_item(5, chain="modelVersionId=2")) == "other_chain"
    assert dropped_reason(pipe, make_item(5, chain="modelVersionId=1")) == "duplicate"
    assert dropped_reason(pipe, make_item(5)) == "duplicate"  # a shared crawl's item: no chain


def test_ids_compare_as_integers(tmp_path: Path) -> None:
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("00123\n")
    pipe = opened_pipeline(tmp_path)
    assert dropped_reason(pipe, make_item(123)) == "already_downloaded"


def test_missing_store_and_id_file(tmp_path: Path) -> None:
    store = tmp_path / "new" / "store"
    pipe = opened_pipeline(store)
    assert store.is_dir()  # created, so that the ID file can be appended to later
    assert process(pipe, make_item(1)) is not None


def test_custom_absolute_id_file(tmp_path: Path) -> None:
    id_file = tmp_path / "shared" / "ids.txt"
    id_file.parent.mkdir()
    id_file.write_text("77\n")
    pipe = opened_pipeline(tmp_path / "store", CIVITAI_ID_FILE=str(id_file))
    assert dropped_reason(pipe, make_item(77)) == "already_downloaded"


def test_torn_id_file_is_repaired_at_open(tmp_path: Path) -> None:
    id_file = tmp_path / "downloaded_image_ID_DB.txt"
    id_file.write_bytes(b"1\n2\n3")
    pipe = opened_pipeline(tmp_path)
    assert id_file.read_bytes() == b"1\n2\n"
    assert process(pipe, make_item(3)) is not None  # the torn id was never complete


def test_dict_items_are_accepted(tmp_path: Path) -> None:
    pipe = opened_pipeline(tmp_path)
    assert process(pipe, {"id": 9}) == {"id": 9}
    assert dropped_reason(pipe, {"id": 9}) == "duplicate"
