"""JOBDIR across runs, end to end: a job that ended walks again from the first page.

Only a pause (finish reason ``shutdown``: one Ctrl-C, SIGTERM, a Scrapyd cancel) is resumed
from its saved page request; that case is ``test_jobdir_pause_with_one_ctrl_c_then_resume_...``
in ``tests/e2e/test_kill_and_resume.py``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support import images
from tests.support.crawls import CrawlResult, finished_crawl, run_crawl, start_crawl, wait_for
from tests.support.fake_civitai import FakeCivitai, Fault

ITEM_COUNT = 12
PAGE_SIZE = "limit=3"  # four pages


def cursors_asked(server: FakeCivitai) -> list[str | None]:
    """The cursor of each API page asked for, in order (``None``: the first page)."""
    return [request.query.get("cursor") for request in server.api_requests()]


def whole_walk(server: FakeCivitai) -> list[str | None]:
    return [None, *(server.cursor_for(offset) for offset in range(3, ITEM_COUNT, 3))]


def check_new_walk(result: CrawlResult, server: FakeCivitai) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.finish_reason == "finished", result.stderr[-3000:]
    assert cursors_asked(server) == whole_walk(server)  # every page, from the first, once
    assert "a second time" not in result.stderr
    assert "Resuming a paused job" not in result.stderr
    saved = result.stats.get("civitai/saved", 0)
    assert saved + result.stats.get("civitai/dropped/already_downloaded", 0) == ITEM_COUNT
    assert sorted(result.ids_recorded()) == sorted(item["id"] for item in server.items)


@pytest.fixture
def items(server: FakeCivitai) -> None:
    for _ in range(ITEM_COUNT):
        server.add_image_item(images.jpeg_rgb())


@pytest.mark.usefixtures("items")
def test_a_finished_job_run_again_walks_again_from_the_first_page(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    jobdir = str(tmp_path / "job")
    first = run_crawl(server, store, PAGE_SIZE, JOBDIR=jobdir)
    assert first.finish_reason == "finished", first.stderr[-3000:]
    assert cursors_asked(server) == whole_walk(server)
    server.clear_requests()

    again = run_crawl(server, store, PAGE_SIZE, JOBDIR=jobdir)

    check_new_walk(again, server)
    assert again.stats["civitai/dropped/already_downloaded"] == ITEM_COUNT
    assert "The last run of this job ended (finished): starting a new walk from page 1" in again.stderr

    # And so on: the walk that ended again is no pause either.
    server.clear_requests()
    check_new_walk(run_crawl(server, store, PAGE_SIZE, JOBDIR=jobdir), server)


@pytest.mark.usefixtures("items")
@pytest.mark.parametrize(
    ("end", "arguments", "settings"),
    [
        # The next page is asked for before a page's items, so this end leaves a page
        # request queued in JOBDIR: the new walk must not start from it.
        pytest.param("closespider_itemcount", (), {"CLOSESPIDER_ITEMCOUNT": "2"}, id="closespider_itemcount"),
        pytest.param("finished", ("max_pages=2",), {}, id="max_pages"),
        pytest.param("api_error", (), {}, id="api_error"),
    ],
)
def test_a_job_that_ended_early_run_again_walks_again_from_the_first_page(
    server: FakeCivitai,
    store: Path,
    tmp_path: Path,
    end: str,
    arguments: tuple[str, ...],
    settings: dict[str, str],
) -> None:
    jobdir = str(tmp_path / "job")
    if end == "api_error":
        server.inject_page(server.cursor_for(6), Fault.status(400))  # the third page
    else:
        server.api_delay = 0.2  # the next page is on its way when the first items are saved
    first = run_crawl(server, store, PAGE_SIZE, *arguments, JOBDIR=jobdir, **settings)
    assert first.finish_reason == end, first.stderr[-3000:]
    assert len(server.api_requests()) < len(whole_walk(server))
    server.clear_requests()
    server.api_delay = 0

    again = run_crawl(server, store, PAGE_SIZE, JOBDIR=jobdir)

    check_new_walk(again, server)
    assert f"The last run of this job ended ({end}): starting a new walk from page 1" in again.stderr
    if end == "closespider_itemcount":
        assert "Dropped 1 page request(s) that the last run left queued in JOBDIR" in again.stderr


def pause(server: FakeCivitai, store: Path, jobdir: str, *arguments: str) -> CrawlResult:
    """Run a crawl of ``arguments`` in ``jobdir`` and pause it (one Ctrl-C) once images flow."""
    server.cdn_delay = 0.5
    log = store.parent / "paused.log"
    process = start_crawl(server, store, log, *arguments, JOBDIR=jobdir)
    wait_for(lambda: bool(server.cdn_requests()), process, log)
    process.send_signal(signal.SIGINT)
    paused = finished_crawl(process, log, store)
    assert (paused.returncode, paused.finish_reason) == (0, "shutdown"), paused.stderr[-3000:]
    server.cdn_delay = 0
    server.clear_requests()
    return paused


@pytest.mark.usefixtures("items")
@pytest.mark.parametrize(
    ("arguments", "settings", "named"),
    [
        pytest.param((PAGE_SIZE, "sort=Oldest"), {}, "sort='Most Reactions', not sort='Oldest'", id="sort"),
        pytest.param(
            (PAGE_SIZE, "username=someone"), {}, "username unset, not username='someone'", id="added"
        ),
        pytest.param((), {}, "limit='3', not limit='200'", id="left-out"),
        pytest.param((PAGE_SIZE,), {"CIVITAI_WITH_TAGS": "true"}, "CIVITAI_WITH_TAGS=False", id="setting"),
    ],
)
def test_a_paused_job_resumed_with_other_arguments_exits_2_naming_the_difference(
    server: FakeCivitai,
    store: Path,
    tmp_path: Path,
    arguments: tuple[str, ...],
    settings: dict[str, str],
    named: str,
) -> None:
    jobdir = str(tmp_path / "job")
    pause(server, store, jobdir, PAGE_SIZE)

    other = run_crawl(server, store, *arguments, JOBDIR=jobdir, **settings)

    assert other.returncode == 2, other.stderr[-3000:]
    assert "Traceback" not in other.stderr
    [error] = [line for line in other.stderr.splitlines() if "error:" in line]
    assert "error: JOBDIR=" in error and named in error, error
    assert "CIVITAI_NEW_WALK" in error
    assert not server.requests

    # The pause is still there: the same arguments resume it.
    resumed = run_crawl(server, store, PAGE_SIZE, JOBDIR=jobdir)
    assert (resumed.returncode, resumed.finish_reason) == (0, "finished"), resumed.stderr[-3000:]
    assert "Resuming a paused job" in resumed.stderr
    assert sorted(resumed.ids_recorded()) == sorted(item["id"] for item in server.items)


@pytest.mark.usefixtures("items")
def test_civitai_new_walk_starts_a_paused_job_over_with_other_arguments(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    jobdir = str(tmp_path / "job")
    pause(server, store, jobdir, PAGE_SIZE)

    other = run_crawl(server, store, PAGE_SIZE, "sort=Oldest", JOBDIR=jobdir, CIVITAI_NEW_WALK="true")

    assert (other.returncode, other.finish_reason) == (0, "finished"), other.stderr[-3000:]
    assert "CIVITAI_NEW_WALK: not resuming the paused job" in other.stderr
    assert "cursor" not in server.page_requests()[0].query
    assert sorted(other.ids_recorded()) == sorted(item["id"] for item in server.items)
