"""Tests of :mod:`civitai_spider.site_url`: a Civitai page's address as spider arguments and API."""

from __future__ import annotations

import pytest

from civitai_spider.site_url import FORMS, parse_address

COM, RED, GREEN = (f"https://civitai.{tld}/api/v1/images" for tld in ("com", "red", "green"))
NEWEST = {"sort": "Newest", "period": "AllTime"}
FEED = {"sort": "Most Reactions", "period": "Week"}


@pytest.mark.parametrize(
    ("address", "arguments"),
    [
        # A user's page and its tabs: newest first, as the tabs are (UserMediaInfinite).
        ("https://civitai.com/user/bolero_537", {**NEWEST, "username": "bolero_537", "media": "all"}),
        ("https://civitai.com/user/bolero_537/", {**NEWEST, "username": "bolero_537", "media": "all"}),
        (
            "https://civitai.com/user/bolero_537/images",
            {**NEWEST, "username": "bolero_537", "media": "image"},
        ),
        (
            "https://civitai.com/user/bolero_537/videos",
            {**NEWEST, "username": "bolero_537", "media": "video"},
        ),
        ("https://civitai.com/user-id/41", {**NEWEST, "user_id": "41", "media": "all"}),
        # A model page: every version without ?modelVersionId=, that version with it.
        ("https://civitai.com/models/4201", {**NEWEST, "model_id": "4201", "media": "all"}),
        ("https://civitai.com/models/4201/realistic-vision", {**NEWEST, "model_id": "4201", "media": "all"}),
        (
            "https://civitai.com/models/4201/realistic-vision?modelVersionId=788385",
            {**NEWEST, "model_version_id": "788385", "media": "all"},
        ),
        (
            "https://civitai.com/models/4201?modelVersionId=788385",
            {**NEWEST, "model_version_id": "788385", "media": "all"},
        ),
        # Repeated, the first is the page's (router.query.modelVersionId[0]).
        (
            "https://civitai.com/models/4201?modelVersionId=5&modelVersionId=6&highlight=9",
            {**NEWEST, "model_version_id": "5", "media": "all"},
        ),
        ("https://civitai.com/posts/6030721", {"post_id": "6030721", "media": "all"}),
        ("https://civitai.com/posts/6030721/a-slug", {"post_id": "6030721", "media": "all"}),
        # One image (an image id can be a video's): navigation parameters change nothing.
        ("https://civitai.com/images/26962948", {"image_id": "26962948", "media": "all"}),
        (
            "https://civitai.com/images/26962948?postId=6030721&period=Day",
            {"image_id": "26962948", "media": "all"},
        ),
        # The feeds with a new browser's filters, and with their own.
        ("https://civitai.com/images", {**FEED, "media": "image"}),
        ("https://civitai.com/videos", {**FEED, "media": "video"}),
        (
            "https://civitai.com/images?sort=Newest&period=Month&baseModels=SDXL+1.0&baseModels=Pony"
            "&tags=5133&tags=4&types=video&types=image&view=feed&limit=50&withMeta=false&utm_source=x",
            {
                "sort": "Newest",
                "period": "Month",
                "media": "all",
                "base_models": "SDXL 1.0,Pony",
                "tags": "5133,4",
            },
        ),
        (
            "https://civitai.com/images?tags=[5133,4]&followed=false",
            {**FEED, "media": "image", "tags": "5133,4"},
        ),
        (
            "https://civitai.com/images?username=alice&userId=7&modelId=3&modelVersionId=4&postId=5",
            {**FEED, "media": "image", "username": "alice", "user_id": "7", "model_id": "3"}
            | {"model_version_id": "4", "post_id": "5"},
        ),
        # /videos forces types=['video'] (src/pages/videos/index.tsx).
        (
            "https://civitai.com/videos?types=image&period=Day",
            {"sort": "Most Reactions", "period": "Day", "media": "video"},
        ),
        # A tab takes the feed's filters too; its types override the tab's.
        (
            "https://civitai.com/user/alice/images?sort=Most%20Reactions&types=video&periodMode=published",
            {"sort": "Most Reactions", "period": "AllTime", "media": "video", "username": "alice"},
        ),
    ],
)
def test_each_page_is_its_arguments(address: str, arguments: dict[str, str]) -> None:
    page = parse_address(address)
    assert page.arguments == arguments
    assert page.api_url == COM


@pytest.mark.parametrize(
    ("address", "api_url"),
    [
        ("https://civitai.com/images/5", COM),
        ("http://civitai.com/images/5", COM),
        ("https://www.civitai.com/images/5", COM),
        ("civitai.com/images/5", COM),
        ("https://civitai.red/images/5", RED),
        ("http://www.civitai.red/images/5", RED),
        ("https://CIVITAI.RED/images/5", RED),
        ("https://civitai.green/images/5", GREEN),
        ("https://www.civitai.green/images/5", GREEN),
    ],
)
def test_the_host_names_the_api(address: str, api_url: str) -> None:
    page = parse_address(address)
    assert page.api_url == api_url
    assert page.arguments == {"image_id": "5", "media": "all"}


@pytest.mark.parametrize(
    "address",
    [
        "https://example.com/user/alice",
        "https://civitai.com.evil.example/user/alice",
        "https://image.civitai.com/images/5",
        "https://civitai.com:8443/images/5",
        "https://user@civitai.com/images/5",
        "ftp://civitai.com/images/5",
        "https://civitai.com/",
        "https://civitai.com/articles/5",
        "https://civitai.com/user/alice/models",
        "https://civitai.com/models/4201/edit",
        "https://civitai.com/posts/6030721/edit",
        "https://civitai.com/images/5/extra",
        "not an address",
    ],
)
def test_an_address_it_does_not_know_is_one_line_with_the_forms(address: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_address(address)
    message = str(error.value)
    assert "\n" not in message
    assert f"url={address!r}" in message
    assert all(form in message for form in FORMS)


@pytest.mark.parametrize(
    ("address", "named"),
    [
        ("https://civitai.com/models/abc", "model id 'abc' is not a number"),
        ("https://civitai.com/models/0", "model id '0' is not a number"),
        ("https://civitai.com/models/12?modelVersionId=x1", "modelVersionId 'x1' is not a number"),
        ("https://civitai.com/posts/-3", "post id '-3'"),
        ("https://civitai.com/images/1e3", "image id '1e3'"),
        ("https://civitai.com/user-id/alice@example.com", "user id 'alice@example.com'"),
        ("https://civitai.com/images?tags=landscape", "tag id 'landscape'"),
        ("https://civitai.com/images?userId=seven", "userId 'seven'"),
        ("https://civitai.com/user/bad-name", "user name 'bad-name'"),
    ],
)
def test_a_bad_id_in_a_known_form_is_named(address: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_address(address)


@pytest.mark.parametrize(
    "filter_",
    [
        "followed=true",
        "withMeta=true",
        "hidden=1",
        "requiringMeta=true",
        "includePG13=true",
        "collectionId=12",
        "tools=3",
        "techniques=4",
        "reactions=Like",
        "remixOfId=9",
        "prioritizedUserIds=5",
        "periodMode=stats",
        "section=reactions",
        "types=audio",
    ],
)
def test_a_feed_filter_the_api_cannot_ask_is_refused_by_name(filter_: str) -> None:
    # Dropped, it would crawl more than the page shows.
    with pytest.raises(ValueError) as error:
        parse_address(f"https://civitai.com/images?{filter_}")
    assert f"its filter {filter_} " in str(error.value)
    assert "\n" not in str(error.value)
