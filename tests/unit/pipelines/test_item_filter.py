"""Tests of :class:`ItemFilterPipeline` built from the settings: reaction minimums and the prompt
requirement (the newer filters, level, size and prompt words: ``tests/unit/test_item_filter.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy.settings import Settings

from civitai_spider.items import STAT_NAMES, CivitaiImage
from civitai_spider.outcomes import DropImage
from civitai_spider.pipelines.item_filter import ItemFilterPipeline
from civitai_spider.setting_rules import check_settings
from tests.support.crawls import project_crawler

_UNSET = object()


def make_item(stats: dict[str, Any] | None = None, meta: Any = _UNSET) -> CivitaiImage:
    record: dict[str, Any] = {
        "id": 7,
        "url": "https://image.civitai.com/k/u/original=true/u.jpeg",
        "stats": stats if stats is not None else {},
    }
    if meta is not _UNSET:
        record["meta"] = meta
    else:
        record["meta"] = {"prompt": "a cat in a teacup"}
    return CivitaiImage.from_api(record)


def pipeline(**settings: Any) -> ItemFilterPipeline:
    return ItemFilterPipeline.from_crawler(project_crawler(**settings))


def dropped_reason(pipe: ItemFilterPipeline, item: CivitaiImage) -> str:
    with pytest.raises(DropImage) as caught:
        pipe.process_item(item)
    return caught.value.reason


# --- thresholds ------------------------------------------------------------------------


def test_default_thresholds_need_two_hearts() -> None:
    pipe = pipeline()
    assert pipe.item_filter.minimums == {"heartCount": 2}
    assert dropped_reason(pipe, make_item({"heartCount": 1, "likeCount": 1000})) == "below_threshold"
    item = make_item({"heartCount": 2})
    assert pipe.process_item(item) is item


def test_drop_message_names_the_stat() -> None:
    with pytest.raises(DropImage, match="heartCount 1 < 2") as caught:
        pipeline().process_item(make_item({"heartCount": 1}))
    assert caught.value.log_level == "DEBUG"


def test_every_listed_stat_must_pass() -> None:
    pipe = pipeline(CIVITAI_THRESHOLDS={"likeCount": 10, "heartCount": 3})
    assert pipe.process_item(make_item({"likeCount": 10, "heartCount": 3})) is not None
    assert pipe.process_item(make_item({"likeCount": 50, "heartCount": 30})) is not None
    assert dropped_reason(pipe, make_item({"likeCount": 9, "heartCount": 30})) == "below_threshold"
    assert dropped_reason(pipe, make_item({"likeCount": 50, "heartCount": 2})) == "below_threshold"


def test_an_unlisted_stat_is_not_checked() -> None:
    pipe = pipeline(CIVITAI_THRESHOLDS={"likeCount": 1})
    item = make_item({"likeCount": 1})  # heartCount 0, everything else 0
    assert pipe.process_item(item) is item


def test_empty_thresholds_pass_all_zero_stats() -> None:
    pipe = pipeline(CIVITAI_THRESHOLDS={})
    item = make_item({})
    assert item.stats == {name: 0 for name in STAT_NAMES}
    assert pipe.process_item(item) is item


def test_missing_stat_in_a_plain_dict_item_counts_as_zero() -> None:
    pipe = pipeline(CIVITAI_THRESHOLDS={"likeCount": 1}, CIVITAI_REQUIRE_PROMPT=False)
    with pytest.raises(DropImage):
        pipe.process_item({"id": 1, "stats": {}, "meta": None})
    assert pipe.process_item({"id": 1, "stats": {"likeCount": 1}, "meta": None}) is not None


def test_json_text_from_the_command_line_is_parsed() -> None:
    pipe = pipeline(CIVITAI_THRESHOLDS='{"likeCount": 10}')
    assert pipe.item_filter.minimums == {"likeCount": 10}
    assert dropped_reason(pipe, make_item({"likeCount": 9, "heartCount": 100})) == "below_threshold"
    assert pipe.process_item(make_item({"likeCount": 10})) is not None


def test_unknown_stat_name_is_rejected_with_the_allowed_names() -> None:
    with pytest.raises(ValueError) as caught:
        check_settings(Settings({"CIVITAI_THRESHOLDS": {"hearts": 2}}))
    message = str(caught.value)
    assert "'hearts'" in message
    for name in STAT_NAMES:
        assert name in message


def test_the_settings_check_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="viewCount"):
        check_settings(Settings({"CIVITAI_THRESHOLDS": '{"viewCount": 1}'}))
    with pytest.raises(ValueError, match="viewCount"):
        check_settings(project_crawler(CIVITAI_THRESHOLDS={"viewCount": 1}).settings)


@pytest.mark.parametrize("minimum", ["10", 2.5, True, None, [1]], ids=repr)
def test_non_integer_minimum_is_rejected(minimum: Any) -> None:
    with pytest.raises(ValueError, match="likeCount"):
        check_settings(Settings({"CIVITAI_THRESHOLDS": {"likeCount": minimum}}))


def test_threshold_text_that_is_not_json_is_rejected() -> None:
    with pytest.raises(ValueError, match="CIVITAI_THRESHOLDS"):
        check_settings(Settings({"CIVITAI_THRESHOLDS": "likeCount=10"}))


# --- prompt requirement ----------------------------------------------------------------


def test_meta_none_is_dropped_as_no_meta() -> None:
    assert dropped_reason(pipeline(), make_item({"heartCount": 5}, meta=None)) == "no_meta"


def test_missing_meta_is_dropped_as_no_meta() -> None:
    item = make_item({"heartCount": 5})
    item.meta = None
    assert dropped_reason(pipeline(), item) == "no_meta"


@pytest.mark.parametrize(
    "meta",
    [
        {"prompt": ""},
        {"prompt": "   \n\t"},
        {"seed": 1},
        {"prompt": None},
        {"prompt": 42},
        {"prompt": ["a"]},
        {},
    ],
    ids=repr,
)
def test_empty_or_missing_prompt_is_dropped_as_no_prompt(meta: dict[str, Any]) -> None:
    assert dropped_reason(pipeline(), make_item({"heartCount": 5}, meta=meta)) == "no_prompt"


def test_thresholds_are_checked_before_the_prompt() -> None:
    assert dropped_reason(pipeline(), make_item({"heartCount": 0}, meta=None)) == "below_threshold"


@pytest.mark.parametrize("require", [False, "False", "0", "false"], ids=repr)
@pytest.mark.parametrize("meta", [None, {"prompt": ""}, {"prompt": 42}, {}], ids=repr)
def test_prompt_not_required(require: Any, meta: Any) -> None:
    pipe = pipeline(CIVITAI_REQUIRE_PROMPT=require)
    item = make_item({"heartCount": 5}, meta=meta)
    assert pipe.process_item(item) is item


def test_prompt_with_text_passes() -> None:
    item = make_item({"heartCount": 2}, meta={"prompt": "  masterpiece  "})
    assert pipeline().process_item(item) is item
