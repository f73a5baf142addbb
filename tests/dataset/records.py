"""A stored record of the shape every dataset test starts from."""

from __future__ import annotations

from typing import Any

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
