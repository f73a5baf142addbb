"""The egg ``scrapyd-deploy`` uploads carries what the package reads at run time, not only its modules.

Scrapyd runs a job with the egg on ``sys.path`` (a zip import), so a file that setuptools leaves
out is missing only there: the shared crawl's Lua scripts are package data (pyproject.toml).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.crawls import REPOSITORY, crawl_environment

BIN = Path(sys.executable).parent  # scrapyd-deploy is installed beside this Python
SCRIPTS = "civitai_spider/shared_crawl/scripts"


def test_the_egg_carries_the_shared_crawls_scripts_and_they_load_from_it(tmp_path: Path) -> None:
    egg = tmp_path / "civitai_spider.egg"
    subprocess.run(
        [BIN / "scrapyd-deploy", f"--build-egg={egg}"], cwd=REPOSITORY, check=True, capture_output=True
    )
    scripts = sorted(path.name for path in (REPOSITORY / SCRIPTS).glob("*.lua"))
    assert scripts == ["done.lua", "finish.lua", "hand_on.lua", "join.lua"]
    with zipfile.ZipFile(egg) as archive:
        assert all(
            archive.read(f"{SCRIPTS}/{name}") == (REPOSITORY / SCRIPTS / name).read_bytes()
            for name in scripts
        )
    # As Scrapyd runs it: the egg on the path, the checkout not (another working folder).
    program = "from civitai_spider.shared_crawl import crawl; print(crawl.__file__, len(crawl._HAND_ON))"
    loaded = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env={**crawl_environment(), "PYTHONPATH": str(egg)},
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, length = loaded.stdout.split()
    assert module_file.startswith(str(egg) + "/")
    assert int(length) == len((REPOSITORY / SCRIPTS / "hand_on.lua").read_text(encoding="utf-8"))
