"""The exit status of ``scrapy crawl civitai``, end to end: 1 when the crawl could not do its work.

1 for the finish reasons in ``outcomes.FAILED_FINISH_REASONS`` (``api_error``, ``cursor_loop``);
0 for any other end, a pause included; 2 for a bad argument or setting (``tests/test_crawl_api.py``).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from civitai_spider import outcomes
from tests import images
from tests.conftest import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.fake_civitai import FakeCivitai, Fault


def add_items(server: FakeCivitai, count: int) -> list[int]:
    return [server.add_image_item(images.jpeg_rgb())["id"] for _ in range(count)]


def test_the_failing_finish_reasons() -> None:
    assert outcomes.FAILED_FINISH_REASONS == {"api_error", "cursor_loop"}


def test_api_error_exits_with_1(server: FakeCivitai, store: Path) -> None:
    add_items(server, 2)
    server.inject(server.api_url, Fault.status(400))

    result = run_crawl(server, store)

    assert result.finish_reason == "api_error"
    assert result.returncode == 1, result.stderr[-3000:]


def test_cursor_loop_exits_with_1(store: Path) -> None:
    with FakeCivitai(cursor_loop=True) as server:
        add_items(server, 4)
        result = run_crawl(server, store, "limit=2")

    assert result.finish_reason == "cursor_loop"
    assert result.returncode == 1, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("finish_reason", "arguments", "settings"),
    [
        pytest.param("finished", (), {}, id="finished"),
        pytest.param("finished", ("max_pages=1",), {}, id="max_pages"),
        pytest.param("closespider_itemcount", (), {"CLOSESPIDER_ITEMCOUNT": "2"}, id="closespider_itemcount"),
        pytest.param("caught_up", ("sort=Newest", "stop_after_seen=2"), {}, id="caught_up"),
    ],
)
def test_other_ends_exit_with_0(
    server: FakeCivitai,
    store: Path,
    finish_reason: str,
    arguments: tuple[str, ...],
    settings: dict[str, str],
) -> None:
    ids = add_items(server, 12)
    if finish_reason == "caught_up":
        store.mkdir(parents=True)
        (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{image_id}\n" for image_id in ids))

    result = run_crawl(server, store, "limit=3", *arguments, **settings)

    assert result.finish_reason == finish_reason, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_pause_exits_with_0(server: FakeCivitai, store: Path, tmp_path: Path) -> None:
    add_items(server, 12)
    server.api_delay = 0.3  # four slow pages: time to stop in the middle
    process = subprocess.Popen(
        crawl_command(server, store, "limit=3", JOBDIR=str(tmp_path / "job")),
        cwd=REPOSITORY,
        env=crawl_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(server.api_requests()) < 2:
        assert time.monotonic() < deadline and process.poll() is None, "the crawl did not get going"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # one Ctrl-C: Scrapy's graceful stop
    stdout, stderr = process.communicate(timeout=60)

    result = CrawlResult(process.returncode, stdout, stderr, store)
    assert result.finish_reason == "shutdown", stderr[-3000:]
    assert result.returncode == 0, stderr[-3000:]
