"""Tests of :mod:`civitai_spider.query`: spider arguments into the API queries of a crawl's chains."""

from __future__ import annotations

import pytest
from scrapy.settings import Settings

from civitai_spider.query import CrawlQuery, api_url, parse_arguments, parse_split, split_query

DEFAULT_QUERY = {
    "limit": "200",
    "withMeta": "true",
    "flatMeta": "true",
    "sort": "Most Reactions",
    "period": "AllTime",
    "type": "image",
}


def test_defaults() -> None:
    assert parse_arguments({}) == CrawlQuery(DEFAULT_QUERY, (), None, None, ("image",))


def test_every_argument_maps_to_its_api_name() -> None:
    crawl_query = parse_arguments(
        {
            "limit": "50",
            "sort": "Newest",
            "period": "Week",
            "nsfw": "X",
            "username": "bolero_537",
            "model_id": "4201",
            "model_version_id": "788385",
            "post_id": "6030721",
            "user_id": "41",
            "image_id": "26962948",
            "tags": " 5133, 4,,0012 ",
            "media": "video",
            "base_models": " SDXL 1.0 , Pony,,Flux.1 D ",
            "max_pages": "3",
            "stop_after_seen": "20",
        }
    )
    assert crawl_query.query == {
        "limit": "50",
        "withMeta": "true",
        "flatMeta": "true",
        "sort": "Newest",
        "period": "Week",
        "nsfw": "X",
        "type": "video",
        "username": "bolero_537",
        "userId": "41",
        "modelId": "4201",
        "modelVersionId": "788385",
        "postId": "6030721",
        "imageId": "26962948",
        "tags": "5133,4,12",
        "baseModels": "SDXL 1.0,Pony,Flux.1 D",
    }
    assert crawl_query.max_pages == 3
    assert crawl_query.stop_after_seen == 20
    assert crawl_query.media_types == ("video",)


def test_media_all_sends_no_type() -> None:
    crawl_query = parse_arguments({"media": "all"})
    assert "type" not in crawl_query.query
    assert crawl_query.media_types == ("image", "video")


@pytest.mark.parametrize("level", ["1", "28", "31"])
def test_browsing_level_is_sent_instead_of_nsfw(level: str) -> None:
    query = parse_arguments({"browsing_level": level, "nsfw": "None"}).query
    assert query["browsingLevel"] == level and "nsfw" not in query


@pytest.mark.parametrize("limit", ["1", "200"])
def test_limit_bounds_are_allowed(limit: str) -> None:
    assert parse_arguments({"limit": limit}).query["limit"] == limit


@pytest.mark.parametrize(
    "arguments, name, value, allowed",
    [
        ({"sort": "Best"}, "sort", "'Best'", "'Most Reactions'"),
        ({"sort": "newest"}, "sort", "'newest'", "'Newest'"),
        ({"period": "Decade"}, "period", "'Decade'", "'AllTime'"),
        ({"nsfw": "Maybe"}, "nsfw", "'Maybe'", "'Mature'"),
        ({"nsfw": ""}, "nsfw", "''", "'Soft'"),
        ({"limit": "0"}, "limit", "'0'", "1 to 200"),
        ({"limit": "201"}, "limit", "'201'", "1 to 200"),
        ({"limit": "x"}, "limit", "'x'", "1 to 200"),
        ({"limit": "-5"}, "limit", "'-5'", "1 to 200"),
        ({"username": "a b"}, "username", "'a b'", "letters, digits and _"),
        ({"username": "../x"}, "username", "'../x'", "letters, digits and _"),
        ({"username": ""}, "username", "''", "letters, digits and _"),
        ({"model_id": "-1"}, "model_id", "'-1'", "an integer from 1 to 2147483647"),
        ({"model_id": "x"}, "model_id", "'x'", "an integer from 1 to 2147483647"),
        ({"model_version_id": "1.5"}, "model_version_id", "'1.5'", "positive integer"),
        ({"post_id": "0"}, "post_id", "'0'", "positive integer"),
        ({"max_pages": "0"}, "max_pages", "'0'", "positive integer"),
        ({"sort": "Newest", "stop_after_seen": "0"}, "stop_after_seen", "'0'", "positive integer"),
        ({"sort": "Newest", "stop_after_seen": "-2"}, "stop_after_seen", "'-2'", "positive integer"),
        ({"sort": "Newest", "stop_after_seen": "ten"}, "stop_after_seen", "'ten'", "positive integer"),
        ({"sort": "Newest", "stop_after_seen": "2.5"}, "stop_after_seen", "'2.5'", "positive integer"),
        ({"user_id": "x"}, "user_id", "'x'", "positive integer"),
        ({"image_id": "-2"}, "image_id", "'-2'", "positive integer"),
        ({"tags": "cats"}, "tags", "'cats'", "comma-separated tag ids"),
        ({"tags": "1,0"}, "tags", "'1,0'", "comma-separated tag ids"),
        ({"tags": "1;2"}, "tags", "'1;2'", "comma-separated tag ids"),
        ({"tags": ""}, "tags", "''", "comma-separated tag ids"),
        ({"browsing_level": "0"}, "browsing_level", "'0'", "1 to 31, a sum of PG=1"),
        ({"browsing_level": "64"}, "browsing_level", "'64'", "1 to 31, a sum of PG=1"),
        ({"browsing_level": "X"}, "browsing_level", "'X'", "1 to 31, a sum of PG=1"),
        ({"browsing_level": "32"}, "browsing_level", "'32'", "the Blocked level (32), which the API never"),
        ({"browsing_level": "63"}, "browsing_level", "'63'", "the Blocked level (32), which the API never"),
        ({"model_id": "2147483648"}, "model_id", "'2147483648'", "an integer from 1 to 2147483647"),
        ({"media": "images"}, "media", "'images'", "'image', 'video', 'all'"),
        ({"media": "audio"}, "media", "'audio'", "'image', 'video', 'all'"),
        ({"base_models": ""}, "base_models", "''", "comma-separated"),
        ({"base_models": " , "}, "base_models", "' , '", "comma-separated"),
    ],
)
def test_bad_values_are_rejected_naming_the_value(
    arguments: dict[str, str], name: str, value: str, allowed: str
) -> None:
    with pytest.raises(ValueError) as caught:
        parse_arguments(arguments)
    message = str(caught.value)
    assert f"{name}={value}" in message
    assert allowed in message


