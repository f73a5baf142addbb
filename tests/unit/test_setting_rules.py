"""Tests of :mod:`civitai_spider.setting_rules`: what each setting allows, and the messages.

The README's settings tables are held to the same declaration in ``tests/test_readme_settings.py``;
end to end, ``tests/e2e/test_settings.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from scrapy.settings import Settings

from civitai_spider import settings as project_settings
from civitai_spider.items import STAT_NAMES
from civitai_spider.setting_rules import SETTINGS, check_settings
from tests.support.crawls import project_crawler

API_URL_ALLOWED = "an absolute http:// or https:// URL with a host, without a query or fragment"


def project_settings_with(**overrides: Any) -> Settings:
    """The settings of a crawl: Scrapy's, settings.py's, then ``-s NAME=VALUE`` (``overrides``)."""
    settings = Settings()
    settings.setmodule(project_settings, priority="project")
    settings.setdict(overrides, priority="cmdline")
    return settings


def problem_with(name: str, value: Any) -> str | None:
    """The one-line error for ``name=value`` over the project's settings, None if it passes."""
    return problem_with_all(**{name: value})


def problem_with_all(**overrides: Any) -> str | None:
    """The one-line error for ``overrides`` given together over the project's settings, or None."""
    try:
        check_settings(project_settings_with(**overrides))
    except ValueError as error:
        return str(error)
    return None


# --- the declaration -----------------------------------------------------------------------


def test_every_project_setting_is_declared_and_every_declared_one_exists() -> None:
    in_settings_py = {name for name in dir(project_settings) if name.startswith("CIVITAI_")}
    declared = {name for name in SETTINGS if name.startswith("CIVITAI_")}
    assert in_settings_py == declared


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_default_passes_its_own_rule(name: str) -> None:
    value = project_settings_with().get(name)
    assert value is None or SETTINGS[name].problem(value) is None, f"{name}={value!r}"


def test_the_project_settings_and_scrapys_own_pass() -> None:
    check_settings(project_settings_with())
    check_settings(project_crawler().settings)
    check_settings(Settings())


