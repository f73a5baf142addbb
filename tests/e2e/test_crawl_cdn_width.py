"""End to end: ``CIVITAI_IMAGE_WIDTH`` asks the fake CDN for resized images, stored as it sent them."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.support import images, videos
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import CDN_KEY, FakeCivitai, Fault
from tests.support.servers import SeaweedS3Server, bucket_objects

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
NO_PROMPT_NEEDED = {"CIVITAI_REQUIRE_PROMPT": "false"}


class Picture(NamedTuple):
    format: str
    mode: str
    width: int
    height: int


def path_with(item: dict[str, Any], options: str) -> str:
    """The CDN path of ``item``'s image with ``options`` in place of ``original=true``."""
    return urlsplit(item["url"]).path.replace("/original=true/", f"/{options}/")


def newer_form_item(server: FakeCivitai, body: bytes, uuid: str) -> dict[str, Any]:
    """An item whose URL is the newer ``image-b2`` form, without a transform segment."""
    url = server.add_image(f"/file/civitai-media-cache/{uuid}/original", body)
    return server.add_image_item(None, url=url)


def meta_of(store: Path, item: dict[str, Any]) -> dict[str, Any]:
    return json.loads((store / f"{item['id']}_meta.json").read_text())


def picture_of(body: bytes) -> Picture:
    with Image.open(BytesIO(body)) as image:
        image.load()
        return Picture(image.format or "", image.mode, image.width, image.height)


def saved_as_sent(store: Path, item: dict[str, Any], sent: bytes) -> Picture:
    """The one image file saved for ``item``: the very bytes sent, named by their format."""
    picture = picture_of(sent)
    saved = store / f"{item['id']}.{EXTENSIONS[picture.format]}"
    assert saved.read_bytes() == sent
    assert sorted(path for path in store.glob(f"{item['id']}.*") if path.suffix != ".txt") == [saved]
    return picture


def test_images_are_asked_at_the_snapped_width_and_stored_as_sent(server: FakeCivitai, store: Path) -> None:
    wide_jpeg = server.add_image_item(images.jpeg_rgb((1600, 1000)))
    wide_png = server.add_image_item(images.png_rgba_with_parameters(size=(1500, 900)))
    narrow = server.add_image_item(images.jpeg_rgb((300, 200)))
    video_body = videos.mp4()
    video = server.add_image_item(video_body, type="video")
    newer = [newer_form_item(server, images.webp_rgb(), f"b2-{number}") for number in range(2)]

    result = run_crawl(server, store, "media=all", CIVITAI_IMAGE_WIDTH="1024", **NO_PROMPT_NEEDED)

    assert result.returncode == 0, result.stderr[-3000:]
    # 1024 is asked as the site asks it: snapped up to the CDN's 1200 (edge-url.ts 121).
    asked = {request.path for request in server.cdn_requests()}
    resized = {item["id"]: path_with(item, "width=1200") for item in (wide_jpeg, wide_png, narrow)}
    video_path = urlsplit(video["url"]).path
    newer_paths = {urlsplit(item["url"]).path for item in newer}
    assert asked == {*resized.values(), video_path, *newer_paths}

    for item in (wide_jpeg, wide_png, narrow):
        answer = server.cdn_answer(resized[item["id"]])
        assert answer is not None
        picture = saved_as_sent(store, item, answer[0])
        assert picture.width == min(1200, item_width(server, item))
        assert meta_of(store, item)["cdn_width"] == 1200
    assert picture_of((store / f"{wide_jpeg['id']}.jpg").read_bytes()).format == "JPEG"
    assert picture_of((store / f"{wide_png['id']}.png").read_bytes()).mode == "RGBA"  # the CDN's PNG

    # The video, and the URLs without a transform segment: fetched as they are, as before.
    assert (store / f"{video['id']}.mp4").read_bytes() == video_body
    for item in (video, *newer):
        assert "cdn_width" not in meta_of(store, item)
    for item in newer:  # the original WebP, converted as every original is
        converted, original = (
            picture_of((store / f"{item['id']}.jpg").read_bytes()),
            picture_of(images.webp_rgb()),
        )
        assert (converted.format, converted.width) == ("JPEG", original.width)

    stats = result.stats
    assert stats["civitai/cdn_width/resized"] == 3
    assert stats["civitai/cdn_width/original"] == 2
    assert stats["civitai/saved"] == stats["civitai/items_seen"] == 6
    said = [line for line in result.stderr.splitlines() if "no transform segment" in line]
    assert len(said) == 1 and "civitai/cdn_width/original" in said[0]
    assert "CIVITAI_IMAGE_WIDTH=1024: images are asked from the CDN 1200 pixels wide" in result.stderr


def item_width(server: FakeCivitai, item: dict[str, Any]) -> int:
    """The width of the original stored for ``item``."""
    original = server.cdn_answer(item["url"])
    assert original is not None
    return picture_of(original[0]).width


