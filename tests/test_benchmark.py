"""A smoke run of the benchmark with a handful of images, so that it never rots.

No timing is asserted (these machines are shared): only that every scenario ran to its end
on the same images, that the re-runs asked for no image, and that the report is complete.
The store scenarios start real servers (SeaweedFS, Redis), as the store tests do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.run import alternated
from tests.conftest import REPOSITORY

IMAGES = 8
VIDEOS = 3


def test_benchmark_runs_the_crawl_scenarios_and_reports_them(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--scenarios", "formats", "memory", "videos"]
        + ["--images", str(IMAGES), "--memory-images", "16", "8"]
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


def run_store_scenario(tmp_path: Path, scenario: str, *options: str) -> tuple[dict[str, Any], str]:
    """Run one store scenario tiny; its raw results and its printed report."""
    output = tmp_path / "results.json"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--scenarios", scenario, *options]
        + ["--ids", "1000", "--json", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    return json.loads(output.read_text()), process.stdout


def test_benchmark_compares_s3_with_the_folder(tmp_path: Path) -> None:
    results, report = run_store_scenario(tmp_path, "s3", "--store-images", str(IMAGES), "--store-rounds", "1")

    assert results["runs"] == [] and results["memory_runs"] == []
    crawlers = [(run["scenario"], run["crawler"]) for run in results["store_runs"]]
    assert crawlers == [
        ("JPEG kept, S3 vs folder", "civitai, folder (run 1)"),
        ("JPEG kept, S3 vs folder", "civitai, S3 (run 1)"),
        ("PNG kept, S3 vs folder", "civitai, folder (run 1)"),
        ("PNG kept, S3 vs folder", "civitai, S3 (run 1)"),
    ]
    for run in results["store_runs"]:
        assert run["images"] == IMAGES and run["stats"]["civitai/saved"] == IMAGES, run["crawler"]
    s3_runs = [run for run in results["store_runs"] if "S3" in run["crawler"]]
    assert all(run["store_server_cpu_seconds"] > 0 for run in s3_runs)
    assert set(results["ratios"]) == {"JPEG kept: S3 / folder", "PNG kept: S3 / folder"}
    for comparison in results["comparisons"]:
        assert comparison["unit"] == "images/s" and comparison["target"] == 0.5
        assert comparison["ratio"] == comparison["store_rate"] / comparison["local_rate"]
    assert "| JPEG kept: S3 / folder |" in report and "| PNG kept: S3 / folder |" in report
    assert "| JPEG kept, S3 vs folder (1 + 1 runs) | 8 | folder " in report
    assert report.count("| at least 0.5x |") == 2


def test_benchmark_compares_redis_with_the_id_file_on_a_rerun(tmp_path: Path) -> None:
    results, report = run_store_scenario(
        tmp_path, "redis", "--redis-images", str(IMAGES), "--redis-rounds", "1", "--redis-history", "1000"
    )

    fill, *reruns = results["store_runs"]
    assert fill["images"] == IMAGES and fill["stats"]["civitai/saved"] == IMAGES
    assert [run["crawler"] for run in reruns] == ["civitai, ID file (run 1)", "civitai, Redis (run 1)"]
    for run in reruns:
        assert run["images"] == 0 and run["items"] == IMAGES, run["crawler"]
        assert run["stats"]["civitai/dropped/already_downloaded"] == IMAGES, run["crawler"]
    [comparison] = results["comparisons"]
    assert comparison["unit"] == "items/s" and comparison["target"] == 1.0
    assert set(results["ratios"]) == {"JPEG re-run, store complete: Redis / ID file"}
    assert "| JPEG re-run, store complete: Redis / ID file |" in report
    assert f"| {IMAGES}, 0 image requests | ID file " in report and "| at least 1.0x |" in report


def test_store_runs_alternate_so_that_neither_store_always_goes_first() -> None:
    assert list(alternated(3, "folder", "S3")) == [
        (1, "folder"),
        (1, "S3"),
        (2, "S3"),
        (2, "folder"),
        (3, "folder"),
        (3, "S3"),
    ]
