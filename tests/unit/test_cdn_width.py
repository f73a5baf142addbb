"""The URL the crawl asks the CDN for at ``CIVITAI_IMAGE_WIDTH``, for every form of media URL."""

from __future__ import annotations

import pytest

from civitai_spider.cdn_width import resized_url, snapped_width, transform_options

LOCATION = "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA"
UUID = "69bf3279-df2c-4ec8-b795-479e9cd3db1b"


@pytest.mark.parametrize(
    ("asked", "snapped"),
    [
        (1, 96),
        (96, 96),
        (97, 320),
        (450, 450),
        (451, 512),
        (512, 512),
        (513, 800),
        (1024, 1200),
        (1600, 1600),
        # getEdgeUrl snaps first (1601 -> 2200), then caps at 1800 (edge-url.ts 121-122).
        (1601, 1800),
        (1800, 1800),
    ],
)
def test_a_width_is_snapped_up_the_ladder_and_capped_as_the_site_does(asked: int, snapped: int) -> None:
    assert snapped_width(asked) == snapped


@pytest.mark.parametrize(
    ("url", "width", "expected"),
    [
        # The API's form: the width replaces original=true, the name stays.
        (
            f"{LOCATION}/{UUID}/original=true/{UUID}.jpeg",
            512,
            f"{LOCATION}/{UUID}/width=512/{UUID}.jpeg",
        ),
        # At 450 and less the site forces optimized=true (edge-url.ts 64-69), written last.
        (
            f"{LOCATION}/{UUID}/original=true/{UUID}.jpeg",
            450,
            f"{LOCATION}/{UUID}/width=450,optimized=true/{UUID}.jpeg",
        ),
        (
            f"{LOCATION}/{UUID}/original=true/{UUID}.jpeg",
            96,
            f"{LOCATION}/{UUID}/width=96,optimized=true/{UUID}.jpeg",
        ),
        # Other options stay, in getEdgeUrl's order; width, height, original, optimized are replaced.
        (
            f"{LOCATION}/{UUID}/quality=90,original=true,anim=false/{UUID}.jpeg",
            800,
            f"{LOCATION}/{UUID}/anim=false,width=800,quality=90/{UUID}.jpeg",
        ),
        (
            f"{LOCATION}/{UUID}/width=1200,height=1000,optimized=true/{UUID}.jpeg",
            800,
            f"{LOCATION}/{UUID}/width=800/{UUID}.jpeg",
        ),
        (
            f"{LOCATION}/{UUID}/original=false,transcode=true/{UUID}.jpeg",
            320,
            f"{LOCATION}/{UUID}/transcode=true,width=320,optimized=true/{UUID}.jpeg",
        ),
        # Another host or port (the fake CDN), a query, a name of another extension: kept.
        (
            f"http://127.0.0.2:8080/key/{UUID}/original=true/{UUID}.jpeg?token=abc",
            1200,
            f"http://127.0.0.2:8080/key/{UUID}/width=1200/{UUID}.jpeg?token=abc",
        ),
        (
            f"{LOCATION}/{UUID}/original=true/some%20name.png",
            800,
            f"{LOCATION}/{UUID}/width=800/some%20name.png",
        ),
    ],
)
def test_a_transform_segment_gets_the_width(url: str, width: int, expected: str) -> None:
    assert resized_url(url, width) == expected


@pytest.mark.parametrize(
    "url",
    [
        # The newer form, without a transform segment (civitai-api.md, media URLs).
        f"https://image-b2.civitai.com/file/civitai-media-cache/{UUID}/original",
        f"https://image-b2.civitai.com/file/civitai-media-cache/{UUID}/original.jpeg",
        # No segment before the name, or no name.
        f"{LOCATION}/{UUID}.jpeg",
        "https://image.civitai.com/original=true/x.jpeg",
        f"{LOCATION}/{UUID}/original=true/",
        "https://image.civitai.com",
        # Not a segment getEdgeUrl writes: an unknown option, no value, a repeated option, no "=".
        f"{LOCATION}/{UUID}/original=true,resize=2/{UUID}.jpeg",
        f"{LOCATION}/{UUID}/original=/{UUID}.jpeg",
        f"{LOCATION}/{UUID}/width=1,width=2/{UUID}.jpeg",
        f"{LOCATION}/{UUID}/original/{UUID}.jpeg",
        f"{LOCATION}/{UUID}/original=true,/{UUID}.jpeg",
        # Empty uuid segment.
        f"{LOCATION}//original=true/{UUID}.jpeg",
    ],
)
def test_a_url_without_a_transform_segment_is_not_rewritten(url: str) -> None:
    assert resized_url(url, 512) is None


def test_transform_options_keep_their_order() -> None:
    assert transform_options("width=450,optimized=true") == {"width": "450", "optimized": "true"}
    assert list(transform_options("quality=90,anim=false") or {}) == ["quality", "anim"]
    assert transform_options("w=450") is None
