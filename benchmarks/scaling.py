"""The scaling scenario: more workers on one crawl, more cursor chains in one worker.

Two measurements, each ratio taken within one invocation, against targets:

- workers: 1, 2 and 4 ``scrapy crawl civitai -s CIVITAI_SHARED_CRAWL=true`` processes, started
  together with the same arguments and the same Redis (``CIVITAI_REDIS_URL``, a new key prefix
  per run), share one crawl; the CDN answers each image after 200 ms and each worker has
  ``CIVITAI_IMAGES_IN_FLIGHT=4`` (one machine's link), so one worker makes at most 20 images/s.
  The rate is images saved per second of wall time, from the start of the first worker to the
  exit of the last: what a user sees, start-up included. Target: 4 workers at least 3.2x one.
- chains: one worker, without Redis (the split alone, no shared crawl), the API answering each
  page after 1 s: ``split=browsing_level`` over ``browsing_level=15`` (four cursor chains, one
  per bit) against the same crawl in one chain, both with ``CIVITAI_API_CONCURRENCY=4``. The
  rate is API pages served per second of wall time. Target: at least 3x.

Images are small JPEGs (``small-jpeg``, ~30 KB) and a new store is used per run, so that
waiting, not CPU or a store already holding the images, is what is measured.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.measure import (
    CrawlCommand,
    Server,
    crawl_command,
    finished_probe,
    process_cpu_seconds,
    serving,
    start_crawl,
)
from civitai_spider import settings as project_settings
from civitai_spider.spiders.civitai import CivitaiSpider
from tests.support.servers import RedisServer  # the tests' own: it needs nothing of pytest

if TYPE_CHECKING:
    import resource
    import subprocess

KIND = "small-jpeg"
WORKERS = (1, 2, 4)
IMAGE_LATENCY = 0.2  # seconds per image: a far CDN
IMAGES_IN_FLIGHT = 4  # per worker: 4 / 0.2 s = 20 images/s at most
#: Small pages, so that the pages of the shared crawl spread evenly over 4 workers even in a
#: short run (a real crawl has thousands of pages of 200).
WORKERS_LIMIT = 50
PAGE_LATENCY = 1.0  # seconds per API page: a slow API
BROWSING_LEVEL = 15  # PG, PG13, R, X: four bits, four chains when split
CHAINS = bin(BROWSING_LEVEL).count("1")
CHAIN_LIMIT = 20  # items per page: the pages, not the images, are what the chains measure
API_CONCURRENCY = 4
#: The spider arguments of the split run, beside those both chain runs have.
SPLIT_ARGUMENTS: tuple[str, ...] = ("split=browsing_level",)
WORKERS_TARGET = 3.2  # 4 workers / 1 worker, images/s
CHAINS_TARGET = 3.0  # 4 chains / 1 chain, API pages/s
#: A run is stopped (its workers killed) after this many times its ideal duration, plus a minute.
_TIMEOUT_FACTOR = 3
_POLL_SECONDS = 0.01


@dataclass
class Worker:
    """One worker process of a run, from its probe and its resource usage."""

    saved: int  # civitai/saved
    items: int  # civitai/items_seen
    elapsed: float  # Scrapy's elapsed_time_seconds
    exit_seconds: float  # from the start of the run's first worker to this one's exit
    cpu_seconds: float
    peak_rss_mb: float
    worst_stall_ms: float
    stats: dict[str, object] = field(repr=False)


@dataclass
class Scaled:
    """One run of the scaling scenario: all its workers, taken together."""

    measurement: str  # "workers" or "chains"
    label: str  # "4 workers", "4 chains"...
    chains: int  # cursor chains per worker
    images: int  # image requests the server answered
    api_pages: int  # API pages the server answered
    wall_seconds: float  # the first worker's start to the last worker's exit
    server_cpu_seconds: float
    redis_cpu_seconds: float  # 0 without Redis
    workers: list[Worker]

    @property
    def saved(self) -> int:
        return sum(worker.saved for worker in self.workers)

    @property
    def images_per_second(self) -> float:
        return self.saved / self.wall_seconds

    @property
    def pages_per_second(self) -> float:
        return self.api_pages / self.wall_seconds

    @property
    def cpu_seconds(self) -> float:
        return sum(worker.cpu_seconds for worker in self.workers)


@dataclass
class Ratio:
    name: str
    value: float
    target: float | None  # the least asked for; None: printed for comparison only


def missing_features() -> list[str]:
    """What the scenario needs of the spider and this checkout lacks: the split and the shared crawl."""
    missing = []
    split = dict(argument.split("=", 1) for argument in SPLIT_ARGUMENTS)
    try:
        CivitaiSpider.check_arguments({**split, "browsing_level": str(BROWSING_LEVEL)})
    except ValueError as error:
        missing.append(f"scaling: the spider does not take {' '.join(SPLIT_ARGUMENTS)} ({error})")
    if not hasattr(project_settings, "CIVITAI_API_CONCURRENCY"):
        missing.append("scaling: the project has no CIVITAI_API_CONCURRENCY setting")
    return missing


def measure(images: int, pages_per_chain: int, work: Path, stores: Path) -> list[Scaled]:
    """Both measurements: ``images`` for the worker runs, ``pages_per_chain`` for the chain runs."""
    return [*measure_workers(images, work, stores), *measure_chains(pages_per_chain, work, stores)]


def measure_workers(images: int, work: Path, stores: Path) -> list[Scaled]:
    """1, 2 and 4 workers on one crawl of ``images`` images through one Redis."""
    arguments = (f"limit={WORKERS_LIMIT}",)
    runs = []
    print(
        f"Scaling, workers: {images} images, {IMAGE_LATENCY * 1000:g} ms each, workers {WORKERS}...",
        file=sys.stderr,
        flush=True,
    )
    with serving(KIND, images, image_latency=IMAGE_LATENCY) as server, RedisServer(stores / "redis") as redis:
        for workers in WORKERS:
            label = f"{workers} worker{'s' if workers > 1 else ''}"
            name = f"scaling-{workers}-workers"
            with redis.client() as client:
                client.flushall()  # and a new prefix: nothing of the run before is seen
            settings = {
                "CIVITAI_SHARED_CRAWL": "true",
                "CIVITAI_REDIS_URL": redis.url,
                "CIVITAI_REDIS_PREFIX": name,
                "CIVITAI_IMAGES_IN_FLIGHT": str(IMAGES_IN_FLIGHT),
            }
            ideal = images * IMAGE_LATENCY / (IMAGES_IN_FLIGHT * workers)
            run = run_workers(
                server,
                "workers",
                label,
                work,
                stores / name,
                arguments,
                settings,
                count=workers,
                ideal_seconds=ideal,
                redis=redis,
            )
            check_shared(run, images)
            runs.append(run)
    return runs


def measure_chains(pages_per_chain: int, work: Path, stores: Path) -> list[Scaled]:
    """One worker without Redis: one chain of all the pages, then ``CHAINS`` of ``pages_per_chain``."""
    images = CHAINS * CHAIN_LIMIT * pages_per_chain
    pages = CHAINS * pages_per_chain
    both = (f"browsing_level={BROWSING_LEVEL}", f"limit={CHAIN_LIMIT}")
    settings = {"CIVITAI_API_CONCURRENCY": str(API_CONCURRENCY)}
    runs = []
    print(
        f"Scaling, chains: {pages} pages of {CHAIN_LIMIT}, {PAGE_LATENCY:g} s each, 1 and {CHAINS} chains...",
        file=sys.stderr,
        flush=True,
    )
    with serving(KIND, images, page_latency=PAGE_LATENCY) as server:
        for chains, arguments in ((1, both), (CHAINS, (*SPLIT_ARGUMENTS, *both))):
            label = f"{chains} chain{'s' if chains > 1 else ''}"
            name = f"scaling-{chains}-chains"
            ideal = pages * PAGE_LATENCY / chains
            run = run_workers(
                server,
                "chains",
                label,
                work,
                stores / name,
                arguments,
                settings,
                chains=chains,
                ideal_seconds=ideal,
            )
            check_shared(run, images)
            if run.api_pages != pages:
                raise RuntimeError(
                    f"scaling/{label}: the server answered {run.api_pages} API pages, not {pages}"
                )
            runs.append(run)
    return runs


def run_workers(
    server: Server,
    measurement: str,
    label: str,
    work: Path,
    store: Path,
    arguments: tuple[str, ...],
    settings: dict[str, str],
    *,
    count: int = 1,
    chains: int = 1,
    ideal_seconds: float,
    redis: RedisServer | None = None,
) -> Scaled:
    """``count`` workers with the same arguments and settings, started together, waited for together.

    ``ideal_seconds``, how long the run would take if nothing but the latencies cost time,
    sets its timeout; ``chains`` is what the arguments ask of each worker (for the report).
    """
    commands = [
        crawl_command(
            server, "civitai", work, store, f"{store.name}-{number}", settings=settings, arguments=arguments
        )
        for number in range(1, count + 1)
    ]
    server.take_counts()
    server_cpu = server.cpu_seconds()
    redis_cpu = process_cpu_seconds(redis.pid) if redis else 0.0
    started = time.monotonic()
    processes = [start_crawl(command) for command in commands]
    exits = _wait_all(processes, commands, started, 60 + _TIMEOUT_FACTOR * ideal_seconds, label)
    wall_seconds = time.monotonic() - started
    counts = server.take_counts()
    workers = []
    for command, process, (usage, exit_seconds) in zip(commands, processes, exits, strict=True):
        probe = finished_probe(command, f"scaling/{label}", process.returncode)
        stats = probe["stats"]
        workers.append(
            Worker(
                saved=int(stats.get("civitai/saved", 0)),
                items=int(stats.get("civitai/items_seen", 0)),
                elapsed=float(stats["elapsed_time_seconds"]),
                exit_seconds=exit_seconds,
                cpu_seconds=usage.ru_utime + usage.ru_stime,
                peak_rss_mb=usage.ru_maxrss / 1024,
                worst_stall_ms=1000 * probe["worst_stall_seconds"],
                stats=stats,
            )
        )
    return Scaled(
        measurement=measurement,
        label=label,
        chains=chains,
        images=counts["images"],
        api_pages=counts["api"],
        wall_seconds=wall_seconds,
        server_cpu_seconds=server.cpu_seconds() - server_cpu,
        redis_cpu_seconds=process_cpu_seconds(redis.pid) - redis_cpu if redis else 0.0,
        workers=workers,
    )


def _wait_all(
    processes: Sequence[subprocess.Popen[bytes]],
    commands: Sequence[CrawlCommand],
    started: float,
    timeout: float,
    label: str,
) -> list[tuple[resource.struct_rusage, float]]:
    """Each worker's resource usage and exit time; the others are killed once one fails or time runs out.

    Polled rather than waited for in turn, so that each exit time is the worker's own (and a
    worker that fails early is seen while the others still run).
    """
    exits: dict[int, tuple[resource.struct_rusage, float]] = {}
    while len(exits) < len(processes):
        for process in processes:
            if process.pid in exits:
                continue
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                exits[pid] = (usage, time.monotonic() - started)
        failed = next((process for process in processes if process.returncode not in (None, 0)), None)
        late = time.monotonic() - started > timeout
        if failed or late:
            for process in processes:
                if process.returncode is None:
                    process.kill()  # ours, by pid
                    process.wait()
            if failed:
                command = commands[list(processes).index(failed)]
                raise RuntimeError(
                    f"scaling/{label}: a worker failed ({failed.returncode}): see {command.log_file}"
                )
            logs = ", ".join(command.log_file for command in commands)
            raise RuntimeError(
                f"scaling/{label}: the workers had not ended after {timeout:.0f} s: see {logs}"
            )
        time.sleep(_POLL_SECONDS)
    return [exits[process.pid] for process in processes]


def check_shared(run: Scaled, count: int) -> None:
    """Each of the crawl's ``count`` images asked for once and saved once, by one of the workers."""
    if run.images != count or run.saved != count:
        raise RuntimeError(
            f"scaling/{run.label}: {run.images} image requests and {run.saved} images saved by "
            f"{len(run.workers)} worker(s), not {count} of each: each image is to be saved once"
        )


