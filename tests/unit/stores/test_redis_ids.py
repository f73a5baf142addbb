"""Tests of :mod:`civitai_spider.stores.redis_ids` against a real Redis (``tests/support/servers.py``).

Round trips are counted with Redis's own ``INFO commandstats``, reset before each step.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from scrapy.settings import Settings

from civitai_spider.errors import safe_url
from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import DropImage
from civitai_spider.pipelines.already_downloaded import AlreadyDownloadedPipeline
from civitai_spider.stores import redis_ids
from civitai_spider.stores.base import StoreError
from civitai_spider.stores.redis_ids import _PREFETCHED_LIMIT, MAX_ID, RedisIds
from tests.support.crawls import project_crawler
from tests.support.servers import RedisServer, free_ports
from tests.support.servers import redis_ids as stored_ids

T = TypeVar("T")
CHUNK = 2**20
PASSWORD = "hunter2-7c1d"


def with_store(url: str, work: Callable[[RedisIds], Awaitable[T]], prefix: str = "civitai") -> T:
    """Run ``work`` on an opened store in a new event loop (the client belongs to one loop)."""

    async def run() -> T:
        store = RedisIds(url, prefix)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def reset_stats(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.config_resetstat()


def calls(url: str) -> dict[str, int]:
    """Command name -> calls since the last reset."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()}


def keys(url: str) -> set[str]:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return set(client.keys("*"))


def make_item(image_id: int) -> CivitaiImage:
    return CivitaiImage.from_api({"id": image_id, "url": f"https://image.civitai.com/k/{image_id}.jpeg"})


async def open_and_close(url: str) -> None:
    store = RedisIds(url, "civitai")
    try:
        await store.open()
    finally:
        await store.close()


def settings(url: str, prefix: str = "civitai") -> Settings:
    return Settings({"CIVITAI_REDIS_URL": url, "CIVITAI_REDIS_PREFIX": prefix})


# --- recording and looking up ------------------------------------------------------------


def test_recorded_ids_are_contained(redis_url: str) -> None:
    with_store(redis_url, lambda store: store.record([3, 5, 8]))

    # A new store (no cache) reads what the first one recorded.
    answers = with_store(redis_url, lambda store: store.contains([1, 3, 5, 8, 9, 3]))

    assert answers == [False, True, True, True, False, True]


EDGE_IDS = [0, CHUNK - 1, CHUNK, CHUNK + 1, 123_456_789, MAX_ID]


def test_ids_on_chunk_boundaries(redis_url: str) -> None:
    with_store(redis_url, lambda store: store.record(EDGE_IDS))

    neighbours = sorted({n for i in EDGE_IDS for n in (i - 1, i + 1) if 0 <= n <= MAX_ID} - set(EDGE_IDS))
    answers = with_store(redis_url, lambda store: store.contains(EDGE_IDS + neighbours))
    assert answers == [True] * len(EDGE_IDS) + [False] * len(neighbours)
    # The layout other tools read: bit id % 2**20 (GETBIT's numbering) of <prefix>:ids:<id // 2**20>.
    assert keys(redis_url) == {"civitai:ids:0", "civitai:ids:1", "civitai:ids:117", "civitai:ids:4095"}
    with redis.Redis.from_url(redis_url) as client:
        for image_id in EDGE_IDS:
            assert client.getbit(f"civitai:ids:{image_id // CHUNK}", image_id % CHUNK) == 1, image_id
        assert client.bitcount("civitai:ids:1") == 2


@pytest.mark.parametrize("bad", [-1, MAX_ID + 1, 2**40])
def test_an_id_out_of_range_is_a_store_error_and_nothing_is_recorded(redis_url: str, bad: int) -> None:
    with pytest.raises(StoreError, match=f"id {bad} is outside"):
        with_store(redis_url, lambda store: store.record([5, bad]))
    with pytest.raises(StoreError, match=f"id {bad} is outside"):
        with_store(redis_url, lambda store: store.contains([bad]))
    assert keys(redis_url) == set()  # all of a batch or none of it


