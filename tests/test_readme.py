"""The README documents every knob: each project setting and each spider argument has its row."""

from __future__ import annotations

import pytest

from civitai_spider import settings
from civitai_spider.spiders.civitai import _ARGUMENTS
from tests.conftest import REPOSITORY

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
ROWS = [line for line in README.splitlines() if line.startswith("| `")]


@pytest.mark.parametrize("name", sorted(name for name in dir(settings) if name.startswith("CIVITAI_")))
def test_every_project_setting_has_a_row(name: str) -> None:
    assert any(row.startswith(f"| `{name}` |") for row in ROWS), f"no README row for {name}"


@pytest.mark.parametrize("name", _ARGUMENTS)
def test_every_spider_argument_has_a_row(name: str) -> None:
    assert any(row.startswith(f"| `{name}` ") for row in ROWS), f"no README row for -a {name}"
