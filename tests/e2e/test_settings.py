"""A bad or misspelt setting, end to end: ``scrapy crawl civitai`` (and the project's other
commands) ends with exit status 2 and one ``error:`` line naming it, before the fake server
hears of it (:mod:`civitai_spider.setting_rules`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.crawls import run_crawl, run_scrapy_command
from tests.support.fake_civitai import FakeCivitai


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        pytest.param("CIVITAI_WITH_TAGS", lambda api: "yes", "CIVITAI_WITH_TAGS='yes'", id="with_tags"),
        pytest.param(
            "CIVITAI_REQUIRE_PROMPT", lambda api: "maybe", "CIVITAI_REQUIRE_PROMPT='maybe'", id="prompt"
        ),
        pytest.param("CIVITAI_API_URL", lambda api: "not-a-url", "(no scheme)", id="not_a_url"),
        pytest.param("CIVITAI_API_URL", lambda api: api.split("://", 1)[1], "(no scheme)", id="no_scheme"),
        pytest.param("CIVITAI_API_URL", lambda api: "ftp" + api[4:], "(scheme ftp://)", id="ftp"),
        pytest.param("CIVITAI_API_URL", lambda api: f"{api}?x=1", "(a query)", id="query"),
        pytest.param(
            "CIVITAI_TRESHOLDS",
            lambda api: "{}",
            "unknown setting CIVITAI_TRESHOLDS: did you mean CIVITAI_THRESHOLDS?",
            id="misspelt",
        ),
        # Scrapy configures logging before any command runs: checked before that too.
        pytest.param("LOG_LEVEL", lambda api: "info", "allowed is CRITICAL, ERROR", id="log_level"),
    ],
)
def test_a_bad_setting_ends_the_crawl_before_any_request(
    setting: str, value: Callable[[str], str], named: str, server: FakeCivitai, store: Path
) -> None:
    result = run_crawl(server, store, **{setting: value(server.api_url)})

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert setting in error and named in error
    assert server.requests == []


@pytest.mark.parametrize(
    ("command", "setting", "value"),
    [
        (["civitai-manifest"], "CIVITAI_IMAGES_IN_FLIGHT", "0"),
        (["civitai-manifest"], "CIVITAI_TRESHOLDS", "{}"),
        (["civitai-export"], "CIVITAI_JPEG_QUALITY", "200"),
        (["civitai-ids", "export", "ids.txt"], "CIVITAI_CAPTION_RAW", "maybe"),
        (["civitai-status"], "CIVITAI_REDIS_TIMEOUT", "soon"),
    ],
    ids=lambda value: value if isinstance(value, str) else value[0],
)
def test_the_other_commands_check_every_setting_before_their_work(
    command: list[str], setting: str, value: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    arguments = [str(tmp_path / argument) if argument.endswith(".txt") else argument for argument in command]

    # Redis does not answer there: a command that reached its id store would say so instead.
    result = run_scrapy_command(
        *arguments, IMAGES_STORE=str(store), CIVITAI_REDIS_URL="redis://127.0.0.1:9/0", **{setting: value}
    )

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"error: {setting}={value!r} is not valid" in error or f"unknown setting {setting}:" in error
    assert not store.exists() and not (tmp_path / "ids.txt").exists()
