"""Many workers on one crawl through Redis, end to end: real ``scrapy crawl`` processes, a real Redis.

Every worker runs the same command (``-a nsfw=X -a split=browsing_level``: five chains) against
the fake Civitai, saving to one folder. The checks read what a user would: the files, the ids
in Redis, the crawl-wide counts in Redis, and which pages and images the fake server served.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from civitai_spider.stores.redis_ids import RedisIds
from tests.support.crawls import REPOSITORY, crawl_command, crawl_environment
from tests.support.fake_civitai import FakeCivitai, Fault
from tests.support.servers import RedisServer, free_ports, redis_ids
from tests.support.workers import (
    BODY,
    LEVELS,
    LIMIT,
    SHARED_ARGUMENTS,
    TEMPORARY_PREFIX,
    Workers,
    add_items,
    wait_for_files,
)


@pytest.fixture
def workers(server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(server, store, redis_url, tmp_path / "logs")
    yield pool
    pool.kill()


def shared_stats(redis_url: str, walk: int = 1) -> dict[str, int]:
    """The crawl-wide counts of the one crawl in Redis."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        [key] = client.keys(f"civitai:crawl:*:{walk}:stats")
        return {name: int(value) for name, value in client.hgetall(key).items()}


def shared_chains(redis_url: str) -> dict[str, dict[str, Any]]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        [key] = client.keys("civitai:crawl:*:1:chains")
        return {name: json.loads(value) for name, value in client.hgetall(key).items()}


def expected_pages(server: FakeCivitai) -> dict[tuple[str, str | None], int]:
    """(browsingLevel, cursor) of every page of every chain -> 1."""
    pages = {}
    for level in LEVELS:
        listed = sum(1 for item in server.items if item["browsingLevel"] == level)
        for page in range(max(math.ceil(listed / LIMIT), 1)):
            pages[(str(level), server.cursor_for(page * LIMIT) if page else None)] = 1
    return pages


def fetched_pages(server: FakeCivitai) -> Counter[tuple[str, str | None]]:
    return Counter(
        (request.query["browsingLevel"], request.query.get("cursor")) for request in server.api_requests()
    )


def record_ids(redis_url: str, ids: list[int]) -> None:
    async def run() -> None:
        store = RedisIds(redis_url, "civitai")
        try:
            await store.record(ids)
        finally:
            await store.close()

    asyncio.run(run())


def check_everything_saved_once(
    server: FakeCivitai, store: Path, redis_url: str, saved: list[dict[str, Any]]
) -> None:
    """Every image of ``saved`` is in the store, whole, its id recorded; none was downloaded twice."""
    for item in saved:
        assert (store / f"{item['id']}.jpg").read_bytes() == BODY
        assert (store / f"{item['id']}_meta.json").exists()
    assert {item["id"] for item in saved} <= redis_ids(redis_url)
    downloads = Counter(request.path for request in server.cdn_requests())
    assert all(downloads[urlsplit(item["url"]).path] == 1 for item in saved)
    assert not list(store.glob(TEMPORARY_PREFIX + "*"))


def check_counts_reconcile(stats: dict[str, int]) -> None:
    dropped = sum(value for name, value in stats.items() if name.startswith("dropped/"))
    assert stats.get("saved", 0) + dropped + stats.get("failed", 0) == stats["items_seen"], stats


