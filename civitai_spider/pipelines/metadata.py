"""Store the generation metadata next to the image.

Files per image: ``<id>_pos-prompt.txt`` (the prompt as received), ``<id>_neg-prompt.txt``
(only with a non-empty negative prompt), ``<id>_meta.json`` (the whole API record plus
``image_file``, and ``cdn_width`` for an image the CDN resized) and, with
``CIVITAI_CAPTION_FILES``, ``<id>.txt``: the training caption
(:func:`~civitai_spider.captions.caption_of`; the prompt as received with
``CIVITAI_CAPTION_RAW``), empty without a prompt so that every image has one. The next
pipeline records the id (:mod:`civitai_spider.pipelines.record_id`), once these files and the
image are durably stored. A store error (disk full, read-only folder, a bucket out of reach)
fails the item like a failed download: one WARNING line, one ``error_log.txt`` line, the id
not recorded (the next run tries again), the crawl goes on, unless it is one of
``CIVITAI_MAX_STORE_FAILURES`` in a row (:mod:`civitai_spider.stores.failures`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from civitai_spider.captions import caption_of
from civitai_spider.outcomes import METADATA_FILES_SAVED
from civitai_spider.stores import stores_of
from civitai_spider.stores.failures import describe_store_error, item_failed

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class MetadataPipeline:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stores = stores_of(crawler)
        self.captions = crawler.settings.getbool("CIVITAI_CAPTION_FILES")
        self.raw_captions = crawler.settings.getbool("CIVITAI_CAPTION_RAW")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def open_spider(self) -> None:
        await self.stores.open()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        files = metadata_files(adapter, captions=self.captions, raw_captions=self.raw_captions)
        try:
            await self.stores.files.save(files)
        except OSError as error:
            reason = f"metadata not saved: {describe_store_error(error)}"
            raise item_failed(
                self.stores.error_log, adapter, reason, store=self.stores.files.describe("")
            ) from error
        self.crawler.stats.inc_value(METADATA_FILES_SAVED, len(files))
        return item


def metadata_files(
    adapter: ItemAdapter, *, captions: bool = False, raw_captions: bool = False
) -> dict[str, bytes]:
    """File name -> contents for one item whose image is saved (with its caption file if ``captions``)."""
    image_id = adapter["id"]
    meta = adapter.get("meta") or {}
    files = {f"{image_id}_pos-prompt.txt": _utf8(_text(meta.get("prompt")))}
    negative = meta.get("negativePrompt")
    if isinstance(negative, str) and negative.strip():
        files[f"{image_id}_neg-prompt.txt"] = _utf8(negative)
    files[f"{image_id}_meta.json"] = _utf8(json.dumps(stored_record(adapter), ensure_ascii=False, indent=2))
    if captions:
        files[f"{image_id}.txt"] = _utf8(caption_of(meta.get("prompt"), raw=raw_captions))
    return files


def stored_record(adapter: ItemAdapter) -> dict[str, Any]:
    """What ``<id>_meta.json`` holds: the API record as received, plus ``image_file`` (and
    ``cdn_width`` for an image the CDN resized).

    The manifest's row is made of it too, by the crawl (:mod:`civitai_spider.pipelines.manifest`)
    as by ``scrapy civitai-manifest`` reading the file back: one record, one row.
    """
    record = {**adapter["api_item"], "image_file": adapter["image_file"]}
    if adapter.get("cdn_width") is not None:  # a resized image (CIVITAI_IMAGE_WIDTH); else the original
        record["cdn_width"] = adapter["cdn_width"]
    return record


def _utf8(text: str) -> bytes:
    # JSON may carry a lone surrogate ("\ud800"), which has no UTF-8 form: it is written as
    # that escape instead (in meta.json, the very JSON escape it came as).
    return text.encode("utf-8", "backslashreplace")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
