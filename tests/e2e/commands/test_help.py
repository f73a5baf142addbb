"""End to end: ``scrapy <command> -h`` reads cleanly for every command of the project.

Scrapy's help formatter takes any help line that ends with a colon for a section heading: it
title-cases it and underlines it, so ``--output``'s "(default:" once became a heading of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from civitai_spider.query import ARGUMENTS
from tests.support.crawls import REPOSITORY, crawl_environment

COMMANDS = ("crawl", "civitai-manifest", "civitai-export", "civitai-ids", "civitai-status")
HEADINGS = ("Usage", "Options", "Global Options")
#: A narrow terminal, the default width, a wide one: the help wraps at each.
WIDTHS = (60, 80, 120)


def command_help(command: str, width: int) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", command, "-h"],
        cwd=REPOSITORY,
        env={**crawl_environment(), "COLUMNS": str(width)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not result.stderr, result.stderr[-2000:]
    return result.stdout


def option_lines(text: str, option: str) -> str:
    """The lines of ``option``'s entry: its own, then its help's, up to the next option."""
    lines = text.splitlines()
    start = next(number for number, line in enumerate(lines) if line.lstrip().startswith(option))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 8):  # an entry's help lines are indented past the options
            break
        entry.append(line)
    return "\n".join(entry)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_only_its_own_headings(command: str, width: int) -> None:
    text = command_help(command, width)
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line and re.fullmatch(r"=+|-+", line):  # an underline: the line above is a heading
            assert lines[number - 1] in HEADINGS, f"a help line became a heading:\n{text}"
    assert not [line for line in lines if line.strip().lower().startswith("(default")], text


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", ["civitai-manifest", "civitai-export"])
def test_output_help_is_on_its_option_lines(command: str, width: int) -> None:
    entry = option_lines(command_help(command, width), "--output DIR")
    assert "s3://bucket/prefix" in entry and "IMAGES_STORE" in entry, entry
    assert "by default the folder" in " ".join(entry.split()), entry


def test_crawl_help_names_every_spider_argument_and_the_readme_section() -> None:
    text = " ".join(command_help("crawl", 80).split())
    for name in ARGUMENTS:
        assert re.search(rf"\b{name}\b", text), f"-h does not name -a {name}"
    assert "README.md describes each in its section Spider arguments" in text
