"""The package and the benchmarks type-check (mypy, configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The repository root: the folder of pyproject.toml, whose [tool.mypy] says what to check.
REPOSITORY = next(
    folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").is_file()
)


def test_mypy_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
