"""Run the project's real commands as a user would (``scrapy crawl`` in a subprocess), and read
what they left: the log's stats, the store, the ID file."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapy.utils.test import get_crawler

from civitai_spider import settings as project_settings
from tests.support.fake_civitai import FakeCivitai

_LOG_LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[", re.MULTILINE)
REPOSITORY = Path(__file__).resolve().parent.parent.parent

#: Settings that keep end-to-end crawls fast and deterministic on loopback.
FAST_SETTINGS = {
    "CIVITAI_RETRY_BASE_DELAY": "0.05",
    "LOG_LEVEL": "DEBUG",
    "DOWNLOAD_TIMEOUT": "10",
}


@dataclass
class CrawlResult:
    returncode: int
    stdout: str
    stderr: str
    store: Path

    @property
    def stats(self) -> dict[str, Any]:
        """The final stats dump of the crawl log, as a dict."""
        marker = "Dumping Scrapy stats:\n"
        start = self.stderr.index(marker) + len(marker)
        # The pretty-printed dict runs until the next log line.
        next_line = _LOG_LINE_START.search(self.stderr, start)
        end = next_line.start() if next_line else len(self.stderr)
        return eval(self.stderr[start:end], {"datetime": datetime})  # noqa: S307 - our own log

    @property
    def finish_reason(self) -> str:
        return self.stats["finish_reason"]

    def files(self) -> list[str]:
        return sorted(path.name for path in self.store.iterdir())

    def ids_recorded(self) -> list[int]:
        id_file = self.store / "downloaded_image_ID_DB.txt"
        return [int(line) for line in id_file.read_text().splitlines()] if id_file.exists() else []

    def error_log(self) -> str:
        path = self.store / "error_log.txt"
        return path.read_text() if path.exists() else ""


def crawl_command(server: FakeCivitai, store: Path, *arguments: str, **settings: str) -> list[str]:
    command = [sys.executable, "-m", "scrapy", "crawl", "civitai"]
    for argument in arguments:
        command += ["-a", argument]
    merged = {**FAST_SETTINGS, "CIVITAI_API_URL": server.api_url, "IMAGES_STORE": str(store), **settings}
    for name, value in merged.items():
        command += ["-s", f"{name}={value}"]
    return command


def crawl_environment(api_key: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "CIVITAI_API_KEY"}
    if api_key is not None:
        environment["CIVITAI_API_KEY"] = api_key
    return {**environment, **(extra or {})}


def run_scrapy_command(
    name: str, *arguments: str, environment: dict[str, str] | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    """Run ``scrapy <name> ARGUMENTS -s NAME=VALUE...`` in the project, as a user would.

    ``environment`` adds variables to the command's environment.
    """
    command = [sys.executable, "-m", "scrapy", name, *arguments]
    for setting, value in settings.items():
        command += ["-s", f"{setting}={value}"]
    return subprocess.run(
        command,
        cwd=REPOSITORY,
        env=crawl_environment(extra=environment),
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_crawl(
    server: FakeCivitai,
    store: Path,
    *arguments: str,
    api_key: str | None = None,
    environment: dict[str, str] | None = None,
    timeout: float = 60,
    **settings: str,
) -> CrawlResult:
    """Run ``scrapy crawl civitai -a ... -s ...`` in a subprocess, as a user would.

    ``environment`` adds variables to the crawl's environment.
    """
    process = subprocess.run(
        crawl_command(server, store, *arguments, **settings),
        cwd=REPOSITORY,
        env=crawl_environment(api_key, environment),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CrawlResult(process.returncode, process.stdout, process.stderr, store)


def start_crawl(
    server: FakeCivitai, store: Path, log: Path, *arguments: str, **settings: str
) -> subprocess.Popen[bytes]:
    """Start ``scrapy crawl civitai`` in the background, its output into the file ``log`` (a
    pipe that nobody reads meanwhile would fill and stall the crawl)."""
    with log.open("wb") as output:
        return subprocess.Popen(
            crawl_command(server, store, *arguments, **settings),
            cwd=REPOSITORY,
            env=crawl_environment(),
            stdout=output,
            stderr=output,
        )


def wait_for(
    condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    """Wait until ``condition()`` holds while ``process`` runs; fail with its log if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.02)


def finished_crawl(
    process: subprocess.Popen[bytes], log: Path, store: Path, timeout: float = 60
) -> CrawlResult:
    """Wait for a crawl started by :func:`start_crawl`; its result."""
    process.wait(timeout=timeout)
    return CrawlResult(process.returncode, "", log.read_text(), store)


def project_crawler(spider_class: Any = None, **overrides: Any):
    """A crawler with this project's settings (plus overrides), for unit tests.

    With ``spider_class`` the spider's ``update_settings`` applies too.
    """
    values = {name: getattr(project_settings, name) for name in dir(project_settings) if name.isupper()}
    return get_crawler(spider_class, settings_dict={**values, **overrides})
