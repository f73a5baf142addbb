"""What an item must pass, read from its API record alone, to be downloaded: the crawl's one filter.

In this order, the first check an item fails names its drop reason:

- the reaction thresholds (``CIVITAI_THRESHOLDS``): every listed stat >= its minimum, a missing
  stat counting as 0 (a stat that is not listed is not checked) -> ``below_threshold``;
- the prompt requirement (``CIVITAI_REQUIRE_PROMPT``) -> ``no_meta``, ``no_prompt``;
- the item's own level (``CIVITAI_NSFW_LEVELS``) -> ``nsfw_level``;
- its size (``CIVITAI_MIN_WIDTH`` ... ``CIVITAI_MAX_ASPECT_RATIO``) -> ``no_size``,
  ``too_small``, ``too_large``, ``aspect_ratio``;
- words or regular expressions of its prompt (``CIVITAI_PROMPT_INCLUDE``,
  ``CIVITAI_PROMPT_EXCLUDE``) -> ``prompt_lacks``, ``prompt_excluded``.

Nothing here needs the file, so a failing item is dropped before any request for it. The
pipeline (:mod:`civitai_spider.pipelines.item_filter`) drops what fails; a page reader
(:mod:`civitai_spider.page`) asks too: ``stop_after_seen`` counts only what passes, and a
shared crawl queues only what passes. The parsers below read the settings for the filter and
for :mod:`civitai_spider.setting_rules`, which checks them before the crawl: both read a value
the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from civitai_spider.outcomes import DropImage

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

#: The ``nsfwLevel`` names the API gives an item: NsfwLevelDeprecated, from its browsing level
#: by getNsfwLevelDeprecatedReverseMapping (src/shared/constants/browsingLevel.constants.ts lines
#: 257-282, used by src/server/services/image-search.service.ts line 222). "X" stands for X and
#: XXX alike, "None" for PG and for an unrated image; "Blocked" is never served.
NSFW_LEVEL_NAMES = ("None", "Soft", "Mature", "X")
#: The item's own ``browsingLevel`` is one of these bits: PG=1, PG13=2, R=4, X=8, XXX=16.
MAX_BROWSING_LEVEL = 31
#: What marks a prompt entry as a regular expression; any other entry is a word or phrase.
REGEX_PREFIX = "re:"
#: The size limits: (the minimum's setting, the maximum's, what they bound).
SIZE_LIMITS = (
    ("CIVITAI_MIN_WIDTH", "CIVITAI_MAX_WIDTH", "width"),
    ("CIVITAI_MIN_HEIGHT", "CIVITAI_MAX_HEIGHT", "height"),
    ("CIVITAI_MIN_PIXELS", "CIVITAI_MAX_PIXELS", "pixels"),
)
ASPECT_RATIO_LIMITS = ("CIVITAI_MIN_ASPECT_RATIO", "CIVITAI_MAX_ASPECT_RATIO")


@dataclass(frozen=True)
class PromptPattern:
    """One entry of ``CIVITAI_PROMPT_INCLUDE`` / ``CIVITAI_PROMPT_EXCLUDE``, as given and compiled."""

    entry: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class NsfwLevels:
    """The levels ``CIVITAI_NSFW_LEVELS`` keeps: ``nsfwLevel`` names, and ``browsingLevel`` bits."""

    names: frozenset[str]
    browsing_levels: int

    def allow(self, name: Any, browsing_level: Any) -> bool:
        if name in self.names:
            return True
        return type(browsing_level) is int and bool(browsing_level & self.browsing_levels)


def text_list(value: Any) -> list[str]:
    """A list setting's entries: a list (settings.py), or text (``-s``): a JSON list when it
    starts with ``[``, else comma-separated. Entries are stripped; commas give no empty ones.

    Raises ``ValueError`` for anything else, or an empty entry of a list. Unset (None): none.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [entry.strip() for entry in text.split(",") if entry.strip()]
        try:
            value = json.loads(text)
        except ValueError as error:
            raise ValueError(f"not a JSON list: {error}") from None
    if not isinstance(value, list | tuple):
        raise ValueError("not a list")
    entries = []
    for entry in value:
        if isinstance(entry, bool) or not isinstance(entry, str | int):
            raise ValueError(f"{entry!r} is not text")
        if not str(entry).strip():
            raise ValueError("an empty entry")
        entries.append(str(entry).strip())
    return entries


def prompt_patterns(value: Any, case_sensitive: bool = False) -> tuple[PromptPattern, ...]:
    """The compiled entries of a prompt setting (``ValueError`` naming a bad one).

    ``re:<expression>`` is a regular expression, searched anywhere in the prompt. Any other
    entry is a word or phrase that must stand as words: not inside another word (``cat`` is not
    in ``category`` nor ``bobcat``, nor ``hair`` in ``long_hair``: a letter, digit or underscore
    on either side joins it to a word), the spaces of a phrase matching any run of white space.
    """
    flags = 0 if case_sensitive else re.IGNORECASE
    patterns = []
    for entry in text_list(value):
        if entry.startswith(REGEX_PREFIX):
            expression = entry[len(REGEX_PREFIX) :]
            if not expression:
                raise ValueError(f"{entry!r} has no expression after {REGEX_PREFIX}")
            try:
                pattern = re.compile(expression, flags)
            except re.error as error:
                raise ValueError(f"{entry!r} is not a regular expression: {error}") from None
        else:
            words = r"\s+".join(re.escape(word) for word in entry.split())
            pattern = re.compile(rf"(?<!\w){words}(?!\w)", flags)
        patterns.append(PromptPattern(entry, pattern))
    return tuple(patterns)


def nsfw_levels(value: Any) -> NsfwLevels | None:
    """The levels of ``CIVITAI_NSFW_LEVELS``, None when empty (no filter); ``ValueError`` naming a
    bad entry. A name (any case) is matched against the item's ``nsfwLevel``; a number, a sum of
    browsing levels from 1 to 31, against its ``browsingLevel``."""
    names: set[str] = set()
    browsing_levels = 0
    by_lower = {name.lower(): name for name in NSFW_LEVEL_NAMES}
    for entry in text_list(value):
        if entry.isdigit():
            level = int(entry)
            if not 1 <= level <= MAX_BROWSING_LEVEL:
                raise ValueError(f"browsing level {level} is not from 1 to {MAX_BROWSING_LEVEL}")
            browsing_levels |= level
        elif entry.lower() in by_lower:
            names.add(by_lower[entry.lower()])
        else:
            raise ValueError(f"unknown level {entry!r}")
    if not names and not browsing_levels:
        return None
    return NsfwLevels(frozenset(names), browsing_levels)


def aspect_ratio(value: Any) -> Fraction | None:
    """An aspect ratio (width / height) bound: a number (``1.33``), ``W:H`` or ``W/H``; None for 0
    (no bound, as unset). Exact, so that ``4:3`` keeps a 1024x768 image that ``1.33`` would drop."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("not a number")
    try:
        ratio = Fraction(str(value).strip().replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        raise ValueError("not a number, W:H or W/H") from None
    if ratio < 0:
        raise ValueError("negative")
    return ratio or None


class ItemFilter:
    """The test itself: :meth:`check` raises :class:`DropImage` for an item that fails it."""

    def __init__(
        self,
        minimums: dict[str, int],
        require_prompt: bool,
        *,
        levels: NsfwLevels | None = None,
        sizes: dict[str, int] | None = None,
        ratios: tuple[Fraction | None, Fraction | None] = (None, None),
        include: tuple[PromptPattern, ...] = (),
        exclude: tuple[PromptPattern, ...] = (),
    ):
        self.minimums = minimums
        self.require_prompt = require_prompt
        self.levels = levels
        #: Setting name -> its limit, only those set (0 is off).
        self.sizes = {name: limit for name, limit in (sizes or {}).items() if limit}
        self.ratios = ratios
        self.include = include
        self.exclude = exclude
        self._size_matters = bool(self.sizes) or ratios != (None, None)

    @classmethod
    def build(cls, settings: BaseSettings) -> Self:
        # getdict() also parses the JSON text given with -s on the command line.
        minimums = settings.getdict("CIVITAI_THRESHOLDS")
        case_sensitive = settings.getbool("CIVITAI_PROMPT_CASE_SENSITIVE")
        limits = [name for names in SIZE_LIMITS for name in names[:2]]
        return cls(
            minimums,
            settings.getbool("CIVITAI_REQUIRE_PROMPT"),
            levels=nsfw_levels(settings.get("CIVITAI_NSFW_LEVELS")),
            sizes={name: settings.getint(name) for name in limits},
            ratios=(
                aspect_ratio(settings.get(ASPECT_RATIO_LIMITS[0])),
                aspect_ratio(settings.get(ASPECT_RATIO_LIMITS[1])),
            ),
            include=prompt_patterns(settings.get("CIVITAI_PROMPT_INCLUDE"), case_sensitive),
            exclude=prompt_patterns(settings.get("CIVITAI_PROMPT_EXCLUDE"), case_sensitive),
        )

    def check(self, item: Any) -> None:
        """Raise :class:`DropImage` when ``item`` fails a check, with the first one's reason."""
        adapter = ItemAdapter(item)
        image_id = adapter["id"]
        stats = adapter.get("stats") or {}
        for stat, minimum in self.minimums.items():
            count = stats.get(stat, 0)
            if count < minimum:
                raise DropImage("below_threshold", f"image {image_id}: {stat} {count} < {minimum}")
        meta = adapter.get("meta")
        prompt = meta.get("prompt") if isinstance(meta, dict) else None
        if self.require_prompt and (not isinstance(prompt, str) or not prompt.strip()):
            reason = "no_meta" if meta is None else "no_prompt"
            raise DropImage(reason, f"image {image_id}: no prompt")
        if self.levels is not None:
            self._check_level(image_id, adapter.get("nsfw_level"), adapter.get("browsing_level"))
        if self._size_matters:
            self._check_size(image_id, adapter.get("width"), adapter.get("height"))
        if self.include or self.exclude:
            self._check_prompt(image_id, prompt if isinstance(prompt, str) else "")

    def _check_level(self, image_id: Any, name: Any, browsing_level: Any) -> None:
        assert self.levels is not None
        if not self.levels.allow(name, browsing_level):
            raise DropImage(
                "nsfw_level",
                f"image {image_id}: nsfwLevel {name!r}, browsingLevel {browsing_level!r} "
                "(not in CIVITAI_NSFW_LEVELS)",
            )

    def _check_size(self, image_id: Any, width: Any, height: Any) -> None:
        if type(width) is not int or type(height) is not int or width <= 0 or height <= 0:
            raise DropImage(
                "no_size", f"image {image_id}: no width and height in its record ({width!r}x{height!r})"
            )
        for (low, high, what), value in zip(SIZE_LIMITS, (width, height, width * height), strict=True):
            if value < self.sizes.get(low, 0):
                raise DropImage("too_small", f"image {image_id}: {what} {value} < {self.sizes[low]} ({low})")
            if high in self.sizes and value > self.sizes[high]:
                raise DropImage(
                    "too_large", f"image {image_id}: {what} {value} > {self.sizes[high]} ({high})"
                )
        ratio = Fraction(width, height)
        (low_name, high_name), (low_ratio, high_ratio) = ASPECT_RATIO_LIMITS, self.ratios
        for bound, name, outside, sign in (
            (low_ratio, low_name, ratio.__lt__, "<"),
            (high_ratio, high_name, ratio.__gt__, ">"),
        ):
            if bound is not None and outside(bound):
                raise DropImage(
                    "aspect_ratio",
                    f"image {image_id}: aspect ratio {width}:{height} ({float(ratio):.4g}) {sign} "
                    f"{float(bound):.4g} ({name})",
                )

    def _check_prompt(self, image_id: Any, prompt: str) -> None:
        for each in self.include:
            if each.pattern.search(prompt) is None:
                raise DropImage(
                    "prompt_lacks", f"image {image_id}: prompt lacks {each.entry!r} (CIVITAI_PROMPT_INCLUDE)"
                )
        for each in self.exclude:
            found = each.pattern.search(prompt)
            if found is not None:
                raise DropImage(
                    "prompt_excluded",
                    f"image {image_id}: prompt has {_short(found[0])} "
                    f"({each.entry!r} of CIVITAI_PROMPT_EXCLUDE)",
                )


def _short(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
