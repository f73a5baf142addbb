"""The filters before download, end to end: ``scrapy crawl civitai`` with the size, aspect ratio,
level and prompt settings against the fake Civitai. What a filter drops is never requested from
the CDN, is counted under its own reason and in the closing summary, and saved + dropped + failed
is still the number of items listed; a bad value ends the command before any request."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.support import images
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai
from tests.support.workers import Workers

API_KEY = "civitai-test-key-filters"
#: label -> (width, height, browsing level, prompt) of the records the fake lists. The filters
#: read the record, not the file: the files are small JPEGs whatever the record says.
CATALOGUE: dict[str, tuple[Any, Any, int, str]] = {
    "square": (1024, 1024, 1, "portrait of a woman, smiling"),
    "tall": (1152, 1536, 4, "Portrait, oil painting"),  # exactly 3:4
    "wide": (1536, 1152, 2, "portrait photo, red   hair"),  # exactly 4:3
    "small": (768, 768, 1, "portrait"),
    "thin": (1024, 2048, 1, "portrait"),
    "huge": (4096, 4096, 1, "portrait"),
    "x": (1024, 1024, 8, "portrait"),
    "xxx": (1024, 1024, 16, "portrait"),
    "landscape": (1024, 1024, 1, "a landscape at dawn"),
    "portraiture": (1024, 1024, 1, "portraiture study"),
    "blurry": (1024, 1024, 1, "portrait, blurry"),
    "no_size": (None, None, 1, "portrait"),
}
SDXL_SET = {
    "CIVITAI_MIN_WIDTH": "1024",
    "CIVITAI_MIN_HEIGHT": "1024",
    "CIVITAI_MIN_ASPECT_RATIO": "3:4",
    "CIVITAI_MAX_ASPECT_RATIO": "4:3",
    "CIVITAI_PROMPT_INCLUDE": "portrait",
    "CIVITAI_NSFW_LEVELS": "None,Soft,Mature",
}


@pytest.fixture
def catalogue(server: FakeCivitai) -> dict[str, dict[str, Any]]:
    return {
        label: server.add_image_item(
            images.jpeg_rgb(), width=width, height=height, level=level, prompt=prompt
        )
        for label, (width, height, level, prompt) in CATALOGUE.items()
    }


def dropped_stats(stats: dict[str, Any]) -> dict[str, int]:
    return {key.removeprefix("civitai/dropped/"): value for key, value in stats.items() if "/dropped/" in key}


@pytest.mark.parametrize(
    ("settings", "drops"),
    [
        pytest.param(
            {"CIVITAI_MIN_WIDTH": "1024", "CIVITAI_MIN_HEIGHT": "1024", "CIVITAI_MAX_PIXELS": "4194304"},
            {"small": "too_small", "huge": "too_large", "no_size": "no_size"},
            id="size",
        ),
        pytest.param(
            {"CIVITAI_MIN_ASPECT_RATIO": "0.75", "CIVITAI_MAX_ASPECT_RATIO": "4:3"},
            {"thin": "aspect_ratio", "no_size": "no_size"},
            id="aspect_ratio",
        ),
        pytest.param(
            {"CIVITAI_NSFW_LEVELS": "None,Soft,Mature"}, {"x": "nsfw_level", "xxx": "nsfw_level"}, id="names"
        ),
        pytest.param({"CIVITAI_NSFW_LEVELS": "15"}, {"xxx": "nsfw_level"}, id="browsing_levels"),
        pytest.param(
            {"CIVITAI_PROMPT_INCLUDE": "portrait"},
            {"landscape": "prompt_lacks", "portraiture": "prompt_lacks"},
            id="include",
        ),
        pytest.param(
            {"CIVITAI_PROMPT_EXCLUDE": "re:blurr(y|ed),dawn"},
            {"blurry": "prompt_excluded", "landscape": "prompt_excluded"},
            id="exclude",
        ),
        pytest.param(
            {"CIVITAI_PROMPT_INCLUDE": "Portrait", "CIVITAI_PROMPT_CASE_SENSITIVE": "true"},
            {label: "prompt_lacks" for label in CATALOGUE if label != "tall"},
            id="case_sensitive",
        ),
        pytest.param(
            SDXL_SET,
            {
                "small": "too_small",
                "thin": "aspect_ratio",
                "x": "nsfw_level",
                "xxx": "nsfw_level",
                "landscape": "prompt_lacks",
                "portraiture": "prompt_lacks",
                "no_size": "no_size",
            },
            id="sdxl_training_set",
        ),
    ],
)
def test_each_filter_drops_before_any_download_with_its_reason(
    server: FakeCivitai,
    store: Path,
    catalogue: dict[str, dict[str, Any]],
    settings: dict[str, str],
    drops: dict[str, str],
) -> None:
    result = run_crawl(server, store, "nsfw=X", api_key=API_KEY, **settings)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.finish_reason == "finished"
    kept = {label: item for label, item in catalogue.items() if label not in drops}
    ids = {item["id"] for item in kept.values()}
    assert set(result.ids_recorded()) == ids
    assert {path.name for path in store.glob("*.jpg")} == {f"{image_id}.jpg" for image_id in ids}
    assert sorted(request.path for request in server.cdn_requests()) == sorted(
        urlsplit(item["url"]).path for item in kept.values()
    )
    stats = result.stats
    expected: dict[str, int] = {}
    for reason in drops.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert dropped_stats(stats) == expected
    assert (
        stats["civitai/saved"] + sum(expected.values()) + stats.get("civitai/failed", 0)
        == (stats["civitai/items_seen"])
    )
    assert stats["civitai/items_seen"] == len(CATALOGUE)
    [summary] = [line for line in result.stderr.splitlines() if "Crawl ended (finished)" in line]
    for reason, count in expected.items():
        assert re.search(rf"\b{reason} {count}\b", summary), summary
    # One DEBUG line per dropped item, naming why (the level of the thresholds' drops).
    dropped_lines = [line for line in result.stderr.splitlines() if "Dropped: image" in line]
    assert len(dropped_lines) == len(drops) and all("DEBUG" in line for line in dropped_lines)


def test_drop_lines_say_which_bound_an_item_failed(
    server: FakeCivitai, store: Path, catalogue: dict[str, dict[str, Any]]
) -> None:
    result = run_crawl(server, store, "nsfw=X", api_key=API_KEY, **SDXL_SET)

    lines = {line.split("Dropped: ", 1)[1] for line in result.stderr.splitlines() if "Dropped: " in line}
    assert f"image {catalogue['small']['id']}: width 768 < 1024 (CIVITAI_MIN_WIDTH)" in lines
    assert (
        f"image {catalogue['thin']['id']}: aspect ratio 1024:2048 (0.5) < 0.75 (CIVITAI_MIN_ASPECT_RATIO)"
        in lines
    )
    assert (
        f"image {catalogue['xxx']['id']}: nsfwLevel 'X', browsingLevel 16 (not in CIVITAI_NSFW_LEVELS)"
        in lines
    )
    assert (
        f"image {catalogue['portraiture']['id']}: prompt lacks 'portrait' (CIVITAI_PROMPT_INCLUDE)" in lines
    )


def test_stop_after_seen_counts_only_the_items_that_pass(server: FakeCivitai, store: Path) -> None:
    # Newest first: a new image, then old ones already downloaded with small ones between them
    # that were never downloaded because the filter drops them. The streak skips those: the
    # crawl is caught up after the third old one, not reset by each small one.
    def add(width: int) -> dict[str, Any]:
        return server.add_image_item(images.jpeg_rgb(), width=width, height=1024)

    new, *rest = [add(width) for width in (1024, 1024, 512, 1024, 512, 1024, 512, 1024, 1024)]
    old = [item for item in rest if item["width"] == 1024]
    store.mkdir()
    (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{item['id']}\n" for item in old))

    result = run_crawl(server, store, "sort=Newest", "stop_after_seen=3", "limit=9", CIVITAI_MIN_WIDTH="1024")

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.finish_reason == "caught_up"
    assert [request.path for request in server.cdn_requests()] == [urlsplit(new["url"]).path]
    assert result.stats["civitai/dropped/too_small"] == 3


def test_a_shared_crawl_queues_only_what_passes(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    items = [
        server.add_image_item(images.jpeg_rgb(), level=level, width=width, height=1024)
        for level in (1, 2, 4, 8, 16)
        for width in (512, 1024, 1024)
    ]
    kept = [item for item in items if item["browsingLevel"] <= 4 and item["width"] == 1024]
    workers = Workers(
        server,
        store,
        redis_url,
        tmp_path / "logs",
        CIVITAI_MIN_WIDTH="1024",
        CIVITAI_NSFW_LEVELS="None,Soft,Mature",
    )
    try:
        workers.start(1)
        [result] = workers.wait(timeout=60)
    finally:
        workers.kill()

    assert (result.returncode, result.finish_reason) == (0, "finished"), result.stderr[-3000:]
    assert sorted(request.path for request in server.cdn_requests()) == sorted(
        urlsplit(item["url"]).path for item in kept
    )
    assert sorted(path.name for path in store.glob("*.jpg")) == sorted(f"{item['id']}.jpg" for item in kept)
    shared = shared_counts(redis_url)
    assert shared["queued"] == shared["saved"] == len(kept) == 6
    assert shared["dropped/nsfw_level"] == 6  # checked first: the small X and XXX ones too
    assert shared["dropped/too_small"] == 3
    assert (
        shared["saved"] + shared["dropped/nsfw_level"] + shared["dropped/too_small"] == shared["items_seen"]
    )


def shared_counts(redis_url: str) -> dict[str, int]:
    """The crawl-wide counts of the one shared crawl in Redis."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        [key] = client.keys("civitai:crawl:*:1:stats")
        return {name: int(value) for name, value in client.hgetall(key).items()}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"CIVITAI_MIN_WIDTH": "-1"}, "CIVITAI_MIN_WIDTH='-1' is not valid: allowed is an integer >= 0"),
        ({"CIVITAI_MAX_ASPECT_RATIO": "wide"}, "CIVITAI_MAX_ASPECT_RATIO='wide' is not valid (not a number"),
        (
            {"CIVITAI_PROMPT_INCLUDE": "re:(portrait"},
            "CIVITAI_PROMPT_INCLUDE='re:(portrait' is not valid ('re:(portrait' is not a regular expression: "
            "missing ), unterminated subpattern at position 0)",
        ),
        ({"CIVITAI_NSFW_LEVELS": "PG13"}, "CIVITAI_NSFW_LEVELS='PG13' is not valid (unknown level 'PG13')"),
        (
            {"CIVITAI_MIN_HEIGHT": "2048", "CIVITAI_MAX_HEIGHT": "1024"},
            "CIVITAI_MIN_HEIGHT='2048' is above CIVITAI_MAX_HEIGHT='1024': no item could pass",
        ),
    ],
    ids=["negative", "ratio", "regex", "level", "min_above_max"],
)
def test_a_bad_filter_value_exits_2_before_any_request(
    server: FakeCivitai, store: Path, settings: dict[str, str], named: str
) -> None:
    server.add_image_item(images.jpeg_rgb())

    result = run_crawl(server, store, **settings)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert named in error
    assert server.requests == []
