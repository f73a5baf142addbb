"""Crash-safe local files: the folder store's writes, the ID file's appends, the logs.

A ``kill -9`` may land at any moment, so every image and metadata file is written under
a temporary name in the same folder and renamed into place (a rename is atomic on POSIX
file systems): a reader sees the whole file or nothing. The ID file and the two logs are
append-only, one whole line per ``write()`` call.

Against a power cut, what the id store lists must be on disk first. The folder store
writes without syncing each file and lets :func:`sync_file_system` flush a whole batch at
once before the batch's ids are recorded (see :class:`civitai_spider.stores.recorder.IdRecorder`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

#: Temporary files start with this prefix; leftovers of a killed run are removed at start.
TEMPORARY_PREFIX = ".civitai-partial-"
ERROR_LOG_NAME = "error_log.txt"
BOMB_LOG_NAME = "DecompressionBombWarning_log.txt"


def write_atomically(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` never holds a partial file.

    ``sync=False`` leaves flushing to the caller (one :func:`sync_file_system` for many
    files); the file is then whole after a ``kill -9`` but not yet after a power cut.
    """
    # The pid in the name tells remove_temporary_files() whether its writer still runs.
    descriptor, name = tempfile.mkstemp(
        prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-", suffix=f"-{path.name}", dir=path.parent
    )
    temporary = Path(name)
    try:
        with open(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the files from other users
            file.write(data)
            if sync:
                file.flush()
                # Without a sync a power cut after the rename can leave an empty file
                # under the final name.
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def copy_atomically(source: Path, target: Path, *, sync: bool = True) -> None:
    write_atomically(target, source.read_bytes(), sync=sync)


def sync_file_system(directory: Path) -> None:
    """Flush every file written in ``directory``'s file system, and its renames, to disk.

    One ``syncfs()`` (Linux) commits a whole batch of images and metadata files: measured
    about 0.8 ms of disk time per image, against 1.7 ms with an fsync per file and folder.
    Elsewhere ``sync()`` does the same for every file system.
    """
    if _syncfs is None:
        os.sync()
        return
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(descriptor) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs failed: {os.strerror(error)}", str(directory))
    finally:
        os.close(descriptor)


def _find_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _find_syncfs()


def append_line(path: Path, line: str) -> None:
    """Append one line with a single ``write()`` so concurrent or killed writers never tear it."""
    if "\n" in line or "\r" in line:
        line = line.replace("\r", " ").replace("\n", " ")
    append_bytes(path, (line + "\n").encode("utf-8"))


def append_bytes(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Append ``data`` with a single ``write()`` (O_APPEND), fsynced first when ``sync``."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
        if sync:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def log_line(*fields: object) -> str:
    """A tab-separated log line starting with the local time, as the error logs use."""
    return "\t".join([time.strftime("%Y-%m-%d %H:%M:%S"), *(str(field) for field in fields)])


def remove_temporary_files(directory: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    removed = 0
    for leftover in directory.glob(f"{TEMPORARY_PREFIX}*"):
        # Another live crawl may share the store: only its writer's pid owns a file.
        if _writer_is_alive(leftover.name):
            continue
        leftover.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted run in %s", removed, directory)
    return removed


def _writer_is_alive(temporary_name: str) -> bool:
    pid_text = temporary_name[len(TEMPORARY_PREFIX) :].split("-", 1)[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
