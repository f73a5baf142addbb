"""Stops that stop, end to end through the real ``scrapy crawl``: a ``CLOSESPIDER_*`` limit or
a Ctrl-C lets the downloads under way finish and starts none of the items already listed; a
paused job (JOBDIR) lists those again when it resumes.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import images
from tests.support.crawls import CrawlResult, finished_crawl, run_crawl, start_crawl, wait_for
from tests.support.fake_civitai import FakeCivitai

IN_FLIGHT = 32  # CIVITAI_IMAGES_IN_FLIGHT's default


def add_images(server: FakeCivitai, count: int) -> list[int]:
    body = images.jpeg_rgb()
    return [server.add_image_item(body)["id"] for _ in range(count)]


def outcomes_add_up(result: CrawlResult) -> None:
    stats = result.stats
    dropped = sum(value for key, value in stats.items() if key.startswith("civitai/dropped/"))
    saved, failed = stats.get("civitai/saved", 0), stats.get("civitai/failed", 0)
    assert saved + dropped + failed == stats["civitai/items_seen"], stats


@pytest.mark.parametrize("count", [50, 100])
def test_closespider_itemcount_saves_that_many_give_or_take_the_images_in_flight(
    server: FakeCivitai, store: Path, count: int
) -> None:
    add_images(server, 3000)

    result = run_crawl(server, store, CLOSESPIDER_ITEMCOUNT=str(count), CIVITAI_THRESHOLDS="{}")

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.finish_reason == "closespider_itemcount"
    saved = result.stats["civitai/saved"]
    assert count <= saved <= count + IN_FLIGHT, saved
    assert len(result.ids_recorded()) == saved
    # What was listed and not started is counted, not downloaded.
    assert len(server.cdn_requests()) == saved
    assert result.stats["civitai/dropped/stopped"] > 0
    outcomes_add_up(result)


def test_a_smaller_in_flight_bound_is_a_closer_stop(server: FakeCivitai, store: Path) -> None:
    add_images(server, 1000)

    result = run_crawl(
        server, store, CLOSESPIDER_ITEMCOUNT="20", CIVITAI_IMAGES_IN_FLIGHT="3", CIVITAI_THRESHOLDS="{}"
    )

    assert result.finish_reason == "closespider_itemcount"
    assert 20 <= result.stats["civitai/saved"] <= 23
    assert len(server.cdn_requests()) == result.stats["civitai/saved"]


def test_closespider_timeout_stops_the_downloads_not_the_listing(server: FakeCivitai, store: Path) -> None:
    add_images(server, 600)
    server.cdn_delay = 0.2  # 8 at a time: 40 images a second, 15 s for the listing

    started = time.monotonic()
    result = run_crawl(
        server, store, CLOSESPIDER_TIMEOUT="2", CIVITAI_IMAGES_IN_FLIGHT="8", CIVITAI_THRESHOLDS="{}"
    )

    assert result.finish_reason == "closespider_timeout"
    assert time.monotonic() - started < 10, "it went on downloading what was listed"
    saved = result.stats["civitai/saved"]
    assert 0 < saved < 200
    assert len(server.cdn_requests()) == saved
    outcomes_add_up(result)


def test_a_paused_job_stops_within_seconds_and_resumes_with_what_it_left(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    ids = add_images(server, 400)  # two pages of 200
    server.cdn_delay = 0.05  # 4 at a time: 80 images a second, 5 s for the listing
    jobdir = tmp_path / "job"
    log = tmp_path / "paused.log"
    process = start_crawl(
        server, store, log, JOBDIR=str(jobdir), CIVITAI_IMAGES_IN_FLIGHT="4", CIVITAI_THRESHOLDS="{}"
    )
    wait_for(lambda: len(server.cdn_requests()) >= 40, process, log)
    process.send_signal(signal.SIGINT)  # one Ctrl-C: a pause
    signalled = time.monotonic()
    paused = finished_crawl(process, log, store)
    stderr = paused.stderr

    assert time.monotonic() - signalled < 3, "the pause went on downloading"
    assert (paused.returncode, paused.finish_reason) == (0, "shutdown"), stderr[-3000:]
    saved_before = paused.ids_recorded()
    assert 40 <= len(saved_before) < 200
    assert "the job resumes at page 1" in stderr
    outcomes_add_up(paused)
    requested_before = Counter(request.path for request in server.cdn_requests())

    server.clear_requests()
    server.cdn_delay = 0
    resumed = run_crawl(server, store, JOBDIR=str(jobdir), CIVITAI_THRESHOLDS="{}")

    assert (resumed.returncode, resumed.finish_reason) == (0, "finished"), resumed.stderr[-3000:]
    assert "Resuming a paused job" in resumed.stderr
    assert "cursor" not in server.page_requests()[0].query  # page 1 again: its items were not all done
    # Nothing skipped, nothing twice: every id recorded once, every image downloaded once.
    assert sorted(resumed.ids_recorded()) == sorted(ids)
    assert resumed.stats["civitai/dropped/already_downloaded"] == len(saved_before)
    requested = requested_before + Counter(request.path for request in server.cdn_requests())
    assert len(requested) == len(ids) and set(requested.values()) == {1}
