"""A Scrapy extension for benchmark runs: the worst reactor stall, and the stats as JSON.

Enabled by the benchmark with ``-s EXTENSIONS`` in every run it measures (ours and the
references alike). A heartbeat is due every ``_BEAT`` seconds; how late it fires is how long
the reactor thread was kept from its other work (Pillow or file I/O run inline, a long
callback, or simply no free core).
"""

from __future__ import annotations

import gc
import json
import time
from typing import TYPE_CHECKING

from scrapy import signals
from twisted.internet import task

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

_BEAT = 0.01


class Probe:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.path = crawler.settings.get("BENCHMARK_PROBE_FILE")
        self.worst_stall = 0.0
        self.worst_gc = 0.0
        self._gc_started = 0.0
        self._last = 0.0
        self._heartbeat = task.LoopingCall(self._beat)
        crawler.signals.connect(self._opened, signal=signals.spider_opened)
        crawler.signals.connect(self._closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _opened(self) -> None:
        self._last = time.monotonic()
        self._heartbeat.start(_BEAT, now=False)
        gc.callbacks.append(self._timed_gc)

    def _timed_gc(self, phase: str, info: dict[str, int]) -> None:
        # A full collection walks every live object: a classic cause of a long stall.
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.worst_gc = max(self.worst_gc, time.perf_counter() - self._gc_started)

    def _beat(self) -> None:
        now = time.monotonic()
        self.worst_stall = max(self.worst_stall, now - self._last - _BEAT)
        self._last = now

    def _closed(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        gc.callbacks.remove(self._timed_gc)
        stats = {name: _plain(value) for name, value in self.crawler.stats.get_stats().items()}
        with open(self.path, "w") as file:
            json.dump(
                {"stats": stats, "worst_stall_seconds": self.worst_stall, "worst_gc_seconds": self.worst_gc},
                file,
            )


def _plain(value: object) -> object:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
