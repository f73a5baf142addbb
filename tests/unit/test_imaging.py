"""Tests of :mod:`civitai_spider.imaging`: ``prepare_image`` keeps, converts or refuses downloaded
bytes; ``keep_image`` checks and keeps an image the CDN resized."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from civitai_spider import imaging
from civitai_spider.imaging import ImageRejected, PreparedImage, keep_image, prepare_image
from tests.support import images
from tests.support.crawls import REPOSITORY

WIDTH, HEIGHT = images.DEFAULT_SIZE
PIXELS = WIDTH * HEIGHT
LIMIT = 1_000_000


@pytest.fixture(autouse=True)
def pillow_pixel_limit_off() -> Iterator[None]:
    """prepare_image and keep_image need Pillow's own limit off, as the images pipeline sets it."""
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


@pytest.mark.parametrize(
    "make",
    [
        images.jpeg_rgb,
        images.jpeg_grey,
        images.jpeg_cmyk,
        lambda: images.make_image("JPEG", "RGB", quality=90, progressive=True),
    ],
    ids=["rgb", "grey", "cmyk", "progressive"],
)
def test_truncated_jpeg_is_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected, match="truncated JPEG"):
        prepare(images.truncated(make()))


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
    with pytest.raises(ImageRejected, match="broken PNG: bad checksum in its b'IDAT' chunk"):
        prepare(bytes(body))


def test_png_cut_anywhere_after_its_header_is_refused() -> None:
    body = images.png_rgba_with_parameters()
    header_end = 8 + 8 + 13 + 4  # signature, IHDR: Image.open() needs it to say it is a PNG
    for cut in range(header_end, len(body) - 11, 97):  # up to the IEND chunk, which is 12 bytes
        with pytest.raises(ImageRejected, match="broken PNG|unreadable image header|not an image"):
            prepare(body[:cut])


def test_png_with_bytes_after_iend_is_kept_as_it_is() -> None:
    # As Pillow reads it: what follows IEND is no part of the picture.
    body = images.png_rgb() + b"trailing"
    assert prepare(body).data is body


@pytest.mark.parametrize("make", [images.webp_rgb, images.webp_rgba], ids=["rgb", "rgba"])
def test_truncated_webp_is_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected):
        prepare(images.truncated(make()))


@pytest.mark.parametrize("make", [images.bmp, images.tiff], ids=["bmp", "tiff"])
def test_truncated_converted_formats_are_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(ImageRejected, match="cannot decode"):
        prepare(images.truncated(make()))


def test_gif_cut_inside_its_first_frame_is_refused() -> None:
    with pytest.raises(ImageRejected, match="cannot decode GIF"):
        prepare(images.truncated(images.gif_animated(), 0.2))


def test_html_is_not_an_image() -> None:
    with pytest.raises(ImageRejected, match="not an image"):
        prepare(images.NOT_AN_IMAGE)


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


# --- hostile images (issue 5): every mode, animations, junk, bombs, text -----------------

DEFAULT_LIMIT = 89_478_485  # CIVITAI_MAX_IMAGE_PIXELS' default


