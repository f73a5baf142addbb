"""Crash safety: ``kill -9`` the real ``scrapy crawl`` at random moments, then resume.

What must hold after any kill (the issue's requirements):

- images and metadata files are written atomically (a temporary ``.civitai-partial-*``
  name in the same folder, with the writer's host and pid, then a rename), so a file under
  its final name is whole;
- temporary files of a killed run are removed when the next run starts;
- the ID file is append-only, one whole line per write, and a torn last line is
  discarded when it is loaded;
- every id in the ID file has a complete, decodable image and all its metadata files,
  a partial image is never taken for a downloaded one, and a re-run finishes the rest
  without writing any id twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support import images, videos
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai
from tests.support.workers import dead_pid

ID_FILE_NAME = "downloaded_image_ID_DB.txt"
TEMPORARY_PREFIX = ".civitai-partial-"
#: This host's tag in temporary names: <prefix>h<8 hex of SHA-256(host name)>-<pid>-...
HOST_TAG = "h" + hashlib.sha256(os.fsencode(socket.gethostname())).hexdigest()[:8]
SIZE = (256, 256)  # big enough that decoding, converting and writing take a little time
ITEM_COUNT = 80
PAGE_SIZE = "limit=20"
KILLS = 20  # per seed, spread over one crawl of KILL_ITEM_COUNT items
KILL_ITEM_COUNT = 400


# --- helpers ---------------------------------------------------------------------------


@cache
def bodies() -> dict[str, bytes]:
    """One body per kind, made once: Pillow in pure-Python loops is not free at 256x256."""
    return {
        "jpeg": images.jpeg_rgb(SIZE),
        "png": images.png_rgb(SIZE),
        "webp": images.webp_rgb(SIZE),  # converted to JPEG
        "webp_alpha": images.webp_rgba(SIZE),  # converted to PNG
    }


#: kind -> (extension of the saved file, whether the original bytes are kept)
SAVED_AS = {"jpeg": ("jpg", True), "png": ("png", True), "webp": ("jpg", False), "webp_alpha": ("png", False)}


def add_items(server: FakeCivitai, kinds: list[str], kinds_by_id: dict[int, str]) -> list[dict[str, Any]]:
    """One item per kind in ``kinds``; ``kinds_by_id`` learns what each id serves."""
    items = []
    for kind in kinds:
        item = server.add_image_item(bodies()[kind])
        kinds_by_id[item["id"]] = kind
        items.append(item)
    return items


def add_mixed_items(server: FakeCivitai, count: int, kinds_by_id: dict[int, str]) -> list[dict[str, Any]]:
    """``count`` items cycling through the kinds, some with an empty negative prompt."""
    kinds = list(SAVED_AS)
    items = add_items(server, [kinds[index % len(kinds)] for index in range(count)], kinds_by_id)
    for index, item in enumerate(items):
        # The fake serves its item dicts as they are: changing them changes the API.
        if index % 5 == 0:
            item["meta"]["negativePrompt"] = ""  # no _neg-prompt.txt for this one
        elif index % 7 == 0:
            item["meta"]["negativePrompt"] = "   "  # blank counts as empty
        if index % 6 == 0:
            item["meta"]["prompt"] += ", café au lait ☕ 猫"  # non-ASCII survives as UTF-8
    return items


def read_id_lines(store: Path) -> tuple[list[bytes], bytes]:
    """(the whole lines of the ID file, the torn text after the last newline)."""
    path = store / ID_FILE_NAME
    if not path.exists():
        return [], b""
    data = path.read_bytes()
    *lines, torn = data.split(b"\n")
    return lines, torn


def recorded_ids(store: Path) -> list[int]:
    lines, _ = read_id_lines(store)
    return [int(line) for line in lines]


def temporary_files(store: Path) -> list[str]:
    return sorted(path.name for path in store.glob(TEMPORARY_PREFIX + "*")) if store.exists() else []


#: Image files found whole, by identity: a file is replaced by a rename (a new inode), never
#: rewritten in place, so one that has not changed need not be decoded again after each kill.
_whole_files: set[tuple[str, int, int, int]] = set()


def check_image_file(path: Path, kind: str | None = None) -> None:
    """``path`` is a whole image; with the ``kind`` served, also its extension and bytes."""
    status = path.stat()
    identity = (str(path), status.st_ino, status.st_size, status.st_mtime_ns)
    if identity in _whole_files:
        return
    if kind is not None:
        extension, kept = SAVED_AS[kind]
        assert path.suffix == "." + extension, f"{path.name}: a {kind} image must be saved as .{extension}"
        if kept:
            assert path.read_bytes() == bodies()[kind], (
                f"{path.name}: the original bytes must be kept as they are"
            )
    with Image.open(path) as image:
        image.load()  # a full decode: raises on a file cut short
        assert image.format == {".jpg": "JPEG", ".png": "PNG"}[path.suffix], path.name
        if kind is not None:
            assert image.size == SIZE, path.name
    _whole_files.add(identity)


def check_store_invariants(
    store: Path, items: list[dict[str, Any]], *, kinds: dict[int, str] | None = None, finished: bool = False
) -> set[int]:
    """Assert what must hold in ``store`` at any moment, even right after a ``kill -9``.

    Every id in the ID file has one complete image and all its metadata files; every
    file under a final name is whole (they are written atomically), recorded or not; the
    ID file has no duplicate line, and no torn last line once a run has ``finished``.
    ``kinds`` (id -> kind of body served) adds checks of the extension and kept bytes.
    Returns the recorded ids.
    """
    by_id = {item["id"]: item for item in items}
    lines, torn = read_id_lines(store)
    if finished:
        assert torn == b"", f"a finished run left a torn last line {torn!r} in the ID file"
    duplicates = [line for line, count in Counter(lines).items() if count > 1]
    assert not duplicates, f"lines written twice in the ID file: {duplicates}"
    for line in lines:
        assert re.fullmatch(rb"[1-9][0-9]*", line), f"not a clean id line in the ID file: {line!r}"
    recorded = {int(line) for line in lines}
    assert recorded <= set(by_id), f"ids in the ID file that the server never listed: {recorded - set(by_id)}"

    names = {path.name for path in store.iterdir()} if store.exists() else set()
    for image_id, item in by_id.items():
        kind = (kinds or {}).get(image_id)
        image_names = [name for name in (f"{image_id}.jpg", f"{image_id}.png") if name in names]
        assert len(image_names) <= 1, f"image {image_id} is saved twice: {image_names}"
        meta = item["meta"]
        negative = meta.get("negativePrompt")
        expected_metadata = [f"{image_id}_pos-prompt.txt", f"{image_id}_meta.json"]
        if isinstance(negative, str) and negative.strip():
            expected_metadata.append(f"{image_id}_neg-prompt.txt")
        else:
            assert f"{image_id}_neg-prompt.txt" not in names, f"image {image_id} has no negative prompt"
        if image_id in recorded:
            assert image_names, f"image {image_id} is in the ID file but has no image file"
            missing = [name for name in expected_metadata if name not in names]
            assert not missing, f"image {image_id} is in the ID file but lacks {missing}"
        # Whatever is under a final name must be whole, recorded or not.
        for name in image_names:
            check_image_file(store / name, kind)
        if f"{image_id}_meta.json" in names:
            record = json.loads((store / f"{image_id}_meta.json").read_text(encoding="utf-8"))
            assert record["id"] == image_id
            assert record["url"] == item["url"]
            if image_id in recorded:
                assert record["image_file"] == image_names[0]
        if f"{image_id}_pos-prompt.txt" in names:
            assert (store / f"{image_id}_pos-prompt.txt").read_text(encoding="utf-8") == meta["prompt"]
        if f"{image_id}_neg-prompt.txt" in names:
            assert (store / f"{image_id}_neg-prompt.txt").read_text(encoding="utf-8") == negative
    return recorded


def describe(result: CrawlResult) -> str:
    return f"exit status {result.returncode}; log ends with:\n{result.stderr[-3000:]}"


@pytest.fixture
def slow_cdn() -> Any:
    """A fake whose CDN answers a little late, so that a crawl lasts long enough to be killed."""
    with FakeCivitai(cdn_delay=0.05) as fake:
        yield fake


# --- kill -9 at random moments ---------------------------------------------------------


def start_crawl(server: FakeCivitai, store: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(
            # Two images at a time against a CDN that takes 50 ms: the pace (about 40 images
            # a second) no longer depends on how fast the machine is, so KILLS kills spread
            # over the crawl rather than finding it done after the first few.
            crawl_command(server, store, PAGE_SIZE, CIVITAI_IMAGES_IN_FLIGHT="2"),
            cwd=REPOSITORY,
            env=crawl_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )


def wait_for_progress(
    process: subprocess.Popen[bytes], store: Path, trigger: str, ids_before: int, old_temporary: list[str]
) -> bool:
    """Wait until this run writes files (``trigger``), or ends; whether it wrote any.

    "first_write": a new temporary file exists or the ID file grew (the kill lands among
    the first writes); "first_id": the ID file grew (the kill lands in full flow).
    """
    deadline = time.monotonic() + 30
    while process.poll() is None:
        assert time.monotonic() < deadline, "the crawl wrote nothing in 30 s"
        if len(read_id_lines(store)[0]) > ids_before:
            return True
        if trigger == "first_write" and set(temporary_files(store)) - set(old_temporary):
            return True
        time.sleep(0.002)
    return len(read_id_lines(store)[0]) > ids_before


def kill_at_a_random_moment(
    process: subprocess.Popen[bytes], store: Path, rng: random.Random, ids_before: int, leftovers: list[str]
) -> bool:
    """``kill -9`` the crawl at a moment ``rng`` picks; whether it was still running."""
    trigger = rng.choice(["startup", "first_write", "first_id", "first_id"])
    if trigger == "startup":  # anywhere from loading the ID file to the first downloads
        deadline = time.monotonic() + rng.uniform(0.2, 2.0)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    else:
        wait_for_progress(process, store, trigger, ids_before, leftovers)
        time.sleep(rng.uniform(0, 0.4))
    running = process.poll() is None
    process.send_signal(signal.SIGKILL)  # a no-op when the crawl already ended
    return running


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [11, 22, 33])
def test_kill_9_at_random_moments_then_rerun_completes(
    slow_cdn: FakeCivitai, store: Path, tmp_path: Path, seed: int
):
    rng = random.Random(seed)
    kinds: dict[int, str] = {}
    items = add_mixed_items(slow_cdn, KILL_ITEM_COUNT, kinds)
    killed_mid_crawl = 0

    for round_number in range(KILLS):
        ids_before = len(recorded_ids(store))
        leftovers_before = temporary_files(store)
        log = tmp_path / f"killed-run-{round_number}.log"
        process = start_crawl(slow_cdn, store, log)
        try:
            killed_mid_crawl += kill_at_a_random_moment(process, store, rng, ids_before, leftovers_before)
        finally:
            process.kill()
            # Reaped, so its pid is dead and the next run may remove its leftovers.
            returncode = process.wait(timeout=30)
        assert returncode in (0, -signal.SIGKILL), (
            f"round {round_number}: exit status {returncode}\n{log.read_text()}"
        )

        new_temporary = set(temporary_files(store)) - set(leftovers_before)
        assert all(
            name.startswith(f"{TEMPORARY_PREFIX}{HOST_TAG}-{process.pid}-") for name in new_temporary
        ), new_temporary
        if new_temporary or len(recorded_ids(store)) > ids_before:
            # This run got to writing, so it had removed the temporary files of the previous kill.
            kept = set(leftovers_before) & set(temporary_files(store))
            assert not kept, f"round {round_number}: temporary files of a killed run were kept: {kept}"
            if leftovers_before:
                assert f"Removed {len(leftovers_before)} temporary file(s)" in log.read_text()
        check_store_invariants(store, items, kinds=kinds)

    assert killed_mid_crawl >= KILLS * 3 // 4, (
        f"only {killed_mid_crawl} kills landed while the crawl was running"
    )
    leftovers = temporary_files(store)

    result = run_crawl(slow_cdn, store, PAGE_SIZE)
    assert result.returncode == 0, describe(result)
    assert result.finish_reason == "finished", describe(result)
    stats = result.stats
    assert "Traceback" not in result.stderr
    if leftovers:
        assert f"Removed {len(leftovers)} temporary file(s)" in result.stderr
    assert temporary_files(store) == [], "temporary files remain after a finished run"

    assert sorted(recorded_ids(store)) == sorted(item["id"] for item in items), (
        "each item once in the ID file"
    )
    check_store_invariants(store, items, kinds=kinds, finished=True)
    assert (
        stats.get("civitai/saved", 0) + stats.get("civitai/dropped/already_downloaded", 0) == KILL_ITEM_COUNT
    )
    assert not (store / "error_log.txt").exists(), (store / "error_log.txt").read_text()


VIDEO_BYTES = 32_000_000  # big enough that writing one takes milliseconds
VIDEO_KILLS = 8


@pytest.mark.heavy
def test_kill_9_while_videos_are_written_leaves_no_broken_video(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    body = videos.mp4_boxes(VIDEO_BYTES)
    items = [server.add_image_item(body, type="video") for _ in range(12)]
    killed_mid_write = 0

    for round_number in range(VIDEO_KILLS):
        before = temporary_files(store)
        log = tmp_path / f"video-run-{round_number}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                crawl_command(server, store, "media=video", "limit=4"),
                cwd=REPOSITORY,
                env=crawl_environment(),
                stdout=subprocess.DEVNULL,
                stderr=output,
            )
        try:
            # The moment a new temporary file appears, a video is being written into it.
            deadline = time.monotonic() + 30
            while process.poll() is None and not set(temporary_files(store)) - set(before):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.001)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
        killed_mid_write += bool(set(temporary_files(store)) - set(before))

        recorded = set(recorded_ids(store))
        for item in items:
            path = store / f"{item['id']}.mp4"
            # A video under its final name is the whole video, recorded or not.
            assert not path.exists() or path.read_bytes() == body, f"round {round_number}: {path.name}"
            if item["id"] in recorded:
                assert path.exists() and (store / f"{item['id']}_meta.json").exists()

    # The kills did land inside writes: a temporary file was left behind.
    assert killed_mid_write >= VIDEO_KILLS // 2, killed_mid_write
    result = run_crawl(server, store, "media=video", "limit=4")
    assert result.finish_reason == "finished", describe(result)
    assert sorted(recorded_ids(store)) == [item["id"] for item in items]
    assert temporary_files(store) == []
    assert all((store / f"{item['id']}.mp4").read_bytes() == body for item in items)


# --- a torn ID line, leftovers, a partial image ------------------------------------------


def cdn_paths(server: FakeCivitai) -> set[str]:
    return {request.path for request in server.cdn_requests()}


def path_of(item: dict[str, Any]) -> str:
    return "/" + item["url"].split("/", 3)[3]


@pytest.mark.parametrize(
    "torn",
    [
        pytest.param(b"10", id="prefix-of-another-id"),
        pytest.param(b"1001", id="whole-id-without-newline"),
    ],
)
def test_torn_id_line_is_discarded_and_image_redownloaded(server: FakeCivitai, store: Path, torn: bytes):
    kinds: dict[int, str] = {}
    items = add_items(server, ["jpeg"], kinds)
    result = run_crawl(server, store, PAGE_SIZE)
    assert result.returncode == 0, describe(result)
    assert (store / ID_FILE_NAME).read_bytes() == b"1000\n"

    # A kill in the middle of appending the next id (the line is torn), before the
    # images of 1001 and the others were all saved.
    with open(store / ID_FILE_NAME, "ab") as id_file:
        id_file.write(torn)
    items += add_items(server, ["jpeg", "png", "webp", "webp_alpha"], kinds)
    assert [item["id"] for item in items] == [1000, 1001, 1002, 1003, 1004]
    server.clear_requests()

    result = run_crawl(server, store, PAGE_SIZE)
    assert result.returncode == 0, describe(result)
    assert result.finish_reason == "finished", describe(result)
    assert f"Ignoring the unfinished last line {torn!r}" in result.stderr
    lines, rest = read_id_lines(store)
    assert rest == b"", "the ID file must end with a newline"
    assert lines[0] == b"1000"
    assert sorted(lines) == [b"1000", b"1001", b"1002", b"1003", b"1004"], (
        f"the ID file is not clean: {lines}"
    )
    check_store_invariants(store, items, kinds=kinds, finished=True)
    # 1000 was complete and stays so; the torn id 1001 is downloaded again, like 1002-1004.
    assert cdn_paths(server) == {path_of(item) for item in items[1:]}


def test_leftover_temporary_files_are_removed_at_start(server: FakeCivitai, store: Path):
    kinds: dict[int, str] = {}
    items = add_items(server, ["jpeg"], kinds)
    store.mkdir(parents=True)
    leftover = store / f"{TEMPORARY_PREFIX}{HOST_TAG}-{dead_pid()}-1-1000.jpg"
    leftover.write_bytes(bodies()["jpeg"][:500])
    # A file still being written by a live process (another crawl on the same store) stays.
    live = store / f"{TEMPORARY_PREFIX}{HOST_TAG}-{os.getpid()}-1-2000.jpg"
    live.write_bytes(b"still being written")
    # Another host's file (a store shared over NFS): its pid means nothing here, only its age.
    other_host = "h" + hashlib.sha256(os.fsencode(socket.gethostname() + "-other")).hexdigest()[:8]
    foreign = store / f"{TEMPORARY_PREFIX}{other_host}-{dead_pid()}-1-3000.jpg"
    foreign.write_bytes(b"maybe still being written")
    abandoned = store / f"{TEMPORARY_PREFIX}{other_host}-{os.getpid()}-1-4000.jpg"
    abandoned.write_bytes(b"written over an hour ago")
    os.utime(abandoned, (time.time() - 3700, time.time() - 3700))

    result = run_crawl(server, store, PAGE_SIZE)
    assert result.returncode == 0, describe(result)
    assert not leftover.exists(), "a leftover temporary file was kept"
    assert live.exists(), "the temporary file of a live writer was removed"
    assert foreign.exists(), "another host's fresh temporary file was removed"
    assert not abandoned.exists(), "another host's hour-old temporary file was kept"
    assert re.search(
        r"INFO: Removed 2 temporary file\(s\) left by an interrupted run in \S*store\n", result.stderr
    )
    assert recorded_ids(store) == [1000]
    check_store_invariants(store, items, kinds=kinds, finished=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_partial_image_without_id_is_redownloaded(server: FakeCivitai, store: Path, damage: str):
    kinds: dict[int, str] = {}
    items = add_items(server, ["jpeg", "png"], kinds)
    store.mkdir(parents=True)
    # A partial image under the final name (as a non-atomic writer would leave it), its
    # metadata files even, but the id is not in the ID file.
    partial = store / "1000.jpg"
    partial.write_bytes(
        {"truncated": images.truncated(bodies()["jpeg"]), "garbage": os.urandom(3000), "empty": b""}[damage]
    )
    (store / "1000_pos-prompt.txt").write_text("stale")

    result = run_crawl(server, store, PAGE_SIZE)
    assert result.returncode == 0, describe(result)
    assert result.stats["civitai/saved"] == 2, describe(result)
    assert path_of(items[0]) in cdn_paths(server), "the partial image was not downloaded again"
    assert partial.read_bytes() == bodies()["jpeg"], "the partial image was not replaced"
    assert sorted(recorded_ids(store)) == [1000, 1001]
    check_store_invariants(store, items, kinds=kinds, finished=True)


def test_jobdir_pause_with_one_ctrl_c_then_resume_continues_where_it_stopped(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    items = [server.add_image_item(images.jpeg_rgb()) for _ in range(30)]
    server.api_delay = 0.3  # ten pages of three: several seconds to stop in the middle of
    jobdir = tmp_path / "job"
    api_key = "civitai-key-for-jobdir-5b2e"
    command = crawl_command(server, store, "limit=3", JOBDIR=str(jobdir))
    process = subprocess.Popen(
        command,
        cwd=REPOSITORY,
        env=crawl_environment(api_key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(server.page_requests()) < 4:
        assert time.monotonic() < deadline and process.poll() is None, "the crawl did not get going"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # one Ctrl-C: Scrapy's graceful stop
    stdout, stderr = process.communicate(timeout=60)
    paused = CrawlResult(process.returncode, stdout, stderr, store)
    assert paused.finish_reason == "shutdown", stderr
    assert paused.returncode == 0, stderr[-3000:]  # a pause is no failure
    pages_before = len(server.page_requests())
    assert 0 < len(paused.ids_recorded()) < len(items)

    server.clear_requests()
    server.api_delay = 0
    resumed = run_crawl(server, store, "limit=3", api_key=api_key, JOBDIR=str(jobdir))

    assert resumed.finish_reason == "finished", resumed.stderr
    assert "Resuming a paused job" in resumed.stderr
    first_page = server.page_requests()[0]
    assert "cursor" in first_page.query  # it went on from the saved cursor, not the first page
    assert pages_before + len(server.page_requests()) <= 11  # ten pages, one maybe asked twice
    recorded = resumed.ids_recorded()
    assert sorted(recorded) == sorted(item["id"] for item in items)  # every id, each once
    for path in jobdir.rglob("*"):  # the queue holds page requests: never with the key
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path
