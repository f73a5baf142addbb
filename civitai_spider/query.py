"""The spider's arguments as the API queries of a crawl's chains.

``-a name=value`` arguments are checked here, once, into a :class:`CrawlQuery`: the query of
``/api/v1/images`` they ask, the ``split`` that cuts it into chains, and where a walk stops
(``max_pages``, ``stop_after_seen``). A bad argument is a ``ValueError`` naming it and what is
allowed, which ``scrapy crawl`` turns into exit status 2 before any request.

``split`` cuts a crawl into several chains walked at once, one per combination of the split
values (:func:`split_query`). They are disjoint (every image has one browsing level, one base
model and one type) and together list what the unsplit query lists. A model's crawl
(``model_id`` alone) is one chain per version of the model (times the split values): those may
overlap, as an image can use two versions.

``url`` is a Civitai page (:mod:`civitai_spider.site_url`): the arguments it stands for are
defaults that the explicit ones override, and its host names the API the crawl asks
(:func:`api_url`), unless ``CIVITAI_API_URL`` is given.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy.settings import SETTINGS_PRIORITIES

from civitai_spider.site_url import parse_address

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

SORTS = ("Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random")
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")
NSFW_LEVELS = ("None", "Soft", "Mature", "X", "true", "false")
MAX_LIMIT = 200
_USERNAME = re.compile(r"[A-Za-z0-9_]+")
#: ``media=`` -> the item types a crawl keeps (the API's ``type``; none sent for ``all``).
MEDIA_TYPES = {"image": ("image",), "video": ("video",), "all": ("image", "video")}
#: The API's browsingLevel bitmask: PG=1, PG13=2, R=4, X=8, XXX=16; its Blocked bit (32) the
#: server strips from every query (onlySelectableLevels), so a level with it asks for less.
MAX_BROWSING_LEVEL = 31
_BLOCKED_LEVEL = 32
#: Model ids are Postgres int4: the models endpoint refuses larger ones.
MAX_MODEL_ID = 2**31 - 1
ARGUMENTS = (
    "sort", "period", "nsfw", "browsing_level", "media", "limit", "username", "user_id",
    "model_id", "model_version_id", "post_id", "image_id", "tags", "base_models",
    "max_pages", "stop_after_seen", "split", "url",
)  # fmt: skip
#: Spider arguments that are sent as the API's integer parameters.
_INTEGER_PARAMETERS = (
    ("user_id", "userId"),
    ("model_id", "modelId"),
    ("model_version_id", "modelVersionId"),
    ("post_id", "postId"),
    ("image_id", "imageId"),
)
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
#: Arguments that name the same thing: an explicit one replaces what the address says of both.
_SAME_SUBJECT = {
    "username": ("username", "user_id"),
    "user_id": ("username", "user_id"),
    "model_id": ("model_id", "model_version_id"),
    "model_version_id": ("model_id", "model_version_id"),
}


@dataclass(frozen=True)
class CrawlQuery:
    """What a crawl's spider arguments ask, checked."""

    #: The query of ``/api/v1/images`` (before ``split`` and a model's versions cut it).
    query: dict[str, str]
    #: The ``split`` names, in the order given.
    split: tuple[str, ...]
    max_pages: int | None
    stop_after_seen: int | None
    #: The item types the crawl keeps (``media``).
    media_types: tuple[str, ...]
    #: The API of the ``url`` argument's host, else None (:func:`api_url` decides).
    address_api_url: str | None = None
    #: What the ``url`` argument asked that explicit arguments override, as one INFO line.
    address_overridden: str | None = None

    @property
    def model_id(self) -> int | None:
        """The model whose versions a crawl lists first, else ``None``.

        ``modelId`` alone is answered from the server's older database path
        (image-search.service.ts runImageSearch: ``imageId``, or ``modelId`` without
        ``modelVersionId``), which skips one image at every page boundary (getAllImages pops
        the row it takes as the cursor and then asks ``id < cursor``), ignores metric sorts,
        refuses ``sort=Random`` and ends with an empty page when its query times out. With
        ``imageId`` (one image) there is nothing to lose.
        """
        query = self.query
        if "modelId" in query and "modelVersionId" not in query and "imageId" not in query:
            return int(query["modelId"])
        return None

    def chain_queries(self, model_versions: tuple[int, ...] = ()) -> dict[str, dict[str, str]]:
        """Chain name -> its API query (see :func:`split_query`)."""
        return split_query(self.query, self.split, model_versions)

    def beyond_pg(self) -> str | None:
        """The argument that asks for more than PG images (``nsfw=X``, ``browsing_level=12``), or None."""
        if self.query.get("browsingLevel", "1") != "1":
            return f"browsing_level={self.query['browsingLevel']}"
        if self.query.get("nsfw", "None") not in ("None", "false"):
            return f"nsfw={self.query['nsfw']}"
        return None


