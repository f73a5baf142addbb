"""The reaction thresholds and the prompt requirement an image must pass to be saved.

Unlike the original script, a stat that is not listed is simply not checked: the
filter is "every listed stat >= its minimum" (a missing stat counts as 0). What
``CIVITAI_THRESHOLDS`` allows is checked before the crawl (:mod:`civitai_spider.setting_rules`).
The pipeline (:mod:`civitai_spider.pipelines.thresholds`) drops what fails; a page reader
(:mod:`civitai_spider.page`) asks too: ``stop_after_seen`` counts only what passes, and a
shared crawl queues only what passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from civitai_spider.outcomes import DropImage

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


class Thresholds:
    """The test itself: :meth:`check` raises :class:`DropImage` for an image that fails it."""

    def __init__(self, minimums: dict[str, int], require_prompt: bool):
        self.minimums = minimums
        self.require_prompt = require_prompt

    @classmethod
    def build(cls, settings: BaseSettings) -> Self:
        # getdict() also parses the JSON text given with -s on the command line.
        minimums = settings.getdict("CIVITAI_THRESHOLDS")
        return cls(minimums, settings.getbool("CIVITAI_REQUIRE_PROMPT"))

    def check(self, item: Any) -> None:
        """Raise :class:`DropImage` when ``item`` is below a threshold or lacks a prompt."""
        adapter = ItemAdapter(item)
        stats = adapter.get("stats") or {}
        for stat, minimum in self.minimums.items():
            count = stats.get(stat, 0)
            if count < minimum:
                raise DropImage("below_threshold", f"image {adapter['id']}: {stat} {count} < {minimum}")
        if self.require_prompt:
            meta = adapter.get("meta")
            prompt = meta.get("prompt") if isinstance(meta, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                reason = "no_meta" if meta is None else "no_prompt"
                raise DropImage(reason, f"image {adapter['id']}: no prompt")
