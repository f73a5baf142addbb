"""The ID file: ids of images already downloaded, one integer per line.

The file is append-only and a line is written with one ``write()`` after the image and
all its metadata files are in place, so an id in the file always means a complete set.
A ``kill -9`` can only leave a last line without its newline; loading drops that torn
line (and cuts it off the file, so the next append does not glue onto it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from scrapy.settings import BaseSettings

from civitai_spider.store import append_line, store_directory

logger = logging.getLogger(__name__)


def id_file_path(settings: BaseSettings) -> Path:
    """``CIVITAI_ID_FILE``; a relative path is inside ``IMAGES_STORE``."""
    path = Path(settings.get("CIVITAI_ID_FILE") or "downloaded_image_ID_DB.txt")
    return path if path.is_absolute() else store_directory(settings) / path


def load_ids(path: Path) -> set[int]:
    """Read the ids in ``path`` (a missing file is an empty set), repairing a torn end."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    lines = data.split(b"\n")
    torn = lines.pop()  # the text after the last newline: b"" when the file is whole
    if torn:
        logger.warning("Ignoring the unfinished last line %r of %s (an interrupted run)", torn[:40], path)
        with open(path, "r+b") as file:
            file.truncate(len(data) - len(torn))
    ids: set[int] = set()
    for number, line in enumerate(lines, start=1):
        try:
            ids.add(int(line))
        except ValueError:
            if line.strip():
                logger.warning("Ignoring line %d of %s: %r is not an id", number, path, line[:40])
    return ids


def record_id(path: Path, image_id: int) -> None:
    """Append one id, on disk (fsynced) before returning."""
    append_line(path, str(image_id), sync=True)
