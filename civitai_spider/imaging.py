"""Decide how to store downloaded image bytes: keep them, convert them, or refuse them.

Pure functions of the bytes (no Scrapy, no files), run in a worker thread by the images
pipeline: Pillow releases the GIL while it decodes and encodes, so both cores work.

- JPEG (mode RGB or L) and PNG originals are kept byte for byte: no quality loss, and
  PNG text chunks keep the generation parameters.
- Anything else is converted: to PNG when it has transparency, else to JPEG. Except an
  image the CDN resized (``CIVITAI_IMAGE_WIDTH``, :func:`keep_image`): kept as it came, in
  the format the CDN chose (JPEG, PNG, WebP, AVIF), after the same checks.
- A file cut short is refused. For JPEG and PNG that is a structural check (an end marker
  after the compressed data; every chunk and its CRC up to IEND), much cheaper than a decode.
- Transparency means a pixel that is not fully opaque, not merely an alpha channel:
  animated WebP frames always decode with one, opaque or not.
- 16-bit, 32-bit and floating-point greys (TIFF) are scaled to 8 bits when converted:
  Pillow's ``convert()`` clips them, which turns most of them white or black.
- The format comes from the bytes: Civitai's URLs end in ``.jpeg`` whatever they hold.
- Memory: a bomb is refused from its header, before any pixel is decoded; pictures over
  16 Mpx are converted one at a time; PNG text
  chunks stay within Pillow's limits (``MAX_TEXT_CHUNK`` decompressed per chunk, 1 MB,
  and ``MAX_TEXT_MEMORY`` in all, 64 MB), past which the file is refused.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from isal import isal_zlib
from PIL import Image, ImageOps, UnidentifiedImageError

from civitai_spider.errors import describe

_JPEG_END_OF_IMAGE = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_START_OF_SCAN = 0xDA
# JPEG markers that stand alone, without a length: the restart markers, start of image, TEM.
_JPEG_MARKERS_WITHOUT_LENGTH = frozenset({*range(0xD0, 0xD9), 0x01})
#: Formats kept as they came from a resizing CDN -> the file's extension.
_KEPT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "AVIF": "avif", "GIF": "gif"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# A conversion holds the decoded picture and its copies (up to 16 bytes a pixel for a
# WebP): a few gigabytes for one near twice the pixel limit. Large pictures therefore
# convert one at a time, whatever the number of Pillow threads, so that the peak is one
# large picture plus small ones.
_LARGE_PICTURE_PIXELS = 16_000_000
_large_conversion = threading.Lock()
# Greys wider than 8 bits, with the ranges their values usually span, narrowest first: the
# 16-bit modes span all 16 bits by definition, a float picture is usually 0..1 (or 0..255
# as Pillow makes them), a 32-bit TIFF or PGM usually holds 8 or 16 bits. The narrowest
# range that holds the picture keeps a dark picture dark; values that fit none of them are
# stretched from their own minimum and maximum.
_WIDE_GREY_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "F": ((0, 1), (0, 255)),
    "I": ((0, 255), (0, 65535)),
    **{mode: ((0, 65535),) for mode in ("I;16", "I;16L", "I;16B", "I;16N")},
}


class ImageRejected(Exception):
    """The bytes cannot be stored as an image; the message is the reason."""

    def __init__(self, reason: str, *, size: tuple[int, int] | None = None):
        super().__init__(reason)
        #: Set when the image was refused for its pixel count (a decompression bomb).
        self.size = size


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    extension: str  # "jpg" or "png"; kept as the CDN sent it (keep_image), also "webp", "avif", "gif"
    source_format: str
    width: int
    height: int
    converted: bool
    #: Over the pixel limit but under twice it: saved, and worth a line in the bomb log.
    over_pixel_limit: bool


def prepare_image(body: bytes, *, max_pixels: int, jpeg_quality: int) -> PreparedImage:
    """Return what to write for ``body``, or raise :class:`ImageRejected` with the reason.

    Pillow's own pixel limit must be off (``Image.MAX_IMAGE_PIXELS = None``): the limit is
    checked here from the header, before any pixel is decoded, without warnings.
    """
    image = _open(body, max_pixels)
    with image:
        width, height = image.size
        pixels = width * height
        over_limit = pixels > max_pixels
        source_format = image.format or "unknown"

        if source_format == "JPEG":
            _verify_jpeg_end(body)
            if image.mode in ("RGB", "L"):
                return PreparedImage(body, "jpg", source_format, width, height, False, over_limit)
        if source_format == "PNG":
            _verify_png(body)
            return PreparedImage(body, "png", source_format, width, height, False, over_limit)
        with _large_conversion if pixels > _LARGE_PICTURE_PIXELS else contextlib.nullcontext():
            data, extension = _convert(image, jpeg_quality)
    return PreparedImage(data, extension, source_format, width, height, True, over_limit)


def keep_image(body: bytes, *, max_pixels: int) -> PreparedImage:
    """``body`` as it is, once checked as :func:`prepare_image` checks it, or :class:`ImageRejected`.

    For an image the CDN resized (``CIVITAI_IMAGE_WIDTH``): it is stored byte for byte in the
    format the CDN chose, WebP and AVIF included, never converted. JPEG and PNG get their
    structural checks; the other formats (small, resized) are decoded whole, which is what
    catches one cut short.
    """
    image = _open(body, max_pixels)
    with image:
        width, height = image.size
        source_format = image.format or "unknown"
        extension = _KEPT_EXTENSIONS.get(source_format)
        if extension is None:
            raise ImageRejected(f"a {source_format} image, not a format a CDN resizes to")
        if source_format == "JPEG":
            _verify_jpeg_end(body)
        elif source_format == "PNG":
            _verify_png(body)
        else:
            try:
                image.load()
            except Exception as error:
                raise ImageRejected(f"cannot decode {source_format}: {describe(error)}") from None
    return PreparedImage(body, extension, source_format, width, height, False, width * height > max_pixels)


def _open(body: bytes, max_pixels: int) -> Image.Image:
    """``body`` opened (its header read, no pixel decoded), unless it is no image or a bomb."""
    if not body:
        raise ImageRejected("empty body")
    try:
        image = Image.open(BytesIO(body))
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image (body starts with {body[:16]!r})") from None
    except Exception as error:  # Pillow raises many types for broken headers
        raise ImageRejected(f"unreadable image header: {describe(error)}") from None
    width, height = image.size
    pixels = width * height
    if pixels > 2 * max_pixels:
        image.close()
        raise ImageRejected(
            f"decompression bomb refused: {width}x{height} = {pixels} pixels,"
            f" over twice the limit of {max_pixels}",
            size=(width, height),
        )
    return image


def _verify_jpeg_end(body: bytes) -> None:
    # A whole JPEG has its end-of-image marker after its compressed data: at the very end,
    # before zero padding, or before data some cameras append (e.g. Samsung's trailer). A
    # file cut short has none; nor has a header followed by junk, even when a tolerant
    # decoder would fill in the pixels (libjpeg only warns about corrupt data). The compressed
    # data never holds the marker's bytes (0xFF is escaped there), so a search suffices.
    if body.rstrip(b"\x00").endswith(_JPEG_END_OF_IMAGE):
        return
    scan = _jpeg_scan_start(body)
    if scan is None or body.find(_JPEG_END_OF_IMAGE, scan) == -1:
        raise ImageRejected("truncated JPEG: no end-of-image marker after the image data")


def _jpeg_scan_start(body: bytes) -> int | None:
    """Where the compressed data of the first scan starts, or None if there is no scan."""
    # Walk the segments rather than search for the start-of-scan bytes: an EXIF thumbnail
    # is a whole JPEG inside a segment, with its own start of scan and end of image.
    position = 2  # after the start-of-image marker
    while position + 4 <= len(body):
        marker = body[position + 1]
        if body[position] != 0xFF or marker in (0x00, 0xFF):
            position += 1  # junk or fill bytes between segments, skipped as Pillow does
        elif marker in _JPEG_MARKERS_WITHOUT_LENGTH:
            position += 2
        else:
            position += 2 + int.from_bytes(body[position + 2 : position + 4], "big")
            if marker == _JPEG_START_OF_SCAN:
                return position
    return None


def _verify_png(body: bytes) -> None:
    # Every chunk to IEND, each with its CRC, as Pillow's verify() checks them, but over the
    # body itself: verify() copies each chunk out of a BytesIO and computes zlib's CRC, 1.5 ms
    # for a 3 MB PNG, against 0.1 ms here with ISA-L's CRC (the same CRC-32, SIMD).
    view = memoryview(body)
    position = len(_PNG_SIGNATURE)
    while True:
        header = view[position : position + 8]
        if len(header) < 8:
            raise ImageRejected("broken PNG: truncated PNG file (no IEND chunk)")
        length = int.from_bytes(header[:4], "big")
        kind = bytes(header[4:])
        if kind == b"IEND":
            return
        end = position + 8 + length
        stored = view[end : end + 4]
        if len(stored) < 4:
            raise ImageRejected(f"broken PNG: truncated PNG file (in its {kind!r} chunk)")
        if isal_zlib.crc32(view[position + 4 : end]) != int.from_bytes(stored, "big"):
            raise ImageRejected(f"broken PNG: bad checksum in its {kind!r} chunk")
        position = end + 4


def _convert(image: Image.Image, jpeg_quality: int) -> tuple[bytes, str]:
    try:
        image.seek(0)  # the first frame of an animation
        image.load()  # a full decode: raises on a file cut short
        # The converted file carries no EXIF, so apply its orientation to the pixels. In
        # place, and no conversion to the mode it already has: each copy of a picture near
        # the pixel limit costs hundreds of megabytes.
        ImageOps.exif_transpose(image, in_place=True)
        picture = _rgb_or_rgba(image)
        if picture.mode == "RGBA":
            return _encode(picture, "PNG"), "png"
        return _encode(picture, "JPEG", quality=jpeg_quality), "jpg"
    except ImageRejected:
        raise
    except Exception as error:
        raise ImageRejected(f"cannot decode {image.format or 'image'}: {describe(error)}") from None


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    """The picture in RGBA if some pixel is not fully opaque, else in RGB."""
    if image.mode in _WIDE_GREY_RANGES:
        return _to_eight_bits(image).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # Pillow types getextrema() for any mode: an RGBA picture's is a (min, max) per band.
        if cast("tuple[tuple[int, int], ...]", rgba.getextrema())[3][0] < 255:  # the lowest alpha
            return rgba
        image = rgba
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_eight_bits(image: Image.Image) -> Image.Image:
    """A grey of 16 or 32 bits (integer or float) as 8 bits, its usual range mapped to 0..255."""
    wide = image if image.mode == "F" else image.convert("F")
    lowest, highest = cast("tuple[float, float]", wide.getextrema())  # mode F: one (min, max)
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        # NaN or infinity: no scale shows the rest (it all turns black), and Pillow has no
        # cheap way to mask them out.
        raise ImageRejected("float picture with NaN or infinite values: no sensible 8-bit version")
    low, high = next(
        (
            (bottom, top)
            for bottom, top in _WIDE_GREY_RANGES[image.mode]
            if bottom <= lowest and highest <= top
        ),
        (lowest, highest),
    )
    scale = 255 / (high - low) if high > low else 1.0
    return wide.point(lambda value: value * scale - low * scale).convert("L")


def _encode(image: Image.Image, image_format: str, **options: int) -> bytes:
    # Into a real file, not a BytesIO: only then does Pillow encode with the GIL released.
    # Into a BytesIO it holds the GIL throughout (measured: 70 ms with no other thread
    # running for a JPEG, far more for a PNG), which would stall the reactor thread.
    with tempfile.TemporaryFile() as file:
        image.save(file, image_format, **options)
        file.seek(0)
        return file.read()
