"""An API page that fails for good is one ERROR line, ours, with the reason and the URL (end to end).

Not Scrapy's "Gave up retrying" nor its "Error downloading" besides: one failure, one ERROR.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import images
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai, Fault

ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[[^\]]+\] ERROR: ", re.MULTILINE)
RETRY_TIMES = 1


@pytest.mark.parametrize(
    ("fault", "reason", "tries"),
    [
        pytest.param(Fault.status(503), "HTTP 503: Server busy, please retry shortly.", 2, id="503"),
        pytest.param(
            Fault.reset(), "DownloadFailedError: ConnectionLost: Connection to the other side", 2, id="reset"
        ),
        pytest.param(Fault.html_200(), "not JSON (Content-Type 'text/html; charset=utf-8'", 2, id="html-200"),
        pytest.param(Fault.status(400), "HTTP 400: Bad Request", 1, id="400"),  # not retried
    ],
)
def test_an_api_page_that_fails_is_one_error_line(
    server: FakeCivitai, store: Path, fault: Fault, reason: str, tries: int
) -> None:
    server.add_image_item(images.jpeg_rgb())
    server.inject_always(server.api_url, fault)

    result = run_crawl(server, store, RETRY_TIMES=str(RETRY_TIMES), CIVITAI_RETRY_BASE_DELAY="0.01")

    assert result.finish_reason == "api_error", result.stderr[-3000:]
    assert len(server.api_requests()) == tries
    lines = [line for line in result.stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, "\n".join(lines)
    [line] = lines
    assert "[civitai_spider.api] ERROR: The API request failed, stopping the crawl: " in line
    assert reason in line and "<twisted" not in line, line
    first_page = server.api_url + "?" + server.api_requests()[0].raw_query
    assert line.endswith(f" ({first_page})"), line
    assert result.stats["log_count/ERROR"] == 1
    if fault == Fault.html_200():
        # One WARNING for each page that is not one, as before.
        warnings = [line for line in result.stderr.splitlines() if "WARNING: The API answered" in line]
        assert len(warnings) == tries
