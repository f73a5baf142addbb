"""What an invocation prints beside its scenarios' own tables: the crawl runs, the machine.

Absolute numbers depend on the machine, so every report ends with the line that says which
one (CPU, cores, memory, versions, commit) and on which file system the stores were.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import PIL
import scrapy

from benchmarks.measure import REPOSITORY, Run


def runs_table(runs: Sequence[Run]) -> list[str]:
    """One row per crawl run: its rates, CPU, peak RSS, stalls; no lines without runs."""
    if not runs:
        return []
    lines = [
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
    return lines


def ratios_table(ratios: Mapping[str, float]) -> list[str]:
    """The ratios taken within this invocation, one row each."""
    return [
        "| ratio (same run) | value |",
        "|---|---|",
        *(f"| {name} | {value:.2f}x |" for name, value in ratios.items()),
    ]


def machine() -> dict[str, object]:
    """The machine, the versions and the commit measured."""
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


def machine_line(about: Mapping[str, object]) -> str:
    """``machine()`` in one line."""
    return (
        f"Machine: {about['cpu']}, {about['cores']} cores, {about['memory_gb']} GB; "
        f"Python {about['python']}, Scrapy {about['scrapy']}, Pillow {about['pillow']}; "
        f"commit {about['commit']}, {about['date']}"
    )


def file_system(path: Path) -> str:
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
