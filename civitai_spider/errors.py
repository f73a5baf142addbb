"""An exception in one line, for the log and ``error_log.txt``: ``Type: message``.

At the bottom of the package (it imports nothing of it): every layer describes errors the same way.
"""

from __future__ import annotations


def describe(error: BaseException) -> str:
    """``Type: message``, or ``Type`` alone when the message is empty."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def describe_os_error(error: OSError) -> str:
    """``Type: reason`` of a file system error, without the file's name (the caller says which)."""
    return f"{type(error).__name__}: {error.strerror}" if error.strerror else describe(error)
