"""The manifest scenario: ``scrapy civitai-manifest`` over a folder store on the real disk.

A store of ``records`` complete items is written the way the pipelines write one (each item's
``<id>_meta.json``, prompt files and a small media file, every id in the ID file), on the
disk the user would use (``--disk-dir``); then, each a real ``scrapy civitai-manifest`` in a
subprocess, timed from its start to its exit (start-up included):

- the first run, which writes the whole manifest: records/s against the target of 5,000;
- the same command again over the unchanged store: what a listing costs;
- a first run over a tenth of the records, for the peak RSS: streamed in row groups, the
  larger run needs little more memory than the smaller one;
- ``scrapy civitai-export`` over the larger store: WebDataset shards of every item (its media,
  ``<id>.json`` and caption), items/s.

The metadata files were just written, so they are read from the page cache, as they are on
a machine whose crawl just ended.

With ``--manifest-live-records N``, the manifest as you crawl: a store of ``N`` recorded items
whose crawl parts were written by the crawl's own part writer
(:class:`~civitai_spider.pipelines.manifest.ManifestPipeline`, fed each item as the crawl feeds
it, 1,000 rows a part) beside the ID file, the page cache dropped (``sync; echo 3 >
/proc/sys/vm/drop_caches``: root only, else the run says it was warm), then the real ``scrapy
civitai-manifest`` timed from its start to its exit, against the target of 4 minutes for a
million. The store holds no media or metadata files: every recorded id has its row in a part,
and the command reads no file of such an id (``tests/e2e/dataset/test_live_manifest.py``
removes every ``<id>_meta.json`` first and gets every row), so they would only fill the disk.
``--manifest-records 0`` skips the runs over files.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from itemadapter import ItemAdapter

from benchmarks.measure import REPOSITORY
from civitai_spider.items import CivitaiImage
from civitai_spider.local_files import LogFile
from civitai_spider.pipelines.manifest import ManifestPipeline
from civitai_spider.pipelines.metadata import metadata_files
from civitai_spider.stores.folder import FolderStore

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

TARGET = 5_000  # records/s, whole process: 1,000,000 records in under 4 minutes
LIVE_TARGET_SECONDS = 240  # a million records' manifest after the crawl, cold cache included
EXPORT = "webdataset export"
LIVE = "live parts, cold cache"
_WORDS = (
    "masterpiece best quality 1girl solo looking at viewer smile long hair blue eyes outdoors sky "
    "cloud tree cherry blossoms detailed background cinematic lighting depth of field film grain"
).split()
_SAMPLERS = ("DPM++ 2M Karras", "Euler a", "DPM++ SDE Karras", "UniPC")
_BASE_MODELS = ("SDXL 1.0", "Pony", "Illustrious", "Flux.1 D", "SD 1.5")


@dataclass
class ManifestRun:
    label: str  # "first run", "unchanged store", "a tenth", "webdataset export"
    records: int  # records in the store
    added: int  # rows the run added, from its summary line
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.wall_seconds


def measure(records: int, disk: Path, live_records: int = 0) -> list[ManifestRun]:
    """The three runs, over stores of ``records`` and ``records // 10`` items in ``disk`` (none
    for 0), then the live parts' run over ``live_records`` (none for 0)."""
    runs = []
    labels_by_size = (
        (records, ("first run", "unchanged store", EXPORT)),
        (max(records // 10, 1), ("a tenth",)),
    )
    for count, labels in labels_by_size if records else ():
        store = disk / f"manifest-{count}"
        print(f"Manifest: writing a store of {count:,} items...", file=sys.stderr, flush=True)
        write_store(store, count)
        for label in labels:
            print(f"Manifest: {label}, {count:,} records...", file=sys.stderr, flush=True)
            runs.append(run_manifest(label, store, count))
    if live_records:
        store = disk / f"live-manifest-{live_records}"
        print(f"Manifest: crawl parts of {live_records:,} items...", file=sys.stderr, flush=True)
        write_live_store(store, live_records)
        cold = drop_page_cache()
        print(f"Manifest: {LIVE}, {live_records:,} records...", file=sys.stderr, flush=True)
        runs.append(run_manifest(LIVE if cold else "live parts, warm cache", store, live_records))
    check(runs)
    # Now, not after the benchmark's end: removing millions of files takes minutes.
    print("\n".join(table(runs)), file=sys.stderr, flush=True)
    return runs


def write_store(store: Path, count: int, *, seed: int = 13) -> None:
    """``count`` complete items as the pipelines store them, ids 1..count, all recorded."""
    store.mkdir(parents=True)
    rng = random.Random(seed)
    for image_id in range(1, count + 1):
        item = CivitaiImage.from_api(_record(image_id, rng))
        item.image_file = f"{image_id}.jpg"
        for name, data in metadata_files(ItemAdapter(item)).items():
            (store / name).write_bytes(data)
        (store / item.image_file).write_bytes(b"\xff\xd8\xff" + bytes(rng.randrange(64)))
    (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{i}\n" for i in range(1, count + 1)))


def write_live_store(store: Path, count: int, *, seed: int = 13) -> None:
    """``count`` recorded items, ids 1..count, as a crawl leaves them with the live manifest: the
    ID file and the crawl parts its part writer wrote (1,000 rows a part)."""
    store.mkdir(parents=True)
    rng = random.Random(seed)
    manifest = FolderStore(store / "manifest")
    pipe = ManifestPipeline(
        cast("StatsCollector", _Stats()),
        LogFile(store / "error_log.txt"),
        FolderStore(store),
        lambda: manifest,
        str(manifest.directory),
        flush_rows=1_000,
        flush_seconds=60,
    )

    async def crawl() -> None:
        for image_id in range(1, count + 1):
            item = CivitaiImage.from_api(_record(image_id, rng))
            item.image_file, item.image_size = f"{image_id}.jpg", 3 + image_id % 64
            await pipe.process_item(item)
        await pipe.close_spider()

    asyncio.run(crawl())
    (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{i}\n" for i in range(1, count + 1)))


class _Stats:
    """What the pipeline counts, counted nowhere."""

    def inc_value(self, key: str, count: int = 1) -> None:
        return None


def drop_page_cache() -> bool:
    """Write back, then drop the page cache, so that the next run reads from the disk; False if
    this process may not (not root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        print(f"Manifest: the page cache is not dropped ({error}): a warm run", file=sys.stderr)
        return False
    return True


def _record(image_id: int, rng: random.Random) -> dict[str, object]:
    prompt = ", ".join(rng.choice(_WORDS) for _ in range(rng.randrange(8, 80)))
    return {
        "id": image_id,
        "url": f"https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/{image_id}/original=true/{image_id}.jpeg",
        "hash": "ULN0-w?b4nRjxGM{-;t7M_t7NGae~qRjMyt7",
        "width": 832,
        "height": 1216,
        "nsfwLevel": "None",
        "type": "image",
        "nsfw": False,
        "browsingLevel": 1,
        "createdAt": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T01:11:47.021Z",
        "postId": 6_000_000 + image_id,
        "stats": {name: rng.randrange(50) for name in ("cryCount", "laughCount", "likeCount", "heartCount")}
        | {"dislikeCount": 0, "commentCount": rng.randrange(5)},
        "meta": {
            "prompt": f"<lora:add-detail-xl:0.8>, ({prompt}:1.1)",
            "negativePrompt": "worst quality, low quality, bad anatomy, bad hands, watermark",
            "seed": rng.randrange(2**32),
            "steps": rng.randrange(20, 40),
            "sampler": rng.choice(_SAMPLERS),
            "cfgScale": rng.choice((4, 5.5, 7)),
            "Size": "832x1216",
            "Model": "boleromix_XL_V1.3",
            "Model hash": "afaf521da2",
            "hashes": {"model": "afaf521da2", "lora:add-detail-xl": "9c783c8ce46c"},
            "resources": [
                {"name": "add-detail-xl", "type": "lora", "weight": 0.8},
                {"hash": "afaf521da2", "name": "boleromix_XL_V1.3", "type": "model"},
            ],
            "Clip skip": "2",
        },
        "username": f"user{image_id % 997}",
        "baseModel": rng.choice(_BASE_MODELS),
        "modelVersionIds": [788385],
    }


def run_manifest(label: str, store: Path, records: int) -> ManifestRun:
    name = "civitai-export" if label == EXPORT else "civitai-manifest"
    command = [sys.executable, "-m", "scrapy", name, "-s", f"IMAGES_STORE={store}"]
    output = store.parent / f"{store.name}-{label.replace(' ', '-').replace(',', '')}.log"
    with open(output, "w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT)
        # wait4: this child's own CPU time and peak RSS, not every child's so far.
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"manifest {label}: exit status {os.waitstatus_to_exitcode(status)}\n{text[-2000:]}"
        )
    added = int(text.split("Added ", 1)[1].split(" ", 1)[0])
    return ManifestRun(label, records, added, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def check(runs: list[ManifestRun]) -> None:
    """Each first run added every record, the re-run none: else the figures mean nothing."""
    for run in runs:
        expected = 0 if run.label == "unchanged store" else run.records
        if run.added != expected:
            raise RuntimeError(f"manifest {run.label}: {run.added} rows added, not {expected}")


def memory_ratio(runs: list[ManifestRun]) -> float | None:
    labels = {run.label: run for run in runs}
    if "first run" not in labels or "a tenth" not in labels:
        return None
    return labels["first run"].peak_rss_mb / labels["a tenth"].peak_rss_mb


def table(runs: list[ManifestRun]) -> list[str]:
    lines = [
        "| dataset command (folder store on disk, whole process) | records | added | seconds | records/s "
        "| CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {run.label} | {run.records:,} | {run.added:,} | {run.wall_seconds:.2f} "
        f"| {run.records_per_second:,.0f} | {run.cpu_seconds:.2f} | {run.peak_rss_mb:.0f} |"
        for run in runs
    ]
    first, ratio = runs[0], memory_ratio(runs)
    if first.label == "first run":
        verdict = "met" if first.records_per_second >= TARGET else "NOT met"
        lines.append(
            f"Manifest: {first.records_per_second:,.0f} records/s over {first.records:,} records, "
            f"target at least {TARGET:,}: {verdict}"
        )
    if ratio is not None:
        lines.append(f"Manifest: peak RSS over {first.records:,} / over a tenth: {ratio:.2f}x")
    for run in runs:
        if run.label.startswith("live parts"):
            # The target is for a million records: a smaller store's is scaled down.
            target = LIVE_TARGET_SECONDS * run.records / 1_000_000
            verdict = "met" if run.wall_seconds <= target else "NOT met"
            lines.append(
                f"Manifest after a crawl with live parts ({run.label}): {run.wall_seconds:.1f} s for "
                f"{run.records:,} records, target at most {target:.1f} s "
                f"({LIVE_TARGET_SECONDS} s for 1,000,000): {verdict}"
            )
    return lines


def raw(runs: list[ManifestRun]) -> dict[str, object]:
    return {
        "runs": [{**asdict(run), "records_per_second": run.records_per_second} for run in runs],
        "target_records_per_second": TARGET,
        "peak_rss_ratio": memory_ratio(runs),
    }
