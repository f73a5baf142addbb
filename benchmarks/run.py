"""Measure the crawl against Scrapy's own ceiling, in one invocation, on the same files.

``python -m benchmarks.run`` starts the benchmark server (``benchmarks/server.py``) with
generated 1024x1536 images, then runs, each as a real ``scrapy crawl`` in a subprocess:

- per format (JPEG kept, RGBA PNG kept, WebP converted): the bare-Scrapy reference that
  downloads and discards, Scrapy's stock ImagesPipeline, and ``scrapy crawl civitai``;
- for WebP also our crawl with Pillow inline in the reactor thread, on one core;
- a re-run of the JPEG crawl over its complete store;
- an ID file of a million ids, loaded;
- the memory runs: the PNG crawl at two sizes;
- the video run: twenty 200 MB videos (``media=video``), for its peak memory against the bound
  (``CIVITAI_VIDEOS_IN_FLIGHT`` times the video, plus what the JPEG crawl needs) and its stalls.

``--scenarios`` picks among ``formats`` (the first four items), ``memory`` and ``videos``.

Stores are on tmpfs (``/dev/shm``) by default, and images are deleted as they land (metadata
and ID files stay), so that neither the disk's speed nor its size is what gets measured:
twenty thousand 3 MB PNGs are 60 GB, and a PNG crawl downloads faster than many disks
write. One extra run saves the PNGs to ``--disk-dir`` to show what the disk allows.

It prints one table (rates, CPU, peak RSS, ratios taken within this run) and writes the raw
numbers as JSON. Absolute numbers depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL
import scrapy

from civitai_spider import settings as project_settings
from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.stores.id_file import load_ids

REPOSITORY = Path(__file__).resolve().parent.parent
PROBE = "benchmarks.probe.Probe"
REFERENCE_CONCURRENCY = 64  # the references run wide open: they are the ceiling
SCENARIOS = ("formats", "memory", "videos")


@dataclass
class Run:
    scenario: str
    crawler: str
    images: int  # image requests the server answered
    items: int
    elapsed: float  # Scrapy's elapsed_time_seconds: spider open to close
    cpu_seconds: float  # user + system of the crawl process
    peak_rss_mb: float
    megabytes: float  # response bytes downloaded
    worst_stall_ms: float
    worst_gc_ms: float
    api_pages: int
    server_cpu_seconds: float
    stats: dict[str, object] = field(repr=False)

    @property
    def images_per_second(self) -> float:
        return self.images / self.elapsed if self.elapsed else 0.0

    @property
    def items_per_second(self) -> float:
        return self.items / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_per_image_ms(self) -> float:
        """Per image downloaded; per item when none was (a re-run)."""
        return 1000 * self.cpu_seconds / max(self.images or self.items, 1)


class Server:
    """The benchmark server in its own process, so its work is not the crawl's."""

    def __init__(self, kind: str, count: int, video_bytes: int | None = None) -> None:
        options = [] if video_bytes is None else ["--video-bytes", str(video_bytes)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server", kind, str(count), *options],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"
        self.api_url = f"{self.base}/api/v1/images"

    def take_counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base}/_counts") as response:
            return json.load(response)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


@contextmanager
def serving(kind: str, count: int, video_bytes: int | None = None) -> Iterator[Server]:
    server = Server(kind, count, video_bytes)
    try:
        yield server
    finally:
        server.stop()


