"""Save the generation metadata next to the image, then record the id as downloaded.

Files per image: ``<id>_pos-prompt.txt`` (the prompt as received), ``<id>_neg-prompt.txt``
(only with a non-empty negative prompt) and ``<id>_meta.json`` (the whole API record plus
``image_file``). The id goes into the ID file last, so a listed id always has every file.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.utils.asyncio import run_in_thread

from civitai_spider.id_file import IdRecorder, id_file_path
from civitai_spider.outcomes import METADATA_FILES_SAVED
from civitai_spider.store import store_directory, write_atomically

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class MetadataPipeline:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.directory = store_directory(crawler.settings)
        self.ids = IdRecorder(id_file_path(crawler.settings), self.directory)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        files = metadata_files(adapter)
        await run_in_thread(self._save, files)
        self.crawler.stats.inc_value(METADATA_FILES_SAVED, len(files))
        # The ID file lists the id once the image and these files are on disk.
        await self.ids.record(adapter["id"])
        return item

    def _save(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            write_atomically(self.directory / name, data, sync=False)


def metadata_files(adapter: ItemAdapter) -> dict[str, bytes]:
    """File name -> contents for one item whose image is saved."""
    image_id = adapter["id"]
    meta = adapter.get("meta") or {}
    files = {f"{image_id}_pos-prompt.txt": _text(meta.get("prompt")).encode("utf-8")}
    negative = meta.get("negativePrompt")
    if isinstance(negative, str) and negative.strip():
        files[f"{image_id}_neg-prompt.txt"] = negative.encode("utf-8")
    record = {**adapter["api_item"], "image_file": adapter["image_file"]}
    files[f"{image_id}_meta.json"] = json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8")
    return files


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