def test_three_workers_share_one_crawl_of_five_chains(
    server: FakeCivitai, store: Path, redis_url: str, workers: Workers
) -> None:
    items = add_items(server, 3000)
    below = items[:30]
    for item in below:
        item["stats"]["heartCount"] = 0
    failing = items[30:40]
    for item in failing:
        server.inject_always(item["url"], Fault.status(404))
    done_before = items[40:60]
    record_ids(redis_url, [item["id"] for item in done_before])
    listed_twice = items[60:70]
    server.items.extend(listed_twice)  # at the end of their chains: on a later page
    saved = items[60:]  # the ones listed twice too, once

    workers.start(3)
    results = workers.wait()

    for result in results:
        assert (result.returncode, result.finish_reason) == (0, "finished"), result.stderr[-3000:]
        assert result.stats.get("civitai/saved", 0) > 0  # every worker did some of it
    check_everything_saved_once(server, store, redis_url, saved)
    stats = shared_stats(redis_url)
    assert stats["items_seen"] == 3010
    assert stats["saved"] == len(saved) == sum(result.stats.get("civitai/saved", 0) for result in results)
    assert stats["dropped/below_threshold"] == 30
    # A repeat is a duplicate while its first copy is queued, already downloaded once it is saved.
    assert stats["dropped/already_downloaded"] >= 20
    assert stats["dropped/already_downloaded"] + stats.get("dropped/duplicate", 0) == 30
    assert stats["failed"] == 10
    check_counts_reconcile(stats)
    # A failing image is one worker's, once: one line in the error log, not a loop.
    lines = (store / "error_log.txt").read_text().splitlines()
    assert sorted(int(line.split("\t")[1]) for line in lines) == sorted(item["id"] for item in failing)
    assert fetched_pages(server) == expected_pages(server)  # every page of every chain, once
    assert {chain["end"] for chain in shared_chains(redis_url).values()} == {"end"}


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [11, 22, 33])
def test_workers_killed_at_random_moments_lose_nothing(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path, seed: int
) -> None:
    chance = random.Random(seed)
    items = add_items(server, 1500)
    server.cdn_delay = 0.05  # with 8 images in flight per worker, the crawl lasts several seconds
    # A short takeover time, so that what a killed worker held is soon another's.
    settings = {"CIVITAI_REDIS_CLAIM_AFTER": "2", "CIVITAI_IMAGES_IN_FLIGHT": "8"}
    workers = Workers(server, store, redis_url, tmp_path / "logs", **settings)
    try:
        workers.start(3)
        wait_for_files(store, 100)
        for _ in range(3):
            time.sleep(chance.uniform(0.1, 1.0))
            victim = chance.choice(workers.live())
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            workers.start(1)  # a replacement, as a supervisor would
        results = workers.wait(timeout=240)
    finally:
        workers.kill()

    # A replacement that joined after the end would have started a second walk.
    assert "(walk 2)" not in workers.log_text(), "the kills came too late: make the crawl longer"
    killed = [result for result in results if result.returncode == -signal.SIGKILL]
    assert killed, "no worker was killed mid-crawl"
    for result in results:
        if result not in killed:
            assert (result.returncode, result.finish_reason) == (0, "finished"), result.stderr[-3000:]
    check_everything_saved_once_or_after_a_takeover(server, store, redis_url, items, workers.log_text())
    check_counts_reconcile(shared_stats(redis_url))
    chains = shared_chains(redis_url)
    assert {chain["end"] for chain in chains.values()} == {"end"}
    pages = fetched_pages(server)
    assert set(pages) == set(expected_pages(server))  # no chain dropped, none forked
    assert sum(chain["pages"] for chain in chains.values()) == len(expected_pages(server))
    if max(pages.values()) > 1:
        assert re.search(r"Took over \d+ pages message", workers.log_text())


def check_everything_saved_once_or_after_a_takeover(
    server: FakeCivitai, store: Path, redis_url: str, items: list[dict[str, Any]], logs: str
) -> None:
    for item in items:
        assert (store / f"{item['id']}.jpg").read_bytes() == BODY
    assert {item["id"] for item in items} <= redis_ids(redis_url)
    downloads = Counter(request.path for request in server.cdn_requests())
    if max(downloads.values()) > 1:  # only what a killed worker held is downloaded again
        assert re.search(r"Took over \d+ images message", logs)
    assert not list(store.glob(TEMPORARY_PREFIX + "*"))


@pytest.mark.heavy
def test_a_redis_restart_mid_crawl_loses_nothing(server: FakeCivitai, store: Path, tmp_path: Path) -> None:
    items = add_items(server, 1500)
    server.cdn_delay = 0.01
    with RedisServer(tmp_path / "redis") as own_redis:
        workers = Workers(server, store, own_redis.url, tmp_path / "logs")
        workers.start(2)
        wait_for_files(store, 300)
        own_redis.restart()  # SIGTERM, then the same port and data (appendonly yes)
        results = workers.wait()
        for result in results:
            assert (result.returncode, result.finish_reason) == (0, "finished"), result.stderr[-3000:]
        assert "does not answer" in workers.log_text() and "answers again" in workers.log_text()
        check_everything_saved_once_or_after_a_takeover(
            server, store, own_redis.url, items, workers.log_text()
        )
        check_counts_reconcile(shared_stats(own_redis.url))
        assert set(fetched_pages(server)) == set(expected_pages(server))