# --- each kind -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CIVITAI_JPEG_QUALITY", "1"),
        ("CIVITAI_JPEG_QUALITY", 100),
        ("CIVITAI_MANIFEST_PART_ROWS", "100_000"),
        ("CIVITAI_IMAGE_THREADS", "-1"),
        ("CIVITAI_EMPTY_PAGE_RETRIES", "0"),
        ("CIVITAI_RETRY_BASE_DELAY", "0"),
        ("CIVITAI_REDIS_TIMEOUT", "1.5"),
        ("CIVITAI_VIDEO_DOWNLOAD_TIMEOUT", "0.5"),
        ("CLOSESPIDER_TIMEOUT", "2.5"),
        ("CIVITAI_WITH_TAGS", "true"),
        ("CIVITAI_WITH_TAGS", "False"),
        ("CIVITAI_WITH_TAGS", "1"),
        ("CIVITAI_WITH_TAGS", 0),
        ("CIVITAI_WITH_TAGS", True),
        ("CIVITAI_IMAGE_REDIRECTS", "none"),
        ("LOG_LEVEL", "WARNING"),
        ("IMAGES_STORE_S3_ACL", ""),
        ("CIVITAI_API_URL", "https://civitai.red/api/v1/images"),
        ("CIVITAI_API_URL", "http://127.0.0.1:8080/api/v1/images"),
        ("CIVITAI_REDIS_URL", ""),
        ("CIVITAI_REDIS_URL", "rediss://:secret@redis.example.com:6380/2"),
        ("CIVITAI_REDIS_URL", "unix:///run/redis.sock"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
        ("CIVITAI_THRESHOLDS", "{}"),
        ("CIVITAI_THRESHOLDS", '{"likeCount": 10, "heartCount": -1}'),
        ("CIVITAI_THRESHOLDS", {"commentCount": 3}),
        ("RETRY_HTTP_CODES", "500,503, 429"),
        ("RETRY_HTTP_CODES", [503]),
        ("DOWNLOAD_SLOTS", '{"civitai-api": {"concurrency": 4}}'),
        ("CIVITAI_REDIS_PREFIX", "civitai-test"),
        ("JOBDIR", "jobs/daily"),
    ],
    ids=repr,
)
def test_allowed_values_pass(name: str, value: Any) -> None:
    assert problem_with(name, value) is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "CIVITAI_JPEG_QUALITY",
            "200",
            "CIVITAI_JPEG_QUALITY='200' is not valid: allowed is an integer from 1 to 100",
        ),
        ("CIVITAI_JPEG_QUALITY", "0", "allowed is an integer from 1 to 100"),
        ("CIVITAI_JPEG_QUALITY", "1.5", "allowed is an integer from 1 to 100"),
        ("CIVITAI_IMAGES_IN_FLIGHT", "0", "is not valid: allowed is an integer >= 1"),
        ("CIVITAI_MAX_STORE_FAILURES", "0", "allowed is an integer >= 1"),
        ("CIVITAI_IMAGE_THREADS", "-2", "allowed is an integer >= -1 (-1: one per usable core"),
        ("CLOSESPIDER_ITEMCOUNT", "-1", "allowed is an integer >= 0 (0: off)"),
        ("CIVITAI_API_CONCURRENCY", True, "CIVITAI_API_CONCURRENCY=True is not valid"),
        (
            "CIVITAI_RETRY_BASE_DELAY",
            "soon",
            "CIVITAI_RETRY_BASE_DELAY='soon' is not valid: allowed is a number of seconds >= 0",
        ),
        ("CIVITAI_RETRY_MAX_DELAY", -0.5, "CIVITAI_RETRY_MAX_DELAY=-0.5 is not valid"),
        ("CIVITAI_REDIS_CLAIM_AFTER", "0.5", "allowed is a number of seconds >= 1"),
        ("CIVITAI_VIDEO_DOWNLOAD_TIMEOUT", "0", "allowed is a number of seconds > 0"),
        ("CIVITAI_VIDEO_DOWNLOAD_TIMEOUT", "nan", "allowed is a number of seconds > 0"),
        ("DOWNLOAD_TIMEOUT", "inf", "allowed is a number of seconds > 0"),
        (
            "CIVITAI_WITH_TAGS",
            "yes",
            "CIVITAI_WITH_TAGS='yes' is not valid: allowed is true or false (also 1 or 0)",
        ),
        ("CIVITAI_NEW_WALK", "TRUE", "allowed is true or false (also 1 or 0)"),
        ("CIVITAI_NEW_WALK", "2", "allowed is true or false (also 1 or 0)"),
        ("MEDIA_ALLOW_REDIRECTS", "", "allowed is true or false (also 1 or 0)"),
        (
            "CIVITAI_IMAGE_REDIRECTS",
            "sometimes",
            "CIVITAI_IMAGE_REDIRECTS='sometimes' is not valid: allowed is https, any or none",
        ),
        ("LOG_LEVEL", "info", "allowed is CRITICAL, ERROR, WARNING, INFO or DEBUG"),
        ("IMAGES_STORE_S3_ACL", "public", "allowed is private, public-read, "),
        ("IMAGES_STORE", "", "IMAGES_STORE='' is not valid: allowed is a folder, file://folder or s3://"),
        (
            "CIVITAI_API_URL",
            "example.com/api",
            f"CIVITAI_API_URL='example.com/api' is not valid (no scheme): allowed is {API_URL_ALLOWED}",
        ),
        ("CIVITAI_API_URL", "not-a-url", "(no scheme)"),
        ("CIVITAI_API_URL", "localhost:8080/api", "(no scheme)"),
        ("CIVITAI_API_URL", "ftp://civitai.com/api/v1/images", "(scheme ftp://)"),
        ("CIVITAI_API_URL", "https:///api/v1/images", "(no host)"),
        ("CIVITAI_API_URL", "https://civitai.com/api/v1/images?nsfw=X", "(a query)"),
        ("CIVITAI_API_URL", "https://civitai.com/api/v1/images?", "(a query)"),
        ("CIVITAI_API_URL", "https://civitai.com/api/v1/images#top", "(a fragment)"),
        ("CIVITAI_API_URL", "https://civitai.com:https/api", "(not a URL)"),
        ("CIVITAI_API_URL", "", f"CIVITAI_API_URL='' is not valid: allowed is {API_URL_ALLOWED}"),
        (
            "CIVITAI_REDIS_URL",
            "http://127.0.0.1/0",
            "CIVITAI_REDIS_URL='http://127.0.0.1/0' is not valid (scheme http://): allowed is empty, or "
            "an absolute redis://, rediss:// or unix:// URL",
        ),
        ("AWS_ENDPOINT_URL", "s3.example.com", "AWS_ENDPOINT_URL='s3.example.com' is not valid (no scheme)"),
        ("CIVITAI_THRESHOLDS", "{not json", "is not valid (not a JSON object: Expecting property name"),
        ("CIVITAI_THRESHOLDS", "[1]", "is not valid (not a JSON object): allowed is a JSON object"),
        (
            "CIVITAI_THRESHOLDS",
            '{"hearts": 2}',
            "CIVITAI_THRESHOLDS='{\"hearts\": 2}' is not valid (unknown stat 'hearts'): allowed is a JSON "
            f"object {{stat: integer minimum}} of the stats {', '.join(STAT_NAMES)}",
        ),
        ("CIVITAI_THRESHOLDS", '{"likeCount": 2.5}', "(the minimum of likeCount is 2.5, not an integer)"),
        ("CIVITAI_REDIS_PREFIX", "my crawl", "allowed is a non-empty name without spaces or * ? [ ]"),
        ("CIVITAI_ID_FILE", "", "CIVITAI_ID_FILE='' is not valid: allowed is a file's path"),
        ("RETRY_HTTP_CODES", "500,5O3", "is not valid ('5O3' is not a status code)"),
        ("RETRY_HTTP_CODES", "600", "allowed is HTTP status codes from 100 to 599, comma-separated"),
    ],
    ids=repr,
)
def test_a_value_not_allowed_is_one_line_naming_the_setting_the_value_and_what_is_allowed(
    name: str, value: Any, message: str
) -> None:
    problem = problem_with(name, value)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"{name}={value!r} is not valid")
    assert message in problem