@pytest.mark.parametrize("value", ["1", "50"])
def test_stop_after_seen_with_newest(value: str) -> None:
    crawl_query = parse_arguments({"sort": "Newest", "stop_after_seen": value})
    assert crawl_query.stop_after_seen == int(value)
    assert "stop_after_seen" not in crawl_query.query  # the API never hears of it


@pytest.mark.parametrize("sort", [None, "Most Reactions", "Oldest", "Random"])
def test_stop_after_seen_requires_sort_newest(sort: str | None) -> None:
    arguments = {"stop_after_seen": "5"} if sort is None else {"sort": sort, "stop_after_seen": "5"}
    with pytest.raises(ValueError) as caught:
        parse_arguments(arguments)
    message = str(caught.value)
    assert "stop_after_seen='5'" in message and "requires sort='Newest'" in message
    assert repr(sort or "Most Reactions") in message


def test_sort_error_lists_every_allowed_value() -> None:
    with pytest.raises(ValueError) as caught:
        parse_arguments({"sort": "Best"})
    for sort in ("Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random"):
        assert repr(sort) in str(caught.value)


# --- split ---------------------------------------------------------------------------------


QUERY = {"limit": "200", "sort": "Newest", "type": "image"}


def test_without_split_there_is_one_chain_the_query_as_given() -> None:
    assert split_query(QUERY, ()) == {"all": QUERY}


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ({"nsfw": "X"}, ["1", "2", "4", "8", "16"]),
        ({"nsfw": "Soft"}, ["1", "2"]),
        ({}, ["1"]),  # the API lists PG only without nsfw or browsingLevel
        ({"browsingLevel": "12"}, ["4", "8"]),
        ({"browsingLevel": "31"}, ["1", "2", "4", "8", "16"]),
        # nsfw=true is R, X and XXX to the server (nsfwBrowsingLevelsFlag less Blocked): no PG, no PG13.
        ({"nsfw": "true"}, ["4", "8", "16"]),
        ({"nsfw": "false"}, ["1"]),
    ],
)
def test_split_by_browsing_level_makes_one_chain_per_level(
    levels: dict[str, str], expected: list[str]
) -> None:
    chains = split_query({**QUERY, **levels}, ("browsing_level",))
    assert list(chains) == [f"browsingLevel={level}" for level in expected]
    for level, query in zip(expected, chains.values(), strict=True):
        assert query == {**QUERY, "browsingLevel": level}  # nsfw is not sent beside it


def test_split_by_base_models_and_media_makes_every_combination() -> None:
    query = {**QUERY, "baseModels": "SDXL 1.0,Pony"}
    del query["type"]  # media=all
    chains = split_query(query, ("base_models", "media"))
    assert list(chains) == [
        "baseModels=SDXL 1.0&type=image",
        "baseModels=SDXL 1.0&type=video",
        "baseModels=Pony&type=image",
        "baseModels=Pony&type=video",
    ]
    assert chains["baseModels=Pony&type=video"] == {**query, "baseModels": "Pony", "type": "video"}


def test_split_by_media_of_one_type_is_one_chain() -> None:
    assert list(split_query(QUERY, ("media",))) == ["type=image"]


def test_a_model_crawl_has_a_chain_per_version_without_model_id() -> None:
    # modelVersionId goes through the search index, which knows no modelId.
    query = {**QUERY, "modelId": "7", "nsfw": "Soft"}
    assert split_query(query, (), (31, 30)) == {
        "modelVersionId=31": {**QUERY, "nsfw": "Soft", "modelVersionId": "31"},
        "modelVersionId=30": {**QUERY, "nsfw": "Soft", "modelVersionId": "30"},
    }


