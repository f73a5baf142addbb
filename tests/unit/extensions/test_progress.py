"""Tests of :class:`ProgressBar` with a fake terminal (end to end: ``tests/e2e/test_progress.py``)."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from scrapy.exceptions import NotConfigured
from tqdm import tqdm

from civitai_spider import outcomes
from civitai_spider.extensions.progress import ProgressBar
from tests.support.crawls import project_crawler

BAR_TITLE = "Saving images and videos"
EXTENSION_PATH = "civitai_spider.extensions.progress.ProgressBar"
COLUMNS = 200  # wide enough for the whole postfix; a narrower bar cuts it off


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_configured_without_terminal_and_without_a_message(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with pytest.raises(NotConfigured) as raised:
        ProgressBar.from_crawler(project_crawler())
    # A NotConfigured with a message is logged as a WARNING "Disabled ...": none here.
    assert raised.value.args == ()


def test_postfix_shows_images_videos_metadata_dropped_and_failed(monkeypatch: pytest.MonkeyPatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    crawler = project_crawler()
    crawler.stats.open_spider()
    bar = ProgressBar.from_crawler(crawler)
    bar.spider_opened()
    try:
        stats: Any = crawler.stats
        stats.inc_value(outcomes.SAVED, 4)
        stats.inc_value(outcomes.saved_key("image"), 3)
        stats.inc_value(outcomes.saved_key("video"), 1)
        stats.inc_value(outcomes.METADATA_FILES_SAVED, 11)
        stats.inc_value(outcomes.dropped_key("below_threshold"), 2)
        stats.inc_value(outcomes.dropped_key("already_downloaded"), 3)
        stats.inc_value(outcomes.FAILED, 1)
        bar.update()
    finally:
        bar.spider_closed()
    last = terminal.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith(f"{BAR_TITLE}: 4 saved ["), last
    # What is saved first, then what is not, in that order (not tqdm's alphabetical one).
    assert last.rstrip().endswith(", images=3, videos=1, metadata=11, dropped=5, failed=1]"), last
    # Closing twice (spider_closed after an error) is harmless.
    bar.spider_closed()


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(0.375, " 0.38 saved/s"), (2.5, " 2.50 saved/s"), (85.2, "85.20 saved/s")],
)
def test_the_rate_is_saved_per_second_however_slow(
    monkeypatch: pytest.MonkeyPatch, rate: float, shown: str
) -> None:
    """tqdm's own format shows a rate under 1/s as seconds per item: "2.67s/ saved"."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    crawler = project_crawler()
    crawler.stats.open_spider()
    bar = ProgressBar.from_crawler(crawler)
    bar.spider_opened()
    try:
        crawler.stats.inc_value(outcomes.SAVED, 3)
        crawler.stats.inc_value(outcomes.saved_key("image"), 3)
        bar.update()
        assert bar._bar is not None
        # The bar as tqdm draws it, 8 s into the crawl at this rate.
        text = tqdm.format_meter(**{**bar._bar.format_dict, "elapsed": 8, "rate": rate})
    finally:
        bar.spider_closed()
    fields = "images=3, videos=0, metadata=0, dropped=0, failed=0"
    assert text == f"{BAR_TITLE}: 3 saved [00:08, {shown}, {fields}]"
