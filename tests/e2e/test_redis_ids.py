"""Redis as the id store alone (``CIVITAI_REDIS_URL`` without ``CIVITAI_SHARED_CRAWL``), end to end.

The crawl is then this process's own, as with the ID file: its walk, its chains, JOBDIR's pause
and resume, ``stop_after_seen``, ``other_chain``; Redis holds the ids and nothing else. Real
``scrapy crawl`` processes, a real Redis, the fake Civitai. The shared crawl is
``tests/e2e/test_shared_crawl.py``.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path

from tests.support import images
from tests.support.crawls import CrawlResult, finished_crawl, run_crawl, start_crawl, wait_for
from tests.support.fake_civitai import FakeCivitai
from tests.support.servers import RedisServer, redis_ids, redis_keys_besides_ids

BODY = images.jpeg_rgb()
MODEL = 4201
VERSIONS = [9003, 9002, 9001]
ID_FILE = "downloaded_image_ID_DB.txt"


def add_model_images(server: FakeCivitai, count: int) -> list[int]:
    """``count`` images of MODEL's three versions (one chain each), every tenth also under the
    next version: listed by two chains, saved by the first (``other_chain``)."""
    server.add_model(MODEL, VERSIONS)
    ids = []
    for index in range(count):
        versions = [VERSIONS[index % 3]]
        if index % 10 == 0:
            versions.append(VERSIONS[(index + 1) % 3])
        ids.append(server.add_image_item(BODY, versions=versions, modelVersionIds=[])["id"])
    return ids


def project_stats(result: CrawlResult) -> dict[str, int]:
    return {name: value for name, value in result.stats.items() if name.startswith("civitai/")}


def pages_walked(server: FakeCivitai) -> Counter[tuple[str, str | None]]:
    """(chain's version, cursor) of each image page asked for -> how many times."""
    queries = [request.query for request in server.page_requests()]
    return Counter((query["modelVersionId"], query.get("cursor")) for query in queries)


def cdn_downloads(server: FakeCivitai) -> Counter[str]:
    return Counter(request.path for request in server.cdn_requests())


def test_redis_ids_alone_change_where_the_ids_are_and_nothing_else(
    server: FakeCivitai, tmp_path: Path, redis_url: str
) -> None:
    ids = add_model_images(server, 60)
    arguments = (f"model_id={MODEL}", "sort=Newest", "limit=10")
    folder = run_crawl(server, tmp_path / "folder", *arguments)
    assert (folder.returncode, folder.finish_reason) == (0, "finished"), folder.stderr[-3000:]
    folder_pages = pages_walked(server)
    server.clear_requests()

    crawl = run_crawl(server, tmp_path / "redis", *arguments, CIVITAI_REDIS_URL=redis_url)

    assert (crawl.returncode, crawl.finish_reason) == (0, "finished"), crawl.stderr[-3000:]
    # The same crawl as with the ID file: the same chains and pages, each once, the same outcomes.
    assert pages_walked(server) == folder_pages and set(folder_pages.values()) == {1}
    assert project_stats(crawl) == project_stats(folder)
    assert (crawl.stats["civitai/saved"], crawl.stats["civitai/dropped/other_chain"]) == (60, 6)
    assert "shared crawl" not in crawl.stderr.lower()
    # Its ids are in Redis, and nothing else is: no crawl state, no streams, no ID file.
    assert redis_ids(redis_url) == set(ids) == set(folder.ids_recorded())
    assert redis_keys_besides_ids(redis_url) == []
    assert not (tmp_path / "redis" / ID_FILE).exists()
    assert set(cdn_downloads(server).values()) == {1}

    # Run again: what Redis has recorded is skipped, and stop_after_seen ends each chain early.
    server.clear_requests()
    again = run_crawl(
        server, tmp_path / "redis", *arguments, "stop_after_seen=5", CIVITAI_REDIS_URL=redis_url
    )

    assert (again.returncode, again.finish_reason) == (0, "caught_up"), again.stderr[-3000:]
    assert server.cdn_requests() == []
    assert "civitai/saved" not in again.stats and again.stats["civitai/dropped/already_downloaded"] >= 15
    assert {version for version, _ in pages_walked(server)} == {str(version) for version in VERSIONS}
    assert sum(pages_walked(server).values()) < sum(folder_pages.values())
    assert redis_keys_besides_ids(redis_url) == []


def test_redis_ids_with_jobdir_pause_and_resume_where_the_chain_stopped(
    server: FakeCivitai, store: Path, tmp_path: Path, redis_url: str
) -> None:
    items = [server.add_image_item(BODY) for _ in range(30)]
    server.api_delay = 0.3  # ten pages of three: several seconds to stop in the middle of
    settings = {"JOBDIR": str(tmp_path / "job"), "CIVITAI_REDIS_URL": redis_url}
    log = tmp_path / "paused.log"
    process = start_crawl(server, store, log, "limit=3", **settings)
    wait_for(lambda: len(server.page_requests()) >= 4, process, log)
    process.send_signal(signal.SIGINT)  # one Ctrl-C: a pause
    paused = finished_crawl(process, log, store)

    assert (paused.returncode, paused.finish_reason) == (0, "shutdown"), paused.stderr[-3000:]
    recorded_before = redis_ids(redis_url)
    assert 0 < len(recorded_before) == paused.stats["civitai/saved"] < len(items)
    pages_before = len(server.page_requests())
    downloads = cdn_downloads(server)
    server.clear_requests()
    server.api_delay = 0

    resumed = run_crawl(server, store, "limit=3", **settings)

    assert (resumed.returncode, resumed.finish_reason) == (0, "finished"), resumed.stderr[-3000:]
    assert "Resuming a paused job" in resumed.stderr
    assert "cursor" in server.page_requests()[0].query  # where the chain stopped, not the first page
    assert pages_before + len(server.page_requests()) <= 11  # ten pages, one maybe asked twice
    # Nothing skipped, nothing twice: every id recorded, each saved and downloaded once.
    assert redis_ids(redis_url) == {item["id"] for item in items}
    assert paused.stats["civitai/saved"] + resumed.stats["civitai/saved"] == len(items)
    downloads += cdn_downloads(server)
    assert len(downloads) == len(items) and set(downloads.values()) == {1}
    # The job's state is in JOBDIR, the ids alone in Redis.
    assert redis_keys_besides_ids(redis_url) == []
    assert not (store / ID_FILE).exists()


def test_redis_gone_from_a_crawl_of_its_own_fails_its_items_then_ends_it_as_store_error(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    items = [server.add_image_item(BODY) for _ in range(200)]
    server.cdn_delay = 0.02
    log = tmp_path / "crawl.log"
    with RedisServer(tmp_path / "redis") as own_redis:
        process = start_crawl(
            server,
            store,
            log,
            "limit=20",
            CIVITAI_REDIS_URL=own_redis.url,
            CIVITAI_REDIS_TIMEOUT="1",
            CIVITAI_IMAGES_IN_FLIGHT="2",
        )
        wait_for(lambda: len(redis_ids(own_redis.url)) >= 20, process, log)
        own_redis.kill()
        result = finished_crawl(process, log, store, timeout=120)

    # Not a shared crawl's redis_error: Redis is a store like the others here.
    assert (result.returncode, result.finish_reason) == (1, "store_error"), result.stderr[-3000:]
    [error] = [line for line in result.stderr.splitlines() if " ERROR: " in line]
    assert re.search(
        r"10 items in a row failed because redis://127\.0\.0\.1:\d+/0 \(keys civitai:ids:\*\) did", error
    )
    assert "Traceback" not in result.stderr
    failed = (store / "error_log.txt").read_text().splitlines()
    assert len(failed) == result.stats["civitai/failed"] >= 10
    assert 20 <= result.stats["civitai/saved"] < len(items)
