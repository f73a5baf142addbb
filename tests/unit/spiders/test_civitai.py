"""Unit tests of the ``civitai`` spider without the network: arguments and page parsing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import scrapy
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider
from scrapy.http import TextResponse
from scrapy.settings import Settings

from civitai_spider import job
from civitai_spider import settings as project_settings
from civitai_spider.api import API_META_KEY, API_PAGE_META_KEY
from civitai_spider.chains import Chain
from civitai_spider.extensions.stop import STOPPED_REASON
from civitai_spider.items import CivitaiImage
from civitai_spider.middlewares.api_key import ApiKeyMiddleware
from civitai_spider.outcomes import DropImage
from civitai_spider.query import parse_arguments
from civitai_spider.setting_rules import check_settings
from civitai_spider.spiders.civitai import CivitaiSpider
from civitai_spider.stores import stores_of
from tests.support.crawls import project_crawler

API_URL = "http://127.0.0.1:9/api/v1/images"
#: What the spider asks without arguments (pinned in tests/unit/test_query.py).
DEFAULT_QUERY = parse_arguments({}).query


# --- arguments ---------------------------------------------------------------------------


def test_spider_keeps_stop_after_seen() -> None:
    assert CivitaiSpider(sort="Newest", stop_after_seen="7").crawl_query.stop_after_seen == 7
    assert CivitaiSpider(sort="Newest").crawl_query.stop_after_seen is None
    with pytest.raises(ValueError, match="requires sort='Newest'"):
        CivitaiSpider.check_arguments({"stop_after_seen": "7"})


def test_check_arguments_rejects_unknown_names_but_not_scrapyd_ones() -> None:
    CivitaiSpider.check_arguments({"_job": "abc", "limit": "10"})
    with pytest.raises(ValueError, match="unknown spider argument 'sortby'"):
        CivitaiSpider.check_arguments({"sortby": "Newest"})
    with pytest.raises(ValueError, match="unknown spider argument 'usename'"):
        CivitaiSpider(usename="alice")
    with pytest.raises(ValueError, match="limit"):
        CivitaiSpider.check_arguments({"_job": "x", "limit": "1000"})


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="period"):
        CivitaiSpider(period="Century")


# --- parse_page ------------------------------------------------------------------------


def record(image_id: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": image_id,
        "url": f"https://image.civitai.com/k/{image_id}/original=true/{image_id}.jpeg",
        "type": "image",
        "stats": {"heartCount": 5},
        "meta": {"prompt": "p"},
        **changes,
    }


def first_request(spider: CivitaiSpider) -> scrapy.Request:
    """Run the spider's ``start()`` up to its first request (this sets ``api_url`` and the error log)."""

    async def run() -> scrapy.Request:
        generator = spider.start()
        try:
            return await anext(generator)
        finally:
            await generator.aclose()

    return asyncio.run(run())


class _Scheduler:
    """What ``start()`` asks of the scheduler with JOBDIR: the requests a last run left queued."""

    def __init__(self, pending: bool) -> None:
        self.queued = [scrapy.Request(API_URL + "?cursor=saved")] if pending else []

    def has_pending_requests(self) -> bool:
        return bool(self.queued)

    def next_request(self) -> scrapy.Request | None:
        return self.queued.pop(0) if self.queued else None


class _Engine:
    def __init__(self, pending: bool) -> None:
        self.scheduler = _Scheduler(pending)
        self.closed_for: list[str] = []

    async def close_spider_async(self, *, reason: str) -> None:
        self.closed_for.append(reason)


def new_spider(tmp_path: Path, *, pending: bool = False, **arguments: str) -> CivitaiSpider:
    crawler = project_crawler(CIVITAI_API_URL=API_URL, IMAGES_STORE=str(tmp_path))
    spider = CivitaiSpider.from_crawler(crawler, **arguments)
    crawler.spider = spider
    crawler.engine = _Engine(pending)  # type: ignore[assignment]
    return spider


def started_spider(tmp_path: Path, **arguments: str) -> CivitaiSpider:
    spider = new_spider(tmp_path, **arguments)
    first_request(spider)
    return spider


