"""A live progress bar on the terminal, like the original script's tqdm bar.

Shown only when stderr is a terminal; under Scrapyd, CI or a pipe it stays silent and
Scrapy's LogStats reports progress in the log instead. While the bar is shown, log
lines are printed above it rather than through it.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from civitai_spider import outcomes

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self


class ProgressBar:
    def __init__(self, crawler: Crawler):
        self.stats = crawler.stats
        self._bar: tqdm | None = None
        self._exit_stack = ExitStack()
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(self.update, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not sys.stderr.isatty():
            raise NotConfigured  # no bar under Scrapyd, CI or a pipe; LogStats logs progress
        return cls(crawler)

    def spider_opened(self) -> None:
        self._bar = tqdm(desc="Saving images and metadata", unit=" images", file=sys.stderr, dynamic_ncols=True)
        self._exit_stack.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger()]))

    def update(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is None:
            return
        values = self.stats.get_stats()
        dropped = sum(count for key, count in values.items() if key.startswith(outcomes.DROPPED_PREFIX))
        self._bar.set_postfix(
            metadata=values.get(outcomes.METADATA_FILES_SAVED, 0),
            dropped=dropped,
            failed=values.get(outcomes.FAILED, 0),
            refresh=False,
        )
        # tqdm redraws at most every 0.1 s and computes the rate from the saved count.
        self._bar.update(values.get(outcomes.SAVED, 0) - self._bar.n)

    def spider_closed(self) -> None:
        if self._bar is not None:
            self.update()
            self._bar.refresh()
            self._bar.close()
            self._bar = None
        self._exit_stack.close()
