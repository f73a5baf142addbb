"""A fast fake Civitai for the benchmark: API pages and image or video bytes served from memory.

The tests' fake (``tests/fake_civitai.py``) favours checks and fault injection over speed: a
thread per connection, Python's ``http.server``. Here one asyncio process answers the API
(``/api/v1/images``, offset cursors, ``nextCursor`` and ``nextPage``) and the image CDN
(``/images/<id>``) on one port, so that the crawler, not the server, is what gets measured.

Run it as ``python -m benchmarks.server KIND COUNT [--video-bytes N]``: it prints ``PORT <n>``
once listening.
``GET /_counts`` answers ``{"api": pages served, "images": image requests}`` and resets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from urllib.parse import parse_qsl

from benchmarks.images import make_images
from benchmarks.videos import make_video

_API_PATH = b"/api/v1/images"
_IMAGES_PATH = b"/images/"


class _Catalogue:
    """COUNT Civitai-shaped items whose urls cycle through a few distinct image bodies.

    Kind ``video``: COUNT video items, each served the same MP4 of ``video_bytes`` bytes.
    """

    def __init__(self, kind: str, count: int, port: int, video_bytes: int) -> None:
        if kind == "video":
            self.bodies, self.content_type = [make_video(video_bytes)], "video/mp4"
        else:
            self.bodies, self.content_type = make_images(kind)
        self.kind = "video" if kind == "video" else "image"
        self.count = count
        self.base = f"http://127.0.0.1:{port}"
        self.counts = {"api": 0, "images": 0}

    def item(self, index: int) -> dict[str, object]:
        image_id = 1_000_000 + index
        return {
            "id": image_id,
            "url": f"{self.base}/images/{image_id}",
            "width": 1024,
            "height": 1536,
            "nsfwLevel": "None",
            "type": self.kind,
            "createdAt": "2024-08-31T01:28:28.000Z",
            "postId": 6_000_000 + index,
            "stats": {
                "cryCount": 0,
                "laughCount": 1,
                "likeCount": 12,
                "dislikeCount": 0,
                "heartCount": 7,
                "commentCount": 1,
            },
            "meta": {
                "prompt": f"masterpiece, best quality, a lighthouse at dusk, image {image_id}",
                "negativePrompt": "worst quality, low quality, bad anatomy",
                "seed": 3_150_861_441 + index,
                "steps": 28,
                "sampler": "DPM++ 2M Karras",
                "cfgScale": 6.5,
                "Model": "boleromix_XL_V1.3",
            },
            "username": "benchmark",
            "baseModel": "SDXL 1.0",
        }

    def page(self, raw_query: str) -> bytes:
        query = dict(parse_qsl(raw_query))
        limit = int(query.get("limit", "100"))
        offset = int(query.get("cursor", "0"))
        end = min(offset + limit, self.count)
        metadata: dict[str, object] = {}
        if end < self.count:
            metadata = {
                "nextCursor": str(end),
                "nextPage": f"{self.base}/api/v1/images?limit={limit}&cursor={end}",
            }
        items = [self.item(index) for index in range(offset, end)]
        return json.dumps({"items": items, "metadata": metadata}).encode()

    def image(self, image_id: int) -> bytes:
        return self.bodies[image_id % len(self.bodies)]


class _Connection(asyncio.Protocol):
    def __init__(self, catalogue: _Catalogue) -> None:
        self.catalogue = catalogue
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            target = head.split(b"\r\n", 1)[0].split(b" ")[1]
            self._answer(target)

    def _answer(self, target: bytes) -> None:
        path, _, query = target.partition(b"?")
        catalogue = self.catalogue
        status, content_type, body = b"200 OK", b"application/json", b""
        if path == _API_PATH:
            catalogue.counts["api"] += 1
            body = catalogue.page(query.decode())
        elif path.startswith(_IMAGES_PATH):
            catalogue.counts["images"] += 1
            content_type = catalogue.content_type.encode()
            body = catalogue.image(int(path[len(_IMAGES_PATH) :]))
        elif path == b"/_counts":
            body = json.dumps(catalogue.counts).encode()
            catalogue.counts = {"api": 0, "images": 0}
        else:
            status, body = b"404 Not Found", b"{}"
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, content_type, len(body))
        )
        self.transport.write(body)


async def serve(kind: str, count: int, video_bytes: int) -> None:
    loop = asyncio.get_running_loop()
    holder: list[_Catalogue] = []
    server = await loop.create_server(lambda: _Connection(holder[0]), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    holder.append(_Catalogue(kind, count, port, video_bytes))
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("jpeg", "png", "webp", "video"))
    parser.add_argument("count", type=int)
    parser.add_argument("--video-bytes", type=int, default=200_000_000, help="size of the video (kind video)")
    arguments = parser.parse_args()
    try:
        asyncio.run(serve(arguments.kind, arguments.count, arguments.video_bytes))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