def _encoded(picture: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _mean_difference(image: Image.Image, expected: Image.Image) -> float:
    """Mean difference per channel value, over 4x4 block averages of the two pictures.

    JPEG noise and dithering average out; a wrong picture (white, black, inverted colours,
    another frame) does not.
    """
    one, other = (picture.convert("RGB").reduce(4).tobytes() for picture in (image, expected))
    return sum(abs(a - b) for a, b in zip(one, other, strict=True)) / len(one)


@pytest.mark.parametrize(
    "mode, image_format, outcome",
    images.MODE_MATRIX,
    ids=[f"{mode}-{image_format}" for mode, image_format, _ in images.MODE_MATRIX],
)
def test_every_mode_is_kept_or_converted_to_the_same_picture(
    mode: str, image_format: str, outcome: str
) -> None:
    body = images.mode_image(mode, image_format)
    with Image.open(io.BytesIO(body)) as source:
        assert source.format == image_format
        # A wide grey should look like the 8-bit grey it was scaled up from (Pillow's own
        # convert() clips it); anything else like what Pillow decodes, transparency included.
        expected = images.grey().convert("RGBA") if mode in images.WIDE_GREYS else source.convert("RGBA")
    low, high = expected.convert("L").getextrema()
    assert high - low > 200, "the source picture should not be flat"

    prepared = prepare(body)

    assert (prepared.source_format, prepared.width, prepared.height) == (image_format, WIDTH, HEIGHT)
    if outcome == "kept":
        assert (prepared.data, prepared.converted) == (body, False)
        assert prepared.extension == ("jpg" if image_format == "JPEG" else "png")
        return
    assert (prepared.extension, prepared.converted) == (outcome, True)
    image = decode(prepared.data)
    assert image.size == (WIDTH, HEIGHT)
    if outcome == "png":
        assert (image.format, image.mode) == ("PNG", "RGBA")
        # PNG is lossless: the very pixels Pillow decodes from the source, alpha included.
        assert image.tobytes() == expected.tobytes()
        assert image.getextrema()[3][0] < 255, "some pixel should be see-through"
    else:
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert _mean_difference(image, expected) < 4


@pytest.mark.parametrize(
    "mode, scale, shown",
    [
        ("I;16", lambda grey: grey * 16, lambda grey: grey * 16 / 257),  # 16 bits: a 0..65535 range
        ("I", lambda grey: grey * 16, lambda grey: grey * 16 / 257),  # 32 bits holding 16
        ("F", lambda grey: grey / 1020, lambda grey: grey / 4),  # float: a 0..1 range
    ],
    ids=["I;16", "I", "F"],
)
def test_dark_wide_grey_stays_dark(
    mode: str, scale: Callable[[float], float], shown: Callable[[float], float]
) -> None:
    grey = images.grey()
    body = _encoded(images.wide_grey(grey, mode, scale), "TIFF")
    image = decode(prepare(body).data)
    assert _mean_difference(image, grey.point(shown)) < 3


def test_wide_grey_outside_any_usual_range_is_stretched_between_its_extremes() -> None:
    grey = images.grey()
    # Signed 32-bit values from about -2^30 to +2^30: neither 8 nor 16 bits hold them.
    body = _encoded(images.wide_grey(grey, "I", lambda value: value * 2**23 - 2**30), "TIFF")
    image = decode(prepare(body).data)
    assert _mean_difference(image, ImageOps.autocontrast(grey)) < 3


@pytest.mark.parametrize("mode, extension", [("RGB", "jpg"), ("RGBA", "png")])
def test_animated_webp_becomes_its_first_frame(mode: str, extension: str) -> None:
    body = images.webp_animated(mode=mode)
    prepared = prepare(body)
    assert (prepared.extension, prepared.source_format, prepared.converted) == (extension, "WEBP", True)
    image = decode(prepared.data)
    assert image.mode == ("RGBA" if extension == "png" else "RGB")
    with Image.open(io.BytesIO(body)) as webp:
        assert webp.n_frames == 3
        first = webp.convert("RGBA")
        webp.seek(webp.n_frames - 1)
        last = webp.convert("RGBA")
    assert _mean_difference(image, first) < 3
    assert _mean_difference(image, last) > 10
    if extension == "png":
        assert image.tobytes() == first.tobytes()


def _gif_with_unused_transparent_index() -> bytes:
    with Image.open(io.BytesIO(images.make_image("GIF", "P"))) as gif:
        unused = gif.histogram().index(0)  # a palette index that no pixel uses
        return _encoded(gif, "GIF", transparency=unused)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _encoded(images.grey().convert("LA"), "TIFF"),
        lambda: _encoded(images.grey().convert("RGBA"), "TIFF"),
        _gif_with_unused_transparent_index,
    ],
    ids=["LA-TIFF", "RGBA-TIFF", "GIF-unused-transparent-index"],
)
def test_alpha_that_no_pixel_uses_gives_a_jpeg(make: Callable[[], bytes]) -> None:
    body = make()
    with Image.open(io.BytesIO(body)) as source:
        assert source.mode in ("LA", "RGBA") or "transparency" in source.info
        expected = source.convert("RGBA")
    assert expected.getextrema()[3] == (255, 255)
    prepared = prepare(body)
    assert prepared.extension == "jpg"
    assert _mean_difference(decode(prepared.data), expected) < 4


