"""Tests of the test fake itself: the fake Civitai server and the image factory.

They talk to the fake with urllib, so that a bug in the fake is not mistaken for
a bug in the spider (or hidden by it).
"""

from __future__ import annotations

import http.client
import io
import json
import random
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
from tests.support import images
from tests.support.fake_civitai import (
    API_PATH,
    BROWSING_LEVELS,
    KNOWN_BASE_MODELS,
    ME_PATH,
    MODELS_PATH,
    NSFW_BROWSING_LEVELS,
    FakeCivitai,
    Fault,
    RecordedRequest,
)


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


def served_ids(url: str, headers: dict[str, str] | None = None, **query: str) -> list[Any]:
    """The ids of one page (a 200), junk items as they are."""
    status, _, body = fetch(f"{url}?{urlencode(query)}" if query else url, headers)
    assert status == 200, body
    return [item["id"] if isinstance(item, dict) else item for item in json.loads(body)["items"]]


def walk(url: str, **query: str) -> list[tuple[list[int], dict[str, Any]]]:
    """Every page of a query, following nextPage to the end: (the ids served, the metadata) of each."""
    pages: list[tuple[list[int], dict[str, Any]]] = []
    status, page = fetch_json(url, **query)
    while True:
        assert status == 200, page
        pages.append(([item["id"] for item in page["items"]], page["metadata"]))
        if "nextPage" not in page["metadata"]:
            return pages
        assert len(pages) < 50, "a cursor loop"
        status, page = fetch_json(page["metadata"]["nextPage"])


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
        ({"flatMeta": "false"}, True),  # flatMeta decides on either path
        ({"modelId": "12", "modelVersionId": "788385"}, False),
        ({"modelId": "12"}, True),  # the older database path: nested unless flatMeta=true
        ({"modelId": "12", "flatMeta": "true"}, False),
        ({"modelId": "12", "flatMeta": "false"}, True),
    ],
)
def test_meta_is_nested_on_the_older_query_path_without_flat_meta(
    server: FakeCivitai, query: dict[str, str], nested: bool
) -> None:
    server.add_model(12, [788385])
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
    assert status == 400 and body["error"]["name"] == "ZodError"
    [issue] = json.loads(body["error"]["message"])
    assert issue["path"][0] == next(iter(query)) and issue["message"]


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
    # modelId alone: the older database path, newest first, over the versions of the model
    # (bob's are its modelVersionIds, 788385); junk items are no database rows.
    server.add_model(3, [8, 788385])
    assert ids(nsfw="X", period="AllTime", modelId="3") == [bob["id"], alice["id"]]


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


