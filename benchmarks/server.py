"""A fast fake Civitai for the benchmark: API pages and image or video bytes served from memory.

The tests' fake (``tests/support/fake_civitai.py``) favours checks and fault injection over speed: a
thread per connection, Python's ``http.server``. Here one asyncio process answers the API
(``/api/v1/images``, offset cursors, ``nextCursor`` and ``nextPage``) and the image CDN
(``/images/<uuid>/<quality>/<id>.<ext>``, or ``/images/<id>``) on one port, so that the
crawler, not the server, is what gets measured.

Run it as ``python -m benchmarks.server KIND COUNT [--video-bytes N] [--image-latency S]
[--page-latency S]``: it prints ``PORT <n>`` once listening.
Items carry what this project and gallery-dl's REST path read (``user: {"username": ...}``
among them), so that both can be measured against the same server (``benchmarks/peers.py``).
``GET /_counts`` answers ``{"api": pages served, "images": image requests}`` and resets them.

Latency (none by default) stands in for a far CDN or a slow API: each image or page is
answered that many seconds after its request, without holding up any other request; on
one keep-alive connection the answers still go out in the order of the requests.

An image URL whose segment before the name asks a width (``/images/<uuid>/width=512/<id>.jpeg``,
what ``CIVITAI_IMAGE_WIDTH`` asks, ``civitai_spider/cdn_width.py``) is answered as Civitai's CDN
answers it (as ``tests/support/fake_civitai.py`` models it, with the sources): the width snapped up
to the cacher's ladder, never enlarged, JPEG (PNG with an alpha channel), WebP with
``optimized=true``, quality 85. Each body is resized once per width and kept, as the CDN caches it:
what gets measured is the crawl, not the resizing.

Items have a ``browsingLevel`` of 1, 2, 4 or 8 in turn. A query with ``browsingLevel=<mask>``
lists only the items whose level is in the mask, with offset cursors over that list, so the
feeds of 1, 2, 4 and 8 are disjoint and together make the feed of 15; without it, every item.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import deque
from io import BytesIO
from urllib.parse import parse_qsl, urlencode

from PIL import Image

from benchmarks.images import KINDS, image_size, make_images
from benchmarks.videos import make_video

_API_PATH = b"/api/v1/images"
_IMAGES_PATH = b"/images/"
#: The items' browsingLevel, in turn by index: PG, PG13, R, X (the API's bits 1, 2, 4, 8).
LEVELS = (1, 2, 4, 8)
_UUID_PREFIX = "00000000-0000-4000-8000-"
_EXTENSIONS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp", "video/mp4": "mp4"}
#: The CDN cacher's ladder (civitai/civitai src/client-utils/edge-url.ts 53) and its quality.
_CACHER_WIDTHS = (96, 320, 450, 512, 800, 1200, 1600, 2200)
_RESIZED_QUALITY = 85


class _Catalogue:
    """COUNT Civitai-shaped items whose urls cycle through a few distinct image bodies.

    Kind ``video``: COUNT video items, each served the same MP4 of ``video_bytes`` bytes.
    """

    def __init__(self, kind: str, count: int, port: int, video_bytes: int) -> None:
        if kind == "video":
            self.bodies, self.content_type = [make_video(video_bytes)], "video/mp4"
            self.size = (1024, 1536)
        else:
            self.bodies, self.content_type = make_images(kind)
            self.size = image_size(kind)
        self.kind = "video" if kind == "video" else "image"
        self.extension = _EXTENSIONS[self.content_type]
        self.base = f"http://127.0.0.1:{port}"
        self.images_base = f"{self.base}/images/{_UUID_PREFIX}"
        self.count = count
        self.counts = {"api": 0, "images": 0}
        #: browsingLevel mask -> the indexes it lists, made on first use.
        self._listings: dict[int, list[int]] = {}
        #: (body index, width, optimized) -> (body, Content-Type): each resized once, kept.
        self._resized: dict[tuple[int, int, bool], tuple[bytes, bytes]] = {}

    def item(self, index: int) -> dict[str, object]:
        image_id = 1_000_000 + index
        return {
            "id": image_id,
            # Shaped as Civitai's (``<uuid>/<quality>/<name>``): gallery-dl takes the uuid from
            # the part before the last two and puts its own quality in place of the one here.
            "url": f"{self.images_base}{image_id:012d}/original=true/{image_id}.{self.extension}",
            "width": self.size[0],
            "height": self.size[1],
            "nsfwLevel": "None",
            "browsingLevel": LEVELS[index % len(LEVELS)],
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
            # What gallery-dl's REST path reads (it names the folder after it): our spider keeps it.
            "user": {"id": 4_000_001, "username": "benchmark"},
            "baseModel": "SDXL 1.0",
        }

    def page(self, raw_query: str) -> bytes:
        query = dict(parse_qsl(raw_query))
        limit = int(query.get("limit", "100"))
        offset = int(query.get("cursor", "0"))
        mask = query.get("browsingLevel")
        listing: range | list[int] = range(self.count) if mask is None else self._listing(int(mask))
        end = min(offset + limit, len(listing))
        metadata: dict[str, object] = {}
        if end < len(listing):
            following: dict[str, int | str] = {"limit": limit, "cursor": end}
            if mask is not None:
                following["browsingLevel"] = mask
            metadata = {
                "nextCursor": str(end),
                "nextPage": f"{self.base}/api/v1/images?{urlencode(following)}",
            }
        items = [self.item(index) for index in listing[offset:end]]
        return json.dumps({"items": items, "metadata": metadata}).encode()

    def _listing(self, mask: int) -> list[int]:
        if mask not in self._listings:
            self._listings[mask] = [
                index for index in range(self.count) if LEVELS[index % len(LEVELS)] & mask
            ]
        return self._listings[mask]

    def image(self, image_id: int) -> bytes:
        return self.bodies[image_id % len(self.bodies)]

    def resized(self, image_id: int, options: bytes) -> tuple[bytes, bytes] | None:
        """The image asked with the transform ``options`` (``width=512``) and its Content-Type;
        None without a width (the original, then)."""
        pairs = dict(part.partition(b"=")[::2] for part in options.split(b","))
        width = pairs.get(b"width", b"")
        if not width.isdigit() or pairs.get(b"original") == b"true":
            return None
        asked = int(width)
        snapped = next((step for step in _CACHER_WIDTHS if step >= asked), asked)
        key = (image_id % len(self.bodies), snapped, pairs.get(b"optimized") == b"true")
        if key not in self._resized:
            self._resized[key] = _resize(self.bodies[key[0]], snapped, optimized=key[2])
        return self._resized[key]


def _resize(body: bytes, width: int, *, optimized: bool) -> tuple[bytes, bytes]:
    with Image.open(BytesIO(body)) as original:
        picture = original.convert("RGBA" if "A" in original.getbands() else "RGB")
    if picture.width > width:  # never enlarged
        height = max(1, round(picture.height * width / picture.width))
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    output = BytesIO()
    if optimized:
        picture.save(output, "WEBP", quality=_RESIZED_QUALITY)
        return output.getvalue(), b"image/webp"
    if picture.mode == "RGBA":
        picture.save(output, "PNG")
        return output.getvalue(), b"image/png"
    picture.save(output, "JPEG", quality=_RESIZED_QUALITY)
    return output.getvalue(), b"image/jpeg"


class _Answer:
    """One response of a connection: its bytes, and whether its latency has passed."""

    __slots__ = ("head", "body", "due", "timer")

    def __init__(self, head: bytes, body: bytes) -> None:
        self.head, self.body = head, body
        self.due = False
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, catalogue: _Catalogue, latencies: dict[bytes, float]) -> None:
        self.catalogue = catalogue
        self.latencies = latencies
        self.buffer = b""
        #: Answers not written yet, in the order of their requests: HTTP/1.1 keep-alive
        #: answers go out in that order, so one that is due waits for those before it.
        self.pending: deque[_Answer] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # create_server's connections are streams
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for answer in self.pending:
            if answer.timer is not None:
                answer.timer.cancel()
        self.pending.clear()

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
        latency = 0.0
        if path == _API_PATH:
            catalogue.counts["api"] += 1
            body = catalogue.page(query.decode())
            latency = self.latencies[_API_PATH]
        elif path.startswith(_IMAGES_PATH):
            catalogue.counts["images"] += 1
            content_type = catalogue.content_type.encode()
            # The id is the last part's name: ``/images/<id>``, or the items' ``.../<id>.jpeg``.
            parts = path.rsplit(b"/", 2)
            image_id = int(parts[-1].split(b".", 1)[0])
            body = catalogue.image(image_id)
            resized = catalogue.resized(image_id, parts[-2]) if len(parts) == 3 else None
            if resized is not None:
                body, content_type = resized
            latency = self.latencies[_IMAGES_PATH]
        elif path == b"/_counts":
            body = json.dumps(catalogue.counts).encode()
            catalogue.counts = {"api": 0, "images": 0}
        else:
            status, body = b"404 Not Found", b"{}"
        answer = _Answer(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, content_type, len(body)),
            body,
        )
        self.pending.append(answer)
        if latency:
            answer.timer = asyncio.get_running_loop().call_later(latency, self._due, answer)
        else:
            # No latency (the default): written now, as before latencies existed.
            self._due(answer)

    def _due(self, answer: _Answer) -> None:
        answer.due, answer.timer = True, None
        while self.pending and self.pending[0].due:
            ready = self.pending.popleft()
            self.transport.write(ready.head)
            self.transport.write(ready.body)


async def serve(
    kind: str, count: int, video_bytes: int, image_latency: float = 0.0, page_latency: float = 0.0
) -> None:
    loop = asyncio.get_running_loop()
    holder: list[_Catalogue] = []
    latencies = {_API_PATH: page_latency, _IMAGES_PATH: image_latency}
    server = await loop.create_server(lambda: _Connection(holder[0], latencies), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    holder.append(_Catalogue(kind, count, port, video_bytes))
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=(*KINDS, "video"))
    parser.add_argument("count", type=int)
    parser.add_argument("--video-bytes", type=int, default=200_000_000, help="size of the video (kind video)")
    parser.add_argument(
        "--image-latency", type=float, default=0.0, help="seconds before each image is answered (default 0)"
    )
    parser.add_argument(
        "--page-latency", type=float, default=0.0, help="seconds before each API page is answered (default 0)"
    )
    arguments = parser.parse_args()
    try:
        asyncio.run(
            serve(
                arguments.kind,
                arguments.count,
                arguments.video_bytes,
                arguments.image_latency,
                arguments.page_latency,
            )
        )
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
