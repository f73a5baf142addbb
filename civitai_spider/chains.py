"""Cursor chains: the walks a crawl is made of.

The API lists images as a chain of pages, each naming the next one's cursor, so one chain is
walked one page at a time. The spider argument ``split`` cuts a crawl into several chains
that are walked at once: one per combination of the split values. They are disjoint (every
image has one browsing level, one base model and one type) and together list what the
unsplit query lists. A model's crawl (``model_id``) is one chain per version of the model
(times the split values): those may overlap, as an image can use two versions.

A :class:`Chain` is where one walk stands: the URL of its next page, its page count, the
cursors it followed (a cursor given twice is a loop), whether its last page was full (an empty
page after a full one is asked again) and, with ``stop_after_seen``, how many
already-downloaded images it met in a row. The spider keeps chains in memory (and in the
JOBDIR state); a shared crawl keeps them in Redis (:mod:`civitai_spider.shared_crawl.crawl`). A
paused job's chains stand before their oldest page with items not done (:class:`ListedPage`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: What ``split`` may name, and the API parameter each one splits.
SPLITS = {"browsing_level": "browsingLevel", "base_models": "baseModels", "media": "type"}
#: nsfw -> the browsing levels the server gives it (PG=1, PG13=2, R=4, X=8, XXX=16), as
#: src/pages/api/v1/images/index.ts maps it: the deprecated names through nsfwLevelMapDeprecated,
#: true to nsfwBrowsingLevelsFlag (R, X, XXX and Blocked, which is then stripped: 28, no PG),
#: false to nothing, which the endpoint then reads as PG only.
NSFW_BROWSING_LEVELS = {"None": 1, "false": 1, "Soft": 3, "Mature": 7, "X": 31, "true": 28}
#: The API parameter of a model version: a model's crawl has a chain per version.
MODEL_VERSION_PARAMETER = "modelVersionId"
#: The one chain of a crawl without ``split``.
WHOLE_QUERY = "all"

#: How a chain ended (``Chain.end``).
END_OF_LISTING = "end"
MAX_PAGES = "max_pages"
CAUGHT_UP = "caught_up"
CURSOR_LOOP = "cursor_loop"


def parse_split(value: Any) -> tuple[str, ...]:
    """The ``split`` argument as a tuple of names; ``ValueError`` names a bad one."""
    names = tuple(dict.fromkeys(name.strip() for name in str(value).split(",") if name.strip()))
    allowed = ", ".join(SPLITS)
    if not names:
        raise ValueError(f"split={value!r} is empty: allowed is a comma list of {allowed}")
    for name in names:
        if name not in SPLITS:
            raise ValueError(f"split={value!r} is not valid: {name!r} is not one of {allowed}")
    return names


def split_query(
    query: dict[str, str], split: tuple[str, ...], model_versions: tuple[int, ...] = ()
) -> dict[str, dict[str, str]]:
    """Chain name -> its API query: one per combination of the model versions (a model's
    crawl) and the split values, in a fixed order.

    ``ValueError`` when a split has nothing to split (``base_models`` without ``base_models=``).
    """
    if not split and not model_versions:
        return {WHOLE_QUERY: dict(query)}
    names = [SPLITS[name] for name in split]
    values = [_split_values(query, name) for name in split]
    if model_versions:
        names.insert(0, MODEL_VERSION_PARAMETER)
        values.insert(0, [str(version) for version in model_versions])
    chains: dict[str, dict[str, str]] = {}
    for combination in itertools.product(*values):
        chain_query = dict(query)
        if "browsing_level" in split:
            chain_query.pop("nsfw", None)  # browsingLevel overrides it anyway
        if model_versions:
            # With modelVersionId the server lists from its search index, which knows no
            # modelId; the version is what selects the images.
            chain_query.pop("modelId", None)
        parameters = dict(zip(names, combination, strict=True))
        chain_query.update(parameters)
        chains["&".join(f"{name}={value}" for name, value in parameters.items())] = chain_query
    return chains


def _split_values(query: dict[str, str], name: str) -> list[str]:
    if name == "browsing_level":
        mask = int(query["browsingLevel"]) if "browsingLevel" in query else _nsfw_mask(query)
        return [str(bit) for bit in (1 << shift for shift in range(5)) if mask & bit]
    if name == "base_models":
        if "baseModels" not in query:
            raise ValueError("split=base_models needs base_models=... (comma-separated names) to split")
        return query["baseModels"].split(",")
    # media: the API's type; media=all sends none and lists images and videos.
    return [query["type"]] if "type" in query else ["image", "video"]


def _nsfw_mask(query: dict[str, str]) -> int:
    # Without nsfw or browsingLevel the API lists PG only.
    return NSFW_BROWSING_LEVELS.get(query.get("nsfw", "None"), 1)


@dataclass
class Chain:
    """Where one walk stands. ``next_url`` is the page to fetch next (``None`` once it ended)."""

    name: str
    next_url: str | None
    #: Pages fetched and handed on.
    pages: int = 0
    #: The cursors (or ``nextPage`` addresses) it followed -> the page each one led to.
    cursors_seen: dict[str, int] = field(default_factory=dict)
    #: Whether the last page held ``limit`` items: an empty page without a cursor after it is
    #: not taken for the end at once (the spider asks again, CIVITAI_EMPTY_PAGE_RETRIES).
    last_page_full: bool = False
    #: Already-downloaded images in a row (``stop_after_seen``).
    seen_streak: int = 0
    #: Why it ended: END_OF_LISTING, MAX_PAGES, CAUGHT_UP or CURSOR_LOOP; ``None`` while live.
    end: str | None = None

    @property
    def live(self) -> bool:
        return self.end is None

    def rewind(self, page: int, listed: ListedPage) -> None:
        """Stand again where the chain stood before ``page`` (``listed``): it is fetched next."""
        self.next_url = listed.url
        self.pages = page - 1
        self.seen_streak = listed.seen_streak
        self.last_page_full = listed.last_page_full
        self.end = None
        # The cursors of the pages after it are followed again: not a loop.
        self.cursors_seen = {key: led_to for key, led_to in self.cursors_seen.items() if led_to <= page}


@dataclass
class ListedPage:
    """A page whose items are not all through the pipelines yet, and where its chain stood
    before it: a paused job (JOBDIR) rewinds the chain to its oldest such page, so that what
    a stop left unsaved is listed again."""

    url: str
    seen_streak: int
    last_page_full: bool
    #: Its items not yet saved, dropped or failed.
    pending: int


def cursor_of(url: str | None) -> str | None:
    """The cursor a page URL asks for (``None``: the first page)."""
    if url is None:
        return None
    return dict(parse_qsl(urlsplit(url).query)).get("cursor")


def crawl_end(ends: list[str | None]) -> str | None:
    """The finish reason a crawl whose chains ended so takes, ``None`` for Scrapy's own.

    A chain that looped makes the crawl incomplete (``cursor_loop``, exit status 1); chains
    that all caught up end it as ``caught_up``.
    """
    if CURSOR_LOOP in ends:
        return CURSOR_LOOP
    if ends and all(end == CAUGHT_UP for end in ends):
        return CAUGHT_UP
    return None
