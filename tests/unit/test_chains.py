"""Tests of :mod:`civitai_spider.chains`: where a chain stands, and how a crawl of chains ends."""

from __future__ import annotations

from civitai_spider.chains import Chain, crawl_end, cursor_of


def test_crawl_end() -> None:
    assert crawl_end(["end", "caught_up"]) is None
    assert crawl_end(["caught_up", "caught_up"]) == "caught_up"
    assert crawl_end(["end", "cursor_loop", "caught_up"]) == "cursor_loop"
    assert crawl_end(["max_pages"]) is None


def test_cursor_of() -> None:
    assert cursor_of("http://x/api/v1/images?limit=2&cursor=2%7C17") == "2|17"
    assert cursor_of("http://x/api/v1/images?limit=2") is None
    assert cursor_of(None) is None


def test_a_chain_follows_a_cursor_once_and_ends_as_a_loop_the_second_time() -> None:
    chain = Chain("all", "http://x/api/v1/images")
    chain.pages = 1
    assert chain.follow("http://x/api/v1/images?cursor=a", "a")
    assert chain.next_url == "http://x/api/v1/images?cursor=a" and chain.cursors_seen == {"a": 2}
    chain.pages = 2
    assert chain.follow("http://x/api/v1/images?cursor=b", "b")
    assert not chain.follow("http://x/api/v1/images?cursor=a", "a")
    assert chain.end == "cursor_loop" and not chain.live