@pytest.mark.heavy
def test_redis_gone_longer_than_the_timeout_stops_with_redis_error_and_the_crawl_resumes(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    items = add_items(server, 600)
    server.cdn_delay = 0.02
    with RedisServer(tmp_path / "redis") as own_redis:
        workers = Workers(
            server,
            store,
            own_redis.url,
            tmp_path / "logs",
            CIVITAI_REDIS_TIMEOUT="3",
            CIVITAI_REDIS_CLAIM_AFTER="1",
        )
        workers.start(1)
        wait_for_files(store, 50)
        own_redis.kill()
        stopped_at = time.monotonic()
        [result] = workers.wait(timeout=60)
        assert time.monotonic() - stopped_at < 30
        assert (result.returncode, result.finish_reason) == (1, "redis_error"), result.stderr[-3000:]
        assert re.search(r"ERROR: Stopping: Redis \S+ did not answer for 3 s", result.stderr)
        saved_before = set(redis_ids_after_restart(own_redis))

        workers.start(1)  # the same command, once Redis is back: the crawl goes on
        results = workers.wait()
        assert (results[-1].returncode, results[-1].finish_reason) == (0, "finished"), results[-1].stderr[
            -3000:
        ]
        assert "Joined shared crawl" in results[-1].stderr
        check_everything_saved_once_or_after_a_takeover(
            server, store, own_redis.url, items, workers.log_text()
        )
        check_counts_reconcile(shared_stats(own_redis.url))
        assert saved_before  # the first worker's work was kept, not done again from scratch
        assert results[-1].stats["civitai/saved"] < len(items)


def redis_ids_after_restart(server: RedisServer) -> set[int]:
    server.start()
    return redis_ids(server.url)


def test_a_worker_that_cannot_reach_redis_exits_2_before_any_request(
    server: FakeCivitai, store: Path
) -> None:
    add_items(server, 3)
    [port] = free_ports(1)
    url = f"redis://127.0.0.1:{port}/0"
    command = crawl_command(
        server, store, *SHARED_ARGUMENTS, CIVITAI_SHARED_CRAWL="true", CIVITAI_REDIS_URL=url
    )
    process = subprocess.run(
        command, cwd=REPOSITORY, env=crawl_environment(), capture_output=True, text=True, timeout=60
    )

    assert process.returncode == 2
    [line] = [line for line in process.stderr.splitlines() if "error" in line.lower()]
    assert f"error: CIVITAI_REDIS_URL=redis://127.0.0.1:{port}/0: Redis does not answer" in line
    assert "Traceback" not in process.stderr
    assert server.requests == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        pytest.param({}, "CIVITAI_SHARED_CRAWL=true without CIVITAI_REDIS_URL: ", id="without_redis"),
        pytest.param(
            {"CIVITAI_REDIS_URL": "{redis}", "JOBDIR": "{job}"},
            "CIVITAI_SHARED_CRAWL=true with JOBDIR='{job}': ",
            id="jobdir",
        ),
        pytest.param(
            {"CIVITAI_REDIS_URL": "{redis}", "CIVITAI_NEW_WALK": "true"},
            "CIVITAI_SHARED_CRAWL=true with CIVITAI_NEW_WALK=true: ",
            id="new_walk",
        ),
    ],
)
def test_a_shared_crawl_with_settings_it_cannot_work_with_exits_2_before_any_request(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    add_items(server, 3)
    job = tmp_path / "job"
    given = {name: value.format(redis=redis_url, job=job) for name, value in settings.items()}
    command = crawl_command(server, store, *SHARED_ARGUMENTS, CIVITAI_SHARED_CRAWL="true", **given)
    process = subprocess.run(
        command, cwd=REPOSITORY, env=crawl_environment(), capture_output=True, text=True, timeout=60
    )

    assert process.returncode == 2, process.stderr[-3000:]
    [line] = [line for line in process.stderr.splitlines() if "error" in line.lower()]
    assert "error: " + named.format(job=job) in line, line
    assert "; allowed is " in line
    assert "Traceback" not in process.stderr
    assert server.requests == []
    assert not store.exists() and not job.exists()
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_the_same_arguments_after_the_crawl_is_done_start_a_new_walk(
    server: FakeCivitai, store: Path, redis_url: str, workers: Workers
) -> None:
    items = add_items(server, 60)
    workers.start(1)
    [first] = workers.wait()
    assert first.stats["civitai/saved"] == 60
    server.clear_requests()
    new = add_items(server, 5)

    workers.start(1)
    [_, again] = workers.wait()

    assert (again.returncode, again.finish_reason) == (0, "finished"), again.stderr[-3000:]
    assert re.search(r"Started shared crawl \w+ \(walk 2\)", again.stderr)
    assert again.stats["civitai/saved"] == 5
    assert {request.path for request in server.cdn_requests()} == {urlsplit(item["url"]).path for item in new}
    stats = shared_stats(redis_url, walk=2)
    assert (stats["dropped/already_downloaded"], stats["saved"], stats["items_seen"]) == (len(items), 5, 65)


def test_a_page_that_fails_for_good_ends_the_worker_with_api_error_and_stays_queued(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    items = add_items(server, 100)
    server.inject_page(None, Fault.status(400))  # the first page a worker asks: not retried
    first = Workers(server, store, redis_url, tmp_path / "first")
    first.start()
    [failed] = first.wait()

    assert (failed.returncode, failed.finish_reason) == (1, "api_error"), failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and "The API request failed, stopping the crawl: HTTP 400" in errors[0]
    # The page was not handed on: the next worker asks it again, and the crawl ends whole.
    second = Workers(server, store, redis_url, tmp_path / "second")
    second.start()
    [finished] = second.wait()
    assert (finished.returncode, finished.finish_reason) == (0, "finished"), finished.stderr[-3000:]
    check_everything_saved_once(server, store, redis_url, items)


def test_what_a_stopped_worker_did_not_start_is_taken_over_at_once_by_a_live_one(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    items = add_items(server, 500)
    server.cdn_delay = 0.01  # the live worker is still at work when the other one stops
    stopping = Workers(server, store, redis_url, tmp_path / "stopping", CLOSESPIDER_ITEMCOUNT="30")
    live = Workers(server, store, redis_url, tmp_path / "live")  # CIVITAI_REDIS_CLAIM_AFTER: 300 s
    live.start()
    stopping.start()
    [stopped] = stopping.wait()
    started = time.monotonic()
    [finished] = live.wait(timeout=120)

    assert (stopped.returncode, stopped.finish_reason) == (0, "closespider_itemcount"), stopped.stderr[-3000:]
    assert stopped.stats.get("civitai/dropped/stopped", 0) > 0  # it left work unstarted...
    assert re.search(r"Left \d+ images message\(s\) to the other workers", stopped.stderr)
    # ...which the live worker took without waiting CIVITAI_REDIS_CLAIM_AFTER.
    assert (finished.returncode, finished.finish_reason) == (0, "finished"), finished.stderr[-3000:]
    assert time.monotonic() - started < 100
    check_everything_saved_once(server, store, redis_url, items)


def test_a_worker_stopped_by_closespider_itemcount_leaves_what_it_did_not_start_queued(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    items = add_items(server, 500)
    first = Workers(server, store, redis_url, tmp_path / "first", CLOSESPIDER_ITEMCOUNT="30")
    first.start()
    [stopped] = first.wait()

    assert (stopped.returncode, stopped.finish_reason) == (0, "closespider_itemcount"), stopped.stderr[-3000:]
    assert 30 <= stopped.stats["civitai/saved"] <= 30 + 32
    assert len(server.cdn_requests()) == stopped.stats["civitai/saved"]  # nothing else started

    # What it listed and did not start stays queued: the next worker does it, and nothing twice.
    second = Workers(server, store, redis_url, tmp_path / "second")
    second.start()
    [finished] = second.wait()

    assert (finished.returncode, finished.finish_reason) == (0, "finished"), finished.stderr[-3000:]
    check_everything_saved_once(server, store, redis_url, items)
    stats = shared_stats(redis_url)
    assert stats["saved"] == len(items) and stats["items_seen"] == len(items)
    check_counts_reconcile(stats)
