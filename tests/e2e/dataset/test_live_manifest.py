"""End to end: the manifest as you crawl, through the real ``scrapy crawl`` and ``civitai-manifest``.

A real crawl from the fake Civitai server writes each recorded item's row into crawl parts of the
store's ``manifest`` folder (a prefix of a SeaweedFS bucket); they hold the rows the command
reads from the files, the folder is read with pyarrow and pandas while the crawl runs, a
``kill -9`` at any moment never leaves a row of an id that is not recorded, and the next
``civitai-manifest`` compacts the parts (no file read for their ids) into exactly the recorded ids.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from civitai_spider.manifest_rows import rows_table
from civitai_spider.pipelines.manifest import CRAWL_PART_NAME
from tests.support.crawls import (
    REPOSITORY,
    CrawlResult,
    crawl_environment,
    run_crawl,
    run_scrapy_command,
    start_crawl,
    wait_for,
)
from tests.support.datasets import CRAWL_SETTINGS, NO_METADATA, add_items, succeeded
from tests.support.fake_civitai import FakeCivitai
from tests.support.servers import SeaweedS3Server, redis_ids
from tests.support.workers import Workers
from tests.support.workers import add_items as add_worker_items


@pytest.fixture
def server() -> Iterator[FakeCivitai]:
    with FakeCivitai() as fake:
        yield fake


def manifest(*arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return run_scrapy_command("civitai-manifest", *arguments, environment=NO_METADATA, **settings)


def crawl_parts(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if CRAWL_PART_NAME.fullmatch(path.name))


def by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: row["id"])


def recorded(store: Path) -> set[int]:
    id_file = store / "downloaded_image_ID_DB.txt"
    # Whole lines only: a crawl killed mid-append may leave a torn last one, which is no id.
    return {int(line) for line in id_file.read_text().split("\n")[:-1]} if id_file.exists() else set()


def manifest_ids(folder: Path) -> list[int]:
    return sorted(ds.dataset(folder).to_table(columns=["id"]).column("id").to_pylist())


#: The README's one-line readers of the manifest while a crawl runs (Examples, Datasets).
README_READERS = [
    line
    for line in (REPOSITORY / "README.md").read_text(encoding="utf-8").splitlines()
    if line.startswith("python -c 'import ") and "civitai-images/manifest" in line
]


def run_readme_reader(line: str, store: Path, tmp_path: Path) -> str:
    """``line`` in a shell, in a folder where ``civitai-images`` is ``store``."""
    where = tmp_path / "user"
    where.mkdir(exist_ok=True)
    if not (where / "civitai-images").exists():
        (where / "civitai-images").symlink_to(store)
    environment = crawl_environment(extra={"PYTHONWARNINGS": "error"})
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    result = subprocess.run(["bash", "-c", line], cwd=where, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    return result.stdout


def test_a_crawl_s_parts_hold_the_rows_the_files_give_and_compact_without_a_file_read(
    server: FakeCivitai, tmp_path: Path
) -> None:
    items = add_items(server, 4)
    store = tmp_path / "store"
    result = run_crawl(server, store, "media=all", CIVITAI_MANIFEST_FLUSH_ROWS="3", **CRAWL_SETTINGS)

    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(result.ids_recorded()) == sorted(item["id"] for item in items)
    parts = crawl_parts(store / "manifest")
    assert len(parts) == 3 == result.stats["civitai/manifest/parts_written"], parts  # 9 rows, 3 a part
    assert result.stats["civitai/manifest/rows_written"] == len(items)
    live = by_id(pq.read_table(store / "manifest").to_pylist())
    # What civitai-manifest makes of the same store's files, the crawl parts gone.
    from_files = Path(shutil.copytree(store, tmp_path / "files"))
    shutil.rmtree(from_files / "manifest")
    succeeded(manifest(IMAGES_STORE=str(from_files)))
    assert live == by_id(pq.read_table(from_files / "manifest").to_pylist())

    for path in store.glob("*_meta.json"):
        path.unlink()  # a file read would now leave its item out
    output = succeeded(manifest(IMAGES_STORE=str(store)))

    assert f"Added {len(items)} row(s) in 1 new part file(s)" in output
    assert f"{len(items)} of them from 3 crawl part(s), 3 removed" in output
    assert sorted(path.name for path in (store / "manifest").iterdir()) == ["part-000000.parquet"]
    assert by_id(pq.read_table(store / "manifest").to_pylist()) == live
    assert "Added 0 row(s)" in succeeded(manifest(IMAGES_STORE=str(store)))


def test_a_bucket_crawl_writes_its_parts_under_the_prefix_and_compacts_them_there(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    settings = {**s3_server.settings(bucket, "civitai"), "CIVITAI_LOG_DIR": str(tmp_path / "logs")}
    items = add_items(server, 3)
    crawl = run_crawl(
        server,
        tmp_path / "logs",
        "media=all",
        environment=NO_METADATA,
        CIVITAI_MANIFEST_FLUSH_ROWS="5",
        **CRAWL_SETTINGS,
        **settings,
    )
    assert crawl.returncode == 0, crawl.stderr[-3000:]
    ids = sorted(crawl.ids_recorded())
    assert ids == sorted(item["id"] for item in items)
    client = s3_server.client()

    def listed(prefix: str) -> dict[str, int]:
        answer = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return {entry["Key"]: entry["Size"] for entry in answer.get("Contents", ())}

    parts = sorted(key for key in listed("civitai/manifest/"))
    assert len(parts) == 2 and all(CRAWL_PART_NAME.fullmatch(key.rsplit("/", 1)[1]) for key in parts)
    live = by_id(
        [
            row
            for key in parts
            for row in pq.read_table(
                io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            ).to_pylist()
        ]
    )
    # The rows the command makes of each stored <id>_meta.json and its media object's size.
    sizes = listed("civitai/")
    entries = []
    for image_id in ids:
        body = client.get_object(Bucket=bucket, Key=f"civitai/{image_id}_meta.json")["Body"].read()
        record = json.loads(body)
        entries.append((image_id, record, sizes[f"civitai/{record['image_file']}"]))
    assert live == rows_table(entries).to_pylist()

    for image_id in ids:
        client.delete_object(Bucket=bucket, Key=f"civitai/{image_id}_meta.json")
    output = succeeded(manifest(**settings))

    assert f"Added {len(ids)} row(s) in 1 new part file(s) to s3://{bucket}/civitai/manifest/" in output
    assert list(listed("civitai/manifest/")) == ["civitai/manifest/part-000000.parquet"]
    body = client.get_object(Bucket=bucket, Key="civitai/manifest/part-000000.parquet")["Body"].read()
    assert by_id(pq.read_table(io.BytesIO(body)).to_pylist()) == live


def test_the_manifest_folder_is_readable_while_the_crawl_runs_and_names_only_recorded_ids(
    server: FakeCivitai, tmp_path: Path
) -> None:
    add_items(server, 35)
    server.cdn_delay = 0.1  # 2 at a time: about 2 s of crawl
    store, log = tmp_path / "store", tmp_path / "crawl.log"
    process = start_crawl(
        server,
        store,
        log,
        "media=all",
        CIVITAI_IMAGES_IN_FLIGHT="2",
        CIVITAI_MANIFEST_FLUSH_ROWS="1000",
        CIVITAI_MANIFEST_FLUSH_SECONDS="0.2",
        **CRAWL_SETTINGS,
    )
    wait_for(lambda: (store / "manifest").is_dir() and bool(crawl_parts(store / "manifest")), process, log)
    seen = []
    while process.poll() is None:
        # Rows first, then the ids recorded: every row read must be of a recorded id.
        rows = manifest_ids(store / "manifest")
        frame = pandas.read_parquet(store / "manifest", columns=["id", "prompt"])
        assert set(rows) <= recorded(store) and len(frame) >= len(rows)
        seen.append(len(rows))
        time.sleep(0.1)
    assert process.wait() == 0, log.read_text()[-3000:]
    assert len(seen) >= 3 and seen[0] < seen[-1], f"read {seen} while it ran: nothing was tested"
    assert manifest_ids(store / "manifest") == sorted(recorded(store))
    # The README's readers of a crawl's manifest folder (pyarrow, DuckDB, pandas) count its rows.
    assert len(README_READERS) == 3
    for line in README_READERS:
        assert run_readme_reader(line, store, tmp_path).strip() == str(len(recorded(store)))


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_any_moment_leaves_no_row_of_an_unrecorded_id_and_the_next_manifest_has_them_all(
    server: FakeCivitai, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    add_items(server, 60)
    server.cdn_delay = 0.04
    store = tmp_path / "store"
    for round_number in range(3):
        log = tmp_path / f"crawl-{round_number}.log"
        process = start_crawl(
            server,
            store,
            log,
            "media=all",
            CIVITAI_IMAGES_IN_FLIGHT="3",
            CIVITAI_MANIFEST_FLUSH_ROWS="4",
            **CRAWL_SETTINGS,
        )
        time.sleep(rng.uniform(0.8, 2.5))  # from start-up to the crawl's last parts
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (store / "manifest").is_dir():
            assert set(manifest_ids(store / "manifest")) <= recorded(store)
    finished = run_crawl(server, store, "media=all", CIVITAI_MANIFEST_FLUSH_ROWS="4", **CRAWL_SETTINGS)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ids = recorded(store)
    assert len(ids) == 65

    succeeded(manifest(IMAGES_STORE=str(store)))

    assert manifest_ids(store / "manifest") == sorted(ids)  # each once, none missing
    assert not crawl_parts(store / "manifest")


def test_a_killed_crawl_s_ids_get_their_rows_from_their_files(server: FakeCivitai, tmp_path: Path) -> None:
    add_items(server, 40)
    server.cdn_delay = 0.05
    store, log = tmp_path / "store", tmp_path / "crawl.log"
    # Rows wait for 1,000 of them or a minute: a kill -9 loses every one of its rows.
    process = start_crawl(server, store, log, "media=all", CIVITAI_IMAGES_IN_FLIGHT="2", **CRAWL_SETTINGS)
    wait_for(lambda: len(recorded(store)) >= 10, process, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    ids = recorded(store)
    assert 10 <= len(ids) < 45 and not (store / "manifest").exists()

    output = succeeded(manifest(IMAGES_STORE=str(store)))

    assert f"Added {len(ids)} row(s)" in output and "crawl part" not in output
    assert manifest_ids(store / "manifest") == sorted(ids)


def test_a_graceful_stop_writes_the_rows_waiting(server: FakeCivitai, tmp_path: Path) -> None:
    add_items(server, 60)
    server.cdn_delay = 0.05
    store, log = tmp_path / "store", tmp_path / "crawl.log"
    process = start_crawl(server, store, log, "media=all", CIVITAI_IMAGES_IN_FLIGHT="2", **CRAWL_SETTINGS)
    wait_for(lambda: len(recorded(store)) >= 10, process, log)
    process.send_signal(signal.SIGINT)  # Ctrl-C once
    assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
    ids = recorded(store)
    assert 10 <= len(ids) < 65, "it was not stopped mid-crawl"
    [part] = crawl_parts(store / "manifest")
    assert sorted(pq.read_table(store / "manifest" / part).column("id").to_pylist()) == sorted(ids)


def test_a_part_that_cannot_be_written_is_logged_and_the_crawl_goes_on(
    server: FakeCivitai, tmp_path: Path
) -> None:
    items = add_items(server, 3)
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest").write_text("a file where the manifest folder goes")
    result = run_crawl(server, store, "media=all", CIVITAI_MANIFEST_FLUSH_ROWS="3", **CRAWL_SETTINGS)

    assert (result.returncode, result.finish_reason) == (0, "finished"), result.stderr[-3000:]
    assert result.stats["civitai/saved"] == len(items) == len(result.ids_recorded())
    assert result.stats["civitai/manifest/part_failures"] == 3
    assert result.stats["civitai/manifest/rows_not_written"] == len(items)
    warnings = [line for line in result.stderr.splitlines() if "not written: " in line]
    assert len(warnings) == 3 and all("WARNING" in line and "FileExistsError" in line for line in warnings)
    log_lines = [line for line in result.error_log().splitlines() if "manifest part not written" in line]
    assert [line.split("\t")[1] for line in log_lines] == ["3 ids", "3 ids", "2 ids"]  # 8 items

    (store / "manifest").unlink()
    succeeded(manifest(IMAGES_STORE=str(store)))
    assert manifest_ids(store / "manifest") == sorted(result.ids_recorded())


def test_off_a_crawl_writes_no_part(server: FakeCivitai, tmp_path: Path) -> None:
    add_items(server)
    result = run_crawl(server, tmp_path / "store", "media=all", CIVITAI_MANIFEST="false", **CRAWL_SETTINGS)
    assert result.returncode == 0 and result.ids_recorded(), result.stderr[-3000:]
    assert not (tmp_path / "store" / "manifest").exists()
    assert not [name for name in result.stats if name.startswith("civitai/manifest/")]


def test_an_output_elsewhere_gets_the_crawl_parts_rows_and_leaves_them_for_the_store(
    server: FakeCivitai, tmp_path: Path
) -> None:
    items = add_items(server)
    store = tmp_path / "store"
    result: CrawlResult = run_crawl(
        server, store, "media=all", CIVITAI_MANIFEST_FLUSH_ROWS="2", **CRAWL_SETTINGS
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parts = crawl_parts(store / "manifest")
    for path in store.glob("*_meta.json"):
        path.unlink()

    output = succeeded(manifest("--output", str(tmp_path / "elsewhere"), IMAGES_STORE=str(store)))

    assert f"{len(items)} of them from {len(parts)} crawl part(s), {len(parts)} left in place" in output
    assert manifest_ids(tmp_path / "elsewhere") == sorted(item["id"] for item in items)
    assert crawl_parts(store / "manifest") == parts
    succeeded(manifest(IMAGES_STORE=str(store)))
    assert manifest_ids(store / "manifest") == sorted(item["id"] for item in items)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("CIVITAI_MANIFEST", "maybe"),
        ("CIVITAI_MANIFEST_FLUSH_ROWS", "0"),
        ("CIVITAI_MANIFEST_FLUSH_ROWS", "many"),
        ("CIVITAI_MANIFEST_FLUSH_SECONDS", "0"),
        ("CIVITAI_MANIFEST_FLUSH_SECONDS", "soon"),
    ],
)
def test_a_bad_value_ends_the_crawl_before_any_request(
    server: FakeCivitai, tmp_path: Path, setting: str, value: str
) -> None:
    result = run_crawl(server, tmp_path / "store", **{setting: value})
    assert result.returncode == 2, result.stderr[-3000:]
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"{setting}={value!r} is not valid: allowed is" in error
    assert server.requests == []


def test_an_item_whose_id_is_not_recorded_gets_no_row(server: FakeCivitai, tmp_path: Path) -> None:
    # The id store fails mid-crawl (its folder becomes a file) while the file store goes on: the
    # items after that have every file stored, but their ids are not recorded, so no row.
    add_items(server, 25)
    store, ids_folder = tmp_path / "store", tmp_path / "ids"
    id_file = ids_folder / "ids.txt"

    def break_the_id_store_at_the_second_page(request: Any) -> None:
        if "cursor" not in request.query or ids_folder.is_file():
            return
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(recorded_in(id_file)) < 10:
            time.sleep(0.02)
        ids_folder.rename(tmp_path / "ids-were-here")
        ids_folder.write_text("the id store is gone")

    server.on_api_request = break_the_id_store_at_the_second_page
    result = run_crawl(
        server,
        store,
        "media=all",
        "limit=10",
        CIVITAI_ID_FILE=str(id_file),
        CIVITAI_MAX_STORE_FAILURES="1000",
        CIVITAI_IMAGES_IN_FLIGHT="2",
        CIVITAI_MANIFEST_FLUSH_ROWS="1",
        **CRAWL_SETTINGS,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    ids = recorded_in(tmp_path / "ids-were-here" / "ids.txt")
    assert len(ids) >= 10 and result.stats["civitai/failed"] >= 10, result.stats
    not_recorded = {item["id"] for item in server.items} - ids
    assert any((store / f"{image_id}_meta.json").exists() for image_id in not_recorded)  # files stored
    assert set(manifest_ids(store / "manifest")) == ids


def recorded_in(id_file: Path) -> set[int]:
    return {int(line) for line in id_file.read_text().split("\n")[:-1]} if id_file.exists() else set()


def test_workers_of_a_shared_crawl_write_their_own_parts_into_one_store(
    server: FakeCivitai, redis_url: str, tmp_path: Path
) -> None:
    add_worker_items(server, 400)
    store = tmp_path / "store"
    pool = Workers(server, store, redis_url, tmp_path / "logs", CIVITAI_MANIFEST_FLUSH_ROWS="25")
    try:
        pool.start(2)
        results = pool.wait()
    finally:
        pool.kill()
    assert all(result.returncode == 0 for result in results), results[0].stderr[-3000:]
    ids = redis_ids(redis_url)
    assert len(ids) == 400 and all(result.stats.get("civitai/manifest/rows_written") for result in results)
    tags = {name.split("-")[2] for name in crawl_parts(store / "manifest")}
    assert len(tags) == 2  # each worker its own names
    assert manifest_ids(store / "manifest") == sorted(ids)  # every row once, read as it is

    succeeded(manifest(IMAGES_STORE=str(store), CIVITAI_REDIS_URL=redis_url))
    assert manifest_ids(store / "manifest") == sorted(ids)
    assert not crawl_parts(store / "manifest")


def test_civitai_manifest_run_again_and_again_during_a_crawl_loses_and_repeats_no_row(
    server: FakeCivitai, tmp_path: Path
) -> None:
    add_items(server, 55)
    server.cdn_delay = 0.05
    store, log = tmp_path / "store", tmp_path / "crawl.log"
    process = start_crawl(
        server,
        store,
        log,
        "media=all",
        CIVITAI_IMAGES_IN_FLIGHT="2",
        CIVITAI_MANIFEST_FLUSH_ROWS="3",
        CIVITAI_MANIFEST_PART_ROWS="7",
        **CRAWL_SETTINGS,
    )
    wait_for(lambda: len(recorded(store)) >= 3, process, log)
    runs = 0
    while process.poll() is None:
        # It compacts crawl parts as the crawl writes new ones, under temporary names it leaves.
        succeeded(manifest(IMAGES_STORE=str(store), CIVITAI_MANIFEST_PART_ROWS="7"))
        rows = ds.dataset(store / "manifest").to_table(columns=["id"]).column("id").to_pylist()
        assert set(rows) <= recorded(store)
        runs += 1
    assert process.wait() == 0, log.read_text()[-3000:]
    assert runs >= 2, "the crawl ended before a second run: nothing was tested"
    succeeded(manifest(IMAGES_STORE=str(store), CIVITAI_MANIFEST_PART_ROWS="7"))
    rows = ds.dataset(store / "manifest").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(rows) == sorted(recorded(store)) and len(rows) == 60
