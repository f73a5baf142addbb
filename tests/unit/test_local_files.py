"""Tests of :mod:`civitai_spider.local_files`: atomic writes, whole-line appends, leftovers, syncs."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from civitai_spider.local_files import (
    FOREIGN_LEFTOVER_AGE,
    TEMPORARY_PREFIX,
    LogFile,
    append_line,
    host_tag,
    log_line,
    prove_writable,
    remove_temporary_files,
    sync_file_system,
    write_atomically,
)
from tests.support.crawls import REPOSITORY

THIS_HOST = host_tag(socket.gethostname())
OTHER_HOST = host_tag(socket.gethostname() + "-other")


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith(TEMPORARY_PREFIX))


# --- write_atomically ------------------------------------------------------------------


def test_write_atomically_writes_the_content(tmp_path: Path) -> None:
    target = tmp_path / "1.jpg"
    write_atomically(target, b"\xff\xd8 image \xff\xd9")
    assert target.read_bytes() == b"\xff\xd8 image \xff\xd9"
    assert leftovers(tmp_path) == []


def test_write_atomically_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "1_meta.json"
    target.write_bytes(b"old content that is longer than the new one")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["1_meta.json"]


def test_write_atomically_writes_empty_data(tmp_path: Path) -> None:
    target = tmp_path / "empty.txt"
    write_atomically(target, b"")
    assert target.exists()
    assert target.read_bytes() == b""


def test_failed_write_leaves_no_temporary_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "1_pos-prompt.txt"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_write_into_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "1.jpg", b"data")
    assert not (tmp_path / "missing").exists()
    assert list(tmp_path.iterdir()) == []


def test_replace_failure_leaves_no_temporary(tmp_path: Path) -> None:
    # The target is a non-empty directory: the rename fails after the data was written.
    target = tmp_path / "1.jpg"
    target.mkdir()
    (target / "inside").write_bytes(b"x")
    with pytest.raises(OSError):
        write_atomically(target, b"data")
    assert leftovers(tmp_path) == []
    assert (target / "inside").read_bytes() == b"x"


# --- append_line and log_line ----------------------------------------------------------


def test_append_line_creates_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    append_line(path, "1")
    append_line(path, "22")
    append_line(path, "333")
    assert path.read_bytes() == b"1\n22\n333\n"


def test_append_line_keeps_existing_content(tmp_path: Path) -> None:
    path = tmp_path / "error_log.txt"
    path.write_bytes(b"earlier\n")
    append_line(path, "later")
    assert path.read_text().splitlines() == ["earlier", "later"]


@pytest.mark.parametrize("line", ["a\nb", "a\r\nb", "a\rb", "\nlead", "trail\n", "x\n\n\ny"], ids=repr)
def test_append_line_flattens_newlines_so_one_call_is_one_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "log.txt"
    append_line(path, line)
    append_line(path, "next")
    data = path.read_bytes()
    assert data.count(b"\n") == 2
    assert b"\r" not in data
    assert data.splitlines()[1] == b"next"


def test_append_line_writes_utf8(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    append_line(path, "猫 🐱 é")
    assert path.read_bytes() == "猫 🐱 é\n".encode()


def test_log_line_is_tab_separated_and_starts_with_a_timestamp() -> None:
    line = log_line(123, "https://x/y.jpeg", "HTTP 404")
    fields = line.split("\t")
    assert len(fields) == 4
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", fields[0])
    assert fields[1:] == ["123", "https://x/y.jpeg", "HTTP 404"]


# --- LogFile: a log line is never lost, nor a traceback ---------------------------------------


def test_a_log_file_appends_its_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = LogFile(tmp_path / "error_log.txt")
    log.add(1, "https://x/1.jpeg", "HTTP 404")
    log.add(2, "https://x/2.jpeg", "not an image")
    lines = (tmp_path / "error_log.txt").read_text().splitlines()
    assert [line.split("\t")[1:] for line in lines] == [
        ["1", "https://x/1.jpeg", "HTTP 404"],
        ["2", "https://x/2.jpeg", "not an image"],
    ]
    assert caplog.records == []


def test_a_line_that_cannot_be_written_goes_to_the_log_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "gone").write_text("a file where the folder was")
    log = LogFile(tmp_path / "gone" / "error_log.txt")
    with caplog.at_level(logging.WARNING):
        for image_id in (1, 2, 3):
            log.add(image_id, f"https://x/{image_id}.jpeg", "no space")

    first, *others = [record.getMessage() for record in caplog.records]
    assert all(record.levelname == "WARNING" and record.exc_info is None for record in caplog.records)
    assert first.startswith(f"Could not write {tmp_path / 'gone' / 'error_log.txt'} (NotADirectoryError: ")
    assert first.endswith("\t1\thttps://x/1.jpeg\tno space")
    assert [message.split("\t", 1)[1] for message in others] == [
        "2\thttps://x/2.jpeg\tno space",
        "3\thttps://x/3.jpeg\tno space",
    ]
    assert all(message.startswith("error_log.txt: ") for message in others)


def test_a_log_file_that_can_be_written_again_gets_the_next_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "logs"
    log = LogFile(folder / "error_log.txt")
    with caplog.at_level(logging.WARNING):
        log.add(1, "u", "lost to the log")
        folder.mkdir()
        log.add(2, "u", "written")
    assert len(caplog.records) == 1
    assert (folder / "error_log.txt").read_text().endswith("\t2\tu\twritten\n")


# --- prove_writable ----------------------------------------------------------------------------


def test_prove_writable_makes_the_folder_and_leaves_nothing_in_it(tmp_path: Path) -> None:
    prove_writable(tmp_path / "a" / "b")
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_prove_writable_names_the_folder_not_its_temporary_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # Root writes whatever the mode bits say: a file system that takes no files instead.
        folder = Path("/proc/self")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
    with pytest.raises(OSError) as error:
        prove_writable(folder)
    assert error.value.filename == str(folder)
    assert TEMPORARY_PREFIX not in str(error.value)


# --- remove_temporary_files ------------------------------------------------------------


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a live process that is not this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has this pid now (barring a quick reuse)


def temporary(directory: Path, name: str, *, age: float = 0) -> Path:
    """A temporary file ``<prefix><name>`` whose mtime is ``age`` seconds ago."""
    path = directory / f"{TEMPORARY_PREFIX}{name}"
    path.write_bytes(b"x")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def remaining(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_host_tag_is_short_and_unambiguous() -> None:
    tags = {host_tag(host) for host in ["a", "a-b", "a.b-c.example.org", "hôte-猫", "-", "123"]}
    assert len(tags) == 6
    assert all(re.fullmatch(r"h[0-9a-f]{8}", tag) for tag in tags)
    assert OTHER_HOST != THIS_HOST


def test_this_hosts_leftover_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    temporary(tmp_path, f"{THIS_HOST}-{dead_pid()}-abc-1.jpg")
    assert remove_temporary_files(tmp_path) == 1
    assert remaining(tmp_path) == []


def test_this_hosts_file_of_a_live_writer_is_kept(tmp_path: Path, live_pid: int) -> None:
    # Even an old one: on this host the pid says for sure whether the writer runs.
    live = temporary(tmp_path, f"{THIS_HOST}-{live_pid}-abc-1.jpg", age=2 * FOREIGN_LEFTOVER_AGE)
    assert remove_temporary_files(tmp_path) == 0
    assert remaining(tmp_path) == [live.name]


def test_a_file_with_our_own_pid_is_a_leftover(tmp_path: Path) -> None:
    temporary(tmp_path, f"{THIS_HOST}-{os.getpid()}-abc-1.jpg")
    assert remove_temporary_files(tmp_path) == 1


def test_another_hosts_fresh_file_is_kept_whatever_its_pid(tmp_path: Path) -> None:
    # No process has these pids here, but they may be live writers on the other host.
    names = [
        temporary(tmp_path, f"{OTHER_HOST}-{dead_pid()}-abc-1.jpg").name,
        temporary(tmp_path, f"{OTHER_HOST}-{os.getpid()}-abc-2.jpg", age=FOREIGN_LEFTOVER_AGE - 60).name,
    ]
    assert remove_temporary_files(tmp_path) == 0
    assert remaining(tmp_path) == sorted(names)


def test_another_hosts_old_file_is_removed_whatever_its_pid(tmp_path: Path, live_pid: int) -> None:
    temporary(tmp_path, f"{OTHER_HOST}-{live_pid}-abc-1.jpg", age=FOREIGN_LEFTOVER_AGE + 60)
    assert remove_temporary_files(tmp_path) == 1
    assert remaining(tmp_path) == []


def test_old_format_names_are_this_hosts(tmp_path: Path, live_pid: int) -> None:
    # Written by earlier versions: <prefix><pid>-<random>-<final name>, no host.
    temporary(tmp_path, f"{dead_pid()}-123-1.jpg")
    temporary(tmp_path, f"{os.getpid()}-456-2.png")
    live = temporary(tmp_path, f"{live_pid}-789-4.jpg", age=2 * FOREIGN_LEFTOVER_AGE)
    assert remove_temporary_files(tmp_path) == 2
    assert remaining(tmp_path) == [live.name]


@pytest.mark.parametrize(
    "name",
    [
        "notapid-3_meta.json",
        "123",  # no dash after the pid: mkstemp always adds one
        "h12345678-notapid-abc-1.jpg",
        "hXYZ-123-abc-1.jpg",  # not a host tag, not a pid
        "99999999999999999999999-abc-1.jpg",  # no pid is that big
        "0-abc-1.jpg",  # os.kill(0, 0) would ask about our own process group
        "\u0661\u0662-abc-1.jpg",  # Arabic-Indic digits are not a pid
    ],
)
def test_junk_names_are_removed(tmp_path: Path, name: str) -> None:
    temporary(tmp_path, name)
    assert remove_temporary_files(tmp_path) == 1
    assert remaining(tmp_path) == []


def test_finished_files_are_never_removed(tmp_path: Path) -> None:
    for name in ["5.jpg", "5_meta.json", f"x{TEMPORARY_PREFIX}{dead_pid()}-1-1.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    temporary(tmp_path, f"{THIS_HOST}-{dead_pid()}-abc-5.jpg")
    assert remove_temporary_files(tmp_path) == 1
    assert len(remaining(tmp_path)) == 3


def test_remove_temporary_files_in_a_clean_folder(tmp_path: Path) -> None:
    (tmp_path / "1.jpg").write_bytes(b"x")
    assert remove_temporary_files(tmp_path) == 0
    assert (tmp_path / "1.jpg").exists()


def test_a_killed_write_leftover_is_removed(tmp_path: Path) -> None:
    # What write_atomically leaves when a process is killed before the rename.
    script = (
        "import os, sys, civitai_spider.local_files as s\n"
        "from pathlib import Path\n"
        "s.os.replace = lambda *a: os._exit(9)\n"
        "s.write_atomically(Path(sys.argv[1]) / '1.jpg', b'data')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPOSITORY)
    assert process.wait() == 9
    [name] = leftovers(tmp_path)
    assert re.fullmatch(rf"{re.escape(TEMPORARY_PREFIX)}{THIS_HOST}-{process.pid}-\w+-1\.jpg\.partial", name)
    assert remove_temporary_files(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_sync_file_system_accepts_a_folder_and_rejects_a_file(tmp_path: Path) -> None:
    sync_file_system(tmp_path)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        sync_file_system(tmp_path / "file")


def test_write_without_sync_still_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "1.jpg"
    target.write_bytes(b"old")
    write_atomically(target, b"new", sync=False)
    assert target.read_bytes() == b"new"
    assert [path.name for path in tmp_path.iterdir()] == ["1.jpg"]


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "1.jpg"
    write_atomically(target, b"data")
    assert target.stat().st_mode & 0o777 == 0o644
