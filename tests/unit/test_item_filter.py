"""Tests of :mod:`civitai_spider.item_filter`: the filters before download (level, size, aspect
ratio, prompt words) and the parsers of their settings. The reaction thresholds and the prompt
requirement, through the pipeline: ``tests/unit/pipelines/test_item_filter.py``."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from civitai_spider.item_filter import (
    ItemFilter,
    aspect_ratio,
    nsfw_levels,
    prompt_patterns,
    text_list,
)
from civitai_spider.items import CivitaiImage
from civitai_spider.outcomes import DropImage
from tests.support.crawls import project_crawler


def make_item(
    width: Any = 1024, height: Any = 1024, level: int = 1, name: str = "None", prompt: Any = "a portrait"
) -> CivitaiImage:
    return CivitaiImage.from_api(
        {
            "id": 7,
            "url": "https://image.civitai.com/k/u/original=true/u.jpeg",
            "width": width,
            "height": height,
            "nsfwLevel": name,
            "browsingLevel": level,
            "stats": {"heartCount": 5},
            "meta": {"prompt": prompt},
        }
    )


def item_filter(**settings: Any) -> ItemFilter:
    """The filter of a crawl with the project's settings and ``settings`` (as ``-s`` gives them)."""
    return ItemFilter.build(project_crawler(**settings).settings)


def outcome(check: ItemFilter, item: Any) -> str:
    """``passed``, or the reason ``check`` drops ``item`` for."""
    try:
        check.check(item)
    except DropImage as drop:
        return drop.reason
    return "passed"


def message(check: ItemFilter, item: Any) -> str:
    with pytest.raises(DropImage) as caught:
        check.check(item)
    assert caught.value.log_level == "DEBUG"  # as the thresholds' drops: a filter's work is no news
    return str(caught.value)


# --- off by default ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        make_item(width=None, height=None),
        make_item(width=1, height=100_000),
        make_item(level=16, name="X"),
        make_item(prompt="anything at all"),
    ],
    ids=["no size", "thin", "xxx", "prompt"],
)
def test_by_default_no_new_filter_drops_anything(item: CivitaiImage) -> None:
    assert outcome(item_filter(), item) == "passed"


# --- size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "width", "height", "expected"),
    [
        ({"CIVITAI_MIN_WIDTH": "1024"}, 1024, 10, "passed"),  # bounds are inclusive
        ({"CIVITAI_MIN_WIDTH": "1024"}, 1023, 5000, "too_small"),
        ({"CIVITAI_MAX_WIDTH": "1024"}, 1025, 10, "too_large"),
        ({"CIVITAI_MIN_HEIGHT": "768"}, 5000, 767, "too_small"),
        ({"CIVITAI_MAX_HEIGHT": "768"}, 10, 769, "too_large"),
        ({"CIVITAI_MIN_PIXELS": "1048576"}, 1024, 1024, "passed"),
        ({"CIVITAI_MIN_PIXELS": "1048576"}, 2048, 511, "too_small"),
        ({"CIVITAI_MAX_PIXELS": "1048576"}, 1024, 1025, "too_large"),
        ({"CIVITAI_MIN_ASPECT_RATIO": "0.75"}, 750, 1000, "passed"),
        ({"CIVITAI_MIN_ASPECT_RATIO": "0.75"}, 749, 1000, "aspect_ratio"),
        ({"CIVITAI_MAX_ASPECT_RATIO": "4:3"}, 1024, 768, "passed"),  # exactly 4:3
        ({"CIVITAI_MAX_ASPECT_RATIO": "1.33"}, 1024, 768, "aspect_ratio"),  # 1.3333 > 1.33
        ({"CIVITAI_MIN_ASPECT_RATIO": "2:3"}, 832, 1248, "passed"),  # 832/1248 as a float is below 2/3
        ({"CIVITAI_MAX_ASPECT_RATIO": "16/9"}, 1921, 1080, "aspect_ratio"),
        ({"CIVITAI_MIN_WIDTH": "0", "CIVITAI_MAX_PIXELS": "0"}, 1, 1, "passed"),  # 0 is off
    ],
)
def test_size_bounds(settings: dict[str, str], width: int, height: int, expected: str) -> None:
    assert outcome(item_filter(**settings), make_item(width, height)) == expected


