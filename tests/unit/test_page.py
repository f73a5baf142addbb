"""Tests of :mod:`civitai_spider.page`, reading one API page, as a shared crawl reads it (``new``).

The spider's own walk reads pages through it too: tests/unit/spiders/test_civitai.py drives
that through ``parse_page``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import scrapy
from scrapy.http import TextResponse

from civitai_spider.page import Page, PageReader
from civitai_spider.query import parse_arguments
from civitai_spider.stores import stores_of
from tests.support.crawls import project_crawler

API_URL = "http://127.0.0.1:9/api/v1/images"


def record(image_id: int, hearts: int = 5) -> dict[str, Any]:
    return {
        "id": image_id,
        "url": f"https://image.civitai.com/k/{image_id}/original=true/{image_id}.jpeg",
        "type": "image",
        "stats": {"heartCount": hearts},
        "meta": {"prompt": "p"},
    }


def answer(records: list[Any], metadata: dict[str, Any]) -> TextResponse:
    body = json.dumps({"items": records, "metadata": metadata}).encode()
    return TextResponse(API_URL, body=body, encoding="utf-8", request=scrapy.Request(API_URL))


def read(tmp_path: Path, response: TextResponse, streak: int = 0, **arguments: str) -> Page:
    """``response`` read with ``new`` by a crawl whose id file holds 1..9 and whose threshold is 2 hearts."""
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("".join(f"{i}\n" for i in range(1, 10)))
    crawler = project_crawler(
        CIVITAI_API_URL=API_URL, IMAGES_STORE=str(tmp_path), CIVITAI_THRESHOLDS={"heartCount": 2}
    )
    crawl_query = parse_arguments({"limit": "4", **arguments})
    reader = PageReader(crawler, crawl_query, crawl_query.chain_queries())

    async def run() -> Page:
        await stores_of(crawler).open()
        return await reader.read(response, "all", 0, False, streak, new=True)

    return asyncio.run(run())


def test_new_items_are_those_that_pass_and_are_not_recorded(tmp_path: Path) -> None:
    records = [record(1), record(50), record(51, hearts=0), record(2)]
    page = read(tmp_path, answer(records, {"nextCursor": "c|2"}))

    assert [item.id for item in page.items] == [1, 50, 51, 2]
    assert [item.id for item in page.new] == [50]
    assert page.recorded == {1: True, 50: False, 2: True}  # 51 failed the item filter: not asked
    assert page.counts == {"items_seen": 4, "dropped/below_threshold": 1}
    assert page.full and page.streak == 1
    assert (page.end, page.cursor) == (None, "c|2")
    assert (
        page.next_url == f"{API_URL}?{urlencode({**parse_arguments({'limit': '4'}).query, 'cursor': 'c|2'})}"
    )


def test_a_streak_reaching_stop_after_seen_ends_the_chain_caught_up(tmp_path: Path) -> None:
    page = read(
        tmp_path,
        answer([record(3), record(4)], {"nextCursor": "x"}),
        streak=1,
        sort="Newest",
        stop_after_seen="3",
    )
    assert (page.streak, page.end, page.next_url) == (3, "caught_up", None)


@pytest.mark.parametrize("metadata", [{}, {"nextCursor": None}, {"nextCursor": ""}])
def test_a_page_without_a_cursor_ends_its_chain(tmp_path: Path, metadata: dict[str, Any]) -> None:
    page = read(tmp_path, answer([record(60)], metadata))
    assert (page.end, page.next_url, page.full) == ("end", None, False)


def test_max_pages_ends_the_chain_before_its_cursor(tmp_path: Path) -> None:
    page = read(tmp_path, answer([record(60)], {"nextCursor": "x"}), max_pages="1")
    assert (page.end, page.next_url) == ("max_pages", None)


def test_an_id_store_that_does_not_answer_is_an_error_for_a_shared_crawl(tmp_path: Path) -> None:
    crawler = project_crawler(CIVITAI_API_URL=API_URL, IMAGES_STORE=str(tmp_path))
    crawl_query = parse_arguments({"sort": "Newest", "stop_after_seen": "1"})
    reader = PageReader(crawler, crawl_query, crawl_query.chain_queries())

    async def refuse(ids: Any) -> list[bool]:
        raise ConnectionError("Redis is gone")

    async def run() -> None:
        await stores_of(crawler).open()
        stores_of(crawler).ids.contains = refuse  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await reader.read(answer([record(60)], {}), "all", 0, False, 0, new=True)
        # The spider's own walk goes on, its streak broken: the pipelines fail those items.
        page = await reader.read(answer([record(60)], {"nextCursor": "x"}), "all", 0, False, 4)
        assert [item.id for item in page.items] == [60]
        assert (page.streak, page.end, page.cursor) == (0, None, "x")

    asyncio.run(run())