def all_start_requests(spider: CivitaiSpider) -> list[scrapy.Request]:
    async def run() -> list[scrapy.Request]:
        return [request async for request in spider.start()]

    return asyncio.run(run())


def parsed(spider: CivitaiSpider, response: TextResponse) -> list[Any]:
    """What ``parse_page`` yields for ``response``."""

    async def run() -> list[Any]:
        return [result async for result in spider.parse_page(response)]

    return asyncio.run(run())


def closed_for(spider: CivitaiSpider) -> list[str]:
    return spider.crawler.engine.closed_for  # type: ignore[union-attr]


def test_a_resumed_job_continues_where_its_chain_stopped_not_the_first_page(tmp_path: Path) -> None:
    spider = new_spider(tmp_path, pending=True)
    paused = Chain("all", API_URL + "?cursor=c3", pages=2, cursors_seen={"c1": 2, "c2": 3})
    spider.state = {"civitai_chains": {"all": paused}, "civitai_last_end": "shutdown"}  # a pause

    [request] = all_start_requests(spider)

    assert request.url == API_URL + "?cursor=c3"
    # The queued request says no more than the chain does: it is not sent as well.
    assert not spider.crawler.engine.scheduler.has_pending_requests()
    # The saved chain is the spider's: a cursor seen before the pause is still a loop.
    assert [type(result) for result in parsed(spider, page([record(7)], {"nextCursor": "c2"}))] == [
        CivitaiImage
    ]
    assert paused.end == "cursor_loop"
    assert closed_for(spider) == ["cursor_loop"]


def test_chains_are_kept_in_the_job_state_for_a_pause(tmp_path: Path) -> None:
    spider = new_spider(tmp_path)
    spider.state = {}
    assert len(all_start_requests(spider)) == 1  # a new job starts at the first page
    parsed(spider, page([record(7)], {"nextCursor": "c1"}))

    [chain] = spider.state["civitai_chains"].values()
    assert (chain.pages, chain.cursors_seen, query_of(chain.next_url)["cursor"]) == (1, {"c1": 2}, ["c1"])


@pytest.mark.parametrize("reason", ["shutdown", "finished", "closespider_itemcount", "api_error"])
def test_the_end_of_a_run_is_kept_in_the_job_state(tmp_path: Path, reason: str) -> None:
    spider = new_spider(tmp_path)
    spider.state = {}
    all_start_requests(spider)
    spider.closed(reason)

    assert spider.state["civitai_last_end"] == reason


@pytest.mark.parametrize(
    ("last_end", "pending", "chain_end"),
    [
        pytest.param("finished", False, None, id="finished"),
        pytest.param("closespider_itemcount", True, None, id="ended-with-a-page-request-queued"),
        pytest.param("shutdown", False, "end", id="paused-with-no-chain-left"),
        pytest.param(None, True, None, id="no-end-recorded"),
    ],
)
def test_a_job_that_was_not_paused_walks_again_from_the_first_page(
    tmp_path: Path, last_end: str | None, pending: bool, chain_end: str | None
) -> None:
    spider = new_spider(tmp_path, pending=pending)
    old = Chain("all", API_URL + "?cursor=c3", pages=2, cursors_seen={"c1": 2, "c2": 3}, end=chain_end)
    spider.state = {"civitai_chains": {"all": old}}
    if last_end is not None:
        spider.state["civitai_last_end"] = last_end

    [request] = all_start_requests(spider)

    assert "cursor" not in query_of(request.url)
    assert not spider.crawler.engine.scheduler.has_pending_requests()  # a stale request is dropped
    [chain] = spider.state["civitai_chains"].values()
    assert (chain.pages, chain.cursors_seen) == (0, {})
    parsed(spider, page([record(7)], {"nextCursor": "c1"}))  # no loop: a new walk
    assert (chain.pages, chain.cursors_seen, chain.end) == (1, {"c1": 2}, None)


