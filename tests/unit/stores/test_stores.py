"""Tests of :mod:`civitai_spider.stores`: which stores the settings choose, and where the local
files (logs, the ID file) go for each."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from scrapy import signals
from scrapy.settings import Settings

from civitai_spider import settings as project_settings
from civitai_spider.stores import Stores, file_store_class, id_store_class, log_directory, stores_of
from civitai_spider.stores.folder import FolderStore
from civitai_spider.stores.id_file import IdFile, id_file_path
from civitai_spider.stores.redis_ids import RedisIds
from civitai_spider.stores.s3 import S3Store
from tests.support.crawls import project_crawler


@pytest.mark.parametrize(
    ("uri", "store_class"),
    [
        ("civitai-images", FolderStore),
        ("/data/civitai", FolderStore),
        ("file:///data/civitai", FolderStore),
        ("FILE:///data/civitai", FolderStore),
        ("s3://bucket/civitai", S3Store),
        ("S3://bucket/civitai", S3Store),
    ],
)
def test_file_store_class_by_scheme(uri: str, store_class: type) -> None:
    assert file_store_class(Settings({"IMAGES_STORE": uri})) is store_class


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [("gs://bucket/images", "gs://"), ("ftp://host/images", "ftp://"), ("HTTP://host/images", "http://")],
)
def test_an_unknown_scheme_names_the_value_the_scheme_and_the_allowed_ones(uri: str, scheme: str) -> None:
    with pytest.raises(ValueError) as caught:
        file_store_class(Settings({"IMAGES_STORE": uri}))

    assert str(caught.value) == (
        f"IMAGES_STORE={uri!r}: unknown scheme {scheme!r}; allowed: a folder, file://folder, s3://bucket/prefix"
    )


@pytest.mark.parametrize("empty", ["", None])
def test_an_empty_images_store(empty: str | None) -> None:
    with pytest.raises(ValueError, match="^IMAGES_STORE is empty: name a folder, file://folder or s3://"):
        file_store_class(Settings({"IMAGES_STORE": empty}))


@pytest.mark.parametrize(
    ("url", "store_class"),
    [
        ("", IdFile),
        (None, IdFile),
        ("redis://127.0.0.1:6379/0", RedisIds),
        ("unix:///run/redis.sock", RedisIds),
    ],
)
def test_id_store_class_by_redis_url(url: str | None, store_class: type) -> None:
    assert id_store_class(Settings({"CIVITAI_REDIS_URL": url})) is store_class


# --- where the local files go ---------------------------------------------------------------


def where(store: str, **settings: Any) -> tuple[Path, Path]:
    """(log folder, ID file) for ``IMAGES_STORE=store``."""
    values = Settings({"IMAGES_STORE": store, **settings})
    return log_directory(values), id_file_path(values)


def test_a_folder_keeps_its_logs_and_id_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert where(str(store)) == (store, store / "downloaded_image_ID_DB.txt")
    assert where(str(store), CIVITAI_ID_FILE="ids.txt", CIVITAI_LOG_DIR=str(tmp_path / "logs")) == (
        store,
        store / "ids.txt",
    )


@pytest.mark.parametrize("scheme", ["file://", "FILE://", "File://"])
def test_a_file_uri_is_the_folder(tmp_path: Path, scheme: str) -> None:
    assert where(f"{scheme}{tmp_path}", CIVITAI_ID_FILE="ids.txt") == (tmp_path, tmp_path / "ids.txt")


def test_a_relative_folder() -> None:
    assert where("civitai-images") == (
        Path("civitai-images"),
        Path("civitai-images/downloaded_image_ID_DB.txt"),
    )


def test_a_bucket_keeps_its_logs_and_id_file_in_the_log_folder(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    assert where("s3://bucket/civitai", CIVITAI_LOG_DIR=str(logs)) == (
        logs,
        logs / "downloaded_image_ID_DB.txt",
    )
    assert where("s3://bucket/civitai", CIVITAI_LOG_DIR=str(logs), CIVITAI_ID_FILE="sub/ids.txt") == (
        logs,
        logs / "sub" / "ids.txt",
    )
    # Not set (a bare Settings, as the project's own default): civitai-logs beside the crawl.
    assert where("s3://bucket/civitai") == (
        Path("civitai-logs"),
        Path("civitai-logs/downloaded_image_ID_DB.txt"),
    )


@pytest.mark.parametrize("store", ["folder", "s3://bucket/civitai"])
def test_an_absolute_id_file_is_kept(tmp_path: Path, store: str) -> None:
    absolute = tmp_path / "elsewhere" / "ids.txt"
    folder = str(tmp_path / "store") if store == "folder" else store
    assert where(folder, CIVITAI_ID_FILE=str(absolute), CIVITAI_LOG_DIR=str(tmp_path / "logs"))[1] == absolute


# --- one instance per crawl -------------------------------------------------------------------


def test_stores_of_a_crawler_is_one_instance(tmp_path: Path) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    other = project_crawler(IMAGES_STORE=str(tmp_path))

    stores = stores_of(crawler)

    assert stores_of(crawler) is stores
    assert stores_of(other) is not stores
    assert isinstance(stores.files, FolderStore) and stores.files.directory == tmp_path
    assert isinstance(stores.ids, IdFile) and stores.ids.path == tmp_path / "downloaded_image_ID_DB.txt"
    # One of each log for every component, so that a log that cannot be written is said once.
    assert stores.error_log.path == tmp_path / "error_log.txt"
    assert stores.bomb_log.path == tmp_path / "DecompressionBombWarning_log.txt"


def test_stores_of_a_crawler_to_a_bucket_with_redis(tmp_path: Path) -> None:
    crawler = project_crawler(
        IMAGES_STORE="s3://bucket/civitai",
        AWS_ENDPOINT_URL="http://127.0.0.1:1",  # never asked: making the stores sends nothing
        AWS_ACCESS_KEY_ID="key",
        AWS_SECRET_ACCESS_KEY="secret",
        AWS_REGION_NAME="us-east-1",
        CIVITAI_REDIS_URL="redis://127.0.0.1:1/0",
        CIVITAI_REDIS_PREFIX="team-a",
    )

    stores = stores_of(crawler)
    try:
        assert stores_of(crawler) is stores
        assert (
            isinstance(stores.files, S3Store)
            and stores.files.describe("1.jpg") == "s3://bucket/civitai/1.jpg"
        )
        assert isinstance(stores.ids, RedisIds) and stores.ids.prefix == "team-a"
    finally:
        stores.files.close()


# --- the Stores extension ---------------------------------------------------------------------


def test_the_stores_are_the_crawlers_extension(tmp_path: Path) -> None:
    assert "civitai_spider.stores.Stores" in project_settings.EXTENSIONS
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))

    stores = crawler.get_extension(Stores)

    assert isinstance(stores, Stores) and stores_of(crawler) is stores


def test_stores_of_a_crawler_without_the_extension_says_so() -> None:
    crawler = project_crawler(EXTENSIONS={"civitai_spider.stores.Stores": None})

    with pytest.raises(RuntimeError, match=r"^civitai_spider\.stores\.Stores is not enabled in EXTENSIONS"):
        stores_of(crawler)


def test_the_stores_close_when_the_spider_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crawler = project_crawler(IMAGES_STORE=str(tmp_path))
    stores = stores_of(crawler)
    closed: list[str] = []

    async def ids_closed() -> None:
        closed.append("ids")

    monkeypatch.setattr(stores.ids, "close", ids_closed)
    monkeypatch.setattr(stores.files, "close", lambda: closed.append("files"))

    async def close_spider() -> None:
        await crawler.signals.send_catch_log_async(signals.spider_closed, spider=None, reason="finished")

    asyncio.run(close_spider())

    assert closed == ["ids", "files"]
