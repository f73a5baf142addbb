"""Store the generation metadata next to the image, then record the id as downloaded.

Files per image: ``<id>_pos-prompt.txt`` (the prompt as received), ``<id>_neg-prompt.txt``
(only with a non-empty negative prompt), ``<id>_meta.json`` (the whole API record plus
``image_file``) and, with ``CIVITAI_CAPTION_FILES``, ``<id>.txt``: the training caption
(:func:`~civitai_spider.dataset.captions.caption_of`; the prompt as received with
``CIVITAI_CAPTION_RAW``), empty without a prompt so that every image has one. The id goes
into the id store last, once every file is durably stored, so a recorded id always has every
file. A store error (disk full, read-only folder, a bucket or Redis out of reach) fails the
item like a failed download: one WARNING line, one ``error_log.txt`` line, the id not
recorded (the next run tries again), the crawl goes on.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NoReturn

from itemadapter import ItemAdapter

from civitai_spider.checks import check_boolean
from civitai_spider.dataset.captions import caption_of
from civitai_spider.local_files import ERROR_LOG_NAME, append_line, log_line
from civitai_spider.outcomes import FAILED_REASON, METADATA_FILES_SAVED, DropImage
from civitai_spider.stores import log_directory, stores_of
from civitai_spider.stores.base import StoreError
from civitai_spider.stores.recorder import IdRecorder

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: The switches this pipeline reads.
_CAPTION_SETTINGS = ("CIVITAI_CAPTION_FILES", "CIVITAI_CAPTION_RAW")


class MetadataPipeline:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stores = stores_of(crawler)
        self.error_log = log_directory(crawler.settings) / ERROR_LOG_NAME
        self.ids = IdRecorder(self.stores.files, self.stores.ids)
        self.captions = crawler.settings.getbool("CIVITAI_CAPTION_FILES")
        self.raw_captions = crawler.settings.getbool("CIVITAI_CAPTION_RAW")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    @classmethod
    def check_settings(cls, settings: BaseSettings) -> None:
        for name in _CAPTION_SETTINGS:
            check_boolean(settings, name)

    async def open_spider(self) -> None:
        await self.stores.open()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        files = metadata_files(adapter, captions=self.captions, raw_captions=self.raw_captions)
        try:
            await self.stores.files.save(files)
        except OSError as error:
            self._fail(adapter, f"metadata not saved: {_describe(error)}")
        self.crawler.stats.inc_value(METADATA_FILES_SAVED, len(files))
        try:
            # The id store lists the id once the image and these files are durably stored.
            await self.ids.record(adapter["id"])
        except OSError as error:
            self._fail(adapter, f"id not recorded: {_describe(error)}")
        return item

    def _fail(self, adapter: ItemAdapter, reason: str) -> NoReturn:
        url = adapter["url"]
        try:
            append_line(self.error_log, log_line(adapter["id"], url, reason))
        except OSError:
            pass  # the store itself is failing: the WARNING line below still says why
        raise DropImage(FAILED_REASON, f"image {adapter['id']} failed: {reason} <{url}>", log_level="WARNING")


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
    record = {**adapter["api_item"], "image_file": adapter["image_file"]}
    files[f"{image_id}_meta.json"] = _utf8(json.dumps(record, ensure_ascii=False, indent=2))
    if captions:
        files[f"{image_id}.txt"] = _utf8(caption_of(meta.get("prompt"), raw=raw_captions))
    return files


def _utf8(text: str) -> bytes:
    # JSON may carry a lone surrogate ("\ud800"), which has no UTF-8 form: it is written as
    # that escape instead (in meta.json, the very JSON escape it came as).
    return text.encode("utf-8", "backslashreplace")


def _describe(error: OSError) -> str:
    if isinstance(error, StoreError):  # its message says what and where already
        return str(error)
    return f"{type(error).__name__}: {error.strerror or error}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
