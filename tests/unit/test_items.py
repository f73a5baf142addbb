"""Tests of :meth:`CivitaiImage.from_api`: what a usable API record is, and how junk is neutralised."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from scrapy import Request

from civitai_spider.items import STAT_NAMES, CivitaiImage, InvalidApiItem, media_of

URL = "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/69bf3279/original=true/69bf3279.jpeg"


def full_record() -> dict[str, Any]:
    """A record as Civitai sends it (see docs/civitai-api.md), plus a key we do not know."""
    return {
        "id": 26962948,
        "url": URL,
        "hash": "ULN0-w?b4nRjxGM{-;t7M_t7NGae~qRjMyt7",
        "width": 1152,
        "height": 1536,
        "nsfwLevel": "None",
        "type": "image",
        "nsfw": False,
        "browsingLevel": 1,
        "createdAt": "2024-08-31T01:11:47.021Z",
        "postId": 6030721,
        "stats": {
            "cryCount": 0,
            "laughCount": 1,
            "likeCount": 12,
            "dislikeCount": 3,
            "heartCount": 5,
            "commentCount": 7,
        },
        "meta": {
            "prompt": "masterpiece, best quality, girl, maid, tray, tea",
            "negativePrompt": "worst quality, bad anatomy",
            "seed": 3150861441,
            "hashes": {"model": "afaf521da2"},
        },
        "username": "bolero537",
        "baseModel": "SDXL 1.0",
        "modelVersionIds": [788385],
        "someFutureField": {"x": 1},
    }


class _Missing:
    """A field value meaning "leave the key out of the record"."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def record_with(**changes: Any) -> dict[str, Any]:
    record = full_record()
    record.update(changes)
    return {key: value for key, value in record.items() if value is not MISSING}


def test_full_record_maps_every_field() -> None:
    record = full_record()
    item = CivitaiImage.from_api(record)
    assert item.id == 26962948
    assert item.url == URL
    assert item.width == 1152
    assert item.height == 1536
    assert item.type == "image"
    assert item.nsfw_level == "None"
    assert item.browsing_level == 1
    assert item.created_at == "2024-08-31T01:11:47.021Z"
    assert item.post_id == 6030721
    assert item.username == "bolero537"
    assert item.base_model == "SDXL 1.0"
    assert item.stats == {
        "cryCount": 0,
        "laughCount": 1,
        "likeCount": 12,
        "dislikeCount": 3,
        "heartCount": 5,
        "commentCount": 7,
    }
    assert item.meta == record["meta"]
    assert item.images == []
    assert item.image_file is None


def test_api_item_is_the_record_itself_and_image_urls_is_the_url() -> None:
    record = full_record()
    untouched = copy.deepcopy(record)
    item = CivitaiImage.from_api(record)
    assert item.api_item is record
    assert record == untouched  # from_api does not change the record
    assert item.image_urls == [URL]


def test_prompt_properties() -> None:
    item = CivitaiImage.from_api(full_record())
    assert item.prompt == "masterpiece, best quality, girl, maid, tray, tea"
    assert item.negative_prompt == "worst quality, bad anatomy"


def test_prompt_properties_without_meta_or_keys() -> None:
    assert CivitaiImage.from_api(record_with(meta=None)).prompt is None
    assert CivitaiImage.from_api(record_with(meta=None)).negative_prompt is None
    item = CivitaiImage.from_api(record_with(meta={"seed": 1}))
    assert item.prompt is None
    assert item.negative_prompt is None


@pytest.mark.parametrize(
    "image_id",
    [0, -5, "../../x", "123", 1.0, True, False, None, [1], {"id": 1}, MISSING],
    ids=repr,
)
def test_invalid_id_is_rejected(image_id: Any) -> None:
    with pytest.raises(InvalidApiItem) as caught:
        CivitaiImage.from_api(record_with(id=image_id))
    assert caught.value.reason == "invalid_id"


def test_invalid_item_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="'../../x'"):
        CivitaiImage.from_api(record_with(id="../../x"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "javascript:alert(1)",
        "http://",
        "https://",
        "image.civitai.com/a.jpeg",
        "",
        None,
        12,
        ["http://a/b"],
        MISSING,
    ],
    ids=repr,
)
def test_invalid_url_is_rejected(url: Any) -> None:
    with pytest.raises(InvalidApiItem) as caught:
        CivitaiImage.from_api(record_with(url=url))
    assert caught.value.reason == "invalid_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:99999/x.jpeg",
        "https://image.civitai.com:-1/a.jpeg",
        "https://image.civitai.com/\ud800.jpeg",
        "https://\udfff/a.jpeg",
    ],
    ids=repr,
)
def test_url_that_no_request_can_be_made_of_is_rejected(url: str) -> None:
    # urlsplit() takes these, but Scrapy's Request (w3lib) refuses them: a traceback in the
    # images pipeline and no error_log.txt line, found by tests/e2e/test_crawl_hostile_items.py.
    with pytest.raises(ValueError):
        Request(url)
    with pytest.raises(InvalidApiItem) as caught:
        CivitaiImage.from_api(record_with(url=url))
    assert caught.value.reason == "invalid_url"


