"""Crash-safe local files: the folder store's writes, the ID file's appends, the logs.

A ``kill -9`` may land at any moment, so every image and metadata file is written under
a temporary name in the same folder and renamed into place (a rename is atomic on POSIX
file systems): a reader sees the whole file or nothing. The ID file and the two logs are
append-only, one whole line per ``write()`` call. A log line that cannot be written (the log
folder is the store, and the store is full or gone read-only) goes to the crawl's log instead
(:class:`LogFile`): a failing store is reported, never a traceback.

Against a power cut, what the id store lists must be on disk first. The folder store
writes without syncing each file and lets :func:`sync_file_system` flush a whole batch at
once before the batch's ids are recorded (see :class:`civitai_spider.stores.recorder.IdRecorder`).

A temporary name is ``.civitai-partial-h<host>-<pid>-<serial>-<final name>.partial``.
``<host>`` is the first 8 hex digits of the SHA-256 of the host name (any host name, kept
short and free of ``-``), ``<pid>`` the writer's process id. The ``.partial`` end keeps the
file out of globs such as DuckDB's ``*.parquet``, which match hidden files too. Many crawls,
on several machines, may share one folder over NFS: when a folder store opens,
:func:`remove_temporary_files` removes this host's leftovers whose writer is dead, and
another host's only once they are an hour old. Names without the ``h<host>-`` part
(``.civitai-partial-<pid>-...``, from earlier versions) count as this host's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from civitai_spider.errors import describe_os_error

logger = logging.getLogger(__name__)

#: Temporary files start with this prefix; leftovers of a killed run are removed at start.
TEMPORARY_PREFIX = ".civitai-partial-"
ERROR_LOG_NAME = "error_log.txt"
BOMB_LOG_NAME = "DecompressionBombWarning_log.txt"
#: Another host's temporary file is removed once its mtime is this many seconds old. Its pid
#: means nothing here, but a writer writes one file from memory in well under a minute, so an
#: hour-old partial file is certainly abandoned (and an hour dwarfs any clock skew).
FOREIGN_LEFTOVER_AGE = 3600


def host_tag(host: str) -> str:
    """The part of a temporary name that says which host wrote it: ``h`` and 8 hex digits."""
    # The "h" keeps a tag that happens to be all digits from being read as an old-format pid.
    return "h" + hashlib.sha256(os.fsencode(host)).hexdigest()[:8]


_THIS_HOST = host_tag(socket.gethostname())
#: The host tag (absent in the old format) and the pid at the start of a temporary name.
_NAME_START = re.compile(r"(?:(h[0-9a-f]{8})-)?([0-9]+)-")
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)
#: Tells one process's temporary files apart; next() on it is atomic under the GIL.
_serial = itertools.count()


def write_atomically(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` never holds a partial file.

    ``sync=False`` leaves flushing to the caller (one :func:`sync_file_system` for many
    files); the file is then whole after a ``kill -9`` but not yet after a power cut.
    """
    # Four system calls (open, write, close, rename) and no file object: each call lets the
    # GIL go, and winning it back from the reactor thread is what a small file costs most.
    # io.open() and mkstemp() would add an fstat, an ioctl, an lseek and an fchmod.
    descriptor, temporary = _create_temporary(path)
    try:
        try:
            with memoryview(data) as view:
                written = os.write(descriptor, view)
                while written < len(view):  # a regular file takes it all at once but for errors
                    written += os.write(descriptor, view[written:])
            if sync:
                # Without a sync a power cut after the rename can leave an empty file
                # under the final name.
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextmanager
def writing_atomically(path: Path, *, sync: bool = True) -> Iterator[BinaryIO]:
    """A file to write, which becomes ``path`` when the block ends without an error.

    Until then (and for good after an error or a ``kill -9``) it is a temporary file in the
    same folder, which :func:`remove_temporary_files` removes once its writer is gone.
    """
    descriptor, temporary = _create_temporary(path)
    try:
        with open(descriptor, "wb") as file:
            yield file
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _create_temporary(path: str | Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, opened for writing: its descriptor and name.

    The host and pid in the name tell remove_temporary_files() whether its writer may still
    run; a counter tells this process's files apart (a name left by a dead process that had
    the same pid is skipped). Mode 0644 less the umask, as any program's files: readable by
    the other users a dataset is shared with, unless the umask says otherwise.
    """
    folder, name = os.path.split(path)
    while True:
        temporary = os.path.join(
            folder, f"{TEMPORARY_PREFIX}{_THIS_HOST}-{os.getpid()}-{next(_serial)}-{name}.partial"
        )
        try:
            return os.open(temporary, _CREATE_FLAGS, 0o644), temporary
        except FileExistsError:
            continue


def create_temporary(path: str | Path) -> tuple[int, str]:
    """A new, empty temporary file beside ``path`` (not there yet), opened for writing: its
    descriptor and name.

    For a file written bit by bit (a video as it downloads) and then renamed to ``path`` or
    elsewhere in the folder; a ``kill -9`` meanwhile leaves a leftover that
    :func:`remove_temporary_files` removes at the next start. The caller closes the descriptor
    and removes the file if it is not renamed.
    """
    return _create_temporary(path)


def copy_atomically(source: Path, target: Path, *, sync: bool = True) -> None:
    # A megabyte at a time: the source may be a video of a gigabyte.
    with open(source, "rb") as reader, writing_atomically(target, sync=sync) as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


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


def drop_from_page_cache(path: str) -> None:
    """Let the kernel free the cached pages of ``path``, a file already synced to disk.

    Only advice (``POSIX_FADV_DONTNEED``): nothing changes on disk, the file reads the same,
    and a file gone meanwhile is no error. Without ``posix_fadvise`` it does nothing.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # removed or replaced since: nothing of it to drop
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
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


