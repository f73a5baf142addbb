"""Build script for ``scrapyd-deploy``, which runs ``setup.py bdist_egg`` in this folder.

The project's metadata (name, version, the ``scrapy`` entry point) is in pyproject.toml. This file
exists because scrapyd-deploy writes a setup.py of its own into the checkout when there is none.
It also keeps deploying from writing into the checkout: setuptools' ``build/`` and ``*.egg-info/``
folders go to a temporary folder, removed when the build ends.
"""

import atexit
import shutil
import tempfile

from setuptools import setup
from setuptools.command.bdist_egg import bdist_egg

_build_folder = tempfile.mkdtemp(prefix="civitai-spider-build-")
atexit.register(shutil.rmtree, _build_folder, ignore_errors=True)


class _BdistEggWithOutsideMetadata(bdist_egg):
    def copy_metadata_to(self, target_dir: str) -> None:
        # The stock command copies only the egg-info files listed in the source manifest, which
        # holds files under this folder alone: with the egg-info elsewhere, the egg would carry
        # no metadata (no entry point), and Scrapyd would refuse it as a bad egg.
        shutil.copytree(self.egg_info, target_dir, dirs_exist_ok=True)


setup(
    cmdclass={"bdist_egg": _BdistEggWithOutsideMetadata},
    options={"build": {"build_base": _build_folder}, "egg_info": {"egg_base": _build_folder}},
)
