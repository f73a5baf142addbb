"""The API key goes to the API and nowhere else: not to other hosts, logs, stats, feeds, JOBDIR or the store.

One real crawl per way of giving the key (the environment, ``-s CIVITAI_API_KEY=``), at
DEBUG, with ``-O items.jsonl`` and a JOBDIR, through the code paths that log requests:
retried pages and images, a failed image, a refused redirect.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import images
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment
from tests.support.fake_civitai import ME_PATH, FakeCivitai, Fault

API_KEY = "civitai-secret-key-9d41e07c"


def files_under(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*") if path.is_file()]


@pytest.mark.parametrize("delivery", ["environment", "setting"])
def test_api_key_reaches_the_api_only_and_never_any_output(
    server: FakeCivitai, store: Path, tmp_path: Path, delivery: str
) -> None:
    for _ in range(4):
        server.add_image_item(images.jpeg_rgb())
    retried = server.add_image_item(images.png_rgb())
    server.inject(retried["url"], Fault.status(503, retry_after="0"))
    server.add_image_item(None)  # a 404: a WARNING and an error_log.txt line
    moved = server.add_image_item(images.jpeg_rgb())
    server.inject(moved["url"], Fault.redirect(server.api_url + "?leak=check"))  # refused: http
    server.inject_page(server.cursor_for(2), Fault.status(429), Fault.html_200())
    feed, jobdir = tmp_path / "items.jsonl", tmp_path / "job"

    settings = {"JOBDIR": str(jobdir), "LOG_LEVEL": "DEBUG"}
    if delivery == "setting":
        settings["CIVITAI_API_KEY"] = API_KEY
    command = crawl_command(server, store, "limit=2", **settings) + ["-O", str(feed)]
    process = subprocess.run(
        command,
        cwd=REPOSITORY,
        env=crawl_environment(API_KEY if delivery == "environment" else None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = CrawlResult(process.returncode, process.stdout, process.stderr, store)

    assert result.returncode == 0, result.stderr
    assert result.finish_reason == "finished", result.stderr
    # The key was used: its check (/api/v1/me) and every API page request carried it...
    assert [request.path for request in server.api_requests()].count(ME_PATH) == 1
    assert len(server.page_requests()) == 4 + 2  # four pages, one of them failing twice
    assert all(
        request.headers.get("authorization") == f"Bearer {API_KEY}" for request in server.api_requests()
    )
    # ...and nothing else did, not even the image redirected to the API host.
    assert server.cdn_requests()
    assert all("authorization" not in request.headers for request in server.cdn_requests())
    assert result.stats["retry/count"] >= 3
    assert result.stats["civitai/failed"] == 2  # the 404 and the refused redirect

    # Logs at DEBUG, the stats dump included.
    assert "Dumping Scrapy stats" in result.stderr
    assert API_KEY not in result.stdout + result.stderr
    assert API_KEY not in repr(result.stats)
    # The feed, the JOBDIR files and every file in the store.
    assert len(feed.read_text().splitlines()) == 5
    written = files_under(store, jobdir)
    assert any(path.name == "requests.queue" or path.parent.name == "requests.queue" for path in written)
    assert (store / "error_log.txt").exists()
    for path in [feed, *written]:
        assert API_KEY.encode() not in path.read_bytes(), path