@pytest.mark.parametrize(
    ("width", "height"),
    [(None, 768), (1024, None), (None, None), (0, 768), (1024, -1), ("1024", 768), (1024.0, 768), (True, 1)],
    ids=repr,
)
@pytest.mark.parametrize(
    "setting", ["CIVITAI_MIN_WIDTH", "CIVITAI_MAX_HEIGHT", "CIVITAI_MAX_PIXELS", "CIVITAI_MIN_ASPECT_RATIO"]
)
def test_an_item_without_a_size_is_dropped_as_no_size_once_any_size_bound_is_set(
    setting: str, width: Any, height: Any
) -> None:
    check = item_filter(**{setting: "1"})
    assert outcome(check, make_item(width, height)) == "no_size"
    assert outcome(item_filter(), make_item(width, height)) == "passed"


def test_size_messages_name_the_value_the_bound_and_the_setting() -> None:
    assert message(item_filter(CIVITAI_MIN_WIDTH="1024"), make_item(512, 2000)) == (
        "image 7: width 512 < 1024 (CIVITAI_MIN_WIDTH)"
    )
    assert message(item_filter(CIVITAI_MAX_PIXELS="1000000"), make_item(1024, 1024)) == (
        "image 7: pixels 1048576 > 1000000 (CIVITAI_MAX_PIXELS)"
    )
    assert message(item_filter(CIVITAI_MAX_ASPECT_RATIO="4:3"), make_item(1920, 1080)) == (
        "image 7: aspect ratio 1920:1080 (1.778) > 1.333 (CIVITAI_MAX_ASPECT_RATIO)"
    )
    assert message(item_filter(CIVITAI_MIN_HEIGHT="1"), make_item(None, 5)) == (
        "image 7: no width and height in its record (Nonex5)"
    )


# --- nsfw level -------------------------------------------------------------------------------

#: An image of each browsing level, with the nsfwLevel the server serves it with.
LEVELS = {"PG": (1, "None"), "PG13": (2, "Soft"), "R": (4, "Mature"), "X": (8, "X"), "XXX": (16, "X")}


@pytest.mark.parametrize(
    ("levels", "kept"),
    [
        ("None", {"PG"}),
        ("None,Soft,Mature", {"PG", "PG13", "R"}),  # "no X": X and XXX are both "X"
        ("X", {"X", "XXX"}),
        ("none, SOFT", {"PG", "PG13"}),  # names in any case
        ("15", {"PG", "PG13", "R", "X"}),  # a browsing-level sum: all but XXX
        ("16", {"XXX"}),
        ("1,16", {"PG", "XXX"}),
        ("Soft,8", {"PG13", "X"}),  # names and numbers together
        ('["Mature", 1]', {"PG", "R"}),  # a JSON list
    ],
)
def test_nsfw_levels_keep_the_named_levels_and_the_browsing_levels(levels: str, kept: set[str]) -> None:
    check = item_filter(CIVITAI_NSFW_LEVELS=levels)
    outcomes = {
        label: outcome(check, make_item(level=level, name=name)) for label, (level, name) in LEVELS.items()
    }
    assert {label for label, result in outcomes.items() if result == "passed"} == kept
    assert set(outcomes.values()) <= {"passed", "nsfw_level"}


def test_nsfw_levels_from_settings_py_as_a_list() -> None:
    check = item_filter(CIVITAI_NSFW_LEVELS=["None", 2])
    assert outcome(check, make_item(level=2, name="Soft")) == "passed"
    assert outcome(check, make_item(level=4, name="Mature")) == "nsfw_level"


def test_an_item_without_a_level_is_dropped_when_levels_are_set() -> None:
    item = make_item()
    item.nsfw_level, item.browsing_level = None, None
    assert outcome(item_filter(CIVITAI_NSFW_LEVELS="None,31"), item) == "nsfw_level"
    assert message(item_filter(CIVITAI_NSFW_LEVELS="None"), make_item(level=8, name="X")) == (
        "image 7: nsfwLevel 'X', browsingLevel 8 (not in CIVITAI_NSFW_LEVELS)"
    )


