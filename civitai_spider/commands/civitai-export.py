"""``scrapy civitai-export [--format webdataset] [--output DIR] [--shard-size N]``: WebDataset shards.

With the crawl's own settings it finds the store and the id store, and adds tar shards of
every recorded id in none yet (:mod:`civitai_spider.dataset.webdataset`), with their Parquet
index in ``index/``. The shards go to the folder ``webdataset`` in the store (a prefix in a
bucket) unless ``--output`` names a folder or an ``s3://`` prefix. An item whose files
cannot be read is left out with a WARNING and an ``error_log.txt`` line, and the next run
tries it again. Exit status 2 for a bad option or setting, before anything is read; 1 when
the store, the id store or the output fails on the way.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from civitai_spider.commands import add_output_option, refuse_arguments, write_dataset
from civitai_spider.dataset.stored import ProblemLog

if TYPE_CHECKING:
    import argparse

    from civitai_spider.dataset.stored import StoredItems
    from civitai_spider.stores.base import ReadableFileStore

#: The shards' folder inside the store, unless --output says otherwise.
EXPORT_FOLDER = "webdataset"
#: The index parts' folder inside the shards' one.
INDEX_FOLDER = "index"
FORMATS = ("webdataset",)
DEFAULT_SHARD_SIZE = 1000


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings = {"LOG_LEVEL": "WARNING"}

    def syntax(self) -> str:
        return "[--format webdataset] [--output DIR] [--shard-size N]"

    def short_desc(self) -> str:
        return "Write WebDataset tar shards of the stored images, with a Parquet index"

    def long_desc(self) -> str:
        return (
            "Write WebDataset tar shards of the stored images and videos, each item as its media "
            "file, its metadata (.json) and its caption (.txt), with a Parquet index of which id is "
            "in which shard. It reads the store and the id store of the crawl's settings (give it "
            "the same -s IMAGES_STORE=..., -s CIVITAI_REDIS_URL=...) and adds shards for the "
            "recorded ids in none yet. See README.md, section Datasets."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        # No help line may end with a colon: Scrapy's help formatter takes such a line for a
        # section heading ("Options:") and underlines it.
        parser.add_argument(
            "--format",
            default=FORMATS[0],
            help=f"the dataset's format, {' or '.join(FORMATS)} (the default)",
        )
        add_output_option(parser, "the shards", EXPORT_FOLDER)
        parser.add_argument(
            "--shard-size",
            metavar="N",
            default=str(DEFAULT_SHARD_SIZE),
            help=f"items per shard, {DEFAULT_SHARD_SIZE} by default",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        refuse_arguments(args, "civitai-export")
        if opts.format not in FORMATS:
            message = f"--format {opts.format!r} is not valid: allowed is {' or '.join(FORMATS)}"
            raise UsageError(message, print_help=False)
        export = partial(self._export, shard_size=_shard_size(opts.shard_size))
        write_dataset(self, export, opts.output, EXPORT_FOLDER, ("", INDEX_FOLDER))

    def _export(self, items: StoredItems, outputs: list[ReadableFileStore], *, shard_size: int) -> list[str]:
        """Add shards of the ids in none yet, and their index; the summary's lines."""
        assert self.settings is not None
        # Here, not at the top: Scrapy imports every command to start any of them, and pyarrow
        # (with numpy and their threads) would cost every `scrapy crawl` 0.1 s and more.
        from civitai_spider.dataset.webdataset import export_webdataset  # noqa: PLC0415

        shards, index = outputs
        run = export_webdataset(
            items,
            shards,
            index,
            shard_size=shard_size,
            raw_captions=self.settings.getbool("CIVITAI_CAPTION_RAW"),
            on_problem=ProblemLog(self.settings),
        )
        summary = [
            f"Added {run.added} item(s) in {run.shards} new shard(s) to {shards.describe('')}: "
            f"{run.items} item(s) in all"
        ]
        if run.removed:
            summary.append(
                f"Removed {run.removed} shard(s) or index part(s) that a killed run left half done"
            )
        if run.problems:
            summary.append(
                f"{run.problems} recorded id(s) left out: their files are unreadable (error_log.txt)"
            )
        if run.without_metadata:
            summary.append(
                f"{run.without_metadata} recorded id(s) have no metadata file in the store: in no shard"
            )
        return summary


def _shard_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise UsageError(f"--shard-size {value!r} is not valid: allowed is an integer >= 1", print_help=False)
    return size
