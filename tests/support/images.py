"""Real images made with Pillow, returned as bytes, for tests.

Every picture has a gradient and a rectangle on it, so that it is not uniform:
re-encoding it would change its bytes, and a test can tell an untouched copy from
a converted one. Sizes are small by default to keep the tests fast.

Also the hostile bodies of issue 5 (every Pillow mode, animations, junk after a valid
header, bombs tiny in bytes, huge PNG text chunks), with what a user expects of each:
``MODE_MATRIX`` and ``REFUSED``, shared by the unit tests and the end-to-end crawl.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

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


#: Greys wider than 8 bits, made from the 8-bit grey of the picture by these functions, so
#: that they span their mode's usual range as real files do: 16 bits 0..65535, float 0..1.
WIDE_GREYS: dict[str, Callable[[float], float]] = {
    "I;16": lambda grey: grey * 257,
    "I;16B": lambda grey: grey * 257,
    "I": lambda grey: grey * 257,  # 16-bit data in a 32-bit integer, as TIFF and PGM hold it
    "F": lambda grey: grey / 255,
}


def _convert(picture: Image.Image, mode: str) -> Image.Image:
    if mode in ("RGBA", "LA"):
        # A varying alpha (a horizontal gradient) rather than a flat one.
        alpha = Image.linear_gradient("L").rotate(90).resize(picture.size)
        converted = picture.convert(mode)
        converted.putalpha(alpha)
        return converted
    if mode in ("P", "P+transparency"):
        converted = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        if mode == "P+transparency":
            converted.info["transparency"] = 0  # a palette index the picture uses
        return converted
    if mode in WIDE_GREYS:
        return wide_grey(picture.convert("L"), mode)
    return picture.convert(mode)


def wide_grey(grey: Image.Image, mode: str, scale: Callable[[float], float] | None = None) -> Image.Image:
    """`grey` (mode L) in the wide grey `mode`, each value mapped by `scale` (by default WIDE_GREYS')."""
    wide = grey.convert("F").point(scale or WIDE_GREYS[mode])
    if mode == "F":
        return wide
    if mode == "I;16B":  # Pillow converts to I;16B wrongly (clipped to 255): through raw bytes
        return Image.frombytes(mode, grey.size, wide.convert("I").convert("I;16").tobytes("raw", mode))
    return wide.convert("I").convert(mode)


def grey(size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """The 8-bit grey the wide greys are made from: what their conversion should show."""
    return _picture(size).convert("L")


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


def mode_image(mode: str, fmt: str, size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """The picture in Pillow `mode` ("P+transparency": P with a transparent index) as `fmt`."""
    options: dict[str, object] = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    return make_image(fmt, mode, size, **options)


#: Every Pillow mode in the containers Pillow writes it to, and what a user expects of it:
#: "kept" byte for byte, else converted to "jpg", or to "png" when some pixel is see-through.
#: Left out: what the tests of single formats cover (JPEG RGB/L, PNG RGBA and P with
#: transparency, RGB WebP/BMP/TIFF/GIF) and what Pillow writes in another mode (an L or P
#: WebP is RGB; an RGBA BMP reads back as RGB; an RGBA GIF is P with a transparent index
#: that no pixel of this picture uses, as no alpha is 0).
MODE_MATRIX: list[tuple[str, str, str]] = [
    ("1", "PNG", "kept"),
    ("1", "TIFF", "jpg"),
    ("1", "BMP", "jpg"),
    ("L", "PNG", "kept"),
    ("L", "TIFF", "jpg"),
    ("L", "BMP", "jpg"),
    ("LA", "PNG", "kept"),
    ("LA", "TIFF", "png"),
    ("LA", "WEBP", "png"),
    ("P", "PNG", "kept"),
    ("P", "TIFF", "jpg"),
    ("P", "BMP", "jpg"),
    ("P", "GIF", "jpg"),
    ("P+transparency", "GIF", "png"),
    ("P+transparency", "WEBP", "png"),
    ("RGB", "PNG", "kept"),
    ("RGBA", "TIFF", "png"),
    ("CMYK", "JPEG", "jpg"),
    ("CMYK", "TIFF", "jpg"),
    ("I;16", "PNG", "kept"),
    ("I;16", "TIFF", "jpg"),
    ("I;16B", "TIFF", "jpg"),
    ("I", "TIFF", "jpg"),
    ("F", "TIFF", "jpg"),
]


def webp_animated(size: tuple[int, int] = DEFAULT_SIZE, frames: int = 3, mode: str = "RGB") -> bytes:
    """An animated WebP with `frames` (at least 2) different frames, in `mode` RGB or RGBA."""
    pictures = [_convert(_picture(size, frame), mode) for frame in range(max(frames, 2))]
    buffer = io.BytesIO()
    pictures[0].save(
        buffer, format="WEBP", save_all=True, append_images=pictures[1:], duration=100, loop=0, quality=90
    )
    return buffer.getvalue()


def header_then_junk(body: bytes, junk: bytes = NOT_AN_IMAGE) -> bytes:
    """The header of `body` up to its first compressed pixel data, then `junk` in its place.

    As when an edge sends the start of an image and then an error page. PNG, GIF, JPEG and
    WebP only.
    """
    with Image.open(io.BytesIO(body)) as image:
        image_format = image.format
        data_offset = image.tile[0].offset if image.tile else 0
    if image_format == "JPEG":  # after the start-of-scan segment (no EXIF thumbnail here)
        start_of_scan = body.index(b"\xff\xda")
        data_offset = start_of_scan + 2 + int.from_bytes(body[start_of_scan + 2 : start_of_scan + 4], "big")
    elif image_format == "WEBP":  # the RIFF header and the header of the first chunk
        data_offset = 12 + 8
    elif image_format not in ("PNG", "GIF"):
        raise ValueError(f"no header_then_junk for {image_format}")
    return body[:data_offset] + junk


def webp_bomb(size: tuple[int, int] = (16383, 16383)) -> bytes:
    """A lossless WebP of one flat colour, a few dozen bytes whatever its `size` (up to 16383).

    A real bomb: libwebp decodes every pixel of it. A flat picture needs zero bits per pixel,
    so the header of a small one only needs the new size.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 90, 200)).save(buffer, format="WEBP", lossless=True)
    body = bytearray(buffer.getvalue())
    start = body.index(b"VP8L") + 8 + 1  # after the chunk header and the signature byte
    fields = int.from_bytes(body[start : start + 4], "little")
    width, height = size
    fields = fields & ~0x0FFFFFFF | (width - 1) | (height - 1) << 14  # two 14-bit fields
    body[start : start + 4] = fields.to_bytes(4, "little")
    return bytes(body)


def declaring_size(body: bytes, size: tuple[int, int]) -> bytes:
    """A JPEG or GIF `body` whose header claims `size` (up to 65535 each way) instead of its own.

    What a bomb looks like to a header check; the data after it stays that of the small image.
    """
    width, height = size
    patched = bytearray(body)
    if body.startswith(b"GIF"):
        # The logical screen, then the first image descriptor (after the colour table).
        patched[6:10] = struct.pack("<HH", width, height)
        descriptor = 13 + (3 << (body[10] & 7) + 1 if body[10] & 0x80 else 0)
        while patched[descriptor] == 0x21:  # skip extension blocks
            descriptor += 2
            while patched[descriptor]:
                descriptor += patched[descriptor] + 1
            descriptor += 1
        patched[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    elif body.startswith(b"\xff\xd8"):
        frame = body.index(b"\xff\xc0")  # baseline start of frame: precision, height, width
        patched[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    else:
        raise ValueError("declaring_size handles JPEG and GIF")
    return bytes(patched)


_TEXT_BLOCK_SIZE = 1 << 16


def png_with_text_chunk(kind: str, text_size: int, *, chunks: int = 1) -> bytes:
    """The RGB PNG with `chunks` text chunks of `kind` (tEXt, or zTXt or iTXt compressed), each
    of `text_size` characters of A1111 text, before the pixels as A1111 puts its parameters.

    The first chunk's keyword is ``parameters``, the others' ``parameters 2``, ``parameters 3``...:
    distinct, so that a reader keeps every one. Built a block at a time, so that a text that
    decompresses huge costs little memory here.
    """
    block = (A1111_PARAMETERS * (_TEXT_BLOCK_SIZE // len(A1111_PARAMETERS) + 1)).encode()[:_TEXT_BLOCK_SIZE]
    blocks = [block[: min(len(block), text_size - start)] for start in range(0, text_size, len(block))]
    if kind == "tEXt":
        text = b"".join(blocks)
    else:
        compressor = zlib.compressobj(9)
        compressed = b"".join([*map(compressor.compress, blocks), compressor.flush()])
        # zTXt: compression method 0. iTXt: compressed, method 0, no language, no translation.
        text = (b"\x00" if kind == "zTXt" else b"\x01\x00\x00\x00") + compressed
    keywords = [b"parameters"] + [b"parameters %d" % number for number in range(2, chunks + 1)]
    text_chunks = b"".join(_png_chunk(kind.encode(), keyword + b"\x00" + text) for keyword in keywords)
    png = png_rgb()
    first_pixels = png.index(b"IDAT") - 4  # where the first IDAT chunk starts, with its length
    return png[:first_pixels] + text_chunks + png[first_pixels:]


def jpeg_with_exif_thumbnail(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """An RGB JPEG whose EXIF segment holds a thumbnail: a whole small JPEG, end marker included."""
    thumbnail = jpeg_rgb((16, 12))
    # Little-endian TIFF header; IFD0 with no entry; IFD1 pointing at the thumbnail.
    ifd1 = 8 + 6
    thumbnail_offset = ifd1 + 2 + 2 * 12 + 4
    tiff_structure = (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<HI", 0, ifd1)
        + struct.pack("<H", 2)
        + struct.pack("<HHII", 0x0201, 4, 1, thumbnail_offset)  # JPEGInterchangeFormat
        + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail))  # JPEGInterchangeFormatLength
        + struct.pack("<I", 0)
    )
    return make_image("JPEG", "RGB", size, quality=90, exif=b"Exif\x00\x00" + tiff_structure + thumbnail)


def float_tiff_with_nan(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """A float grey TIFF (0..1) with one NaN pixel and one infinite one, as missing data."""
    picture = _convert(_picture(size), "F")
    picture.putpixel((0, 0), float("nan"))
    picture.putpixel((1, 0), float("inf"))
    buffer = io.BytesIO()
    picture.save(buffer, format="TIFF")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(size: tuple[int, int] = (200, 200)) -> bytes:
    """A black 1-bit PNG of `size` pixels that is tiny in bytes.

    Written by hand, row by row, so that even a huge size (a real decompression
    bomb) never needs the whole picture in memory here. Tests usually keep the
    default size and lower Pillow's pixel limit instead.
    """
    width, height = size
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
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(compressed))
        + _png_chunk(b"IEND", b"")
    )


#: Hostile bodies that must be refused, with (a fragment of) the reason logged for each.
REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "empty body"),
    "png_header_then_junk": (lambda: header_then_junk(png_rgb()), "broken PNG"),
    "jpeg_header_then_junk": (lambda: header_then_junk(jpeg_rgb()), "truncated JPEG"),
    # Enough junk for every block of the picture: libjpeg decodes it, with mere warnings.
    "jpeg_header_then_junk_that_decodes": (
        lambda: header_then_junk(jpeg_rgb(), NOT_AN_IMAGE * 40),
        "truncated JPEG",
    ),
    "jpeg_with_exif_thumbnail_cut": (lambda: jpeg_with_exif_thumbnail()[:-200], "truncated JPEG"),
    "webp_header_then_junk": (lambda: header_then_junk(webp_rgb()), "unreadable image header"),
    "webp_alpha_header_then_junk": (lambda: header_then_junk(webp_rgba()), "unreadable image header"),
    "gif_header_then_junk": (lambda: header_then_junk(make_image("GIF")), "cannot decode GIF"),
    "animated_gif_header_then_junk": (lambda: header_then_junk(gif_animated()), "cannot decode GIF"),
    "float_with_nan": (float_tiff_with_nan, "NaN or infinite"),
    # Decompression bombs of 38 bytes to 110 KB, refused at the default pixel limit.
    "webp_bomb": (webp_bomb, "decompression bomb"),
    "png_bomb": (lambda: bomb_png((30000, 30000)), "decompression bomb"),
    "jpeg_declaring_a_bomb": (lambda: declaring_size(jpeg_rgb(), (65535, 65535)), "decompression bomb"),
    "gif_declaring_a_bomb": (lambda: declaring_size(gif_animated(), (65535, 65535)), "decompression bomb"),
    # Text that decompresses past Pillow's limits (1 MB a chunk, 64 MB in all).
    "png_ztxt_50_mb": (lambda: png_with_text_chunk("zTXt", 50_000_000), "Decompressed data too large"),
    "png_itxt_50_mb": (lambda: png_with_text_chunk("iTXt", 50_000_000), "Decompressed data too large"),
    "png_70_ztxt_of_1_mb": (
        lambda: png_with_text_chunk("zTXt", 1_000_000, chunks=70),
        "Too much memory used in text chunks",
    ),
}