@pytest.mark.parametrize("name", list(images.REFUSED))
def test_hostile_body_is_refused_with_its_reason(name: str) -> None:
    make, reason = images.REFUSED[name]
    with pytest.raises(ImageRejected, match=re.escape(reason)):
        prepare(make(), max_pixels=DEFAULT_LIMIT)


def test_pillow_alone_accepts_the_jpeg_junk_that_decodes() -> None:
    # What makes that REFUSED case worth having: libjpeg fills the picture in from the junk,
    # with mere warnings, so only the missing end marker tells.
    decode(images.REFUSED["jpeg_header_then_junk_that_decodes"][0]())


def test_jpeg_with_an_exif_thumbnail_is_kept() -> None:
    body = images.jpeg_with_exif_thumbnail()
    assert body.count(b"\xff\xd9") == 2  # the thumbnail's end marker, then the picture's
    assert prepare(body).data == body
    # Cut short ("jpeg_with_exif_thumbnail_cut", refused) only the thumbnail's is left.
    assert body[:-200].count(b"\xff\xd9") == 1


@pytest.mark.parametrize(
    "name, size",
    [
        ("webp_bomb", (16383, 16383)),
        ("png_bomb", (30000, 30000)),
        ("jpeg_declaring_a_bomb", (65535, 65535)),
        ("gif_declaring_a_bomb", (65535, 65535)),
    ],
)
def test_bomb_tiny_in_bytes_is_refused_with_its_size(name: str, size: tuple[int, int]) -> None:
    body = images.REFUSED[name][0]()
    assert len(body) < 120_000
    with pytest.raises(ImageRejected) as caught:
        prepare(body, max_pixels=DEFAULT_LIMIT)
    assert caught.value.size == size


def test_webp_bomb_is_a_real_one() -> None:
    # Under the limit it decodes in full: what the header check spares at 16383 x 16383.
    body = images.webp_bomb((1500, 1000))
    assert len(body) < 100
    image = decode(prepare(body, max_pixels=DEFAULT_LIMIT).data)
    assert image.size == (1500, 1000)
    assert _mean_difference(image, Image.new("RGB", image.size, (40, 90, 200))) < 2


@pytest.mark.parametrize(
    "kind, text_size",
    [("tEXt", 200_000), ("zTXt", 200_000), ("iTXt", 200_000), ("tEXt", 5_000_000)],
    ids=["tEXt-200KB", "zTXt-200KB", "iTXt-200KB", "tEXt-5MB"],
)
def test_png_with_a_large_text_chunk_is_kept_byte_for_byte(kind: str, text_size: int) -> None:
    # ComfyUI workflows and A1111 parameters live in PNG text; Pillow limits only
    # decompressed text (1 MB a chunk), not plain tEXt.
    body = images.png_with_text_chunk(kind, text_size)
    prepared = prepare(body)
    assert (prepared.data, prepared.extension, prepared.converted) == (body, "png", False)
    assert len(decode(body).text["parameters"]) == text_size


# --- memory: hostile bodies tiny in bytes stay tiny in memory ---------------------------

