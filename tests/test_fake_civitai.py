"""Tests of the test fake itself: the fake Civitai server and the image factory.

They talk to the fake with urllib, so that a bug in the fake is not mistaken for
a bug in the spider (or hidden by it).
"""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from PIL import Image

from civitai_spider.items import STAT_NAMES
from tests import images
from tests.fake_civitai import API_PATH, FakeCivitai, Fault


@pytest.fixture
def server() -> Iterator[FakeCivitai]:
    with FakeCivitai() as fake:
        yield fake


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, whatever the status."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def fetch_json(url: str, **query: str) -> tuple[int, Any]:
    status, _, body = fetch(f"{url}?{urlencode(query)}" if query else url)
    return status, json.loads(body)


def raw_get(host: str, port: int, path: str) -> bytes:
    """Everything the server sends for one GET, until it closes the connection."""
    with socket.create_connection((host, port), timeout=5) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("cursor_style", ["offset", "json", "hostile"])
def test_pagination_follows_next_page_to_the_end(cursor_style: str) -> None:
    with FakeCivitai(cursor_style=cursor_style) as server:  # type: ignore[arg-type]
        ids = [server.add_image_item(images.jpeg_rgb())["id"] for _ in range(5)]
        status, page = fetch_json(server.api_url, limit="2", withMeta="true", sort="Newest")
        seen, cursors = [], []
        while True:
            assert status == 200
            seen += [item["id"] for item in page["items"]]
            if not page["metadata"]:
                break
            cursors.append(page["metadata"]["nextCursor"])
            next_page = page["metadata"]["nextPage"]
            assert next_page.startswith(server.api_url + "?limit=2&withMeta=true&sort=Newest&cursor=")
            status, page = fetch_json(next_page)
    assert seen == ids
    assert page["metadata"] == {}  # the last page: no nextCursor / nextPage keys at all
    if cursor_style == "offset":
        assert cursors == ["2|1733858354002", "4|1733858354004"]
    else:
        assert all(cursor.startswith('bdx:{"offset": ') for cursor in cursors)


def test_a_cursor_the_server_did_not_make_is_refused(server: FakeCivitai) -> None:
    for _ in range(3):
        server.add_image_item(images.jpeg_rgb())
    for cursor in ["2|1", "abc", "2", 'bdx:{"offset": 2}', "-2|1733858354000"]:
        status, body = fetch_json(server.api_url, limit="1", cursor=cursor)
        assert status == 400 and "cursor" in body["error"]
    # A client that glues the cursor in unencoded: the "+" and "&" of a hostile cursor break.
    with FakeCivitai(cursor_style="hostile") as hostile:
        for _ in range(2):
            hostile.add_image_item()
        cursor = fetch_json(hostile.api_url, limit="1")[1]["metadata"]["nextCursor"]
        status, _, _ = fetch(f"{hostile.api_url}?limit=1&cursor={cursor.replace(' ', '%20')}")
        assert status == 400


def test_cursor_loop_and_foreign_next_page() -> None:
    with FakeCivitai(cursor_loop=True, next_page_host="127.0.0.3:9") as server:
        for _ in range(5):
            server.add_image_item()
        first = fetch_json(server.api_url, limit="2")[1]["metadata"]
        second = fetch_json(server.api_url, limit="2", cursor=first["nextCursor"])[1]["metadata"]
        assert second["nextCursor"] == first["nextCursor"]
        assert urlsplit(first["nextPage"]).netloc == "127.0.0.3:9"


def test_meta_is_null_unless_with_meta_is_true(server: FakeCivitai) -> None:
    item = server.add_image_item(images.jpeg_rgb(), username="bob")
    assert item["meta"]["prompt"]
    assert fetch_json(server.api_url)[1]["items"][0]["meta"] is None
    assert fetch_json(server.api_url, withMeta="false")[1]["items"][0]["meta"] is None
    served = fetch_json(server.api_url, withMeta="true")[1]["items"][0]
    assert served == item and served["username"] == "bob"
    assert set(served["stats"]) == set(STAT_NAMES)


