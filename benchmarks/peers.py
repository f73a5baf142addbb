"""The peers scenario: this project against gallery-dl, whole processes, on the same server and disk.

Against one benchmark server (``benchmarks/server.py``) of ``--peers-images`` JPEGs of ~490 KB,
the tools run alternately, ``--peers-rounds`` times each, every run a whole process timed from
its start to its exit and saving to a new folder on ``--disk-dir``:

- ``scrapy crawl civitai``, run as every scenario runs it (``benchmarks/measure.py``);
- gallery-dl (PyPI) on its REST API path, its civitai root pointed at the server by
  ``benchmarks/gallery_dl_civitai.py``, every sleep at 0, without and with ``--write-metadata``
  (this project writes each item's metadata beside its image: the second is the same work);
- on the fast link, bare Scrapy (``benchmarks/reference_spider.py``, as the formats scenario runs
  it): it downloads every image and discards it, writing nothing. Its CPU per image is what any
  crawl built on Scrapy's downloader pays at least, the bound of ours against gallery-dl.

Each run's CPU and peak RSS come from ``wait4``; its images/s is images saved per second of
wall time. The files each tool left are counted: a gallery-dl run that did not save every
image (or every metadata file) is reported as incomplete, and no ratio is taken against it.
A one-image run of each tool (its own server of one item), alternated the same way, is the
fixed cost that a daily run of a few new images pays.

The same runs then go again against a server that answers each image ``--peers-image-latency``
and each API page ``--peers-page-latency`` seconds late (``--peers-latency-images`` images; 0
skips): a far link, where this crawl's concurrent downloads meet gallery-dl's sequential ones.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.measure import REPOSITORY, Server, alternated, check_saved, crawl, serving
from benchmarks.report import file_system
from civitai_spider.local_files import TEMPORARY_PREFIX
from civitai_spider.query import MAX_LIMIT

KIND = "jpeg"  # 1024x1536, ~490 KB: the images
OURS = "civitai"
GALLERY_DL = "gallery-dl"
GALLERY_DL_METADATA = "gallery-dl --write-metadata"
BARE = "bare Scrapy (discards)"
#: Every tool of a series on the fast link; with latency, bare Scrapy has nothing to show.
TOOLS = (OURS, GALLERY_DL, GALLERY_DL_METADATA, BARE)
PEERS = (GALLERY_DL, GALLERY_DL_METADATA)
#: The least CPU ratio asked for (theirs per image / ours per image), by peer: issue 25, target 1.
CPU_TARGETS: dict[str, float] = {GALLERY_DL: 1.0, GALLERY_DL_METADATA: 1.3}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".mp4")
#: What gallery-dl is asked for: the REST API's image feed, in pages as large as ours.
_GALLERY_DL_URL = f"https://civitai.com/images?limit={MAX_LIMIT}"


@dataclass
class PeerRun:
    """One whole process of one tool, from its start to its exit."""

    tool: str
    expected: int  # images it was to save (and as many metadata files, but for plain gallery-dl)
    images: int  # image requests the server answered
    saved: int  # image files the tool left in its folder (bare Scrapy: images it downloaded)
    metadata_files: int  # .json files beside them
    api_pages: int
    wall_seconds: float
    cpu_seconds: float  # user + system of the process (wait4)
    peak_rss_mb: float

    @property
    def complete(self) -> bool:
        """Whether it left every image it was to save, and every metadata file."""
        metadata = 0 if self.tool in (GALLERY_DL, BARE) else self.expected
        return self.saved == self.expected and self.metadata_files >= metadata

    @property
    def images_per_second(self) -> float:
        return self.saved / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cpu_per_thousand(self) -> float:
        """CPU seconds per 1,000 images saved."""
        return 1000 * self.cpu_seconds / max(self.saved, 1)


@dataclass
class PeerSeries:
    """One server's runs: every tool's, and the one-image runs when the fixed cost was measured."""

    label: str
    images: int
    image_latency: float
    page_latency: float
    file_system: str = "unknown"  # of the folders the tools saved to
    runs: dict[str, list[PeerRun]] = field(default_factory=dict)
    fixed: dict[str, list[PeerRun]] = field(default_factory=dict)

    @property
    def tools(self) -> tuple[str, ...]:
        """The tools it runs: bare Scrapy on the fast link only (with latency, what it costs a crawl
        that writes nothing tells nothing more)."""
        return TOOLS if not self.image_latency and not self.page_latency else TOOLS[:-1]

    def incomplete(self, tool: str) -> list[PeerRun]:
        """The runs of ``tool`` (one-image runs too) that did not leave every file they were to."""
        return [run for run in [*self.runs[tool], *self.fixed.get(tool, [])] if not run.complete]

    def median(self, tool: str, value: str) -> float:
        return statistics.median(getattr(run, value) for run in self.runs[tool])

    def fixed_seconds(self, tool: str) -> float | None:
        runs = self.fixed.get(tool)
        return statistics.median(run.wall_seconds for run in runs) if runs else None


@dataclass
class Ratio:
    name: str
    value: float | None  # None: not taken, a run of the peer was incomplete
    target: float | None


def measure(
    images: int,
    rounds: int,
    work: Path,
    disk: Path,
    *,
    latency_images: int = 0,
    image_latency: float = 0.05,
    page_latency: float = 0.5,
) -> list[PeerSeries]:
    """The fast-link series (and the one-image runs), then the latency series if ``latency_images``."""
    series = [PeerSeries("fast link (loopback, no latency)", images, 0.0, 0.0)]
    if latency_images:
        label = f"latency: {image_latency * 1000:g} ms per image, {page_latency * 1000:g} ms per API page"
        series.append(PeerSeries(label, latency_images, image_latency, page_latency))
    for index, measured in enumerate(series):
        measured.file_system = file_system(disk)
        print(f"Peers, {measured.label}: {measured.images} images, {rounds} round(s)...", file=sys.stderr)
        with serving(
            KIND, measured.images, image_latency=measured.image_latency, page_latency=measured.page_latency
        ) as server:
            tools = measured.tools
            measured.runs = _run_tools(server, tools, measured.images, rounds, work, disk, f"peers-{index}")
        if not measured.image_latency and not measured.page_latency:
            print(f"Peers: one-image runs, {rounds} round(s)...", file=sys.stderr, flush=True)
            with serving(KIND, 1) as server:
                measured.fixed = _run_tools(server, tools, 1, rounds, work, disk, "peers-fixed")
        for tool in measured.runs:
            for run in measured.incomplete(tool):
                print(
                    f"Peers, {measured.label}: {tool} saved {run.saved} images and "
                    f"{run.metadata_files} metadata files of {run.expected}: no ratio taken",
                    file=sys.stderr,
                )
    return series


def _run_tools(
    server: Server, tools: tuple[str, ...], images: int, rounds: int, work: Path, disk: Path, prefix: str
) -> dict[str, list[PeerRun]]:
    runs: dict[str, list[PeerRun]] = {tool: [] for tool in tools}
    for number, tool in alternated(rounds, *tools):
        name = f"{prefix}-{tool.split(' (')[0].replace(' --', '-').replace(' ', '-')}-{number}"
        store = disk / name
        if tool in (OURS, BARE):
            run = crawl(server, "peers", OURS if tool == OURS else "bare", work, store, name=name)
            if tool == OURS:
                check_saved(run, images)  # ours must not fail: that is what the other scenarios check
                saved, metadata = _count(store)
            else:
                saved, metadata = run.images, 0
            measured = PeerRun(
                tool,
                images,
                run.images,
                saved,
                metadata,
                run.api_pages,
                run.wall_seconds,
                run.cpu_seconds,
                run.peak_rss_mb,
            )
        else:
            measured = _gallery_dl(server, tool, images, work, store, name)
        runs[tool].append(measured)
    return runs


def _gallery_dl(server: Server, tool: str, images: int, work: Path, store: Path, name: str) -> PeerRun:
    """One whole gallery-dl process against ``server``, saving to ``store``; raises if it failed."""
    config = work / f"{name}.gallery-dl.json"
    config.write_text(
        json.dumps(
            {
                "extractor": {
                    "base-directory": str(store),
                    # Its default waits 0.5-1.5 s between API requests: a courtesy to Civitai,
                    # not work, so every sleep is 0 here.
                    "sleep": 0,
                    "sleep-request": 0,
                    "sleep-extractor": 0,
                    "civitai": {"api": "rest"},
                },
                "cache": {"file": None},  # no SQLite cache in the user's home
                "output": {"mode": "null"},
            }
        )
    )
    command = [sys.executable, "-m", "benchmarks.gallery_dl_civitai", server.base, "--config-ignore"]
    command += ["-c", str(config), *(["--write-metadata"] if tool == GALLERY_DL_METADATA else [])]
    command.append(_GALLERY_DL_URL)
    log = work / f"{name}.log"
    server.take_counts()
    started = time.monotonic()
    with log.open("wb") as errors:
        process = subprocess.Popen(
            command,
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall_seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    counts = server.take_counts()
    if process.returncode != 0:
        raise RuntimeError(f"peers/{tool} failed ({process.returncode}): see {log}")
    saved, metadata = _count(store)
    return PeerRun(
        tool,
        images,
        counts["images"],
        saved,
        metadata,
        counts["api"],
        wall_seconds,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
    )


def _count(store: Path) -> tuple[int, int]:
    """Image files and metadata (.json) files under ``store``, temporary files not counted."""
    images = metadata = 0
    for path in store.rglob("*"):
        if path.name.startswith(TEMPORARY_PREFIX) or not path.is_file():
            continue
        images += path.suffix in _IMAGE_SUFFIXES
        metadata += path.suffix == ".json"
    return images, metadata


def ratios(series: list[PeerSeries]) -> list[Ratio]:
    """Ours against each gallery-dl, per series: images/s (ours / theirs), CPU per image (theirs /
    ours: above 1, ours spends less) and, where measured, the one-image run's time (ours / theirs).
    Then, where bare Scrapy ran, the same CPU ratio for it (the most any crawl on Scrapy's
    downloader can reach) and ours against it."""
    found = []
    for measured in series:
        for peer in PEERS:
            complete = not measured.incomplete(peer)
            name = f"Peers, {measured.label}: ours / {peer}"
            rate = measured.median(OURS, "images_per_second") / measured.median(peer, "images_per_second")
            found.append(Ratio(f"{name}, images/s", rate if complete else None, None))
            cpu = measured.median(peer, "cpu_per_thousand") / measured.median(OURS, "cpu_per_thousand")
            target = CPU_TARGETS[peer] if not measured.image_latency else None
            found.append(Ratio(f"{name}, CPU per image (theirs / ours)", cpu if complete else None, target))
            ours_fixed, theirs_fixed = measured.fixed_seconds(OURS), measured.fixed_seconds(peer)
            if ours_fixed and theirs_fixed:
                found.append(
                    Ratio(f"{name}, one-image run seconds (ours / theirs)", ours_fixed / theirs_fixed, None)
                )
        if BARE not in measured.runs or measured.incomplete(BARE):
            continue
        bare = measured.median(BARE, "cpu_per_thousand")
        for peer in PEERS:
            cpu = measured.median(peer, "cpu_per_thousand") / bare
            name = f"Peers, {measured.label}: {BARE} / {peer}, CPU per image (theirs / bare)"
            found.append(Ratio(name, cpu if not measured.incomplete(peer) else None, None))
        ours = bare / measured.median(OURS, "cpu_per_thousand")
        name = f"Peers, {measured.label}: ours / {BARE}, CPU per image (bare / ours)"
        found.append(Ratio(name, ours, None))
    return found


def table(series: list[PeerSeries]) -> list[str]:
    """Each series' medians per tool, then every ratio beside its target."""
    lines = [
        "| peers (medians of whole processes) | tool | runs | images saved | wall s | images/s "
        "| CPU s per 1,000 images | peak RSS MB | one-image run s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for measured in series:
        for tool, runs in measured.runs.items():
            fixed = measured.fixed_seconds(tool)
            incomplete = measured.incomplete(tool)
            saved = f"{min(run.saved for run in runs)}" + (
                f" (INCOMPLETE: {len(incomplete)} run(s))" if incomplete else ""
            )
            wall, rate = measured.median(tool, "wall_seconds"), measured.median(tool, "images_per_second")
            cpu, rss = measured.median(tool, "cpu_per_thousand"), measured.median(tool, "peak_rss_mb")
            lines.append(
                f"| {measured.label} | {tool} | {len(runs)} | {saved} | {wall:.2f} | {rate:.0f} | {cpu:.1f} "
                f"| {rss:.0f} | {f'{fixed:.2f}' if fixed is not None else '-'} |"
            )
    lines += [
        "",
        f"Peers: every file kept, on {series[0].file_system}; the one-image runs on the fast link",
        "",
        "| peers ratio (same run) | value | target |",
        "|---|---|---|",
    ]
    for ratio in ratios(series):
        value = f"{ratio.value:.2f}x" if ratio.value is not None else "- (the peer's runs were incomplete)"
        target = "-"
        if ratio.target is not None and ratio.value is not None:
            target = f"at least {ratio.target:g}x: {'met' if ratio.value >= ratio.target else 'NOT met'}"
        elif ratio.target is not None:
            target = f"at least {ratio.target:g}x"
        lines.append(f"| {ratio.name} | {value} | {target} |")
    return lines


def raw(series: list[PeerSeries]) -> dict[str, object]:
    return {
        "series": [
            {
                "label": measured.label,
                "images": measured.images,
                "image_latency": measured.image_latency,
                "page_latency": measured.page_latency,
                "file_system": measured.file_system,
                "incomplete": {tool: len(measured.incomplete(tool)) for tool in measured.runs},
                "runs": {tool: [_raw_run(run) for run in runs] for tool, runs in measured.runs.items()},
                "fixed": {tool: [_raw_run(run) for run in runs] for tool, runs in measured.fixed.items()},
            }
            for measured in series
        ],
        "ratios": [asdict(ratio) for ratio in ratios(series)],
    }


def _raw_run(run: PeerRun) -> dict[str, object]:
    return {
        **asdict(run),
        "images_per_second": run.images_per_second,
        "cpu_per_thousand": run.cpu_per_thousand,
    }
