"""End to end: ``scrapy crawl civitai -a url=<a Civitai page>`` crawls what the page shows."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from civitai_spider.query import parse_arguments
from tests.support import images, videos
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import FakeCivitai
from tests.support.recording_proxy import RecordingProxy

#: Videos mostly come without a prompt; every item here passes the default thresholds.
SETTINGS = {"CIVITAI_REQUIRE_PROMPT": "false"}
MODEL, VERSIONS = 50, (501, 502)
EXPLICIT_API_LINE = "given explicitly, wins over the url's API https://civitai.com/api/v1/images"


def _days_ago(days: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - days * 86400))


@pytest.fixture
def site(server: FakeCivitai) -> dict[str, int]:
    """Two users' images and videos, in posts, under a model's two versions, of this week or
    older: the ids by name."""
    mp4 = videos.mp4()
    server.add_model(MODEL, list(VERSIONS))
    alice = {"username": "alice", "userId": 41}
    bob = {"username": "bob", "userId": 42}
    items = {
        "alice_new": server.add_image_item(images.jpeg_rgb(), **alice, postId=77, createdAt=_days_ago(1)),
        "alice_old": server.add_image_item(
            images.png_rgb(), **alice, versions=[501], createdAt=_days_ago(90)
        ),
        "alice_video": server.add_image_item(mp4, **alice, type="video", postId=77, createdAt=_days_ago(2)),
        "bob_pony": server.add_image_item(
            images.jpeg_rgb(), **bob, baseModel="Pony", versions=[502], createdAt=_days_ago(3)
        ),
        "bob_old_pony": server.add_image_item(
            images.jpeg_rgb(), **bob, baseModel="Pony", createdAt=_days_ago(30)
        ),
        "bob_video": server.add_image_item(mp4, **bob, type="video", versions=[501], createdAt=_days_ago(1)),
    }
    return {name: item["id"] for name, item in items.items()}


def _listed(server: FakeCivitai, query: dict[str, str]) -> set[int]:
    """The ids the fake lists for ``query``, every page."""
    ids: set[int] = set()
    url: str | None = f"{server.api_url}?{urlencode(query)}"
    while url:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the fake on loopback
            page = json.load(response)
        ids |= {item["id"] for item in page["items"]}
        url = page["metadata"].get("nextPage")
    return ids


@pytest.mark.parametrize(
    ("path", "equivalent", "expected"),
    [
        (
            "/user/alice",
            {"username": "alice", "media": "all", "sort": "Newest"},
            ["alice_new", "alice_old", "alice_video"],
        ),
        ("/user/alice/images", {"username": "alice", "sort": "Newest"}, ["alice_new", "alice_old"]),
        ("/user/bob/videos", {"username": "bob", "media": "video", "sort": "Newest"}, ["bob_video"]),
        (
            "/user-id/42",
            {"user_id": "42", "media": "all", "sort": "Newest"},
            ["bob_pony", "bob_old_pony", "bob_video"],
        ),
        # Without a version: each version's images, one chain each (an image may use both).
        (
            "/models/50/a-slug",
            {"model_id": "50", "media": "all", "sort": "Newest"},
            ["alice_old", "bob_pony", "bob_video"],
        ),
        (
            "/models/50/a-slug?modelVersionId=502",
            {"model_version_id": "502", "media": "all", "sort": "Newest"},
            ["bob_pony"],
        ),
        ("/posts/77/a-slug", {"post_id": "77", "media": "all"}, ["alice_new", "alice_video"]),
        ("/images/{bob_video}", {"image_id": "{bob_video}", "media": "all"}, ["bob_video"]),
        # The feeds: this week's (a new browser's filters), most reacted, with the page's filters.
        ("/images", {"period": "Week"}, ["alice_new", "bob_pony"]),
        (
            "/images?baseModels=Pony&period=Month&view=feed",
            {"base_models": "Pony", "period": "Month"},
            ["bob_pony", "bob_old_pony"],
        ),
        ("/videos", {"period": "Week", "media": "video"}, ["alice_video", "bob_video"]),
        (
            "/images?types=image&types=video&userId=41",
            {"period": "Week", "media": "all", "user_id": "41"},
            ["alice_new", "alice_video"],
        ),
    ],
)
def test_each_page_crawls_what_the_fake_lists_for_its_arguments(
    path: str,
    equivalent: dict[str, str],
    expected: list[str],
    site: dict[str, int],
    server: FakeCivitai,
    store: Path,
) -> None:
    path, equivalent = path.format(**site), {name: value.format(**site) for name, value in equivalent.items()}
    crawl_query = parse_arguments(equivalent)
    chain_queries = crawl_query.chain_queries(VERSIONS if crawl_query.model_id else ())

    result = run_crawl(server, store, f"url=https://civitai.com{path}", **SETTINGS)

    assert result.returncode == 0, result.stderr
    pages = [page.query for page in server.api_requests() if "/images" in page.path]
    assert sorted(pages, key=str) == sorted(chain_queries.values(), key=str)
    listed = set().union(*(_listed(server, query) for query in chain_queries.values()))
    assert sorted(result.ids_recorded()) == sorted(listed) == sorted(site[name] for name in expected)
    # The test's CIVITAI_API_URL (the fake) is given with -s: it wins, and says so.
    assert sum(EXPLICIT_API_LINE in line for line in result.stderr.splitlines()) == 1


def test_an_explicit_argument_wins_with_one_info_line(
    site: dict[str, int], server: FakeCivitai, store: Path
) -> None:
    result = run_crawl(
        server, store, "url=https://civitai.com/user/alice/videos", "media=image", "sort=Oldest"
    )

    assert result.returncode == 0, result.stderr
    [page] = server.api_requests()
    assert {name: page.query.get(name) for name in ("username", "type", "sort")} == {
        "username": "alice",
        "type": "image",
        "sort": "Oldest",
    }
    assert sorted(result.ids_recorded()) == sorted([site["alice_new"], site["alice_old"]])
    [line] = [
        line
        for line in result.stderr.splitlines()
        if "url=https://civitai.com/user/alice/videos asks" in line
    ]
    assert "INFO" in line
    assert line.endswith("asks sort=Newest, media=video; the explicit media=image, sort=Oldest win")


def test_an_explicit_user_replaces_the_pages_user(
    site: dict[str, int], server: FakeCivitai, store: Path
) -> None:
    result = run_crawl(server, store, "url=https://civitai.com/user/alice", "user_id=42", **SETTINGS)

    assert result.returncode == 0, result.stderr
    assert all(
        "username" not in page.query and page.query["userId"] == "42" for page in server.api_requests()
    )
    assert sorted(result.ids_recorded()) == sorted(
        site[name] for name in ("bob_pony", "bob_old_pony", "bob_video")
    )
    assert any(
        line.endswith("asks username=alice; the explicit user_id=42 wins")
        for line in result.stderr.splitlines()
    )


@pytest.mark.parametrize(
    ("address", "named"),
    [
        ("https://example.com/user/alice", "is not an address on Civitai: known are"),
        ("https://civitai.com/articles/12", "is not a page this crawler knows: known are"),
        (
            "https://civitai.com/models/realistic-vision",
            "its model id 'realistic-vision' is not a number: known are",
        ),
        (
            "https://civitai.com/images?followed=true",
            "its filter followed=true is not one the public API can ask",
        ),
        (
            "https://civitai.com/images?collectionId=5",
            "its filter collectionId=5 is not one the public API can ask",
        ),
        ("https://civitai.com/images?sort=Best", "sort='Best' is not valid"),
    ],
)
def test_an_address_it_cannot_crawl_exits_2_before_any_request(
    address: str, named: str, server: FakeCivitai, store: Path
) -> None:
    result = run_crawl(server, store, f"url={address}")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"url={address!r}" in error and named in error
    if "known are" in named:
        assert "/user/<name>/videos" in error and "/models/<id>[/<slug>][?modelVersionId=<id>]" in error
    assert server.requests == []


# --- the host: a .red page is crawled from the .red API, and the key goes nowhere else --------

KEY = "s3cret-key-of-the-test"


def _crawl_through(proxy: RecordingProxy, server: FakeCivitai, store: Path, *arguments: str) -> CrawlResult:
    """``scrapy crawl`` without CIVITAI_API_URL (the project's default, civitai.com), with the
    key, and every https request sent through ``proxy``."""
    command = crawl_command(server, store, *arguments, **SETTINGS)
    at = command.index(f"CIVITAI_API_URL={server.api_url}")
    del command[at - 1 : at + 1]
    environment = {
        name: value
        for name, value in crawl_environment(KEY).items()
        if name.lower() not in ("no_proxy", "all_proxy")
    }
    environment["https_proxy"] = environment["HTTPS_PROXY"] = proxy.url
    process = subprocess.run(
        command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=60
    )
    return CrawlResult(process.returncode, process.stdout, process.stderr, store)


def test_a_red_page_crawls_the_red_api_with_the_key_there_only(
    site: dict[str, int], server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    # The proxy plays civitai.red: each request inside its tunnels is answered by the fake.
    with RecordingProxy(tmp_path / "proxy", forward_to=server.api_url) as proxy:
        result = _crawl_through(proxy, server, store, "url=https://www.civitai.red/models/50/a-slug")

    assert result.returncode == 0, result.stderr
    assert set(proxy.tunnels) == {"civitai.red:443"}
    paths = [urlsplit(request.path).path for request in proxy.requests]
    assert paths[:2] == ["/api/v1/me", "/api/v1/models/50"]
    assert paths[2:] == ["/api/v1/images"] * 2  # one chain per version
    assert all(request.headers["authorization"] == f"Bearer {KEY}" for request in proxy.requests)
    # The media came from the CDN, without the key; nothing else reached the fake.
    assert sorted(result.ids_recorded()) == sorted(
        site[name] for name in ("alice_old", "bob_pony", "bob_video")
    )
    assert server.cdn_requests() and all(
        "authorization" not in request.headers for request in server.cdn_requests()
    )
    assert len(server.api_requests()) == len(proxy.requests)
    assert all(KEY not in str(headers) for headers in proxy.connect_headers)


@pytest.mark.parametrize(
    ("host", "tunnel"), [("civitai.green", "civitai.green:443"), ("civitai.com", "civitai.com:443")]
)
def test_each_host_asks_its_own_api_and_nothing_else(
    host: str, tunnel: str, server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    # Every tunnel refused: the crawl cannot reach any API, and says so.
    with RecordingProxy(tmp_path / "proxy") as proxy:
        result = _crawl_through(proxy, server, store, f"url=http://{host}/user/alice/videos")

    assert result.returncode == 1, result.stderr
    assert result.finish_reason == "api_error"
    assert proxy.tunnels and set(proxy.tunnels) == {tunnel}
    assert all(KEY not in str(headers) for headers in proxy.connect_headers)
    assert server.requests == []
