"""``scrapy civitai-manifest [--output DIR]``: the store as a Parquet dataset, one row per id.

With the crawl's own settings it finds the store (``IMAGES_STORE``, a folder or a bucket) and
the id store, and brings the manifest up to date (:mod:`civitai_spider.dataset.manifest`): the
rows the crawls wrote as they went (crawl parts) are compacted into ``part-NNNNNN`` files and a
row is read from the files of every recorded id still without one. The manifest is the folder
``manifest`` in the store (a prefix in a bucket) unless ``--output`` names a folder or an
``s3://`` prefix; the crawl parts are always those of the store's ``manifest`` folder, removed
once compacted there, read and left in place for an ``--output`` elsewhere. An item whose files
cannot be read is left out with a WARNING and an ``error_log.txt`` line, and the next run tries
it again. Exit status 2 for a bad option or setting, before anything is read; 1 when the store,
the id store or the output fails on the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand

from civitai_spider.commands import add_output_option, refuse_arguments, write_dataset
from civitai_spider.dataset.stored import ProblemLog, output_uri
from civitai_spider.pipelines.manifest import MANIFEST_FOLDER, manifest_store, manifest_uri

if TYPE_CHECKING:
    import argparse

    from civitai_spider.dataset.stored import StoredItems
    from civitai_spider.stores.base import ReadableFileStore


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings = {"LOG_LEVEL": "WARNING"}
    #: ``--output``, as given.
    _output: str | None = None

    def syntax(self) -> str:
        return "[--output DIR]"

    def short_desc(self) -> str:
        return "Write a Parquet manifest of the stored images, one row per recorded id"

    def long_desc(self) -> str:
        return (
            "Write a Parquet manifest of the stored images and videos, one row per recorded id, "
            "with typed columns and the whole meta. It reads the store and the id store of the "
            "crawl's settings (give it the same -s IMAGES_STORE=..., -s CIVITAI_REDIS_URL=...) and "
            "compacts the rows the crawls wrote as they went (crawl parts) into part files, with rows "
            "read from the files of the ids recorded without one. See README.md, section Datasets."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        add_output_option(parser, "the manifest", MANIFEST_FOLDER)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        refuse_arguments(args, "civitai-manifest")
        self._output = opts.output
        write_dataset(self, self._update, opts.output, MANIFEST_FOLDER)

    def _update(self, items: StoredItems, outputs: list[ReadableFileStore]) -> list[str]:
        """Add the rows the manifest lacks; the summary's lines."""
        assert self.settings is not None
        # Here, not at the top: Scrapy imports every command to start any of them, and pyarrow
        # (with numpy and their threads) would cost every `scrapy crawl` 0.1 s and more.
        from civitai_spider.dataset.manifest import update_manifest  # noqa: PLC0415

        [output] = outputs
        crawl_parts = None
        if output_uri(self.settings, self._output, MANIFEST_FOLDER) != manifest_uri(self.settings):
            # --output elsewhere: the crawls' parts are read from the store's manifest folder,
            # and left there for its own manifest.
            crawl_parts = manifest_store(self.settings)
        try:
            run = update_manifest(
                items,
                output,
                part_rows=self.settings.getint("CIVITAI_MANIFEST_PART_ROWS"),
                on_problem=ProblemLog(self.settings),
                crawl_parts=crawl_parts,
            )
        finally:
            if crawl_parts is not None:
                crawl_parts.close()
        summary = [
            f"Added {run.added} row(s) in {run.parts} new part file(s) to {output.describe('')}: "
            f"{run.rows} row(s) in all"
        ]
        if run.crawl_parts:
            what = "removed" if crawl_parts is None else "left in place"
            summary.append(
                f"{run.from_crawl_parts} of them from {run.crawl_parts} crawl part(s), "
                f"{run.crawl_parts_removed or run.crawl_parts} {what}"
            )
        if run.problems:
            summary.append(
                f"{run.problems} recorded id(s) left out: their files are unreadable (error_log.txt)"
            )
        if run.without_metadata:
            summary.append(
                f"{run.without_metadata} recorded id(s) have no metadata file in the store: not in it"
            )
        return summary
