"""Tests of :mod:`civitai_spider.errors`: the one-line description of an exception."""

from __future__ import annotations

import errno

from civitai_spider.errors import describe, describe_os_error


def test_an_error_is_its_type_and_its_message() -> None:
    assert describe(ValueError("bad value")) == "ValueError: bad value"
    assert describe(TimeoutError()) == "TimeoutError"  # no "TimeoutError: " with nothing after it


def test_a_file_system_error_is_its_type_and_its_reason_without_the_files_name() -> None:
    error = PermissionError(errno.EACCES, "Permission denied", "/store/1.jpg")
    assert describe_os_error(error) == "PermissionError: Permission denied"
    # One raised with a message of its own, no errno: the message.
    assert describe_os_error(OSError("disk gone")) == "OSError: disk gone"
    assert describe_os_error(OSError()) == "OSError"
