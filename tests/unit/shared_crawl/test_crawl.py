"""Tests of :mod:`civitai_spider.shared_crawl.crawl`, the Redis side of a shared crawl, on a real Redis.

Each test drives one or two :class:`SharedCrawl` views (two workers) of one crawl by hand:
join, take, hand on, finish, done; then reads what Redis holds.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import redis

from civitai_spider.shared_crawl.consumer import GROUP
from civitai_spider.shared_crawl.crawl import SharedCrawl, crawl_digest
from tests.support.shared_views import DEFINITION, FIRST_PAGES, crawl, hand_on, run
from tests.support.workers import dead_pid


def stats(url: str, digest: str, run_number: int = 1) -> dict[str, int]:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return {k: int(v) for k, v in client.hgetall(f"test:crawl:{digest}:{run_number}:stats").items()}


def test_the_first_worker_seeds_one_page_per_chain_and_the_next_joins(redis_url: str) -> None:
    async def work(first: SharedCrawl, second: SharedCrawl) -> Any:
        seeded = [await first.join(FIRST_PAGES), await second.join(FIRST_PAGES)]
        pages = await first.take_pages(10)
        return seeded, pages, await second.take_pages(10)

    seeded, pages, left = run(redis_url, work, workers=2)
    assert seeded == [True, False]
    assert [(page.chain, page.step, page.url) for page in pages] == [
        ("a", 0, FIRST_PAGES["a"]),
        ("b", 0, FIRST_PAGES["b"]),
    ]
    assert left == []  # each message goes to one worker


def test_a_hand_on_queues_new_images_once_and_the_chains_next_page(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join(FIRST_PAGES)
        a, b = await view.take_pages(2)
        first = await hand_on(view, a, images=[1, 2, 2], next_url="http://x/?cursor=c1")
        # Chain b lists 1 again: the id is queued once per walk, crawl-wide.
        second = await hand_on(view, b, images=[1, 3, 2**33 + 5], next_url=None)
        return first, second, await view.take_pages(5), await view.take_images(10)

    first, second, pages, images = run(redis_url, work)
    assert (first.accepted, first.queued, first.duplicates, first.end) == (True, 2, 1, "")
    assert (second.accepted, second.queued, second.duplicates, second.end) == (True, 2, 1, "end")
    [page] = pages
    assert (page.chain, page.step, page.url) == ("a", 1, "http://x/?cursor=c1")
    assert [json.loads(image.record)["id"] for image in images] == [1, 2, 3, 2**33 + 5]
    counted = stats(redis_url, crawl_digest(DEFINITION))
    assert counted == {"items_seen": 6, "queued": 4, "dropped/duplicate": 2, "pages": 2}


def test_the_next_page_says_whether_the_page_before_it_was_full(redis_url: str) -> None:
    # An empty page after a full one is asked again (the spider): the worker that takes the
    # next page must know, whichever worker handed the full one on.
    async def work(view: SharedCrawl) -> Any:
        await view.join(FIRST_PAGES)
        a, b = await view.take_pages(2)
        await hand_on(view, a, images=[1], next_url="http://x/?cursor=a1", full=True)
        await hand_on(view, b, images=[2], next_url="http://x/?cursor=b1", full=False)
        return a, b, await view.take_pages(2)

    a, b, following = run(redis_url, work)
    assert (a.after_full, b.after_full) == (False, False)  # a chain's first page follows none
    assert {page.chain: page.after_full for page in following} == {"a": True, "b": False}


def test_a_page_taken_over_is_handed_on_once_so_the_chain_never_forks(redis_url: str) -> None:
    async def work(slow: SharedCrawl, fast: SharedCrawl) -> Any:
        await slow.join(FIRST_PAGES)
        await fast.join(FIRST_PAGES)
        pages = await slow.take_pages(2)
        await asyncio.sleep(0.3)
        fast._last_claim_scan = {"pages": 0.0, "images": 0.0}
        taken_over = await fast.take_pages(2)  # the slow worker held them past claim_after
        results = [
            await hand_on(fast, page, images=[page.step + 10], next_url=f"http://x/?cursor={page.chain}1")
            for page in taken_over
        ]
        late = [await hand_on(slow, page, images=[99], next_url="http://x/?cursor=forked") for page in pages]
        return taken_over, results, late, await fast.take_pages(5)

    taken_over, results, late, pages = run(redis_url, work, workers=2, claim_after=0.2)
    assert [page.deliveries for page in taken_over] == [2, 2]
    assert all(result.accepted for result in results)
    assert [result.accepted for result in late] == [False, False]
    assert sorted(page.url for page in pages) == ["http://x/?cursor=a1", "http://x/?cursor=b1"]
    assert stats(redis_url, crawl_digest(DEFINITION))["queued"] == 1  # image 99 was never queued


def test_a_cursor_given_twice_ends_the_chain(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join({"a": FIRST_PAGES["a"]})
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[], next_url="http://x/?cursor=c1")
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[], next_url="http://x/?cursor=c2")
        [page] = await view.take_pages(1)
        looped = await hand_on(view, page, images=[], next_url="http://x/?cursor=c1")
        return looped, await view.take_pages(1), await view.chain_ends()

    looped, pages, ends = run(redis_url, work)
    assert (looped.accepted, looped.end) == (True, "cursor_loop")
    assert pages == []
    assert ends == {"a": "cursor_loop"}


def test_an_image_is_counted_once_even_if_two_workers_finish_it(redis_url: str) -> None:
    async def work(first: SharedCrawl, second: SharedCrawl) -> Any:
        await first.join({"a": FIRST_PAGES["a"]})
        await second.join({"a": FIRST_PAGES["a"]})
        [page] = await first.take_pages(1)
        await hand_on(first, page, images=[7], next_url=None)
        [image] = await first.take_images(1)
        return [
            await first.finish_image(image.message_id, ["saved", "saved/image"]),
            await second.finish_image(image.message_id, ["dropped/already_downloaded"]),
            await first.queued_images(),
        ]

    assert run(redis_url, work, workers=2) == [True, False, 0]
    counted = stats(redis_url, crawl_digest(DEFINITION))
    assert (counted["saved"], counted.get("dropped/already_downloaded")) == (1, None)


def test_the_walk_is_done_when_every_chain_ended_and_every_image_is_finished(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        done = [await view.join({"a": FIRST_PAGES["a"]}) and await view.is_done()]
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[7], next_url=None)
        done.append(await view.is_done())  # the image is queued
        [image] = await view.take_images(1)
        done.append(await view.is_done())  # and now in flight
        await view.finish_image(image.message_id, ["saved"])
        done.append(await view.is_done())
        return done

    assert run(redis_url, work) == [False, False, False, True]
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert not client.keys("test:crawl:*:queued:*")  # the dedup bitmaps go with the walk
        assert client.hget(f"test:crawl:{crawl_digest(DEFINITION)}:1:state", "status") == "done"


def test_after_a_walk_is_done_the_same_crawl_starts_a_new_walk(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join({"a": FIRST_PAGES["a"]})
        [page] = await view.take_pages(1)
        await hand_on(view, page, images=[7], next_url=None)
        [image] = await view.take_images(1)
        await view.finish_image(image.message_id, ["saved"])
        assert await view.is_done()
        again = await view.join({"a": FIRST_PAGES["a"]})
        return again, view.run, await view.take_pages(1)

    seeded, run_number, pages = run(redis_url, work)
    assert (seeded, run_number) == (True, 2)
    assert [(page.step, page.url) for page in pages] == [(0, FIRST_PAGES["a"])]


def test_what_a_dead_worker_of_this_host_held_is_taken_at_once(redis_url: str) -> None:
    dead = f"{socket.gethostname()}:{dead_pid()}:abc123"
    elsewhere = "another-host:1:abc123"  # pid 1 means nothing there

    async def work(restarted: SharedCrawl) -> Any:
        holders = [crawl(redis_url, name) for name in (dead, elsewhere)]
        try:
            await holders[0].join(FIRST_PAGES)
            await holders[1].join(FIRST_PAGES)
            await holders[0].take_pages(1)
            await holders[1].take_pages(1)
        finally:
            for holder in holders:
                await holder.close()
        await restarted.join(FIRST_PAGES)
        released = await restarted.release_dead_local_workers()
        return released, await restarted.take_pages(5)

    released, pages = run(redis_url, work)  # claim_after is 300 s
    assert released == 1
    assert [(page.chain, page.deliveries) for page in pages] == [("a", 2)]  # not the other host's


def test_what_a_leaving_worker_still_holds_is_taken_at_once_by_a_live_one(redis_url: str) -> None:
    async def work(leaving: SharedCrawl, live: SharedCrawl) -> Any:
        await leaving.join(FIRST_PAGES)
        await live.join(FIRST_PAGES)
        held = await leaving.take_pages(1)  # a stop left it unstarted
        await leaving.leave()
        return held, await live.take_pages(5)

    held, taken = run(redis_url, work, workers=2)  # claim_after is 300 s
    assert [page.chain for page in held] == ["a"]
    # The chain's page comes back at once, counted as a second delivery; with the other chain's.
    assert sorted((page.chain, page.deliveries) for page in taken) == [("a", 2), ("b", 1)]


def test_a_worker_that_holds_nothing_leaves_the_group(redis_url: str) -> None:
    async def work(view: SharedCrawl) -> Any:
        await view.join(FIRST_PAGES)
        [page] = await view.take_pages(1)
        await view.hand_on(
            page, next_url=None, cursor_key=None, end="end", streak=0, full=False, counts={}, images=[]
        )
        await view.leave()
        return [
            consumer["name"]
            for stream in ("pages", "images")
            for consumer in await view.client.xinfo_consumers(view.key(stream), GROUP)
        ]

    assert run(redis_url, work) == []


def test_the_crawl_is_named_by_its_definition() -> None:
    assert crawl_digest({"a": 1, "b": [2]}) == crawl_digest({"b": [2], "a": 1})
    assert crawl_digest({"a": 1}) != crawl_digest({"a": 2})