@pytest.mark.parametrize(
    "value",
    [
        "ftp://alice:hunter2@civitai.com/api",
        "https://alice:hunter2@civitai.com/api?x=1",
        "https://alice:hunter2@[civitai.com/api",
    ],
)
def test_a_refused_url_is_shown_without_its_password(value: str) -> None:
    problem = problem_with("CIVITAI_API_URL", value)
    assert problem is not None and "hunter2" not in problem and "***" in problem


def test_redis_urls_hide_a_password_in_the_query_too() -> None:
    problem = problem_with("CIVITAI_REDIS_URL", "http://127.0.0.1/0?password=hunter2")
    assert problem is not None and "hunter2" not in problem


def test_an_unset_setting_passes() -> None:
    check_settings(Settings({"CIVITAI_API_URL": None, "JOBDIR": None}))


# --- settings that cannot work together ----------------------------------------------------

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "overrides",
    [
        {"CIVITAI_REDIS_URL": REDIS},
        {"CIVITAI_REDIS_URL": REDIS, "JOBDIR": "jobs/daily"},
        {"CIVITAI_REDIS_URL": REDIS, "JOBDIR": "jobs/daily", "CIVITAI_NEW_WALK": "true"},
        {"CIVITAI_SHARED_CRAWL": "true", "CIVITAI_REDIS_URL": REDIS},
        {"CIVITAI_SHARED_CRAWL": "1", "CIVITAI_REDIS_URL": "unix:///run/redis.sock", "JOBDIR": ""},
        {"CIVITAI_SHARED_CRAWL": "false", "JOBDIR": "jobs/daily", "CIVITAI_NEW_WALK": "true"},
        {"CIVITAI_SHARED_CRAWL": "0"},
    ],
    ids=repr,
)
def test_settings_that_work_together_pass(overrides: dict[str, str]) -> None:
    assert problem_with_all(**overrides) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"CIVITAI_SHARED_CRAWL": "true"},
            "CIVITAI_SHARED_CRAWL=true without CIVITAI_REDIS_URL: a shared crawl lives in Redis; allowed is "
            "CIVITAI_SHARED_CRAWL=true with CIVITAI_REDIS_URL=redis://host:port/db, or "
            "CIVITAI_SHARED_CRAWL=false (a crawl of this process alone)",
        ),
        (
            {"CIVITAI_SHARED_CRAWL": True, "CIVITAI_REDIS_URL": "", "JOBDIR": "jobs/daily"},
            "CIVITAI_SHARED_CRAWL=true without CIVITAI_REDIS_URL",
        ),
        (
            {"CIVITAI_SHARED_CRAWL": "1", "CIVITAI_REDIS_URL": REDIS, "JOBDIR": "jobs/daily"},
            "CIVITAI_SHARED_CRAWL=true with JOBDIR='jobs/daily': a shared crawl keeps where it stands in "
            "Redis, so JOBDIR would do nothing; allowed is CIVITAI_SHARED_CRAWL=true without JOBDIR, or "
            "JOBDIR without CIVITAI_SHARED_CRAWL (a crawl of this process alone, paused and resumed there)",
        ),
        (
            {"CIVITAI_SHARED_CRAWL": "true", "CIVITAI_REDIS_URL": REDIS, "CIVITAI_NEW_WALK": "True"},
            "CIVITAI_SHARED_CRAWL=true with CIVITAI_NEW_WALK=true: a shared crawl starts its next walk "
            "itself once the current one is done, so CIVITAI_NEW_WALK would do nothing; allowed is "
            "CIVITAI_SHARED_CRAWL=true without CIVITAI_NEW_WALK, or CIVITAI_NEW_WALK=true with JOBDIR "
            "(a paused job started over)",
        ),
    ],
    ids=["without_redis", "without_redis_first", "jobdir", "new_walk"],
)
def test_settings_that_cannot_work_together_are_one_line_naming_them(
    overrides: dict[str, Any], message: str
) -> None:
    problem = problem_with_all(**overrides)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(message)


