"""The folder store's commit: its files durable, then its images out of the page cache."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
from pathlib import Path

from civitai_spider.stores.folder import FolderStore

IMAGE = os.urandom(2_000_000)
METADATA = b'{"id": 1, "meta": {}}' * 40  # 840 bytes


def cached_pages(path: Path) -> int:
    """How many pages of ``path`` the page cache holds (``mincore()`` over a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        # A private mapping, never written: its pages are the file's pages in the cache.
        start = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        residency = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(size), residency) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        cached = sum(page & 1 for page in residency)
        del start  # the buffer export must end before the mapping closes
    return cached


def test_commit_drops_the_images_from_the_page_cache_and_keeps_metadata(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    store.open()
    store.put("1.png", IMAGE)
    store.put("1_meta.json", METADATA)
    assert cached_pages(tmp_path / "1.png") > 0  # just written: in the cache, dirty

    asyncio.run(store.commit())

    assert cached_pages(tmp_path / "1.png") == 0
    assert cached_pages(tmp_path / "1_meta.json") == 1  # small files stay: the manifest reads them
    assert (tmp_path / "1.png").read_bytes() == IMAGE  # only the cache changed


def test_a_file_written_after_a_commit_is_dropped_by_the_next(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    store.open()
    store.put("1.png", IMAGE)
    asyncio.run(store.commit())
    store.put("2.png", IMAGE)
    assert cached_pages(tmp_path / "2.png") > 0
    asyncio.run(store.commit())
    assert cached_pages(tmp_path / "2.png") == 0


def test_an_image_removed_before_the_commit_is_no_error(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    store.open()
    store.put("1.png", IMAGE)
    (tmp_path / "1.png").unlink()
    asyncio.run(store.commit())
    assert list(tmp_path.iterdir()) == []
