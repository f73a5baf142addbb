"""Tests of the file stores' reading-back side, the same for a folder and a bucket (SeaweedFS):
``listing``, ``size``, ``read``, ``reader``, ``writing`` and ``remove``, as the dataset commands use them."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from scrapy.settings import Settings

from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.stores import file_store_at
from civitai_spider.stores.base import ReadableFileStore
from civitai_spider.stores.folder import FolderStore
from tests.support.servers import SeaweedS3Server, unique_bucket_name


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedS3Server) -> Iterator[str]:
    name = s3_server.create_bucket(unique_bucket_name("read-back"))
    yield name
    s3_server.delete_bucket(name, missing_ok=True)


@pytest.fixture(params=["folder", "bucket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadableFileStore]:
    if request.param == "folder":
        settings, uri = Settings(), str(tmp_path / "store")
    else:
        s3: SeaweedS3Server = request.getfixturevalue("s3_server")
        name = request.getfixturevalue("bucket")
        uri = f"s3://{name}/{secrets.token_hex(4)}"
        settings = Settings(s3.settings(name, ""))
    with closing(file_store_at(settings, uri)) as opened:
        opened.open()
        yield opened


def put(store: ReadableFileStore, files: dict[str, bytes]) -> None:
    asyncio.run(store.save(files))


def test_listing_names_every_file_of_the_store_itself_with_sizes_known_or_asked(
    store: ReadableFileStore,
) -> None:
    put(store, {"1.jpg": b"x" * 10, "1_meta.json": b"{}", "2.png": b""})
    if isinstance(store, FolderStore):
        (store.directory / "manifest").mkdir()
        (store.directory / "manifest" / "part-000000.parquet").write_bytes(b"PAR1")
        (store.directory / f"{TEMPORARY_PREFIX}h00000000-1-x-3.jpg.partial").write_bytes(b"half")
    else:
        store.put("manifest/part-000000.parquet", b"PAR1")
    listed = dict(store.listing())
    assert sorted(listed) == ["1.jpg", "1_meta.json", "2.png"]  # not a subfolder's, not a temporary file
    sizes = {name: size if size is not None else store.size(name) for name, size in listed.items()}
    assert sizes == {"1.jpg": 10, "1_meta.json": 2, "2.png": 0}


def test_read_and_size_of_a_missing_file_are_file_not_found(store: ReadableFileStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.read("404.jpg")
    with pytest.raises(FileNotFoundError):
        store.size("404.jpg")


def test_a_reader_seeks_and_reads_any_part(store: ReadableFileStore) -> None:
    data = bytes(range(256)) * 8192  # 2 MB: more than the bucket reader's buffer
    put(store, {"big.bin": data})
    assert store.read("big.bin") == data
    with store.reader("big.bin") as file:
        file.seek(-10, 2)
        assert file.read() == data[-10:]
        file.seek(1_500_000)
        assert file.read(5) == data[1_500_000:1_500_005] and file.tell() == 1_500_005
        file.seek(0)
        assert file.read() == data


def test_writing_stores_the_file_whole_when_the_block_ends(store: ReadableFileStore) -> None:
    with store.writing("part.parquet") as file:
        file.write(b"first ")
        file.write(b"second")
        assert "part.parquet" not in dict(store.listing())  # nobody sees it before the end
    assert store.read("part.parquet") == b"first second"


def test_writing_that_fails_leaves_the_earlier_file_and_nothing_else(store: ReadableFileStore) -> None:
    put(store, {"part.parquet": b"earlier"})
    with pytest.raises(RuntimeError), store.writing("part.parquet") as file:
        file.write(b"half of the new one")
        raise RuntimeError("killed")
    assert store.read("part.parquet") == b"earlier"
    assert sorted(dict(store.listing())) == ["part.parquet"]
    if isinstance(store, FolderStore):
        assert sorted(path.name for path in store.directory.iterdir()) == ["part.parquet"]


def test_remove_removes_the_file_and_a_missing_one_is_no_error(store: ReadableFileStore) -> None:
    put(store, {"1.jpg": b"x", "2.jpg": b"y"})
    store.remove("1.jpg")
    store.remove("404.jpg")
    assert dict(store.listing()).keys() == {"2.jpg"}
    with pytest.raises(FileNotFoundError):
        store.read("1.jpg")
