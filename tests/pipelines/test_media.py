"""Unit tests of :class:`CivitaiMediaPipeline` that no crawl can show: which thread does the work."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from civitai_spider.pipelines import media
from civitai_spider.pipelines.media import CivitaiMediaPipeline, MediaFailed
from civitai_spider.stores import folder
from tests import images, videos
from tests.conftest import project_crawler


def pipeline(store: Path) -> CivitaiMediaPipeline:
    crawler = project_crawler(IMAGES_STORE=str(store))
    crawler.stats.open_spider()
    return CivitaiMediaPipeline.from_crawler(crawler)


def recording_threads(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, str]:
    """Wrap ``media.<name>`` and the folder store's write so that each call records its thread."""
    threads: dict[str, str] = {}
    for module, function in ((media, name), (folder, "write_atomically")):
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
    threads = recording_threads(monkeypatch, "check_video")
    body = videos.mp4()

    extension = asyncio.run(pipeline(tmp_path)._save_video(body, 7))

    assert extension == "mp4" and (tmp_path / "7.mp4").read_bytes() == body
    assert set(threads) == {"check_video", "write_atomically"}
    assert threading.main_thread().name not in threads.values(), threads


def test_an_image_is_prepared_and_written_in_a_pillow_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = recording_threads(monkeypatch, "prepare_image")

    extension = asyncio.run(pipeline(tmp_path)._save_image(images.jpeg_rgb(), 8, "https://cdn/8.jpeg"))

    assert extension == "jpg"
    assert set(threads) == {"prepare_image", "write_atomically"}
    assert all(name.startswith("pillow") for name in threads.values()), threads


def test_a_refused_video_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(MediaFailed, match="not a video"):
        asyncio.run(pipeline(tmp_path)._save_video(images.png_rgb(), 9))
    assert list(tmp_path.iterdir()) == []
