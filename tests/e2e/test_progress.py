"""The progress bar end to end: the real ``scrapy crawl civitai`` with its output on a
pseudo-terminal, as a user at a shell sees it, or on a pipe (:mod:`civitai_spider.extensions.progress`)."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import images
from tests.support.crawls import REPOSITORY, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai

BAR_TITLE = "Saving images and videos"
EXTENSION_PATH = "civitai_spider.extensions.progress.ProgressBar"
COLUMNS = 200  # wide enough for the whole postfix; a narrower bar cuts it off


@dataclass
class TerminalRun:
    returncode: int
    output: str  # stdout and stderr as the terminal received them ("\r\n" line ends)

    def lines(self) -> list[str]:
        """What stays on screen: per line, the text after the last carriage return."""
        return [line.rsplit("\r", 1)[-1] for line in self.output.replace("\r\n", "\n").split("\n")]


def run_on_terminal(
    server: FakeCivitai, store: Path, *arguments: str, timeout: float = 60, **settings: str
) -> TerminalRun:
    """Run ``scrapy crawl civitai`` with stdout and stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    # A fresh pty is 0x0, which tqdm takes as zero columns: give it a real size.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    try:
        process = subprocess.Popen(
            crawl_command(server, store, *arguments, **settings),
            cwd=REPOSITORY,
            env=crawl_environment(),
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
    finally:
        os.close(slave)  # the child holds its own copies: EOF comes when it exits
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(
                    f"the crawl did not end in {timeout} s:\n" + b"".join(chunks).decode(errors="replace")
                )
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as error:  # Linux: EIO once the last writer of the slave side is gone
                if error.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        returncode = process.wait(timeout=30)
    return TerminalRun(returncode, b"".join(chunks).decode("utf-8", errors="replace"))


def final_bar(run: TerminalRun) -> str:
    """The last state of the bar (tqdm redraws it on one line after a carriage return)."""
    states = re.findall(rf"{BAR_TITLE}: [^\r\n]*", run.output)
    assert states, f"no progress bar in the output:\n{run.output[-3000:]}"
    return states[-1]


def test_bar_shown_on_a_terminal(server: FakeCivitai, store: Path):
    for _ in range(10):
        server.add_image_item(images.jpeg_rgb())

    run = run_on_terminal(server, store, "limit=4")

    assert run.returncode == 0, run.output[-3000:]
    assert BAR_TITLE in run.output
    # tqdm without a total and with unit=" saved": "<title>: 10 saved [00:00, 85.2 saved/s, ...]"
    bar = final_bar(run)
    assert re.match(rf"{BAR_TITLE}: 10 saved \[\d\d:\d\d, [\d.?]+ saved/s, ", bar), bar
    assert "images=10," in bar and "videos=0" in bar, bar
    assert "metadata=30" in bar, bar  # pos-prompt, neg-prompt and meta.json for each
    # Log lines still appear, each whole on its own line, above the bar.
    screen = run.lines()
    assert any(
        re.fullmatch(r"\S+ \S+ \[scrapy\.core\.engine\] INFO: Spider closed \(finished\)", line)
        for line in screen
    )
    assert any(line.endswith("INFO: Dumping Scrapy stats:") for line in screen)
    assert EXTENSION_PATH in run.output  # listed among the enabled extensions
    assert "Traceback" not in run.output
    assert len(list(store.glob("*.jpg"))) == 10


def test_bar_postfix_counts_dropped_and_failed(server: FakeCivitai, store: Path):
    for _ in range(3):
        server.add_image_item(images.jpeg_rgb())
    server.add_image_item(images.jpeg_rgb(), stats={"heartCount": 0})  # below the threshold
    server.add_image_item(None)  # the CDN answers 404

    run = run_on_terminal(server, store, "limit=10")

    assert run.returncode == 0, run.output[-3000:]
    bar = final_bar(run)
    assert bar.startswith(f"{BAR_TITLE}: 3 saved ["), bar
    assert "dropped=1" in bar, bar
    assert "failed=1" in bar, bar
    assert "metadata=9" in bar, bar
    # The failure is still reported in the log, on a line of its own.
    assert any(
        re.search(r"WARNING: Dropped: image 1004 failed: HTTP 404 <http", line) for line in run.lines()
    )


def test_bar_silent_without_terminal(server: FakeCivitai, store: Path):
    for _ in range(3):
        server.add_image_item(images.jpeg_rgb())

    result = run_crawl(server, store, "limit=10")

    assert result.returncode == 0, result.stderr[-3000:]
    assert BAR_TITLE not in result.stderr
    assert BAR_TITLE not in result.stdout
    assert not re.search(r"Disabled \S*ProgressBar", result.stderr)
    assert "WARNING" not in result.stderr
    assert EXTENSION_PATH not in result.stderr  # not among the enabled extensions
    assert "INFO: Spider closed (finished)" in result.stderr


def test_log_level_still_applies_while_the_bar_is_shown(server: FakeCivitai, store: Path):
    """LOG_LEVEL=INFO: DEBUG lines (each scraped item, each request) must stay hidden.

    Scrapy filters by level on its console handler (the root logger is at NOTSET);
    the handler that replaces it while the bar is shown must keep that level.
    """
    for _ in range(3):
        server.add_image_item(images.jpeg_rgb())
    server.add_image_item(images.jpeg_rgb(), stats={"heartCount": 0})

    run = run_on_terminal(server, store, "limit=10", LOG_LEVEL="INFO")

    assert run.returncode == 0, run.output[-3000:]
    assert BAR_TITLE in run.output
    assert "INFO: Spider closed (finished)" in run.output
    debug_lines = [line for line in run.lines() if " DEBUG: " in line]
    assert not debug_lines, (
        f"{len(debug_lines)} DEBUG line(s) shown with LOG_LEVEL=INFO, e.g. {debug_lines[0][:200]!r}"
    )


@pytest.mark.parametrize("setting", ["LOG_FILE", "LOG_ENABLED"])
def test_log_not_echoed_on_the_terminal_when_sent_elsewhere(
    server: FakeCivitai, store: Path, tmp_path: Path, setting: str
):
    """With LOG_FILE (or LOG_ENABLED=False) the terminal shows the bar and no log line."""
    for _ in range(3):
        server.add_image_item(images.jpeg_rgb())
    log_file = tmp_path / "crawl.log"
    settings = {"LOG_FILE": str(log_file)} if setting == "LOG_FILE" else {"LOG_ENABLED": "False"}

    run = run_on_terminal(server, store, "limit=10", **settings)

    assert run.returncode == 0, run.output[-3000:]
    assert BAR_TITLE in run.output
    log_lines = [line for line in run.lines() if line.strip() and not line.startswith(BAR_TITLE)]
    assert not log_lines, f"{len(log_lines)} log line(s) on the terminal, e.g. {log_lines[:3]}"
    if setting == "LOG_FILE":
        assert "Spider closed (finished)" in log_file.read_text()
