"""The exit status of ``scrapy crawl civitai``, end to end: 1 when the crawl could not do its work.

1 or 2 for the finish reasons in ``outcomes.EXIT_STATUSES`` (``api_error``, ``cursor_loop``,
``redis_error``: ``tests/e2e/test_shared_crawl.py``; ``region_blocked``, ``api_key_refused``,
``model_not_found``: ``tests/e2e/test_crawl_server_paths.py``; ``store_error``:
``tests/e2e/test_crawl_store_failures.py``);
0 for any other end (a pause: ``tests/e2e/test_kill_and_resume.py``); 2 for a bad argument or setting
(``tests/e2e/test_crawl_api.py``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from civitai_spider import outcomes
from tests.support import images
from tests.support.crawls import (
    REPOSITORY,
    CrawlResult,
    crawl_command,
    crawl_environment,
    run_crawl,
    start_crawl,
    wait_for,
)
from tests.support.fake_civitai import FakeCivitai, Fault


def add_items(server: FakeCivitai, count: int) -> list[int]:
    return [server.add_image_item(images.jpeg_rgb())["id"] for _ in range(count)]


def readme_exit_statuses() -> dict[str, int]:
    """``finish_reason`` -> exit status, from the README's table of them."""
    readme = (REPOSITORY / "README.md").read_text()
    section = readme[readme.index("## How a crawl ends") :]
    section = section[: section.index("\n## ", 1)]
    statuses = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) == 3 and cells[2].isdigit():
            for reason in re.findall(r"`([a-z_]+)`", cells[0]):
                statuses[reason] = int(cells[2])
    return statuses


def test_the_readme_lists_every_finish_reason_with_its_exit_status() -> None:
    assert readme_exit_statuses() == outcomes.EXIT_STATUSES


def test_a_finish_reason_nobody_planned_exits_with_1() -> None:
    assert outcomes.exit_status("cancelled") == 1


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


@pytest.mark.parametrize(
    ("finish_reason", "settings"),
    [
        pytest.param("closespider_pagecount", {"CLOSESPIDER_PAGECOUNT": "2"}, id="pagecount"),
        pytest.param(
            "closespider_pagecount_no_item", {"CLOSESPIDER_PAGECOUNT_NO_ITEM": "1"}, id="pagecount_no_item"
        ),
        pytest.param("closespider_timeout", {"CLOSESPIDER_TIMEOUT": "1"}, id="timeout"),
        pytest.param(
            "closespider_timeout_no_item", {"CLOSESPIDER_TIMEOUT_NO_ITEM": "1"}, id="timeout_no_item"
        ),
    ],
)
def test_closespider_limits_exit_with_0(
    server: FakeCivitai, store: Path, finish_reason: str, settings: dict[str, str]
) -> None:
    add_items(server, 12)
    server.cdn_delay = 1.5  # the time limits come before the images

    result = run_crawl(server, store, "limit=3", **settings)

    assert (result.returncode, result.finish_reason) == (0, finish_reason), result.stderr[-3000:]


@pytest.mark.parametrize(
    ("spider", "finish_reason", "status", "settings"),
    [
        pytest.param("starts_badly", "start_error", 1, {}, id="start_error"),
        pytest.param(
            "callback_fails", "closespider_errorcount", 0, {"CLOSESPIDER_ERRORCOUNT": "1"}, id="errorcount"
        ),
    ],
)
def test_ends_only_a_broken_spider_reaches(
    server: FakeCivitai, store: Path, spider: str, finish_reason: str, status: int, settings: dict[str, str]
) -> None:
    command = crawl_command(server, store, SPIDER_MODULES="tests.support.exit_spiders", **settings)
    command[command.index("civitai")] = spider
    process = subprocess.run(
        command, cwd=REPOSITORY, env=crawl_environment(), capture_output=True, text=True, timeout=60
    )
    result = CrawlResult(process.returncode, process.stdout, process.stderr, store)

    assert (result.returncode, result.finish_reason) == (status, finish_reason), result.stderr[-3000:]


def test_ctrl_c_twice_exits_with_130(server: FakeCivitai, store: Path, tmp_path: Path) -> None:
    add_items(server, 50)
    server.cdn_delay = 5  # the graceful stop would wait for these
    log = tmp_path / "crawl.log"
    process = start_crawl(server, store, log)
    wait_for(lambda: bool(server.cdn_requests()), process, log)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=30) == 130, log.read_text()[-3000:]
    assert "forcing unclean shutdown" in log.read_text()
