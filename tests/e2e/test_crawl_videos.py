"""End to end: videos through ``scrapy crawl civitai`` (``media=``, the container check, the caps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from benchmarks.measure import serving
from benchmarks.videos import make_video
from tests.support import images, videos
from tests.support.crawls import REPOSITORY, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai, Fault

NO_PROMPT_NEEDED = {"CIVITAI_REQUIRE_PROMPT": "false"}


def add_video(server: FakeCivitai, body: bytes | None, **fields: object) -> dict:
    return server.add_image_item(body, type="video", **fields)


def test_media_video_saves_the_original_bytes_and_the_metadata(server: FakeCivitai, store: Path) -> None:
    mp4, webm, mkv = videos.mp4(), videos.webm(), videos.mkv()
    with_prompt = add_video(server, mp4)
    without_meta = add_video(server, webm, meta=None)  # most videos: no generation metadata
    matroska = add_video(server, mkv)
    image = server.add_image_item(images.jpeg_rgb())

    result = run_crawl(server, store, "media=video", "limit=2", **NO_PROMPT_NEEDED)

    assert result.returncode == 0, result.stderr
    assert all(page.query["type"] == "video" for page in server.api_requests())
    assert urlsplit(image["url"]).path not in {request.path for request in server.cdn_requests()}
    assert (store / f"{with_prompt['id']}.mp4").read_bytes() == mp4
    assert (store / f"{without_meta['id']}.webm").read_bytes() == webm
    assert (store / f"{matroska['id']}.mkv").read_bytes() == mkv
    assert sorted(result.ids_recorded()) == [with_prompt["id"], without_meta["id"], matroska["id"]]
    prompt = (store / f"{with_prompt['id']}_pos-prompt.txt").read_text()
    assert prompt == with_prompt["meta"]["prompt"]
    record = json.loads((store / f"{without_meta['id']}_meta.json").read_text())
    assert record == {**without_meta, "image_file": f"{without_meta['id']}.webm"}
    assert (store / f"{without_meta['id']}_pos-prompt.txt").read_text() == ""
    stats = result.stats
    assert stats["civitai/saved/video"] == 3 and stats["civitai/saved"] == 3
    assert "civitai/saved/image" not in stats


def test_media_all_saves_images_and_videos_and_drops_audio(server: FakeCivitai, store: Path) -> None:
    image = server.add_image_item(images.png_rgb())
    video = add_video(server, videos.mp4())
    server.add_image_item(b"ID3\x04\x00\x00\x00\x00\x00\x00", type="audio")

    result = run_crawl(server, store, "media=all")

    assert result.returncode == 0, result.stderr
    [page] = server.api_requests()
    assert "type" not in page.query
    assert sorted(result.ids_recorded()) == [image["id"], video["id"]]
    assert (store / f"{image['id']}.png").exists() and (store / f"{video['id']}.mp4").exists()
    stats = result.stats
    assert stats["civitai/saved/image"] == 1 and stats["civitai/saved/video"] == 1
    assert stats["civitai/saved"] == 2
    assert stats["civitai/dropped/audio"] == 1
    assert stats["civitai/items_seen"] == 3


def test_media_image_sends_type_image_and_skips_what_the_server_lets_through(
    server: FakeCivitai, store: Path
) -> None:
    image = server.add_image_item(images.jpeg_rgb())

    result = run_crawl(server, store)

    assert result.returncode == 0, result.stderr
    [page] = server.api_requests()
    assert page.query["type"] == "image"
    assert result.ids_recorded() == [image["id"]]
    assert result.stats["civitai/saved/image"] == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_broken_video_is_refused_with_its_reason(server: FakeCivitai, store: Path, chunked: bool) -> None:
    server.chunked_cdn = chunked  # the same refusals without a Content-Length
    whole = videos.mp4()
    good = add_video(server, whole)
    broken = {
        "cut short": add_video(server, whole[: len(whole) // 2]),
        "not a video": add_video(server, b"<!DOCTYPE html><html><body>Not found</body></html>"),
        "an image": add_video(server, images.jpeg_rgb()),
        "no moov": add_video(
            server, videos.box(b"ftyp", b"isom\x00\x00\x02\x00") + videos.box(b"mdat", b"x")
        ),
        "webm cut short": add_video(server, videos.webm()[:-7]),
        "body cut short": add_video(server, whole),
    }
    server.inject_always(broken["body cut short"]["url"], Fault.short_body())

    result = run_crawl(server, store, "media=video", RETRY_TIMES="1")

    assert result.returncode == 0, result.stderr
    assert result.ids_recorded() == [good["id"]]
    assert (store / f"{good['id']}.mp4").read_bytes() == whole
    log = {int(line.split("\t")[1]): line.split("\t", 3)[3] for line in result.error_log().splitlines()}
    reasons = {case: log[item["id"]] for case, item in broken.items()}
    assert len(log) == len(broken), log
    assert "cut short" in reasons["cut short"]
    assert "not a video" in reasons["not a video"]
    assert "not a video" in reasons["an image"]
    assert "moov" in reasons["no moov"]
    assert "cut short" in reasons["webm cut short"]
    assert "ResponseDataLossError" in reasons["body cut short"]
    for item in broken.values():
        assert list(store.glob(f"{item['id']}[._]*")) == [], item["id"]
    assert result.stats["civitai/failed"] == len(broken)
    assert not [path for path in store.iterdir() if path.name.startswith(".civitai-partial-")]


def test_video_size_cap_and_no_size_warning_per_video(server: FakeCivitai, store: Path) -> None:
    small, large = videos.mp4_boxes(20_000), videos.mp4_boxes(60_000)
    kept = add_video(server, small)
    too_large = add_video(server, large)
    large_image = images.bmp(size=(200, 200))  # 120 KB, over the video cap: images have none
    image = server.add_image_item(large_image)

    result = run_crawl(
        server,
        store,
        "media=all",
        CIVITAI_MAX_VIDEO_BYTES=str(40_000),
        DOWNLOAD_WARNSIZE=str(len(small) // 2),
        **NO_PROMPT_NEEDED,
    )

    assert result.returncode == 0, result.stderr
    assert len(large_image) > 40_000
    assert sorted(result.ids_recorded()) == [kept["id"], image["id"]]
    [line] = [line for line in result.error_log().splitlines() if f"\t{too_large['id']}\t" in line]
    assert f"larger than CIVITAI_MAX_VIDEO_BYTES (40000 bytes): {len(large)} bytes announced" in line
    # One WARNING for it, ours: Scrapy's own about the size cap is not repeated.
    [warning] = [line for line in result.stderr.splitlines() if "max size" in line or "MAX_VIDEO" in line]
    assert f"WARNING: Dropped: video {too_large['id']} failed: larger than" in warning
    # DOWNLOAD_WARNSIZE is for images: Scrapy warns about the image, never about a video.
    warnings = [line for line in result.stderr.splitlines() if "larger than download warn size" in line]
    assert len(warnings) == 1 and urlsplit(image["url"]).path in warnings[0], warnings
    assert result.stats["civitai/failed"] == 1


def test_videos_in_flight_stay_within_their_own_bound(server: FakeCivitai, store: Path) -> None:
    video_items = [add_video(server, videos.mp4()) for _ in range(6)]
    image_items = [server.add_image_item(images.jpeg_rgb()) for _ in range(6)]
    server.cdn_delay = 0.3  # every file takes at least 0.3 s to arrive

    result = run_crawl(server, store, "media=all", CIVITAI_VIDEOS_IN_FLIGHT="2")

    assert result.stats["civitai/saved"] == len(video_items) + len(image_items)
    video_paths = {urlsplit(item["url"]).path for item in video_items}
    requests = server.cdn_requests()
    video_arrivals = [request.time for request in requests if request.path in video_paths]
    image_arrivals = [request.time for request in requests if request.path not in video_paths]

    def most_at_once(arrivals: list[float]) -> int:
        # A request holds its place for at least 0.3 s after it arrives.
        return max(sum(start <= time < start + 0.3 for time in arrivals) for start in arrivals)

    assert most_at_once(video_arrivals) == 2
    # Images have their own bound (CIVITAI_IMAGES_IN_FLIGHT, 32): waiting videos hold none back.
    assert most_at_once(image_arrivals) == len(image_items)


def test_a_chunked_video_over_the_cap_is_cancelled_once_that_many_bytes_came(
    server: FakeCivitai, store: Path
) -> None:
    server.chunked_cdn = True  # no Content-Length: the cap is met while the bytes arrive
    small, large = videos.mp4_boxes(20_000), videos.mp4_boxes(400_000)
    kept, too_large = add_video(server, small), add_video(server, large)

    result = run_crawl(server, store, "media=video", CIVITAI_MAX_VIDEO_BYTES=str(100_000), **NO_PROMPT_NEEDED)

    assert result.returncode == 0, result.stderr
    assert result.ids_recorded() == [kept["id"]]
    assert (store / f"{kept['id']}.mp4").read_bytes() == small
    [line] = [line for line in result.error_log().splitlines() if f"\t{too_large['id']}\t" in line]
    assert "larger than CIVITAI_MAX_VIDEO_BYTES (100000 bytes): more came, download cancelled" in line
    [warning] = [line for line in result.stderr.splitlines() if "max size" in line or "MAX_VIDEO" in line]
    assert f"WARNING: Dropped: video {too_large['id']} failed: larger than" in warning
    assert result.stats["civitai/failed"] == 1
    assert not list(store.glob(f"{too_large['id']}.*"))
    assert not [path for path in store.iterdir() if path.name.startswith(".civitai-partial-")]
    # Cancelled once over the cap, not at the end: far from the 400 KB were fetched.
    assert result.stats["downloader/response_bytes"] < len(small) + len(large) // 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_video_download_keeps_scrapys_retries_redirects_timeout_and_key_rules(
    server: FakeCivitai, store: Path, chunked: bool
) -> None:
    server.chunked_cdn = chunked
    retried = add_video(server, videos.mp4_boxes(300_000))
    server.inject(retried["url"], Fault.status(503, retry_after="0"))
    cut_then_whole = add_video(server, videos.webm())
    server.inject(cut_then_whole["url"], Fault.short_body())
    moved_body = videos.mkv()
    moved = add_video(server, None)
    moved_to = server.add_image("/moved/x.mp4", moved_body, "video/mp4")
    server.inject_always(moved["url"], Fault.redirect(moved_to))
    stalled = add_video(server, videos.mp4())
    server.inject_always(stalled["url"], Fault.stall(5))  # half, then nothing past the timeout

    result = run_crawl(
        server,
        store,
        "media=video",
        api_key="civitai-secret-key-for-the-api-only",
        CIVITAI_IMAGE_REDIRECTS="any",
        CIVITAI_VIDEO_DOWNLOAD_TIMEOUT="1",
        RETRY_TIMES="1",
        **NO_PROMPT_NEEDED,
    )

    assert result.returncode == 0, result.stderr
    assert sorted(result.ids_recorded()) == sorted([retried["id"], cut_then_whole["id"], moved["id"]])
    assert (store / f"{retried['id']}.mp4").read_bytes() == videos.mp4_boxes(300_000)
    assert (store / f"{cut_then_whole['id']}.webm").read_bytes() == videos.webm()
    assert (store / f"{moved['id']}.mkv").read_bytes() == moved_body
    [line] = result.error_log().splitlines()
    assert f"\t{stalled['id']}\t" in line and "took longer than 1.0 seconds" in line, line
    # Nothing left of the attempts that failed: the 503's page, the cut body, the stalled halves.
    assert not [path for path in store.iterdir() if path.name.startswith(".civitai-partial-")]
    requested = [request.path for request in server.cdn_requests()]
    for item in (retried, cut_then_whole, stalled):
        assert requested.count(urlsplit(item["url"]).path) == 2, item
    assert "/moved/x.mp4" in requested
    assert all("authorization" not in request.headers for request in server.cdn_requests())
    # The bytes that went to files are counted as Scrapy counts a body's.
    whole = len(videos.mp4_boxes(300_000)) + len(videos.webm()) + len(moved_body)
    assert result.stats["downloader/response_bytes"] > whole + len(videos.webm()) // 2


@pytest.mark.heavy
def test_large_videos_are_never_held_in_memory(store: Path, tmp_path: Path) -> None:
    # The benchmark's server, in a process of its own. A forked child's peak RSS (ru_maxrss)
    # counts what its parent held at the fork, this test process too: the crawl is started by a
    # small launcher, which reports the crawl's own peak.
    with serving("video", 2, VIDEO_BYTES) as server, open(tmp_path / "crawl.log", "wb") as log:
        command = [sys.executable, "-m", "scrapy", "crawl", "civitai", "-a", "media=video"]
        settings = {
            "CIVITAI_API_URL": server.api_url,
            "IMAGES_STORE": str(store),
            "CIVITAI_VIDEOS_IN_FLIGHT": "2",
            "TELNETCONSOLE_ENABLED": "False",
            "REMOTE_CONTROL_ENABLED": "False",
        }
        for name, value in settings.items():
            command += ["-s", f"{name}={value}"]
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *command],
            cwd=REPOSITORY,
            env=crawl_environment(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=300,
        )

    assert launched.returncode == 0, (tmp_path / "crawl.log").read_text()[-3000:]
    saved = sorted(store.glob("*.mp4"))
    assert len(saved) == 2 and all(path.read_bytes() == make_video(VIDEO_BYTES) for path in saved)
    # Two videos in flight, held whole, would be twice this; the crawl itself needs about 90 MB.
    peak = int(launched.stdout) * 1024
    assert peak < VIDEO_BYTES, f"peak RSS {peak / 1e6:.0f} MB for videos of {VIDEO_BYTES / 1e6:.0f} MB"


#: Far larger than what a crawl needs itself (about 90 MB of RSS).
VIDEO_BYTES = 400_000_000
#: Runs the command in its arguments, prints its peak RSS in KiB, exits with its exit status.
_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
process.returncode = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss)
sys.exit(process.returncode)
"""
