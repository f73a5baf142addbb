"""Tests of :mod:`civitai_spider.chains`: the ``split`` argument and the chains it makes."""

from __future__ import annotations

import pytest

from civitai_spider.chains import crawl_end, cursor_of, parse_split, split_query

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


def test_crawl_end() -> None:
    assert crawl_end(["end", "caught_up"]) is None
    assert crawl_end(["caught_up", "caught_up"]) == "caught_up"
    assert crawl_end(["end", "cursor_loop", "caught_up"]) == "cursor_loop"
    assert crawl_end(["max_pages"]) is None


def test_cursor_of() -> None:
    assert cursor_of("http://x/api/v1/images?limit=2&cursor=2%7C17") == "2|17"
    assert cursor_of("http://x/api/v1/images?limit=2") is None
    assert cursor_of(None) is None
