"""The crawl scenarios: each format against Scrapy's ceiling, the memory runs, the video run.

- formats: per format (JPEG kept, RGBA PNG kept, WebP converted), the bare-Scrapy reference
  that downloads and discards, Scrapy's stock ImagesPipeline and ``scrapy crawl civitai``; a
  re-run of the JPEG crawl over its complete store; the PNG crawl saving to the disk; for WebP
  also our crawl with Pillow inline in the reactor thread, on one core;
- memory: the PNG crawl at several sizes, for the peak RSS of the largest against the smallest;
- videos: large videos (``media=video``, :data:`VIDEOS_IN_FLIGHT` at once), for the peak RSS
  against its target, :data:`VIDEO_PEAK_RSS_TARGET_MB` whatever the size of the videos (each is
  written to a file as it arrives, never held in memory), and the stalls.

Every crawl's images are deleted as they land (metadata and ID files stay), so that neither
the disk's speed nor its size is what gets measured. The load of a large ID file is timed
here too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.measure import Run, Server, crawl, deleting_images, serving
from civitai_spider.stores.id_file import load_ids

#: Format -> its scenario: how the format's runs are named in the tables and the JSON.
FORMATS = {"jpeg": "JPEG kept", "png": "PNG kept", "webp": "WebP converted"}
RERUN = "JPEG re-run, store complete"
ON_DISK = "PNG kept, store on disk"
#: The crawler name of our WebP crawl with Pillow in the reactor thread (``CIVITAI_IMAGE_THREADS=0``).
INLINE = "civitai-inline-1-core"
#: ``CIVITAI_VIDEOS_IN_FLIGHT`` of the video run: more than the default 2, so that a video held
#: in memory, if one were, would show four times over.
VIDEOS_IN_FLIGHT = 4
#: The video run's peak RSS must stay under this, whatever the size and number of the videos.
VIDEO_PEAK_RSS_TARGET_MB = 200


def measure_formats(images: int, work: Path, stores: Path, disk: Path) -> list[Run]:
    """Each format's runs of ``images`` images, in order; the stores in ``stores``, one in ``disk``."""
    runs = []
    for kind, scenario in FORMATS.items():
        print(f"{scenario}: {images} images...", file=sys.stderr, flush=True)
        with serving(kind, images) as server:
            runs.append(_swept_crawl(server, scenario, "bare", work, stores / f"{kind}-bare"))
            runs.append(_swept_crawl(server, scenario, "stock", work, stores / f"{kind}-stock"))
            runs.append(_swept_crawl(server, scenario, "civitai", work, stores / kind))
            if kind == "jpeg":
                runs.append(_swept_crawl(server, RERUN, "civitai", work, stores / kind))
            if kind == "png":
                runs.append(_swept_crawl(server, ON_DISK, "civitai", work, disk / kind))
            if kind == "webp":
                inline = {"CIVITAI_IMAGE_THREADS": "0"}
                store = stores / f"{kind}-inline"
                runs.append(
                    _swept_crawl(server, scenario, INLINE, work, store, settings=inline, one_core=True)
                )
    return runs


def measure_memory(counts: Sequence[int], work: Path, stores: Path) -> list[Run]:
    """Our PNG crawl of each of ``counts`` images."""
    runs = []
    for count in counts:
        print(f"Memory: {count} PNG images...", file=sys.stderr, flush=True)
        with serving("png", count) as server:
            store = stores / f"memory-{count}"
            runs.append(_swept_crawl(server, f"Memory, {count} PNG", "civitai", work, store))
    return runs


def measure_videos(count: int, video_bytes: int, work: Path, stores: Path) -> Run:
    """Our crawl of ``count`` videos of ``video_bytes`` each, :data:`VIDEOS_IN_FLIGHT` at once."""
    scenario = f"Videos, {count} x {video_bytes / 1e6:g} MB"
    print(f"{scenario}...", file=sys.stderr, flush=True)
    with serving("video", count, video_bytes) as server:
        return _swept_crawl(
            server,
            scenario,
            "civitai",
            work,
            stores / "video",
            settings={"CIVITAI_VIDEOS_IN_FLIGHT": str(VIDEOS_IN_FLIGHT)},
            arguments=("media=video",),
        )


def time_id_file_load(work: Path, count: int) -> float:
    """Seconds to load an ID file of ``count`` ids, as a crawl does when it starts."""
    path = work / "million_ids.txt"
    path.write_text("".join(f"{100_000_000 + index}\n" for index in range(count)))
    started = time.perf_counter()
    loaded = load_ids(path)
    elapsed = time.perf_counter() - started
    assert len(loaded) == count
    return elapsed


def ratios(runs: Sequence[Run], memory_runs: Sequence[Run]) -> dict[str, float]:
    """The ratios of whichever of these scenarios ran: ours against each reference, memory, video."""
    found: dict[str, float] = {}
    for scenario in FORMATS.values():
        ours, bare, stock = (_find(runs, scenario, name) for name in ("civitai", "bare", "stock"))
        if ours and bare:
            found[f"{scenario}: civitai / bare"] = ours.images_per_second / bare.images_per_second
        if ours and stock:
            found[f"{scenario}: civitai / stock"] = ours.images_per_second / stock.images_per_second
    ours, inline = _find(runs, FORMATS["webp"], "civitai"), _find(runs, FORMATS["webp"], INLINE)
    if ours and inline:
        found["WebP converted: threads / inline on 1 core"] = (
            ours.images_per_second / inline.images_per_second
        )
    if len(memory_runs) >= 2:
        largest, smallest = (
            max(memory_runs, key=lambda run: run.items),
            min(memory_runs, key=lambda run: run.items),
        )
        found["Memory: peak RSS largest / smallest"] = largest.peak_rss_mb / smallest.peak_rss_mb
    video = next((run for run in runs if run.scenario.startswith("Videos")), None)
    if video:
        # Under 1 meets the target: the videos' bytes go to files, whatever their size.
        found[f"Videos: peak RSS / {VIDEO_PEAK_RSS_TARGET_MB} MB target"] = (
            video.peak_rss_mb / VIDEO_PEAK_RSS_TARGET_MB
        )
    return found


def _swept_crawl(
    server: Server,
    scenario: str,
    crawler: str,
    work: Path,
    store: Path,
    *,
    settings: dict[str, str] | None = None,
    arguments: tuple[str, ...] = (),
    one_core: bool = False,
) -> Run:
    """One crawl, its images deleted as they land."""
    with deleting_images(store):
        return crawl(
            server, scenario, crawler, work, store, settings=settings, arguments=arguments, one_core=one_core
        )


def _find(runs: Sequence[Run], scenario: str, crawler: str) -> Run | None:
    return next((run for run in runs if run.scenario == scenario and run.crawler == crawler), None)
