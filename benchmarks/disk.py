"""The disk scenario: whole processes, as a user times ``scrapy crawl``, the store on a real disk.

For each series (JPEG at ``--disk-jpeg-images`` sizes, RGBA PNG at ``--disk-png-images``),
bare Scrapy, Scrapy's stock ImagesPipeline (JPEG only: on PNG it takes minutes) and
``scrapy crawl civitai`` run alternately, ``--disk-rounds`` times each, every run a real
subprocess timed from its start to its exit (start-up included) and saving to a new folder
on ``--disk-dir``. Images are kept: nothing is deleted until every series has run, because
ext4 scans past recently deleted inodes when it creates a file (``recently_deleted()``): a
crawl that starts minutes after a large deletion on the same file system measured 15-30%
slower, its threads spinning on the folder's lock. The medians' ratios are printed beside
the targets.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import Run, alternated, check_saved, crawl, serving

#: The least whole-process ratios asked for, by format: (civitai / bare, civitai / stock).
TARGETS = {"jpeg": (0.8, 6.0), "png": (0.7, None)}
_SCENARIO = {"jpeg": "JPEG kept", "png": "PNG kept"}


@dataclass
class DiskSeries:
    kind: str  # "jpeg" or "png"
    images: int
    runs: dict[str, list[Run]] = field(default_factory=dict)  # crawler -> its runs, in order

    @property
    def label(self) -> str:
        return f"{_SCENARIO[self.kind]}, {self.images:,} images, store on disk"

    def median(self, crawler: str, *, whole: bool = True) -> float:
        runs = self.runs.get(crawler, [])
        if not runs:
            return 0.0
        return statistics.median(
            run.images / run.wall_seconds if whole else run.images_per_second for run in runs
        )

    def ratio(self, crawler: str, *, whole: bool = True) -> float | None:
        reference = self.median(crawler, whole=whole)
        return self.median("civitai", whole=whole) / reference if reference else None


def measure(kinds: dict[str, list[int]], rounds: int, work: Path, disk: Path) -> list[DiskSeries]:
    """Every series of ``kinds`` (format -> image counts), ``rounds`` alternated runs per crawler."""
    series = []
    for kind, counts in kinds.items():
        crawlers = ["bare", "stock", "civitai"] if TARGETS[kind][1] else ["bare", "civitai"]
        for count in counts:
            measured = DiskSeries(kind, count, {crawler: [] for crawler in crawlers})
            series.append(measured)
            print(f"{measured.label}: {rounds} round(s)...", file=sys.stderr, flush=True)
            with serving(kind, count) as server:
                # Each round in the other order: no crawler always runs first.
                for number, crawler in alternated(rounds, *crawlers):
                    name = f"disk-{kind}-{count}-{crawler}-{number}"
                    run = crawl(server, measured.label, crawler, work, disk / name, name=name)
                    if crawler == "civitai":
                        check_saved(run, count)
                    measured.runs[crawler].append(run)
    return series


def table(series: list[DiskSeries]) -> list[str]:
    lines = [
        "| whole process, store on disk (medians) | runs | bare images/s | stock images/s "
        "| civitai images/s | civitai / bare | target | civitai / stock | target "
        "| steady state civitai / bare | civitai worst stall ms | civitai peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for measured in series:
        bare_target, stock_target = TARGETS[measured.kind]
        ours = measured.runs["civitai"]
        lines.append(
            f"| {measured.label} | {len(ours)} each | {measured.median('bare'):.0f} "
            f"| {_rate(measured.median('stock'))} | {measured.median('civitai'):.0f} "
            f"| {_ratio(measured.ratio('bare'))} | {_target(measured.ratio('bare'), bare_target)} "
            f"| {_ratio(measured.ratio('stock'))} | {_target(measured.ratio('stock'), stock_target)} "
            f"| {_ratio(measured.ratio('bare', whole=False))} "
            f"| {max(run.worst_stall_ms for run in ours):.0f} | {max(run.peak_rss_mb for run in ours):.0f} |"
        )
    return lines


def raw(series: list[DiskSeries]) -> list[dict[str, object]]:
    return [
        {
            "kind": measured.kind,
            "images": measured.images,
            "whole_process_images_per_second": {
                crawler: measured.median(crawler) for crawler in measured.runs
            },
            "ratio_to_bare": measured.ratio("bare"),
            "ratio_to_stock": measured.ratio("stock"),
            "steady_ratio_to_bare": measured.ratio("bare", whole=False),
            "targets": TARGETS[measured.kind],
            "runs": {crawler: [run.raw() for run in runs] for crawler, runs in measured.runs.items()},
        }
        for measured in series
    ]


def _rate(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _target(value: float | None, target: float | None) -> str:
    if target is None or value is None:
        return "-"
    return f"at least {target:g}x: {'met' if value >= target else 'NOT met'}"
