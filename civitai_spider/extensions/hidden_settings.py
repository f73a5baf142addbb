"""Keep secret settings out of Scrapy's "Overridden settings" log line.

Scrapy logs every one of its own settings that differs from its default when a crawl
starts, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` included when given with
``-s``. Extensions are built just before that line is logged, so this one is in time to
put a filter on it that shows those values as ``'***'``. (``CIVITAI_API_KEY`` and
``CIVITAI_REDIS_URL`` are not Scrapy's settings: that line never has them.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

#: Settings whose values never reach a log.
SECRET_SETTINGS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_CRAWLER_LOGGER = "scrapy.crawler"


class HideSecretSettings:
    def __init__(self, crawler: Crawler):
        self._secrets = [str(value) for name in SECRET_SETTINGS if (value := crawler.settings.get(name))]
        self._logger = logging.getLogger(_CRAWLER_LOGGER)
        self._logger.addFilter(self._hide)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _hide(self, record: logging.LogRecord) -> bool:
        if self._secrets and isinstance(record.args, dict) and "settings" in record.args:
            text = str(record.args["settings"])
            for secret in self._secrets:
                text = text.replace(repr(secret), "'***'")
            record.args = {**record.args, "settings": text}
        return True

    def spider_closed(self) -> None:
        self._logger.removeFilter(self._hide)