def test_record_is_one_transaction_whatever_the_chunks(redis_url: str) -> None:
    reset_stats(redis_url)

    with_store(redis_url, lambda store: store.record([1, 2, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 9]))

    stats = calls(redis_url)
    assert (stats.get("multi"), stats.get("exec")) == (1, 1)
    assert stats.get("bitfield") == 3  # one per chunk, inside the transaction
    assert "setbit" not in stats


def test_thousands_of_ids_of_a_chunk_are_or_ed_in_as_a_bitmap(redis_url: str) -> None:
    # An import's batch: the chunk's bits go over once, not four BITFIELD arguments per id.
    many = list(range(3 * CHUNK + 5, 3 * CHUNK + 50_000, 7))
    with_store(redis_url, lambda store: store.record([3 * CHUNK + 1, CHUNK + 2]))
    reset_stats(redis_url)

    with_store(redis_url, lambda store: store.record([*many, 9]))

    stats = calls(redis_url)
    assert (stats.get("multi"), stats.get("exec")) == (1, 1)
    assert stats.get("bitop") == 1 and stats.get("bitfield") == 1  # the big chunk, then id 9's
    assert stored_ids(redis_url) == {3 * CHUNK + 1, CHUNK + 2, 9, *many}  # OR-ed, not overwritten
    assert not [key for key in keys(redis_url) if "incoming" in key]


def test_all_ids_come_in_id_order_across_chunks(redis_url: str) -> None:
    # Chunks 9, 10 and 100: sorted as numbers, not as the text of their keys.
    ids = [MAX_ID, 10 * CHUNK + 3, 5, 100 * CHUNK, CHUNK, 9 * CHUNK + 7, 0, CHUNK - 1, 123_456_789, 9 * CHUNK]

    async def record_and_list(store: RedisIds) -> list[list[int]]:
        await store.record(ids[:5])
        await store.record(ids[5:])
        return [batch async for batch in store.all_ids()]

    batches = with_store(redis_url, record_and_list)

    assert [image_id for batch in batches for image_id in batch] == sorted(ids)


def test_all_ids_of_an_empty_store(redis_url: str) -> None:
    async def list_all(store: RedisIds) -> list[list[int]]:
        return [batch async for batch in store.all_ids()]

    assert with_store(redis_url, list_all) == []