def test_an_unrated_image_is_none_by_name_and_no_browsing_level() -> None:
    unrated = make_item(level=0, name="None")  # how the server serves level 0
    assert outcome(item_filter(CIVITAI_NSFW_LEVELS="None"), unrated) == "passed"
    assert outcome(item_filter(CIVITAI_NSFW_LEVELS="31"), unrated) == "nsfw_level"


# --- prompt words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "prompt", "found"),
    [
        ("cat", "a cat, sitting", True),
        ("cat", "Cat", True),  # case-insensitive by default
        ("cat", "category", False),  # a word is not inside another word
        ("cat", "bobcat", False),
        ("cat", "cat_ears", False),  # nor joined to one by an underscore
        ("cat", "(cat:1.2)", True),  # A1111 weights and brackets are not word characters
        ("1girl", "1girl, solo", True),
        ("red hair", "long red   hair", True),  # a phrase: any white space between its words
        ("red hair", "red\nhair", True),
        ("red hair", "red, hair", False),
        ("c++", "code in c++ here", True),  # symbols are matched as they are
        ("café", "un CAFÉ noir", True),  # words are Unicode words
        ("少女", "少女, 猫", True),
        ("re:smil(e|ing)", "smiling girl", True),  # a regular expression, anywhere
        ("re:\\bcat\\b", "category", False),
        ("re:^masterpiece", "best quality, masterpiece", False),
        ("re:[0-9]{2,}", "seed 42", True),
    ],
)
def test_prompt_entries_match_words_as_words_and_regular_expressions_as_given(
    entry: str, prompt: str, found: bool
) -> None:
    [each] = prompt_patterns([entry])
    assert (each.pattern.search(prompt) is not None) == found


def test_case_sensitive_matching() -> None:
    [word, expression] = prompt_patterns(["Portrait", "re:NSFW"], case_sensitive=True)
    assert word.pattern.search("a Portrait") and not word.pattern.search("a portrait")
    assert expression.pattern.search("NSFW") and not expression.pattern.search("nsfw")
    [inline] = prompt_patterns(["re:(?-i:NSFW)"])  # an expression can also say so itself
    assert inline.pattern.search("NSFW") and not inline.pattern.search("nsfw")


def test_every_included_entry_must_be_there_and_no_excluded_one() -> None:
    check = item_filter(
        CIVITAI_PROMPT_INCLUDE="portrait,re:smil(e|ing)", CIVITAI_PROMPT_EXCLUDE="nsfw,re:\\bnude"
    )
    assert outcome(check, make_item(prompt="Portrait of a smiling woman")) == "passed"
    assert outcome(check, make_item(prompt="portrait of a woman")) == "prompt_lacks"
    assert outcome(check, make_item(prompt="a smiling woman")) == "prompt_lacks"
    assert outcome(check, make_item(prompt="portrait, smile, NSFW")) == "prompt_excluded"
    assert outcome(check, make_item(prompt="portrait, smile, nudes")) == "prompt_excluded"
    assert outcome(check, make_item(prompt="portrait, smile, nsfw_tag")) == "passed"


def test_prompt_messages_name_the_entry_and_what_matched() -> None:
    check = item_filter(CIVITAI_PROMPT_INCLUDE="portrait", CIVITAI_PROMPT_EXCLUDE="re:nud(e|ity)")
    assert message(check, make_item(prompt="a cat")) == (
        "image 7: prompt lacks 'portrait' (CIVITAI_PROMPT_INCLUDE)"
    )
    assert message(check, make_item(prompt="portrait, Nudity")) == (
        "image 7: prompt has 'Nudity' ('re:nud(e|ity)' of CIVITAI_PROMPT_EXCLUDE)"
    )


