"""Realistic benchmark images: 1024x1536, sized like Civitai's (JPEG ~500 KB, RGBA PNG ~3 MB).

Gradients plus Gaussian noise: noise is what makes real renders compress as badly as they do,
and its strength is tuned per format to land on the sizes above. Kind ``small-jpeg`` (256x384,
~30 KB) is for runs that measure waiting, not work: the scaling scenario's CDN latency.
"""

from __future__ import annotations

from io import BytesIO

from PIL import Image, ImageChops

SIZE = (1024, 1536)
DISTINCT_BODIES = 4  # urls cycle through these, so no body is the same as the one before

SMALL_SIZE = (256, 384)

# kind: (size, noise sigma, Pillow mode, Pillow format, save options, Content-Type)
_KINDS = {
    "jpeg": (SIZE, 17, "RGB", "JPEG", {"quality": 92}, "image/jpeg"),
    "png": (SIZE, 7, "RGBA", "PNG", {}, "image/png"),
    "webp": (SIZE, 16, "RGB", "WEBP", {"quality": 90}, "image/webp"),
    "small-jpeg": (SMALL_SIZE, 17, "RGB", "JPEG", {"quality": 92}, "image/jpeg"),
}
KINDS = tuple(_KINDS)


def make_images(kind: str) -> tuple[list[bytes], str]:
    """``DISTINCT_BODIES`` encoded images of ``kind`` and their Content-Type."""
    size, sigma, mode, image_format, options, content_type = _KINDS[kind]
    bodies = []
    for seed in range(DISTINCT_BODIES):
        picture = _picture(seed, sigma, size).convert(mode)
        if mode == "RGBA":
            picture.putalpha(Image.linear_gradient("L").resize(size))
        buffer = BytesIO()
        picture.save(buffer, image_format, **options)
        bodies.append(buffer.getvalue())
    return bodies, content_type


def image_size(kind: str) -> tuple[int, int]:
    """Width and height of the images of ``kind``."""
    return _KINDS[kind][0]


def _picture(seed: int, sigma: float, size: tuple[int, int]) -> Image.Image:
    gradient = Image.linear_gradient("L").resize(size)
    turned = gradient.rotate(90 + seed * 7)
    channels = [
        ImageChops.add(
            gradient if channel % 2 else turned,
            Image.effect_noise(size, sigma),
            scale=2.0,
            offset=(seed * 31 + channel * 50) % 128 - 64,
        )
        for channel in range(3)
    ]
    return Image.merge("RGB", channels)
