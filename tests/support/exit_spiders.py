"""Spiders that end the way the civitai spider cannot be made to, for the exit-status tests:
``start()`` raising (``start_error``) and a callback raising (``closespider_errorcount``).

Run with the real ``scrapy crawl`` and the project's settings plus
``-s SPIDER_MODULES=tests.support.exit_spiders``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import scrapy


class StartsBadly(scrapy.Spider):
    name = "starts_badly"

    async def start(self) -> AsyncIterator[Any]:
        raise RuntimeError("a bug in start()")
        yield  # an async generator, as Scrapy expects


class CallbackFails(scrapy.Spider):
    name = "callback_fails"

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.settings.get("CIVITAI_API_URL"), dont_filter=True)

    def parse(self, response: scrapy.http.Response) -> None:
        raise ValueError("a bug in a callback")
