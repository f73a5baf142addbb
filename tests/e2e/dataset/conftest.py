"""The dataset tests' stores: one that a real crawl filled from the fake Civitai server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crawls import run_crawl
from tests.support.datasets import CRAWL_SETTINGS, add_items
from tests.support.fake_civitai import FakeCivitai


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCivitai]:
    with FakeCivitai() as server:
        yield server


@pytest.fixture(scope="module")
def crawled(fake: FakeCivitai, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A folder store that one real crawl filled, and the API records it got: without the
    crawl's own manifest parts (CIVITAI_MANIFEST off), so that a manifest reads the files."""
    items = add_items(fake)
    store = tmp_path_factory.mktemp("crawled") / "store"
    result = run_crawl(fake, store, "media=all", CIVITAI_MANIFEST="false", **CRAWL_SETTINGS)
    assert result.returncode == 0 and sorted(result.ids_recorded()) == sorted(i["id"] for i in items)
    return store, items


@pytest.fixture
def store(crawled: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> Path:
    """A copy of the crawled store, this test's to change."""
    return Path(shutil.copytree(crawled[0], tmp_path / "store"))
