"""``scrapy crawl`` that checks spider arguments and settings before it starts, and fails
when the crawl could not do its work.

Stock ``scrapy crawl`` builds the spider and the components inside the running event
loop, where a bad value surfaces as an asyncio traceback. Checking here first turns it
into one ``error:`` line and exit status 2, like any other command-line mistake.

Stock ``scrapy crawl`` also exits with 0 however the crawl ended; here the finish reasons of
:data:`civitai_spider.outcomes.EXIT_STATUSES` give their status (1 for ``api_error``,
``cursor_loop``, ``redis_error``, ``region_blocked``; 2 for ``api_key_refused`` and
``model_not_found``), for scripts and schedulers to see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object

from civitai_spider.outcomes import EXIT_STATUSES

if TYPE_CHECKING:
    import argparse

    from scrapy import Spider
    from scrapy.crawler import Crawler

#: Component settings whose classes may define ``check_settings(settings)``.
_COMPONENT_SETTINGS = ("ITEM_PIPELINES", "DOWNLOADER_MIDDLEWARES", "EXTENSIONS")


class Command(ScrapyCrawlCommand):
    finish_reason: str | None = None

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) == 1 and self.crawler_process is not None:
            try:
                self._check(args[0], opts.spargs)
            except ValueError as error:
                raise UsageError(str(error), print_help=False) from None
        super().run(args, opts)
        if self.exitcode == 0 and self.finish_reason in EXIT_STATUSES:
            self.exitcode = EXIT_STATUSES[self.finish_reason]

    def _create_crawler(self, spidercls: type[Spider] | str) -> Crawler:
        # Where Scrapy's crawl command builds its one crawler and connects its own handlers.
        crawler = super()._create_crawler(spidercls)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)
        return crawler

    def _spider_closed(self, reason: str) -> None:
        self.finish_reason = reason

    def _check(self, spider_name: str, spider_arguments: dict[str, str]) -> None:
        assert self.crawler_process is not None
        try:
            spider_class = self.crawler_process.spider_loader.load(spider_name)
        except KeyError:
            return  # Scrapy itself reports an unknown spider.
        check_arguments = getattr(spider_class, "check_arguments", None)
        if check_arguments is not None:
            check_arguments(spider_arguments)
        settings = self.settings
        spider_check_settings = getattr(spider_class, "check_settings", None)
        if spider_check_settings is not None:
            spider_check_settings(settings)
        for setting in _COMPONENT_SETTINGS:
            for path in build_component_list(settings.getwithbase(setting)):
                check_settings = getattr(load_object(path), "check_settings", None)
                if check_settings is not None:
                    check_settings(settings)