def _outcome(spider: CivitaiSpider, item: CivitaiImage, drop: str | None = None) -> None:
    if drop is None:
        spider.crawler.signals.send_catch_log(signals.item_scraped, item=item, response=None, spider=spider)
    else:
        exception = DropImage(drop, "test")
        spider.crawler.signals.send_catch_log(
            signals.item_dropped, item=item, response=None, exception=exception, spider=spider
        )


def test_a_pause_rewinds_the_chain_to_its_oldest_page_with_an_item_not_done(tmp_path: Path) -> None:
    spider = new_spider(tmp_path)
    spider.state = {}
    [first] = all_start_requests(spider)
    one, two = [
        item
        for item in parsed(spider, page([record(1), record(2)], {"nextCursor": "c1"}))
        if isinstance(item, CivitaiImage)
    ]
    [three] = [
        item
        for item in parsed(spider, page([record(3)], {"nextCursor": "c2"}))
        if isinstance(item, CivitaiImage)
    ]
    assert [(item.chain, item.page) for item in (one, two, three)] == [("all", 1), ("all", 1), ("all", 2)]
    _outcome(spider, one)
    _outcome(spider, two, STOPPED_REASON)  # listed, never started: the pause must list it again
    _outcome(spider, three, "already_downloaded")

    spider.closed("shutdown")

    [chain] = spider.state["civitai_chains"].values()
    assert (chain.next_url, chain.pages, chain.cursors_seen, chain.live) == (first.url, 0, {}, True)


def test_a_pause_with_every_listed_item_done_resumes_at_the_next_page(tmp_path: Path) -> None:
    spider = new_spider(tmp_path)
    spider.state = {}
    all_start_requests(spider)
    items = [
        item
        for item in parsed(spider, page([record(1)], {"nextCursor": "c1"}))
        if isinstance(item, CivitaiImage)
    ]
    items += [
        item
        for item in parsed(spider, page([record(2)], {"nextCursor": "c2"}))
        if isinstance(item, CivitaiImage)
    ]
    _outcome(spider, items[0], "failed")  # done: a failure is retried by the next walk, not the pause
    _outcome(spider, items[1])

    spider.closed("shutdown")

    [chain] = spider.state["civitai_chains"].values()
    assert (query_of(chain.next_url)["cursor"], chain.pages, chain.cursors_seen) == (
        ["c2"],
        2,
        {"c1": 2, "c2": 3},
    )


def test_a_stop_that_is_not_a_pause_does_not_rewind(tmp_path: Path) -> None:
    spider = new_spider(tmp_path)
    spider.state = {}
    all_start_requests(spider)
    [item] = [
        item
        for item in parsed(spider, page([record(1)], {"nextCursor": "c1"}))
        if isinstance(item, CivitaiImage)
    ]
    _outcome(spider, item, STOPPED_REASON)

    spider.closed("closespider_itemcount")

    [chain] = spider.state["civitai_chains"].values()
    assert chain.pages == 1


def test_a_pause_of_other_chains_is_not_resumed(tmp_path: Path) -> None:
    spider = new_spider(tmp_path, nsfw="Soft", split="browsing_level")
    paused = Chain("all", API_URL + "?cursor=c3", pages=2)
    spider.state = {"civitai_chains": {"all": paused}, "civitai_last_end": "shutdown"}

    requests = all_start_requests(spider)

    assert [query_of(request.url)["browsingLevel"] for request in requests] == [["1"], ["2"]]
    assert sorted(spider.state["civitai_chains"]) == ["browsingLevel=1", "browsingLevel=2"]


