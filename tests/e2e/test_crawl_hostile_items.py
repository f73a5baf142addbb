"""End to end, property-based: hostile API items never crash a real crawl nor write outside the store.

Each hypothesis example is one list of items (valid Civitai items with fields deleted or
replaced by any JSON value, and non-object items) served by one fake Civitai and crawled by
one real ``scrapy crawl civitai`` subprocess, run from a fresh temporary folder so that a
relative path escape would land where the test looks. After each crawl: a clean finish, no
traceback nor ERROR line, every
file inside ``IMAGES_STORE`` with a known name, the outcome stats adding up, and every
recorded id a positive integer with its complete set of files.

Run alone with ``pytest -m heavy tests/e2e/test_crawl_hostile_items.py``; a failing example is
kept in hypothesis' database (``.hypothesis/``) and replayed first on the next run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from civitai_spider.items import STAT_NAMES
from civitai_spider.pipelines.manifest import CRAWL_PART_NAME, MANIFEST_FOLDER
from tests.support import images
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment
from tests.support.fake_civitai import FakeCivitai

ID_FILE_NAME = "downloaded_image_ID_DB.txt"  # CIVITAI_ID_FILE's default, inside the store
STORE_FILE_PATTERNS = [
    re.compile(r"[1-9]\d*\.(jpg|png|mp4|webm|mkv)"),
    re.compile(r"[1-9]\d*_(pos-prompt|neg-prompt)\.txt"),
    re.compile(r"[1-9]\d*_meta\.json"),
    re.compile(re.escape(ID_FILE_NAME)),
    re.compile(r"error_log\.txt"),
    re.compile(r"DecompressionBombWarning_log\.txt"),
]
#: Every ``civitai/dropped/<reason>`` a crawl may count; "other" would be an unexpected DropItem.
DROP_REASONS = {
    "invalid_item",
    "invalid_id",
    "invalid_url",
    "video",
    "audio",
    "unknown_type",
    "below_threshold",
    "no_meta",
    "no_prompt",
    "already_downloaded",
    "duplicate",
}
INVALID_REASONS = ("invalid_item", "invalid_id", "invalid_url")
#: Caches that pytest, hypothesis, ruff and mypy keep in the repository while this test runs.
REPOSITORY_CACHES = {".hypothesis", ".mypy_cache", ".pytest_cache", ".ruff_cache", "__pycache__"}
SERIOUS_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(?P<logger>[^\]]+)\] (?:ERROR|CRITICAL): (?P<message>.*)$",
    re.MULTILINE,
)
BODIES = {"jpeg": images.jpeg_rgb(), "png": images.png_rgb()}
EXTENSIONS = {"jpeg": "jpg", "png": "png"}


# --- Placeholders, replaced by their value when the items are served ----------------------
# URLs exist only once the fake server runs; a 100 KB string would make hypothesis print
# (and warn about) a megabyte for each example.
@dataclass(frozen=True)
class CdnUrl:
    """``<the fake CDN>/<path>``: a host that answers, with a path that may serve nothing."""

    path: str


@dataclass(frozen=True)
class ApiUrl:
    """The API's own URL as an image URL: it answers JSON, not an image."""


@dataclass(frozen=True)
class Huge:
    """``text`` repeated 100,000 times (100 KB or more)."""

    text: str


@dataclass(frozen=True)
class UrlOfItem:
    """The URL of another valid item (``index`` modulo their number): two ids, one image."""

    index: int


# --- What one served item is made of -------------------------------------------------------
@dataclass(frozen=True)
class Deleted:
    """The field is left out of the item."""


@dataclass(frozen=True)
class ItemPlan:
    """A valid item (served image ``image``) with some fields deleted or replaced, plus extra keys."""

    image: str
    changes: dict[str, Any] = field(default_factory=dict)  # field -> Deleted() or its new value
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pristine(self) -> bool:
        return not self.changes and not self.extra


