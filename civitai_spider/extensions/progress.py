"""A live progress bar on the terminal, like the original script's tqdm bar.

Shown only when stderr is a terminal; under Scrapyd, CI or a pipe it stays silent and
Scrapy's LogStats reports progress in the log instead. While the bar is shown, Scrapy's
console log lines are printed above it rather than through it.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, TYPE_CHECKING, Any, NoReturn

from scrapy import signals
from scrapy.exceptions import NotConfigured
from tqdm import tqdm

from civitai_spider import outcomes

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


#: tqdm's bar without a total, but always in saved/s: its own format turns a rate under 1/s
#: into seconds per item ("2.67s/ saved").
BAR_FORMAT = "{desc}: {n_fmt}{unit} [{elapsed}, {rate_noinv_fmt}{postfix}]"


class ProgressBar:
    def __init__(self, crawler: Crawler):
        self.stats = crawler.stats
        self._bar: tqdm[NoReturn] | None = None  # a bar without an iterable
        self._console_handlers: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []
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
        self._bar = tqdm(
            desc="Saving images and videos",
            unit=" saved",
            bar_format=BAR_FORMAT,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        # Keep Scrapy's own console handler (its LOG_LEVEL, format and filters) and only
        # route what it writes through tqdm. With LOG_FILE there is none: nothing to do.
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout):
                original = handler.setStream(_AboveTheBar(handler.stream))
                assert original is not None  # None only when the stream is already the new one
                self._console_handlers.append((handler, original))

    def update(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is None:
            return
        values = self.stats.get_stats()
        dropped = sum(count for key, count in values.items() if key.startswith(outcomes.DROPPED_PREFIX))
        # In this order: set_postfix() sorts the fields it gets as keyword arguments.
        fields = {
            "images": values.get(outcomes.saved_key("image"), 0),
            "videos": values.get(outcomes.saved_key("video"), 0),
            "metadata": values.get(outcomes.METADATA_FILES_SAVED, 0),
            "dropped": dropped,
            "failed": values.get(outcomes.FAILED, 0),
        }
        self._bar.set_postfix(fields, refresh=False)
        # tqdm redraws at most every 0.1 s and computes the rate from the saved count (both media).
        self._bar.update(values.get(outcomes.SAVED, 0) - self._bar.n)

    def spider_closed(self) -> None:
        if self._bar is not None:
            self.update()
            self._bar.refresh()
            self._bar.close()
            self._bar = None
        for handler, original in self._console_handlers:
            handler.setStream(original)
        self._console_handlers.clear()


class _AboveTheBar:
    """A text stream that clears the bar, writes, and draws the bar again."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self._stream, end="")

    def flush(self) -> None:
        self._stream.flush()
