"""End to end: ``scrapy civitai-manifest`` over stores that real crawls filled, as a user runs it.

A real ``scrapy crawl civitai`` fills a folder (or a SeaweedFS bucket, ids in Redis) from the
fake Civitai server; the manifest command runs in a subprocess; pyarrow, pandas, DuckDB and
Hugging Face ``datasets`` read what it wrote.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from civitai_spider.local_files import TEMPORARY_PREFIX
from tests.support.crawls import REPOSITORY, crawl_environment, run_crawl, run_scrapy_command
from tests.support.datasets import CRAWL_SETTINGS, NO_METADATA, add_items, succeeded
from tests.support.fake_civitai import FakeCivitai
from tests.support.records import write_store
from tests.support.servers import SeaweedS3Server, redis_ids


def manifest(
    *arguments: str, environment: dict[str, str] | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    return run_scrapy_command("civitai-manifest", *arguments, environment=environment, **settings)


def rows_of(folder: Path) -> list[dict[str, Any]]:
    return pq.read_table(folder).to_pylist()


def test_one_row_per_recorded_id_with_the_api_values_and_the_stored_file(
    store: Path, crawled: tuple[Path, list[dict[str, Any]]]
) -> None:
    items = {item["id"]: item for item in crawled[1]}
    output = succeeded(manifest(IMAGES_STORE=str(store)))
    assert f"Added {len(items)} row(s) in 1 new part file(s)" in output
    assert [path.name for path in (store / "manifest").iterdir()] == ["part-000000.parquet"]
    rows = {row["id"]: row for row in rows_of(store / "manifest")}
    assert sorted(rows) == sorted(items)
    for image_id, row in rows.items():
        item, stored = items[image_id], json.loads((store / f"{image_id}_meta.json").read_text())
        assert row["file"] == stored["image_file"] and row["format"] == row["file"].rsplit(".", 1)[1]
        assert row["bytes"] == (store / row["file"]).stat().st_size
        assert (row["url"], row["post_id"], row["username"]) == (
            item["url"],
            item["postId"],
            item["username"],
        )
        assert row["media"] == ("video" if item["type"] == "video" else "image")
        meta = item.get("meta") or {}
        assert (row["prompt"], row["negative_prompt"]) == (meta.get("prompt"), meta.get("negativePrompt"))
        assert row["meta_json"] == (json.dumps(meta, ensure_ascii=False) if item.get("meta") else None)
    jpeg, png, webp, video, junk = crawled[1][:5]
    # The crawl wrote each item's training caption beside its file (CIVITAI_CAPTION_FILES).
    assert all((store / f"{image_id}.txt").exists() for image_id in items)
    assert (store / f"{png['id']}.txt").read_text("utf-8") == "猫 ☕, best"
    assert (store / f"{video['id']}.txt").read_bytes() == b""
    assert rows[jpeg["id"]]["tags"] == ["girl", "maid"]
    assert rows[jpeg["id"]]["created_at"] == datetime.datetime.fromisoformat(jpeg["createdAt"])
    assert (rows[jpeg["id"]]["width"], rows[jpeg["id"]]["like_count"]) == (jpeg["width"], 10)
    assert (rows[png["id"]]["format"], rows[png["id"]]["seed"], rows[png["id"]]["steps"]) == ("png", 77, 20)
    assert (rows[webp["id"]]["format"], rows[webp["id"]]["cfg_scale"], rows[webp["id"]]["clip_skip"]) == (
        "jpg",
        4.5,
        2,
    )
    assert (rows[video["id"]]["media"], rows[video["id"]]["base_model"]) == ("video", None)
    assert (rows[junk["id"]]["created_at"], rows[junk["id"]]["width"], rows[junk["id"]]["like_count"]) == (
        None,
        None,
        None,
    )


#: The README's one-liners over the manifest ("Datasets"), run as they are printed there.
README_READERS = [
    line
    for line in (REPOSITORY / "README.md").read_text(encoding="utf-8").splitlines()
    if line.startswith('python -c "import ') and "civitai-images/manifest" in line
]


def run_readme_reader(line: str, store: Path, tmp_path: Path) -> str:
    """``line`` in a shell, in a folder where ``civitai-images`` is ``store``, offline."""
    where = tmp_path / "user"
    where.mkdir(exist_ok=True)
    if not (where / "civitai-images").exists():
        (where / "civitai-images").symlink_to(store)
    hub = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "error"}
    environment = crawl_environment(extra=hub)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    result = subprocess.run(
        ["bash", "-c", line], cwd=where, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    return result.stdout


def test_a_second_run_adds_only_the_new_ids_as_a_part_every_reader_sees_at_once(
    store: Path, fake: FakeCivitai, tmp_path: Path
) -> None:
    succeeded(manifest(IMAGES_STORE=str(store)))
    first = {row["id"] for row in rows_of(store / "manifest")}
    new = add_items(fake, count=2)
    assert run_crawl(fake, store, "media=all", **CRAWL_SETTINGS).returncode == 0
    assert "Added 7 row(s) in 1 new part file(s)" in succeeded(manifest(IMAGES_STORE=str(store)))
    second = pq.read_table(store / "manifest" / "part-000001.parquet").column("id").to_pylist()
    assert sorted(second) == sorted(item["id"] for item in new) and not first & set(second)
    assert pq.read_table(store / "manifest").num_rows == len(first) + len(new)
    assert [line.split()[3] for line in README_READERS] == ["duckdb;", "pandas;", "datasets;"]
    duckdb, _, datasets = (run_readme_reader(line, store, tmp_path) for line in README_READERS)
    cells = [line.split("│")[2].strip() for line in duckdb.splitlines() if line.count("│") == 4]
    assert sum(int(cell) for cell in cells if cell.isdigit()) == len(first) + len(new)  # the counts
    assert f"num_rows: {len(first) + len(new)}" in datasets


def test_an_unchanged_store_costs_a_listing_not_a_read_of_its_files(store: Path) -> None:
    succeeded(manifest(IMAGES_STORE=str(store)))
    before = (store / "manifest" / "part-000000.parquet").read_bytes()
    for path in store.glob("*_meta.json"):
        path.write_text("{ not json")  # a read of any of them would show as a left-out id
    result = manifest(IMAGES_STORE=str(store))
    assert "Added 0 row(s) in 0 new part file(s)" in succeeded(result)
    assert "left out" not in result.stdout + result.stderr and not (store / "error_log.txt").exists()
    assert [path.name for path in (store / "manifest").iterdir()] == ["part-000000.parquet"]
    assert (store / "manifest" / "part-000000.parquet").read_bytes() == before


def test_an_unreadable_item_is_left_out_with_a_warning_and_a_log_line_then_added_once_fixed(
    store: Path, crawled: tuple[Path, list[dict[str, Any]]]
) -> None:
    jpeg, png = crawled[1][0]["id"], crawled[1][1]["id"]
    metadata = (store / f"{jpeg}_meta.json").read_bytes()
    (store / f"{jpeg}_meta.json").write_text("{ not json")
    (store / f"{png}.png").unlink()
    result = manifest(IMAGES_STORE=str(store))
    assert "2 recorded id(s) left out" in succeeded(result)
    assert {row["id"] for row in rows_of(store / "manifest")} == {i["id"] for i in crawled[1]} - {jpeg, png}
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 2 and f"Image {jpeg} left out" in warnings[0] and "not JSON" in warnings[0]
    assert f"Image {png} left out" in warnings[1] and f"{png}.png" in warnings[1]
    logged = (store / "error_log.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in logged] == [str(jpeg), str(png)]
    assert all("left out of the dataset" in line for line in logged)
    (store / f"{jpeg}_meta.json").write_bytes(metadata)
    assert "Added 1 row(s)" in succeeded(manifest(IMAGES_STORE=str(store)))


def test_recorded_ids_without_files_are_counted_not_warned_about(store: Path) -> None:
    with open(store / "downloaded_image_ID_DB.txt", "a") as id_file:
        id_file.write("900001\n900002\n")  # ids imported from the old script's ID file
    result = manifest(IMAGES_STORE=str(store))
    assert "2 recorded id(s) have no metadata file in the store" in succeeded(result)
    assert "WARNING" not in result.stderr


def test_a_killed_run_leaves_a_readable_manifest_and_the_next_run_completes_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 6000)
    command = [sys.executable, "-m", "scrapy", "civitai-manifest", "-s", f"IMAGES_STORE={store}"]
    command += ["-s", "CIVITAI_MANIFEST_PART_ROWS=500"]
    process = subprocess.Popen(command, cwd=REPOSITORY, env=crawl_environment(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (store / "manifest" / "part-000002.parquet").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no third part before the end"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    parts = sorted(path.name for path in (store / "manifest").iterdir() if path.suffix == ".parquet")
    assert len(parts) < 12, "the run ended before the kill: nothing was tested"
    read = [row["id"] for row in rows_of(store / "manifest")]  # readable as it is: whole parts only
    assert len(read) == 500 * len(parts) and read == ids[: len(read)]
    succeeded(manifest(IMAGES_STORE=str(store), CIVITAI_MANIFEST_PART_ROWS="500"))
    assert sorted(row["id"] for row in rows_of(store / "manifest")) == ids
    assert not [name for name in os.listdir(store / "manifest") if name.startswith(TEMPORARY_PREFIX)]


@pytest.mark.parametrize(
    ("arguments", "settings", "named"),
    [
        (["extra"], {}, "'extra'"),
        ([], {"CIVITAI_MANIFEST_PART_ROWS": "0"}, "CIVITAI_MANIFEST_PART_ROWS='0'"),
        ([], {"CIVITAI_MANIFEST_PART_ROWS": "many"}, "CIVITAI_MANIFEST_PART_ROWS='many'"),
        ([], {"IMAGES_STORE": "ftp://host/images"}, "'ftp://'"),
        (["--output", "s3://"], {}, "names no bucket"),
        ([], {"CIVITAI_REDIS_URL": "redis://127.0.0.1:1/0"}, "127.0.0.1:1"),
    ],
)
def test_a_bad_option_or_setting_is_one_line_and_status_2(
    arguments: list[str], settings: dict[str, str], named: str, store: Path
) -> None:
    result = manifest(*arguments, **{"IMAGES_STORE": str(store), **settings})
    assert result.returncode == 2, result.stderr[-2000:]
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert named in error
    assert not (store / "manifest").exists()


def test_a_bucket_with_ids_in_redis_gets_its_manifest_under_its_prefix(
    fake: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, redis_url: str, tmp_path: Path
) -> None:
    settings = {
        **s3_server.settings(bucket, "civitai"),
        "CIVITAI_REDIS_URL": redis_url,
        "CIVITAI_LOG_DIR": str(tmp_path / "logs"),
    }
    items = add_items(fake)
    crawl = run_crawl(
        fake, tmp_path / "logs", "media=all", environment=NO_METADATA, **CRAWL_SETTINGS, **settings
    )
    assert crawl.returncode == 0, crawl.stderr[-2000:]
    recorded = redis_ids(redis_url)
    assert {item["id"] for item in items} <= recorded
    result = manifest(environment=NO_METADATA, **settings)
    assert f"to s3://{bucket}/civitai/manifest/" in succeeded(result)
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix="civitai/manifest/")["Contents"]
    assert [entry["Key"] for entry in listed] == ["civitai/manifest/part-000000.parquet"]
    body = client.get_object(Bucket=bucket, Key="civitai/manifest/part-000000.parquet")["Body"].read()
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert {row["id"] for row in rows} == recorded
    png = items[1]["id"]  # its caption went to the bucket too, with the other files
    caption = client.get_object(Bucket=bucket, Key=f"civitai/{png}.txt")
    assert caption["Body"].read().decode("utf-8") == "猫 ☕, best"
    sizes = {entry["Key"]: entry["Size"] for entry in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert all(row["bytes"] == sizes[f"civitai/{row['file']}"] for row in rows)
    # A second run reads the part's ids back with ranged GETs and adds nothing; a local --output
    # gets the same rows.
    assert "Added 0 row(s)" in succeeded(manifest(environment=NO_METADATA, **settings))
    succeeded(manifest("--output", str(tmp_path / "local"), environment=NO_METADATA, **settings))
    assert sorted(rows_of(tmp_path / "local"), key=lambda row: row["id"]) == sorted(
        rows, key=lambda r: r["id"]
    )
