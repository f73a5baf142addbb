"""Log formatter: at most one line per item, never the whole item.

Scrapy's default logs an item's media download ("Crawled (200) <GET image>"), then the
item after it is saved ("Scraped from <page>" and the item, whose API record and prompt run
over several lines), then, when one is dropped, the item again after the reason. Here a
saved item is one DEBUG line, ``Saved image 123 as 123.png``; a dropped one is the reason
alone; a media download has no line of its own (the item's line, or the WARNING of a
failed one, says how it ended). API pages keep Scrapy's "Crawled" line: one per page.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.logformatter import LogFormatter

from civitai_spider.api import API_META_KEY
from civitai_spider.items import CivitaiImage, media_of

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.http import Response
    from scrapy.logformatter import LogFormatterResult
    from twisted.python.failure import Failure


class CivitaiLogFormatter(LogFormatter):
    # Scrapy documents None as "no line" (its engine and scraper skip it), but types the
    # result without it: hence the ignores.
    def crawled(  # type: ignore[override]
        self, request: Request, response: Response, spider: Spider
    ) -> LogFormatterResult | None:
        if not request.meta.get(API_META_KEY):
            return None  # a media download: its item's own line follows
        return super().crawled(request, response, spider)

    def scraped(  # type: ignore[override]
        self, item: Any, response: Response | Failure | None, spider: Spider
    ) -> LogFormatterResult | None:
        if not isinstance(item, CivitaiImage):
            return super().scraped(item, response, spider)
        adapter = ItemAdapter(item)
        return {
            "level": logging.DEBUG,
            "msg": "Saved %(media)s %(id)s as %(file)s",
            "args": {"media": media_of(item), "id": adapter["id"], "file": adapter["image_file"]},
        }

    def dropped(
        self,
        item: Any,
        exception: BaseException,
        response: Response | Failure | None,
        spider: Spider,
    ) -> LogFormatterResult:
        result = super().dropped(item, exception, response, spider)
        return {**result, "msg": "Dropped: %(exception)s", "args": {"exception": exception}}
