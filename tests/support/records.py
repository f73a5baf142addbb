"""A stored record of the shape every dataset test starts from, and stores made of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from itemadapter import ItemAdapter

from civitai_spider.items import CivitaiImage
from civitai_spider.pipelines.metadata import metadata_files

#: The API's own example record (../shared/docs/civitai-api.md), as <id>_meta.json stores it.
RECORD: dict[str, Any] = {
    "id": 26962948,
    "url": "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/69bf3279/original=true/69bf3279.jpeg",
    "hash": "ULN0-w?b4nRjxGM{-;t7M_t7NGae~qRjMyt7",
    "width": 1152,
    "height": 1536,
    "nsfwLevel": "None",
    "type": "image",
    "nsfw": False,
    "browsingLevel": 1,
    "createdAt": "2024-08-31T01:11:47.021Z",
    "postId": 6030721,
    "stats": {
        "cryCount": 0,
        "laughCount": 1,
        "likeCount": 12,
        "dislikeCount": 0,
        "heartCount": 5,
        "commentCount": 0,
    },
    "meta": {
        "prompt": "masterpiece, best quality, girl, maid, tray, tea",
        "negativePrompt": "worst quality, bad anatomy",
        "seed": 3150861441,
        "steps": 20,
        "sampler": "DPM++ 2M Karras",
        "cfgScale": 7,
        "Size": "1152x1536",
        "Model": "boleromix_XL_V1.3",
        "Model hash": "afaf521da2",
        "hashes": {"model": "afaf521da2", "lora:add-detail-xl": "9c783c8ce46c"},
        "resources": [
            {"name": "add-detail-xl", "type": "lora", "weight": 1},
            {"hash": "afaf521da2", "name": "boleromix_XL_V1.3", "type": "model"},
        ],
        "Denoising strength": "0.4",
    },
    "username": "bolero537",
    "baseModel": "SDXL 1.0",
    "modelVersionIds": [788385],
    "tags": [{"id": 5133, "name": "girl"}, {"id": 292, "name": "maid"}],
    "image_file": "26962948.jpg",
}


def write_store(store: Path, count: int) -> list[int]:
    """A folder store of ``count`` complete items, written as the pipelines write them."""
    store.mkdir(parents=True)
    ids = list(range(1000, 1000 + count))
    for image_id in ids:
        item = CivitaiImage.from_api({**RECORD, "id": image_id})
        item.image_file = f"{image_id}.jpg"
        for name, data in metadata_files(ItemAdapter(item)).items():
            (store / name).write_bytes(data)
        (store / item.image_file).write_bytes(b"\xff\xd8\xff" + bytes(image_id % 97))
    (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids
