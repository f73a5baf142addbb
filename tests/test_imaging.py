"""Tests of :func:`civitai_spider.imaging.prepare_image`: keep, convert or refuse downloaded bytes."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from civitai_spider.imaging import ImageRejected, PreparedImage, prepare_image
from tests import images

WIDTH, HEIGHT = images.DEFAULT_SIZE
PIXELS = WIDTH * HEIGHT
LIMIT = 1_000_000


@pytest.fixture(autouse=True)
def pillow_pixel_limit_off() -> Iterator[None]:
    """prepare_image needs Pillow's own limit off, as the images pipeline sets it."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def prepare(body: bytes, max_pixels: int = LIMIT, jpeg_quality: int = 95) -> PreparedImage:
    return prepare_image(body, max_pixels=max_pixels, jpeg_quality=jpeg_quality)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- kept byte for byte ----------------------------------------------------------------


@pytest.mark.parametrize("make", [images.jpeg_rgb, images.jpeg_grey], ids=["RGB", "L"])
def test_jpeg_rgb_and_grey_are_kept_byte_for_byte(make: Callable[[], bytes]) -> None:
    body = make()
    prepared = prepare(body)
    assert prepared.data == body
    assert prepared.extension == "jpg"
    assert prepared.source_format == "JPEG"
    assert prepared.converted is False
    assert (prepared.width, prepared.height) == (WIDTH, HEIGHT)
    assert prepared.over_pixel_limit is False


def test_png_with_parameters_chunk_is_kept_byte_for_byte() -> None:
    body = images.png_rgba_with_parameters()
    prepared = prepare(body)
    assert prepared.data == body
    assert prepared.extension == "png"
    assert prepared.converted is False
    assert decode(prepared.data).info["parameters"] == images.A1111_PARAMETERS


def test_png_with_non_latin1_parameters_is_kept() -> None:
    text = "一只猫在茶杯里 🐱\nNegative prompt: 模糊"
    body = images.png_rgba_with_parameters(text)
    prepared = prepare(body)
    assert prepared.data == body
    assert decode(prepared.data).info["parameters"] == text


def test_palette_png_with_transparency_is_kept_as_png() -> None:
    body = images.palette_png_with_transparency()
    prepared = prepare(body)
    assert prepared.data == body
    assert prepared.extension == "png"
    assert prepared.converted is False


def test_jpeg_with_trailing_zero_padding_is_kept() -> None:
    body = images.jpeg_rgb() + b"\x00" * 16
    assert prepare(body).data == body


# --- converted -------------------------------------------------------------------------


def test_webp_rgb_becomes_a_jpeg() -> None:
    prepared = prepare(images.webp_rgb())
    assert prepared.extension == "jpg"
    assert prepared.source_format == "WEBP"
    assert prepared.converted is True
    image = decode(prepared.data)
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (WIDTH, HEIGHT)


def test_jpeg_quality_setting_is_used_for_conversions() -> None:
    body = images.webp_rgb((256, 192))
    high = prepare(body, jpeg_quality=95).data
    low = prepare(body, jpeg_quality=30).data
    assert len(high) > len(low)


def test_webp_rgba_becomes_a_png_that_keeps_the_alpha() -> None:
    body = images.webp_rgba()
    prepared = prepare(body)
    assert prepared.extension == "png"
    assert prepared.converted is True
    image = decode(prepared.data)
    assert image.format == "PNG"
    assert image.mode == "RGBA"
    source = decode(body).convert("RGBA")
    # WebP stores alpha losslessly and PNG is lossless: the alpha channel is identical.
    assert image.getchannel("A").tobytes() == source.getchannel("A").tobytes()
    low, high = source.getchannel("A").getextrema()
    assert high - low > 200, "the test image should have a varying alpha"