def test_chunked_cdn_answers_without_a_content_length(server: FakeCivitai) -> None:
    body = random.Random(3).randbytes(200_000)  # several chunks of 64 KB
    url = urlsplit(server.add_image_item(body)["url"])
    server.chunked_cdn = True
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    try:
        connection.request("GET", url.path)
        response = connection.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Length") is None
        assert response.read() == body
    finally:
        connection.close()

    server.inject(url.path, Fault.short_body())
    head, _, received = raw_get(url.hostname or "", url.port or 0, url.path).partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    decoded = b""
    while received:  # half the body in whole chunks, and no last chunk (0 CRLF CRLF)
        size_line, _, received = received.partition(b"\r\n")
        size = int(size_line, 16)
        assert size > 0
        decoded, received = decoded + received[:size], received[size + 2 :]
    assert decoded == body[: len(body) // 2]


def test_a_stall_sends_half_the_body_waits_then_the_rest(server: FakeCivitai) -> None:
    body = images.jpeg_rgb()
    url = urlsplit(server.add_image_item(body)["url"])
    server.inject(url.path, Fault.stall(0.3))
    with socket.create_connection((url.hostname or "", url.port or 0), timeout=5) as connection:
        connection.sendall(f"GET {url.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < len(body) // 2:
            received += connection.recv(65536)
        first_half_at = time.monotonic()
        while len(received.partition(b"\r\n\r\n")[2]) < len(body):
            received += connection.recv(65536)
        assert time.monotonic() - first_half_at >= 0.25
    assert received.partition(b"\r\n\r\n")[2] == body


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
    ("query", "levels"),
    [
        ({}, [1]),  # PG only without nsfw or browsingLevel
        ({"nsfw": "None"}, [1]),
        ({"nsfw": "false"}, [1]),  # counts as absent
        ({"nsfw": "Soft"}, [1, 2]),
        ({"nsfw": "Mature"}, [1, 2, 4]),
        ({"nsfw": "X"}, [1, 2, 4, 8, 16]),
        ({"nsfw": "true"}, [4, 8, 16]),  # R, X, XXX: no PG, no PG13
        ({"nsfw": "yes"}, [4, 8, 16]),  # zod's stringbool
        ({"nsfw": "Blocked"}, [1]),  # 32, stripped: nothing left, so PG
        ({"browsingLevel": "63"}, [1, 2, 4, 8, 16]),  # Blocked stripped
        ({"browsingLevel": "32"}, [1]),
        ({"browsingLevel": "0"}, [1]),
        ({"browsingLevel": "6", "nsfw": "X"}, [2, 4]),  # browsingLevel wins
    ],
)
def test_nsfw_and_browsing_level_select_levels_as_the_server_maps_them(
    server: FakeCivitai, query: dict[str, str], levels: list[int]
) -> None:
    assert NSFW_BROWSING_LEVELS == {"None": 1, "Soft": 3, "Mature": 7, "X": 31, "true": 28, "Blocked": 32}
    by_level = {server.add_image_item(browsingLevel=level)["id"]: level for level in BROWSING_LEVELS}
    assert [by_level[item_id] for item_id in served_ids(server.api_url, **query)] == levels


def test_an_items_level_is_served_with_its_deprecated_name_as_the_search_path_shapes_it(
    server: FakeCivitai,
) -> None:
    levels = [0, 1, 2, 4, 8, 16]
    for level in levels:
        server.add_image_item(level=level, width=1024, height=768, prompt="a portrait")
    _, page = fetch_json(server.api_url, nsfw="X", withMeta="true")
    served = [(item["browsingLevel"], item["nsfwLevel"], item["nsfw"]) for item in page["items"]]
    # An unrated image (0) is no level the query selects or excludes: the fake serves it as junk.
    assert served == [
        (0, "None", False),
        (1, "None", False),
        (2, "Soft", True),
        (4, "Mature", True),
        (8, "X", True),
        (16, "X", True),  # XXX is "X" too: only browsingLevel tells them apart
    ]
    assert {(item["width"], item["height"], item["meta"]["prompt"]) for item in page["items"]} == {
        (1024, 768, "a portrait")
    }


def test_an_unknown_api_key_is_served_as_anonymous_pg_only(server: FakeCivitai) -> None:
    pg, x = server.add_image_item()["id"], server.add_image_item(browsingLevel=8)["id"]
    url = server.api_url + "?nsfw=X"
    assert served_ids(url) == [pg, x]  # api_keys empty: keys are not modelled
    server.api_keys = {"good-key": "alice"}
    assert served_ids(url) == [pg]
    assert served_ids(url, {"Authorization": "Bearer stale-key"}) == [pg]  # no 401, just PG
    assert served_ids(url + "&token=stale-key") == [pg]
    assert served_ids(url, {"Authorization": "Bearer good-key"}) == [pg, x]
    assert served_ids(url + "&token=good-key") == [pg, x]
    assert served_ids(url + "&token=good-key", {"Authorization": "Bearer stale-key"}) == [pg]  # header first


def test_me_names_the_key_owner_or_answers_401(server: FakeCivitai) -> None:
    me = server.api_url.replace(API_PATH, ME_PATH)

    def ask(url: str, key: str | None = None) -> tuple[int, Any]:
        status, _, body = fetch(url, {"Authorization": f"Bearer {key}"} if key else None)
        return status, json.loads(body)

    assert ask(me) == (401, {"error": "Unauthorized"})
    tester = {"id": 1, "username": "tester", "tier": "free", "status": "active", "isMember": False}
    assert ask(me, "any-key") == (200, {**tester, "subscriptions": []})  # api_keys empty: any key
    server.api_keys = {"key-a": "alice", "key-b": "bob"}
    assert ask(me, "key-b") == (200, {**tester, "id": 2, "username": "bob", "subscriptions": []})
    assert ask(me + "?token=key-a")[1]["username"] == "alice"
    assert ask(me, "stale-key") == (401, {"error": "Unauthorized"})
    assert ask(me + "?token=stale-key")[0] == 401


def test_models_endpoint_lists_versions_or_answers_404_and_400(server: FakeCivitai) -> None:
    model = server.add_model(4201, [11, 12], name="Boleromix")
    url = server.api_url.replace(API_PATH, MODELS_PATH)
    status, body = fetch_json(url + "4201")
    assert status == 200 and body == model
    assert (body["id"], body["name"], body["type"], body["nsfw"]) == (4201, "Boleromix", "Checkpoint", False)
    assert body["creator"]["username"] and body["tags"] == []
    assert [(version["id"], version["modelId"]) for version in body["modelVersions"]] == [
        (11, 4201),
        (12, 4201),
    ]
    assert set(body["modelVersions"][0]) == {
        "id", "modelId", "name", "baseModel", "createdAt", "files", "images", "downloadUrl",
    }  # fmt: skip
    assert fetch_json(url + "4202") == (404, {"error": "No model with id 4202"})
    assert fetch_json(url + "abc") == (
        400,
        {"error": "✖ Invalid input: expected number, received NaN\n  → at id"},
    )
    assert fetch_json(url + "0") == (400, {"error": "✖ Too small: expected number to be >0\n  → at id"})
    too_big = "✖ Too big: expected number to be <=2147483647\n  → at id"
    assert fetch_json(url + "2147483648") == (400, {"error": too_big})


def test_private_keys_are_never_served(server: FakeCivitai) -> None:
    server.add_model(12, [7])
    item = server.add_image_item(versions=[7], _hidden=False, _note="the fake's own")
    assert item["_versions"] == [7]
    public = {key: value for key, value in item.items() if not key.startswith("_")}
    for query in ({}, {"modelVersionId": "7"}, {"modelId": "12"}, {"imageId": str(item["id"])}):
        assert fetch_json(server.api_url, withMeta="true", flatMeta="true", **query)[1]["items"] == [public]


def test_model_version_id_finds_images_by_the_versions_they_are_listed_under(server: FakeCivitai) -> None:
    posted = server.add_image_item(versions=[7], modelVersionIds=[])  # posted to 7, nothing detected
    missing = server.add_image_item(versions=[7])
    del missing["modelVersionIds"]
    elsewhere = server.add_image_item(versions=[8], modelVersionIds=[7])  # its _versions decide
    plain = server.add_image_item(modelVersionIds=[9])  # without _versions: its modelVersionIds

    served = fetch_json(server.api_url, modelVersionId="7")[1]["items"]
    assert [item["id"] for item in served] == [posted["id"], missing["id"]]
    assert served[0]["modelVersionIds"] == [] and "modelVersionIds" not in served[1]  # served as they are
    assert served_ids(server.api_url, modelVersionId="8") == [elsewhere["id"]]
    assert served_ids(server.api_url, modelVersionId="9") == [plain["id"]]


@pytest.mark.parametrize("path", ["search index", "older path"])
def test_hidden_images_keep_their_place_short_and_empty_pages_keep_the_cursor(
    server: FakeCivitai, path: str
) -> None:
    server.add_model(12, [788385])
    ids = [server.add_image_item()["id"] for _ in range(6)]
    if path == "search index":  # offsets: [0 1] [2 3] [4 5]
        hidden, query, expected = (0, 1, 2), {"limit": "2"}, [[], [ids[3]], [ids[4], ids[5]]]
    else:  # newest first, the row after each page popped: [5 4] (3) [2 1] (0) []
        hidden, query, expected = (5, 4, 2), {"limit": "2", "modelId": "12"}, [[], [ids[1]], []]
    for index in hidden:
        server.items[index]["_hidden"] = True
    pages = walk(server.api_url, **query)
    assert [served for served, _ in pages] == expected
    assert all("nextCursor" in metadata for _, metadata in pages[:-1]) and pages[-1][1] == {}


def add_model_images(server: FakeCivitai, count: int = 10) -> list[int]:
    """Model 12 (versions 7 and 8) with `count` images alternating between them, and one elsewhere."""
    server.add_model(12, [7, 8])
    ids = [server.add_image_item(versions=[7 + index % 2])["id"] for index in range(count)]
    server.add_image_item(versions=[9])  # another model's
    return ids


def test_older_path_loses_the_popped_image_at_each_page_boundary(server: FakeCivitai) -> None:
    newest_first = sorted(add_model_images(server), reverse=True)

    pages = walk(server.api_url, modelId="12", limit="3")

    # limit+1 rows, the last popped and its id made the cursor, then `id < cursor`: never served.
    assert [served for served, _ in pages] == [newest_first[0:3], newest_first[4:7], newest_first[8:]]
    cursors = [metadata["nextCursor"] for _, metadata in pages[:-1]]
    assert cursors == [newest_first[3], newest_first[7]]
    assert all(type(cursor) is int for cursor in cursors)  # a JSON number, not a string
    assert pages[0][1]["nextPage"].endswith(f"?modelId=12&limit=3&cursor={cursors[0]}")
    assert pages[-1][1] == {}
    assert fetch_json(server.api_url, modelId="13")[1] == {"items": [], "metadata": {}}  # unknown model


def test_older_path_oldest_loses_nothing(server: FakeCivitai) -> None:
    ids = add_model_images(server)
    pages = walk(server.api_url, modelId="12", limit="3", sort="Oldest")
    # `id >= cursor` under id ASC: the popped row leads the next page.
    assert [item_id for served, _ in pages for item_id in served] == sorted(ids)
    assert [metadata.get("nextCursor") for served, metadata in pages] == [
        served[0] for served, _ in pages[1:]
    ] + [None]


def test_older_path_lists_metric_sorts_newest_first(server: FakeCivitai) -> None:
    server.add_model(12, [788385])
    hearts = [5, 50, 1, 20]
    ids = [server.add_image_item(stats={"heartCount": count, "likeCount": count})["id"] for count in hearts]
    for sort in ("Most Reactions", "Most Comments", "Most Collected", "Newest"):
        assert served_ids(server.api_url, modelId="12", sort=sort) == sorted(ids, reverse=True)


def test_older_path_refuses_random_sort(server: FakeCivitai) -> None:
    item = add_model_images(server)[0]
    refused = (400, {"error": "Random sort requires a collectionId", "code": "BAD_REQUEST"})
    assert fetch_json(server.api_url, modelId="12", sort="Random") == refused
    assert fetch_json(server.api_url, imageId=str(item), sort="Random") == refused
    assert fetch_json(server.api_url, modelId="12", modelVersionId="7", sort="Random")[0] == 200  # the index


def test_older_path_answers_404_to_an_unknown_username(server: FakeCivitai) -> None:
    add_model_images(server, 2)
    assert fetch_json(server.api_url, modelId="12", username="nobody") == (
        404,
        {"error": "User not found", "code": "NOT_FOUND"},
    )
    assert len(served_ids(server.api_url, modelId="12", username="alice")) == 2
    assert served_ids(server.api_url, modelVersionId="7", username="nobody") == []  # the index: no 404


def test_older_path_cursor_is_an_image_id(server: FakeCivitai) -> None:
    add_model_images(server)
    offset_cursor = fetch_json(server.api_url, modelVersionId="7", limit="2")[1]["metadata"]["nextCursor"]
    assert fetch_json(server.api_url, modelId="12", cursor=offset_cursor) == (
        400,
        {"error": "Invalid cursor: expected 1 value(s) for this sort, received 2", "code": "BAD_REQUEST"},
    )
    assert fetch_json(server.api_url, modelId="12", cursor="abc") == (
        400,
        {"error": 'Invalid cursor: unparseable numeric value "abc"', "code": "BAD_REQUEST"},
    )


def test_older_path_times_out_on_a_deep_page_with_an_empty_page_and_no_cursor(server: FakeCivitai) -> None:
    newest_first = sorted(add_model_images(server), reverse=True)
    server.older_path_row_limit = 5  # pages starting at rows 0 and 4 answer, the one at row 8 times out
    pages = walk(server.api_url, modelId="12", limit="3")
    assert [served for served, _ in pages] == [newest_first[0:3], newest_first[4:7], []]
    assert pages[-1][1] == {}
    # The search index has no such limit: its page at row 6 answers.
    assert len(served_ids(server.api_url, limit="3", page="3")) == 3


def test_search_path_with_model_version_id_loses_nothing(server: FakeCivitai) -> None:
    ids = add_model_images(server)
    for version in (7, 8):
        pages = walk(server.api_url, modelId="12", modelVersionId=str(version), limit="3")
        assert all(isinstance(metadata["nextCursor"], str) for _, metadata in pages[:-1])
        assert [item_id for served, _ in pages for item_id in served] == ids[version - 7 :: 2]


def test_an_injected_empty_page_then_the_full_one(server: FakeCivitai) -> None:
    newest_first = sorted(add_model_images(server, 4), reverse=True)
    server.inject_page(None, Fault.empty_page())
    assert fetch_json(server.api_url, modelId="12", limit="2") == (200, {"items": [], "metadata": {}})
    first = fetch_json(server.api_url, modelId="12", limit="2")[1]
    assert [item["id"] for item in first["items"]] == newest_first[:2]
    cursor = first["metadata"]["nextCursor"]
    server.inject_page(cursor, Fault.empty_page())  # a numeric cursor: its query text is the key
    server.inject_page(str(cursor), Fault.status(503))
    assert fetch_json(first["metadata"]["nextPage"]) == (200, {"items": [], "metadata": {}})
    assert fetch(first["metadata"]["nextPage"])[0] == 503
    assert [item["id"] for item in fetch_json(first["metadata"]["nextPage"])[1]["items"]] == [newest_first[3]]


def test_region_blocked_is_451_with_the_servers_body(server: FakeCivitai) -> None:
    server.inject(server.api_url, Fault.region_blocked())
    status, headers, body = fetch(server.api_url)
    assert (status, headers["Content-Type"]) == (451, "application/json")
    assert body == (
        b'{"error":"Access to this service is not available in your region due to legal restrictions.",'
        b'"code":"REGION_BLOCKED"}'
    )


def test_a_query_the_schema_refuses_answers_zods_body(server: FakeCivitai) -> None:
    status, body = fetch_json(server.api_url, sort="Best", limit="201")
    assert status == 400 and body["error"]["name"] == "ZodError"
    message = body["error"]["message"]
    assert message.startswith('[\n  {\n    "origin": "number",\n')  # JSON.stringify(issues, null, 2)
    sorts = ["Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random"]
    assert json.loads(message) == [  # in the schema's order, not the query's
        {
            "origin": "number",
            "code": "too_big",
            "maximum": 200,
            "inclusive": True,
            "path": ["limit"],
            "message": "Too big: expected number to be <=200",
        },
        {
            "code": "invalid_value",
            "values": sorts,
            "path": ["sort"],
            "message": "Invalid option: expected one of " + "|".join(f'"{sort}"' for sort in sorts),
        },
    ]
    status, _, raw = fetch(server.api_url + "?limit=1&limit=2")  # a repeated parameter is an array
    assert status == 400 and json.loads(json.loads(raw)["error"]["message"])[0]["message"] == (
        "Invalid input: expected number, received array"
    )
    too_deep = (429, {"error": "You've requested too many pages, please use cursors instead"})
    assert fetch_json(server.api_url, page="6", limit="200") == too_deep
    assert fetch_json(server.api_url, page="5", limit="200")[0] == 200


def test_base_models_are_the_servers_99(server: FakeCivitai) -> None:
    assert len(set(KNOWN_BASE_MODELS)) == 99 and KNOWN_BASE_MODELS[:3] == ("Anima", "AuraFlow", "Chroma")
    qwen = server.add_image_item(baseModel="Qwen")["id"]
    wan = server.add_image_item(baseModel="Wan Video 2.2 I2V-A14B")["id"]
    server.add_image_item(baseModel="SDXL 9.9")  # an item's own name does not make it known
    assert served_ids(server.api_url, baseModels="Qwen, Wan Video 2.2 I2V-A14B") == [qwen, wan]
    status, body = fetch_json(server.api_url, baseModels="Qwen,SDXL 9.9")
    assert status == 400
    [issue] = json.loads(body["error"]["message"])
    assert issue["path"] == ["baseModels", 1] and issue["values"] == list(KNOWN_BASE_MODELS)


def test_on_api_request_can_change_what_the_next_page_serves(server: FakeCivitai) -> None:
    ids = [server.add_image_item()["id"] for _ in range(4)]
    paths: list[str] = []

    def climb(request: RecordedRequest) -> None:  # a live ranking: the first item of page 2 climbs
        paths.append(request.path)
        if "cursor" in request.query and server.items[0]["id"] != ids[2]:
            server.items.insert(0, server.items.pop(2))

    server.on_api_request = climb
    pages = walk(server.api_url, limit="2")
    assert [served for served, _ in pages] == [[ids[0], ids[1]], [ids[1], ids[3]]]  # ids[2] lost
    fetch(server.api_url.replace(API_PATH, ME_PATH))
    fetch(server.image_base)  # the CDN's requests do not go through the hook
    assert paths == [API_PATH, API_PATH, ME_PATH]


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


# --- period: what a feed's period keeps (the url argument's feeds ask Week) ------------------


def _days_ago(days: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - days * 86400))


@pytest.mark.parametrize("older_path", [False, True])
def test_period_keeps_the_items_created_within_it(server: FakeCivitai, older_path: bool) -> None:
    server.add_model(3, [788385])
    ages = {"hour": 1 / 24, "three_days": 3, "two_weeks": 14, "two_months": 60, "two_years": 730}
    ids = {age: server.add_image_item(createdAt=_days_ago(days))["id"] for age, days in ages.items()}
    junk = server.add_image_item(createdAt="not a date")["id"]  # served as it is
    path = {"modelId": "3"} if older_path else {}

    def listed(period: str) -> set[Any]:
        return set(served_ids(server.api_url, period=period, **path))

    assert listed("Day") == {ids["hour"], junk}
    assert listed("Week") == {ids["hour"], ids["three_days"], junk}
    assert listed("Month") == {ids["hour"], ids["three_days"], ids["two_weeks"], junk}
    assert listed("Year") == set(ids.values()) - {ids["two_years"]} | {junk}
    assert listed("AllTime") == set(ids.values()) | {junk}