@dataclass(frozen=True)
class RawItem:
    """Any JSON value served as an item, as it is (most are not objects)."""

    value: Any


# --- Strategies ----------------------------------------------------------------------------
# Path escapes, absolute paths, Windows paths, NUL, lone surrogates, numbers as text.
HOSTILE_STRINGS = st.sampled_from(
    [
        "../../x",
        "1/../../2",
        "/etc/passwd",
        "..",
        ".",
        "a/b",
        "C:\\x",
        "\\\\server\\share",
        "\x00",
        "1.jpg\x00",
        "\ud800",
        "\udfff\ud800",
        "",
        " ",
        "1",
        "-1",
        "0",
        "1e3",
        " 7",
        "1000",
        "~/x",
        "$HOME",
        "%2e%2e%2fx",
        "\u2028\x85\x0b",
        "x\ny\rz",
    ]
)
# 100 KB strings; kept out of the nested values so that a page stays a few MB at most.
HUGE_STRINGS = st.builds(Huge, st.sampled_from(["a", "/", "../", "\x00", "é", "\ud800", "\n"]))
# No NaN nor Infinity: the real API is JSON, which has neither (the fake would send them).
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1, 2**70, 10**100])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | HOSTILE_STRINGS
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | HOSTILE_STRINGS, children, max_size=4)
    ),
    max_leaves=10,
)
IDS = (
    st.sampled_from([0, -1, -(2**70), 2**63, 2**70, 10**100, 1.5, 1000.0, 1e300, True, False, "1000"])
    | st.integers(min_value=1, max_value=5)  # small positive ids: valid, on no other item
    | st.integers(min_value=1000, max_value=1030)  # the ids of the valid items: duplicates
    | HOSTILE_STRINGS
    | HUGE_STRINGS
    | JSON_VALUES
)
URLS = (
    st.sampled_from(
        [
            "file:///etc/passwd",
            "/relative/x.jpeg",
            "../../x.jpeg",
            "//127.0.0.2/x.jpeg",
            "http://",
            "http:///x.jpeg",
            "https://",
            "ftp://127.0.0.2/x.jpeg",
            "javascript:alert(1)",
            "data:image/jpeg;base64,/9j/",
            "http://[::1/x.jpeg",  # urlsplit refuses it
            "http://127.0.0.1:1/x.jpeg",  # nothing listens: connection refused, at once
            "https://127.0.0.1:1/x.jpeg",
            "http://127.0.0.2:99999/x.jpeg",  # a port that cannot exist
            "http://\x80/x.jpeg",  # a host that w3lib makes empty
            "http://user:password@127.0.0.1:1/x.jpeg",
        ]
    )
    | st.builds(CdnUrl, st.text(max_size=20) | HOSTILE_STRINGS)
    | st.just(ApiUrl())
    | st.builds(UrlOfItem, st.integers(min_value=0, max_value=30))
    | HOSTILE_STRINGS
    | HUGE_STRINGS
    | JSON_VALUES
)
PROMPTS = HOSTILE_STRINGS | HUGE_STRINGS | st.text(max_size=30) | JSON_VALUES
METAS = (
    st.fixed_dictionaries(
        {},
        optional={
            "prompt": PROMPTS,
            "negativePrompt": PROMPTS,
            "seed": JSON_VALUES,
            "resources": JSON_VALUES,
            "../../x": JSON_VALUES,
        },
    )
    | JSON_VALUES
)
STATS = (
    st.dictionaries(st.sampled_from(STAT_NAMES) | st.text(max_size=8), JSON_SCALARS, max_size=8) | JSON_VALUES
)
TYPES = st.sampled_from(["image", "video", "audio", "Image", "../../x", ""]) | JSON_VALUES
# Any level but Blocked (32), which the server never serves: the crawl asks for all the others.
LEVELS = JSON_VALUES.filter(lambda value: not (type(value) is int and value == 32))
#: Replacement values per field.
REPLACEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "browsingLevel": LEVELS,
    "id": IDS,
    "url": URLS,
    "meta": METAS,
    "stats": STATS,
    "type": TYPES,
    "baseModel": JSON_VALUES,
    "username": HOSTILE_STRINGS | HUGE_STRINGS | JSON_VALUES,
}
#: The fields of an item as FakeCivitai.add_image_item builds it.
ITEM_FIELDS = [
    "id",
    "url",
    "hash",
    "width",
    "height",
    "nsfwLevel",
    "type",
    "nsfw",
    "browsingLevel",
    "createdAt",
    "postId",
    "stats",
    "meta",
    "username",
    "baseModel",
    "modelVersionIds",
]