@pytest.mark.parametrize(
    ("query", "nested"),
    [
        ({}, False),  # the search index: flat
        ({"modelId": "12", "modelVersionId": "788385"}, False),
        ({"modelId": "12"}, True),  # the older database path: nested unless flatMeta=true
        ({"modelId": "12", "flatMeta": "true"}, False),
        ({"modelId": "12", "flatMeta": "false"}, True),
    ],
)
def test_meta_is_nested_on_the_older_query_path_without_flat_meta(
    server: FakeCivitai, query: dict[str, str], nested: bool
) -> None:
    item = server.add_image_item(images.jpeg_rgb())
    served = fetch_json(server.api_url, withMeta="true", **query)[1]["items"][0]
    assert served["meta"] == ({"id": item["id"], "meta": item["meta"]} if nested else item["meta"])


def test_image_id_takes_the_older_path_and_ignore_flat_meta_nests_anyway(server: FakeCivitai) -> None:
    item = server.add_image_item(images.jpeg_rgb())
    query = {"withMeta": "true", "imageId": str(item["id"])}
    assert fetch_json(server.api_url, **query)[1]["items"][0]["meta"] == {
        "id": item["id"],
        "meta": item["meta"],
    }
    assert fetch_json(server.api_url, flatMeta="true", **query)[1]["items"][0]["meta"] == item["meta"]
    server.ignore_flat_meta = True
    assert fetch_json(server.api_url, flatMeta="true", **query)[1]["items"][0]["meta"]["id"] == item["id"]


def test_browsing_levels_types_users_and_tags(server: FakeCivitai) -> None:
    tags = [{"id": 5, "name": "cat"}]
    pg = server.add_image_item(userId=1, tags=tags)
    soft = server.add_image_item(browsingLevel=2, userId=2)
    x = server.add_image_item(browsingLevel=8, type="video", userId=1, tags=tags)

    def ids(**query: str) -> list[Any]:
        return [item["id"] for item in fetch_json(server.api_url, **query)[1]["items"]]

    assert ids() == [pg["id"]]  # without nsfw or browsingLevel: PG only
    assert ids(nsfw="Soft") == [pg["id"], soft["id"]]
    assert ids(nsfw="X") == [pg["id"], soft["id"], x["id"]]
    assert ids(browsingLevel="10", nsfw="None") == [soft["id"], x["id"]]  # browsingLevel wins
    assert ids(nsfw="X", type="video") == [x["id"]]
    assert ids(nsfw="X", type="image") == [pg["id"], soft["id"]]
    assert ids(nsfw="X", userId="1") == [pg["id"], x["id"]]
    assert ids(nsfw="X", tags="4,5") == [pg["id"], x["id"]]
    assert "tags" not in fetch_json(server.api_url)[1]["items"][0]
    assert fetch_json(server.api_url, withTags="true")[1]["items"][0]["tags"] == tags


@pytest.mark.parametrize(
    "query",
    [
        {"tags": "cat"},
        {"browsingLevel": "x"},
        {"type": "gif"},
        {"username": "bad-name!"},
        {"username": "a b"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"sort": "Best"},
        {"period": "Century"},
        {"nsfw": "maybe"},
        {"baseModels": "SDXL 1.0,Not A Model"},
        {"modelVersionId": "x"},
    ],
)
def test_bad_parameters_answer_400_with_an_error(server: FakeCivitai, query: dict[str, str]) -> None:
    status, body = fetch_json(server.api_url, **query)
    assert status == 400 and body["error"]


def test_filters(server: FakeCivitai) -> None:
    alice = server.add_image_item(postId=1, modelVersionIds=[7, 8])
    bob = server.add_image_item(username="bob", baseModel="Pony", postId=2)
    junk = server.add_raw_item("not a dict")

    def ids(**query: str) -> list[Any]:
        return [
            item["id"] if isinstance(item, dict) else item
            for item in fetch_json(server.api_url, **query)[1]["items"]
        ]

    assert ids(username="bob") == [bob["id"], junk]
    assert ids(postId="1") == [alice["id"], junk]
    assert ids(modelVersionId="8") == [alice["id"], junk]
    assert ids(baseModels="Pony,Flux.1 D") == [bob["id"], junk]
    assert ids(nsfw="X", period="Week", modelId="3") == [alice["id"], bob["id"], junk]