def page(
    items: list[Any], metadata: Any = None, url: str = API_URL + "?limit=200", chain: str = "all"
) -> TextResponse:
    payload: dict[str, Any] = {"items": items}
    if metadata is not None:
        payload["metadata"] = metadata
    request = scrapy.Request(url, meta={API_PAGE_META_KEY: True, "civitai_chain": chain})
    return TextResponse(url, body=json.dumps(payload).encode(), encoding="utf-8", request=request)


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def test_start_requests_the_first_page(tmp_path: Path) -> None:
    spider = started_spider(tmp_path, sort="Newest", nsfw="Soft")
    request = first_request(spider)
    parts = urlsplit(request.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == API_URL
    assert query_of(request.url) == {
        **{k: [v] for k, v in DEFAULT_QUERY.items()},
        "sort": ["Newest"],
        "nsfw": ["Soft"],
    }
    assert request.meta[API_PAGE_META_KEY] is True and request.meta[API_META_KEY] is True
    assert request.dont_filter is True
    assert request.callback == spider.parse_page
    assert request.errback == spider.api_failed


@pytest.mark.parametrize(
    "cursor",
    ['bdx:{"offset": 2, "k": "a b"}', "2|1733858354000", "a+b&c=%20#x;y/?z", "seed:Most Reactions:123"],
)
def test_next_page_request_comes_first_with_the_cursor_encoded(tmp_path: Path, cursor: str) -> None:
    spider = started_spider(tmp_path, limit="2", username="bolero537")
    results = parsed(spider, page([record(1), record(2)], {"nextCursor": cursor}))
    assert len(results) == 3
    first = results[0]
    assert isinstance(first, scrapy.Request)
    assert all(isinstance(result, CivitaiImage) for result in results[1:])
    parts = urlsplit(first.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == API_URL
    expected = {**DEFAULT_QUERY, "limit": "2", "username": "bolero537", "cursor": cursor}
    assert query_of(first.url) == {name: [value] for name, value in expected.items()}
    assert first.meta[API_PAGE_META_KEY] is True and first.meta[API_META_KEY] is True
    assert first.dont_filter is True
    assert first.callback == spider.parse_page


def test_numeric_cursor_is_used_as_text(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    first = parsed(spider, page([], {"nextCursor": 400}))[0]
    assert query_of(first.url)["cursor"] == ["400"]


@pytest.mark.parametrize("cursor", [True, 1.5, {"offset": 2}, ["a"]], ids=repr)
def test_a_cursor_that_is_neither_text_nor_an_integer_is_no_cursor(tmp_path: Path, cursor: Any) -> None:
    spider = started_spider(tmp_path)
    assert [type(result) for result in parsed(spider, page([record(1)], {"nextCursor": cursor}))] == [
        CivitaiImage
    ]


@pytest.mark.parametrize(
    ("arguments", "model"),
    [
        ({"model_id": "7"}, 7),
        ({"model_id": "7", "model_version_id": "70"}, None),  # the search index already
        ({"model_id": "7", "image_id": "700"}, None),  # one image: nothing to lose
        ({}, None),
    ],
)
def test_only_a_model_alone_has_its_versions_listed(arguments: dict[str, str], model: int | None) -> None:
    assert parse_arguments(arguments).model_id == model
    spider = CivitaiSpider(**arguments)
    assert spider.model_id == model
    assert spider.chain_queries == ({} if model else {"all": spider.query})


def test_items_are_yielded_in_order(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    results = parsed(spider, page([record(3), record(1), record(2)], {}))
    assert [item.id for item in results] == [3, 1, 2]
    assert all(isinstance(item, CivitaiImage) for item in results)


@pytest.mark.parametrize("metadata", [{}, None, [], {"nextCursor": None}, {"nextCursor": ""}], ids=repr)
def test_no_next_request_at_the_end(tmp_path: Path, metadata: Any) -> None:
    spider = started_spider(tmp_path)
    results = parsed(spider, page([record(1)], metadata))
    assert [type(result) for result in results] == [CivitaiImage]


def test_next_page_on_the_api_host_is_followed(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    next_page = API_URL + "?limit=200&cursor=2%7C17"
    results = parsed(spider, page([record(1)], {"nextPage": next_page}))
    assert isinstance(results[0], scrapy.Request)
    assert results[0].url == next_page


@pytest.mark.parametrize(
    "next_page",
    [
        "https://civitai.com/api/v1/images?limit=200&cursor=2",
        "http://127.0.0.1:10/api/v1/images?cursor=2",
        "http://evil.example/api/v1/images?cursor=2",
    ],
)
def test_next_page_on_another_origin_is_not_followed(tmp_path: Path, next_page: str) -> None:
    spider = started_spider(tmp_path)
    results = parsed(spider, page([record(1)], {"nextPage": next_page}))
    assert not any(isinstance(result, scrapy.Request) for result in results)
    assert len(results) == 1


def test_repeated_cursor_ends_the_chain_and_closes_the_spider(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    assert isinstance(parsed(spider, page([record(1)], {"nextCursor": "2|1"}))[0], scrapy.Request)
    assert isinstance(parsed(spider, page([record(2)], {"nextCursor": "4|1"}))[0], scrapy.Request)
    assert closed_for(spider) == []
    # The page's items still go on; no next page is asked for.
    assert [type(result) for result in parsed(spider, page([record(3)], {"nextCursor": "2|1"}))] == [
        CivitaiImage
    ]
    assert closed_for(spider) == ["cursor_loop"]


def test_repeated_next_page_closes_the_spider(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    next_page = API_URL + "?cursor=x"
    parsed(spider, page([record(1)], {"nextPage": next_page}))
    assert not any(
        isinstance(result, scrapy.Request)
        for result in parsed(spider, page([record(2)], {"nextPage": next_page}))
    )
    assert closed_for(spider) == ["cursor_loop"]


def test_max_pages_stops(tmp_path: Path) -> None:
    spider = started_spider(tmp_path, max_pages="2")
    first = parsed(spider, page([record(1)], {"nextCursor": "a"}))
    second = parsed(spider, page([record(2)], {"nextCursor": "b"}))
    assert isinstance(first[0], scrapy.Request)
    assert [type(result) for result in second] == [CivitaiImage]


def test_max_pages_one_stops_after_the_first_page(tmp_path: Path) -> None:
    spider = started_spider(tmp_path, max_pages="1")
    results = parsed(spider, page([record(1)], {"nextCursor": "a"}))
    assert [type(result) for result in results] == [CivitaiImage]


@pytest.mark.parametrize(
    ("media", "kept", "dropped"),
    [
        ("image", [1, 5], {"video": 1, "audio": 1, "unknown_type": 1}),
        ("video", [2], {"image": 2, "audio": 1, "unknown_type": 1}),
        ("all", [1, 2, 5], {"audio": 1, "unknown_type": 1}),
    ],
)
def test_only_the_media_asked_for_is_yielded(
    media: str, kept: list[int], dropped: dict[str, int], tmp_path: Path
) -> None:
    spider = started_spider(tmp_path, media=media)
    records = [record(1), record(2, type="video"), record(3, type="audio"), record(4, type="gif")]
    records.append(record(5, type=None))  # a type that is not a string: an image, as before
    results = parsed(spider, page(records, {}))
    assert [item.id for item in results] == kept
    stats = spider.crawler.stats
    counted = {
        key.removeprefix("civitai/dropped/"): value
        for key, value in stats.get_stats().items()
        if key.startswith("civitai/dropped/")
    }
    assert counted == dropped
    assert stats.get_value("civitai/items_seen") == 5


def test_invalid_record_is_counted_and_logged(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    records = [record(1), record(-4), {"id": 5, "url": "ftp://x"}, "junk", record(2)]
    results = parsed(spider, page(records, {}))
    assert [item.id for item in results] == [1, 2]
    stats = spider.crawler.stats
    assert stats.get_value("civitai/dropped/invalid_id") == 1
    assert stats.get_value("civitai/dropped/invalid_url") == 1
    assert stats.get_value("civitai/dropped/invalid_item") == 1
    assert stats.get_value("civitai/items_seen") == 5
    lines = (tmp_path / "error_log.txt").read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].split("\t")[1] == "-4"
    assert "id is not a positive integer" in lines[0]
    assert lines[1].split("\t")[1:3] == ["5", "'ftp://x'"]


def test_items_seen_counts_every_record_across_pages(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    parsed(spider, page([record(1), record(2)], {"nextCursor": "a"}))
    parsed(spider, page([record(3), record(4, type="video"), record(0)], {}))
    assert spider.crawler.stats.get_value("civitai/items_seen") == 5


def test_empty_page_yields_nothing(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    assert parsed(spider, page([], {})) == []


def test_page_that_is_not_a_page_stops_the_crawl(tmp_path: Path) -> None:
    spider = started_spider(tmp_path)
    request = scrapy.Request(API_URL, meta={API_PAGE_META_KEY: True, "civitai_chain": "all"})
    html = TextResponse(API_URL, body=b"<html>busy</html>", encoding="utf-8", request=request)
    with pytest.raises(CloseSpider) as caught:
        parsed(spider, html)
    assert caught.value.reason == "api_error"


# --- stop_after_seen, per chain ---------------------------------------------------------


def streak_spider(
    tmp_path: Path, known_ids: range, stop_after_seen: int | None, **arguments: str
) -> CivitaiSpider:
    (tmp_path / "downloaded_image_ID_DB.txt").write_text("".join(f"{i}\n" for i in known_ids))
    if stop_after_seen is not None:
        arguments["stop_after_seen"] = str(stop_after_seen)
    spider = new_spider(tmp_path, sort="Newest", **arguments)
    asyncio.run(stores_of(spider.crawler).open())
    first_request(spider)
    return spider


def follows(results: list[Any]) -> bool:
    return any(isinstance(result, scrapy.Request) for result in results)


def test_stop_after_seen_counts_ids_from_the_id_store_across_pages(tmp_path: Path) -> None:
    spider = streak_spider(tmp_path, range(1, 100), stop_after_seen=3)
    assert follows(parsed(spider, page([record(1), record(2)], {"nextCursor": "a"})))
    results = parsed(spider, page([record(3), record(500)], {"nextCursor": "b"}))
    assert not follows(results)
    assert [item.id for item in results] == [3, 500]  # the page's items still go on
    assert spider.chains["all"].end == "caught_up"
    assert closed_for(spider) == ["caught_up"]


def test_a_new_id_resets_the_streak(tmp_path: Path) -> None:
    spider = streak_spider(tmp_path, range(1, 100), stop_after_seen=3)
    records = [record(i) for i in (1, 2, 500, 3, 4, 501, 5)]
    assert follows(parsed(spider, page(records, {"nextCursor": "a"})))
    assert spider.chains["all"].seen_streak == 1
    assert not follows(parsed(spider, page([record(6), record(7)], {"nextCursor": "b"})))


def test_images_below_the_thresholds_neither_count_nor_reset(tmp_path: Path) -> None:
    spider = streak_spider(tmp_path, range(1, 100), stop_after_seen=3)
    low = record(600, stats={"heartCount": 0})
    assert not follows(parsed(spider, page([record(1), low, record(2), record(3)], {"nextCursor": "a"})))


def test_without_stop_after_seen_the_crawl_goes_on(tmp_path: Path) -> None:
    spider = streak_spider(tmp_path, range(1, 100), stop_after_seen=None)
    assert follows(parsed(spider, page([record(i) for i in range(1, 50)], {"nextCursor": "a"})))
    assert closed_for(spider) == []


def test_each_chain_has_its_own_streak_and_the_crawl_stops_when_all_caught_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spider = streak_spider(tmp_path, range(1, 100), stop_after_seen=2, nsfw="Soft", split="browsing_level")
    one, two = "browsingLevel=1", "browsingLevel=2"
    assert follows(parsed(spider, page([record(1)], {"nextCursor": "a"}, chain=one)))
    assert follows(parsed(spider, page([record(2)], {"nextCursor": "a"}, chain=two)))
    with caplog.at_level("INFO"):
        assert not follows(parsed(spider, page([record(3)], {"nextCursor": "b"}, chain=one)))
    assert "Caught up in chain browsingLevel=1" in caplog.text and "stop_after_seen=2" in caplog.text
    assert closed_for(spider) == []  # the other chain goes on
    assert not follows(parsed(spider, page([record(4)], {"nextCursor": "b"}, chain=two)))
    assert closed_for(spider) == ["caught_up"]


# --- chains and CIVITAI_API_CONCURRENCY -------------------------------------------------


def test_chains_take_turns_within_the_api_concurrency(tmp_path: Path) -> None:
    spider = new_spider(tmp_path, nsfw="X", split="browsing_level")  # CIVITAI_API_CONCURRENCY=2
    started = all_start_requests(spider)
    assert [query_of(request.url)["browsingLevel"] for request in started] == [["1"], ["2"]]

    # Level 1's page comes back: its next page waits behind levels 4, 8 and 16.
    [sent] = parsed(spider, page([], {"nextCursor": "a"}, chain="browsingLevel=1"))
    assert query_of(sent.url)["browsingLevel"] == ["4"]
    [sent] = parsed(spider, page([], {}, chain="browsingLevel=2"))  # level 2 ends
    assert query_of(sent.url)["browsingLevel"] == ["8"]
    [sent] = parsed(spider, page([], {}, chain="browsingLevel=4"))
    assert query_of(sent.url)["browsingLevel"] == ["16"]
    [sent] = parsed(spider, page([], {}, chain="browsingLevel=8"))
    assert query_of(sent.url) == {**query_of(started[0].url), "cursor": ["a"]}
    assert spider._pages_in_flight == 2


def test_the_api_download_slot_takes_the_api_concurrency() -> None:
    crawler = project_crawler(CivitaiSpider, CIVITAI_API_CONCURRENCY="3")
    assert crawler.settings.getdict("DOWNLOAD_SLOTS")["civitai-api"] == {"concurrency": 3}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CIVITAI_API_CONCURRENCY", "0"),
        ("CIVITAI_REDIS_CLAIM_AFTER", "-1"),
        ("CIVITAI_REDIS_TIMEOUT", "soon"),
    ],
)
def test_check_settings_names_a_bad_value(name: str, value: str) -> None:
    settings = project_crawler(**{name: value}).settings
    with pytest.raises(ValueError, match=f"{name}='{value}' is not valid"):
        check_settings(settings)


def test_check_arguments_checks_split() -> None:
    with pytest.raises(ValueError, match="split='model'"):
        CivitaiSpider.check_arguments({"split": "model"})
    with pytest.raises(ValueError, match="split=base_models needs base_models"):
        CivitaiSpider.check_arguments({"split": "base_models"})
    CivitaiSpider.check_arguments({"split": "base_models", "base_models": "Pony"})


# --- url: the page's host is the API every component reads -------------------------------


def _unbuilt_crawler(**overrides: Any) -> Crawler:
    """A crawler whose settings are not frozen yet: the spider may still set them, as in a crawl."""
    values = {name: getattr(project_settings, name) for name in dir(project_settings) if name.isupper()}
    return Crawler(CivitaiSpider, Settings({**values, **overrides}, priority="project"))


def test_the_url_host_is_the_api_of_every_reader() -> None:
    red = "https://civitai.red/api/v1/images"
    crawler = _unbuilt_crawler(CIVITAI_API_KEY="k3y")
    spider = CivitaiSpider.from_crawler(crawler, url="https://civitai.red/user/alice/videos")

    assert crawler.settings.get("CIVITAI_API_URL") == red
    # The JOBDIR walk, before the crawl (the command's settings) and during it, is the same.
    assert job.walk(crawler.settings, spider.crawl_query)["api_url"] == red
    assert job.walk(_unbuilt_crawler().settings, spider.crawl_query)["api_url"] == red
    # The key goes to civitai.red, not to the project's default civitai.com.
    key_middleware = ApiKeyMiddleware.from_crawler(crawler)
    for url, sent in (("https://civitai.red/api/v1/me", True), ("https://civitai.com/api/v1/me", False)):
        request = scrapy.Request(url, meta={API_META_KEY: True})
        key_middleware.process_request(request)
        assert ("Authorization" in request.headers) is sent


def test_an_explicit_api_url_wins_over_the_url_host() -> None:
    crawler = _unbuilt_crawler()
    crawler.settings.set("CIVITAI_API_URL", API_URL, priority="cmdline")
    CivitaiSpider.from_crawler(crawler, url="https://civitai.red/user/alice")
    assert crawler.settings.get("CIVITAI_API_URL") == API_URL
