"""Numeric and boolean settings read with an error that names them.

Scrapy's ``settings.getint("X")`` of ``-s X=two`` raises ``invalid literal for int()``, which
names neither the setting nor what it allows. Components check their numbers with
:func:`check_number` (and their switches with :func:`check_boolean`) in their
``check_settings``, so that ``scrapy crawl`` ends with one ``error:`` line saying both.
"""

from __future__ import annotations

from collections.abc import Callable

from scrapy.settings import BaseSettings


def check_number(
    settings: BaseSettings,
    name: str,
    *,
    allowed: str,
    valid: Callable[[float], bool],
    kind: type[int] | type[float] = int,
) -> None:
    """Raise ``ValueError`` naming ``name`` and ``allowed`` unless it is a ``kind`` that is ``valid``.

    A setting that is not set at all passes, as Scrapy's ``getint()`` reads it as 0.
    """
    value = settings.get(name)
    if value is None:
        return
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number != number or not valid(number):  # number != number: NaN
        raise ValueError(f"{name}={value!r} is not valid: allowed is {allowed}")


def check_boolean(settings: BaseSettings, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the allowed values unless it reads as a boolean."""
    try:
        settings.getbool(name)
    except ValueError:
        raise ValueError(
            f"{name}={settings.get(name)!r} is not valid: allowed is true or false (also 1 or 0)"
        ) from None