@st.composite
def item_plans(draw: st.DrawFn) -> ItemPlan:
    changed = draw(st.sets(st.sampled_from(ITEM_FIELDS), max_size=len(ITEM_FIELDS)))
    changes = {}
    for name in sorted(changed):  # sorted: the draws happen in a stable order
        replacement = REPLACEMENTS.get(name, JSON_VALUES)
        changes[name] = draw(st.just(Deleted()) | replacement)
    extra = draw(
        st.dictionaries(
            (st.text(max_size=8) | HOSTILE_STRINGS).filter(lambda key: key not in ITEM_FIELDS),
            JSON_VALUES | HUGE_STRINGS,
            max_size=3,
        )
    )
    return ItemPlan(draw(st.sampled_from(sorted(BODIES))), changes, extra)


ITEMS = st.one_of(item_plans(), item_plans(), item_plans(), st.builds(RawItem, JSON_VALUES))

#: One of each kind, crawled on every run (random examples start small and may miss some).
EVERY_KIND: list[ItemPlan | RawItem] = [
    ItemPlan("jpeg"),
    ItemPlan("png"),
    ItemPlan("jpeg", {"id": "../../x"}),
    ItemPlan("jpeg", {"id": "1/../../2"}),
    ItemPlan("jpeg", {"id": "/etc/passwd"}),
    ItemPlan("jpeg", {"id": True}),
    ItemPlan("jpeg", {"id": 1.5}),
    ItemPlan("jpeg", {"id": -7}),
    ItemPlan("jpeg", {"id": 2**70}),  # valid: a 22-digit file name
    ItemPlan("jpeg", {"id": 1000}),  # the first item's id again: a duplicate
    ItemPlan("png", {"id": Deleted()}),
    ItemPlan("jpeg", {"url": "file:///etc/passwd"}),
    ItemPlan("jpeg", {"url": "http://127.0.0.2:99999/x.jpeg"}),  # refused by Request, not urlsplit
    ItemPlan("jpeg", {"url": CdnUrl("\ud800.jpeg")}),
    ItemPlan("jpeg", {"url": CdnUrl("../../missing.jpeg")}),  # 404: a failed download
    ItemPlan("jpeg", {"url": "http://127.0.0.1:1/x.jpeg"}),  # connection refused: failed
    ItemPlan("jpeg", {"url": ApiUrl()}),  # JSON instead of an image: failed
    ItemPlan("png", {"url": UrlOfItem(0)}),  # the first item's image under another id
    ItemPlan(
        "jpeg",
        {"meta": {"prompt": Huge("../"), "negativePrompt": "\ud800/..\x00", "../../x": [None, {"a": 2**70}]}},
    ),
    ItemPlan("jpeg", {"meta": ["prompt"], "stats": "junk"}),
    ItemPlan("jpeg", {"type": "video"}),
    ItemPlan("jpeg", {"type": "../../x"}),
    ItemPlan("jpeg", {"username": Huge("\x00")}, {"../../x": Huge("/"), "": None}),
    RawItem(None),
    RawItem(["../../x"]),
    RawItem("/etc/passwd"),
    RawItem(2**70),
]