def parse_arguments(arguments: Mapping[str, Any]) -> CrawlQuery:
    """Check spider arguments (``ValueError`` naming the first bad one) into a :class:`CrawlQuery`.

    Names starting with ``_`` are Scrapy's and Scrapyd's own (``_job``) and are left alone.
    """
    # A misspelt argument would otherwise be ignored and crawl everything.
    for name in arguments:
        if name not in ARGUMENTS and not name.startswith("_"):
            raise ValueError(f"unknown spider argument {name!r}: allowed are {', '.join(ARGUMENTS)}")
    address_api_url = overridden = None
    if arguments.get("url") is not None:
        arguments, address_api_url, overridden = _with_address(arguments)
    query: dict[str, str] = {
        "limit": str(_integer(arguments, "limit", MAX_LIMIT, maximum=MAX_LIMIT)),
        "withMeta": "true",
        # Without it the API nests meta ({"id": ..., "meta": {...}}) on its older query path
        # (imageId, or modelId without modelVersionId); items.py unwraps that shape anyway.
        "flatMeta": "true",
        "sort": _choice(arguments, "sort", "Most Reactions", SORTS),
        "period": _choice(arguments, "period", "AllTime", PERIODS),
    }
    media = _choice(arguments, "media", "image", tuple(MEDIA_TYPES))
    if media != "all":
        query["type"] = media  # without it videos take room in every page of an image crawl
    if arguments.get("browsing_level") is not None:
        # The API lets browsingLevel override nsfw; sending only one keeps the query honest.
        query["browsingLevel"] = str(_browsing_level(arguments["browsing_level"]))
    elif arguments.get("nsfw") is not None:
        query["nsfw"] = _choice(arguments, "nsfw", None, NSFW_LEVELS)
    username = arguments.get("username")
    if username is not None:
        if not _USERNAME.fullmatch(str(username)):
            raise ValueError(f"username={username!r} is not valid: allowed are letters, digits and _")
        query["username"] = str(username)
    for argument, parameter in _INTEGER_PARAMETERS:
        if arguments.get(argument) is not None:
            maximum = MAX_MODEL_ID if argument == "model_id" else None
            query[parameter] = str(_integer(arguments, argument, None, maximum=maximum))
    tags = arguments.get("tags")
    if tags is not None:
        ids = [tag.strip() for tag in str(tags).split(",") if tag.strip()]
        if not ids or not all(tag.isascii() and tag.isdigit() and int(tag) > 0 for tag in ids):
            raise ValueError(
                f"tags={tags!r} is not valid: allowed are comma-separated tag ids, e.g. '5133,4'"
            )
        query["tags"] = ",".join(str(int(tag)) for tag in ids)
    base_models = arguments.get("base_models")
    if base_models is not None:
        # The server owns the list of base models and answers 400 for unknown ones.
        names = [name.strip() for name in str(base_models).split(",") if name.strip()]
        if not names:
            raise ValueError(
                f"base_models={base_models!r} is empty: give comma-separated names, e.g. 'SDXL 1.0,Pony'"
            )
        query["baseModels"] = ",".join(names)
    max_pages = _integer(arguments, "max_pages", None) if arguments.get("max_pages") is not None else None
    stop_after_seen = None
    if arguments.get("stop_after_seen") is not None:
        stop_after_seen = _integer(arguments, "stop_after_seen", None)
        # Only newest first do the already-downloaded images come after all the new ones; in
        # any other order a run of them says nothing about what is left.
        if query["sort"] != "Newest":
            raise ValueError(
                f"stop_after_seen={arguments['stop_after_seen']!r} requires sort='Newest', "
                f"not sort={query['sort']!r}"
            )
    split = parse_split(arguments["split"]) if arguments.get("split") is not None else ()
    split_query(query, split)  # a split with nothing to split is refused now, not at start
    return CrawlQuery(
        query, split, max_pages, stop_after_seen, MEDIA_TYPES[media], address_api_url, overridden
    )


