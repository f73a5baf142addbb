"""The stores' check before a crawl: each local folder a crawl writes is made and written once.

A folder store itself, a bucket's log folder (``CIVITAI_LOG_DIR``) and the ID file's folder
when it is elsewhere; one ``ValueError`` line naming the setting, the folder and the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scrapy.settings import Settings

from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.stores import file_store_class
from civitai_spider.stores.s3 import S3Store

_BUCKET = {
    "IMAGES_STORE": "s3://bucket/civitai",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:1",  # never asked: the bucket's own check is replaced
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_REGION_NAME": "us-east-1",
}


def check(**settings: str) -> None:
    values = Settings(settings)
    file_store_class(values).check(values)


@pytest.fixture
def bucket_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S3Store, "_check_bucket", lambda self: None)


def test_a_new_folder_store_is_made_with_its_parents_and_left_empty(tmp_path: Path) -> None:
    store = tmp_path / "a" / "b" / "store"
    check(IMAGES_STORE=f"file://{store}")
    assert store.is_dir() and list(store.iterdir()) == []


def test_an_existing_folder_store_keeps_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "1.jpg").write_bytes(b"jpeg")
    check(IMAGES_STORE=str(tmp_path))
    assert [path.name for path in tmp_path.iterdir()] == ["1.jpg"]


def test_a_regular_file_is_no_folder_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.write_text("x")
    with pytest.raises(ValueError) as error:
        check(IMAGES_STORE=str(store))
    assert (
        str(error.value)
        == f"IMAGES_STORE={str(store)!r} cannot be used: [Errno 20] Not a directory: {str(store)!r}"
    )


def test_a_folder_store_under_proc_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"^IMAGES_STORE='/proc/civitai-test/x' cannot be used: \[Errno \d+\] "
    ):
        check(IMAGES_STORE="/proc/civitai-test/x")
    assert not Path("/proc/civitai-test").exists()


def test_a_failed_write_removes_the_folders_made_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("civitai_spider.local_files.os.fsync", full)
    store = tmp_path / "new" / "store"
    with pytest.raises(ValueError) as error:
        check(IMAGES_STORE=str(store))
    assert str(error.value) == (
        f"IMAGES_STORE={str(store)!r} cannot be used: [Errno 28] No space left on device: {str(store)!r}"
    )
    assert list(tmp_path.iterdir()) == []  # neither the store nor its new parent, nor a temporary file


def test_read_only_checks_write_nothing(tmp_path: Path) -> None:
    store = tmp_path / "archive"
    settings = Settings({"IMAGES_STORE": str(store)})
    file_store_class(settings).check(settings, read_only=True)
    assert not store.exists()


def test_an_id_file_in_another_folder_is_checked_there(tmp_path: Path) -> None:
    ids = tmp_path / "ids" / "done.txt"
    check(IMAGES_STORE=str(tmp_path / "store"), CIVITAI_ID_FILE=str(ids))
    assert ids.parent.is_dir() and list(ids.parent.iterdir()) == []

    with pytest.raises(ValueError, match=r"^CIVITAI_ID_FILE='/proc/civitai-test/ids.txt' cannot be used: "):
        check(IMAGES_STORE=str(tmp_path / "store"), CIVITAI_ID_FILE="/proc/civitai-test/ids.txt")


def test_with_redis_the_id_file_is_not_checked(tmp_path: Path) -> None:
    check(
        IMAGES_STORE=str(tmp_path / "store"),
        CIVITAI_ID_FILE="/proc/civitai-test/ids.txt",
        CIVITAI_REDIS_URL="redis://127.0.0.1:1/0",
    )


def test_a_bucket_checks_its_local_log_folder(tmp_path: Path, bucket_answers: None) -> None:
    logs = tmp_path / "logs"
    check(**_BUCKET, CIVITAI_LOG_DIR=str(logs))
    assert logs.is_dir() and [path for path in logs.iterdir() if path.name.startswith(TEMPORARY_PREFIX)] == []

    with pytest.raises(ValueError, match=r"^CIVITAI_LOG_DIR='/proc/civitai-test/logs' cannot be used: "):
        check(**_BUCKET, CIVITAI_LOG_DIR="/proc/civitai-test/logs")
    with pytest.raises(ValueError, match=r"^CIVITAI_ID_FILE='/proc/civitai-test/ids.txt' cannot be used: "):
        check(**_BUCKET, CIVITAI_LOG_DIR=str(logs), CIVITAI_ID_FILE="/proc/civitai-test/ids.txt")