def test_images_are_served_by_the_cdn_host_with_their_bytes(server: FakeCivitai) -> None:
    png = images.png_rgba_with_parameters()
    item = server.add_image_item(png)
    assert item["url"].startswith("http://127.0.0.2:") and item["url"].endswith(".jpeg")
    status, headers, body = fetch(item["url"])
    assert (status, headers["Content-Type"], body) == (200, "image/png", png)
    missing = server.add_image_item(None)
    assert fetch(missing["url"])[0] == 404
    shared = server.add_image("shared", images.jpeg_rgb())
    assert server.add_image_item(url=shared)["url"] == shared
    assert [request.host for request in server.requests] == ["cdn", "cdn"]
    assert fetch(server.image_base + API_PATH.lstrip("/"))[0] == 404  # the CDN is not the API
    webp = server.add_image("/other/path.png", images.webp_rgb(), content_type="image/webp")
    assert fetch(webp)[1]["Content-Type"] == "image/webp"
    assert fetch(server.add_image_item(images.webp_rgb())["url"])[1]["Content-Type"] == "image/webp"
    junk = server.add_image_item(images.NOT_AN_IMAGE, content_type="image/jpeg")
    assert fetch(junk["url"])[1]["Content-Type"] == "image/jpeg"


def test_faults_are_consumed_in_order_then_normal_service(server: FakeCivitai) -> None:
    url = server.add_image_item(images.jpeg_rgb())["url"]
    server.inject(url, Fault.status(503, retry_after="1"), Fault.status(500), Fault.html_200())
    status, headers, body = fetch(url)
    assert (status, headers["Retry-After"]) == (503, "1") and json.loads(body)["error"]
    assert fetch(url)[0] == 500
    assert fetch(url)[1]["Content-Type"].startswith("text/html")
    assert server.faults_left(url) == 0
    assert fetch(url)[2] == images.jpeg_rgb()
    server.inject(server.api_url + "?limit=5", Fault.json_200({"error": "x"}))
    assert fetch_json(server.api_url) == (200, {"error": "x"})
    assert "items" in fetch_json(server.api_url)[1]
    server.inject_always(url, Fault.body(images.NOT_AN_IMAGE))
    assert fetch(url)[2] == fetch(url)[2] == images.NOT_AN_IMAGE


def test_page_faults_hit_only_the_page_with_that_cursor(server: FakeCivitai) -> None:
    for _ in range(6):
        server.add_image_item(images.jpeg_rgb())
    second_page = server.cursor_for(2)
    server.inject_page(second_page, Fault.status(429), Fault.html_200())
    server.inject_page(None, Fault.status(503))
    assert server.faults_left() == 3
    assert fetch(server.api_url + "?limit=2")[0] == 503  # the first page has no cursor
    first = fetch_json(server.api_url + "?limit=2")[1]
    assert first["metadata"]["nextCursor"] == second_page
    assert fetch(server.api_url + "?limit=2&cursor=" + server.cursor_for(4))[0] == 200  # another page
    next_page = first["metadata"]["nextPage"]
    assert fetch(next_page)[0] == 429
    assert fetch(next_page)[1]["Content-Type"].startswith("text/html")
    assert [item["id"] for item in fetch_json(next_page)[1]["items"]] == [1002, 1003]
    assert server.faults_left() == 0


