"""The repository names no path of one particular machine: what lies outside it is named relative to it."""

from __future__ import annotations

import re
import subprocess

from tests.support import fake_civitai
from tests.support.crawls import REPOSITORY

#: The start of an absolute path on a developer's machine or a server (not a URL path).
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|Users|root|mnt|srv)/[\w.-]")


def tracked_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    return [name for name in listing.stdout.split("\0") if name]


def test_no_tracked_file_names_a_path_of_one_machine() -> None:
    found = []
    for name in tracked_files():
        try:
            text = (REPOSITORY / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary, or deleted in the work tree
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_fake_names_the_api_doc_beside_the_repository() -> None:
    assert "``../shared/docs/civitai-api.md``" in (fake_civitai.__doc__ or "")