#: Peak memory growth allowed while refusing them all. A bomb decoded would blow it: 16
#: bytes a pixel for a WebP, so 550 MB for the smallest bomb here.
MEMORY_BOUND_MB = 150
MEMORY_TEST_LIMIT = 10_000_000  # pixels; see the test
# Not the 16383 x 16383 WebP bomb: Pillow's open() reserves 8 bytes a pixel of address
# space for it (libwebp's canvases, untouched unless decoded), past the child's limit.
MEMORY_HOSTILE_BODIES: dict[str, tuple[Callable[[], bytes], str]] = {
    "webp_bomb_36_megapixels": (lambda: images.webp_bomb((6000, 6000)), "decompression bomb"),
    **{
        name: images.REFUSED[name]
        for name in (
            "png_bomb",
            "jpeg_declaring_a_bomb",
            "gif_declaring_a_bomb",
            "png_ztxt_50_mb",
            "png_itxt_50_mb",
            "png_70_ztxt_of_1_mb",
        )
    },
}
# Run in a child process, so that its peak resident memory counts prepare_image() alone:
# the bodies are built by the parent, and the codecs loaded before the first body. The peak
# is VmHWM, reset before each body, not ru_maxrss: Linux carries ru_maxrss over exec(), so
# a child's would start at the pytest process's own peak and hide anything smaller.
MEMORY_CHILD = """
import json, resource, sys
from pathlib import Path

from PIL import Image

from civitai_spider.imaging import ImageRejected, prepare_image
from tests.support import images


def status_kb(field):
    return int(Path("/proc/self/status").read_text().split(field + ":")[1].split()[0])


# A regression must fail the test, not take the machine's memory: 2 GB of address space.
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
Image.MAX_IMAGE_PIXELS = None
folder, max_pixels = Path(sys.argv[1]), int(sys.argv[2])
for body in (images.jpeg_rgb(), images.png_rgb(), images.webp_rgba(), images.gif_animated(), images.tiff()):
    prepare_image(body, max_pixels=max_pixels, jpeg_quality=95)
report = {}
for path in sorted(folder.iterdir()):
    body = path.read_bytes()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak := current (Linux 4.0+)
    except OSError:
        pass  # then the peak since the start: still an upper bound
    before = status_kb("VmRSS")
    try:
        prepare_image(body, max_pixels=max_pixels, jpeg_quality=95)
        outcome = "saved"
    except ImageRejected as error:
        outcome = str(error)
    except MemoryError:
        outcome = "MemoryError"
    growth = status_kb("VmHWM") - before
    report[path.name] = {"bytes": len(body), "outcome": outcome, "peak_growth_kb": growth}
print(json.dumps(report))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_hostile_bodies_are_refused_within_bounded_memory(tmp_path: Path) -> None:
    # A pixel limit of 10 Mpx rather than the default 89 Mpx: the header check is the same
    # code, and a regression then decodes a 36 Mpx bomb (0.6 GB, 3 s) rather than 268 Mpx.
    for name, (make, _) in MEMORY_HOSTILE_BODIES.items():
        (tmp_path / name).write_bytes(make())

    process = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(tmp_path), str(MEMORY_TEST_LIMIT)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout)
    assert max(entry["peak_growth_kb"] for entry in report.values()) < MEMORY_BOUND_MB * 1024, report
    for name, (_, reason) in MEMORY_HOSTILE_BODIES.items():
        assert report[name]["bytes"] < 300_000, name  # tiny in bytes
        assert reason in report[name]["outcome"], (name, report[name])


@pytest.mark.parametrize(
    ("threshold", "expected_at_once"), [(PIXELS - 1, 1), (PIXELS, 4)], ids=["large", "small"]
)
def test_large_pictures_are_converted_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch, threshold: int, expected_at_once: int
) -> None:
    monkeypatch.setattr(imaging, "_LARGE_PICTURE_PIXELS", threshold)
    convert = imaging._convert
    lock, running, most = threading.Lock(), [0], [0]
    all_started = threading.Barrier(4)

    def watched(image: Image.Image, jpeg_quality: int) -> tuple[bytes, str]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            all_started.wait(timeout=2)  # small ones all meet here; a large one times out alone
        except threading.BrokenBarrierError:
            pass
        try:
            return convert(image, jpeg_quality)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(imaging, "_convert", watched)
    body = images.webp_rgb()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: prepare(body), range(4)))
    assert all(result.extension == "jpg" for result in results)
    assert most[0] == expected_at_once


# keep_image: an image the CDN resized (CIVITAI_IMAGE_WIDTH), checked and kept as it came.


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
def test_keep_image_each_format_a_cdn_sends_is_kept_byte_for_byte(body: bytes, extension: str) -> None:
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
def test_keep_image_refuses_what_is_not_a_whole_web_image(body: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        keep_image(body, max_pixels=LIMIT)


def test_keep_image_the_pixel_limit_holds() -> None:
    width, height = images.DEFAULT_SIZE
    body = images.webp_rgb()

    assert keep_image(body, max_pixels=width * height - 1).over_pixel_limit
    with pytest.raises(ImageRejected, match="decompression bomb refused") as refused:
        keep_image(body, max_pixels=(width * height) // 2 - 1)
    assert refused.value.size == (width, height)