def build_items(server: FakeCivitai, plans: list[ItemPlan | RawItem]) -> list[Any]:
    """Register every plan's image on the server and return the items to serve, in order."""
    valid = [server.add_image_item(BODIES[plan.image]) for plan in plans if isinstance(plan, ItemPlan)]
    served: list[Any] = []
    valid_items = iter(valid)
    for plan in plans:
        if isinstance(plan, RawItem):
            served.append(plan.value)
            continue
        item = dict(next(valid_items))
        item.update(plan.extra)
        for name, change in plan.changes.items():
            if isinstance(change, Deleted):
                del item[name]
            else:
                item[name] = change
        served.append(item)
    return resolve(served, server, valid)


def resolve(value: Any, server: FakeCivitai, valid: list[dict[str, Any]]) -> Any:
    """``value`` with every placeholder in it replaced by what it stands for."""
    if isinstance(value, list):
        return [resolve(element, server, valid) for element in value]
    if isinstance(value, dict):
        return {key: resolve(element, server, valid) for key, element in value.items()}
    if isinstance(value, Huge):
        return value.text * 100_000
    if isinstance(value, CdnUrl):
        return server.image_base + value.path
    if isinstance(value, ApiUrl):
        return server.api_url
    if isinstance(value, UrlOfItem):
        return valid[value.index % len(valid)]["url"]
    return value


