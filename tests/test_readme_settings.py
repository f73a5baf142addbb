"""The README's settings tables list exactly the settings that :mod:`civitai_spider.setting_rules`
declares, each with the default that settings.py (or Scrapy) gives it."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from scrapy.settings import Settings

from civitai_spider import settings
from civitai_spider.setting_rules import SETTINGS
from tests.support.crawls import REPOSITORY

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
SETTINGS_SECTION = README.split("\n## Settings (`-s NAME=VALUE`)\n", 1)[1].split("\n## ", 1)[0]
#: A default cell that names no value ("Scrapy's", "botocore's", "unset", "set by the spider"):
#: settings.py must leave the setting alone.
_NOT_IN_SETTINGS_PY = object()


def settings_rows() -> dict[str, str]:
    """Setting name -> its default cell, from the rows of the README's settings tables."""
    rows: dict[str, str] = {}
    for line in SETTINGS_SECTION.splitlines():
        if not line.startswith("| `"):
            continue
        names, default = (cell.strip() for cell in line.strip().strip("|").split("|")[:2])
        # A row may list several names: "`AWS_REGION_NAME`, `AWS_USE_SSL`, `AWS_VERIFY`".
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", names):
            assert name not in rows, f"two README rows for {name}"
            rows[name] = default
    return rows


def readme_default(cell: str) -> Any:
    """The value a default cell names: its first `code`, or what its words mean."""
    if cell.startswith("`"):
        return _value(cell[1 : cell.index("`", 1)])
    from_environment = re.match(r"environment variable `(\w+)`, else empty", cell)
    if from_environment:
        return os.environ.get(from_environment[1], "")
    if cell.startswith("empty"):
        return ""
    if cell.startswith("off"):
        return 0
    return _NOT_IN_SETTINGS_PY


def _value(text: str) -> Any:
    if text in {"true", "True", "false", "False"}:
        return text.lower() == "true"
    try:
        return json.loads(text)  # numbers, {"heartCount": 2}
    except ValueError:
        pass
    try:
        return int(text.replace("_", "").replace(",", ""))  # 100_000, 100,000
    except ValueError:
        return text


def test_the_settings_tables_list_exactly_the_declared_settings() -> None:
    assert sorted(settings_rows()) == sorted(SETTINGS)


@pytest.mark.parametrize(("name", "cell"), sorted(settings_rows().items()))
def test_each_default_in_the_settings_tables_is_the_one_of_settings_py(name: str, cell: str) -> None:
    default = readme_default(cell)
    if default is _NOT_IN_SETTINGS_PY:
        assert not hasattr(settings, name), f"settings.py sets {name}; the README says {cell!r}"
        return
    project = Settings()
    project.setmodule(settings, priority="project")
    assert project.get(name) == default, f"README: {cell!r}"


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("`true`", True),
        ("`False`", False),
        ("`100_000`", 100_000),
        ("`1,000,000`", 1_000_000),
        ("`10.0`", 10.0),
        ('`{"heartCount": 2}` (JSON)', {"heartCount": 2}),
        ("`INFO` (Scrapy: `DEBUG`)", "INFO"),
        ("empty (the ID file)", ""),
        ("off", 0),
        ("Scrapy's", _NOT_IN_SETTINGS_PY),
    ],
)
def test_default_cells_are_read_as_meant(cell: str, value: Any) -> None:
    assert readme_default(cell) == value
