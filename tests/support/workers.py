"""Workers of one shared crawl (``scrapy crawl -s CIVITAI_SHARED_CRAWL=true`` processes on one
Redis), for the tests that run them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support import images
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment
from tests.support.fake_civitai import FakeCivitai

LEVELS = (1, 2, 4, 8, 16)
LIMIT = 50
SHARED_ARGUMENTS = ("nsfw=X", "split=browsing_level", f"limit={LIMIT}")
TEMPORARY_PREFIX = ".civitai-partial-"
BODY = images.jpeg_rgb((64, 48))


def add_items(server: FakeCivitai, count: int) -> list[dict[str, Any]]:
    """``count`` JPEG items spread over the five browsing levels."""
    return [server.add_image_item(BODY, browsingLevel=LEVELS[index % len(LEVELS)]) for index in range(count)]


class Workers:
    """Worker processes of one shared crawl, each logging to its own file."""

    def __init__(self, server: FakeCivitai, store: Path, redis_url: str, logs: Path, **settings: str) -> None:
        self.server, self.store, self.redis_url, self.logs = server, store, redis_url, logs
        self.settings = {
            "LOG_LEVEL": "INFO",
            "CIVITAI_SHARED_CRAWL": "true",
            "CIVITAI_REDIS_URL": redis_url,
            **settings,
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            log = self.logs / f"worker-{len(self.processes)}.log"
            command = crawl_command(self.server, self.store, *SHARED_ARGUMENTS, **self.settings)
            with log.open("wb") as output:
                process = subprocess.Popen(
                    command, cwd=REPOSITORY, env=crawl_environment(), stdout=subprocess.DEVNULL, stderr=output
                )
            self.processes.append(process)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [process for process in self.processes if process.poll() is None]

    def wait(self, timeout: float = 180) -> list[CrawlResult]:
        deadline = time.monotonic() + timeout
        try:
            for process in self.processes:
                process.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            self.kill()
        return self.results()

    def results(self) -> list[CrawlResult]:
        return [
            CrawlResult(process.returncode, "", (self.logs / f"worker-{index}.log").read_text(), self.store)
            for index, process in enumerate(self.processes)
        ]

    def kill(self) -> None:
        for process in self.live():
            process.kill()
            process.wait()

    def log_text(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.logs.glob("worker-*.log")))


def wait_for_files(store: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists() and sum(1 for _ in store.glob("*.jpg")) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} images saved after {timeout} s")


def dead_pid() -> int:
    """A process id that is not running (so its temporary files are leftovers)."""
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1
