"""End to end: ``scrapy crawl civitai`` against the fake Civitai, checking the files on disk."""

from __future__ import annotations

import json
import re
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.support import images
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai, Fault

API_KEY = "civitai-test-key-5f3a9c1e7b"


def url_path(url: str) -> str:
    return urlsplit(url).path


def open_image(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def test_every_format_saved_as_specified(server: FakeCivitai, store: Path) -> None:
    jpeg, grey = images.jpeg_rgb(), images.jpeg_grey()
    png = images.png_rgba_with_parameters()
    bodies = {
        "jpeg": jpeg,
        "grey": grey,
        "png": png,
        "palette": images.palette_png_with_transparency(),
        "webp": images.webp_rgb(),
        "webp_alpha": images.webp_rgba(),
        "gif": images.gif_animated(),
        "cmyk": images.jpeg_cmyk(),
        "bmp": images.bmp(),
        "tiff": images.tiff(),
        "avif": images.make_image("AVIF"),
    }
    items = {name: server.add_image_item(body) for name, body in bodies.items()}

    result = run_crawl(server, store)

    assert result.returncode == 0, result.stderr
    assert result.finish_reason == "finished"
    saved = {
        name: store / f"{item['id']}.{'png' if name in ('png', 'palette', 'webp_alpha') else 'jpg'}"
        for name, item in items.items()
    }
    # JPEG (RGB or L) and PNG originals: the very bytes the CDN sent.
    assert saved["jpeg"].read_bytes() == jpeg
    assert saved["grey"].read_bytes() == grey
    assert saved["png"].read_bytes() == png
    assert open_image(saved["png"]).text.get("parameters")
    assert saved["palette"].read_bytes() == bodies["palette"]
    # Conversions: RGB JPEG without transparency, RGBA PNG keeping the alpha.
    for name in ("webp", "gif", "cmyk", "bmp", "tiff", "avif"):
        converted = open_image(saved[name])
        assert (converted.format, converted.mode) == ("JPEG", "RGB"), name
        assert converted.size == Image.open(BytesIO(bodies[name])).size
    with_alpha = open_image(saved["webp_alpha"])
    assert (with_alpha.format, with_alpha.mode) == ("PNG", "RGBA")
    source = Image.open(BytesIO(bodies["webp_alpha"])).convert("RGBA")
    assert with_alpha.getchannel("A").tobytes() == source.getchannel("A").tobytes()
    assert with_alpha.getchannel("A").getextrema()[0] < 255  # there is transparency to keep

    stats = result.stats
    assert stats["civitai/saved"] == len(bodies) == stats["civitai/items_seen"]
    assert sorted(result.ids_recorded()) == sorted(item["id"] for item in items.values())
    assert not any(name.startswith(".civitai-partial-") for name in result.files())


def test_metadata_files_hold_what_the_api_sent(server: FakeCivitai, store: Path) -> None:
    prompt = "  masterpiece, 少女, café ☕, <lora:detail:0.8>\nsecond line  "
    full = server.add_image_item(
        images.jpeg_rgb(),
        meta={"prompt": prompt, "negativePrompt": "lowres, 悪い", "seed": 42, "comfy": '{"nodes": []}'},
        extraField={"kept": [1, 2]},
    )
    no_negative = server.add_image_item(images.jpeg_rgb(), meta={"prompt": "a cat", "negativePrompt": ""})

    result = run_crawl(server, store)

    assert result.returncode == 0, result.stderr
    first = full["id"]
    assert (store / f"{first}_pos-prompt.txt").read_bytes() == prompt.encode("utf-8")
    assert (store / f"{first}_neg-prompt.txt").read_text(encoding="utf-8") == "lowres, 悪い"
    meta_text = (store / f"{first}_meta.json").read_text(encoding="utf-8")
    assert "少女" in meta_text  # non-ASCII kept, not \u-escaped
    assert json.loads(meta_text) == {**full, "image_file": f"{first}.jpg"}
    second = no_negative["id"]
    assert (store / f"{second}_pos-prompt.txt").read_text(encoding="utf-8") == "a cat"
    assert not (store / f"{second}_neg-prompt.txt").exists()
    assert result.stats["civitai/metadata_files_saved"] == 3 + 2


def test_failed_images_are_logged_once_and_retried_next_run(server: FakeCivitai, store: Path) -> None:
    good = server.add_image_item(images.jpeg_rgb())
    missing = server.add_image_item(None)  # 404
    cut = server.add_image_item(images.truncated(images.jpeg_rgb()))
    junk = server.add_image_item(images.NOT_AN_IMAGE)
    broken = server.add_image_item(images.jpeg_rgb())
    server.inject_always(broken["url"], Fault.status(500))

    result = run_crawl(server, store, RETRY_TIMES="1")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    failed = {
        missing["id"]: "HTTP 404",
        cut["id"]: "truncated JPEG",
        junk["id"]: "not an image",
        broken["id"]: "HTTP 500",
    }
    error_lines = result.error_log().splitlines()
    assert len(error_lines) == len(failed)
    for image_id, reason in failed.items():
        [line] = [line for line in error_lines if line.split("\t")[1] == str(image_id)]
        assert reason in line
        [warning] = [line for line in result.stderr.splitlines() if f"image {image_id} failed" in line]
        assert "WARNING" in warning and reason in warning
        assert not list(store.glob(f"{image_id}*"))
    assert result.ids_recorded() == [good["id"]]
    stats = result.stats
    assert stats["civitai/failed"] == 4
    assert "log_count/ERROR" not in stats  # a failed image is a WARNING, retries given up included
    assert stats["civitai/saved"] + stats["civitai/failed"] == stats["civitai/items_seen"] == 5

    # The next run asks again for the failed images only, and now gets them.
    server.clear_faults()
    server.add_image(missing["url"], images.jpeg_rgb())
    server.add_image(cut["url"], images.jpeg_rgb())
    server.add_image(junk["url"], images.png_rgb())
    server.clear_requests()
    again = run_crawl(server, store)
    assert again.returncode == 0, again.stderr
    requested = {request.path for request in server.cdn_requests()}
    assert requested == {url_path(item["url"]) for item in (missing, cut, junk, broken)}
    assert sorted(again.ids_recorded()) == sorted(item["id"] for item in (good, missing, cut, junk, broken))
    assert again.stats["civitai/dropped/already_downloaded"] == 1


def test_rerun_over_complete_store_downloads_nothing(server: FakeCivitai, store: Path) -> None:
    for _ in range(5):
        server.add_image_item(images.jpeg_rgb())
    first = run_crawl(server, store)
    assert first.stats["civitai/saved"] == 5
    server.clear_requests()

    second = run_crawl(server, store)

    assert second.returncode == 0, second.stderr
    assert server.cdn_requests() == []
    assert second.stats["civitai/dropped/already_downloaded"] == 5
    assert len(second.ids_recorded()) == 5


def test_repeated_ids_saved_once_and_shared_urls_get_their_own_file(server: FakeCivitai, store: Path) -> None:
    repeated = server.add_image_item(images.png_rgb())
    server.add_image_item(images.jpeg_rgb())
    shared_url = server.add_image("shared", images.webp_rgb())
    one = server.add_image_item(None, url=shared_url)  # page 2: both in flight together
    two = server.add_image_item(None, url=shared_url)
    server.add_raw_item(dict(repeated))  # page 3: the API repeats an item

    result = run_crawl(server, store, "limit=2")

    assert result.returncode == 0, result.stderr
    recorded = result.ids_recorded()
    assert sorted(recorded) == sorted(set(recorded)) and len(recorded) == 4
    assert result.stats["civitai/dropped/duplicate"] == 1
    # One download served both ids, and each has its own file.
    assert [request.path for request in server.cdn_requests()].count(url_path(shared_url)) == 1
    assert (store / f"{one['id']}.jpg").read_bytes() == (store / f"{two['id']}.jpg").read_bytes()
    assert json.loads((store / f"{two['id']}_meta.json").read_text())["image_file"] == f"{two['id']}.jpg"


def test_thresholds_and_prompt_filter(server: FakeCivitai, store: Path) -> None:
    liked = server.add_image_item(images.jpeg_rgb(), stats={"likeCount": 10, "heartCount": 0})
    server.add_image_item(images.jpeg_rgb(), stats={"likeCount": 9, "heartCount": 50})
    server.add_image_item(images.jpeg_rgb(), stats={"likeCount": "many"})  # junk counts as 0
    server.add_image_item(images.jpeg_rgb(), stats={"likeCount": 20}, meta=None)
    server.add_image_item(images.jpeg_rgb(), stats={"likeCount": 20}, meta={"prompt": "   "})

    result = run_crawl(server, store, CIVITAI_THRESHOLDS='{"likeCount": 10}')

    assert result.returncode == 0, result.stderr
    assert result.ids_recorded() == [liked["id"]]
    stats = result.stats
    assert stats["civitai/dropped/below_threshold"] == 2
    assert stats["civitai/dropped/no_meta"] == 1
    assert stats["civitai/dropped/no_prompt"] == 1


def test_default_thresholds_and_junk_items(server: FakeCivitai, store: Path) -> None:
    kept = server.add_image_item(images.jpeg_rgb(), stats={"heartCount": 2})
    server.add_image_item(images.jpeg_rgb(), stats={"heartCount": 1, "likeCount": 100})
    server.add_image_item(images.jpeg_rgb(), type="gif")  # a type nothing here knows
    server.add_raw_item({"id": "../../x", "url": kept["url"]})
    server.add_raw_item({"id": 77, "url": "ftp://example.invalid/a.jpeg"})
    server.add_raw_item("junk")
    last = server.add_image_item(images.png_rgb())

    result = run_crawl(server, store, "limit=3")

    assert result.returncode == 0, result.stderr
    assert sorted(result.ids_recorded()) == [kept["id"], last["id"]]
    stats = result.stats
    assert stats["civitai/dropped/below_threshold"] == 1
    assert stats["civitai/dropped/unknown_type"] == 1
    assert stats["civitai/dropped/invalid_id"] == 1
    assert stats["civitai/dropped/invalid_url"] == 1
    assert stats["civitai/dropped/invalid_item"] == 1
    dropped = sum(value for key, value in stats.items() if key.startswith("civitai/dropped/"))
    assert (
        stats["civitai/saved"] + dropped + stats.get("civitai/failed", 0) == stats["civitai/items_seen"] == 7
    )
    assert "'../../x'" in result.error_log() and "ftp://example.invalid" in result.error_log()
    assert not any(path.suffix == ".mp4" for path in store.iterdir())
    assert [path.name for path in store.parent.iterdir()] == ["store"]  # nothing written outside


def test_api_key_not_sent_to_a_redirect_target(server: FakeCivitai, store: Path) -> None:
    server.add_image_item(images.jpeg_rgb())
    server.inject(server.api_url, Fault.redirect(server.image_base + "moved"))

    result = run_crawl(server, store, api_key=API_KEY)

    assert [request.path for request in server.cdn_requests()] == ["/moved"]
    assert "authorization" not in server.cdn_requests()[0].headers
    assert result.finish_reason == "api_error"
    assert API_KEY not in result.stderr


def test_decompression_bombs_logged_saved_or_refused(server: FakeCivitai, store: Path) -> None:
    big = server.add_image_item(images.bomb_png((100, 60)))  # 6,000 pixels: over the limit
    huge = server.add_image_item(images.bomb_png((200, 200)))  # 40,000: over twice the limit
    small = server.add_image_item(images.png_rgb())

    result = run_crawl(server, store, CIVITAI_MAX_IMAGE_PIXELS="5000")

    assert result.returncode == 0, result.stderr
    assert (store / f"{big['id']}.png").exists()
    assert not list(store.glob(f"{huge['id']}*"))
    assert sorted(result.ids_recorded()) == sorted([big["id"], small["id"]])
    bomb_log = (store / "DecompressionBombWarning_log.txt").read_text().splitlines()
    assert len(bomb_log) == 2
    [saved_line] = [line for line in bomb_log if f"\t{big['id']}\t" in line]
    assert "100x60" in saved_line and big["url"] in saved_line and "saved" in saved_line
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\t", saved_line)
    [refused_line] = [line for line in bomb_log if f"\t{huge['id']}\t" in line]
    assert "200x200" in refused_line and "refused" in refused_line
    assert "decompression bomb" in result.error_log() and str(huge["id"]) in result.error_log()
    assert "DecompressionBombWarning" not in result.stderr  # no Pillow warning: we log it ourselves


def test_crawl_logs_no_warning(server: FakeCivitai, store: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONWARNINGS", "always")
    server.add_image_item(images.webp_rgba())
    server.add_image_item(images.jpeg_rgb())
    server.add_image_item(None)

    result = run_crawl(server, store, LOG_LEVEL="DEBUG")

    assert result.returncode == 0
    assert "Warning" not in result.stderr
    assert "Traceback" not in result.stderr


def test_id_file_can_live_outside_the_store(server: FakeCivitai, store: Path, tmp_path: Path) -> None:
    item = server.add_image_item(images.jpeg_rgb())
    id_file = tmp_path / "state" / "ids.txt"

    first = run_crawl(server, store, CIVITAI_ID_FILE=str(id_file))
    second = run_crawl(server, store, CIVITAI_ID_FILE=str(id_file))

    assert first.returncode == second.returncode == 0
    assert id_file.read_text() == f"{item['id']}\n"
    assert not (store / "downloaded_image_ID_DB.txt").exists()
    assert second.stats["civitai/dropped/already_downloaded"] == 1


@pytest.mark.parametrize("threads", ["0", "1"])
def test_images_in_flight_stay_within_the_bound(threads: str, server: FakeCivitai, store: Path) -> None:
    items = [server.add_image_item(images.webp_rgb()) for _ in range(8)]
    server.cdn_delay = 0.3  # every image takes at least 0.3 s to arrive

    # 0 threads: Pillow inline in the reactor thread, the benchmark's comparison mode.
    result = run_crawl(server, store, CIVITAI_IMAGES_IN_FLIGHT="2", CIVITAI_IMAGE_THREADS=threads)

    assert result.stats["civitai/saved"] == len(items)
    # A request holds its place for at least 0.3 s after it arrives: three arrivals within
    # 0.3 s would mean three images in progress at once.
    arrivals = [request.time for request in server.cdn_requests()]
    assert max(sum(start <= time < start + 0.3 for time in arrivals) for start in arrivals) == 2


def test_image_redirect_to_plain_http_is_refused_by_default(server: FakeCivitai, store: Path) -> None:
    item = server.add_image_item(images.jpeg_rgb())
    target = server.add_image("moved", images.jpeg_rgb())
    server.inject_always(item["url"], Fault.redirect(target))  # the fake CDN is plain http

    result = run_crawl(server, store)

    assert result.stats["civitai/failed"] == 1 and result.ids_recorded() == []
    assert [request.path for request in server.cdn_requests()] == [urlsplit(item["url"]).path]
    assert f"redirect to {target} not followed (CIVITAI_IMAGE_REDIRECTS=https)" in result.error_log()


def test_image_redirect_followed_when_allowed_without_the_key(server: FakeCivitai, store: Path) -> None:
    body = images.jpeg_rgb()
    item = server.add_image_item(images.jpeg_rgb())
    target = server.add_image("moved", body)
    server.inject_always(item["url"], Fault.redirect(target))

    result = run_crawl(server, store, api_key=API_KEY, CIVITAI_IMAGE_REDIRECTS="any")

    assert result.ids_recorded() == [item["id"]]
    assert (store / f"{item['id']}.jpg").read_bytes() == body
    assert [request.path for request in server.cdn_requests()] == [
        urlsplit(item["url"]).path,
        urlsplit(target).path,
    ]
    assert all("authorization" not in request.headers for request in server.cdn_requests())
