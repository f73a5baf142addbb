"""``scrapy crawl`` that checks spider arguments and settings before it starts, and fails
when the crawl could not do its work.

Stock ``scrapy crawl`` builds the spider and the components inside the running event
loop, where a bad value surfaces as an asyncio traceback. Checking here first (every setting
against :mod:`civitai_spider.setting_rules`, the spider arguments, then whether the stores can
work) turns it into one ``error:`` line and exit status 2, like any other command-line mistake.

Stock ``scrapy crawl`` also exits with 0 however the crawl ended; here each finish reason
gives its status (:func:`civitai_spider.outcomes.exit_status`: 0 for an end that did what was
asked, 1 for a crawl that could not do its work, 2 for what the API refused), and a crawl
stopped before it could close (Ctrl-C twice) exits with 130, for scripts and schedulers to see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from civitai_spider.commands import check_command_settings
from civitai_spider.outcomes import FORCED_STOP_STATUS, exit_status
from civitai_spider.stores import file_store_class, id_store_class

if TYPE_CHECKING:
    import argparse

    from scrapy import Spider
    from scrapy.crawler import Crawler


class Command(ScrapyCrawlCommand):
    finish_reason: str | None = None
    _opened = False

    def long_desc(self) -> str:
        # Stock -h lists -a but none of the arguments a spider takes.
        from civitai_spider.query import ARGUMENTS  # noqa: PLC0415 - only for -h

        return (
            "Run a spider of the current project, by name: here civitai, which saves Civitai's "
            "images and videos with their generation metadata. Its arguments (-a NAME=VALUE) are "
            f"{', '.join(ARGUMENTS)}; README.md describes each in its section Spider "
            "arguments, and the settings (-s NAME=VALUE) in its section Settings. For example, "
            "scrapy crawl civitai -a sort=Newest -a max_pages=3. A bad argument or setting stops "
            "the command before any request, with exit status 2."
        )

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        # Here, once -s and -L are in: Scrapy then configures logging and builds the crawler
        # process from the settings (LOG_LEVEL=info would be a traceback there).
        assert self.settings is not None  # set by Scrapy before it processes the options
        check_command_settings(self.settings)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) == 1 and self.crawler_process is not None:
            try:
                self._check(args[0], opts.spargs)
            except ValueError as error:
                raise UsageError(str(error), print_help=False) from None
        super().run(args, opts)
        if self.exitcode != 0 or not self._opened:
            return  # Scrapy's own failure, or no crawl
        if self.finish_reason is None:
            # Opened and never closed: a second Ctrl-C (or SIGTERM) stopped the reactor.
            self.exitcode = FORCED_STOP_STATUS
        else:
            self.exitcode = exit_status(self.finish_reason)

    def _create_crawler(self, spidercls: type[Spider] | str) -> Crawler:
        # Where Scrapy's crawl command builds its one crawler and connects its own handlers.
        crawler = super()._create_crawler(spidercls)
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)
        return crawler

    def _spider_opened(self) -> None:
        self._opened = True

    def _spider_closed(self, reason: str) -> None:
        self.finish_reason = reason

    def _check(self, spider_name: str, spider_arguments: dict[str, str]) -> None:
        assert self.crawler_process is not None
        settings = self.settings
        assert settings is not None
        try:
            spider_class = self.crawler_process.spider_loader.load(spider_name)
        except KeyError:
            return  # Scrapy itself reports an unknown spider.
        check_arguments = getattr(spider_class, "check_arguments", None)
        if check_arguments is not None:
            check_arguments(spider_arguments)
        check_job = getattr(spider_class, "check_job", None)
        if check_job is not None:
            check_job(spider_arguments, settings)
        # Last, after the cheap checks: Redis is asked whether it answers, a bucket whether it
        # is there.
        id_store_class(settings).check(settings)
        file_store_class(settings).check(settings)
