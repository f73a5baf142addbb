"""End to end through ``scrapy crawl``: the S3 file store (SeaweedFS) and the Redis id store.

Real servers, started by the fixtures of ``tests/conftest.py`` on free loopback ports.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import images, videos
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai
from tests.support.servers import RedisServer, SeaweedS3Server, bucket_objects, redis_ids

API_KEY = "sk-test-7f3a9c1e-never-stored"
#: botocore looks for credentials on an EC2 metadata address when none are given: never here.
_NO_METADATA = {"AWS_EC2_METADATA_DISABLED": "true"}


def add_mixed_items(server: FakeCivitai) -> list[dict[str, Any]]:
    """Kept JPEG and PNG, converted WebP (to JPEG and PNG), a video, with and without negatives."""
    items = [
        server.add_image_item(images.jpeg_rgb()),
        server.add_image_item(images.png_rgb()),
        server.add_image_item(images.webp_rgb()),
        server.add_image_item(images.webp_rgba()),
        server.add_image_item(images.jpeg_rgb(), meta={"prompt": "猫 ☕, (best:1.2)", "negativePrompt": ""}),
        server.add_image_item(videos.mp4(), type="video"),
    ]
    items += [server.add_image_item(images.jpeg_rgb()) for _ in range(6)]
    return items


def s3_crawl(
    server: FakeCivitai,
    s3: SeaweedS3Server,
    bucket: str,
    tmp_path: Path,
    *arguments: str,
    prefix: str = "civitai",
    **settings: str,
) -> CrawlResult:
    merged = {**s3.settings(bucket, prefix), "CIVITAI_LOG_DIR": str(tmp_path / "logs"), **settings}
    return run_crawl(server, tmp_path / "logs", *arguments, environment=_NO_METADATA, **merged)


# --- the same crawl to a folder and to a bucket -------------------------------------------


def test_a_bucket_gets_the_same_names_and_bytes_as_a_folder(
    server: FakeCivitai, store: Path, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    items = add_mixed_items(server)

    local = run_crawl(server, store, "media=all", "limit=5")
    remote = s3_crawl(server, s3_server, bucket, tmp_path, "media=all", "limit=5", prefix="sets/civitai")

    assert local.returncode == remote.returncode == 0, remote.stderr[-3000:]
    assert local.stats["civitai/saved"] == remote.stats["civitai/saved"] == len(items)
    # Not the manifest's crawl parts (manifest/), named by each crawl (test_live_manifest.py).
    objects = {
        name: object_
        for name, object_ in bucket_objects(s3_server, bucket, "sets/civitai/").items()
        if not name.startswith("manifest/")
    }
    local_files = {
        path.name: path.read_bytes()
        for path in store.iterdir()
        if path.is_file() and path.name not in {"downloaded_image_ID_DB.txt", "error_log.txt"}
    }
    assert sorted(objects) == sorted(local_files)
    for name, (data, content_type) in objects.items():
        assert data == local_files[name], name
        expected = {
            "jpg": "image/jpeg",
            "png": "image/png",
            "mp4": "video/mp4",
            "json": "application/json",
            "txt": "text/plain; charset=utf-8",
        }[name.rsplit(".", 1)[1]]
        assert content_type == expected, name
    # Nothing but the objects goes to the bucket: the ID file and the logs stay local.
    id_file = tmp_path / "logs" / "downloaded_image_ID_DB.txt"
    assert sorted(int(line) for line in id_file.read_text().split()) == sorted(item["id"] for item in items)


def test_a_failed_item_is_logged_in_the_log_folder_not_the_bucket(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    good = server.add_image_item(images.jpeg_rgb())
    broken = server.add_image_item(b"<html>not an image</html>", content_type="image/jpeg")

    result = s3_crawl(server, s3_server, bucket, tmp_path)

    assert result.returncode == 0
    names = ["{}.jpg", "{}_meta.json", "{}_pos-prompt.txt", "{}_neg-prompt.txt"]
    stored = [
        name for name in bucket_objects(s3_server, bucket, "civitai/") if not name.startswith("manifest/")
    ]
    assert sorted(stored) == sorted(name.format(good["id"]) for name in names)
    [line] = (tmp_path / "logs" / "error_log.txt").read_text().splitlines()
    assert f"\t{broken['id']}\t" in line


def test_a_video_goes_to_a_bucket_in_parts_through_the_log_folder(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    large = videos.mp4_boxes(20_000_000)  # three parts of 8 MiB: a multipart upload
    large_item = server.add_image_item(large, type="video")
    small_item = server.add_image_item(videos.webm(), type="video")
    server.chunked_cdn = True  # no Content-Length either

    result = s3_crawl(server, s3_server, bucket, tmp_path, "media=video", CIVITAI_REQUIRE_PROMPT="false")

    assert result.returncode == 0, result.stderr[-3000:]
    objects = bucket_objects(s3_server, bucket, "civitai/")
    assert objects[f"{large_item['id']}.mp4"] == (large, "video/mp4")
    assert objects[f"{small_item['id']}.webm"] == (videos.webm(), "video/webm")
    assert not [name for name in objects if ".civitai-partial-" in name]
    # The videos were spooled in the log folder and nothing of them stays there.
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == ["downloaded_image_ID_DB.txt"]
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --- Redis as the id store -----------------------------------------------------------------


def test_a_rerun_with_redis_makes_no_image_request_and_one_lookup_per_page(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, redis_url: str, tmp_path: Path
) -> None:
    import redis

    items = [server.add_image_item(images.jpeg_rgb()) for _ in range(25)]
    first = s3_crawl(server, s3_server, bucket, tmp_path, "limit=10", CIVITAI_REDIS_URL=redis_url)
    assert first.stats["civitai/saved"] == 25, first.stderr[-3000:]
    assert redis_ids(redis_url) == {item["id"] for item in items}
    assert not (tmp_path / "logs" / "downloaded_image_ID_DB.txt").exists()

    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    server.clear_requests()
    second = s3_crawl(server, s3_server, bucket, tmp_path, "limit=10", CIVITAI_REDIS_URL=redis_url)
    commands = client.info("commandstats")
    client.close()

    assert second.returncode == 0
    assert second.stats["civitai/dropped/already_downloaded"] == 25
    assert server.cdn_requests() == []
    pages = len(server.api_requests())
    assert pages == 3
    # One BITFIELD_RO per page (its ids share one bitmap chunk), nothing per item.
    assert commands["cmdstat_bitfield_ro"]["calls"] == pages
    assert "cmdstat_getbit" not in commands and "cmdstat_bitfield" not in commands


def test_ids_go_to_redis_under_the_prefix_with_a_local_folder_too(
    server: FakeCivitai, store: Path, redis_url: str
) -> None:
    items = [server.add_image_item(images.png_rgb()) for _ in range(4)]

    result = run_crawl(server, store, CIVITAI_REDIS_URL=redis_url, CIVITAI_REDIS_PREFIX="team-a")

    assert result.stats["civitai/saved"] == 4
    assert redis_ids(redis_url, "team-a") == {item["id"] for item in items}
    assert redis_ids(redis_url) == set()
    assert not (store / "downloaded_image_ID_DB.txt").exists()
    assert sorted(path.name for path in store.glob("*.png")) == sorted(f"{item['id']}.png" for item in items)


def test_redis_without_appendonly_is_warned_about(server: FakeCivitai, store: Path, tmp_path: Path) -> None:
    server.add_image_item(images.jpeg_rgb())
    with RedisServer(tmp_path / "redis", appendonly=False) as redis_server:
        result = run_crawl(server, store, CIVITAI_REDIS_URL=redis_server.url)

    assert result.stats["civitai/saved"] == 1
    [warning] = [line for line in result.stderr.splitlines() if "appendonly no" in line]
    assert "WARNING" in warning


# --- bad settings end the command before any request ---------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist at http://127.0.0.1:"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "refused the secret key (AWS_SECRET_ACCESS_KEY)"),
        ({"AWS_ACCESS_KEY_ID": "nobody"}, "does not know the access key (AWS_ACCESS_KEY_ID)"),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, "cannot reach http://127.0.0.1:1"),
    ],
    ids=["missing_bucket", "wrong_secret", "unknown_key", "unreachable"],
)
def test_a_bucket_that_cannot_work_is_one_clear_error(
    change: dict[str, str],
    named: str,
    server: FakeCivitai,
    s3_server: SeaweedS3Server,
    bucket: str,
    tmp_path: Path,
) -> None:
    server.add_image_item(images.jpeg_rgb())
    settings = s3_server.settings(change.pop("bucket", bucket), "civitai")
    settings.update(change)

    result = run_crawl(
        server,
        tmp_path / "logs",
        environment={**_NO_METADATA, "AWS_MAX_ATTEMPTS": "1"},
        CIVITAI_LOG_DIR=str(tmp_path / "logs"),
        **settings,
    )

    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert named in error and "IMAGES_STORE='s3://" in error
    assert s3_server.secret_key not in result.stderr
    assert server.requests == []


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", ["false", "true"], ids=["redis_ids", "shared_crawl"])
def test_the_api_key_reaches_neither_the_bucket_nor_redis(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, redis_url: str, tmp_path: Path, shared: str
) -> None:
    import redis

    [server.add_image_item(images.jpeg_rgb()) for _ in range(3)]

    # The ids alone, or a shared crawl's state too (its definition, pages and API records).
    result = run_crawl(
        server,
        tmp_path / "logs",
        api_key=API_KEY,
        environment=_NO_METADATA,
        CIVITAI_LOG_DIR=str(tmp_path / "logs"),
        CIVITAI_REDIS_URL=redis_url,
        CIVITAI_SHARED_CRAWL=shared,
        **s3_server.settings(bucket, "civitai"),
    )

    assert result.stats["civitai/saved"] == 3
    # Given with -s, the bucket's secret is still in no log line ("Overridden settings" included).
    assert "'AWS_SECRET_ACCESS_KEY': '***'" in result.stderr
    assert s3_server.secret_key not in result.stderr + result.stdout
    assert API_KEY not in result.stderr + result.stdout
    client = s3_server.client()
    for key, (data, _) in bucket_objects(s3_server, bucket, "").items():
        assert API_KEY.encode() not in data, key
        head = client.head_object(Bucket=bucket, Key=key)
        assert API_KEY not in json.dumps(head["Metadata"]) + key
    store = redis.Redis.from_url(redis_url)
    for key in store.scan_iter():
        assert API_KEY.encode() not in key + (store.dump(key) or b"")
    store.close()


# --- servers that go away mid-crawl -----------------------------------------------------------


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start_crawl(
    server: FakeCivitai, log: Path, settings: dict[str, str], environment: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``scrapy crawl`` in the background, two images at a time, its log in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as output:
        return subprocess.Popen(
            crawl_command(server, log.parent, "limit=20", CIVITAI_IMAGES_IN_FLIGHT="2", **settings),
            cwd=REPOSITORY,
            env=crawl_environment(extra={**_NO_METADATA, **(environment or {})}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )


def finish(process: subprocess.Popen[bytes], log: Path, returncode: int = 0) -> CrawlResult:
    assert process.wait(timeout=120) == returncode, log.read_text()[-3000:]
    return CrawlResult(returncode, "", log.read_text(), log.parent)


def check_recorded_ids_are_complete(
    s3: SeaweedS3Server, bucket: str, ids: set[int], items: list[dict[str, Any]], body: bytes
) -> None:
    """Every recorded id has all its objects, whole: the image as served and every metadata file."""
    objects = bucket_objects(s3, bucket, "civitai/")
    by_id = {item["id"]: item for item in items}
    for image_id in ids:
        item = by_id[image_id]
        assert objects.get(f"{image_id}.jpg", (None,))[0] == body, f"{image_id}: image missing or not whole"
        record = json.loads(objects[f"{image_id}_meta.json"][0])
        assert record["id"] == image_id and record["image_file"] == f"{image_id}.jpg"
        assert objects[f"{image_id}_pos-prompt.txt"][0] == item["meta"]["prompt"].encode()
        assert objects[f"{image_id}_neg-prompt.txt"][0] == item["meta"]["negativePrompt"].encode()


@pytest.fixture
def slow_cdn() -> Iterator[FakeCivitai]:
    """A CDN that takes 20 ms an image: with two at a time, about 100 images a second."""
    with FakeCivitai(cdn_delay=0.02) as fake:
        yield fake


def test_redis_restarted_mid_crawl_loses_no_recorded_id(
    slow_cdn: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    body = images.jpeg_rgb()
    items = [slow_cdn.add_image_item(body) for _ in range(300)]
    feed = tmp_path / "saved.jsonl"
    with RedisServer(tmp_path / "redis") as redis_server:
        settings = {
            **s3_server.settings(bucket, "civitai"),
            "CIVITAI_REDIS_URL": redis_server.url,
            "CIVITAI_LOG_DIR": str(tmp_path / "logs"),
            "FEEDS": json.dumps({feed.as_uri(): {"format": "jsonlines"}}),
        }
        process = start_crawl(slow_cdn, tmp_path / "logs" / "crawl.log", settings)
        wait_until(lambda: len(redis_ids(redis_server.url)) >= 40)
        assert process.poll() is None, "the crawl ended before Redis could be restarted"
        recorded_before = redis_ids(redis_server.url)
        redis_server.restart()  # SIGTERM (it writes its append-only file), then the same port
        result = finish(process, tmp_path / "logs" / "crawl.log")
        recorded = redis_ids(redis_server.url)

    saved = {json.loads(line)["id"] for line in feed.read_text().splitlines()}
    assert recorded_before <= recorded, "ids recorded before the restart were lost"
    assert saved <= recorded, "an item counted as saved has no recorded id"
    assert len(recorded) > len(recorded_before), "nothing was recorded after the restart"
    assert result.stats["civitai/saved"] == len(saved)
    # The client's retries ride out a restart of a few milliseconds: nothing failed.
    assert result.stats.get("civitai/failed", 0) == 0, result.stderr[-3000:]
    assert recorded == {item["id"] for item in items}
    check_recorded_ids_are_complete(s3_server, bucket, recorded, items, body)


def test_a_bucket_gone_mid_crawl_fails_its_items_then_ends_the_crawl(
    slow_cdn: FakeCivitai, redis_url: str, tmp_path: Path
) -> None:
    body = images.jpeg_rgb()
    items = [slow_cdn.add_image_item(body) for _ in range(200)]
    with SeaweedS3Server(tmp_path / "s3") as s3:
        bucket = s3.create_bucket("vanishing")
        settings = {
            **s3.settings(bucket, "civitai"),
            "CIVITAI_REDIS_URL": redis_url,
            "CIVITAI_LOG_DIR": str(tmp_path / "logs"),
        }
        process = start_crawl(slow_cdn, tmp_path / "logs" / "crawl.log", settings, {"AWS_MAX_ATTEMPTS": "2"})
        wait_until(lambda: len(redis_ids(redis_url)) >= 30)
        s3.kill()
        result = finish(process, tmp_path / "logs" / "crawl.log", returncode=1)
        recorded = redis_ids(redis_url)
        failed_lines = [
            line
            for line in (tmp_path / "logs" / "error_log.txt").read_text().splitlines()
            if "manifest part not written" not in line  # the live manifest's, when its part fails too
        ]

        # CIVITAI_MAX_STORE_FAILURES (10) in a row end it; the two images in flight may fail after.
        assert result.finish_reason == "store_error"
        stats = result.stats
        assert 10 <= stats["civitai/failed"] == len(failed_lines) <= 10 + 2
        assert stats["civitai/saved"] == len(recorded) < len(items)
        [error] = [line for line in result.stderr.splitlines() if " ERROR: " in line]
        assert "10 items in a row failed because s3://vanishing/civitai/ did" in error
        assert "Traceback" not in result.stderr
        failed_ids = {int(line.split("\t")[1]) for line in failed_lines}
        assert not failed_ids & recorded, "a failed item's id was recorded"
        assert all(f"s3://{bucket}/civitai/" in line and "failed" in line for line in failed_lines)
        [warning, *_] = [
            line for line in result.stderr.splitlines() if "failed: upload of s3://vanishing/civitai/" in line
        ]
        assert "WARNING" in warning

        s3.start()  # the same data folder: what was stored before the kill is there
        check_recorded_ids_are_complete(s3, bucket, recorded, items, body)
        # The same command stores exactly the ids not recorded, the failed ones among them.
        rerun = run_crawl(slow_cdn, tmp_path / "logs", "limit=20", environment=_NO_METADATA, **settings)
        assert rerun.finish_reason == "finished"
        assert rerun.stats["civitai/saved"] == len(items) - len(recorded)
        assert rerun.stats["civitai/dropped/already_downloaded"] == len(recorded)
        assert redis_ids(redis_url) == {item["id"] for item in items}
        check_recorded_ids_are_complete(s3, bucket, redis_ids(redis_url), items, body)


@pytest.mark.heavy
def test_kill_9_at_random_moments_with_a_bucket_and_redis_keeps_every_recorded_id_complete(
    slow_cdn: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    body = images.jpeg_rgb()
    items = [slow_cdn.add_image_item(body) for _ in range(300)]
    settings = {
        **s3_server.settings(bucket, "civitai"),
        "CIVITAI_REDIS_URL": redis_url,
        "CIVITAI_LOG_DIR": str(tmp_path / "logs"),
    }
    killed_mid_crawl = 0
    for round_number in range(8):
        before = len(redis_ids(redis_url))
        log = tmp_path / "logs" / f"killed-{round_number}.log"
        process = start_crawl(slow_cdn, log, settings)
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0.3, 2.0))  # anywhere from start-up to the first uploads
        else:
            wait_until(
                lambda process=process, before=before: (
                    process.poll() is not None or len(redis_ids(redis_url)) > before
                )
            )
            time.sleep(rng.uniform(0, 0.5))
        killed_mid_crawl += process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        check_recorded_ids_are_complete(s3_server, bucket, redis_ids(redis_url), items, body)
    assert killed_mid_crawl >= 6

    recorded = redis_ids(redis_url)
    result = run_crawl(slow_cdn, tmp_path / "logs", "limit=20", environment=_NO_METADATA, **settings)
    assert result.finish_reason == "finished"
    # The re-run completes the set: what the kills left unrecorded, and nothing else.
    assert result.stats["civitai/saved"] == len(items) - len(recorded)
    assert redis_ids(redis_url) == {item["id"] for item in items}
    check_recorded_ids_are_complete(s3_server, bucket, redis_ids(redis_url), items, body)


def test_ten_million_done_ids_in_redis_cost_the_crawl_no_memory(
    server: FakeCivitai, store: Path, redis_url: str
) -> None:
    import redis

    done = [server.add_image_item(images.jpeg_rgb(), id=image_id) for image_id in (5, 4_000_000, 9_999_999)]
    new = [server.add_image_item(images.jpeg_rgb(), id=11_000_000 + n) for n in range(1, 4)]
    empty = run_crawl(server, store / "empty", CIVITAI_REDIS_URL=redis_url, CIVITAI_REDIS_PREFIX="empty")
    with redis.Redis.from_url(redis_url) as client:
        # Ids 0 .. 2**20 * 10 - 1 recorded: ten full chunks, written as the bitmap itself.
        for chunk in range(10):
            client.set(f"civitai:ids:{chunk}", b"\xff" * (2**20 // 8))

    full = run_crawl(server, store / "full", CIVITAI_REDIS_URL=redis_url)

    assert empty.stats["civitai/saved"] == 6
    assert full.stats["civitai/saved"] == 3
    assert full.stats["civitai/dropped/already_downloaded"] == len(done)
    assert sorted(path.name for path in (store / "full").glob("*.jpg")) == sorted(
        f"{i['id']}.jpg" for i in new
    )
    # A set of 10,485,760 ids would be over 500 MB in the crawl; a bitmap lookup holds none.
    growth = full.stats["memusage/max"] - empty.stats["memusage/max"]
    assert growth < 30 * 2**20, f"the crawl grew by {growth / 2**20:.0f} MB with 10 million done ids"