class LogFile:
    """An append-only log of :func:`log_line` lines (``error_log.txt``, the bomb log) whose
    writes never fail their caller.

    A line that cannot be written goes to the crawl's log instead, as a WARNING: the first
    with the reason, the next ones as they are. Each line is still tried first: a disk that
    was full may have room again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False

    def add(self, *fields: object) -> None:
        line = log_line(*fields)
        try:
            append_line(self.path, line)
        except OSError as error:
            if self._failing:
                logger.warning("%s: %s", self.path.name, line)
            else:
                self._failing = True
                logger.warning(
                    "Could not write %s (%s); its lines go to this log while it cannot be written: %s",
                    self.path,
                    describe_os_error(error),
                    line,
                )
        else:
            self._failing = False


def prove_writable(folder: Path) -> None:
    """Create ``folder`` (and its parents) and write, fsync and remove a temporary file in it.

    The proof that a crawl's store can be written, before the first request: only a real
    write tells a read-only mount, a full disk or a file system that refuses files (``/proc``)
    from a folder the mode bits allow. An ``OSError`` naming ``folder`` if it cannot; the
    folders made for the proof are removed again then, and the temporary file in any case.
    """
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        _write_a_temporary_file(folder)
    except OSError:
        for path in made:  # the deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def _write_a_temporary_file(folder: Path) -> None:
    temporary = None
    try:
        descriptor, temporary = _create_temporary(folder / "write-check")
        try:
            os.write(descriptor, b"civitai-spider write check\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        # Named by the folder: the temporary file's name would tell the user nothing.
        raise OSError(error.errno, error.strerror, str(folder)) from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def remove_temporary_files(directory: Path) -> int:
    """Delete temporary files that killed writers left behind; returns how many."""
    removed = 0
    now = time.time()
    for leftover in directory.glob(f"{TEMPORARY_PREFIX}*"):
        # Other live crawls, on this host or on others, may share the store.
        if _writer_may_be_alive(leftover, now):
            continue
        leftover.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted run in %s", removed, directory)
    return removed


def _writer_may_be_alive(leftover: Path, now: float) -> bool:
    match = _NAME_START.match(leftover.name, len(TEMPORARY_PREFIX))
    if match is None:
        return False  # not a name write_atomically makes, so nobody is writing it
    host, pid_text = match.groups()
    if host is None or host == _THIS_HOST:
        # Our own pid counts as dead: a file of ours when the store opens is the leftover of an
        # earlier process that had the same pid. Pid 0 would ask about our process group.
        pid = int(pid_text)
        return pid not in (0, os.getpid()) and pid_alive(pid)
    try:
        modified = leftover.stat().st_mtime
    except FileNotFoundError:
        return True  # renamed into place since the glob: nothing to remove
    return now - modified < FOREIGN_LEFTOVER_AGE


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (another user's too); 0 and below name
    process groups, not processes: the caller rules them out."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that big
        return False
    except PermissionError:
        return True
    return True
