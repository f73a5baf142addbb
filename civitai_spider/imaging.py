"""Decide how to store downloaded image bytes: keep them, convert them, or refuse them.

Pure functions of the bytes (no Scrapy, no files), run in a worker thread by the images
pipeline: Pillow releases the GIL while it decodes and encodes, so both cores work.

- JPEG (mode RGB or L) and PNG originals are kept byte for byte: no quality loss, and
  PNG text chunks keep the generation parameters.
- Anything else is converted: to PNG when it has transparency, else to JPEG.
- A file cut short is refused. For JPEG and PNG that is a structural check (end marker,
  chunk checksums), much cheaper than a full decode; only a JPEG without its end marker
  at the end is decoded, to tell data appended after the marker from a cut-off file.
- The format comes from the bytes: Civitai's URLs end in ``.jpeg`` whatever they hold.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

_JPEG_END_OF_IMAGE = b"\xff\xd9"
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageRejected(Exception):
    """The bytes cannot be stored as an image; the message is the reason."""

    def __init__(self, reason: str, *, size: tuple[int, int] | None = None):
        super().__init__(reason)
        #: Set when the image was refused for its pixel count (a decompression bomb).
        self.size = size


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    extension: str  # "jpg" or "png"
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
    if not body:
        raise ImageRejected("empty body")
    try:
        image = Image.open(BytesIO(body))
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image (body starts with {body[:16]!r})") from None
    except Exception as error:  # Pillow raises many types for broken headers
        raise ImageRejected(f"unreadable image header: {_describe(error)}") from None

    with image:
        width, height = image.size
        pixels = width * height
        if pixels > 2 * max_pixels:
            raise ImageRejected(
                f"decompression bomb refused: {width}x{height} = {pixels} pixels,"
                f" over twice the limit of {max_pixels}",
                size=(width, height),
            )
        over_limit = pixels > max_pixels
        source_format = image.format or "unknown"

        if source_format == "JPEG" and image.mode in ("RGB", "L"):
            if not body.rstrip(b"\x00").endswith(_JPEG_END_OF_IMAGE):
                _decode_jpeg_without_end_marker(image)
            return PreparedImage(body, "jpg", source_format, width, height, False, over_limit)
        if source_format == "PNG":
            _verify_png(body)
            return PreparedImage(body, "png", source_format, width, height, False, over_limit)
        data, extension = _convert(image, jpeg_quality)
    return PreparedImage(data, extension, source_format, width, height, True, over_limit)


def _decode_jpeg_without_end_marker(image: Image.Image) -> None:
    # Usually a file cut short; but some cameras append data after the end marker (e.g.
    # Samsung's trailer), so only a full decode can tell. Rare, so the cost is fine.
    try:
        image.load()
    except Exception as error:
        raise ImageRejected(f"truncated JPEG: no end-of-image marker ({_describe(error)})") from None


def _verify_png(body: bytes) -> None:
    # verify() walks every chunk to IEND checking its CRC without decoding pixels; it
    # needs a freshly opened image.
    try:
        with Image.open(BytesIO(body)) as image:
            image.verify()
    except Exception as error:
        raise ImageRejected(f"broken PNG: {_describe(error)}") from None


def _convert(image: Image.Image, jpeg_quality: int) -> tuple[bytes, str]:
    try:
        image.seek(0)  # the first frame of an animation
        image.load()  # a full decode: raises on a file cut short
        has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
        # The converted file carries no EXIF, so apply its orientation to the pixels.
        image = ImageOps.exif_transpose(image)
        if has_alpha:
            return _encode(image.convert("RGBA"), "PNG"), "png"
        return _encode(image.convert("RGB"), "JPEG", quality=jpeg_quality), "jpg"
    except ImageRejected:
        raise
    except Exception as error:
        raise ImageRejected(f"cannot decode {image.format or 'image'}: {_describe(error)}") from None


def _encode(image: Image.Image, image_format: str, **options: int) -> bytes:
    # Into a real file, not a BytesIO: only then does Pillow encode with the GIL released.
    # Into a BytesIO it holds the GIL throughout (measured: 70 ms with no other thread
    # running for a JPEG, far more for a PNG), which would stall the reactor thread.
    with tempfile.TemporaryFile() as file:
        image.save(file, image_format, **options)
        file.seek(0)
        return file.read()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
