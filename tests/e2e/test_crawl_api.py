"""End to end: how ``scrapy crawl civitai`` talks to the API (arguments, pages, retries, errors)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from civitai_spider.query import parse_arguments
from tests.support import images
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai, Fault


def add_items(server: FakeCivitai, count: int, **fields: object) -> list[dict]:
    return [server.add_image_item(images.jpeg_rgb(), **fields) for _ in range(count)]


@pytest.mark.parametrize("cursor_style", ["offset", "json", "hostile"])
def test_follows_cursors_through_every_page(cursor_style: str, store: Path) -> None:
    with FakeCivitai(cursor_style=cursor_style) as server:
        items = add_items(server, 7)
        result = run_crawl(server, store, "limit=3")
        pages = server.api_requests()

    assert result.returncode == 0, result.stderr
    assert result.finish_reason == "finished"
    assert len(pages) == 3
    assert "cursor" not in pages[0].query
    assert all("cursor" in page.query for page in pages[1:])
    assert sorted(result.ids_recorded()) == [item["id"] for item in items]


def test_arguments_map_to_the_query_on_every_page(server: FakeCivitai, store: Path) -> None:
    # Created within the week: the server keeps no older one for period=Week.
    this_week = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 3600))
    add_items(
        server,
        5,
        username="bob_1",
        postId=77,
        modelVersionIds=[788385],
        baseModel="Pony",
        createdAt=this_week,
    )
    add_items(server, 2, username="someone_else", createdAt=this_week)

    result = run_crawl(
        server, store,
        "limit=2", "sort=Newest", "period=Week", "nsfw=X", "username=bob_1", "model_id=12",
        "model_version_id=788385", "post_id=77", "base_models=Pony, SDXL 1.0",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    pages = server.api_requests()
    assert len(pages) == 3
    expected = {
        "limit": "2", "withMeta": "true", "flatMeta": "true", "sort": "Newest", "period": "Week",
        "nsfw": "X", "type": "image", "username": "bob_1", "modelId": "12", "modelVersionId": "788385",
        "postId": "77", "baseModels": "Pony,SDXL 1.0",
    }  # fmt: skip
    for page in pages:
        assert {name: page.query[name] for name in expected} == expected
    assert result.stats["civitai/saved"] == 5


def test_more_filters_map_to_the_query_on_every_page(server: FakeCivitai, store: Path) -> None:
    tagged = [{"id": 5133, "name": "landscape"}, {"id": 4, "name": "anime"}]
    wanted = add_items(server, 3, userId=41, browsingLevel=4, tags=tagged)
    add_items(server, 1, userId=41, browsingLevel=8, tags=tagged)  # another level
    add_items(server, 1, userId=7, browsingLevel=4, tags=tagged)  # another user
    add_items(server, 1, userId=41, browsingLevel=4, tags=[{"id": 9, "name": "cat"}])  # other tags

    result = run_crawl(
        server, store, "limit=2", "user_id=41", "tags=5133, 4", "browsing_level=5", "nsfw=X", "media=all"
    )

    assert result.returncode == 0, result.stderr
    pages = server.api_requests()
    assert len(pages) == 2
    expected = {"userId": "41", "tags": "5133,4", "browsingLevel": "5"}
    for page in pages:
        assert {name: page.query[name] for name in expected} == expected
        # browsing_level overrides nsfw: only one of them is sent; media=all sends no type.
        assert "nsfw" not in page.query and "type" not in page.query
    assert sorted(result.ids_recorded()) == [item["id"] for item in wanted]
    assert any("browsing_level=5 overrides nsfw=X" in line for line in result.stderr.splitlines())


def test_image_id_asks_for_one_image(server: FakeCivitai, store: Path) -> None:
    items = add_items(server, 3)

    result = run_crawl(server, store, f"image_id={items[1]['id']}")

    assert result.returncode == 0, result.stderr
    [page] = server.api_requests()
    assert page.query["imageId"] == str(items[1]["id"])
    assert result.ids_recorded() == [items[1]["id"]]
    # The older query path that imageId takes nests meta unless flatMeta=true: the prompt is there.
    prompt = (store / f"{items[1]['id']}_pos-prompt.txt").read_text()
    assert prompt == items[1]["meta"]["prompt"]


@pytest.mark.parametrize("with_tags", [True, False])
def test_with_tags_puts_the_tags_in_meta_json(with_tags: bool, server: FakeCivitai, store: Path) -> None:
    tags = [{"id": 5133, "name": "landscape"}]
    item = server.add_image_item(images.jpeg_rgb(), tags=tags)

    result = run_crawl(server, store, CIVITAI_WITH_TAGS=str(with_tags))

    assert result.returncode == 0, result.stderr
    [page] = server.api_requests()
    assert page.query.get("withTags") == ("true" if with_tags else None)
    record = json.loads((store / f"{item['id']}_meta.json").read_text())
    assert record.get("tags") == (tags if with_tags else None)


def test_defaults_ask_for_meta_and_the_largest_pages(server: FakeCivitai, store: Path) -> None:
    add_items(server, 1)

    run_crawl(server, store)

    [page] = server.api_requests()
    # The defaults themselves are pinned in tests/unit/test_query.py; here, that they are sent.
    assert page.query == parse_arguments({}).query
    assert page.query["limit"] == "200" and page.query["withMeta"] == page.query["flatMeta"] == "true"


def test_model_id_goes_through_its_versions_and_keeps_every_prompt(server: FakeCivitai, store: Path) -> None:
    # modelId alone would take the server's older query path; its versions take the search index
    # (the losses of the older path: tests/e2e/test_crawl_server_paths.py).
    server.add_model(12, [788385])  # the version the items are listed under
    items = add_items(server, 3)

    result = run_crawl(server, store, "model_id=12")

    assert result.returncode == 0, result.stderr
    models, page = server.api_requests()
    assert models.path == "/api/v1/models/12"
    assert page.query["modelVersionId"] == "788385" and page.query["flatMeta"] == "true"
    assert "modelId" not in page.query
    assert sorted(result.ids_recorded()) == [item["id"] for item in items]
    for item in items:
        assert (store / f"{item['id']}_pos-prompt.txt").read_text() == item["meta"]["prompt"]
        record = json.loads((store / f"{item['id']}_meta.json").read_text())
        assert record["meta"] == item["meta"]


def test_nested_meta_is_read_when_the_server_sends_it_anyway(server: FakeCivitai, store: Path) -> None:
    server.ignore_flat_meta = True  # nested meta on the older path (image_id) whatever the query says
    nested = add_items(server, 1)[0]
    without = server.add_image_item(images.jpeg_rgb(), meta=None)  # served as {"id": ..., "meta": null}

    result = run_crawl(server, store, f"image_id={nested['id']}")
    empty = run_crawl(server, store, f"image_id={without['id']}")

    assert result.returncode == empty.returncode == 0, result.stderr
    assert result.ids_recorded() == [nested["id"]]
    assert empty.stats["civitai/dropped/no_meta"] == 1
    assert (store / f"{nested['id']}_pos-prompt.txt").read_text() == nested["meta"]["prompt"]
    assert (store / f"{nested['id']}_neg-prompt.txt").read_text() == nested["meta"]["negativePrompt"]
    # meta.json keeps the record exactly as received: nested.
    record = json.loads((store / f"{nested['id']}_meta.json").read_text())
    assert record["meta"] == {"id": nested["id"], "meta": nested["meta"]}


def test_max_pages_stops_early(server: FakeCivitai, store: Path) -> None:
    add_items(server, 9)

    result = run_crawl(server, store, "limit=2", "max_pages=2")

    assert result.finish_reason == "finished"
    assert len(server.api_requests()) == 2
    assert result.stats["civitai/saved"] == 4


def test_stop_after_seen_stops_once_caught_up(server: FakeCivitai, store: Path) -> None:
    old = add_items(server, 30)
    server.items.reverse()  # newest (highest id) first, as sort=Newest lists them
    first = run_crawl(server, store, "limit=5", "sort=Newest")
    assert first.finish_reason == "finished"
    assert len(first.ids_recorded()) == 30

    new = add_items(server, 3)
    server.items[:] = [*reversed(new), *reversed(old)]
    server.clear_requests()
    result = run_crawl(server, store, "limit=5", "sort=Newest", "stop_after_seen=5")

    assert result.returncode == 0, result.stderr
    assert result.finish_reason == "caught_up"
    assert sorted(result.ids_recorded()[30:]) == [item["id"] for item in new]
    # The 5th old image in a row is on page 2; page 3 may already have been asked for when
    # it arrives (the next page is requested first), but nothing later: 7 pages without the stop.
    assert 2 <= len(server.api_requests()) <= 3
    new_paths = {urlsplit(item["url"]).path for item in new}
    assert {request.path for request in server.cdn_requests()} == new_paths
    assert result.stats["civitai/dropped/already_downloaded"] >= 5
    [line] = [line for line in result.stderr.splitlines() if "Caught up" in line]
    assert "INFO" in line and "stop_after_seen=5" in line


@pytest.mark.parametrize(
    ("argument", "named"),
    [
        ("sort=Best", "'Most Reactions'"),
        ("period=Decade", "'AllTime'"),
        ("nsfw=maybe", "'Mature'"),
        ("limit=500", "1 to 200"),
        ("limit=ten", "1 to 200"),
        ("username=bad name", "letters, digits and _"),
        ("model_id=-3", "an integer from 1 to 2147483647"),
        ("user_id=bob", "positive integer"),
        ("image_id=0", "positive integer"),
        ("tags=landscape", "comma-separated tag ids"),
        ("tags=5133,-4", "comma-separated tag ids"),
        ("tags=,", "comma-separated tag ids"),
        ("browsing_level=64", "1 to 31"),
        ("browsing_level=0", "1 to 31"),
        ("media=gif", "'image', 'video', 'all'"),
        ("max_pages=0", "positive integer"),
        ("stop_after_seen=0", "positive integer"),
        ("stop_after_seen=5", "requires sort='Newest'"),
        ("sortby=Newest", "allowed are sort, period"),
    ],
)
def test_bad_argument_is_one_clear_error_before_any_request(
    argument: str, named: str, server: FakeCivitai, store: Path
) -> None:
    result = run_crawl(server, store, argument)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    name, value = argument.split("=", 1)
    assert (repr(value) in error or repr(name) in error) and named in error
    assert server.requests == []


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("CIVITAI_THRESHOLDS", '{"hearts": 2}', "'hearts'"),
        ("CIVITAI_THRESHOLDS", "{not json", "not a JSON object"),
        ("CIVITAI_JPEG_QUALITY", "0", "CIVITAI_JPEG_QUALITY"),
        ("IMAGES_STORE", "gs://bucket/images", "IMAGES_STORE='gs://bucket/images': unknown scheme 'gs://'"),
        ("IMAGES_STORE", "ftp://host/images", "allowed: a folder, file://folder, s3://bucket/prefix"),
        ("IMAGES_STORE", "s3:///images", "names no bucket"),
        (
            "CIVITAI_REDIS_URL",
            "http://127.0.0.1/0",
            "CIVITAI_REDIS_URL='http://127.0.0.1/0' is not valid (scheme http://): allowed is empty, or an "
            "absolute redis://",
        ),
        ("CIVITAI_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0: Redis does not"),
        ("CIVITAI_IMAGE_THREADS", "-2", "CIVITAI_IMAGE_THREADS"),
        ("CIVITAI_IMAGES_IN_FLIGHT", "0", "CIVITAI_IMAGES_IN_FLIGHT"),
        ("CIVITAI_VIDEOS_IN_FLIGHT", "0", "CIVITAI_VIDEOS_IN_FLIGHT='0' is not valid"),
        (
            "CIVITAI_VIDEOS_IN_FLIGHT",
            "two",
            "CIVITAI_VIDEOS_IN_FLIGHT='two' is not valid: allowed is an integer",
        ),
        (
            "CIVITAI_JPEG_QUALITY",
            "high",
            "CIVITAI_JPEG_QUALITY='high' is not valid: allowed is an integer from 1 to 100",
        ),
        (
            "CIVITAI_RETRY_BASE_DELAY",
            "soon",
            "CIVITAI_RETRY_BASE_DELAY='soon' is not valid: allowed is a number",
        ),
        ("CIVITAI_RETRY_MAX_DELAY", "-1", "CIVITAI_RETRY_MAX_DELAY='-1' is not valid"),
        ("CIVITAI_VIDEO_DOWNLOAD_TIMEOUT", "nan", "CIVITAI_VIDEO_DOWNLOAD_TIMEOUT='nan' is not valid"),
        ("CIVITAI_MAX_VIDEO_BYTES", "-1", "CIVITAI_MAX_VIDEO_BYTES='-1' is not valid"),
        ("CIVITAI_VIDEO_DOWNLOAD_TIMEOUT", "0", "CIVITAI_VIDEO_DOWNLOAD_TIMEOUT='0' is not valid"),
        (
            "CIVITAI_CAPTION_FILES",
            "yes please",
            "CIVITAI_CAPTION_FILES='yes please' is not valid: allowed is true",
        ),
    ],
)
def test_bad_setting_is_one_clear_error(
    setting: str, value: str, named: str, server: FakeCivitai, store: Path
) -> None:
    result = run_crawl(server, store, **{setting: value})

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert named in error
    assert "hunter2" not in result.stderr + result.stdout
    assert server.requests == []


def test_cursor_loop_is_detected(store: Path) -> None:
    with FakeCivitai(cursor_loop=True) as server:
        add_items(server, 4)
        result = run_crawl(server, store, "limit=2")
        page_count = len(server.api_requests())

    assert result.finish_reason == "cursor_loop"
    assert page_count == 2
    assert "a second time" in result.stderr


def test_next_page_on_another_host_is_not_followed(store: Path) -> None:
    with FakeCivitai(next_page_host="127.0.0.3:9") as server:
        add_items(server, 4)
        # Only nextPage, no nextCursor: the spider must check where nextPage points.
        server.strip_next_cursor = True
        result = run_crawl(server, store, "limit=2")
        page_count = len(server.api_requests())

    assert page_count == 1
    assert "Not following nextPage http://127.0.0.3:9" in result.stderr
    assert result.stats["civitai/saved"] == 2


def test_next_page_on_the_api_host_is_followed(server: FakeCivitai, store: Path) -> None:
    add_items(server, 5)
    server.strip_next_cursor = True

    result = run_crawl(server, store, "limit=2")

    assert len(server.api_requests()) == 3
    assert result.stats["civitai/saved"] == 5


def test_busy_and_broken_pages_are_retried_with_retry_after(server: FakeCivitai, store: Path) -> None:
    add_items(server, 4)
    server.inject(
        server.api_url,
        Fault.status(503, retry_after="1"),
        Fault.html_200(),
        Fault.json_200({"error": "no items here"}),
        Fault.status(429),
    )

    result = run_crawl(server, store, "limit=2")

    assert result.returncode == 0, result.stderr
    assert result.finish_reason == "finished"
    pages = server.api_requests()
    assert len(pages) == 2 + 4
    assert pages[1].time - pages[0].time >= 0.95  # Retry-After: 1, longer than the backoff
    assert result.stats["retry/count"] == 4
    assert result.stats["civitai/saved"] == 4
    assert "not a page: not JSON" in result.stderr
    assert "not a page: JSON without an 'items' list" in result.stderr


def test_api_failure_after_retries_ends_with_api_error(server: FakeCivitai, store: Path) -> None:
    add_items(server, 2)
    server.inject_always(server.api_url, Fault.html_200())

    result = run_crawl(server, store, RETRY_TIMES="2")

    assert result.finish_reason == "api_error"
    assert len(server.api_requests()) == 3
    [error] = [line for line in result.stderr.splitlines() if "stopping the crawl" in line]
    assert "ERROR" in error and "not JSON" in error and server.api_url in error


def test_api_bad_request_ends_with_the_server_message(server: FakeCivitai, store: Path) -> None:
    add_items(server, 2)

    result = run_crawl(server, store, "base_models=NoSuchModel")

    assert result.finish_reason == "api_error"
    assert len(server.api_requests()) == 1  # a 400 is not retried
    # The server's zod issue: the parameter, its index and the names it knows (zod names not the bad one).
    assert 'HTTP 400: baseModels.0: Invalid option: expected one of "Anima"|"AuraFlow"|' in result.stderr


def test_image_retry_waits_without_blocking_other_downloads(server: FakeCivitai, store: Path) -> None:
    busy = server.add_image_item(images.jpeg_rgb())
    others = add_items(server, 12)
    server.inject(busy["url"], Fault.status(503, retry_after="2"))
    server.api_delay = 0.2  # one item per page, one page after the other: 2.6 s of steady requests

    # If the wait blocked the reactor, no request could start during it. Pages follow each other
    # (each names the next cursor), so the API sees a steady stream that a blocked reactor would
    # interrupt; images, unlike pages, may all be asked for at once.
    result = run_crawl(server, store, "limit=1")

    assert result.returncode == 0, result.stderr
    busy_path = urlsplit(busy["url"]).path
    busy_requests = [request for request in server.cdn_requests() if request.path == busy_path]
    assert len(busy_requests) == 2
    first, retry = busy_requests[0].time, busy_requests[1].time
    assert retry - first >= 1.95
    page_times = [request.time for request in server.api_requests()]
    assert sum(first + 0.4 < time < first + 1.6 for time in page_times) >= 3, (first, page_times)
    assert sorted(result.ids_recorded()) == sorted(item["id"] for item in [busy, *others])


def test_image_transient_failures_are_retried(server: FakeCivitai, store: Path) -> None:
    flaky = server.add_image_item(images.png_rgb())
    server.inject(flaky["url"], Fault.short_body(), Fault.reset(), Fault.status(500), Fault.slow(2))

    result = run_crawl(server, store, DOWNLOAD_TIMEOUT="1")

    assert result.ids_recorded() == [flaky["id"]]
    assert result.stats["retry/count"] == 4
    assert any("Timeout" in key for key in result.stats if key.startswith("retry/reason_count/"))


def test_closespider_itemcount_stops_a_small_run_cleanly(server: FakeCivitai, store: Path) -> None:
    add_items(server, 30)

    result = run_crawl(server, store, "limit=10", CLOSESPIDER_ITEMCOUNT="3")

    assert result.finish_reason == "closespider_itemcount"
    recorded = result.ids_recorded()
    assert len(recorded) >= 3 and len(recorded) == len(set(recorded))
    for image_id in recorded:
        assert (store / f"{image_id}.jpg").exists() and (store / f"{image_id}_meta.json").exists()
