"""What can happen to an API item, as stats keys and the exception pipelines drop with.

Every item the API lists ends as exactly one of: saved (``civitai/saved``, split by media
in ``civitai/saved/image`` and ``civitai/saved/video``), dropped for a
reason (``civitai/dropped/<reason>``) or failed (``civitai/failed``); their sum is
``civitai/items_seen``. The counting itself is done by
:class:`civitai_spider.extensions.outcome_stats.OutcomeStats` from Scrapy's item signals.
"""

from __future__ import annotations

from scrapy.exceptions import DropItem

ITEMS_SEEN = "civitai/items_seen"
#: Images and videos saved; ``civitai/saved/image`` and ``civitai/saved/video`` count them apart.
SAVED = "civitai/saved"
FAILED = "civitai/failed"
METADATA_FILES_SAVED = "civitai/metadata_files_saved"
DROPPED_PREFIX = "civitai/dropped/"

#: The drop reason used for items whose image could not be downloaded or saved.
FAILED_REASON = "failed"


def saved_key(media: str) -> str:
    return f"{SAVED}/{media}"


def dropped_key(reason: str) -> str:
    return DROPPED_PREFIX + reason


class DropImage(DropItem):
    """Drop an item for a named ``reason`` (the stats key suffix).

    Filters drop at DEBUG: a crawl below the thresholds drops thousands of items on
    purpose, which is no news. Failures use WARNING.
    """

    def __init__(self, reason: str, message: str, log_level: str = "DEBUG"):
        super().__init__(message, log_level=log_level)
        self.reason = reason
