"""Ask Civitai's image CDN for an image N pixels wide instead of the original (``CIVITAI_IMAGE_WIDTH``).

The API lists every image as ``<image location>/<uuid>/original=true/<uuid>.jpeg``: the segment
before the name is a list of transform options, comma-joined, that the CDN applies
(src/client-utils/edge-url.ts, ``getEdgeUrl``, civitai/civitai at ebed661: lines 125-153; the
API builds its URL with ``{original: true}``, src/server/services/image-search.service.ts 226).
:func:`resized_url` puts a width there instead, as the site's own pages ask for it, so that the
crawl asks for URLs the CDN has already made and cached for browsers:

- the width snapped up to the CDN cacher's ladder (:data:`COMMON_IMAGE_WIDTHS`), then capped at
  1800, as ``getEdgeUrl`` does (edge-url.ts 53, 81-87, 121-122); the cacher snaps any other width
  up to the same ladder itself, so a width between steps only costs it a cache entry;
- ``optimized=true`` at 450 pixels and less, which the site forces there (edge-url.ts 64-69,
  src/client-utils/cf-images-utils.ts 45-57): the CDN then sends WebP or AVIF ("Optimized (avif,
  webp)", src/components/Account/SettingsCard.tsx 66-69), above it JPEG or PNG;
- the options in ``getEdgeUrl``'s order, ``original``, ``height`` and ``optimized`` dropped, any other
  option already there (``anim=false``...) kept, and the name segment left as the API gave it.

A URL without such a segment cannot be rewritten safely: the newer
``https://image-b2.civitai.com/file/civitai-media-cache/<uuid>/original`` form (an absolute stored
URL comes back as it is, edge-url.ts 110), or a segment with an option the site never writes.
Those are fetched as they are: the original.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: The CDN cacher's widths (edge-url.ts 53, ``COMMON_IMAGE_WIDTHS``): a width is snapped up to one.
COMMON_IMAGE_WIDTHS = (96, 320, 450, 512, 800, 1200, 1600, 2200)
#: The widest image the site asks for, after snapping (edge-url.ts 122).
MAX_WIDTH = 1800
#: At this width and below the site asks for ``optimized=true`` (edge-url.ts 64).
OPTIMIZED_WIDTH_THRESHOLD = 450
#: The transform options of ``getEdgeUrl``, in the order it writes them (edge-url.ts 125-140).
TRANSFORM_OPTIONS = (
    "anim",
    "transcode",
    "width",
    "height",
    "original",
    "fit",
    "blur",
    "quality",
    "gravity",
    "metadata",
    "background",
    "gamma",
    "optimized",
    "skip",
)
#: Options this module writes itself; any value they had is replaced.
_REPLACED = frozenset({"width", "height", "original", "optimized"})


def snapped_width(width: int) -> int:
    """The width the site asks the CDN for when it wants ``width`` (edge-url.ts 81-87, 121-122):
    the next width of the ladder (``width`` itself when it is on it), at most :data:`MAX_WIDTH`."""
    snapped = next((size for size in COMMON_IMAGE_WIDTHS if size >= width), width)
    return min(snapped, MAX_WIDTH)


def transform_options(segment: str) -> dict[str, str] | None:
    """The options of a transform segment (``width=450,optimized=true``) in their order, or None
    when ``segment`` is not one: a part without ``=``, an empty value, an option ``getEdgeUrl``
    never writes, or one written twice."""
    options: dict[str, str] = {}
    for part in segment.split(","):
        name, equals, value = part.partition("=")
        if not equals or not value or name not in TRANSFORM_OPTIONS or name in options:
            return None
        options[name] = value
    return options


def resized_url(url: str, width: int) -> str | None:
    """``url`` asking the CDN for the image ``width`` pixels wide (``width`` already snapped), or
    None when ``url`` has no transform segment before its name to put the width in."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    # "", the location's segments, the uuid, the options, the name: at least the last three.
    if len(segments) < 4 or not segments[-1] or not segments[-3]:
        return None
    options = transform_options(segments[-2])
    if options is None:
        return None
    wanted = {name: value for name, value in options.items() if name not in _REPLACED}
    wanted["width"] = str(width)
    if width <= OPTIMIZED_WIDTH_THRESHOLD:
        wanted["optimized"] = "true"
    segments[-2] = ",".join(f"{name}={wanted[name]}" for name in TRANSFORM_OPTIONS if name in wanted)
    return urlunsplit(parts._replace(path="/".join(segments)))
