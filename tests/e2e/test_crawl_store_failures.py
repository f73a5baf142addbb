"""End to end through ``scrapy crawl``: a store that cannot be written, at the start or mid-crawl.

At the start, the command refuses it in one ``error:`` line (exit status 2) before any request.
Mid-crawl, each item it fails is one WARNING line, and ``CIVITAI_MAX_STORE_FAILURES`` in a row
end the crawl as ``store_error`` (exit status 1); never a traceback, and the ``error_log.txt``
lines that could not be written are in the log.

A read-only folder is made with the mode bits; root ignores them unless it runs without
``CAP_DAC_OVERRIDE``, so as root the crawl runs under ``setpriv`` without it. Mid-crawl, the
store folder is swapped for a regular file, which stops every write, root's too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.support import images
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai, RecordedRequest
from tests.support.servers import SeaweedS3Server


def one_error_line(result: CrawlResult) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    return error[error.index("error:") :]  # after the program's name


# --- at the start ------------------------------------------------------------------------------


def test_a_store_that_is_a_regular_file_is_refused_before_any_request(
    server: FakeCivitai, store: Path
) -> None:
    server.add_image_item(images.jpeg_rgb())
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("not a folder")

    error = one_error_line(run_crawl(server, store))

    assert (
        error
        == f"error: IMAGES_STORE={str(store)!r} cannot be used: [Errno 20] Not a directory: {str(store)!r}"
    )
    assert server.requests == []
    assert store.read_text() == "not a folder"


def test_a_store_under_proc_is_refused_before_any_request(server: FakeCivitai) -> None:
    server.add_image_item(images.jpeg_rgb())

    error = one_error_line(run_crawl(server, Path("/proc/civitai-test")))

    # No such file or directory for root, Permission denied for others: /proc takes no folder.
    assert error.startswith("error: IMAGES_STORE='/proc/civitai-test' cannot be used: [Errno ")
    assert error.endswith(": '/proc/civitai-test'")
    assert server.requests == []


def test_a_read_only_store_folder_is_refused_before_any_request(server: FakeCivitai, store: Path) -> None:
    server.add_image_item(images.jpeg_rgb())
    store.mkdir()
    store.chmod(0o555)
    try:
        result = run_without_dac_override(server, store)
    finally:
        store.chmod(0o755)

    error = one_error_line(result)

    assert (
        error
        == f"error: IMAGES_STORE={str(store)!r} cannot be used: [Errno 13] Permission denied: {str(store)!r}"
    )
    assert server.requests == []
    assert list(store.iterdir()) == []


def test_an_id_file_in_a_folder_that_cannot_be_made_is_refused_before_any_request(
    server: FakeCivitai, store: Path
) -> None:
    server.add_image_item(images.jpeg_rgb())

    error = one_error_line(run_crawl(server, store, CIVITAI_ID_FILE="/proc/civitai-test/ids.txt"))

    assert error.startswith("error: CIVITAI_ID_FILE='/proc/civitai-test/ids.txt' cannot be used: [Errno ")
    assert server.requests == []
    assert list(store.iterdir()) == []  # the store's own check left nothing in it


def test_a_bucket_whose_log_folder_cannot_be_written_is_refused_before_any_request(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    server.add_image_item(images.jpeg_rgb())
    settings = {**s3_server.settings(bucket, "civitai"), "CIVITAI_LOG_DIR": "/proc/civitai-test/logs"}

    result = run_crawl(server, tmp_path, environment={"AWS_EC2_METADATA_DISABLED": "true"}, **settings)

    error = one_error_line(result)
    assert error.startswith("error: CIVITAI_LOG_DIR='/proc/civitai-test/logs' cannot be used: [Errno ")
    assert server.requests == []


def run_without_dac_override(server: FakeCivitai, store: Path) -> CrawlResult:
    """``run_crawl``, as root without the capability that lets it write where the mode bits say no."""
    command = crawl_command(server, store)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "as root, this test needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
        command = [setpriv, "--bounding-set=-dac_override", "--", *command]
    process = subprocess.run(
        command, cwd=REPOSITORY, env=crawl_environment(), capture_output=True, text=True, timeout=60
    )
    return CrawlResult(process.returncode, process.stdout, process.stderr, store)


# --- mid-crawl ---------------------------------------------------------------------------------

MAX_STORE_FAILURES = 3
IMAGES_IN_FLIGHT = 2
PAGE = 10


def test_a_store_that_fails_mid_crawl_ends_it_as_store_error_without_a_traceback(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    items = [server.add_image_item(images.jpeg_rgb()) for _ in range(4 * PAGE)]
    id_file = store / "downloaded_image_ID_DB.txt"

    def break_the_store_at_the_second_page(request: RecordedRequest) -> None:
        if "cursor" not in request.query or store.is_file():
            return
        # Once the first page is saved (well within DOWNLOAD_TIMEOUT), the folder becomes a file:
        # every write into it fails from then on, root's too.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(lines_of(id_file)) < PAGE:
            time.sleep(0.02)
        store.rename(tmp_path / "store-was-here")
        store.write_text("the store is gone")

    server.on_api_request = break_the_store_at_the_second_page
    result = run_crawl(
        server,
        store,
        f"limit={PAGE}",
        CIVITAI_MAX_STORE_FAILURES=str(MAX_STORE_FAILURES),
        CIVITAI_IMAGES_IN_FLIGHT=str(IMAGES_IN_FLIGHT),
        # Its manifest part would fail too, one more error_log.txt line than the items' (the
        # live manifest's own failures: tests/e2e/dataset/test_live_manifest.py).
        CIVITAI_MANIFEST="false",
    )

    assert result.returncode == 1, result.stderr[-3000:]
    assert result.finish_reason == "store_error"
    assert "Traceback" not in result.stderr
    stats = result.stats
    assert stats["civitai/saved"] == PAGE
    saved = {int(line) for line in lines_of(tmp_path / "store-was-here" / "downloaded_image_ID_DB.txt")}
    assert saved == {item["id"] for item in items[:PAGE]}
    # Each failed item is one WARNING; the crawl stops at the limit, and only the items already
    # holding an in-flight place finish (and fail) after it.
    failures = [line for line in result.stderr.splitlines() if " failed: could not write " in line]
    assert all(" WARNING: " in line for line in failures)
    assert (
        MAX_STORE_FAILURES
        <= len(failures)
        == stats["civitai/failed"]
        <= MAX_STORE_FAILURES + IMAGES_IN_FLIGHT
    )
    [error] = [line for line in result.stderr.splitlines() if " ERROR: " in line]
    assert f"{MAX_STORE_FAILURES} items in a row failed because {store} did" in error
    assert "NotADirectoryError: Not a directory" in error
    # error_log.txt is in the broken folder: its lines are in the log, said once.
    [first, *others] = [line for line in result.stderr.splitlines() if "error_log.txt" in line]
    assert f"Could not write {store / 'error_log.txt'} (NotADirectoryError: Not a directory)" in first
    assert all(" WARNING: error_log.txt: " in line for line in others)
    logged = [first, *others]
    assert len(logged) == len(failures)
    failed_ids = {int(line.split(" failed: ")[0].rsplit(" ", 1)[1]) for line in failures}
    assert failed_ids <= {item["id"] for item in items[PAGE:]}
    assert all(any(f"\t{image_id}\t" in line for line in logged) for image_id in failed_ids)


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