def test_keys_stay_under_the_prefix_and_prefixes_are_independent(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("team-a:notes", "not ours to read")
        client.set("team-a:ids:notes", "not a chunk")
    with_store(redis_url, lambda store: store.record([1, 2 * CHUNK]), prefix="team-a")
    with_store(redis_url, lambda store: store.record([2]), prefix="team-ab")

    assert keys(redis_url) - {"team-a:notes", "team-a:ids:notes"} == {
        "team-a:ids:0",
        "team-a:ids:2",
        "team-ab:ids:0",
    }
    assert with_store(redis_url, lambda store: store.contains([1, 2]), prefix="team-a") == [True, False]
    assert with_store(redis_url, lambda store: store.contains([1, 2]), prefix="team-ab") == [False, True]

    async def list_all(store: RedisIds) -> list[int]:
        return [image_id async for batch in store.all_ids() for image_id in batch]

    assert with_store(redis_url, list_all, prefix="team-a") == [1, 2 * CHUNK]
    assert with_store(redis_url, list_all, prefix="team-ab") == [2]
    assert with_store(redis_url, list_all, prefix="team") == []


def test_a_million_ids_take_a_bitmap_not_a_set(redis_url: str) -> None:
    first, count = 100_000_000, 1_000_000

    async def record_all(store: RedisIds) -> None:
        for start in range(first, first + count, 50_000):
            await store.record(range(start, start + 50_000))

    with_store(redis_url, record_all)

    with redis.Redis.from_url(redis_url) as client:
        names = client.keys("civitai:ids:*")
        memory = sum(client.memory_usage(name) for name in names)
        assert sum(client.bitcount(name) for name in names) == count
    # Ids 100,000,000 to 100,999,999 fall in chunks 95 and 96: two strings of at most 128 KiB,
    # with the room Redis leaves to grow a string (about 400 kB in all). A Redis set of a
    # million ids takes about 50 MB.
    assert len(names) == 2
    assert memory < 1_000_000
    answers = with_store(
        redis_url, lambda store: store.contains([first - 1, first, first + count - 1, first + count])
    )
    assert answers == [False, True, True, False]


# --- prefetch -------------------------------------------------------------------------------


def test_prefetched_ids_are_answered_without_a_round_trip(redis_url: str) -> None:
    with_store(redis_url, lambda store: store.record([10, 30]))
    page = [10, 20, 30, 40]

    async def prefetch_then_ask(store: RedisIds) -> tuple[list[bool], dict[str, int], list[bool]]:
        await store.prefetch(page)
        reset_stats(redis_url)
        answers = [(await store.contains([image_id]))[0] for image_id in page]
        between = calls(redis_url)
        # Each prefetched answer is used once: asking again goes to Redis.
        again = await store.contains([10, 20])
        return answers, between, again

    answers, between, again = with_store(redis_url, prefetch_then_ask)

    assert answers == [True, False, True, False]
    assert "bitfield_ro" not in between
    assert again == [True, False]
    assert calls(redis_url)["bitfield_ro"] == 1


def test_two_pages_with_the_same_prefetched_ids_asked_at_once_both_get_their_answers(redis_url: str) -> None:
    # A model's chains list an image under each of its versions: two pages in flight hold it.
    with_store(redis_url, lambda store: store.record([10]))

    async def ask_twice_at_once(store: RedisIds) -> list[list[bool]]:
        await store.prefetch([10, 20])
        # The first needs a round trip (30 was not prefetched); the second takes 10 meanwhile.
        return list(await asyncio.gather(store.contains([30, 10, 20]), store.contains([10])))

    assert with_store(redis_url, ask_twice_at_once) == [[False, True, False], [True]]


def test_prefetch_of_a_page_is_one_bitfield_ro_per_chunk(redis_url: str) -> None:
    async def prefetch_pages(store: RedisIds) -> list[int]:
        counts = []
        for page in (
            list(range(1_000, 1_100)),  # one chunk
            [5, CHUNK + 5, 7 * CHUNK, 7 * CHUNK + 1, 7 * CHUNK + 2],  # three chunks
            [1_000, 1_050, 5],  # all prefetched already: no command
        ):
            reset_stats(redis_url)
            await store.prefetch(page)
            counts.append(calls(redis_url).get("bitfield_ro", 0))
        return counts

    assert with_store(redis_url, prefetch_pages) == [1, 3, 0]


def test_the_prefetched_answers_stay_bounded(redis_url: str) -> None:
    # 25,000 ids (two and a half times the limit), in pages of 100.
    pages = [list(range(start, start + 100)) for start in range(0, 25_000, 100)]
    assert len(pages) * 100 > 2 * _PREFETCHED_LIMIT

    async def prefetch_and_forget(store: RedisIds) -> tuple[int, int, int]:
        for page in pages:  # items that never reach the pipeline: their answers are never taken
            await store.prefetch(page)
        size = len(store._prefetched)
        reset_stats(redis_url)
        await store.contains(pages[-1])  # the newest answers are kept...
        newest = calls(redis_url).get("bitfield_ro", 0)
        await store.contains(pages[0])  # ...the oldest dropped
        return size, newest, calls(redis_url).get("bitfield_ro", 0)

    assert with_store(redis_url, prefetch_and_forget) == (_PREFETCHED_LIMIT, 0, 1)


def test_a_prefetched_answer_does_not_outlive_a_record(redis_url: str) -> None:
    async def prefetch_record_ask(store: RedisIds) -> list[bool]:
        await store.prefetch([7, 8])
        await store.record([7])
        return await store.contains([7, 8])

    assert with_store(redis_url, prefetch_record_ask) == [True, False]


# --- the pipeline with Redis ------------------------------------------------------------------


def test_the_pipeline_drops_ids_recorded_in_redis(redis_url: str, tmp_path: Path) -> None:
    with_store(redis_url, lambda store: store.record([20]))
    crawler = project_crawler(IMAGES_STORE=str(tmp_path), CIVITAI_REDIS_URL=redis_url)
    pipe = AlreadyDownloadedPipeline.from_crawler(crawler)

    new = make_item(21)

    async def run() -> tuple[str, object]:
        await pipe.open_spider()
        try:
            with pytest.raises(DropImage) as dropped:
                await pipe.process_item(make_item(20))
            return dropped.value.reason, await pipe.process_item(new)
        finally:
            await pipe.stores.close()

    assert asyncio.run(run()) == ("already_downloaded", new)
    assert not (tmp_path / "downloaded_image_ID_DB.txt").exists()


def test_the_pipeline_fails_an_item_cleanly_when_redis_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_ids, "retry_for", lambda timeout: Retry(NoBackoff(), retries=1))
    with RedisServer(tmp_path / "r") as server:
        crawler = project_crawler(IMAGES_STORE=str(tmp_path / "store"), CIVITAI_REDIS_URL=server.url)
        crawler.stats.open_spider()
        pipe = AlreadyDownloadedPipeline.from_crawler(crawler)

        async def run() -> DropImage:
            await pipe.open_spider()
            server.stop()
            try:
                with pytest.raises(DropImage) as dropped:
                    await pipe.process_item(make_item(30))
                return dropped.value
            finally:
                await pipe.stores.close()

        failure = asyncio.run(run())

    # A failure, not "already downloaded": the id is tried again by the next run.
    assert failure.reason == "failed" and failure.log_level == "WARNING"
    assert "image 30 failed: id store not reachable: Redis redis://127.0.0.1:" in str(failure)
    [line] = (tmp_path / "store" / "error_log.txt").read_text().splitlines()
    assert "\t30\thttps://image.civitai.com/k/30.jpeg\tid store not reachable: Redis redis://" in line


