"""Tests of :mod:`civitai_spider.shared_crawl.connection`, a worker's commands retried while Redis is away."""

from __future__ import annotations

import time

import pytest

from civitai_spider.shared_crawl.connection import SharedCrawlError
from tests.support.servers import free_ports
from tests.support.shared_views import FIRST_PAGES, run


def test_redis_out_of_reach_for_longer_than_the_timeout_raises(caplog: pytest.LogCaptureFixture) -> None:
    [port] = free_ports(1)
    started = time.monotonic()
    with pytest.raises(SharedCrawlError, match=r"did not answer for 1 s"), caplog.at_level("WARNING"):
        run(f"redis://127.0.0.1:{port}/0", lambda view: view.join(FIRST_PAGES), timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    assert "does not answer" in caplog.text and "retrying for up to 1 s" in caplog.text