@pytest.mark.parametrize("prompt", [None, "", 42])
def test_an_item_without_a_prompt_lacks_every_included_word_and_has_no_excluded_one(prompt: Any) -> None:
    settings = {"CIVITAI_REQUIRE_PROMPT": "false"}
    assert outcome(item_filter(CIVITAI_PROMPT_INCLUDE="portrait", **settings), make_item(prompt=prompt)) == (
        "prompt_lacks"
    )
    assert outcome(item_filter(CIVITAI_PROMPT_EXCLUDE="portrait", **settings), make_item(prompt=prompt)) == (
        "passed"
    )


def test_the_prompt_is_matched_as_received() -> None:
    # The A1111 syntax is not cleaned first: "(portrait:1.2)" still holds the word portrait,
    # and "<lora:nsfw_style:0.8>" holds nsfw_style, not the word nsfw.
    check = item_filter(CIVITAI_PROMPT_INCLUDE="portrait", CIVITAI_PROMPT_EXCLUDE="nsfw")
    assert outcome(check, make_item(prompt="(portrait:1.2), <lora:nsfw_style:0.8>")) == "passed"
    assert outcome(check, make_item(prompt="(portrait:1.2), <lora:nsfw:0.8>")) == "prompt_excluded"


# --- the order of the checks ------------------------------------------------------------------


def test_the_first_failing_check_names_the_reason() -> None:
    check = item_filter(
        CIVITAI_NSFW_LEVELS="None", CIVITAI_MIN_WIDTH="1024", CIVITAI_PROMPT_INCLUDE="portrait"
    )
    everything_wrong = make_item(width=10, level=8, name="X", prompt="a cat")
    everything_wrong.stats["heartCount"] = 0
    assert outcome(check, everything_wrong) == "below_threshold"
    everything_wrong.stats["heartCount"] = 5
    assert outcome(check, everything_wrong) == "nsfw_level"
    everything_wrong.nsfw_level, everything_wrong.browsing_level = "None", 1
    assert outcome(check, everything_wrong) == "too_small"
    everything_wrong.width = 2048
    assert outcome(check, everything_wrong) == "prompt_lacks"


def test_a_plain_dict_item_is_checked_too() -> None:
    check = item_filter(CIVITAI_MIN_WIDTH="100", CIVITAI_NSFW_LEVELS="None", CIVITAI_REQUIRE_PROMPT="false")
    assert outcome(check, {"id": 1, "stats": {"heartCount": 2}, "width": 50, "height": 50}) == "nsfw_level"
    item = {"id": 1, "stats": {"heartCount": 2}, "width": 500, "height": 50, "nsfw_level": "None"}
    assert outcome(check, item) == "passed"


# --- the parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        (None, []),
        ("", []),
        ("a, b ,c,", ["a", "b", "c"]),
        ('["a, b", "re:x{1,3}"]', ["a, b", "re:x{1,3}"]),  # JSON for an entry with a comma
        (["a", " b "], ["a", "b"]),
        ((1, "x"), ["1", "x"]),
    ],
)
def test_text_list_reads_a_list_json_or_commas(value: Any, entries: list[str]) -> None:
    assert text_list(value) == entries


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('["a"', "not a JSON list"),
        ('["a", {}]', "{} is not text"),
        (["a", ""], "an empty entry"),
        ([True], "True is not text"),
        ({"a"}, "not a list"),
    ],
)
def test_text_list_refuses(value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        text_list(value)


def test_nsfw_levels_none_when_empty() -> None:
    assert nsfw_levels("") is None and nsfw_levels([]) is None
    levels = nsfw_levels("x,7,8")
    assert levels is not None and levels.names == {"X"} and levels.browsing_levels == 15


@pytest.mark.parametrize(
    ("value", "ratio"),
    [("0", None), (0, None), (None, None), ("1.33", Fraction(133, 100)), ("4:3", Fraction(4, 3))]
    + [("4/3", Fraction(4, 3)), (0.75, Fraction(3, 4)), (" 16:9 ", Fraction(16, 9)), (2, Fraction(2))],
)
def test_aspect_ratio_reads_numbers_and_w_h(value: Any, ratio: Fraction | None) -> None:
    assert aspect_ratio(value) == ratio


@pytest.mark.parametrize("value", ["x", "4:0", "-1", "-4:3", "inf", "nan", True, [1]], ids=repr)
def test_aspect_ratio_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        aspect_ratio(value)
