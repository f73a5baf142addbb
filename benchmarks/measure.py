"""What every scenario measures with: the benchmark server, and a crawl run as a whole process.

Each crawl is a real ``scrapy crawl civitai`` (or the reference spider, under ``scrapy
runspider``) in a subprocess, against ``benchmarks/server.py`` in another, so that neither the
server's work nor the benchmark's own is counted as the crawl's: its CPU and peak RSS come from
``wait4``, its rates and stalls from the probe (``benchmarks/probe.py``), the requests it made
from the server's counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict

from civitai_spider import settings as project_settings
from civitai_spider.local_files import TEMPORARY_PREFIX
from tests.support import servers

REPOSITORY = Path(__file__).resolve().parent.parent
PROBE = "benchmarks.probe.Probe"
REFERENCE_CONCURRENCY = 64  # the references run wide open: they are the ceiling


@dataclass
class Run:
    """One crawl, measured from its start to its exit."""

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

    def raw(self) -> dict[str, object]:
        """The run as JSON: its fields and its rates."""
        return {
            **asdict(self),
            "images_per_second": self.images_per_second,
            "items_per_second": self.items_per_second,
            "cpu_per_image_ms": self.cpu_per_image_ms,
            "whole_process_rate": self.whole_process_rate,
        }


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
        assert self.process.stdout is not None  # stdout=PIPE
        self.output: IO[str] = self.process.stdout
        line = self.output.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"
        self.api_url = f"{self.base}/api/v1/images"

    def take_counts(self) -> dict[str, int]:
        """The requests answered since the last call: ``{"api": pages, "images": image requests}``."""
        with urllib.request.urlopen(f"{self.base}/_counts") as response:
            return json.load(response)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        self.output.close()


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
    """The benchmark server of ``count`` items of ``kind`` (``benchmarks/server.py``), stopped on exit."""
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
    """Start ``command`` without the user's API key, on one core if asked; the caller waits for it."""
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


class Probed(TypedDict):
    """What the probe (``benchmarks/probe.py``) wrote at the end of a crawl."""

    stats: dict[str, Any]  # Scrapy's stats as JSON: numbers, and the rest as strings
    worst_stall_seconds: float
    worst_gc_seconds: float


def finished_probe(command: CrawlCommand, label: str, returncode: int) -> Probed:
    """What the probe of a crawl that exited with ``returncode`` recorded; raises if the crawl failed."""
    if returncode != 0 or not command.probe_file.exists():
        raise RuntimeError(f"{label} failed ({returncode}): see {command.log_file}")
    probe: Probed = json.loads(command.probe_file.read_text())
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
            for pattern in ("*.png", "*.jpg", "*.mp4", "*.webp", "*.avif"):
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


def alternated(rounds: int, *names: str) -> Iterator[tuple[int, str]]:
    """(round, name) in the order AB BA AB... (ABC CBA ABC... for three): none runs first in
    every round, so that none gets the warmer or the quieter start every time."""
    for number in range(1, rounds + 1):
        for name in names if number % 2 else names[::-1]:
            yield number, name


def check_saved(run: Run, count: int) -> None:
    """Raise unless the crawl asked for each of the ``count`` images once and saved each."""
    saved = run.stats.get("civitai/saved", 0)
    if run.images != count or saved != count:
        raise RuntimeError(
            f"{run.scenario}/{run.crawler}: {run.images} images requested, {saved} saved, not {count}"
        )


def missing_servers(*, s3: bool, redis: bool) -> list[str]:
    """What starting SeaweedFS (``s3``) or Redis needs and this machine lacks, looked for as
    ``tests/support/servers.py`` does, so that the command line can say so before any scenario runs."""
    missing = []
    weed = Path(sys.executable).parent / "weed"
    if s3 and not (weed.is_file() or shutil.which("weed")):
        missing.append(servers.WEED_MISSING)
    if redis and not shutil.which("redis-server"):
        missing.append(servers.REDIS_MISSING)
    return missing