# --- checks and open() -------------------------------------------------------------------------


def test_check_passes_for_a_live_server(redis_url: str) -> None:
    RedisIds.check(settings(redis_url))


def test_check_of_an_unreachable_server_names_the_url_without_its_password() -> None:
    (port,) = free_ports(1)  # nothing listens there
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"

    with pytest.raises(ValueError) as caught:
        RedisIds.check(settings(url))

    message = str(caught.value)
    assert message.startswith(f"CIVITAI_REDIS_URL=redis://:***@127.0.0.1:{port}/0: Redis does not answer")
    assert PASSWORD not in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "prefix", "named"),
    [
        ("http://127.0.0.1/0", "civitai", "CIVITAI_REDIS_URL='http://127.0.0.1/0': allowed: redis://"),
        ("127.0.0.1:6379", "civitai", "allowed: redis://host:port/db, rediss://... or unix://path"),
        (f"http://:{PASSWORD}@127.0.0.1/0", "civitai", "CIVITAI_REDIS_URL='http://:***@127.0.0.1/0'"),
        ("redis://127.0.0.1/0", "", "CIVITAI_REDIS_PREFIX='': allowed: a non-empty name"),
        ("redis://127.0.0.1/0", "*", "CIVITAI_REDIS_PREFIX='*'"),
        ("redis://127.0.0.1/0", "team a", "without spaces or * ? [ ]"),
        ("redis://127.0.0.1/0", "team[1]", "CIVITAI_REDIS_PREFIX='team[1]'"),
    ],
)
def test_bad_url_or_prefix_is_a_value_error(url: str, prefix: str, named: str) -> None:
    for call in (RedisIds.check, RedisIds.build):
        with pytest.raises(ValueError) as caught:
            call(settings(url, prefix))
        assert named in str(caught.value)
        assert PASSWORD not in str(caught.value)