def test_a_bad_value_is_named_before_any_combination() -> None:
    problem = problem_with_all(CIVITAI_SHARED_CRAWL="yes", JOBDIR="jobs/daily")
    assert problem == "CIVITAI_SHARED_CRAWL='yes' is not valid: allowed is true or false (also 1 or 0)"


# --- unknown names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("CIVITAI_TRESHOLDS", "CIVITAI_THRESHOLDS"),
        ("CIVITAI_API_URI", "CIVITAI_API_URL"),
        ("CIVITAI_IMAGE_IN_FLIGHT", "CIVITAI_IMAGES_IN_FLIGHT"),
        ("CIVITAI_REDIS_TIMOUT", "CIVITAI_REDIS_TIMEOUT"),
    ],
)
def test_an_unknown_project_setting_names_the_closest_known_one(name: str, meant: str) -> None:
    assert problem_with(name, "1") == f"unknown setting {name}: did you mean {meant}?"


def test_an_unknown_project_setting_without_a_close_one_says_where_the_list_is() -> None:
    assert problem_with("CIVITAI_FOO", "1") == (
        "unknown setting CIVITAI_FOO: the project's settings are listed in civitai_spider/settings.py "
        "and in the README's settings table"
    )


def test_other_unknown_settings_are_scrapys_business() -> None:
    assert problem_with("MY_PIPELINE_OPTION", "1") is None


# --- the filters before download (civitai_spider/item_filter.py) ------------------------------

