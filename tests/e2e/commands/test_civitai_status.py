"""``scrapy civitai-status``, run as a user would while workers crawl and after: a real Redis."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import redis

from tests.support.crawls import run_scrapy_command
from tests.support.fake_civitai import FakeCivitai
from tests.support.servers import free_ports
from tests.support.workers import Workers, add_items, wait_for_files


def civitai_status(*arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return run_scrapy_command("civitai-status", *arguments, **settings)


def status_json(redis_url: str) -> list[dict]:
    result = civitai_status("--json", CIVITAI_REDIS_URL=redis_url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_shows_chains_images_workers_and_totals_during_and_after_a_crawl(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    add_items(server, 500)
    server.cdn_delay = 0.05  # a crawl of several seconds, to look at while it runs
    workers = Workers(server, store, redis_url, tmp_path / "logs", CIVITAI_IMAGES_IN_FLIGHT="4")
    try:
        workers.start(2)
        wait_for_files(store, 20)
        time.sleep(1)  # both workers have joined and beaten once
        [running] = status_json(redis_url)
        text = civitai_status(CIVITAI_REDIS_URL=redis_url).stdout
        results = workers.wait()
    finally:
        workers.kill()

    assert running["status"] == "running" and running["walk"] == 1
    assert [chain["name"] for chain in running["chains"]] == [
        f"browsingLevel={level}" for level in (1, 2, 4, 8, 16)
    ]
    assert [worker["state"] for worker in running["workers"]] == ["working", "working"]
    assert all(worker["seconds_since_heartbeat"] < 10 for worker in running["workers"])
    assert 0 < running["totals"]["saved"] < 500
    assert running["images_in_flight"] > 0  # taken by the workers, not finished yet
    # A worker holds no more than twice its images and videos in flight (4 + 2): the rest of
    # the backlog waits in Redis, not in a worker's memory.
    assert running["images_queued"] > 0
    assert all(worker["report"]["images_in_flight"] <= 12 for worker in running["workers"])
    assert running["images_in_flight"] <= 24
    assert re.search(rf"Crawl {running['digest']}, walk 1: running since ", text)
    assert re.search(r"Chains: 5 \(\d live, \d done\)", text)
    assert "Workers: 2 alive, 0 stopped or silent" in text
    assert re.search(r"Images: \d+ queued, \d+ in flight, \d+ saved, 0 failed, 0 dropped", text)

    assert all(result.finish_reason == "finished" for result in results)
    [done] = status_json(redis_url)
    assert done["status"] == "done"
    assert {chain["end"] for chain in done["chains"]} == {"end"}
    assert (done["images_queued"], done["images_in_flight"]) == (0, 0)
    assert [worker["state"] for worker in done["workers"]] == ["stopped: finished"] * 2
    assert (done["totals"]["saved"], done["totals"]["items_seen"]) == (500, 500)
    text = civitai_status(CIVITAI_REDIS_URL=redis_url).stdout
    assert "Chains: 5 (0 live, 5 done)" in text
    assert (
        "Totals: 500 item(s) seen on 10 page(s): 500 saved (500 images, 0 videos), 0 failed, 0 dropped"
        in text
    )


def test_a_worker_whose_heartbeats_stopped_is_shown_silent(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    add_items(server, 5)
    workers = Workers(server, store, redis_url, tmp_path / "logs")
    workers.start(1)
    workers.wait()
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        [key] = client.keys("civitai:crawl:*:1:workers")
        beat = {"host": "elsewhere", "pid": 1, "beat": time.time() - 120, "state": "working"}
        client.hset(key, "elsewhere:1:abc", json.dumps(beat))

    states = {worker["name"]: worker["state"] for worker in status_json(redis_url)[0]["workers"]}
    assert states["elsewhere:1:abc"] == "silent"
    assert "Workers: 0 alive, 2 stopped or silent" in civitai_status(CIVITAI_REDIS_URL=redis_url).stdout


def test_status_of_an_empty_redis(redis_url: str) -> None:
    result = civitai_status(CIVITAI_REDIS_URL=redis_url)
    assert (result.returncode, result.stdout.strip()) == (0, f"No shared crawl under civitai: in {redis_url}")


def test_status_without_redis_is_a_usage_error() -> None:
    [port] = free_ports(1)
    unreachable = civitai_status(CIVITAI_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    missing = civitai_status()
    for result, message in (
        (unreachable, f"error: CIVITAI_REDIS_URL=redis://127.0.0.1:{port}/0: Redis does not answer"),
        (missing, "error: CIVITAI_REDIS_URL is not set"),
    ):
        assert result.returncode == 2
        [line] = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert message in line, result.stderr
