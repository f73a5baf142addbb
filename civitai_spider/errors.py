"""What goes into a log line or an error message: an exception in one line (``Type: message``),
a URL without its password.

At the bottom of the package (it imports nothing of it): every layer describes errors the same
way, and a module that names a Redis URL in a message need not import redis for it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: redis-py takes a password from the query string too (?password=...).
_QUERY_PASSWORD = re.compile(r"(^|&)password=[^&]*")


def describe(error: BaseException) -> str:
    """``Type: message``, or ``Type`` alone when the message is empty."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def describe_os_error(error: OSError) -> str:
    """``Type: reason`` of a file system error, without the file's name (the caller says which)."""
    return f"{type(error).__name__}: {error.strerror}" if error.strerror else describe(error)


def safe_url(url: str) -> str:
    """``url`` without its password, for log lines and error messages."""
    parts = urlsplit(url)
    query = _QUERY_PASSWORD.sub(r"\1password=***", parts.query)
    if parts.password is None and query == parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user = f"{parts.username}:***@" if parts.username else ":***@"
        host = parts.hostname or ""
        netloc = user + (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