def test_webp_rgba_transparent_pixels_stay_transparent() -> None:
    picture = Image.new("RGBA", (WIDTH, HEIGHT), (200, 30, 30, 255))
    picture.paste((0, 0, 0, 0), (0, 0, WIDTH // 2, HEIGHT))
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", quality=90)
    image = decode(prepare(buffer.getvalue()).data)
    assert image.mode == "RGBA"
    assert image.getpixel((1, 1))[3] == 0
    assert image.getpixel((WIDTH - 2, HEIGHT - 2))[3] == 255


def test_animated_gif_without_transparency_becomes_a_jpeg_of_its_first_frame() -> None:
    body = images.gif_animated()
    prepared = prepare(body)
    assert prepared.extension == "jpg"
    assert prepared.source_format == "GIF"
    assert prepared.converted is True
    image = decode(prepared.data)
    assert image.mode == "RGB"
    assert image.size == (WIDTH, HEIGHT)
    with Image.open(io.BytesIO(body)) as gif:
        first = gif.convert("RGB")
        gif.seek(gif.n_frames - 1)
        last = gif.convert("RGB")
    # Closer to the first frame than to the last one (JPEG is lossy: compare distances).
    assert _distance(image, first) < _distance(image, last)


def test_gif_with_transparency_becomes_a_png() -> None:
    picture = Image.new("P", (WIDTH, HEIGHT), 0)
    picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    picture.paste(1, (10, 10, 30, 30))
    buffer = io.BytesIO()
    picture.save(buffer, "GIF", transparency=0)
    prepared = prepare(buffer.getvalue())
    assert prepared.extension == "png"
    image = decode(prepared.data)
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0
    assert image.getpixel((15, 15)) == (255, 0, 0, 255)


def test_cmyk_jpeg_becomes_an_rgb_jpeg() -> None:
    body = images.jpeg_cmyk()
    prepared = prepare(body)
    assert prepared.extension == "jpg"
    assert prepared.converted is True
    assert prepared.data != body
    image = decode(prepared.data)
    assert image.mode == "RGB"
    assert image.size == (WIDTH, HEIGHT)


@pytest.mark.parametrize("make, source_format", [(images.bmp, "BMP"), (images.tiff, "TIFF")])
def test_bmp_and_tiff_become_jpeg(make: Callable[[], bytes], source_format: str) -> None:
    prepared = prepare(make())
    assert prepared.extension == "jpg"
    assert prepared.source_format == source_format
    assert prepared.converted is True
    assert decode(prepared.data).format == "JPEG"


# --- refused ---------------------------------------------------------------------------


def test_truncated_jpeg_is_refused() -> None:
    with pytest.raises(ImageRejected, match="truncated"):
        prepare(images.truncated(images.jpeg_rgb()))


@pytest.mark.parametrize(
    "make",
    [images.png_rgb, images.png_rgba_with_parameters, images.palette_png_with_transparency],
    ids=["rgb", "rgba", "palette"],
)
def test_truncated_png_is_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare(images.truncated(make()))
    assert caught.value.size is None


def test_png_with_a_bad_chunk_checksum_is_refused() -> None:
    body = bytearray(images.png_rgb())
    body[-20] ^= 0xFF  # inside the last IDAT chunk: its CRC no longer matches
    with pytest.raises(ImageRejected):
        prepare(bytes(body))


@pytest.mark.parametrize("make", [images.webp_rgb, images.webp_rgba], ids=["rgb", "rgba"])
def test_truncated_webp_is_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected):
        prepare(images.truncated(make()))


@pytest.mark.parametrize("make", [images.jpeg_cmyk, images.bmp, images.tiff], ids=["cmyk", "bmp", "tiff"])
def test_truncated_converted_formats_are_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected, match="cannot decode"):
        prepare(images.truncated(make()))


def test_gif_cut_inside_its_first_frame_is_refused() -> None:
    with pytest.raises(ImageRejected, match="cannot decode GIF"):
        prepare(images.truncated(images.gif_animated(), 0.2))


def test_html_is_not_an_image() -> None:
    with pytest.raises(ImageRejected, match="not an image"):
        prepare(images.NOT_AN_IMAGE)


def test_empty_body_is_refused() -> None:
    with pytest.raises(ImageRejected, match="empty"):
        prepare(b"")


# --- pixel limits ----------------------------------------------------------------------


def test_under_the_pixel_limit_is_not_flagged() -> None:
    assert prepare(images.jpeg_rgb(), max_pixels=PIXELS).over_pixel_limit is False


@pytest.mark.parametrize("max_pixels", [PIXELS - 1, PIXELS // 2], ids=["just_below", "exactly_half"])
def test_over_the_limit_but_not_twice_is_kept_and_flagged(max_pixels: int) -> None:
    body = images.jpeg_rgb()
    prepared = prepare(body, max_pixels=max_pixels)
    assert prepared.over_pixel_limit is True
    assert prepared.data == body


@pytest.mark.parametrize(
    "make", [images.jpeg_rgb, images.png_rgb, images.webp_rgb], ids=["jpeg", "png", "webp"]
)
def test_over_twice_the_limit_is_refused_with_the_size(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected, match="decompression bomb") as caught:
        prepare(make(), max_pixels=PIXELS // 2 - 1)
    assert caught.value.size == (WIDTH, HEIGHT)


def test_bomb_is_refused_from_the_header() -> None:
    # 30000 x 30000 = 900 Mpx; refused before any pixel is decoded.
    with pytest.raises(ImageRejected) as caught:
        prepare(images.bomb_png((30000, 30000)), max_pixels=89_478_485)
    assert caught.value.size == (30000, 30000)


def _distance(a: Image.Image, b: Image.Image) -> int:
    return sum(abs(p - q) for p, q in zip(a.tobytes(), b.tobytes(), strict=True))


def test_jpeg_with_data_after_its_end_marker_is_kept_as_is() -> None:
    # Some cameras append a trailer after the end-of-image marker; the image is whole.
    body = images.jpeg_rgb() + b"SEFH\x00\x00trailerSEFT"
    prepared = prepare(body)
    assert (prepared.data, prepared.extension, prepared.converted) == (body, "jpg", False)


def test_jpeg_missing_only_its_end_marker_is_refused() -> None:
    with pytest.raises(ImageRejected, match="truncated JPEG"):
        prepare(images.jpeg_rgb()[:-2])