def test_short_body_sends_less_than_its_content_length(server: FakeCivitai) -> None:
    body = images.jpeg_rgb()
    url = urlsplit(server.add_image_item(body)["url"])
    server.inject(url.path, Fault.short_body())
    head, _, received = raw_get(url.hostname or "", url.port or 0, url.path).partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert received == body[: len(body) // 2]


def test_reset_slow_and_redirect(server: FakeCivitai) -> None:
    api = urlsplit(server.api_url)
    server.inject(server.api_url, Fault.reset(), Fault.slow(0.3), Fault.redirect(server.image_base + "x"))
    with pytest.raises(ConnectionResetError):  # a real RST, not a clean close
        raw_get(api.hostname or "", api.port or 0, API_PATH)
    started = time.monotonic()
    assert fetch(server.api_url)[0] == 200
    assert time.monotonic() - started >= 0.3
    assert fetch(server.api_url)[0] == 404  # urllib followed the redirect to the CDN
    assert [request.host for request in server.requests] == ["api", "api", "api", "cdn"]


def test_requests_are_recorded_with_their_headers(server: FakeCivitai) -> None:
    item = server.add_image_item(images.jpeg_rgb())
    fetch(f"{server.api_url}?limit=3&withMeta=true", {"Authorization": "Bearer secret"})
    fetch(item["url"], {"User-Agent": "civitai-spider-test"})
    api, cdn = server.requests
    assert (api.host, api.method, api.path, api.query) == (
        "api",
        "GET",
        API_PATH,
        {"limit": "3", "withMeta": "true"},
    )
    assert api.raw_query == "limit=3&withMeta=true" and api.headers["authorization"] == "Bearer secret"
    assert cdn.host == "cdn" and "authorization" not in cdn.headers
    assert cdn.headers["user-agent"] == "civitai-spider-test" and api.time <= cdn.time
    assert server.api_requests() == [api] and server.cdn_requests() == [cdn]


def test_many_concurrent_requests_and_a_quick_stop() -> None:
    server = FakeCivitai(delay=0.05).start()
    url = server.add_image_item(images.jpeg_rgb())["url"]
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(lambda _: fetch(url)[0], range(200)))
        assert statuses == [200] * 200
        # A request stuck in a slow fault and an idle keep-alive connection must not delay stop().
        server.inject_always(server.api_url, Fault.slow(30))
        stuck = pool.submit(fetch, server.api_url)
        idle = socket.create_connection(("127.0.0.1", urlsplit(server.api_url).port or 0))
        while len(server.api_requests()) < 1:
            time.sleep(0.01)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1
        try:  # the server closed it: an orderly end, or a reset when it raced the close
            assert idle.recv(1) == b""
        except ConnectionResetError:
            pass
        idle.close()
        stuck.result(timeout=2)  # answered at once (or cut): either way it is over


@pytest.mark.parametrize(
    "make, fmt, mode",
    [
        (images.jpeg_rgb, "JPEG", "RGB"),
        (images.jpeg_grey, "JPEG", "L"),
        (images.jpeg_cmyk, "JPEG", "CMYK"),
        (images.png_rgb, "PNG", "RGB"),
        (images.png_rgba_with_parameters, "PNG", "RGBA"),
        (images.webp_rgb, "WEBP", "RGB"),
        (images.webp_rgba, "WEBP", "RGBA"),
        (images.gif_animated, "GIF", "P"),
        (images.palette_png_with_transparency, "PNG", "P"),
        (images.bmp, "BMP", "RGB"),
        (images.tiff, "TIFF", "RGB"),
    ],
)
def test_image_factory(make: Any, fmt: str, mode: str) -> None:
    with Image.open(io.BytesIO(make())) as picture:
        picture.load()
        assert (picture.format, picture.mode) == (fmt, mode)
        darkest, lightest = picture.convert("L").getextrema()
        assert darkest < lightest  # not a flat picture


def test_image_factory_details() -> None:
    with Image.open(io.BytesIO(images.png_rgba_with_parameters("Steps: 20"))) as picture:
        assert picture.info["parameters"] == "Steps: 20"
    with Image.open(io.BytesIO(images.gif_animated())) as picture:
        assert picture.n_frames >= 2
    with Image.open(io.BytesIO(images.palette_png_with_transparency())) as picture:
        assert "transparency" in picture.info
    with Image.open(io.BytesIO(images.bomb_png((300, 200)))) as picture:
        picture.load()
        assert (picture.format, picture.mode, picture.size) == ("PNG", "1", (300, 200))
    assert len(images.bomb_png((20000, 20000))) < 100_000
    with pytest.raises(OSError), Image.open(io.BytesIO(images.truncated(images.png_rgb()))) as picture:
        picture.load()
    with pytest.raises(OSError):
        Image.open(io.BytesIO(images.NOT_AN_IMAGE))
