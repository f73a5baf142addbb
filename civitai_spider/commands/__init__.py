"""Scrapy commands of this project (``COMMANDS_MODULE``), and what they share.

Scrapy takes every ``ScrapyCommand`` subclass of this package's modules for a command named
after its module, this one's too: what commands share is functions here, not a base class.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.log import configure_logging

from civitai_spider.dataset.stored import output_store, stored_items
from civitai_spider.setting_rules import check_settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from scrapy.commands import ScrapyCommand
    from scrapy.settings import BaseSettings

    from civitai_spider.dataset.stored import StoredItems
    from civitai_spider.stores.base import ReadableFileStore


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


def refuse_arguments(args: list[str], command: str) -> None:
    """A usage error (exit status 2) for any positional argument: ``command`` takes none."""
    if args:
        raise UsageError(f"unexpected argument {args[0]!r}: {command} takes none", print_help=False)


def add_output_option(parser: argparse.ArgumentParser, dataset: str, folder: str) -> None:
    """A dataset command's ``--output DIR``: where ``dataset`` goes, by default ``folder`` in
    the store (:func:`~civitai_spider.dataset.stored.output_store`)."""
    # No help line may end with a colon: Scrapy's help formatter takes such a line for a
    # section heading ("Options:") and underlines it.
    parser.add_argument(
        "--output",
        metavar="DIR",
        help=f"folder or s3://bucket/prefix of {dataset}; by default the folder {folder} in IMAGES_STORE",
    )


def write_dataset(
    command: ScrapyCommand,
    write: Callable[[StoredItems, list[ReadableFileStore]], list[str]],
    output: str | None,
    folder: str,
    subfolders: tuple[str, ...] = ("",),
) -> None:
    """Run a dataset command: ``write`` the crawl's stored items to the output stores, then
    print the summary lines it returns.

    The output stores are ``subfolders`` (``""`` for itself) of ``--output`` (``output``), by
    default ``folder`` in the store. The settings are checked and the stores opened first: a
    bad one ends the command as a usage error, one ``error:`` line and exit status 2, before
    anything is read. A store, the id store or the output that fails on the way is one
    ``error:`` line and exit status 1.
    """
    settings = command.settings
    assert settings is not None
    check_command_settings(settings)
    quiet_logging(settings)
    configure_logging(settings)
    try:
        items = stored_items(settings)
        outputs = [output_store(settings, output, folder, subfolder) for subfolder in subfolders]
    except ValueError as error:
        raise UsageError(str(error), print_help=False) from None
    try:
        summary = write(items, outputs)
    except OSError as error:  # the store, the id store or the output, after the checks
        print(f"error: {error}", file=sys.stderr)
        command.exitcode = 1
        return
    finally:
        for store in (items.files, *outputs):
            store.close()
    for line in summary:
        print(line)
