"""A smoke run of the benchmark with a handful of images, so that it never rots.

No timing is asserted (these machines are shared): only that every scenario ran to its end
on the same images, that the re-run asked for no image, and that the report is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPOSITORY

IMAGES = 8
VIDEOS = 3


def test_benchmark_runs_every_scenario_and_reports_them(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--images", str(IMAGES), "--memory-images", "16", "8"]
        + ["--videos", str(VIDEOS), "--video-mb", "2", "--ids", "1000", "--json", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr

    results = json.loads(output.read_text())
    runs = {(run["scenario"], run["crawler"]): run for run in results["runs"]}
    for scenario in ("JPEG kept", "PNG kept", "WebP converted"):
        for crawler in ("bare", "stock", "civitai"):
            run = runs.pop((scenario, crawler))
            assert run["images"] == IMAGES, (scenario, crawler)
            assert run["elapsed"] > 0 and run["cpu_seconds"] > 0 and run["peak_rss_mb"] > 0
            assert run["megabytes"] > 0
            if crawler == "civitai":
                assert run["stats"]["civitai/saved"] == IMAGES, scenario
    inline = runs.pop(("WebP converted", "civitai-inline-1-core"))
    assert inline["images"] == IMAGES and inline["stats"]["civitai/saved"] == IMAGES
    on_disk = runs.pop(("PNG kept, store on disk", "civitai"))
    assert on_disk["images"] == IMAGES and on_disk["stats"]["civitai/saved"] == IMAGES
    video = runs.pop((f"Videos, {VIDEOS} x 2 MB", "civitai"))
    assert video["images"] == VIDEOS and video["stats"]["civitai/saved/video"] == VIDEOS
    assert video["megabytes"] > VIDEOS * 2
    rerun = runs.pop(("JPEG re-run, store complete", "civitai"))
    assert rerun["images"] == 0 and rerun["items"] == IMAGES
    assert rerun["stats"]["civitai/dropped/already_downloaded"] == IMAGES
    assert runs == {}

    assert [run["items"] for run in results["memory_runs"]] == [16, 8]
    assert results["id_file"]["ids"] == 1000 and results["id_file"]["load_seconds"] > 0
    assert set(results["ratios"]) == {
        "JPEG kept: civitai / bare",
        "JPEG kept: civitai / stock",
        "PNG kept: civitai / bare",
        "PNG kept: civitai / stock",
        "WebP converted: civitai / bare",
        "WebP converted: civitai / stock",
        "WebP converted: threads / inline on 1 core",
        "Memory: peak RSS largest / smallest",
        "Videos: peak RSS / (videos in flight x video + JPEG crawl's peak RSS)",
    }
    assert results["machine"]["cores"] >= 1
    assert "| JPEG kept | civitai |" in process.stdout and "ID file: 1,000 ids" in process.stdout