_PROMPT_ALLOWED = "allowed is words or phrases, and re:<regular expression>, comma-separated or a JSON list"
_RATIO_ALLOWED = "allowed is a width/height ratio >= 0, as a number (0.75) or W:H (3:4); 0: off"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CIVITAI_MIN_WIDTH", "1024"),
        ("CIVITAI_MAX_PIXELS", 4_194_304),
        ("CIVITAI_MIN_ASPECT_RATIO", "0.75"),
        ("CIVITAI_MAX_ASPECT_RATIO", "4:3"),
        ("CIVITAI_MAX_ASPECT_RATIO", 1.5),
        ("CIVITAI_NSFW_LEVELS", "None,Soft,Mature"),
        ("CIVITAI_NSFW_LEVELS", "x, 7"),
        ("CIVITAI_NSFW_LEVELS", ["None", 2]),
        ("CIVITAI_NSFW_LEVELS", ""),
        ("CIVITAI_PROMPT_INCLUDE", "portrait,re:smil(e|ing)"),
        ("CIVITAI_PROMPT_EXCLUDE", '["re:x{1,3}", "red hair"]'),
        ("CIVITAI_PROMPT_CASE_SENSITIVE", "true"),
    ],
    ids=repr,
)
def test_filter_values_allowed(name: str, value: Any) -> None:
    assert problem_with(name, value) is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "CIVITAI_MIN_WIDTH",
            "-1",
            "CIVITAI_MIN_WIDTH='-1' is not valid: allowed is an integer >= 0 (pixels, 0: off)",
        ),
        ("CIVITAI_MAX_PIXELS", "4M", "CIVITAI_MAX_PIXELS='4M' is not valid: allowed is an integer >= 0"),
        (
            "CIVITAI_MIN_ASPECT_RATIO",
            "-0.5",
            f"CIVITAI_MIN_ASPECT_RATIO='-0.5' is not valid (negative): {_RATIO_ALLOWED}",
        ),
        (
            "CIVITAI_MAX_ASPECT_RATIO",
            "16x9",
            f"CIVITAI_MAX_ASPECT_RATIO='16x9' is not valid (not a number, W:H or W/H): {_RATIO_ALLOWED}",
        ),
        (
            "CIVITAI_PROMPT_INCLUDE",
            "portrait,re:smil(e|ing",
            "CIVITAI_PROMPT_INCLUDE='portrait,re:smil(e|ing' is not valid ('re:smil(e|ing' is not a regular "
            f"expression: missing ), unterminated subpattern at position 4): {_PROMPT_ALLOWED}",
        ),
        (
            "CIVITAI_PROMPT_EXCLUDE",
            "re:",
            "CIVITAI_PROMPT_EXCLUDE='re:' is not valid ('re:' has no expression after re:): "
            + _PROMPT_ALLOWED,
        ),
        (
            "CIVITAI_PROMPT_EXCLUDE",
            '["nsfw", ""]',
            f"""CIVITAI_PROMPT_EXCLUDE='["nsfw", ""]' is not valid (an empty entry): {_PROMPT_ALLOWED}""",
        ),
        (
            "CIVITAI_NSFW_LEVELS",
            "None,XXX",
            "CIVITAI_NSFW_LEVELS='None,XXX' is not valid (unknown level 'XXX'): allowed is nsfwLevel names "
            "(None, Soft, Mature, X) and browsing levels (sums of PG=1 PG13=2 R=4 X=8 XXX=16, 1 to 31), "
            "comma-separated; empty: off",
        ),
        (
            "CIVITAI_NSFW_LEVELS",
            "32",
            "CIVITAI_NSFW_LEVELS='32' is not valid (browsing level 32 is not from 1 to 31)",
        ),
        (
            "CIVITAI_NSFW_LEVELS",
            "Blocked",
            "CIVITAI_NSFW_LEVELS='Blocked' is not valid (unknown level 'Blocked')",
        ),
        (
            "CIVITAI_PROMPT_CASE_SENSITIVE",
            "yes",
            "CIVITAI_PROMPT_CASE_SENSITIVE='yes' is not valid: allowed is true",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None,
)
def test_a_bad_filter_value_is_one_line_naming_it(name: str, value: str, message: str) -> None:
    problem = problem_with(name, value)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(message)


@pytest.mark.parametrize(
    ("low", "high", "low_value", "high_value"),
    [
        ("CIVITAI_MIN_WIDTH", "CIVITAI_MAX_WIDTH", "2048", "1024"),
        ("CIVITAI_MIN_HEIGHT", "CIVITAI_MAX_HEIGHT", "769", "768"),
        ("CIVITAI_MIN_PIXELS", "CIVITAI_MAX_PIXELS", "1048577", "1048576"),
        ("CIVITAI_MIN_ASPECT_RATIO", "CIVITAI_MAX_ASPECT_RATIO", "4:3", "1.33"),
    ],
)
def test_a_minimum_above_its_maximum_is_one_line_naming_both(
    low: str, high: str, low_value: str, high_value: str
) -> None:
    assert problem_with_all(**{low: low_value, high: high_value}) == (
        f"{low}={low_value!r} is above {high}={high_value!r}: no item could pass; "
        f"allowed is {low} <= {high}, or either 0 (no bound)"
    )
    assert problem_with_all(**{low: low_value, high: low_value}) is None  # equal: one size passes
    assert problem_with_all(**{low: low_value, high: "0"}) is None  # 0: no maximum
