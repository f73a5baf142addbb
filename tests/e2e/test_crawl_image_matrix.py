"""End to end: the hostile images of issue 5 through one real ``scrapy crawl``.

Every Pillow mode, animations, junk after a valid header, bombs tiny in bytes and huge PNG
text chunks, all served by the fake Civitai in one run. Each item must end saved (its file,
decodable, and its id recorded) or refused (no file, no id, one line in ``error_log.txt``
and one WARNING with the reason), and the outcome stats must add up.
"""

from __future__ import annotations

from collections import defaultdict
from io import BytesIO
from pathlib import Path

from PIL import Image

from tests.support import images
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai

FORMAT_OF_EXTENSION = {"jpg": "JPEG", "png": "PNG"}


def saved_cases() -> dict[str, tuple[bytes, str, bool]]:
    """What must be saved: name -> (body, extension of the saved file, kept byte for byte)."""
    cases = {
        f"{mode}-{image_format}": (
            images.mode_image(mode, image_format),
            ("jpg" if image_format == "JPEG" else "png") if outcome == "kept" else outcome,
            outcome == "kept",
        )
        for mode, image_format, outcome in images.MODE_MATRIX
    }
    cases.update(
        {
            "animated_gif": (images.gif_animated(), "jpg", False),
            "animated_webp": (images.webp_animated(), "jpg", False),
            "animated_webp_with_alpha": (images.webp_animated(mode="RGBA"), "png", False),
            "png_text_200_kb": (images.png_with_text_chunk("tEXt", 200_000), "png", True),
            "png_compressed_text_200_kb": (images.png_with_text_chunk("zTXt", 200_000), "png", True),
            "jpeg_with_exif_thumbnail": (images.jpeg_with_exif_thumbnail(), "jpg", True),
        }
    )
    return cases


def test_every_hostile_image_saved_or_refused_with_its_reason(server: FakeCivitai, store: Path) -> None:
    saved = saved_cases()
    refused = {name: (make(), reason) for name, (make, reason) in images.REFUSED.items()}
    items = {name: server.add_image_item(body) for name, (body, *_) in {**saved, **refused}.items()}

    result = run_crawl(server, store)

    assert result.returncode == 0, result.stderr
    assert result.finish_reason == "finished"
    assert "Traceback" not in result.stderr
    recorded = result.ids_recorded()
    error_lines: dict[str, list[str]] = defaultdict(list)
    for line in result.error_log().splitlines():
        error_lines[line.split("\t")[1]].append(line)
    warnings = [line for line in result.stderr.splitlines() if " WARNING: " in line]

    for name, (body, extension, kept) in saved.items():
        image_id = items[name]["id"]
        path = store / f"{image_id}.{extension}"
        assert path.is_file(), name
        if kept:
            assert path.read_bytes() == body, name
        with Image.open(path) as image, Image.open(BytesIO(body)) as source:
            image.load()
            assert image.format == FORMAT_OF_EXTENSION[extension], name
            assert image.size == source.size, name
        assert image_id in recorded, name
        assert str(image_id) not in error_lines, name

    for name, (_, reason) in refused.items():
        image_id = items[name]["id"]
        assert image_id not in recorded, name
        assert not list(store.glob(f"{image_id}.*")) and not list(store.glob(f"{image_id}_*")), name
        [line] = error_lines[str(image_id)]
        assert reason in line, (name, line)
        [warning] = [line for line in warnings if f"image {image_id} failed" in line]
        assert reason in warning, (name, warning)

    assert sorted(recorded) == sorted(items[name]["id"] for name in saved)
    assert sum(len(lines) for lines in error_lines.values()) == len(refused)
    stats = result.stats
    assert stats["civitai/saved"] == len(saved)
    assert stats["civitai/failed"] == len(refused)
    assert stats["civitai/saved"] + stats["civitai/failed"] == stats["civitai/items_seen"] == len(items)
    assert not any(key.startswith("civitai/dropped/") for key in stats)
    kept = sum(kept for _, _, kept in saved.values())
    assert stats["file_status_count/kept"] == kept
    assert stats["file_status_count/converted"] == len(saved) - kept
    # Bombs are refused from their header, each with a line in the bomb log.
    bombs = [name for name, (_, reason) in refused.items() if "decompression bomb" in reason]
    assert stats["civitai/decompression_bomb/refused"] == len(bombs)
    bomb_log = (store / "DecompressionBombWarning_log.txt").read_text().splitlines()
    assert sorted(int(line.split("\t")[1]) for line in bomb_log) == sorted(
        items[name]["id"] for name in bombs
    )
    assert all(line.endswith("\trefused") for line in bomb_log)
