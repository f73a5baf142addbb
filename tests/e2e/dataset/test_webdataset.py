"""End to end: ``scrapy civitai-export`` over stores that a real crawl filled, read back with ``webdataset``.

The shards are read with the ``webdataset`` package in a subprocess, as a training script
reads them (it leaves files open for the garbage collector, which this suite's
warnings-as-errors would turn into failures of its own), and with ``tarfile`` for what the
package does not show (member order, temporary names).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
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
from tests.support.servers import SeaweedS3Server

# Every sample of the shards named on the command line, each member's bytes in base64.
_READ_SHARDS = """
import base64, json, sys
import webdataset as wds
for sample in wds.WebDataset(sys.argv[1:], shardshuffle=False):
    print(json.dumps({name: base64.b64encode(value).decode() if isinstance(value, bytes) else value
                      for name, value in sample.items()}))
"""


def export(
    *arguments: str, environment: dict[str, str] | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    return run_scrapy_command("civitai-export", *arguments, environment=environment, **settings)


def read_shards(paths: list[Path]) -> list[dict[str, Any]]:
    """The samples of ``paths`` as ``webdataset`` reads them: ``__key__``, ``__url__`` and bytes."""
    result = subprocess.run(
        [sys.executable, "-c", _READ_SHARDS, *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    for sample in samples:
        for name, value in sample.items():
            if not name.startswith("__"):
                sample[name] = base64.b64decode(value)
    return samples


def shards_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.tar"))


def index_of(folder: Path) -> list[dict[str, Any]]:
    return pq.read_table(folder / "index").to_pylist()


def test_shards_hold_every_recorded_id_once_as_its_stored_files(
    store: Path, crawled: tuple[Path, list[dict[str, Any]]]
) -> None:
    items = {item["id"]: item for item in crawled[1]}
    output = succeeded(export("--shard-size", "2", IMAGES_STORE=str(store)))
    assert f"Added {len(items)} item(s) in 3 new shard(s) to {store / 'webdataset'}" in output
    folder = store / "webdataset"
    assert [path.name for path in shards_in(folder)] == [f"shard-00000{n}.tar" for n in range(3)]
    samples = read_shards(shards_in(folder))
    assert sorted(int(sample["__key__"]) for sample in samples) == sorted(items)  # each once
    for sample in samples:
        image_id = int(sample["__key__"])
        stored = json.loads((store / f"{image_id}_meta.json").read_bytes())
        extension = stored["image_file"].rsplit(".", 1)[1]
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {extension, "json", "txt"}
        assert sample[extension] == (store / stored["image_file"]).read_bytes()
        assert sample["json"] == (store / f"{image_id}_meta.json").read_bytes()
        # The crawl wrote the same caption beside the image (CIVITAI_CAPTION_FILES).
        assert sample["txt"] == (store / f"{image_id}.txt").read_bytes()
    jpeg, png, webp, video = (crawled[1][n]["id"] for n in range(4))
    by_id = {int(sample["__key__"]): sample for sample in samples}
    assert (by_id[png]["txt"].decode(), "png" in by_id[png]) == ("猫 ☕, best", True)
    assert ("jpg" in by_id[webp], "mp4" in by_id[video], by_id[video]["txt"]) == (True, True, b"")
    # The index: which id is in which shard, in shard order, as the shards hold them.
    index = index_of(folder)
    assert [row["id"] for row in index] == sorted(items)
    for sample in samples:
        [row] = [row for row in index if row["key"] == sample["__key__"]]
        assert sample["__url__"].endswith(row["shard"])
        assert row["file"] == json.loads(sample["json"])["image_file"]
    # Each sample's members are together, media first, as a streaming reader wants them.
    with tarfile.open(folder / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names == [f"{jpeg}.jpg", f"{jpeg}.json", f"{jpeg}.txt", f"{png}.png", f"{png}.json", f"{png}.txt"]
    # CIVITAI_CAPTION_RAW: the prompt as received.
    raw = store / "raw"
    succeeded(export("--output", str(raw), IMAGES_STORE=str(store), CIVITAI_CAPTION_RAW="true"))
    [sample] = [s for s in read_shards(shards_in(raw)) if s["__key__"] == str(png)]
    assert sample["txt"].decode() == "猫 ☕, (best:1.2)"


#: The README's WebDataset loader ("Datasets"), as it is printed there.
README_LOADER = re.search(
    r"```python\n(import glob\nimport webdataset.*?)```",
    (REPOSITORY / "README.md").read_text(encoding="utf-8"),
    re.DOTALL,
)


def test_a_second_run_adds_shards_only_for_new_ids_and_the_readme_loader_reads_all(
    store: Path, fake: FakeCivitai, tmp_path: Path
) -> None:
    succeeded(export("--shard-size", "4", IMAGES_STORE=str(store)))
    first = {row["id"] for row in index_of(store / "webdataset")}
    before = [path.read_bytes() for path in shards_in(store / "webdataset")]
    new = add_items(fake, count=1)
    assert run_crawl(fake, store, "media=all", **CRAWL_SETTINGS).returncode == 0
    output = succeeded(export("--shard-size", "4", IMAGES_STORE=str(store)))
    assert "Added 6 item(s) in 2 new shard(s)" in output and "11 item(s) in all" in output
    shards = shards_in(store / "webdataset")
    assert [path.read_bytes() for path in shards[:2]] == before  # the first run's shards untouched
    added = {int(sample["__key__"]) for sample in read_shards(shards[2:])}
    assert added == {item["id"] for item in new} and not added & first
    assert "Added 0 item(s) in 0 new shard(s)" in succeeded(export(IMAGES_STORE=str(store)))
    # The README's loader, run as printed, in a folder where civitai-images is this store.
    assert README_LOADER, "the README has no WebDataset loader"
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "civitai-images").symlink_to(store)
    result = subprocess.run(
        [sys.executable, "-c", README_LOADER[1]],
        cwd=tmp_path / "user",
        env=crawl_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line.split(" ", 3) for line in result.stdout.splitlines()]
    assert sorted(int(key) for key, *_ in printed) == sorted(first | added)
    kinds = {key: kind for key, kind, *_ in printed}
    assert {kinds[str(item["id"])] for item in new} == {"Image", "bytes"}  # a decoded picture, a video
    assert all(
        url == json.loads((store / f"{key}_meta.json").read_text())["url"] for key, _, url, _ in printed
    )


def test_what_a_killed_run_left_half_done_is_removed_and_written_again(store: Path) -> None:
    succeeded(export("--shard-size", "2", IMAGES_STORE=str(store)))
    folder = store / "webdataset"
    last = {row["id"] for row in index_of(folder) if row["shard"] == "shard-000002.tar"}
    (folder / "index" / "shard-000002.parquet").unlink()  # killed after the shard, before its index
    (folder / "index" / "shard-000001.parquet").rename(folder / "index" / "shard-000007.parquet")
    (folder / "shard-000001.tar").rename(folder / "shard-000008.tar")  # a shard and an index unpaired
    (folder / f"{TEMPORARY_PREFIX}shard-000009.tar.partial").write_bytes(b"half a tar")
    output = succeeded(export("--shard-size", "2", IMAGES_STORE=str(store)))
    assert "Removed 3 shard(s) or index part(s) that a killed run left half done" in output
    assert "Added 3 item(s) in 2 new shard(s)" in output and "5 item(s) in all" in output
    assert sorted(os.listdir(folder)) == ["index", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(os.listdir(folder / "index")) == [f"shard-00000{n}.parquet" for n in range(3)]
    index = index_of(folder)
    assert len({row["id"] for row in index}) == len(index) == 5
    assert last <= {int(sample["__key__"]) for sample in read_shards(shards_in(folder))}


def test_kill_9_leaves_whole_shards_and_the_next_run_completes_them(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_store(store, 3000)
    command = [sys.executable, "-m", "scrapy", "civitai-export", "--shard-size", "100"]
    command += ["-s", f"IMAGES_STORE={store}"]
    process = subprocess.Popen(command, cwd=REPOSITORY, env=crawl_environment(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (store / "webdataset" / "shard-000003.tar").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no fourth shard before the end"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = store / "webdataset"
    assert len(shards_in(folder)) < 30, "the run ended before the kill: nothing was tested"
    indexed = [row["id"] for row in index_of(folder)]
    # Every shard there is whole: tarfile reads each to its end.
    for shard in shards_in(folder):
        with tarfile.open(shard) as tar:
            assert len(tar.getnames()) == 300
    succeeded(export("--shard-size", "100", IMAGES_STORE=str(store)))
    samples = read_shards(shards_in(folder))
    assert sorted(int(sample["__key__"]) for sample in samples) == ids
    assert indexed == ids[: len(indexed)] and [row["id"] for row in index_of(folder)] == ids
    assert not [name for name in os.listdir(folder) if name.startswith(TEMPORARY_PREFIX)]


def test_an_unreadable_item_is_left_out_with_a_warning_and_a_log_line_then_added_once_fixed(
    store: Path, crawled: tuple[Path, list[dict[str, Any]]]
) -> None:
    png = crawled[1][1]["id"]
    (store / f"{png}.png").rename(store.parent / "away.png")
    result = export(IMAGES_STORE=str(store))
    assert "1 recorded id(s) left out" in succeeded(result)
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert f"Image {png} left out" in warning and f"{png}.png" in warning
    [logged] = (store / "error_log.txt").read_text().splitlines()
    assert logged.split("\t")[1] == str(png) and "left out of the dataset" in logged
    assert png not in {row["id"] for row in index_of(store / "webdataset")}
    (store.parent / "away.png").rename(store / f"{png}.png")
    assert "Added 1 item(s) in 1 new shard(s)" in succeeded(export(IMAGES_STORE=str(store)))
    assert png in {row["id"] for row in index_of(store / "webdataset")}


@pytest.mark.parametrize(
    ("arguments", "settings", "named"),
    [
        (["--format", "zip"], {}, "--format 'zip' is not valid: allowed is webdataset"),
        (["--shard-size", "0"], {}, "--shard-size '0' is not valid: allowed is an integer >= 1"),
        (["--shard-size", "many"], {}, "--shard-size 'many'"),
        (["extra"], {}, "'extra'"),
        ([], {"CIVITAI_CAPTION_RAW": "maybe"}, "CIVITAI_CAPTION_RAW='maybe'"),
        ([], {"CIVITAI_REDIS_URL": "redis://127.0.0.1:1/0"}, "127.0.0.1:1"),
    ],
)
def test_a_bad_option_or_setting_is_one_line_and_status_2(
    arguments: list[str], settings: dict[str, str], named: str, store: Path
) -> None:
    result = export(*arguments, **{"IMAGES_STORE": str(store), **settings})
    assert result.returncode == 2, result.stderr[-2000:]
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert named in error
    assert not (store / "webdataset").exists()


def test_a_bucket_gets_its_shards_and_index_under_its_prefix(
    crawled: tuple[Path, list[dict[str, Any]]], s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3_server.client()
    source = crawled[0]
    for path in source.iterdir():  # the crawled store, as a crawl to this bucket leaves it
        if path.is_file() and path.name != "downloaded_image_ID_DB.txt":
            client.put_object(Bucket=bucket, Key=f"civitai/{path.name}", Body=path.read_bytes())
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "downloaded_image_ID_DB.txt").write_bytes((source / "downloaded_image_ID_DB.txt").read_bytes())
    # A shard a killed run uploaded without its index part: removed, its ids written again.
    client.put_object(Bucket=bucket, Key="civitai/webdataset/shard-000005.tar", Body=b"not indexed")
    settings = {**s3_server.settings(bucket, "civitai"), "CIVITAI_LOG_DIR": str(logs)}
    output = succeeded(export("--shard-size", "3", environment=NO_METADATA, **settings))
    assert f"to s3://{bucket}/civitai/webdataset/" in output and "Removed 1 shard(s)" in output
    keys = sorted(
        entry["Key"]
        for entry in client.list_objects_v2(Bucket=bucket, Prefix="civitai/webdataset/")["Contents"]
    )
    assert keys == [
        "civitai/webdataset/index/shard-000000.parquet",
        "civitai/webdataset/index/shard-000001.parquet",
        "civitai/webdataset/shard-000000.tar",
        "civitai/webdataset/shard-000001.tar",
    ]
    local = tmp_path / "downloaded"
    local.mkdir()
    for key in keys:
        (local / key.rsplit("/", 1)[1]).write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    samples = read_shards(shards_in(local))
    assert sorted(int(sample["__key__"]) for sample in samples) == sorted(item["id"] for item in crawled[1])
    for sample in samples:
        stored = json.loads(sample["json"])
        assert sample[stored["image_file"].rsplit(".", 1)[1]] == (source / stored["image_file"]).read_bytes()
    head = client.head_object(Bucket=bucket, Key="civitai/webdataset/shard-000000.tar")
    assert head["ContentType"] == "application/x-tar"
    assert "Added 0 item(s)" in succeeded(export("--shard-size", "3", environment=NO_METADATA, **settings))
