"""Tests of :func:`civitai_spider.imaging.keep_image`: a resized image from the CDN, checked and kept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image

from civitai_spider.imaging import ImageRejected, keep_image
from tests.support import images

LIMIT = 1_000_000


@pytest.fixture(autouse=True)
def pillow_pixel_limit_off() -> Iterator[None]:
    """keep_image, as prepare_image, needs Pillow's own limit off, as the images pipeline sets it."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@pytest.mark.parametrize(
    ("body", "extension"),
    [
        (images.jpeg_rgb(), "jpg"),
        (images.jpeg_cmyk(), "jpg"),  # prepare_image would convert it: kept as the CDN sent it
        (images.png_rgba_with_parameters(), "png"),
        (images.webp_rgb(), "webp"),
        (images.webp_rgba(), "webp"),
        (images.make_image("AVIF"), "avif"),
        (images.gif_animated(), "gif"),
    ],
    ids=["jpeg", "cmyk", "png", "webp", "webp_alpha", "avif", "gif"],
)
def test_each_format_a_cdn_sends_is_kept_byte_for_byte(body: bytes, extension: str) -> None:
    kept = keep_image(body, max_pixels=LIMIT)

    assert kept.data is body and kept.extension == extension
    assert not kept.converted and not kept.over_pixel_limit
    assert (kept.width, kept.height) == images.DEFAULT_SIZE


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"<html>busy</html>", "not an image"),
        (images.truncated(images.jpeg_rgb()), "truncated JPEG"),
        (images.truncated(images.png_rgb()), "broken PNG"),
        (images.truncated(images.webp_rgb(), keep=0.9), "unreadable image header"),  # decoded at open
        (images.truncated(images.make_image("AVIF"), keep=0.95), "AVIF"),
        (images.bmp(), "a BMP image, not a format a CDN resizes to"),
    ],
    ids=["empty", "html", "jpeg_cut", "png_cut", "webp_cut", "avif_cut", "bmp"],
)
def test_what_is_not_a_whole_web_image_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        keep_image(body, max_pixels=LIMIT)


def test_the_pixel_limit_holds_for_kept_images() -> None:
    width, height = images.DEFAULT_SIZE
    body = images.webp_rgb()

    assert keep_image(body, max_pixels=width * height - 1).over_pixel_limit
    with pytest.raises(ImageRejected, match="decompression bomb refused") as refused:
        keep_image(body, max_pixels=(width * height) // 2 - 1)
    assert refused.value.size == (width, height)
