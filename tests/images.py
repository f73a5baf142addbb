"""Real images made with Pillow, returned as bytes, for tests.

Every picture has a gradient and a rectangle on it, so that it is not uniform:
re-encoding it would change its bytes, and a test can tell an untouched copy from
a converted one. Sizes are small by default to keep the tests fast.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

DEFAULT_SIZE: tuple[int, int] = (64, 48)

# What an AUTOMATIC1111 web UI writes in the `parameters` text chunk of its PNG files.
A1111_PARAMETERS = (
    "masterpiece, best quality, a cat in a teacup\n"
    "Negative prompt: worst quality, blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3150861441, "
    "Size: 64x48, Model hash: afaf521da2, Model: boleromix_XL_V1.3"
)

# What an edge or a proxy sends back instead of an image.
NOT_AN_IMAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)


def _picture(size: tuple[int, int], frame: int = 0) -> Image.Image:
    """An RGB gradient with a rectangle; `frame` shifts both (for animations)."""
    width, height = size
    pixels = bytearray()
    for y in range(height):
        for x in range(width):
            pixels += bytes(
                (
                    (x * 255 // max(width - 1, 1) + frame * 40) % 256,
                    y * 255 // max(height - 1, 1),
                    (x + y) * 4 % 256,
                )
            )
    picture = Image.frombytes("RGB", size, bytes(pixels))
    left = (width // 4 + frame * 5) % max(width, 1)
    ImageDraw.Draw(picture).rectangle(
        (left, height // 4, left + width // 3, height * 3 // 4), fill=(250, 250, 30)
    )
    return picture


def _convert(picture: Image.Image, mode: str) -> Image.Image:
    if mode == "RGBA":
        # A varying alpha (a horizontal gradient) rather than a flat one.
        alpha = Image.linear_gradient("L").rotate(90).resize(picture.size)
        converted = picture.copy()
        converted.putalpha(alpha)
        return converted
    if mode == "P":
        return picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return picture.convert(mode)


def make_image(
    fmt: str, mode: str = "RGB", size: tuple[int, int] = DEFAULT_SIZE, **save_kwargs: object
) -> bytes:
    """Encode a non-uniform picture of `size` in `mode` with Pillow's format `fmt`."""
    buffer = io.BytesIO()
    _convert(_picture(size), mode).save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def jpeg_rgb(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("JPEG", "RGB", size, quality=90)


def jpeg_grey(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("JPEG", "L", size, quality=90)


def jpeg_cmyk(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("JPEG", "CMYK", size, quality=90)


def png_rgba_with_parameters(text: str = A1111_PARAMETERS, size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """An RGBA PNG carrying `text` in a `parameters` text chunk, as A1111 writes it.

    Pillow writes tEXt for Latin-1 text and falls back to iTXt for anything else.
    """
    info = PngInfo()
    info.add_text("parameters", text)
    return make_image("PNG", "RGBA", size, pnginfo=info)


def png_rgb(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("PNG", "RGB", size)


def webp_rgb(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("WEBP", "RGB", size, quality=90)


def webp_rgba(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("WEBP", "RGBA", size, quality=90)


def gif_animated(size: tuple[int, int] = DEFAULT_SIZE, frames: int = 3) -> bytes:
    """An animated GIF with `frames` (at least 2) different frames, looping."""
    pictures = [_convert(_picture(size, frame), "P") for frame in range(max(frames, 2))]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=100, loop=0)
    return buffer.getvalue()


def palette_png_with_transparency(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """A mode P PNG whose palette index 0 is transparent (a tRNS chunk)."""
    return make_image("PNG", "P", size, transparency=0)


def bmp(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("BMP", "RGB", size)


def tiff(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return make_image("TIFF", "RGB", size)


def truncated(body: bytes, keep: float = 0.5) -> bytes:
    """The first `keep` fraction of `body`, as a download cut off part way."""
    return body[: int(len(body) * keep)]


def bomb_png(size: tuple[int, int] = (200, 200)) -> bytes:
    """A black 1-bit PNG of `size` pixels that is tiny in bytes.

    Written by hand, row by row, so that even a huge size (a real decompression
    bomb) never needs the whole picture in memory here. Tests usually keep the
    default size and lower Pillow's pixel limit instead.
    """
    width, height = size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, (1 << 20) // len(row))
    compressed = []
    for start in range(0, height, rows_per_block):
        compressed.append(compressor.compress(row * min(rows_per_block, height - start)))
    compressed.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(compressed))
        + chunk(b"IEND", b"")
    )