def api_url(settings: BaseSettings, crawl_query: CrawlQuery) -> str:
    """The images endpoint the crawl asks: the ``url`` argument's host, unless the user gave
    ``CIVITAI_API_URL`` (a priority above the project's default), which wins."""
    given: str = settings.get("CIVITAI_API_URL")
    if crawl_query.address_api_url is None:
        return given
    priority = settings.getpriority("CIVITAI_API_URL")
    if priority is not None and priority > SETTINGS_PRIORITIES["project"]:
        return given
    return crawl_query.address_api_url


def _with_address(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], str, str | None]:
    """The arguments with the ``url`` page's in place of ``url``, where no explicit one names
    the same thing; the page's API; and what explicit ones override, as one line (or None)."""
    url = str(arguments["url"])
    address = parse_address(url)
    try:
        parse_arguments(address.arguments)  # a bad value in the address is the address's fault
    except ValueError as error:
        raise ValueError(f"url={url!r}: {error}") from None
    explicit = {name: value for name, value in arguments.items() if name != "url" and value is not None}
    merged = dict(address.arguments)
    overridden = {}
    for name, value in address.arguments.items():
        if any(rival in explicit for rival in _SAME_SUBJECT.get(name, (name,))):
            overridden[name] = value
            del merged[name]
    merged.update(explicit)
    note = None
    if overridden:
        rivals = {rival for name in overridden for rival in _SAME_SUBJECT.get(name, (name,))}
        winners = sorted(rivals & explicit.keys())
        note = (
            f"url={url} asks {', '.join(f'{name}={value}' for name, value in overridden.items())}; "
            f"the explicit {', '.join(f'{name}={explicit[name]}' for name in winners)} "
            f"win{'s' if len(winners) == 1 else ''}"
        )
    return merged, address.api_url, note


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


def _browsing_level(value: Any) -> int:
    allowed = "allowed is 1 to 31, a sum of PG=1, PG13=2, R=4, X=8, XXX=16"
    level = _whole_number(value)
    if level & _BLOCKED_LEVEL and level < 2 * _BLOCKED_LEVEL:
        # The server strips Blocked (onlySelectableLevels) and serves what is left, or PG.
        raise ValueError(
            f"browsing_level={value!r} is not valid: it has the Blocked level (32), which the API "
            f"never serves (it strips it, and 32 alone comes back as PG); {allowed}"
        )
    if not 1 <= level <= MAX_BROWSING_LEVEL:
        raise ValueError(f"browsing_level={value!r} is not valid: {allowed}")
    return level


def _choice(arguments: Mapping[str, Any], name: str, default: str | None, allowed: tuple[str, ...]) -> str:
    value = arguments.get(name, default)
    if value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{name}={value!r} is not valid: allowed are {choices}")
    return value


def _integer(arguments: Mapping[str, Any], name: str, default: int | None, maximum: int | None = None) -> int:
    value = arguments.get(name, default)
    number = _whole_number(value)
    if number < 1 or (maximum is not None and number > maximum):
        allowed = f"an integer from 1 to {maximum}" if maximum else "a positive integer"
        raise ValueError(f"{name}={value!r} is not valid: allowed is {allowed}")
    return number


def _whole_number(value: Any) -> int:
    """``value`` as a base-10 integer, 0 when it is not one (every caller refuses 0)."""
    try:
        return int(str(value), 10)
    except ValueError:
        return 0