def crawl(
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
    """Run one crawl to its end and measure it."""
    probe_file = work / f"{scenario}-{crawler}.probe.json"
    common = {
        "LOG_LEVEL": "INFO",
        "LOG_FILE": str(work / f"{scenario}-{crawler}.log"),
        "BENCHMARK_PROBE_FILE": str(probe_file),
        "TELNETCONSOLE_ENABLED": "False",
        "REMOTE_CONTROL_ENABLED": "False",
    }
    if crawler in ("bare", "stock"):
        command = [
            sys.executable,
            "-m",
            "scrapy",
            "runspider",
            str(REPOSITORY / "benchmarks/reference_spider.py"),
        ]
        command += [
            "-a",
            f"api_url={server.api_url}",
            "-a",
            f"mode={'stock' if crawler == 'stock' else 'discard'}",
        ]
        values = {
            **common,
            "EXTENSIONS": json.dumps({PROBE: 0}),
            "CONCURRENT_REQUESTS": str(REFERENCE_CONCURRENCY),
            "CONCURRENT_REQUESTS_PER_DOMAIN": str(REFERENCE_CONCURRENCY),
            "IMAGES_STORE": str(store),
            "ITEM_PIPELINES": json.dumps(
                {"scrapy.pipelines.images.ImagesPipeline": 1} if crawler == "stock" else {}
            ),
        }
        cwd = work  # outside the project: Scrapy's defaults only
    else:
        command = [sys.executable, "-m", "scrapy", "crawl", "civitai"]
        for argument in arguments:
            command += ["-a", argument]
        values = {
            **common,
            "EXTENSIONS": json.dumps({**project_settings.EXTENSIONS, PROBE: 0}),
            "CIVITAI_API_URL": server.api_url,
            "IMAGES_STORE": str(store),
        }
        cwd = REPOSITORY
    for name, value in {**values, **(settings or {})}.items():
        command += ["-s", f"{name}={value}"]

    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    environment.pop("CIVITAI_API_KEY", None)
    server.take_counts()
    server_cpu = server.cpu_seconds()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not probe_file.exists():
        raise RuntimeError(f"{scenario}/{crawler} failed ({process.returncode}): see {values['LOG_FILE']}")
    counts = server.take_counts()
    server_cpu = server.cpu_seconds() - server_cpu
    probe = json.loads(probe_file.read_text())
    stats = probe["stats"]
    if stats.get("civitai/failed"):
        raise RuntimeError(
            f"{scenario}/{crawler}: {stats['civitai/failed']} image(s) failed, see {values['LOG_FILE']}"
        )
    return Run(
        scenario=scenario,
        crawler=crawler,
        images=counts["images"],
        items=int(stats.get("civitai/items_seen", counts["images"])),
        elapsed=float(stats["elapsed_time_seconds"]),
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        megabytes=int(stats.get("downloader/response_bytes", 0)) / 1e6,
        worst_stall_ms=1000 * probe["worst_stall_seconds"],
        worst_gc_ms=1000 * probe["worst_gc_seconds"],
        api_pages=counts["api"],
        server_cpu_seconds=server_cpu,
        stats=stats,
    )


@contextmanager
def deleting_images(store: Path) -> Iterator[None]:
    """Delete saved images while a crawl runs (metadata stays): the store stays small."""
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(0.2):
            for pattern in ("*.png", "*.jpg", "*.mp4"):
                for path in store.rglob(pattern):
                    # Never a file still being written: the crawl would fail to rename it.
                    if not path.name.startswith(TEMPORARY_PREFIX):
                        path.unlink(missing_ok=True)

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        yield
    finally:
        stop.set()
        sweeper.join()


def time_id_file_load(work: Path, count: int) -> float:
    path = work / "million_ids.txt"
    path.write_text("".join(f"{100_000_000 + index}\n" for index in range(count)))
    started = time.perf_counter()
    loaded = load_ids(path)
    elapsed = time.perf_counter() - started
    assert len(loaded) == count
    return elapsed


@dataclass
class Plan:
    """What one invocation measures."""

    images: int
    memory_images: list[int]
    ids: int
    videos: int
    video_bytes: int
    scenarios: set[str]


def benchmark(plan: Plan, work: Path, stores: Path, disk: Path) -> dict[str, object]:
    runs: list[Run] = []
    images = plan.images

    def measure(server: Server, scenario: str, crawler: str, store: Path, **options: object) -> Run:
        with deleting_images(store):
            run = crawl(server, scenario, crawler, work, store, **options)
        runs.append(run)
        return run

    for kind in ("jpeg", "png", "webp") if "formats" in plan.scenarios else ():
        scenario = {"jpeg": "JPEG kept", "png": "PNG kept", "webp": "WebP converted"}[kind]
        print(f"{scenario}: {images} images...", file=sys.stderr, flush=True)
        with serving(kind, images) as server:
            measure(server, scenario, "bare", stores / f"{kind}-bare")
            measure(server, scenario, "stock", stores / f"{kind}-stock")
            measure(server, scenario, "civitai", stores / kind)
            if kind == "jpeg":
                measure(server, "JPEG re-run, store complete", "civitai", stores / kind)
            if kind == "png":
                measure(server, "PNG kept, store on disk", "civitai", disk / kind)
            if kind == "webp":
                inline = {"settings": {"CIVITAI_IMAGE_THREADS": "0"}, "one_core": True}
                measure(server, scenario, "civitai-inline-1-core", stores / f"{kind}-inline", **inline)

    memory_runs = []
    for count in plan.memory_images if "memory" in plan.scenarios else ():
        print(f"Memory: {count} PNG images...", file=sys.stderr, flush=True)
        store = stores / f"memory-{count}"
        with serving("png", count) as server, deleting_images(store):
            memory_runs.append(crawl(server, f"Memory, {count} PNG", "civitai", work, store))

    if "videos" in plan.scenarios and plan.videos:
        scenario = f"Videos, {plan.videos} x {plan.video_bytes / 1e6:g} MB"
        print(f"{scenario}...", file=sys.stderr, flush=True)
        with serving("video", plan.videos, plan.video_bytes) as server:
            measure(server, scenario, "civitai", stores / "video", arguments=("media=video",))

    print(f"ID file: {plan.ids} ids...", file=sys.stderr, flush=True)
    id_load = time_id_file_load(work, plan.ids)
    return {"runs": runs, "memory_runs": memory_runs, "id_file": {"ids": plan.ids, "load_seconds": id_load}}


def _find(runs: list[Run], scenario: str, crawler: str) -> Run | None:
    return next((run for run in runs if run.scenario == scenario and run.crawler == crawler), None)


def ratios(runs: list[Run], memory_runs: list[Run], video_bytes: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for scenario in ("JPEG kept", "PNG kept", "WebP converted"):
        ours, bare, stock = (_find(runs, scenario, name) for name in ("civitai", "bare", "stock"))
        if ours and bare:
            found[f"{scenario}: civitai / bare"] = ours.images_per_second / bare.images_per_second
        if ours and stock:
            found[f"{scenario}: civitai / stock"] = ours.images_per_second / stock.images_per_second
    ours, inline = (
        _find(runs, "WebP converted", "civitai"),
        _find(runs, "WebP converted", "civitai-inline-1-core"),
    )
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
    jpeg = _find(runs, "JPEG kept", "civitai")
    if video and jpeg:
        # The bound: the videos in flight held whole, plus what a crawl of images needs anyway.
        bound_mb = project_settings.CIVITAI_VIDEOS_IN_FLIGHT * video_bytes / 2**20 + jpeg.peak_rss_mb
        found["Videos: peak RSS / (videos in flight x video + JPEG crawl's peak RSS)"] = (
            video.peak_rss_mb / bound_mb
        )
    return found


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        memory_kb = 0
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "scrapy": scrapy.__version__,
        "pillow": PIL.__version__,
        "commit": commit or "unknown",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(results: dict[str, object]) -> str:
    lines = [
        "| scenario | crawler | images | images/s | MB/s | CPU ms/image | peak RSS MB | worst stall ms "
        "| worst GC ms | server CPU ms/image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in [*results["runs"], *results["memory_runs"]]:
        rate = f"{run.images_per_second:.0f}" if run.images else f"0 ({run.items_per_second:.0f} items/s)"
        lines.append(
            f"| {run.scenario} | {run.crawler} | {run.images} | {rate} | {run.megabytes / run.elapsed:.0f} "
            f"| {run.cpu_per_image_ms:.1f} | {run.peak_rss_mb:.0f} | {run.worst_stall_ms:.0f} "
            f"| {run.worst_gc_ms:.0f} "
            f"| {1000 * run.server_cpu_seconds / max(run.images, 1):.1f} |"
        )
    lines += ["", "| ratio (same run) | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f}x |" for name, value in results["ratios"].items()]
    id_file = results["id_file"]
    lines += ["", f"ID file: {id_file['ids']:,} ids loaded in {id_file['load_seconds']:.2f} s"]
    lines += [f"Stores on {results['store_file_system']}, images deleted as they land"]
    about = results["machine"]
    lines += [
        f"Machine: {about['cpu']}, {about['cores']} cores, {about['memory_gb']} GB; "
        f"Python {about['python']}, Scrapy {about['scrapy']}, Pillow {about['pillow']}; "
        f"commit {about['commit']}, {about['date']}"
    ]
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
        help="what to run (default all); the video ratio needs formats too",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None,
        help="where the stores go (default /dev/shm, tmpfs, when writable; else a temporary folder)",
    )
    parser.add_argument(
        "--disk-dir", type=Path, help="where the store-on-disk run saves (default: a temporary folder)"
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the raw results (default: benchmark-<commit>.json)"
    )
    arguments = parser.parse_args(argv)

    about = machine()
    with (
        tempfile.TemporaryDirectory(prefix="civitai-benchmark-") as work,
        tempfile.TemporaryDirectory(prefix="civitai-benchmark-", dir=arguments.store_dir) as stores,
        tempfile.TemporaryDirectory(prefix="civitai-benchmark-", dir=arguments.disk_dir) as disk,
    ):
        plan = Plan(
            images=arguments.images,
            memory_images=arguments.memory_images,
            ids=arguments.ids,
            videos=arguments.videos,
            video_bytes=int(arguments.video_mb * 1e6),
            scenarios=set(arguments.scenarios),
        )
        results = benchmark(plan, Path(work), Path(stores), Path(disk))
        results["store_file_system"] = _file_system(Path(stores))
    results["ratios"] = ratios(results["runs"], results["memory_runs"], plan.video_bytes)
    results["machine"] = about
    print(table(results))

    output = arguments.json or Path(f"benchmark-{about['commit']}.json")
    raw = {
        **results,
        "runs": [_raw(run) for run in results["runs"]],
        "memory_runs": [_raw(run) for run in results["memory_runs"]],
    }
    output.write_text(json.dumps(raw, indent=2))
    print(f"Raw results: {output}", file=sys.stderr)


def _file_system(path: Path) -> str:
    """The file system type of ``path`` (from /proc/mounts: the longest mount point above it)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    above = [
        (point, kind)
        for point, kind in mounts
        if resolved == point or resolved.startswith(point.rstrip("/") + "/")
    ]
    return max(above, key=lambda mount: len(mount[0]))[1] if above else "unknown"


def _raw(run: Run) -> dict[str, object]:
    return {
        **asdict(run),
        "images_per_second": run.images_per_second,
        "items_per_second": run.items_per_second,
        "cpu_per_image_ms": run.cpu_per_image_ms,
    }


if __name__ == "__main__":
    main()