def test_plain_http_url_is_accepted() -> None:
    assert (
        CivitaiImage.from_api(record_with(url="http://127.0.0.1:8080/a.png")).url
        == "http://127.0.0.1:8080/a.png"
    )


@pytest.mark.parametrize("record", [None, [], "x", 42, [{"id": 1, "url": URL}]], ids=repr)
def test_not_a_dict_is_rejected(record: Any) -> None:
    with pytest.raises(InvalidApiItem) as caught:
        CivitaiImage.from_api(record)
    assert caught.value.reason == "invalid_item"


@pytest.mark.parametrize(
    "junk",
    ["12", None, True, False, float("nan"), float("inf"), float("-inf"), {"n": 3}, [3]],
    ids=repr,
)
def test_junk_stat_counts_become_zero(junk: Any) -> None:
    stats = {name: 9 for name in STAT_NAMES}
    stats["likeCount"] = junk
    item = CivitaiImage.from_api(record_with(stats=stats))
    assert item.stats["likeCount"] == 0
    assert type(item.stats["likeCount"]) is int
    assert item.stats["heartCount"] == 9


def test_float_stat_counts_are_truncated() -> None:
    item = CivitaiImage.from_api(record_with(stats={"heartCount": 3.9, "likeCount": 2.0}))
    assert item.stats["heartCount"] == 3
    assert item.stats["likeCount"] == 2
    assert all(type(value) is int for value in item.stats.values())


@pytest.mark.parametrize("stats", ["missing", None, "junk", [1, 2], {}], ids=repr)
def test_missing_or_junk_stats_give_all_six_zero(stats: Any) -> None:
    record = full_record()
    if stats == "missing":
        del record["stats"]
    else:
        record["stats"] = stats
    assert CivitaiImage.from_api(record).stats == {name: 0 for name in STAT_NAMES}


def test_unknown_stats_are_not_kept() -> None:
    item = CivitaiImage.from_api(record_with(stats={"heartCount": 4, "viewCount": 1000}))
    assert set(item.stats) == set(STAT_NAMES)


@pytest.mark.parametrize("meta", [None, "prompt text", ["a"], 3], ids=repr)
def test_meta_that_is_not_a_dict_becomes_none(meta: Any) -> None:
    assert CivitaiImage.from_api(record_with(meta=meta)).meta is None


def test_nested_meta_is_unwrapped_and_the_record_kept_as_received() -> None:
    # Civitai's older query path answers {"id": <image id>, "meta": {...}} without flatMeta.
    nested = {"id": 26962948, "meta": {"prompt": "a cat", "negativePrompt": "blurry"}}
    item = CivitaiImage.from_api(record_with(meta=nested))
    assert item.meta == {"prompt": "a cat", "negativePrompt": "blurry"}
    assert (item.prompt, item.negative_prompt) == ("a cat", "blurry")
    assert item.api_item["meta"] is nested


@pytest.mark.parametrize("inner", [None, "text", [1]], ids=repr)
def test_nested_meta_without_a_dict_inside_is_none(inner: Any) -> None:
    assert CivitaiImage.from_api(record_with(meta={"id": 1, "meta": inner})).meta is None


def test_flat_meta_with_keys_named_id_and_meta_among_others_stays_flat() -> None:
    flat = {"id": 1, "meta": {"x": 1}, "prompt": "a cat"}
    assert CivitaiImage.from_api(record_with(meta=flat)).meta == flat


def test_media_of() -> None:
    assert media_of(CivitaiImage.from_api(record_with(type="video"))) == "video"
    assert media_of(CivitaiImage.from_api(record_with())) == "image"
    assert media_of({"type": "audio"}) == "image"


def test_junk_optional_fields_become_neutral_values() -> None:
    item = CivitaiImage.from_api(
        record_with(
            width="1152", height=1.5, type=None, nsfwLevel=3, browsingLevel=True,
            createdAt=None, postId="6030721", username=["x"], baseModel=None,
        )
    )  # fmt: skip
    assert (item.width, item.height, item.browsing_level, item.post_id) == (None, None, None, None)
    assert item.type == "image"
    assert (item.nsfw_level, item.created_at, item.username, item.base_model) == (None, None, None, None)


def test_video_type_is_kept() -> None:
    assert CivitaiImage.from_api(record_with(type="video")).type == "video"
