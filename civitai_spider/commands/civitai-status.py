"""``scrapy civitai-status``: where the shared crawls in Redis stand, from any machine.

For each crawl under ``CIVITAI_REDIS_PREFIX`` in ``CIVITAI_REDIS_URL`` (its current walk):
its chains (live or done, page count, next cursor), its images (queued, in flight, saved,
failed, dropped), its workers (alive or not, last heartbeat) and the crawl-wide totals.
``--json`` prints the same as JSON. It only reads.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from civitai_spider.commands import check_command_settings
from civitai_spider.errors import safe_url

if TYPE_CHECKING:
    import argparse


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings = {"LOG_LEVEL": "WARNING"}

    def syntax(self) -> str:
        return "[--json]"

    def short_desc(self) -> str:
        return "Show the shared crawls in Redis: chains, images, workers, totals"

    def long_desc(self) -> str:
        return (
            "Show where each shared crawl in Redis stands (-s CIVITAI_REDIS_URL=..., the crawl's "
            "CIVITAI_REDIS_PREFIX): its chains, its images (queued, in flight, saved, failed, "
            "dropped), its workers and the totals. It only reads. See README.md, section Many machines."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if args:
            raise UsageError(f"unexpected argument {args[0]!r}: civitai-status takes none", print_help=False)
        check_command_settings(self.settings)
        # Here, not at the top: Scrapy imports every command to start any of them, and redis with
        # the shared crawl would cost every `scrapy crawl` 0.05 s and more.
        import redis  # noqa: PLC0415

        from civitai_spider.shared_crawl.status import as_json, as_text, crawl_statuses  # noqa: PLC0415
        from civitai_spider.stores.redis_ids import RedisIds  # noqa: PLC0415

        url = str(self.settings.get("CIVITAI_REDIS_URL") or "")
        if not url:
            raise UsageError("CIVITAI_REDIS_URL is not set: a shared crawl lives in Redis", print_help=False)
        try:
            RedisIds.check(self.settings)  # the URL, the prefix, and that Redis answers
        except ValueError as error:
            raise UsageError(str(error), print_help=False) from None
        prefix = self.settings.get("CIVITAI_REDIS_PREFIX")
        try:
            with redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5) as client:
                statuses = crawl_statuses(client, prefix)
        except redis.RedisError as error:
            print(f"error: Redis {safe_url(url)}: {error}", file=sys.stderr)
            self.exitcode = 1
            return
        if opts.json:
            print(as_json(statuses))
        elif statuses:
            print(as_text(statuses))
        else:
            print(f"No shared crawl under {prefix}: in {safe_url(url)}")
