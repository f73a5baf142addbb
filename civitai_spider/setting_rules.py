"""What every setting allows, declared once, and the one check of a crawl's settings against it.

Scrapy reads a setting when a component is built, inside the running crawl: ``-s X=two`` then
ends in ``invalid literal for int()`` (a traceback naming neither the setting nor what it
allows), a misspelt boolean in a ``start_error`` with exit status 0, and a misspelt name is not
noticed at all. Every project command calls :func:`check_settings` first instead, which turns
the first bad value into one line such as ``CIVITAI_JPEG_QUALITY='200' is not valid: allowed is
an integer from 1 to 100``, and a misspelt ``CIVITAI_*`` name into ``unknown setting
CIVITAI_TRESHOLDS: did you mean CIVITAI_THRESHOLDS?``. Components read their settings as
Scrapy does and check nothing themselves.

:data:`SETTINGS` covers every ``CIVITAI_*`` setting of ``settings.py`` and every Scrapy setting
of the README's settings tables; the README's tables list the same names (a test holds both).
Settings that are each allowed but cannot work together (a shared crawl without Redis, or
with JOBDIR) are :data:`COMBINATIONS`, checked once every value is. Whether a store can work
(an ``IMAGES_STORE`` scheme, a bucket, Redis answering) is the store's own check, made after
this one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from civitai_spider import item_filter
from civitai_spider.cdn_width import MAX_WIDTH
from civitai_spider.errors import safe_url
from civitai_spider.items import STAT_NAMES
from civitai_spider.setting_values import (
    Boolean,
    Choice,
    Integer,
    JsonObject,
    Number,
    Parsed,
    Rule,
    StatusCodes,
    Text,
    Url,
)

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: The prefix of this project's settings: any other name with it is a typo.
PREFIX = "CIVITAI_"


def _thresholds_problem(thresholds: Mapping[Any, Any]) -> str | None:
    for stat, minimum in thresholds.items():
        if stat not in STAT_NAMES:
            return f"unknown stat {stat!r}"
        if isinstance(minimum, bool) or not isinstance(minimum, int):
            return f"the minimum of {stat} is {minimum!r}, not an integer"
    return None


_SECONDS_FROM_0 = Number(0)
_COUNT = Integer(1)
_OFF_OR_COUNT = Integer(0, note="0: off")
_PATH = Text("a path")
_OFF_OR_PIXELS = Integer(0, note="pixels, 0: off")
_OFF_OR_RATIO = Parsed(
    "a width/height ratio >= 0, as a number (0.75) or W:H (3:4); 0: off", item_filter.aspect_ratio
)
_PROMPT_WORDS = Parsed(
    "words or phrases, and re:<regular expression>, comma-separated or a JSON list",
    item_filter.prompt_patterns,
)

#: Every setting this project reads or documents -> what it allows.
SETTINGS: dict[str, Rule] = {
    # settings.py, in its order.
    "CIVITAI_API_URL": Url(plain=True),
    "CIVITAI_API_KEY": Text("a Civitai API key, or empty"),
    "CIVITAI_THRESHOLDS": JsonObject(
        f"a JSON object {{stat: integer minimum}} of the stats {', '.join(STAT_NAMES)}", _thresholds_problem
    ),
    "CIVITAI_REQUIRE_PROMPT": Boolean(),
    "CIVITAI_NSFW_LEVELS": Parsed(
        f"nsfwLevel names ({', '.join(item_filter.NSFW_LEVEL_NAMES)}) and browsing levels (sums of "
        f"PG=1 PG13=2 R=4 X=8 XXX=16, 1 to {item_filter.MAX_BROWSING_LEVEL}), comma-separated; empty: off",
        item_filter.nsfw_levels,
    ),
    "CIVITAI_MIN_WIDTH": _OFF_OR_PIXELS,
    "CIVITAI_MAX_WIDTH": _OFF_OR_PIXELS,
    "CIVITAI_MIN_HEIGHT": _OFF_OR_PIXELS,
    "CIVITAI_MAX_HEIGHT": _OFF_OR_PIXELS,
    "CIVITAI_MIN_PIXELS": _OFF_OR_PIXELS,
    "CIVITAI_MAX_PIXELS": _OFF_OR_PIXELS,
    "CIVITAI_MIN_ASPECT_RATIO": _OFF_OR_RATIO,
    "CIVITAI_MAX_ASPECT_RATIO": _OFF_OR_RATIO,
    "CIVITAI_PROMPT_INCLUDE": _PROMPT_WORDS,
    "CIVITAI_PROMPT_EXCLUDE": _PROMPT_WORDS,
    "CIVITAI_PROMPT_CASE_SENSITIVE": Boolean(),
    "CIVITAI_WITH_TAGS": Boolean(),
    "CIVITAI_ID_FILE": Text("a file's path", r"(?s).+"),
    "CIVITAI_REDIS_URL": Url(("redis", "rediss", "unix"), empty=True, host=False),
    "CIVITAI_REDIS_PREFIX": Text("a non-empty name without spaces or * ? [ ]", r"[^\s*?\[\]]+"),
    "CIVITAI_SHARED_CRAWL": Boolean(),
    "CIVITAI_REDIS_CLAIM_AFTER": Number(1),
    "CIVITAI_REDIS_TIMEOUT": Number(1),
    "CIVITAI_CAPTION_FILES": Boolean(),
    "CIVITAI_CAPTION_RAW": Boolean(),
    "CIVITAI_MANIFEST_PART_ROWS": _COUNT,
    "CIVITAI_MANIFEST": Boolean(),
    "CIVITAI_MANIFEST_FLUSH_ROWS": _COUNT,
    "CIVITAI_MANIFEST_FLUSH_SECONDS": Number(0, above=True),
    "CIVITAI_LOG_DIR": Text("a folder's path", r"(?s).+"),
    "CIVITAI_JPEG_QUALITY": Integer(1, 100),
    "CIVITAI_IMAGE_WIDTH": Integer(0, MAX_WIDTH, note="pixels, 0: the originals"),
    "CIVITAI_MAX_IMAGE_PIXELS": _COUNT,
    "CIVITAI_RETRY_BASE_DELAY": _SECONDS_FROM_0,
    "CIVITAI_RETRY_MAX_DELAY": _SECONDS_FROM_0,
    "CIVITAI_EMPTY_PAGE_RETRIES": Integer(0),
    "CIVITAI_EMPTY_PAGE_DELAY": _SECONDS_FROM_0,
    "CIVITAI_IMAGE_REDIRECTS": Choice(("https", "any", "none")),
    "CIVITAI_API_CONCURRENCY": _COUNT,
    "CIVITAI_IMAGE_THREADS": Integer(-1, note="-1: one per usable core, 0: in the reactor thread"),
    "CIVITAI_IMAGES_IN_FLIGHT": _COUNT,
    "CIVITAI_VIDEOS_IN_FLIGHT": _COUNT,
    "CIVITAI_MAX_VIDEO_BYTES": _COUNT,
    "CIVITAI_VIDEO_DOWNLOAD_TIMEOUT": Number(0, above=True),
    "CIVITAI_MAX_STORE_FAILURES": _COUNT,
    "CIVITAI_NEW_WALK": Boolean(),
    # Scrapy's, in the order of the README's table.
    "IMAGES_STORE": Text("a folder, file://folder or s3://bucket/prefix", r"(?s).+"),
    "AWS_ACCESS_KEY_ID": Text(),
    "AWS_SECRET_ACCESS_KEY": Text(),
    "AWS_SESSION_TOKEN": Text(),
    "AWS_ENDPOINT_URL": Url(empty=True),
    "AWS_REGION_NAME": Text(),
    "AWS_USE_SSL": Boolean(),
    "AWS_VERIFY": Text("true, false or a CA bundle's path"),
    "IMAGES_STORE_S3_ACL": Choice(
        (
            "private",
            "public-read",
            "public-read-write",
            "authenticated-read",
            "aws-exec-read",
            "bucket-owner-read",
            "bucket-owner-full-control",
            "",
        )
    ),
    "AWS_MAX_POOL_CONNECTIONS": _COUNT,
    "RETRY_TIMES": Integer(0),
    "RETRY_HTTP_CODES": StatusCodes(),
    "CONCURRENT_REQUESTS": _COUNT,
    "CONCURRENT_REQUESTS_PER_DOMAIN": _COUNT,
    "DOWNLOAD_SLOTS": JsonObject('a JSON object {slot: {"concurrency": n, "delay": seconds...}}'),
    "CONCURRENT_ITEMS": _COUNT,
    "SCRAPER_SLOT_MAX_ACTIVE_SIZE": _COUNT,
    "MEDIA_ALLOW_REDIRECTS": Boolean(),
    "DOWNLOAD_TIMEOUT": Number(0, above=True),
    "DOWNLOAD_WARNSIZE": Integer(0, note="bytes, 0: no warning"),
    "DOWNLOAD_MAXSIZE": Integer(0, note="bytes, 0: no limit"),
    "CLOSESPIDER_ITEMCOUNT": _OFF_OR_COUNT,
    "CLOSESPIDER_PAGECOUNT": _OFF_OR_COUNT,
    "CLOSESPIDER_TIMEOUT": Number(0),
    "CLOSESPIDER_ERRORCOUNT": _OFF_OR_COUNT,
    "CLOSESPIDER_TIMEOUT_NO_ITEM": Integer(0, note="seconds, 0: off"),
    "CLOSESPIDER_PAGECOUNT_NO_ITEM": _OFF_OR_COUNT,
    # logging.Logger.setLevel() knows these names, in capitals only.
    "LOG_LEVEL": Choice(("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")),
    "LOG_FILE": _PATH,
    "JOBDIR": _PATH,
    "TELNETCONSOLE_ENABLED": Boolean(),
    "REMOTE_CONTROL_ENABLED": Boolean(),
}


# --- settings that cannot work together ---------------------------------------------------
# Each takes settings whose values passed their rules, and returns None when they can work
# together, else one line naming them and saying what is allowed.


def _shared_crawl_without_redis(settings: BaseSettings) -> str | None:
    if not settings.getbool("CIVITAI_SHARED_CRAWL") or settings.get("CIVITAI_REDIS_URL"):
        return None
    return (
        "CIVITAI_SHARED_CRAWL=true without CIVITAI_REDIS_URL: a shared crawl lives in Redis; allowed is "
        "CIVITAI_SHARED_CRAWL=true with CIVITAI_REDIS_URL=redis://host:port/db, or "
        "CIVITAI_SHARED_CRAWL=false (a crawl of this process alone)"
    )


def _shared_crawl_with_jobdir(settings: BaseSettings) -> str | None:
    # Scrapyd gives each job a JOBDIR only when its jobs_dir is set (empty by default and in deploy/).
    jobdir = settings.get("JOBDIR")
    if not settings.getbool("CIVITAI_SHARED_CRAWL") or not jobdir:
        return None
    return (
        f"CIVITAI_SHARED_CRAWL=true with JOBDIR={str(jobdir)!r}: a shared crawl keeps where it stands "
        "in Redis, so JOBDIR would do nothing; allowed is CIVITAI_SHARED_CRAWL=true without JOBDIR, or "
        "JOBDIR without CIVITAI_SHARED_CRAWL (a crawl of this process alone, paused and resumed there)"
    )


def _shared_crawl_with_new_walk(settings: BaseSettings) -> str | None:
    # A shared crawl starts its next walk itself once the current one is done; none can be forced.
    if not settings.getbool("CIVITAI_SHARED_CRAWL") or not settings.getbool("CIVITAI_NEW_WALK"):
        return None
    return (
        "CIVITAI_SHARED_CRAWL=true with CIVITAI_NEW_WALK=true: a shared crawl starts its next walk "
        "itself once the current one is done, so CIVITAI_NEW_WALK would do nothing; allowed is "
        "CIVITAI_SHARED_CRAWL=true without CIVITAI_NEW_WALK, or CIVITAI_NEW_WALK=true with JOBDIR "
        "(a paused job started over)"
    )


def _minimum_above_maximum(settings: BaseSettings) -> str | None:
    # The filter would drop every item: surely a mistake (or the two were swapped).
    bounds: list[tuple[str, str, Any, Any]] = [
        (low, high, settings.getint(low), settings.getint(high)) for low, high, _ in item_filter.SIZE_LIMITS
    ]
    low, high = item_filter.ASPECT_RATIO_LIMITS
    bounds.append(
        (low, high, item_filter.aspect_ratio(settings.get(low)), item_filter.aspect_ratio(settings.get(high)))
    )
    for low, high, minimum, maximum in bounds:
        if minimum and maximum and minimum > maximum:
            return (
                f"{low}={settings.get(low)!r} is above {high}={settings.get(high)!r}: no item could "
                f"pass; allowed is {low} <= {high}, or either 0 (no bound)"
            )
    return None


#: Settings that cannot work together, in the order they are checked.
COMBINATIONS: tuple[Callable[[BaseSettings], str | None], ...] = (
    _shared_crawl_without_redis,
    _shared_crawl_with_jobdir,
    _shared_crawl_with_new_walk,
    _minimum_above_maximum,
)


def check_settings(settings: BaseSettings) -> None:
    """Raise ``ValueError`` (one line) naming the first unknown ``CIVITAI_*`` setting, the first
    declared setting whose value is not allowed, or the first :data:`COMBINATIONS` that cannot
    work. An unset setting (None) passes."""
    for name in sorted(settings):
        if name.startswith(PREFIX) and name not in SETTINGS:
            raise ValueError(_unknown(name))
    for name, rule in SETTINGS.items():
        value = settings.get(name)
        if value is None:
            continue
        problem = rule.problem(value)
        if problem is not None:
            shown = _without_password(value) if isinstance(rule, Url) and isinstance(value, str) else value
            because = f" ({problem})" if problem else ""
            raise ValueError(f"{name}={shown!r} is not valid{because}: allowed is {rule.allowed}")
    for combination in COMBINATIONS:
        problem = combination(settings)
        if problem is not None:
            raise ValueError(problem)


def _unknown(name: str) -> str:
    # Matched without the prefix, which every candidate shares: CIVITAI_FOO is not "close" to
    # CIVITAI_LOG_DIR because of the eight letters they have in common.
    known = {known[len(PREFIX) :]: known for known in SETTINGS if known.startswith(PREFIX)}
    close = difflib.get_close_matches(name[len(PREFIX) :], known, n=1)
    if close:
        return f"unknown setting {name}: did you mean {known[close[0]]}?"
    return (
        f"unknown setting {name}: the project's settings are listed in civitai_spider/settings.py "
        "and in the README's settings table"
    )


def _without_password(url: str) -> str:
    try:
        return safe_url(url)
    except ValueError:  # not even a URL: hide whatever may be a user and password
        return re.sub(r"//[^/]*@", "//***@", url)
