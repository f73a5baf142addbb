"""End to end: a crawl into a folder imports nothing its settings do not need.

Scrapy imports every command of the project to start any of them, ``scrapy crawl`` too: the
dataset commands import pyarrow (with numpy and their threads, 0.1 s and more) only when they
run, ``civitai-status`` redis only when it runs; the spider imports the shared crawl (redis)
only for a shared crawl, and the stores load their backend (redis, botocore) by the settings.
The manifest's crawl parts (``CIVITAI_MANIFEST``) import pyarrow in their writer thread at the
first part, not at start-up: with them off, a crawl imports none of it.
Python's own import log (``PYTHONPROFILEIMPORTTIME``) says what a real crawl imported.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.crawls import run_crawl
from tests.support.datasets import CRAWL_SETTINGS, add_items
from tests.support.fake_civitai import FakeCivitai

#: A line of the import log, ``import time: self | cumulative | module``: the module.
_IMPORTED = re.compile(r"^import time:[^|]*\|[^|]*\|\s*(\S+)$", re.MULTILINE)


def test_a_folder_crawl_imports_no_pyarrow_redis_or_botocore(fake: FakeCivitai, tmp_path: Path) -> None:
    items = add_items(fake)
    result = run_crawl(
        fake,
        tmp_path / "store",
        "media=all",
        environment={"PYTHONPROFILEIMPORTTIME": "1"},
        CIVITAI_MANIFEST="false",
        **CRAWL_SETTINGS,
    )
    assert result.returncode == 0 and len(result.ids_recorded()) == len(items), result.stderr[-3000:]
    imported = set(_IMPORTED.findall(result.stderr))
    # Scrapy imports the commands themselves with importlib, which the log leaves out: what
    # they import with an import statement is in it, their reading of the store too.
    assert "civitai_spider.dataset.stored" in imported
    unneeded = {"pyarrow", "numpy", "redis", "botocore", "boto3"}
    assert not {name for name in imported if name.split(".")[0] in unneeded}


def test_a_crawl_writing_its_manifest_parts_imports_pyarrow_but_not_pandas(
    fake: FakeCivitai, tmp_path: Path
) -> None:
    # pyarrow would import pandas (0.15-0.2 s) at its first array, to ask a crawl's rows whether
    # they are pandas objects.
    add_items(fake)
    result = run_crawl(
        fake, tmp_path / "store", "media=all", environment={"PYTHONPROFILEIMPORTTIME": "1"}, **CRAWL_SETTINGS
    )
    assert result.returncode == 0 and result.ids_recorded(), result.stderr[-3000:]
    assert result.stats["civitai/manifest/rows_written"] == len(result.ids_recorded())
    imported = set(_IMPORTED.findall(result.stderr))
    assert "pyarrow.parquet" in imported
    # The refused attempt is in the log too, as a "pandas" that imported nothing of its own.
    assert not [name for name in imported if name.startswith("pandas.")]
