"""The item the spider yields: one Civitai image or video and its generation metadata.

The API is loose about types (``stats`` counts may be missing or junk, ``meta`` is
free-form and comes in two shapes, ``baseModel`` may be null), so
:meth:`CivitaiImage.from_api` is the one place that decides what a usable record is.
Everything after it can trust the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from itemadapter import ItemAdapter
from w3lib.url import safe_url_string

#: The six reaction counts the API reports under ``stats``.
STAT_NAMES: tuple[str, ...] = (
    "cryCount",
    "laughCount",
    "likeCount",
    "dislikeCount",
    "heartCount",
    "commentCount",
)


def media_of(item: Any) -> str:
    """``"video"`` or ``"image"``: how an item is saved and counted (anything else is an image)."""
    return "video" if ItemAdapter(item).get("type") == "video" else "image"


class InvalidApiItem(ValueError):
    """An API record that cannot become an item; ``reason`` is a short stat-friendly name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class CivitaiImage:
    """One record of ``/api/v1/images`` (an image or a video), plus what the pipelines add to it."""

    id: int
    url: str
    width: int | None = None
    height: int | None = None
    type: str = "image"
    nsfw_level: str | None = None
    browsing_level: int | None = None
    created_at: str | None = None
    post_id: int | None = None
    username: str | None = None
    base_model: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    #: The generation parameters, flat (``{"prompt": ...}``) whichever shape the API sent.
    meta: dict[str, Any] | None = None
    #: The record exactly as the API sent it, written out as ``<id>_meta.json``.
    api_item: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Filled by the media pipeline (Scrapy's ``IMAGES_URLS_FIELD``/``IMAGES_RESULT_FIELD``).
    image_urls: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    #: The saved file's name inside ``IMAGES_STORE`` (``<id>.jpg``, ``<id>.png``, ``<id>.mp4``...).
    image_file: str | None = None
    #: The saved file's size in bytes (the manifest's ``bytes``), once the media pipeline stored it.
    image_size: int | None = None
    #: The width the CDN was asked for (``CIVITAI_IMAGE_WIDTH``, snapped); None: the original.
    cdn_width: int | None = None
    #: The cursor chain that listed it (:mod:`civitai_spider.chains`); ``None`` in a shared crawl.
    #: An id listed again by the same chain is a sign of a moving ranking (``duplicate``), by
    #: another chain an image under two model versions (``other_chain``).
    chain: str | None = None
    #: The page of its chain that listed it (1 is the first); a paused job (JOBDIR) lists again
    #: from the oldest page with an item not done.
    page: int | None = None

    @classmethod
    def from_api(cls, record: Any, chain: str | None = None) -> CivitaiImage:
        """Build an item from one element of the API's ``items`` list (listed by ``chain``).

        Raises :class:`InvalidApiItem` when the record has no usable id or URL.
        Junk in the other fields is replaced by a neutral value instead.
        """
        if not isinstance(record, dict):
            raise InvalidApiItem("invalid_item", f"item is not a JSON object: {_short(record)}")
        image_id = record.get("id")
        # bool is an int subclass: JSON true must not become image 1.
        if type(image_id) is not int or image_id <= 0:
            raise InvalidApiItem("invalid_id", f"id is not a positive integer: {_short(image_id)}")
        url = record.get("url")
        if not _is_http_url(url):
            raise InvalidApiItem("invalid_url", f"image {image_id} has no http(s) url: {_short(url)}")
        meta = flat_meta(record.get("meta"))
        raw_stats = record.get("stats")
        raw_stats = raw_stats if isinstance(raw_stats, dict) else {}
        return cls(
            id=image_id,
            url=url,
            width=_int_or_none(record.get("width")),
            height=_int_or_none(record.get("height")),
            type=kind if isinstance(kind := record.get("type"), str) else "image",
            nsfw_level=_str_or_none(record.get("nsfwLevel")),
            browsing_level=_int_or_none(record.get("browsingLevel")),
            created_at=_str_or_none(record.get("createdAt")),
            post_id=_int_or_none(record.get("postId")),
            username=_str_or_none(record.get("username")),
            base_model=_str_or_none(record.get("baseModel")),
            stats={name: _count(raw_stats.get(name)) for name in STAT_NAMES},
            meta=meta,
            api_item=record,
            image_urls=[url],
            chain=chain,
        )

    @property
    def prompt(self) -> Any:
        return self.meta.get("prompt") if self.meta else None

    @property
    def negative_prompt(self) -> Any:
        return self.meta.get("negativePrompt") if self.meta else None


def flat_meta(meta: Any) -> dict[str, Any] | None:
    """``meta`` in its flat shape, or None.

    Civitai's older database path (``imageId``, or ``modelId`` without ``modelVersionId``)
    answers ``{"id": <image id>, "meta": {...}}`` unless the query says ``flatMeta=true``;
    the spider always says so, but an answer of that shape must not lose the prompt.
    """
    if isinstance(meta, dict) and meta.keys() == {"id", "meta"}:
        meta = meta["meta"]
    return meta if isinstance(meta, dict) else None


def _is_http_url(value: Any) -> TypeGuard[str]:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        # The image Request parses the URL with w3lib, stricter than urlsplit: a URL it
        # refuses (port over 65535, a lone surrogate) would fail the item with a traceback.
        safe_url_string(value)
    except ValueError:  # UnicodeEncodeError included
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _count(value: Any) -> int:
    # A count that is not a real number (string, null, bool, NaN...) counts as 0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if value != value or value in (float("inf"), float("-inf")):
        return 0
    return int(value)


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
