"""The dataset tests' stores: one that a real crawl filled from the fake Civitai server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import images, videos
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai

NO_METADATA = {"AWS_EC2_METADATA_DISABLED": "true"}
CRAWL_SETTINGS = {
    "CIVITAI_REQUIRE_PROMPT": "false",
    "CIVITAI_WITH_TAGS": "true",
    "CIVITAI_THRESHOLDS": "{}",
    "CIVITAI_CAPTION_FILES": "true",
}


def add_items(server: FakeCivitai, count: int = 0) -> list[dict[str, Any]]:
    """A JPEG, a PNG, a WebP (saved as JPEG), a video without meta, junk fields; ``count`` more JPEGs."""
    tags = [{"id": 5133, "name": "girl"}, {"id": 292, "name": "maid"}]
    items = [
        server.add_image_item(images.jpeg_rgb(), tags=tags),
        server.add_image_item(
            images.png_rgb(), meta={"prompt": "猫 ☕, (best:1.2)", "seed": "77", "steps": 20}
        ),
        server.add_image_item(images.webp_rgb(), meta={"prompt": "tea", "cfgScale": 4.5, "Clip skip": "2"}),
        server.add_image_item(videos.mp4(), type="video", meta=None, baseModel=None),
        server.add_image_item(
            images.jpeg_rgb(), createdAt="yesterday", width="wide", stats={"likeCount": "x"}
        ),
    ]
    return items + [server.add_image_item(images.jpeg_rgb()) for _ in range(count)]


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCivitai]:
    with FakeCivitai() as server:
        yield server


@pytest.fixture(scope="module")
def crawled(fake: FakeCivitai, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A folder store that one real crawl filled, and the API records it got."""
    items = add_items(fake)
    store = tmp_path_factory.mktemp("crawled") / "store"
    result = run_crawl(fake, store, "media=all", **CRAWL_SETTINGS)
    assert result.returncode == 0 and sorted(result.ids_recorded()) == sorted(i["id"] for i in items)
    return store, items


@pytest.fixture
def store(crawled: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> Path:
    """A copy of the crawled store, this test's to change."""
    return Path(shutil.copytree(crawled[0], tmp_path / "store"))