def ratios(runs: Sequence[Scaled]) -> list[Ratio]:
    """Each ratio of the scenario whose two runs are in ``runs``."""
    found = {(run.measurement, run.label): run for run in runs}
    one_worker = found.get(("workers", "1 worker"))
    one_chain = found.get(("chains", "1 chain"))
    result = []
    for workers, target in ((2, None), (4, WORKERS_TARGET)):
        run = found.get(("workers", f"{workers} workers"))
        if run and one_worker:
            name = f"Scaling: {workers} workers / 1 worker, images/s"
            result.append(Ratio(name, run.images_per_second / one_worker.images_per_second, target))
    run = found.get(("chains", f"{CHAINS} chains"))
    if run and one_chain:
        name = f"Scaling: {CHAINS} chains / 1 chain, API pages/s"
        result.append(Ratio(name, run.pages_per_second / one_chain.pages_per_second, CHAINS_TARGET))
    return result


def table(runs: Sequence[Scaled]) -> list[str]:
    """The scenario's rows, its ratios beside their targets, and how it was set up."""
    lines = [
        "| scaling run | images saved | API pages | wall s | images/s | API pages/s | longest crawl s "
        "| workers' exits s | CPU s, all workers | peak RSS MB, largest worker | Redis CPU ms/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        redis = f"{1000 * run.redis_cpu_seconds / max(run.saved, 1):.2f}" if run.redis_cpu_seconds else "-"
        lines.append(
            f"| {run.measurement}: {run.label} | {run.saved} | {run.api_pages} | {run.wall_seconds:.1f} "
            f"| {run.images_per_second:.1f} | {run.pages_per_second:.2f} "
            f"| {max(worker.elapsed for worker in run.workers):.1f} "
            f"| {' '.join(f'{worker.exit_seconds:.1f}' for worker in run.workers)} | {run.cpu_seconds:.1f} "
            f"| {max(worker.peak_rss_mb for worker in run.workers):.0f} | {redis} |"
        )
    lines += ["", "| scaling ratio (same run, wall time) | value | target |", "|---|---|---|"]
    for ratio in ratios(runs):
        target = "-" if ratio.target is None else f"at least {ratio.target:.1f}x"
        lines.append(f"| {ratio.name} | {ratio.value:.2f}x | {target} |")
    lines += [
        "Scaling: rates per second of wall time, the first worker's start to the last one's exit "
        "(start-up included); longest crawl: Scrapy's elapsed time, spider open to close",
        f"Scaling, workers: CDN {IMAGE_LATENCY * 1000:g} ms per image ({KIND}), "
        f"CIVITAI_IMAGES_IN_FLIGHT={IMAGES_IN_FLIGHT} per worker, limit={WORKERS_LIMIT}, one Redis "
        f"(a new prefix per run); chains: API {PAGE_LATENCY:g} s per page, limit={CHAIN_LIMIT}, "
        f"browsing_level={BROWSING_LEVEL}, CIVITAI_API_CONCURRENCY={API_CONCURRENCY}, "
        "one process without Redis",
    ]
    return lines


def raw(runs: Sequence[Scaled]) -> dict[str, object]:
    """The JSON of the scenario: its runs (each worker's too), its ratios and its set-up."""
    return {
        "runs": [
            {
                **asdict(run),
                "saved": run.saved,
                "images_per_second": run.images_per_second,
                "pages_per_second": run.pages_per_second,
                "cpu_seconds": run.cpu_seconds,
            }
            for run in runs
        ],
        "ratios": [asdict(ratio) for ratio in ratios(runs)],
        "setup": {
            "kind": KIND,
            "image_latency": IMAGE_LATENCY,
            "images_in_flight": IMAGES_IN_FLIGHT,
            "workers_limit": WORKERS_LIMIT,
            "page_latency": PAGE_LATENCY,
            "browsing_level": BROWSING_LEVEL,
            "chain_limit": CHAIN_LIMIT,
            "api_concurrency": API_CONCURRENCY,
            "split_arguments": list(SPLIT_ARGUMENTS),
        },
    }
