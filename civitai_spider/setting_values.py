"""The kinds of value a setting may take, each saying what it allows.

A rule has ``allowed``, what the error message says is allowed, and ``problem(value)``: None
when ``value`` is allowed, else why not ("" when ``allowed`` says it all). A value is what
Scrapy holds: text from ``-s``, or a Python value from settings.py. Which setting takes which
rule is declared in :mod:`civitai_spider.setting_rules`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Integer:
    """What ``settings.getint()`` reads, within bounds."""

    minimum: int | None = None
    maximum: int | None = None
    note: str = ""

    @property
    def allowed(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            bounds = f" from {self.minimum} to {self.maximum}"
        elif self.minimum is not None:
            bounds = f" >= {self.minimum}"
        else:
            bounds = f" <= {self.maximum}" if self.maximum is not None else ""
        return f"an integer{bounds}{_note(self.note)}"

    def problem(self, value: Any) -> str | None:
        number = _integer(value)
        if number is None or not _within(number, self.minimum, self.maximum):
            return ""
        return None


@dataclass(frozen=True)
class Number:
    """What ``settings.getfloat()`` reads, finite, from ``minimum`` (or above it with ``above``)."""

    minimum: float
    above: bool = False
    unit: str = "seconds"

    @property
    def allowed(self) -> str:
        return f"a number of {self.unit} {'>' if self.above else '>='} {self.minimum:g}"

    def problem(self, value: Any) -> str | None:
        number = _number(value)
        if number is None or number < self.minimum or (self.above and number == self.minimum):
            return ""
        return None


class Boolean:
    """What ``settings.getbool()`` reads as true or false (Scrapy also reads ``2`` as true: not here)."""

    allowed = "true or false (also 1 or 0)"
    _VALUES = frozenset({True, False, "1", "0", "true", "false", "True", "False"})  # True == 1

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool | int | str) and value in self._VALUES:
            return None
        return ""


@dataclass(frozen=True)
class Choice:
    """One of a few words; ``""`` among them means the setting may be empty."""

    choices: tuple[str, ...]

    @property
    def allowed(self) -> str:
        return _one_of([choice or "empty" for choice in self.choices])

    def problem(self, value: Any) -> str | None:
        return None if value in self.choices else ""


@dataclass(frozen=True)
class Text:
    """Any text (a path, a key), or text that matches ``pattern`` whole."""

    allowed: str = "text"
    pattern: str = r"(?s).*"

    def problem(self, value: Any) -> str | None:
        return None if re.fullmatch(self.pattern, str(value)) else ""


@dataclass(frozen=True)
class Url:
    """An absolute URL of one of ``schemes``; with ``plain``, without a query or fragment (a
    page's own query is appended to it)."""

    schemes: tuple[str, ...] = ("http", "https")
    empty: bool = False
    host: bool = True
    plain: bool = False

    @property
    def allowed(self) -> str:
        kind = _one_of([f"{scheme}://" for scheme in self.schemes])
        allowed = f"{'empty, or ' if self.empty else ''}an absolute {kind} URL"
        if self.host:
            allowed += " with a host"
        return allowed + (", without a query or fragment" if self.plain else "")

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return ""
        if not value:
            return None if self.empty else ""
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return "not a URL"
        if not parts.scheme or "://" not in value:
            return "no scheme"
        if parts.scheme.lower() not in self.schemes:
            return f"scheme {parts.scheme}://"
        if self.host and not parts.hostname:
            return "no host"
        if self.plain and "?" in value:
            return "a query"
        if self.plain and "#" in value:
            return "a fragment"
        return None


@dataclass(frozen=True)
class JsonObject:
    """What ``settings.getdict()`` reads (a dict, or its JSON text), its entries checked by ``entries``."""

    allowed: str
    entries: Callable[[Mapping[Any, Any]], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as error:
                return f"not a JSON object: {error}"
        if not isinstance(value, Mapping):
            return "not a JSON object"
        return self.entries(value) if self.entries is not None else None


class StatusCodes:
    """What Scrapy's RetryMiddleware reads: HTTP status codes, a list or comma-separated text."""

    allowed = "HTTP status codes from 100 to 599, comma-separated"

    def problem(self, value: Any) -> str | None:
        codes = value.split(",") if isinstance(value, str) else value
        if not isinstance(codes, list | tuple):
            return ""
        for code in codes:
            number = _integer(code)
            if number is None or not 100 <= number <= 599:
                return f"{code!r} is not a status code"
        return None


@dataclass(frozen=True)
class Parsed:
    """What ``parse`` reads, the function its component reads the setting with: the message of
    the ``ValueError`` it raises says why a value is not allowed."""

    allowed: str
    parse: Callable[[Any], object]

    def problem(self, value: Any) -> str | None:
        try:
            self.parse(value)
        except ValueError as error:
            return str(error)
        return None


Rule = Integer | Number | Boolean | Choice | Text | Url | JsonObject | StatusCodes | Parsed


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _within(number: int, minimum: int | None, maximum: int | None) -> bool:
    return (minimum is None or number >= minimum) and (maximum is None or number <= maximum)


def _note(note: str) -> str:
    return f" ({note})" if note else ""


def _one_of(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
