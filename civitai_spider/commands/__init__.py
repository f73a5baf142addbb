"""Scrapy commands of this project (``COMMANDS_MODULE``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError
from scrapy.settings import SETTINGS_PRIORITIES

from civitai_spider.setting_rules import check_settings

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


def quiet_logging(settings: BaseSettings) -> None:
    """Log warnings and errors only, unless ``-L`` or ``-s LOG_LEVEL=`` says otherwise.

    A command's ``default_settings`` rank below settings.py, whose ``LOG_LEVEL`` (INFO) is
    meant for crawls: a command that prints its own summary would repeat it in log lines.
    """
    priority = settings.getpriority("LOG_LEVEL")
    assert priority is not None  # None only for a setting not set: Scrapy's defaults set LOG_LEVEL
    if priority <= SETTINGS_PRIORITIES["project"]:
        settings.set("LOG_LEVEL", "WARNING", priority="project")


def check_command_settings(settings: BaseSettings) -> None:
    """Check every setting (:func:`~civitai_spider.setting_rules.check_settings`) before a
    command reads any: a bad one ends it as a usage error, one ``error:`` line and exit status 2."""
    try:
        check_settings(settings)
    except ValueError as error:
        raise UsageError(str(error), print_help=False) from None
