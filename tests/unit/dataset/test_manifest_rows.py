"""Tests of the manifest's rows: every column typed, junk in the API record a null."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civitai_spider.dataset.manifest import _row_groups
from civitai_spider.dataset.stored import StoredItem
from civitai_spider.manifest_rows import SCHEMA, STAT_COLUMNS, _table, row_of
from tests.support.records import RECORD


def row(record: dict[str, Any], size: int | None = 1234) -> dict[str, Any]:
    """One row as pyarrow reads it back: through the real schema, so types are checked too."""
    values = row_of(record.get("id", 1), record, size)
    table = _table([[value] for value in values])
    return table.to_pylist()[0]


def with_meta(**meta: Any) -> dict[str, Any]:
    return {**RECORD, "meta": meta}


def test_a_whole_record_fills_every_column_with_its_value() -> None:
    assert row(RECORD) == {
        "id": 26962948,
        "file": "26962948.jpg",
        "media": "image",
        "format": "jpg",
        "bytes": 1234,
        "width": 1152,
        "height": 1536,
        "url": RECORD["url"],
        "created_at": datetime.datetime(2024, 8, 31, 1, 11, 47, 21000, tzinfo=datetime.UTC),
        "post_id": 6030721,
        "username": "bolero537",
        "base_model": "SDXL 1.0",
        "nsfw_level": "None",
        "browsing_level": 1,
        "cry_count": 0,
        "laugh_count": 1,
        "like_count": 12,
        "dislike_count": 0,
        "heart_count": 5,
        "comment_count": 0,
        "tags": ["girl", "maid"],
        "prompt": "masterpiece, best quality, girl, maid, tray, tea",
        "negative_prompt": "worst quality, bad anatomy",
        "seed": 3150861441,
        "steps": 20,
        "sampler": "DPM++ 2M Karras",
        "cfg_scale": 7.0,
        "clip_skip": None,
        "model": "boleromix_XL_V1.3",
        "model_hash": "afaf521da2",
        "resources": [
            {"name": "add-detail-xl", "type": "lora", "weight": 1.0, "hash": None},
            {"name": "boleromix_XL_V1.3", "type": "model", "weight": None, "hash": "afaf521da2"},
        ],
        "meta_json": json.dumps(RECORD["meta"], ensure_ascii=False),
    }


def test_the_stats_columns_are_the_six_counts_in_snake_case() -> None:
    assert STAT_COLUMNS == (
        "cry_count",
        "laugh_count",
        "like_count",
        "dislike_count",
        "heart_count",
        "comment_count",
    )


def test_a_video_without_meta_has_null_generation_columns() -> None:
    video = {**RECORD, "type": "video", "meta": None, "image_file": "7.webm", "baseModel": None}
    values = row(video)
    assert (values["media"], values["format"], values["base_model"]) == ("video", "webm", None)
    generation = ("prompt", "negative_prompt", "seed", "steps", "sampler", "cfg_scale", "clip_skip")
    assert all(values[name] is None for name in (*generation, "model", "resources", "meta_json"))


def test_nested_meta_is_flattened_as_the_crawl_reads_it() -> None:
    nested = {**RECORD, "meta": {"id": 26962948, "meta": RECORD["meta"]}}
    assert row(nested) == row(RECORD)


@pytest.mark.parametrize(
    ("meta", "column", "value"),
    [
        # What A1111 exports and Civitai passes on as text.
        ({"Clip skip": "2"}, "clip_skip", 2),
        ({"clipSkip": 1}, "clip_skip", 1),
        ({"steps": "30"}, "steps", 30),
        ({"steps": 25.0}, "steps", 25),
        ({"seed": " 42 "}, "seed", 42),
        ({"seed": -1}, "seed", -1),
        ({"cfgScale": "4.5"}, "cfg_scale", 4.5),
        ({"cfgScale": 3}, "cfg_scale", 3.0),
        ({"hashes": {"model": "0123abcd"}}, "model_hash", "0123abcd"),
        ({"model": "flux1-dev"}, "model", "flux1-dev"),
    ],
)
def test_generation_parameters_written_as_text_or_floats_keep_their_value(
    meta: dict[str, Any], column: str, value: Any
) -> None:
    assert row(with_meta(**meta))[column] == value


JUNK = [
    ("width", "wide"),
    ("width", True),
    ("width", 2**40),
    ("width", 12.5),
    ("height", None),
    ("height", [1]),
    ("createdAt", "yesterday"),
    ("createdAt", 1725066707),
    ("createdAt", "0000-00-00T00:00:00Z"),
    ("postId", "6030721x"),
    ("postId", {"id": 1}),
    ("username", 12),
    ("baseModel", ["SDXL"]),
    ("nsfwLevel", 4),
    ("browsingLevel", "PG"),
    ("url", None),
    ("image_file", 5),
    ("tags", "girl, maid"),
]


@pytest.mark.parametrize(("field", "junk"), JUNK)
def test_junk_in_a_top_level_field_becomes_null(field: str, junk: Any) -> None:
    column = {
        "width": "width",
        "height": "height",
        "createdAt": "created_at",
        "postId": "post_id",
        "username": "username",
        "baseModel": "base_model",
        "nsfwLevel": "nsfw_level",
        "browsingLevel": "browsing_level",
        "url": "url",
        "image_file": "file",
        "tags": "tags",
    }[field]
    values = row({**RECORD, field: junk})
    assert values[column] is None
    assert values["prompt"] == RECORD["meta"]["prompt"]  # the rest of the row is kept


META_JUNK = [
    ("seed", "abc", "seed"),
    ("seed", 2**70, "seed"),
    ("seed", True, "seed"),
    ("seed", 1.5, "seed"),
    ("steps", "many", "steps"),
    ("steps", 2**40, "steps"),
    ("cfgScale", "NaN", "cfg_scale"),
    ("cfgScale", math.inf, "cfg_scale"),
    ("cfgScale", "seven", "cfg_scale"),
    ("cfgScale", False, "cfg_scale"),
    ("sampler", {"name": "Euler"}, "sampler"),
    ("prompt", ["a", "b"], "prompt"),
    ("negativePrompt", 0, "negative_prompt"),
    ("Model", None, "model"),
    ("Model", {"id": 3}, "model"),
    ("Model", {"name": 12}, "model"),
    ("Model hash", 123, "model_hash"),
    ("resources", "add-detail-xl", "resources"),
]


@pytest.mark.parametrize(("key", "junk", "column"), META_JUNK)
def test_junk_in_meta_becomes_null_and_meta_json_keeps_it(key: str, junk: Any, column: str) -> None:
    meta = {**RECORD["meta"], key: junk}
    if key == "Model hash":
        meta.pop("hashes")
    values = row({**RECORD, "meta": meta})
    assert values[column] is None
    kept = json.loads(values["meta_json"])[key]
    assert kept == junk or (isinstance(junk, float) and math.isinf(junk) and math.isinf(kept))


def test_a_model_given_as_an_object_gives_its_name() -> None:
    # Some records carry meta.Model as an object (../shared/docs/civitai-api.md, point 7).
    model = {"name": "ponyDiffusionV6XL", "hash": "67ab2fd8ec"}
    values = row({**RECORD, "meta": {**RECORD["meta"], "Model": model}})
    assert values["model"] == "ponyDiffusionV6XL"
    assert json.loads(values["meta_json"])["Model"] == model


def test_junk_stats_become_null_and_missing_stats_too() -> None:
    values = row({**RECORD, "stats": {"likeCount": "12", "heartCount": None, "cryCount": 1.0, "x": 1}})
    assert (values["like_count"], values["heart_count"], values["cry_count"]) == (12, None, 1)
    assert values["comment_count"] is None
    assert all(row({**RECORD, "stats": "junk"})[name] is None for name in STAT_COLUMNS)


def test_junk_tags_and_resources_keep_what_is_usable() -> None:
    values = row(
        {
            **RECORD,
            "tags": [{"id": 1, "name": "girl"}, {"id": 2}, "maid", 3, None, {"name": ["x"]}],
            "meta": {
                "resources": [
                    {"name": "lora", "type": "lora", "weight": "0.8", "hash": 5},
                    "junk",
                    None,
                    {"weight": "heavy"},
                ]
            },
        }
    )
    assert values["tags"] == ["girl", "maid"]
    assert values["resources"] == [
        {"name": "lora", "type": "lora", "weight": 0.8, "hash": None},
        {"name": None, "type": None, "weight": None, "hash": None},
    ]


def test_meta_that_is_not_an_object_is_kept_as_json_with_null_parameters() -> None:
    values = row({**RECORD, "meta": "Steps: 20, Sampler: Euler"})
    assert values["prompt"] is None
    assert json.loads(values["meta_json"]) == "Steps: 20, Sampler: Euler"


def test_a_lone_surrogate_in_a_prompt_becomes_its_escape_not_a_crash() -> None:
    values = row(with_meta(prompt="cat \ud800 tea", negativePrompt="é"))
    assert values["prompt"] == "cat \\ud800 tea"
    assert values["negative_prompt"] == "é"
    assert json.loads(values["meta_json"])["prompt"] == "cat \ud800 tea"


def test_times_with_an_offset_or_none_are_read_as_utc() -> None:
    assert row({**RECORD, "createdAt": "2024-08-31T03:11:47+02:00"})["created_at"] == datetime.datetime(
        2024, 8, 31, 1, 11, 47, tzinfo=datetime.UTC
    )
    assert row({**RECORD, "createdAt": "2024-08-31 01:11:47"})["created_at"] == datetime.datetime(
        2024, 8, 31, 1, 11, 47, tzinfo=datetime.UTC
    )


def test_rows_go_out_in_row_groups_of_the_given_size() -> None:
    items = (StoredItem(image_id, {**RECORD, "id": image_id}, b"", 10) for image_id in range(1, 26))
    groups = list(_row_groups(items, 10))
    assert [group.num_rows for group in groups] == [10, 10, 5]
    assert [image_id for group in groups for image_id in group.column("id").to_pylist()] == list(range(1, 26))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    ["width", "height", "createdAt", "postId", "username", "baseModel", "nsfwLevel", "browsingLevel"]
    + ["url", "type", "stats", "tags", "meta", "image_file"]
)
_META_KEYS = st.sampled_from(
    ["prompt", "negativePrompt", "seed", "steps", "sampler", "cfgScale", "clipSkip", "Clip skip"]
    + ["Model", "model", "Model hash", "hashes", "resources"]
)


@settings(max_examples=300, deadline=None)
@given(
    record=st.dictionaries(_FIELDS, _JSON, max_size=8),
    meta=st.none() | st.dictionaries(_META_KEYS, _JSON, max_size=8),
)
def test_any_json_in_any_field_gives_a_row_of_the_schema(record: dict[str, Any], meta: Any) -> None:
    if meta is not None:
        record["meta"] = meta
    table = _table([[value] for value in row_of(7, record, None)])
    assert table.schema == SCHEMA
    assert table.num_rows == 1 and table.column("id").to_pylist() == [7]
    assert pa.Table.from_pylist(table.to_pylist(), schema=SCHEMA).equals(table)