def test_at_450_and_less_the_optimized_webp_is_stored_as_webp(server: FakeCivitai, store: Path) -> None:
    opaque = server.add_image_item(images.jpeg_rgb((1024, 768)))
    transparent = server.add_image_item(images.png_rgba_with_parameters(size=(900, 600)))

    result = run_crawl(server, store, CIVITAI_IMAGE_WIDTH="400", **NO_PROMPT_NEEDED)

    assert result.returncode == 0, result.stderr[-3000:]
    for item in (opaque, transparent):
        path = path_with(item, "width=450,optimized=true")
        assert path in {request.path for request in server.cdn_requests()}
        answer = server.cdn_answer(path)
        assert answer is not None and answer[1] == "image/webp"
        picture = saved_as_sent(store, item, answer[0])
        assert picture.format == "WEBP" and picture.width == 450
        assert meta_of(store, item)["cdn_width"] == 450
    assert picture_of((store / f"{transparent['id']}.webp").read_bytes()).mode == "RGBA"  # not flattened
    assert result.stats["civitai/cdn_width/resized"] == 2
    assert "civitai/cdn_width/original" not in result.stats


def test_a_broken_or_oversized_resized_image_fails_its_item_and_the_crawl_goes_on(
    server: FakeCivitai, store: Path
) -> None:
    cut = server.add_image_item(images.jpeg_rgb((1024, 768)))
    too_many_pixels = server.add_image_item(images.jpeg_rgb((1024, 768)))
    fine = server.add_image_item(images.jpeg_rgb((400, 300)))
    whole = images.make_image("WEBP", size=(512, 384))
    server.inject(path_with(cut, "width=512"), Fault.body(images.truncated(whole), "image/webp"))
    server.inject(path_with(too_many_pixels, "width=512"), Fault.body(images.jpeg_rgb((512, 384))))

    # 512 x 384 = 196,608 pixels: over twice a limit of 90,000, refused from its header.
    result = run_crawl(
        server, store, CIVITAI_IMAGE_WIDTH="512", CIVITAI_MAX_IMAGE_PIXELS="90000", **NO_PROMPT_NEEDED
    )

    assert result.returncode == 0, result.stderr[-3000:]
    stats = result.stats
    assert stats["civitai/failed"] == 2 and stats["civitai/saved"] == 1
    assert result.ids_recorded() == [fine["id"]]
    reasons = {int(line.split("\t")[1]): line.split("\t")[3] for line in result.error_log().splitlines()}
    assert reasons.keys() == {cut["id"], too_many_pixels["id"]}
    assert "unreadable image header" in reasons[cut["id"]]  # Pillow cannot even start on the cut WebP
    assert reasons[too_many_pixels["id"]].startswith("decompression bomb refused: 512x384")
    assert not list(store.glob(f"{cut['id']}.*")) and not list(store.glob(f"{too_many_pixels['id']}.*"))
    assert (store / f"{fine['id']}.jpg").exists()


@pytest.mark.parametrize("value", ["-1", "1801", "4096", "wide", "512.5", "512px"])
def test_a_bad_width_ends_the_crawl_before_any_request(value: str, server: FakeCivitai, store: Path) -> None:
    server.add_image_item(images.jpeg_rgb())

    result = run_crawl(server, store, CIVITAI_IMAGE_WIDTH=value)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"CIVITAI_IMAGE_WIDTH={value!r} is not valid" in error
    assert "an integer from 0 to 1800" in error
    assert server.requests == []


def test_the_fake_cdn_snaps_never_enlarges_and_keeps_the_original_for_original_true(
    server: FakeCivitai,
) -> None:
    body = images.jpeg_rgb((1000, 500))
    item = server.add_image_item(body)
    key_path = f"/{CDN_KEY}/"
    assert path_with(item, "width=600").startswith(key_path)

    def width_of(options: str) -> int:
        answer = server.cdn_answer(path_with(item, options))
        assert answer is not None
        return picture_of(answer[0]).width

    assert width_of("width=600") == 800  # snapped up to the ladder, server-side
    assert width_of("width=1800") == 1000  # 1800 -> 2200, never enlarged
    assert width_of("width=96,optimized=true") == 96
    assert server.cdn_answer(path_with(item, "original=true,width=96")) == (body, "image/jpeg")
    assert server.cdn_answer(path_with(item, "width=96,zoom=2")) is None
    assert server.cdn_answer(path_with(item, "width=0")) is None


def test_a_bucket_gets_the_resized_bytes_with_their_content_type(
    server: FakeCivitai, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    item = server.add_image_item(images.jpeg_rgb((1024, 768)))
    logs = tmp_path / "logs"

    result = run_crawl(
        server,
        logs,
        environment={"AWS_EC2_METADATA_DISABLED": "true"},
        CIVITAI_IMAGE_WIDTH="320",
        CIVITAI_LOG_DIR=str(logs),
        **s3_server.settings(bucket, "civitai"),
        **NO_PROMPT_NEEDED,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    answer = server.cdn_answer(path_with(item, "width=320,optimized=true"))
    assert answer is not None
    objects = bucket_objects(s3_server, bucket, "civitai/")
    assert objects[f"{item['id']}.webp"] == (answer[0], "image/webp")
    assert json.loads(objects[f"{item['id']}_meta.json"][0])["cdn_width"] == 320
