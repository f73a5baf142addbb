"""Unit tests of :class:`CivitaiMediaPipeline` that no crawl can show: which thread does the work,
and which failures are the store's."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from civitai_spider.download_handler import Spool
from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import DropImage
from civitai_spider.pipelines import media
from civitai_spider.pipelines.media import CivitaiMediaPipeline, MediaFailed, MediaNotStored
from civitai_spider.stores import folder
from civitai_spider.stores.failures import StoreFailed
from tests.support import images, videos
from tests.support.crawls import project_crawler


def pipeline(store: Path) -> CivitaiMediaPipeline:
    crawler = project_crawler(IMAGES_STORE=str(store))
    crawler.stats.open_spider()
    return CivitaiMediaPipeline.from_crawler(crawler)


def recording_threads(
    monkeypatch: pytest.MonkeyPatch, name: str, write: tuple[Any, str] = (folder, "write_atomically")
) -> dict[str, str]:
    """Wrap ``media.<name>`` and the folder store's write so that each call records its thread."""
    threads: dict[str, str] = {}
    for module, function in ((media, name), write):
        original = getattr(module, function)

        def wrapper(*args: Any, _name: str = function, _original: Any = original, **kwargs: Any) -> Any:
            threads[_name] = threading.current_thread().name
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, function, wrapper)
    return threads


def test_a_video_is_checked_and_written_off_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reactor thread must stay free while a video of hundreds of megabytes is walked
    # and written: both happen in a worker thread.
    threads = recording_threads(monkeypatch, "check_video_file", (folder.FolderStore, "put_file"))
    body = videos.mp4()

    extension, size = asyncio.run(pipeline(tmp_path)._save_video(spooled(tmp_path, body), b"", 7))

    assert extension == "mp4" and (tmp_path / "7.mp4").read_bytes() == body and size == len(body)
    assert set(threads) == {"check_video_file", "put_file"}
    assert threading.main_thread().name not in threads.values(), threads
    assert [path.name for path in tmp_path.iterdir()] == ["7.mp4"]  # the spooled file, renamed


def spooled(folder: Path, body: bytes) -> Spool:
    """A spool that the download handler filled with ``body``."""
    spool = Spool(folder, "7.video")
    spool.begin().write(body)
    spool.finish()
    return spool


def test_a_video_that_came_whole_is_spooled_then_stored(tmp_path: Path) -> None:
    # Another download handler than ours (DOWNLOAD_HANDLERS overridden) hands the body over.
    body = videos.webm()

    extension, size = asyncio.run(pipeline(tmp_path)._save_video(Spool(tmp_path, "7.video"), body, 7))

    assert extension == "webm" and (tmp_path / "7.webm").read_bytes() == body and size == len(body)
    assert [path.name for path in tmp_path.iterdir()] == ["7.webm"]


def test_an_image_is_prepared_and_written_in_a_pillow_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = recording_threads(monkeypatch, "prepare_image")

    extension, size = asyncio.run(pipeline(tmp_path)._save_image(images.jpeg_rgb(), 8, "https://cdn/8.jpeg"))

    assert extension == "jpg" and size == (tmp_path / "8.jpg").stat().st_size
    assert set(threads) == {"prepare_image", "write_atomically"}
    assert all(name.startswith("pillow") for name in threads.values()), threads


def test_a_refused_video_leaves_no_file(tmp_path: Path) -> None:
    spool = spooled(tmp_path, images.png_rgb())
    assert spool.path is not None and Path(spool.path).exists()
    with pytest.raises(MediaFailed, match="not a video"):
        asyncio.run(pipeline(tmp_path)._save_video(spool, b"", 9))
    assert list(tmp_path.iterdir()) == []


# --- a store that cannot take the file ---------------------------------------------------------


def test_a_video_that_could_not_be_spooled_is_a_store_failure(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "gone", "7.video")  # the folder went away: no temporary file

    with pytest.raises(MediaNotStored) as not_stored:
        asyncio.run(pipeline(tmp_path)._save_video(spool, b"", 7))

    assert str(not_stored.value).startswith(f"could not write video 7 to {tmp_path / 'gone'}: ")
    assert "FileNotFoundError" in str(not_stored.value)
    assert not_stored.value.store == str(tmp_path)


def broken_store(tmp_path: Path) -> tuple[CivitaiMediaPipeline, Path]:
    """A pipeline whose store folder is replaced by a file, as if it had gone after the start."""
    store = tmp_path / "store"
    store.mkdir()
    pipe = pipeline(store)
    store.rmdir()
    store.write_text("the store is gone")
    return pipe, store


def item_with(record_id: int) -> CivitaiImage:
    return CivitaiImage.from_api(
        {"id": record_id, "url": f"https://cdn/{record_id}.jpeg", "meta": {"prompt": "a cat"}}
    )


def test_a_file_the_store_cannot_take_fails_its_item_as_a_store_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipe, store = broken_store(tmp_path)
    with pytest.raises(MediaNotStored) as not_stored:
        asyncio.run(pipe._save_image(images.jpeg_rgb(), 8, "https://cdn/8.jpeg"))
    assert str(not_stored.value) == f"could not write {store / '8.jpg'}: NotADirectoryError: Not a directory"
    assert not_stored.value.store == str(store)

    with caplog.at_level(logging.WARNING), pytest.raises(StoreFailed) as failed:
        pipe.item_completed([(False, Failure(not_stored.value))], item_with(8), None)  # type: ignore[arg-type]

    assert failed.value.store == str(store) and failed.value.error == str(not_stored.value)
    assert str(failed.value) == f"image 8 failed: {not_stored.value} <https://cdn/8.jpeg>"
    # error_log.txt is in the broken folder: its line is in the log, without a traceback.
    [record] = caplog.records
    assert record.getMessage().startswith(f"Could not write {store / 'error_log.txt'} (NotADirectoryError")
    assert record.getMessage().endswith(f"\t8\thttps://cdn/8.jpeg\t{not_stored.value}")
    assert record.exc_info is None


def test_a_failed_download_or_image_is_no_store_failure(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path)
    for error in (MediaFailed("HTTP 404"), MediaFailed("not an image (body starts with b'<html>')")):
        with pytest.raises(DropImage) as failed:
            pipe.item_completed([(False, Failure(error))], item_with(9), None)  # type: ignore[arg-type]
        assert not isinstance(failed.value, StoreFailed)
    assert len((tmp_path / "error_log.txt").read_text().splitlines()) == 2


def test_a_bomb_log_that_cannot_be_written_is_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipe, store = broken_store(tmp_path)
    with caplog.at_level(logging.WARNING):
        pipe._log_bomb(5, "https://cdn/5.jpeg", (20_000, 20_000), "refused")
    assert [record.exc_info for record in caplog.records] == [None, None]
    assert f"Could not write {store / 'DecompressionBombWarning_log.txt'}" in caplog.records[1].getMessage()
