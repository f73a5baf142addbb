"""Property-based tests: any JSON value in any field of an API record is handled.

Whatever the API sends, an item is either built (with a positive integer id, so its files
are named ``<id>...`` inside ``IMAGES_STORE``) or refused with a reason; writing its
metadata never fails and never names a file outside the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from itemadapter import ItemAdapter

from civitai_spider.items import CivitaiImage, InvalidApiItem
from civitai_spider.pipelines.metadata import metadata_files

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(["../../x", "/etc/passwd", "1e3", "", "\ud800", "1.jpg\x00", "-1"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["id", "url", "stats", "meta", "type", "width", "height", "nsfwLevel", "createdAt", "postId"]
RECORDS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON_VALUES, max_size=8)
# Records that pass the id and url checks, so that everything after them is exercised too.
USABLE_RECORDS = st.builds(
    lambda record, image_id, url: {**record, "id": image_id, "url": url},
    RECORDS,
    st.integers(min_value=1, max_value=10**30),
    st.sampled_from(["https://image.civitai.com/k/u/original=true/u.jpeg", "http://127.0.0.2:8/x.jpeg"]),
)


def _check(record: Any, store: Path) -> None:
    try:
        item = CivitaiImage.from_api(record)
    except InvalidApiItem as refused:
        assert refused.reason in ("invalid_item", "invalid_id", "invalid_url") and str(refused)
        return
    assert type(item.id) is int and item.id > 0
    item.image_file = f"{item.id}.jpg"
    files = metadata_files(ItemAdapter(item))
    for name, data in files.items():
        assert (store / name).resolve().parent == store.resolve()
        assert name.startswith(f"{item.id}_") and isinstance(data, bytes)
    meta_json = json.loads(files[f"{item.id}_meta.json"])
    assert meta_json["id"] == item.id and meta_json["image_file"] == f"{item.id}.jpg"


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON_VALUES, RECORDS))
def test_any_json_value_is_an_item_or_a_clear_refusal(record: Any) -> None:
    _check(record, Path("/store"))


@settings(max_examples=300, deadline=None)
@given(USABLE_RECORDS)
def test_junk_in_any_other_field_still_gives_safe_metadata_files(record: dict[str, Any]) -> None:
    _check(record, Path("/store"))
