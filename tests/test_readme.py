"""The README documents every knob (each project setting and each spider argument has its row), and
its first screen holds the two commands it promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from civitai_spider import settings
from civitai_spider.query import ARGUMENTS
from tests.support.crawls import REPOSITORY

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
ROWS = [line for line in README.splitlines() if line.startswith("| `")]


@pytest.mark.parametrize("name", sorted(name for name in dir(settings) if name.startswith("CIVITAI_")))
def test_every_project_setting_has_a_row(name: str) -> None:
    assert any(row.startswith(f"| `{name}` |") for row in ROWS), f"no README row for {name}"


@pytest.mark.parametrize("name", ARGUMENTS)
def test_every_spider_argument_has_a_row(name: str) -> None:
    assert any(row.startswith(f"| `{name}` ") for row in ROWS), f"no README row for -a {name}"


# --- the first screen: two commands, one that installs and crawls, one that installs and tests ---

FIRST_SCREEN = README.split("\n---\n", 1)[0]
COMMANDS = [block.strip() for block in re.findall(r"```sh\n(.*?)```", FIRST_SCREEN, re.DOTALL)]


def test_the_first_screen_has_one_command_to_crawl_and_one_to_test() -> None:
    assert len(COMMANDS) == 2 and not [command for command in COMMANDS if "\n" in command], COMMANDS
    crawl, tests = COMMANDS
    assert "pip install -r requirements.txt && scrapy crawl civitai" in crawl
    assert "pip install -r requirements-dev.txt && python -m pytest" in tests
    # CI runs the same steps (.ci/run), with sudo too only where it is needed and there.
    ci = (REPOSITORY / ".ci" / "run").read_text()
    for step in tests.replace("$(command -v sudo) ", "").split(" && "):
        assert step in ci, f"{step!r} is not in .ci/run"
    assert "command -v sudo" in ci


@pytest.mark.parametrize("sudo", [True, False], ids=["a user with sudo", "root without sudo"])
def test_the_test_command_installs_redis_with_sudo_or_without(tmp_path: Path, sudo: bool) -> None:
    """Its apt-get steps, with stand-ins for sudo and apt-get that write down how they were called."""
    calls = tmp_path / "calls"
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    stand_ins = {"apt-get": f'echo "apt-get $*" >> {calls}'}
    if sudo:
        stand_ins["sudo"] = f'echo "sudo $1" >> {calls}; exec "$@"'
    for name, body in stand_ins.items():
        (bin_folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_folder / name).chmod(0o755)
    steps = [step for step in COMMANDS[1].split(" && ") if "apt-get" in step]
    result = subprocess.run(
        ["/bin/sh", "-c", " && ".join(steps)],
        env={"PATH": str(bin_folder)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    expected = ["apt-get update", "apt-get install -y redis-server"]
    if sudo:
        expected = [line for step in expected for line in ("sudo apt-get", step)]
    assert calls.read_text().splitlines() == expected


# --- the architecture section names the package as it is -----------------------------------

ARCHITECTURE = README.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
PACKAGE = REPOSITORY / "civitai_spider"
MODULES = sorted(path.relative_to(PACKAGE) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_the_architecture_section_names_every_module(module: Path) -> None:
    assert re.search(rf"(?<![\w-]){re.escape(module.stem)}(?![\w-])", ARCHITECTURE), (
        f"README section Architecture does not name civitai_spider/{module}"
    )


def test_every_module_the_architecture_section_names_exists() -> None:
    named = {
        name for name in re.findall(r"([\w/]+)\.(?:py|lua)\b", ARCHITECTURE) if not name.startswith("tests/")
    }
    existing = {str(path.with_suffix("")) for path in PACKAGE.rglob("*.py")} | {
        str(path.with_suffix("")) for path in PACKAGE.rglob("*.lua")
    }
    gone = sorted(name for name in named if not any(path.endswith(f"/{name}") for path in existing))
    assert not gone, f"README section Architecture names modules that are not in the package: {gone}"
