"""``split`` in one process, end to end: concurrent cursor chains, their bound, their pause.

No Redis here: the chains live in the spider (and, with JOBDIR, in its saved state).
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support import images, videos
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai

LEVELS = (1, 2, 4, 8, 16)
BODY = images.jpeg_rgb((64, 48))


def add_items(server: FakeCivitai, count: int, levels: tuple[int, ...] = LEVELS) -> list[dict[str, Any]]:
    return [server.add_image_item(BODY, browsingLevel=levels[index % len(levels)]) for index in range(count)]


def pages_by_level(server: FakeCivitai) -> Counter[str]:
    return Counter(request.query.get("browsingLevel", "-") for request in server.api_requests())


def most_pages_at_once(server: FakeCivitai, seconds: float) -> int:
    """The most API requests that arrived within ``seconds`` of each other (each is that slow)."""
    arrivals = sorted(request.time for request in server.api_requests())
    return max(sum(1 for other in arrivals if start <= other < start + seconds) for start in arrivals)


def test_split_walks_each_level_as_its_own_chain_and_saves_everything(
    server: FakeCivitai, store: Path
) -> None:
    items = add_items(server, 60)
    result = run_crawl(server, store, "nsfw=X", "split=browsing_level", "limit=5")

    assert (result.returncode, result.finish_reason) == (0, "finished"), result.stderr[-3000:]
    assert result.stats["civitai/saved"] == 60
    assert sorted(result.ids_recorded()) == sorted(item["id"] for item in items)
    # 12 items per level, 5 a page: 3 pages each, none with nsfw beside browsingLevel.
    assert pages_by_level(server) == {str(level): 3 for level in LEVELS}
    assert all("nsfw" not in request.query for request in server.api_requests())
    assert "Walking 5 chains, 2 API page(s) at once" in result.stderr


@pytest.mark.parametrize("concurrency", [2, 4])
def test_at_most_api_concurrency_pages_are_in_flight(
    server: FakeCivitai, store: Path, concurrency: int
) -> None:
    add_items(server, 40)
    server.api_delay = 0.4
    result = run_crawl(
        server, store, "nsfw=X", "split=browsing_level", "limit=4", CIVITAI_API_CONCURRENCY=str(concurrency)
    )

    assert result.finish_reason == "finished", result.stderr[-3000:]
    assert sum(pages_by_level(server).values()) == 5 * 2
    # Each answer takes 0.4 s: requests that arrive within 0.35 s of each other were in flight together.
    assert most_pages_at_once(server, 0.35) == concurrency


def test_split_by_base_models_and_media(server: FakeCivitai, store: Path) -> None:
    kinds = [("SDXL 1.0", "image"), ("Pony", "image"), ("Pony", "video"), ("Flux.1 D", "image")]
    video = videos.mp4()
    for index in range(16):
        base_model, kind = kinds[index % len(kinds)]
        server.add_image_item(video if kind == "video" else BODY, baseModel=base_model, type=kind)
    result = run_crawl(
        server,
        store,
        "base_models=SDXL 1.0,Pony",
        "media=all",
        "split=base_models,media",
        CIVITAI_REQUIRE_PROMPT="false",
    )

    assert result.finish_reason == "finished", result.stderr[-3000:]
    asked = Counter((request.query["baseModels"], request.query["type"]) for request in server.api_requests())
    assert asked == {
        ("SDXL 1.0", "image"): 1,
        ("SDXL 1.0", "video"): 1,
        ("Pony", "image"): 1,
        ("Pony", "video"): 1,
    }
    # SDXL and Pony images, Pony videos; Flux is not asked for.
    assert (result.stats["civitai/saved/image"], result.stats["civitai/saved/video"]) == (8, 4)


def test_a_bad_split_is_a_usage_error(server: FakeCivitai, store: Path) -> None:
    result = run_crawl(server, store, "split=base_models")
    assert result.returncode == 2
    assert "error: split=base_models needs base_models=" in result.stderr
    assert server.requests == []


def test_jobdir_pause_then_resume_goes_on_in_every_chain(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    items = add_items(server, 100)
    server.api_delay = 0.2  # 5 chains of 10 pages of 2: several seconds to stop in the middle of
    jobdir = tmp_path / "job"
    arguments = ("nsfw=X", "split=browsing_level", "limit=2")
    process = subprocess.Popen(
        crawl_command(server, store, *arguments, JOBDIR=str(jobdir)),
        cwd=REPOSITORY,
        env=crawl_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(server.api_requests()) < 12:
        assert time.monotonic() < deadline and process.poll() is None, "the crawl did not get going"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # one Ctrl-C: a pause
    stdout, stderr = process.communicate(timeout=60)
    paused = CrawlResult(process.returncode, stdout, stderr, store)
    assert (paused.returncode, paused.finish_reason) == (0, "shutdown"), stderr[-3000:]
    before = Counter(
        (request.query["browsingLevel"], request.query.get("cursor")) for request in server.api_requests()
    )
    server.clear_requests()
    server.api_delay = 0

    resumed = run_crawl(server, store, *arguments, JOBDIR=str(jobdir))

    assert (resumed.returncode, resumed.finish_reason) == (0, "finished"), resumed.stderr[-3000:]
    assert "Resuming a paused job after" in resumed.stderr
    after = Counter(
        (request.query["browsingLevel"], request.query.get("cursor")) for request in server.api_requests()
    )
    assert all(
        cursor is not None for level, cursor in after if before[(level, None)]
    )  # no chain from scratch
    every_page = {
        (str(level), server.cursor_for(offset) if offset else None)
        for level in LEVELS
        for offset in range(0, math.ceil(20 / 2) * 2, 2)
    }
    assert set(before) | set(after) == every_page
    # A page asked for before the pause comes again only if its answer never arrived.
    assert sum((before & after).values()) <= 2
    assert sorted(set(paused.ids_recorded() + resumed.ids_recorded())) == sorted(item["id"] for item in items)
