"""What the dataset commands' tests crawl: items of every kind, the crawl's settings, and a check
that a command succeeded."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.support import images, videos
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
