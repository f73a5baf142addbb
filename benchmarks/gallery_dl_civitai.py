"""gallery-dl with its civitai extractor's root pointed at the benchmark server, for the peers scenario.

``python -m benchmarks.gallery_dl_civitai ROOT [gallery-dl's arguments]``. gallery-dl has no
setting for the civitai root (only its instance-based extractors take one), so this sets the
extractor's class attribute, which its REST API's URLs are made from, then runs gallery-dl's
own ``main()`` in this process. Once gallery-dl returns, one ``sync()`` writes what it saved
to disk, as this project's crawl syncs its batches before it exits: both do the same work.
It imports nothing of the project: its start-up is part of what the scenario measures.
"""

from __future__ import annotations

import os
import sys

import gallery_dl
from gallery_dl.extractor import civitai


def main() -> int:
    root, *arguments = sys.argv[1:]
    civitai.CivitaiExtractor.root = root.rstrip("/")
    sys.argv = ["gallery-dl", *arguments]
    status: int = gallery_dl.main()
    os.sync()
    return status


if __name__ == "__main__":
    sys.exit(main())
