"""The resize scenario: the same images as originals and resized by the CDN (``CIVITAI_IMAGE_WIDTH``).

Against one benchmark server (``benchmarks/server.py``) of ``--resize-images`` JPEGs of 1024x1536
(~490 KB, the issue's images, as the peers scenario's), ``scrapy crawl civitai`` runs as originals
and at each of ``--resize-widths``, alternately, ``--resize-rounds`` times each, every run a whole
process timed from its start to its exit. The server resizes as Civitai's CDN does (the width
snapped up to its ladder, never enlarged, JPEG at quality 85) once per image and width and keeps
the result, as the CDN's cache does: what is measured is the crawl's side. The bytes are the
crawl's downloaded bytes (Scrapy's ``downloader/response_bytes``, the API pages included, the
same in every run); the images are deleted as they land, as in the formats scenario.

It prints, per width, the medians and what it saves per 1,000 images against the originals:
megabytes downloaded and seconds of the whole process (on loopback, where bytes cost little but
CPU: on a real link the bytes saved are most of the time saved).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.measure import Run, alternated, check_saved, crawl, deleting_images, serving

KIND = "jpeg"  # 1024x1536, ~490 KB
ORIGINALS = "originals"
#: The stat the crawl counts each image asked at a width in.
RESIZED_STAT = "civitai/cdn_width/resized"


@dataclass
class ResizeRun:
    """One whole process at one width (``originals``: none)."""

    width: str
    images: int
    saved: int
    resized: int  # images the crawl asked at a width (its stat)
    megabytes: float
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def per_thousand(self) -> tuple[float, float]:
        """(MB downloaded, seconds) per 1,000 images saved."""
        saved = max(self.saved, 1)
        return 1000 * self.megabytes / saved, 1000 * self.wall_seconds / saved


@dataclass
class ResizeSeries:
    images: int
    widths: list[int]
    runs: dict[str, list[ResizeRun]] = field(default_factory=dict)

    def median(self, width: str, value: str) -> float:
        return statistics.median(getattr(run, value) for run in self.runs[width])

    def per_thousand(self, width: str) -> tuple[float, float]:
        """Medians of (MB, seconds) per 1,000 images."""
        runs = self.runs[width]
        return (
            statistics.median(run.per_thousand[0] for run in runs),
            statistics.median(run.per_thousand[1] for run in runs),
        )


def measure(images: int, widths: list[int], rounds: int, work: Path, stores: Path) -> ResizeSeries:
    """Originals and each width of ``widths``, alternated, ``rounds`` runs each."""
    series = ResizeSeries(images, widths)
    names = [ORIGINALS, *(str(width) for width in widths)]
    series.runs = {name: [] for name in names}
    print(f"Resize: {images} images, originals and {widths}, {rounds} round(s)...", file=sys.stderr)
    with serving(KIND, images) as server:
        for number, name in alternated(rounds, *names):
            settings = {} if name == ORIGINALS else {"CIVITAI_IMAGE_WIDTH": name}
            store = stores / f"resize-{name}-{number}"
            with deleting_images(store):
                run = crawl(
                    server, "Resize", f"civitai, {name}", work, store, settings=settings, name=store.name
                )
            check_saved(run, images)
            series.runs[name].append(_measured(name, run, images))
    return series


def _measured(name: str, run: Run, images: int) -> ResizeRun:
    resized = int(str(run.stats.get(RESIZED_STAT, 0)))
    if resized != (0 if name == ORIGINALS else images):
        raise RuntimeError(f"resize/{name}: {resized} images asked at a width, not {images}")
    return ResizeRun(
        name,
        images,
        int(str(run.stats.get("civitai/saved", 0))),
        resized,
        run.megabytes,
        run.wall_seconds,
        run.cpu_seconds,
        run.peak_rss_mb,
    )


def table(series: ResizeSeries) -> list[str]:
    """One row per width: medians, per 1,000 images, and what it saves against the originals."""
    lines = [
        f"| resize, {series.images} images of 1024x1536 (medians of whole processes) | runs | MB | wall s "
        "| CPU s | peak RSS MB | MB per 1,000 | s per 1,000 | saved per 1,000 images vs originals |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    original_mb, original_seconds = series.per_thousand(ORIGINALS)
    for width, runs in series.runs.items():
        megabytes, seconds = series.per_thousand(width)
        saved = "-"
        if width != ORIGINALS:
            saved = (
                f"{original_mb - megabytes:.0f} MB ({original_mb / megabytes:.1f}x fewer), "
                f"{original_seconds - seconds:.2f} s ({original_seconds / seconds:.2f}x faster)"
            )
        label = width if width == ORIGINALS else f"CIVITAI_IMAGE_WIDTH={width}"
        lines.append(
            f"| {label} | {len(runs)} | {series.median(width, 'megabytes'):.1f} "
            f"| {series.median(width, 'wall_seconds'):.2f} | {series.median(width, 'cpu_seconds'):.2f} "
            f"| {series.median(width, 'peak_rss_mb'):.0f} | {megabytes:.1f} | {seconds:.2f} | {saved} |"
        )
    return lines


def ratios(series: ResizeSeries) -> dict[str, float]:
    """Per width: originals' bytes / its bytes, and originals' seconds / its seconds, per image."""
    original_mb, original_seconds = series.per_thousand(ORIGINALS)
    found = {}
    for width in series.runs:
        if width != ORIGINALS:
            megabytes, seconds = series.per_thousand(width)
            found[f"Resize {width}: MB of originals / MB resized"] = original_mb / megabytes
            found[f"Resize {width}: whole-process s of originals / s resized"] = original_seconds / seconds
    return found


def raw(series: ResizeSeries) -> dict[str, object]:
    return {
        "images": series.images,
        "widths": series.widths,
        "runs": {
            width: [{**asdict(run), "per_thousand": run.per_thousand} for run in runs]
            for width, runs in series.runs.items()
        },
        "per_thousand": {width: series.per_thousand(width) for width in series.runs},
        "ratios": ratios(series),
    }