def test_open_warns_when_redis_runs_without_appendonly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(tmp_path / "r", appendonly=False) as server:
        with caplog.at_level(logging.INFO, logger="civitai_spider.stores.redis_ids"):
            with_store(server.url, lambda store: store.record([1]))

    [warning] = [record for record in caplog.records if record.name == redis_ids.__name__]
    assert warning.levelno == logging.WARNING
    assert "appendonly no" in warning.getMessage() and server.url in warning.getMessage()


def test_open_is_silent_when_redis_runs_with_appendonly(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="civitai_spider.stores.redis_ids"):
        with_store(redis_url, lambda store: store.record([1]))

    assert [record for record in caplog.records if record.name == redis_ids.__name__] == []


# --- Redis going away ----------------------------------------------------------------------------


def test_a_redis_restart_costs_no_record(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r") as server:

        async def record_around_restarts(store: RedisIds) -> list[bool]:
            await store.record([1, 2])
            server.restart()  # the pooled connection is now dead: the next command must retry
            await store.record([3])
            server.stop()

            async def start_soon() -> None:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(server.start)

            # Down while the record is sent: the client retries until Redis is back.
            await asyncio.gather(store.record([CHUNK + 4]), start_soon())
            return await store.contains([1, 2, 3, CHUNK + 4, 5])

        assert with_store(server.url, record_around_restarts) == [True, True, True, True, False]
        with server.client() as client:
            assert client.bitcount("civitai:ids:0") == 3


def test_redis_down_for_good_is_a_store_error_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fewer retries than CIVITAI_REDIS_TIMEOUT (60 s) allows, so that the test waits for no backoff.
    monkeypatch.setattr(redis_ids, "retry_for", lambda timeout: Retry(NoBackoff(), retries=1))
    with RedisServer(tmp_path / "r") as server:
        with server.client() as client:
            client.config_set("requirepass", PASSWORD)
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"

        async def fail_after_stop(store: RedisIds) -> list[str]:
            await store.record([1])  # the password works while Redis is up
            server.stop()
            messages = []
            for call in (
                lambda: store.record([2]),
                lambda: store.contains([1]),
                lambda: store.prefetch([1, 2]),
                lambda: open_and_close(url),
            ):
                started = time.monotonic()
                with pytest.raises(StoreError) as caught:
                    await call()
                assert time.monotonic() - started < 5
                messages.append(str(caught.value))
            with pytest.raises(StoreError) as caught:
                _ = [batch async for batch in store.all_ids()]
            return [*messages, str(caught.value)]

        messages = with_store(url, fail_after_stop)

    for message in messages:
        # Out of reach: retried, and said as the shared crawl's Redis side says it.
        assert re.match(
            rf"Redis redis://:\*\*\*@127\.0\.0\.1:{server.port}/0 did not answer for [\d.]+ s "
            r"\(keys civitai:ids:\*\): ",
            message,
        ), message
        assert PASSWORD not in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (f"redis://alice:{PASSWORD}@db.internal:6380/2", "redis://alice:***@db.internal:6380/2"),
        (f"rediss://alice:{PASSWORD}@[::1]:6379/0", "rediss://alice:***@[::1]:6379/0"),
        (f"redis://:{PASSWORD}@db.internal", "redis://:***@db.internal"),
        ("redis://alice@db.internal/0", "redis://alice@db.internal/0"),
        ("redis://:p%40ss:w@db.internal:1/0", "redis://:***@db.internal:1/0"),
        (f"unix://:{PASSWORD}@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        # redis-py reads a password from the query string too.
        (f"redis://db.internal/0?password={PASSWORD}", "redis://db.internal/0?password=***"),
        (
            f"redis://db.internal/0?db=1&password={PASSWORD}&x=1",
            "redis://db.internal/0?db=1&password=***&x=1",
        ),
        ("redis://db.internal/0?username=password", "redis://db.internal/0?username=password"),
    ],
)
def test_safe_url(url: str, safe: str) -> None:
    assert safe_url(url) == safe