def run_crawl_in(root: Path, server: FakeCivitai, store: Path, limit: int) -> CrawlResult:
    """``scrapy crawl civitai`` with ``root`` as the working directory, outside the project."""
    environment = crawl_environment()
    environment["SCRAPY_SETTINGS_MODULE"] = "civitai_spider.settings"
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")])
    )
    process = subprocess.run(
        # Every type and every browsing level, so that the server filters out none of them.
        crawl_command(server, store, f"limit={limit}", "media=all", "browsing_level=31"),
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return CrawlResult(process.returncode, process.stdout, process.stderr, store)


def repository_names() -> set[str]:
    return {path.name for path in REPOSITORY.iterdir()} - REPOSITORY_CACHES


def is_image_id(value: Any) -> bool:
    # bool is an int subclass, but JSON true is no id.
    return type(value) is int and value > 0


def check_no_serious_log_line(result: CrawlResult) -> None:
    """No ERROR nor CRITICAL line: a hostile item is a WARNING, and every page is served."""
    assert not SERIOUS_LOG_LINE.search(result.stderr), result.stderr[-5000:]
    stats = result.stats
    assert "log_count/CRITICAL" not in stats and "log_count/ERROR" not in stats


def check_files(root: Path, store: Path) -> None:
    """Every file under ``root`` is directly in ``store``, under a name the project writes, or
    a crawl's manifest part in its ``manifest`` folder."""
    for directory, subdirectories, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if path.parent == store / MANIFEST_FOLDER:
                assert CRAWL_PART_NAME.fullmatch(name), f"unexpected manifest file {name!r}"
                continue
            assert path.parent == store, f"a file outside IMAGES_STORE: {path}"
            assert any(pattern.fullmatch(name) for pattern in STORE_FILE_PATTERNS), (
                f"unexpected file {name!r}"
            )
        for name in subdirectories:
            path = Path(directory) / name
            assert path in (store.parent, store, store / MANIFEST_FOLDER), f"an unexpected folder: {path}"


def check_outcomes(result: CrawlResult, served: list[Any]) -> None:
    """The stats account for every served item, once; the error log has one line per refusal or
    failure, and one per saved item that the manifest cannot hold (an id beyond int64)."""
    stats = result.stats
    dropped = {
        key.removeprefix("civitai/dropped/"): value
        for key, value in stats.items()
        if key.startswith("civitai/dropped/")
    }
    assert set(dropped) <= DROP_REASONS, dropped
    saved, failed = stats.get("civitai/saved", 0), stats.get("civitai/failed", 0)
    assert stats.get("civitai/items_seen", 0) == len(served)
    assert saved + failed + sum(dropped.values()) == len(served), stats
    objects = [item for item in served if isinstance(item, dict)]
    assert dropped.get("invalid_item", 0) == len(served) - len(objects)
    assert dropped.get("invalid_id", 0) == sum(not is_image_id(item.get("id")) for item in objects)
    invalid = sum(dropped.get(reason, 0) for reason in INVALID_REASONS)
    error_log = result.store / "error_log.txt"
    # Lines end with "\n" only: a URL may hold "\u2028" or "\x85", which splitlines() would split.
    lines = error_log.read_bytes().count(b"\n") if error_log.exists() else 0
    assert lines == invalid + failed + stats.get("civitai/manifest/rows_not_written", 0)


def check_saved(result: CrawlResult, served: list[Any], plans: list[ItemPlan | RawItem]) -> None:
    """Recorded ids are positive integers of served items, each with all its files; no file without one."""
    store = result.store
    recorded = result.ids_recorded()
    assert len(recorded) == len(set(recorded)) == result.stats.get("civitai/saved", 0)
    urls_by_id: dict[int, list[Any]] = {}
    for item in served:
        if isinstance(item, dict) and is_image_id(item.get("id")):
            urls_by_id.setdefault(item["id"], []).append(item.get("url"))
    for image_id in recorded:
        assert image_id > 0 and image_id in urls_by_id, image_id
        image_files = [store / f"{image_id}.jpg", store / f"{image_id}.png"]
        assert sum(path.exists() for path in image_files) == 1, image_id
        assert (store / f"{image_id}_pos-prompt.txt").exists()
        meta = json.loads((store / f"{image_id}_meta.json").read_bytes())
        assert meta["id"] == image_id and meta["url"] in urls_by_id[image_id]
    # No orphan: every file named by an id belongs to a recorded (complete) image.
    file_ids = {int(re.split(r"[._]", path.name)[0]) for path in store.iterdir() if path.name[0].isdigit()}
    assert file_ids <= set(recorded), file_ids - set(recorded)
    # A valid item left untouched, whose id no other item uses, is saved byte for byte.
    ids = Counter(item.get("id") for item in served if isinstance(item, dict) and is_image_id(item.get("id")))
    for plan, item in zip(plans, served, strict=True):
        if isinstance(plan, ItemPlan) and plan.pristine and ids[item["id"]] == 1:
            assert item["id"] in recorded, item["id"]
            saved = store / f"{item['id']}.{EXTENSIONS[plan.image]}"
            assert saved.read_bytes() == BODIES[plan.image]


@pytest.mark.heavy
@example(plans=EVERY_KIND, limit=4)
@settings(
    max_examples=20,
    deadline=None,
    # No shrinking: every example is a real crawl (about a second), and shrinking one failure
    # takes hundreds of them: minutes (hypothesis gives up after five). The failing example is printed in full
    # and kept in the example database, which replays it first on the next run.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    # The items are big on purpose (100 KB strings, many fields).
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(plans=st.lists(ITEMS, min_size=4, max_size=25), limit=st.integers(min_value=1, max_value=8))
def test_hostile_items_never_crash_a_crawl_nor_escape_the_store(
    plans: list[ItemPlan | RawItem], limit: int
) -> None:
    repository_before = repository_names()
    with (
        tempfile.TemporaryDirectory(prefix="civitai-hostile-") as temporary,
        FakeCivitai() as server,
    ):
        root = Path(temporary)
        store = root / "sandbox" / "store"
        served = build_items(server, plans)
        server.items = served

        result = run_crawl_in(root, server, store, limit)

        assert result.returncode == 0, result.stderr[-5000:]
        assert result.finish_reason == "finished"
        assert "Traceback" not in result.stderr, result.stderr[-5000:]
        check_no_serious_log_line(result)
        check_files(root, store)
        check_outcomes(result, served)
        check_saved(result, served, plans)
    assert repository_names() == repository_before
