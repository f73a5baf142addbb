"""End to end: the log of a real ``scrapy crawl civitai``, as a person reads it.

At INFO a crawl logs no line per item; at DEBUG one line per saved item (``Saved image 12 as
12.png``) and one per API page, never Scrapy's "Crawled" line of each media download nor its
"Scraped from" dump of each item; Pillow's dump of each PNG chunk (``STREAM b'IHDR'``) never.
Asking for more than PG without an API key is one WARNING: the API serves PG only then.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import images, videos
from tests.support.crawls import CrawlResult, run_crawl
from tests.support.fake_civitai import FakeCivitai

#: Bodies in turn: PNGs with and without text chunks (Pillow reads their chunks), a JPEG, and a
#: WebP saved as JPEG (Pillow converts it).
BODIES = (images.png_rgba_with_parameters, images.jpeg_rgb, images.png_rgb, images.webp_rgb)
#: Lines of the crawl itself, whatever its size: the id store loaded, LogStats' first report,
#: the API page, a few to spare.
CRAWL_LINES = 6
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[([^\]]+)\] ([A-Z]+): (.*)")


def crawl_lines(result: CrawlResult) -> list[str]:
    """The log lines from "Spider opened" to "Closing spider", both left out: the crawl itself."""
    lines = result.stderr.splitlines()
    start = next(n for n, line in enumerate(lines) if line.endswith("INFO: Spider opened"))
    end = next(n for n, line in enumerate(lines) if "INFO: Closing spider" in line)
    return lines[start + 1 : end]


def add_items(server: FakeCivitai, count: int) -> list[int]:
    ids = [server.add_image_item(BODIES[n % len(BODIES)]())["id"] for n in range(count)]
    return [*ids, server.add_image_item(videos.mp4(), type="video")["id"]]


def test_debug_is_one_line_per_saved_item_and_info_none(server: FakeCivitai, tmp_path: Path) -> None:
    ids = add_items(server, 24)

    debug = run_crawl(server, tmp_path / "debug", "media=all", LOG_LEVEL="DEBUG")
    assert debug.returncode == 0, debug.stderr[-3000:]
    assert debug.stats["civitai/saved"] == len(ids)
    assert "STREAM b'" not in debug.stderr  # Pillow's chunk dumps, three and more per PNG
    lines = crawl_lines(debug)
    assert len(lines) <= len(ids) + CRAWL_LINES, "\n".join(lines)
    saved = [line for line in lines if " DEBUG: Saved " in line]
    assert len(saved) == len(ids), "\n".join(lines)
    for image_id in ids:
        naming = [line for line in lines if re.search(rf"\b{image_id}\b", line)]
        assert len(naming) == 1, f"{len(naming)} lines name item {image_id}:\n" + "\n".join(naming)
        saved_line = rf"\[scrapy\.core\.scraper\] DEBUG: Saved (image|video) {image_id} as {image_id}\.\w+"
        assert re.search(saved_line, naming[0]), naming[0]
    crawled = [line for line in lines if "Crawled (" in line]
    assert len(crawled) == 1 and "/api/v1/images?" in crawled[0], crawled  # the page alone

    info = run_crawl(server, tmp_path / "info", "media=all", LOG_LEVEL="INFO")
    assert info.returncode == 0 and info.stats["civitai/saved"] == len(ids), info.stderr[-3000:]
    lines = crawl_lines(info)
    assert len(lines) <= CRAWL_LINES, "\n".join(lines)
    assert not [line for line in lines if any(re.search(rf"\b{i}\b", line) for i in ids)], lines
    assert all(_LOG_LINE.fullmatch(line) for line in lines), lines  # no item dumped over lines


PG_ONLY_WARNING = "asks for more than PG, but the API serves PG images only to anonymous requests"


@pytest.mark.parametrize(
    ("argument", "api_key", "warnings"),
    [
        ("nsfw=X", None, 1),
        ("nsfw=true", None, 1),
        ("browsing_level=12", None, 1),
        ("browsing_level=1", None, 0),
        ("nsfw=None", None, 0),
        ("nsfw=X", "good-key", 0),
        ("browsing_level=28", "good-key", 0),
    ],
)
def test_more_than_pg_without_a_key_is_one_warning(
    server: FakeCivitai, store: Path, argument: str, api_key: str | None, warnings: int
) -> None:
    server.add_image_item(images.jpeg_rgb())

    result = run_crawl(server, store, argument, api_key=api_key, LOG_LEVEL="INFO")

    assert result.returncode == 0, result.stderr[-3000:]
    found = [line for line in result.stderr.splitlines() if PG_ONLY_WARNING in line]
    assert len(found) == warnings, found
    if warnings:
        assert " WARNING: " in found[0] and "set CIVITAI_API_KEY" in found[0], found[0]
        assert found[0].split(" WARNING: ")[1].startswith(f"{argument} asks"), found[0]