def test_a_model_crawl_splits_each_version() -> None:
    query = {**QUERY, "modelId": "7", "nsfw": "Soft"}
    chains = split_query(query, ("browsing_level",), (31, 30))
    assert list(chains) == [
        "modelVersionId=31&browsingLevel=1",
        "modelVersionId=31&browsingLevel=2",
        "modelVersionId=30&browsingLevel=1",
        "modelVersionId=30&browsingLevel=2",
    ]
    assert chains["modelVersionId=30&browsingLevel=2"] == {
        **QUERY,
        "modelVersionId": "30",
        "browsingLevel": "2",
    }


def test_split_by_base_models_needs_base_models() -> None:
    with pytest.raises(ValueError, match="split=base_models needs base_models="):
        split_query(QUERY, ("base_models",))


def test_parse_split() -> None:
    assert parse_split(" media, browsing_level,media ") == ("media", "browsing_level")
    with pytest.raises(
        ValueError,
        match=r"split='levels' is not valid: 'levels' is not one of browsing_level, base_models, media",
    ):
        parse_split("levels")
    with pytest.raises(ValueError, match="split=',' is empty"):
        parse_split(",")


# --- url: a Civitai page as the defaults of the other arguments ------------------------------


def test_url_arguments_are_the_query() -> None:
    by_url = parse_arguments({"url": "https://civitai.red/user/bolero_537/videos"})
    explicit = parse_arguments({"username": "bolero_537", "media": "video", "sort": "Newest"})
    assert by_url.query == explicit.query
    assert by_url.media_types == ("video",)
    assert by_url.address_api_url == "https://civitai.red/api/v1/images"
    assert by_url.address_overridden is None


def test_without_url_there_is_no_address_api() -> None:
    assert parse_arguments({"username": "alice"}).address_api_url is None


@pytest.mark.parametrize(
    ("explicit", "query", "note"),
    [
        (
            {"media": "image"},
            {"username": "foo", "type": "image", "sort": "Newest"},
            "url=https://civitai.com/user/foo/videos asks media=video; the explicit media=image wins",
        ),
        (
            {"sort": "Oldest", "period": "Year"},
            {"username": "foo", "type": "video", "sort": "Oldest", "period": "Year"},
            "url=https://civitai.com/user/foo/videos asks sort=Newest, period=AllTime; "
            "the explicit period=Year, sort=Oldest win",
        ),
        # username and user_id name the same user: the explicit one replaces the page's.
        (
            {"user_id": "7"},
            {"userId": "7", "type": "video"},
            "url=https://civitai.com/user/foo/videos asks username=foo; the explicit user_id=7 wins",
        ),
        ({"username": "bar"}, {"username": "bar"}, "asks username=foo; the explicit username=bar wins"),
        # What the page does not say is added, with no line.
        ({"nsfw": "X", "base_models": "Pony"}, {"username": "foo", "nsfw": "X", "baseModels": "Pony"}, None),
    ],
)
def test_an_explicit_argument_wins_over_the_url(
    explicit: dict[str, str], query: dict[str, str], note: str | None
) -> None:
    crawl_query = parse_arguments({"url": "https://civitai.com/user/foo/videos", **explicit})
    assert {name: crawl_query.query.get(name) for name in query} == query
    assert "userId" not in query or "username" not in crawl_query.query
    if note is None:
        assert crawl_query.address_overridden is None
    else:
        assert crawl_query.address_overridden is not None and note in crawl_query.address_overridden


def test_an_explicit_model_version_replaces_the_model_page() -> None:
    crawl_query = parse_arguments({"url": "https://civitai.com/models/12/x", "model_version_id": "34"})
    assert crawl_query.query["modelVersionId"] == "34" and "modelId" not in crawl_query.query
    assert crawl_query.model_id is None


def test_a_bad_value_in_the_url_names_the_url() -> None:
    with pytest.raises(
        ValueError, match=r"^url='https://civitai.com/images\?sort=Best': sort='Best' is not valid"
    ):
        parse_arguments({"url": "https://civitai.com/images?sort=Best"})
    with pytest.raises(ValueError, match="model_id='9999999999' is not valid"):
        parse_arguments({"url": "https://civitai.com/models/9999999999"})


def test_stop_after_seen_works_with_a_user_page_newest_first() -> None:
    assert (
        parse_arguments({"url": "https://civitai.com/user/foo", "stop_after_seen": "5"}).stop_after_seen == 5
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "https://civitai.red/api/v1/images"),  # the project's default: the address wins
        ({"cmdline": "http://127.0.0.1:9/api/v1/images"}, "http://127.0.0.1:9/api/v1/images"),
        ({"spider": "https://civitai.red/api/v1/images"}, "https://civitai.red/api/v1/images"),
    ],
)
def test_api_url_is_the_url_host_unless_given_explicitly(given: dict[str, str], expected: str) -> None:
    settings = Settings({"CIVITAI_API_URL": "https://civitai.com/api/v1/images"}, priority="project")
    for priority, value in given.items():
        settings.set("CIVITAI_API_URL", value, priority=priority)
    assert api_url(settings, parse_arguments({"url": "https://civitai.red/images/5"})) == expected
    # Without url, the setting as it is.
    assert api_url(settings, parse_arguments({})) == settings.get("CIVITAI_API_URL")
