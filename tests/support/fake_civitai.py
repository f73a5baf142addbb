"""A fake Civitai for tests: the images API and the image CDN, real HTTP on loopback.

The API listens on 127.0.0.1 and the CDN on 127.0.0.2 (Linux routes all of 127/8 to
loopback): two hosts to a client, so a test can catch an API key leaking to the image
host. Both record every request (header names lower-cased, repeated headers joined by
", ") and inject faults per path, or per API page (by cursor). The real API's behaviour is
described in ``../shared/docs/civitai-api.md`` (the shared docs folder beside the repository).

What the fake models is read from the server's source (civitai/civitai at ebed661, August
2026), cited beside each behaviour:

- ``/api/v1/images`` on its two query paths. The search index (the default) pages with
  offset cursors in three styles. The older database path, which ``imageId``, or ``modelId``
  without ``modelVersionId``, takes, has a bare id as cursor (a JSON number), loses the row
  it pops at each page boundary, lists newest first whatever the metric sort, answers 400
  to ``sort=Random``, 404 to an unknown username, and an empty page on a statement timeout.
- The endpoint's zod schema (400 bodies as zod v4 serialises them), the 429 of deep
  ``page=``, the browsing levels that ``nsfw`` and ``browsingLevel`` stand for, and API keys
  (``api_keys``: an unknown key is served as anonymous, PG only).
- ``period``: only items whose ``createdAt`` is within the period (on each path as there).
- ``/api/v1/me`` and ``/api/v1/models/{id}`` (``add_model``).
- The CDN's transform segment: ``/<key>/<uuid>/width=N[,optimized=true]/<name>`` answers the
  image stored at ``/<key>/<uuid>/original=true/...`` resized (:meth:`FakeCivitai.cdn_answer`,
  where each choice is cited); a URL without one (``/file/civitai-media-cache/<uuid>/original``)
  answers what was stored at that very path.

Keys of an item that start with "_" are the fake's own and never served: ``_versions`` (the
model versions the index lists the image under) and ``_hidden`` (the image takes its place
in the paging but is filtered out of the page, as the server's hidden exclusions are).

    with FakeCivitai() as server:
        item = server.add_image_item(images.jpeg_rgb())
        server.inject(server.api_url, Fault.status(503, retry_after="1"))
"""

from __future__ import annotations

import calendar
import collections
import copy
import datetime
import http
import http.server
import json
import math
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from PIL import Image

API_PATH = "/api/v1/images"
ME_PATH = "/api/v1/me"
MODELS_PATH = "/api/v1/models/"  # followed by the model id
CDN_KEY = "xG1nkqKTMzGDvpLrqFT7WA"  # the account segment of Civitai media URLs
CURSOR_EPOCH_MS = 1733858354000
CHOICES = {
    "sort": {"Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random"},
    "period": {"AllTime", "Year", "Month", "Week", "Day"},
    "nsfw": {"None", "Soft", "Mature", "X", "Blocked", "true", "false"},
    "type": {"image", "video", "audio"},
}
#: The browsing levels an image can have, one bit each: PG, PG13, R, X, XXX, Blocked.
BROWSING_LEVELS = (1, 2, 4, 8, 16, 32)
PUBLIC_BROWSING_LEVEL = 1  # publicBrowsingLevelsFlag: what a query asks for without nsfw or browsingLevel
BLOCKED_BROWSING_LEVEL = 32  # never selectable: onlySelectableLevels strips it
#: nsfw -> the browsing levels it asks for (src/shared/constants/browsingLevel.constants.ts
#: nsfwLevelMapDeprecated; "true" is nsfwBrowsingLevelsFlag, R|X|XXX|Blocked, shown here with
#: Blocked stripped: no PG, no PG13). "false" counts as absent (images/index.ts line 64,
#: `if (!value) return undefined`), and so PG only.
NSFW_BROWSING_LEVELS = {"None": 1, "Soft": 3, "Mature": 7, "X": 31, "true": 28, "Blocked": 32}
#: An image's own browsing level -> the `nsfwLevel` name it is served with (nsfwLevelReverseMapDeprecated,
#: src/shared/constants/browsingLevel.constants.ts lines 271-278); see served_level.
NSFW_LEVEL_NAMES = {1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X", 32: "Blocked"}
#: What zod's z.stringbool() takes, case-insensitively (booleanString, src/utils/zod-helpers.ts):
#: withMeta=1 is true, nsfw=yes is nsfw=true, nsfw=off is nsfw=false.
STRINGBOOL_TRUE = ("true", "1", "yes", "on", "y", "enabled")
STRINGBOOL_FALSE = ("false", "0", "no", "off", "n", "disabled")
#: The base models the server knows, in its order: the names of baseModelRecords in
#: packages/civitai-shared/src/basemodel.constants.ts (line 2483). Any other is a 400.
# fmt: off
KNOWN_BASE_MODELS = (
    "Anima", "AuraFlow", "Chroma", "CogVideoX", "Ernie", "Flux.1 S", "Flux.1 D", "Flux.1 Krea",
    "Flux.1 Kontext", "Flux.2 D", "Flux.2 Klein 9B", "Flux.2 Klein 9B-base", "Flux.2 Klein 4B",
    "Flux.2 Klein 4B-base", "Flux 3 Video", "Grok", "HappyHorse", "HiDream", "HiDream-O1", "Hunyuan 1",
    "Hunyuan Video", "Ideogram 4.0", "Boogu", "Illustrious", "Imagen4", "Kolors", "Krea 2", "LTXV", "LTXV2",
    "LTXV 2.3", "Lens", "Lumina", "MageFlow", "MAI", "Mochi", "Nano Banana", "NoobAI", "ODOR", "OpenAI",
    "Upscaler", "Other", "PixArt a", "PixArt E", "Playground v2", "Pony", "Pony V7", "Qwen", "Qwen 2",
    "Qwen 3", "Stable Cascade", "SD 1.4", "SD 1.5", "SD 1.5 LCM", "SD 1.5 Hyper", "SD 2.0", "SD 2.0 768",
    "SD 2.1", "SD 2.1 768", "SD 2.1 Unclip", "SD 3", "SD 3.5", "SD 3.5 Large", "SD 3.5 Large Turbo",
    "SD 3.5 Medium", "SDXL 0.9", "SDXL 1.0", "SDXL 1.0 LCM", "SDXL Lightning", "SDXL Hyper", "SDXL Turbo",
    "SDXL Distilled", "Reve", "Seedream", "SVD", "SVD XT", "Sora 2", "Veo 3", "Wan Video",
    "Wan Video 1.3B t2v", "Wan Video 14B t2v", "Wan Video 14B i2v 480p", "Wan Video 14B i2v 720p",
    "Wan Video 2.2 TI2V-5B", "Wan Video 2.2 I2V-A14B", "Wan Video 2.2 T2V-A14B", "Wan Video 2.5 T2V",
    "Wan Video 2.5 I2V", "Wan Image 2.7", "Wan Video 2.7", "ZImageTurbo", "ZImageBase", "Vidu Q1",
    "MiniMax H3", "Kling", "Seedance", "ACE Audio", "PolyGen", "Tripo", "Hunyuan3D",
)
# fmt: on
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_]*")
MAX_MODEL_ID = 2147483647  # Postgres int4, the bound of models/[id].ts's schema
REGION_BLOCKED_ERROR = "Access to this service is not available in your region due to legal restrictions."
# Leading bytes -> Content-Type: the CDN tells the truth that the `.jpeg` URLs do not.
MAGIC_NUMBERS = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
]
CursorStyle = Literal["offset", "json", "hostile"]
JSON_TYPE = "application/json; charset=utf-8"

# The enums of imagesEndpointSchema in their source order, which zod's messages keep: MetricTimeframe
# (packages/civitai-db-schema/src/enums.ts), ImageSort (src/server/common/enums.ts), MediaType.
_ENUM_VALUES = {
    "period": ("Day", "Week", "Month", "Year", "AllTime"),
    "sort": ("Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random"),
    "type": ("image", "video", "audio"),
}
_NSFW_NAMES = ("None", "Soft", "Mature", "X", "Blocked")  # NsfwLevelDeprecated
_MAX_SAFE_INTEGER = 2**53 - 1
# What JavaScript's String.prototype.trim() and Number() take as white space.
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_JS_INFINITY = re.compile(r"([+-]?)Infinity")
_JS_RADIX_LITERAL = re.compile(r"0([xXoObB])([0-9a-fA-F]+)")


def sniff_content_type(body: bytes) -> str:
    """The media type of `body` from its first bytes (application/octet-stream if unknown)."""
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    if body[4:8] == b"ftyp":
        return "video/mp4"
    return next((kind for magic, kind in MAGIC_NUMBERS if body.startswith(magic)), "application/octet-stream")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    host: str  # "api" or "cdn"
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]  # a repeated parameter keeps its last value (see raw_query)
    raw_query: str
    headers: dict[str, str]  # lower-cased names
    time: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _json_response(status: int, obj: Any) -> _Response:
    try:
        return _Response(status, json.dumps(obj, ensure_ascii=False).encode())
    except UnicodeEncodeError:  # a lone surrogate: the real API sends it as a \ud800 escape
        return _Response(status, json.dumps(obj).encode())


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one request: build them with the class methods."""

    kind: Literal["replace", "short", "reset", "slow", "stall"]
    response: _Response | None = None  # what "replace" answers instead
    seconds: float = 0.0

    @classmethod
    def status(
        cls,
        code: int,
        body: bytes | None = None,
        retry_after: str | None = None,
        content_type: str = "application/json",
    ) -> Fault:
        """Answer `code` with `body` (default `{"error": <reason>}`) and maybe a Retry-After."""
        if body is None:
            reason = {status.value: status.phrase for status in http.HTTPStatus}.get(code, "Error")
            busy = "Server busy, please retry shortly."  # what Civitai says with its 503s
            body = json.dumps({"error": busy if code == 503 else reason}).encode()
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls("replace", _Response(code, body, content_type, headers))

    @classmethod
    def html_200(cls) -> Fault:
        """A 200 with an HTML error page, as an edge or a captive portal sends."""
        page = b"<!DOCTYPE html><html><body><h1>Something went wrong</h1></body></html>"
        return cls("replace", _Response(200, page, "text/html; charset=utf-8"))

    @classmethod
    def json_200(cls, obj: Any) -> Fault:
        """A 200 with any JSON value, e.g. `{"error": "x"}` without `items`."""
        return cls("replace", _json_response(200, obj))

    @classmethod
    def body(cls, payload: bytes, content_type: str = "image/jpeg") -> Fault:
        """A 200 with these bytes instead of the registered ones."""
        return cls("replace", _Response(200, payload, content_type))

    @classmethod
    def redirect(cls, location: str, code: int = 302) -> Fault:
        """A redirect (e.g. to the other host: are the API headers carried over?)."""
        return cls("replace", _Response(code, b"", "text/plain", (("Location", location),)))

    @classmethod
    def short_body(cls) -> Fault:
        """The normal answer, but only half its Content-Length is sent before the connection closes."""
        return cls("short")

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP reset, without any answer."""
        return cls("reset")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait `seconds`, then answer normally (for timeout tests)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        """The normal answer, but half its body is sent, then nothing for `seconds`, then the rest
        (a timeout in the middle of a body)."""
        return cls("stall", seconds=seconds)

    @classmethod
    def empty_page(cls) -> Fault:
        """A 200 page with no items and no cursor, which is not the end: the older path answers
        it on a statement timeout (image.service.ts lines 2123-2151), and a live feed once gave
        one before the full page (civitai/civitai issue 1800). Inject it once with inject_page."""
        return cls("replace", _json_response(200, {"items": [], "metadata": {}}))

    @classmethod
    def region_blocked(cls) -> Fault:
        """451 with the exact body of src/server/middleware/api-region-block.middleware.ts
        (JSON.stringify: no spaces), sent for /api/* from some countries."""
        body = json.dumps({"error": REGION_BLOCKED_ERROR, "code": "REGION_BLOCKED"}, separators=(",", ":"))
        return cls("replace", _Response(451, body.encode(), "application/json"))


class _ApiError(Exception):
    """An API answer that is not the normal one: its status and its JSON body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status, self.body = status, body


def _service_error(status: int, code: str, message: str) -> _ApiError:
    """An error thrown by the server's services, as images/index.ts's catch block sends it
    (lines 225-239): `{"error": <message>, "code": <TRPC code>}` with the code's status."""
    return _ApiError(status, {"error": message, "code": code})


#: The size of each chunk of a chunked answer (`FakeCivitai.chunked_cdn`).
_CHUNK_BYTES = 64 * 1024


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # stop() must not wait for handlers (a slow fault, an idle keep-alive)
    request_queue_size = 128  # the crawler opens many connections at once

    def __init__(self, address: tuple[str, int], fake: FakeCivitai, role: str) -> None:
        self.fake, self.role = fake, role
        self.connections: set[socket.socket] = set()  # to cut keep-alive connections on stop
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (often on purpose, in tests) is not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real servers
    timeout = 10  # an idle keep-alive connection gives its thread back after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the requests are recorded; stderr noise would drown the test output

    def do_GET(self) -> None:
        fake, role = self.server.fake, self.server.role
        raw_path, _, raw_query = self.path.partition("?")  # not urlsplit: "//x" is a path here
        path = unquote(urlsplit(raw_path).path if "://" in raw_path else raw_path)  # absolute form too
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        recorded = RecordedRequest(role, self.command, path, query, raw_query, headers, time.monotonic())
        with fake._lock:
            fake._requests.append(recorded)
        hook = fake.on_api_request
        if role == "api" and hook is not None:
            hook(recorded)  # outside the lock: the hook may change the items, add faults...
        fault = fake._next_fault(role, path, query)
        fake._stopping.wait(fake.api_delay if role == "api" else fake.cdn_delay)  # stop() cuts it short
        if fault and fault.kind == "reset":
            # SO_LINGER 0 makes close() send a RST; the read buffer holds the last socket reference.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
            self.close_connection = True
            return
        if fault and fault.kind == "slow":
            fake._stopping.wait(fault.seconds)
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # its body is not read, so the connection is unusable
            response = _json_response(405, {"error": "Method not allowed"})
        elif role == "api":
            response = fake._api_response(path, raw_query, headers)
        else:
            response = fake._cdn_response(path)
        if fault and fault.response:
            response = fault.response
        try:
            self._send(
                response,
                short=bool(fault and fault.kind == "short"),
                stall=fault.seconds if fault and fault.kind == "stall" else 0.0,
                chunked=role == "cdn" and fake.chunked_cdn,
            )
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _send(self, response: _Response, short: bool, stall: float = 0.0, chunked: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            body = memoryview(response.body)
            half = len(body) // 2
            if short or stall:
                self._send_body(body[:half], chunked)
                if short:
                    # The rest never comes, nor a chunked body's last chunk: the client sees a cut body.
                    self.close_connection = True
                    return
                self.wfile.flush()
                self.server.fake._stopping.wait(stall)
                body = body[half:]
            self._send_body(body, chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

    def _send_body(self, body: memoryview, chunked: bool) -> None:
        if not chunked:
            self.wfile.write(body)
            return
        for start in range(0, len(body), _CHUNK_BYTES):
            chunk = body[start : start + _CHUNK_BYTES]
            self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")


class FakeCivitai:
    """The fake API (127.0.0.1) and CDN (127.0.0.2); as a context manager, starts and stops both.

    `cursor_style`: "offset" (`2|1733858354002`), "json" (`bdx:{"offset": 2, "k": "a b"}`) or
    "hostile" (a JSON cursor also holding `+&=#%;/?é`, which only a properly encoded query keeps).
    `next_page_host` ("host:port" or "scheme://host:port") replaces the API host in nextPage.
    `cursor_loop` answers every page with the first page's nextCursor. `chunked_cdn` (an
    attribute) sends the CDN's answers chunked (`Transfer-Encoding: chunked`, no
    `Content-Length`), as a CDN streaming a file may. Setting the attribute
    `strip_next_cursor` leaves only nextPage in the metadata; `ignore_flat_meta` nests meta on
    the older query path even with flatMeta=true. `delay` slows every
    answer of both servers, `cdn_delay` overrides it for the CDN (both are attributes too).

    More attributes: `api_keys` (key -> username; empty, the default, leaves keys unmodelled:
    every request gets what it asks for and /me takes any key), `older_path_row_limit` (a page
    of the older path preceded by at least that many rows of its selection times out: empty,
    no cursor; None, the default, never) and `on_api_request` (called with each API request,
    before it is answered: a test can move items between pages, as a live ranking does).
    """

    def __init__(
        self,
        *,
        cursor_style: CursorStyle = "offset",
        next_page_host: str | None = None,
        cursor_loop: bool = False,
        delay: float = 0.0,
        cdn_delay: float | None = None,
    ) -> None:
        self.cursor_style, self.next_page_host, self.cursor_loop = cursor_style, next_page_host, cursor_loop
        self.strip_next_cursor = False
        self.ignore_flat_meta = False
        self.api_delay = delay
        self.cdn_delay = delay if cdn_delay is None else cdn_delay
        self.chunked_cdn = False
        self.api_keys: dict[str, str] = {}
        self.older_path_row_limit: int | None = None
        self.on_api_request: Callable[[RecordedRequest], None] | None = None
        self.items: list[Any] = []  # served in this order; may be changed between requests
        self._models: dict[int, dict[str, Any]] = {}  # by id: the bodies of /api/v1/models/{id}
        self._images: dict[str, tuple[bytes, str]] = {}  # CDN path -> (body, Content-Type)
        self._resized: dict[str, tuple[bytes, str]] = {}  # CDN path with a width -> what it answered
        self._faults: dict[str, collections.deque[Fault]] = {}
        self._permanent_faults: dict[str, Fault] = {}
        self._page_faults: dict[str | None, collections.deque[Fault]] = {}  # by cursor
        self._requests: list[RecordedRequest] = []
        self._next_id = 1000
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> FakeCivitai:
        if self._servers:
            raise RuntimeError("FakeCivitai is already started")
        self._stopping.clear()
        self._servers = [_Server(("127.0.0.1", 0), self, "api"), _Server(("127.0.0.2", 0), self, "cdn")]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"fake-civitai-{server.role}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes the handlers waiting in a delay or a slow fault
        for server in self._servers:
            server.shutdown()  # returns within a poll interval
        for thread in self._threads:
            thread.join(timeout=2)
        for server in self._servers:
            with self._lock:
                connections = list(server.connections)
            for connection in connections:  # keep-alive connections would outlive the server
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            server.server_close()
        self._servers, self._threads = [], []

    def __enter__(self) -> FakeCivitai:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _base(self, role: str) -> str:
        for server in self._servers:
            if server.role == role:
                host, port = server.server_address[:2]
                return f"http://{host}:{port}"
        raise RuntimeError("FakeCivitai is not started: use `with FakeCivitai() as server` or start()")

    @property
    def api_url(self) -> str:
        return self._base("api") + API_PATH

    @property
    def image_base(self) -> str:
        return self._base("cdn") + "/"

    def add_image(self, path_or_name: str, body: bytes, content_type: str = "image/jpeg") -> str:
        """Serve `body` on the CDN and return its URL.

        A path starts with "/" (or is a URL); a bare name becomes `/<key>/<name>/original=true/<name>.jpeg`.
        """
        path = _path_of(path_or_name) if path_or_name.startswith(("/", "http")) else _cdn_path(path_or_name)
        with self._lock:
            self._images[path] = (body, content_type)
        return self._base("cdn") + path

    def add_image_item(
        self,
        body: bytes | None = None,
        *,
        id: int | None = None,
        name: str | None = None,
        content_type: str | None = None,
        versions: list[int] | None = None,
        level: int | None = None,
        prompt: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Append a Civitai-shaped item whose url serves `body` (unless None) and return it.

        `name` is the uuid segment of the URL (default: made from the id); the URL always ends
        in `.jpeg`, as Civitai's do. Content-Type: `content_type`, else guessed from the bytes.
        `fields` replace top-level keys (stats=..., meta=None, type="video", url=...).
        `versions` sets `_versions`, the model versions the image is listed under (default:
        its modelVersionIds), which the served modelVersionIds need not show. `level` is the
        image's browsing level (1, 2, 4, 8, 16; or 0, unrated), served as the server serves it:
        `browsingLevel`, `nsfwLevel` and `nsfw` (`served_level`). `prompt` is its meta's prompt.
        """
        if level is not None:
            fields = {**served_level(level), **fields}
        with self._lock:
            id = self._next_id if id is None else id
            self._next_id = max(self._next_id, id + 1)
            name = name or str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-civitai/{id}"))
            url = self._base("cdn") + _cdn_path(name)
            if body is not None:
                self.add_image(name, body, content_type or sniff_content_type(body))
            item: dict[str, Any] = {
                "id": id,
                "url": url,
                "hash": "ULN0-w?b4nRjxGM{-;t7M_t7NGae~qRjMyt7",
                "width": 64,
                "height": 48,
                "nsfwLevel": "None",
                "type": "image",
                "nsfw": False,
                "browsingLevel": 1,
                "createdAt": _iso_time(1725066707 + id),
                "postId": 6000000 + id,
                "stats": {
                    "cryCount": 0,
                    "laughCount": 0,
                    "likeCount": 10,
                    "dislikeCount": 0,
                    "heartCount": 5,
                    "commentCount": 0,
                },
                "meta": {
                    "prompt": f"masterpiece, best quality, test image {id}",
                    "negativePrompt": "worst quality, bad anatomy",
                    "seed": 3150861441 + id,
                    "steps": 20,
                    "sampler": "DPM++ 2M Karras",
                    "cfgScale": 7,
                    "Model": "boleromix_XL_V1.3",
                    "resources": [{"hash": "afaf521da2", "name": "boleromix_XL_V1.3", "type": "model"}],
                },
                "username": "alice",
                "baseModel": "SDXL 1.0",
                "modelVersionIds": [788385],
            }
            if prompt is not None:
                item["meta"]["prompt"] = prompt
            item.update(fields)
            if versions is not None:
                item["_versions"] = list(versions)
            self.items.append(item)
            return item

    def add_model(self, model_id: int, version_ids: list[int], name: str | None = None) -> dict[str, Any]:
        """Register a model and return the body `GET /api/v1/models/{model_id}` answers.

        Its versions keep the given order. On the older path, `modelId` selects the images
        listed under one of them (their `_versions`, else their modelVersionIds); an unknown
        model selects none. The body may be changed later (e.g. a version added).
        """
        model: dict[str, Any] = {
            "id": model_id,
            "name": f"Model {model_id}" if name is None else name,
            "type": "Checkpoint",
            "nsfw": False,
            "creator": {"username": "alice"},
            "tags": [],
            "modelVersions": [
                {
                    "id": version_id,
                    "modelId": model_id,
                    "name": f"v{number}",
                    "baseModel": "SDXL 1.0",
                    "createdAt": _iso_time(1700000000 + version_id),
                    "files": [],
                    "images": [],
                    # models/[id].ts: `${baseUrl}${createModelFileDownloadUrl(...)}`, the public host
                    "downloadUrl": f"https://civitai.com/api/download/models/{version_id}",
                }
                for number, version_id in enumerate(version_ids, 1)
            ],
        }
        with self._lock:
            self._models[model_id] = model
        return model

    def add_raw_item(self, obj: Any) -> Any:
        """Append any JSON value as an item (for junk tests); filters let it through."""
        with self._lock:
            self.items.append(obj)
        return obj

    def inject(self, path_or_url: str, *faults: Fault) -> None:
        """Queue faults for a path (or URL, query ignored): one per request, then normal service."""
        with self._lock:
            self._faults.setdefault(_path_of(path_or_url), collections.deque()).extend(faults)

    def inject_page(self, cursor: str | int | None, *faults: Fault) -> None:
        """Queue faults for the API page asked for with `cursor` (None: the first page, which has none).

        An older-path cursor is an image id: 1234 or "1234" (the query text is the key).
        They come before the faults queued with :meth:`inject` for the API path.
        """
        key = None if cursor is None else str(cursor)
        with self._lock:
            self._page_faults.setdefault(key, collections.deque()).extend(faults)

    def cursor_for(self, offset: int) -> str:
        """The search index's nextCursor leading to the page that starts at item `offset`."""
        return self._encode_cursor(offset)

    def inject_always(self, path_or_url: str, fault: Fault) -> None:
        """Apply `fault` to every request of the path once its queue is empty, forever."""
        with self._lock:
            self._permanent_faults[_path_of(path_or_url)] = fault

    def faults_left(self, path_or_url: str | None = None) -> int:
        """How many queued (one-shot) faults the path still has; with no path, all of them."""
        with self._lock:
            if path_or_url is None:
                queues = [*self._faults.values(), *self._page_faults.values()]
                return sum(len(queue) for queue in queues)
            return len(self._faults.get(_path_of(path_or_url), ()))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._page_faults.clear()
            self._permanent_faults.clear()

    def _next_fault(self, role: str, path: str, query: dict[str, str]) -> Fault | None:
        with self._lock:
            if role == "api" and path == API_PATH:
                page_queue = self._page_faults.get(query.get("cursor"))
                if page_queue:
                    return page_queue.popleft()
            queue = self._faults.get(path)
            return queue.popleft() if queue else self._permanent_faults.get(path)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests so far, both hosts, in arrival order."""
        with self._lock:
            return list(self._requests)

    def api_requests(self) -> list[RecordedRequest]:
        """Every request to the API host: image pages, /api/v1/me, /api/v1/models/{id}..."""
        return [request for request in self.requests if request.host == "api"]

    def page_requests(self) -> list[RecordedRequest]:
        """The requests for pages of /api/v1/images, in arrival order."""
        return [request for request in self.api_requests() if request.path == API_PATH]

    def cdn_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.host == "cdn"]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _cdn_response(self, path: str) -> _Response:
        with self._lock:
            entry = self._images.get(path)
        if entry is None:
            entry = self.cdn_answer(path)
        if entry is None:
            return _Response(404, b"Not Found", "text/plain; charset=utf-8")
        return _Response(200, entry[0], entry[1], (("Cache-Control", "public, max-age=31536000"),))

    def cdn_answer(self, path_or_url: str) -> tuple[bytes, str] | None:
        """What the CDN answers (body, Content-Type) for a URL with a transform segment before its
        name, None if nothing is stored for it; made once per path and kept, as the CDN caches it.

        - The options are those of ``getEdgeUrl`` (src/client-utils/edge-url.ts 18-36, 125-144);
          any other, or a width that is not a positive integer: nothing (404).
        - ``original=true``, or no width: the stored original's bytes.
        - The width is snapped up to the cacher's ladder, server-side, whatever the URL says
          (edge-url.ts 44-53, 71-87: "the cacher's server-side snap remains the source of truth"):
          ``width=1800`` (the site's cap) is served 2200 wide.
        - Never enlarged: Cloudflare's ``fit=scale-down`` ("the image is never enlarged"; its
          options are the ones getEdgeUrl writes, edge-url.ts 16-17). A choice: the site sends no
          ``fit`` and the cacher's default is not in its source; an original narrower than the
          width comes back at its own size, re-encoded.
        - The format: ``optimized=true`` sends WebP ("Optimized (avif, webp)",
          src/components/Account/SettingsCard.tsx 66-69; the fake does not negotiate AVIF from
          Accept), else JPEG, or PNG for a picture with an alpha channel ("Unoptimized (jpeg,
          png)"); quality 85, Cloudflare's default (its image options, ``quality``: "The default
          is 85").
        """
        path = _path_of(path_or_url)
        with self._lock:
            if path in self._resized:
                return self._resized[path]
        segments = path.split("/")
        options = _cdn_options(segments[3]) if len(segments) == 5 else None
        if options is None:
            return None
        original_prefix = f"/{segments[1]}/{segments[2]}/original=true/"
        with self._lock:
            original = next(
                (entry for key, entry in self._images.items() if key.startswith(original_prefix)), None
            )
        if original is None:
            return None
        width = options.get("width")
        if options.get("original") == "true" or width is None:
            return original
        answer = _resize(original[0], _cacher_width(width), optimized=options.get("optimized") == "true")
        with self._lock:
            self._resized[path] = answer
        return answer

    def _api_response(self, path: str, raw_query: str, headers: dict[str, str]) -> _Response:
        try:
            if path == API_PATH:
                return _json_response(200, self._page(raw_query, headers))
            if path == ME_PATH:
                return _json_response(200, self._me(raw_query, headers))
            model_id = path.removeprefix(MODELS_PATH)
            if path.startswith(MODELS_PATH) and model_id and "/" not in model_id:
                return _json_response(200, self._model(model_id))
        except _ApiError as error:
            return _json_response(error.status, error.body)
        return _json_response(404, {"error": "Not found"})

    def _session_user(self, raw_query: str, headers: dict[str, str]) -> str | None:
        """The username an API key logs in as; None for an anonymous request.

        The key is the Authorization header's second word, else `?token=`
        (src/server/auth/get-server-auth-session.ts); an unknown key is no session, not an
        error (src/server/auth/bearer-token.ts lines 26, 36). With `api_keys` empty any key
        logs in, as "tester".
        """
        if "authorization" in headers:
            words = headers["authorization"].split(" ")
            token = words[1] if len(words) > 1 else ""
        else:  # URLSearchParams.get: the first one, even if empty
            pairs = parse_qsl(raw_query, keep_blank_values=True)
            token = next((value for name, value in pairs if name == "token"), "")
        key = token.strip()
        if not key:
            return None
        with self._lock:
            return self.api_keys.get(key) if self.api_keys else "tester"

    def _me(self, raw_query: str, headers: dict[str, str]) -> dict[str, Any]:
        """src/pages/api/v1/me.ts behind AuthedEndpoint (src/server/utils/endpoint-helpers.ts):
        401 without a session, the cheap way for a client to tell that its key is bad."""
        username = self._session_user(raw_query, headers)
        if username is None:
            raise _ApiError(401, {"error": "Unauthorized"})
        with self._lock:
            usernames = list(dict.fromkeys(self.api_keys.values())) or [username]
        return {
            "id": usernames.index(username) + 1,
            "username": username,
            "tier": "free",
            "status": "active",
            "isMember": False,
            "subscriptions": [],
        }

    def _model(self, text: str) -> dict[str, Any]:
        """src/pages/api/v1/models/[id].ts: 400 with z.prettifyError's text for an id its schema
        refuses, 404 for an unknown model, else the body registered with add_model."""
        problems = _model_id_problems(text)
        if problems:
            raise _ApiError(400, {"error": "\n".join(f"✖ {problem}\n  → at id" for problem in problems)})
        model_id = int(_js_number(text))
        with self._lock:
            model = copy.deepcopy(self._models.get(model_id))
        if model is None:
            raise _ApiError(404, {"error": f"No model with id {model_id}"})
        return model

    def _page(self, raw_query: str, headers: dict[str, str]) -> dict[str, Any]:
        """src/pages/api/v1/images/index.ts: the schema, the paging guard, the browsing level,
        then one of the two query paths (image-search.service.ts runImageSearch)."""
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        query = _parse_images_query(pairs)
        # Lines 124-133: only `page` without a cursor is offset paging, and it stops at 1000 items.
        if query.page and not query.cursor and query.page * query.limit > 1000:
            raise _ApiError(429, {"error": "You've requested too many pages, please use cursors instead"})
        level = _selectable_level(query)
        if self.api_keys and self._session_user(raw_query, headers) is None:
            level = PUBLIC_BROWSING_LEVEL  # a bad key is anonymous, and anonymous is PG only
        with self._lock:
            items = list(self.items)
        if query.older_path:
            return self._older_path_page(query, level, items, pairs)
        return self._search_page(query, level, items, pairs)

    def _search_page(
        self, query: _ImagesQuery, level: int, items: list[Any], pairs: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """The search-index path: offset cursors; what is filtered after paging leaves holes."""
        selected = [item for item in items if _wanted(item, query, level, older_path=False)]
        if query.cursor is not None:
            offset = self._decode_cursor(query.cursor)
        else:
            offset = max(query.page - 1, 0) * query.limit if query.page else 0
        page = selected[offset : offset + query.limit]
        # Hidden items hold their place, then leave the page: short (or empty) pages with a cursor.
        served = [_as_served(item, query, self._nested(query)) for item in page if not _hidden(item)]
        next_cursor: str | None = None
        if self.cursor_loop:
            next_cursor = query.cursor or self._encode_cursor(offset + query.limit)
        elif query.limit and offset + query.limit < len(selected):
            next_cursor = self._encode_cursor(offset + query.limit)
        return self._answer(served, next_cursor, pairs)

    def _older_path_page(
        self, query: _ImagesQuery, level: int, items: list[Any], pairs: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """The older database path: getAllImages (src/server/services/image.service.ts, line 1405)."""
        if query.username and not query.user_id:  # line 1566: a user looked up by name
            if not any(isinstance(item, dict) and item.get("username") == query.username for item in items):
                raise _service_error(404, "NOT_FOUND", "User not found")
        if query.sort == "Random":  # lines 1758-1760: Random is for collections only
            raise _service_error(400, "BAD_REQUEST", "Random sort requires a collectionId")
        versions: list[Any] | None = None
        if query.model_id:  # line 1671: the images whose resources are versions of the model
            with self._lock:
                model = self._models.get(query.model_id)
                versions = [version.get("id") for version in model["modelVersions"]] if model else []
        rows = [
            item
            for item in items
            # A database row has an integer id: junk items live in the search index only.
            if isinstance(item, dict)
            and type(item.get("id")) is int
            and _wanted(item, query, level, older_path=True)
            and (versions is None or any(version in versions for version in _listed_versions(item)))
        ]
        # Lines 1853-1888: the metric sorts are commented out; Oldest is id ASC, the rest id DESC.
        ascending = query.sort == "Oldest"
        rows.sort(key=lambda row: row["id"], reverse=not ascending)
        start = 0
        cursor = _id_cursor(query.cursor) if query.cursor else None  # getCursor skips an empty one
        if cursor is not None:  # pagination-helpers.ts getCursor: `id < cursor` DESC, `id >= cursor` ASC
            start = next(
                (
                    index
                    for index, row in enumerate(rows)
                    if (row["id"] >= cursor if ascending else row["id"] < cursor)
                ),
                len(rows),
            )
        elif query.page:
            start = max(query.page - 1, 0) * query.limit
        if self.older_path_row_limit is not None and start >= self.older_path_row_limit:
            # The statement timeout of a deep page (lines 2123-2151): an empty page, no cursor.
            return {"items": [], "metadata": {}}
        page = rows[start : start + query.limit + 1]  # LIMIT limit + 1 (line 2080)
        # Lines 2162-2164: the extra row is popped and its id becomes the cursor: under id DESC
        # the next page asks `id < cursor` and that row is never served.
        next_cursor: int | None = page.pop()["id"] if len(page) > query.limit else None
        if self.cursor_loop and cursor is not None:
            next_cursor = cursor
        # Filtered after the pop (line 2253), like the hidden exclusions: short pages keep a cursor.
        served = [_as_served(item, query, self._nested(query)) for item in page if not _hidden(item)]
        return self._answer(served, next_cursor, pairs)

    def _nested(self, query: _ImagesQuery) -> bool:
        """Whether meta comes nested, {"id": ..., "meta": {...}}: image-search.service.ts line 247,
        `flatMeta !== undefined ? flatMeta : !useLegacyMethod` (ignore_flat_meta: nested anyway)."""
        if query.older_path and self.ignore_flat_meta:
            return True
        return not query.flat_meta if query.flat_meta is not None else query.older_path

    def _answer(
        self, served: list[Any], next_cursor: str | int | None, pairs: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """The page with its metadata: nextCursor (a string, or the older path's number) and nextPage."""
        if next_cursor is None:
            return {"items": served, "metadata": {}}  # the end: the keys are absent, not null
        next_query = urlencode(
            [pair for pair in pairs if pair[0] != "cursor"] + [("cursor", str(next_cursor))]
        )
        scheme, _, netloc = (self.next_page_host or urlsplit(self.api_url).netloc).rpartition("://")
        next_page = urlunsplit((scheme or "http", netloc, API_PATH, next_query, ""))
        if self.strip_next_cursor:  # some answers carry only nextPage
            return {"items": served, "metadata": {"nextPage": next_page}}
        return {"items": served, "metadata": {"nextCursor": next_cursor, "nextPage": next_page}}

    def _encode_cursor(self, offset: int) -> str:
        if self.cursor_style == "json":
            return "bdx:" + json.dumps({"offset": offset, "k": "a b"})
        if self.cursor_style == "hostile":  # every character that a hand-built query gets wrong
            return "bdx:" + json.dumps({"offset": offset, "k": "a+b&c=d #%20;/?é"}, ensure_ascii=False)
        return f"{offset}|{CURSOR_EPOCH_MS + offset}"

    def _decode_cursor(self, cursor: str) -> int:
        """The offset in `cursor`, which must be exactly one this server made (else 400).

        The real index restarts at the first page on a cursor it cannot read; the fake refuses
        it, so that a test catches a client that mangled its cursor.
        """
        offset: Any = -1
        if cursor.startswith("bdx:"):
            try:
                offset = json.loads(cursor[4:]).get("offset", -1)
            except (ValueError, AttributeError):
                pass
        elif match := re.fullmatch(r"(\d+)\|(\d+)", cursor):
            offset = int(match[1])
        if not isinstance(offset, int) or offset < 0 or self._encode_cursor(offset) != cursor:
            raise _service_error(400, "BAD_REQUEST", f"cursor: Invalid cursor {cursor!r}")
        return offset


@dataclass(frozen=True)
class _ImagesQuery:
    """A query of /api/v1/images as its schema parsed it (zero ids count as absent, as there)."""

    limit: int
    page: int | None
    post_id: int | None
    model_id: int | None
    model_version_id: int | None
    image_id: int | None
    username: str | None
    user_id: int | None
    sort: str
    period: str
    nsfw: int | None  # the browsing levels nsfw asks for; None when absent or false
    browsing_level: int | None
    tags: frozenset[float]
    cursor: str | None
    type: str | None
    base_models: tuple[str, ...]
    with_meta: bool
    flat_meta: bool | None
    with_tags: bool

    @property
    def older_path(self) -> bool:
        """imageId, or modelId without modelVersionId: image-search.service.ts line 141."""
        return bool(self.image_id) or (bool(self.model_id) and not self.model_version_id)


_Issues = list[dict[str, Any]]
_Parser = Callable[[str | list[str], list[str | int], _Issues], Any]


def _parse_images_query(pairs: list[tuple[str, str]]) -> _ImagesQuery:
    """The query as imagesEndpointSchema (images/index.ts line 49) parses it, or its 400.

    The body of a 400 is `{"error": <the ZodError>}` (line 118); zod v4 serialises a ZodError
    as its name and message, which is JSON.stringify(issues, null, 2). Next.js hands a
    repeated parameter over as an array, which most fields refuse.
    """
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    issues: _Issues = []
    parsed: dict[str, Any] = {}
    for name, parse in _IMAGES_SCHEMA:  # zod checks the fields in the schema's order
        if name in values:
            given = values[name]
            parsed[name] = parse(given[0] if len(given) == 1 else given, [name], issues)
    if issues:
        message = json.dumps(issues, indent=2, ensure_ascii=False)
        raise _ApiError(400, {"error": {"name": "ZodError", "message": message}})

    def integer(name: str) -> int | None:
        number = parsed.get(name)
        if number is None:
            return None
        if not number.is_integer():  # the schema lets it through; what follows is not modelled
            raise _ApiError(400, {"error": f"{name}={number}: the fake does not model fractional numbers"})
        return int(number)

    limit = integer("limit")
    level = parsed.get("browsingLevel")
    return _ImagesQuery(
        limit=100 if limit is None else limit,  # constants.galleryFilterDefaults.limit
        page=integer("page"),
        post_id=integer("postId"),
        model_id=integer("modelId"),
        model_version_id=integer("modelVersionId"),
        image_id=integer("imageId"),
        username=parsed.get("username"),
        user_id=integer("userId"),
        sort=parsed.get("sort", "Most Reactions"),
        period=parsed.get("period", "AllTime"),  # constants.galleryFilterDefaults.period
        nsfw=parsed.get("nsfw"),
        browsing_level=None if level is None else _to_int32(level),  # used in bitwise operations
        tags=frozenset(parsed.get("tags", ())),
        cursor=parsed.get("cursor"),
        type=parsed.get("type"),
        base_models=tuple(parsed.get("baseModels", ())),
        with_meta=parsed.get("withMeta", False),
        flat_meta=parsed.get("flatMeta"),
        with_tags=parsed.get("withTags", False),
    )


def served_level(level: int) -> dict[str, Any]:
    """The level fields of an image whose own level is `level`, as the search path serves them
    (src/server/services/image-search.service.ts lines 222-233): `browsingLevel` is the level
    itself; `nsfwLevel` its deprecated name, getNsfwLevelDeprecatedReverseMapping
    (src/shared/constants/browsingLevel.constants.ts lines 271-282: X and XXX are both "X", an
    unknown level, such as 0 for an unrated image, "None"); `nsfw` whether that name is not "None"."""
    name = NSFW_LEVEL_NAMES.get(level, "None")
    return {"browsingLevel": level, "nsfwLevel": name, "nsfw": name != "None"}


def _selectable_level(query: _ImagesQuery) -> int:
    """The browsing levels a query is served: `browsingLevel ?? nsfw ?? publicBrowsingLevelsFlag`
    (images/index.ts line 163), then without Blocked (onlySelectableLevels) and PG if nothing
    is left (getAllImages, image.service.ts lines 1500-1507): browsingLevel=32 serves PG."""
    level = query.browsing_level
    if level is None:
        level = query.nsfw if query.nsfw is not None else PUBLIC_BROWSING_LEVEL
    return level & ~BLOCKED_BROWSING_LEVEL or PUBLIC_BROWSING_LEVEL


def _wanted(item: Any, query: _ImagesQuery, level: int, older_path: bool) -> bool:
    """Whether an item passes the query's filters (junk items pass: they are served as they are)."""
    if not isinstance(item, dict):
        return True
    item_level, kind = item.get("browsingLevel"), item.get("type")
    # getAllImages looks the user up by name only without userId (image.service.ts line 1566).
    username = None if older_path and query.user_id else query.username
    version = query.model_version_id
    return all(
        (
            not username or item.get("username") == username,
            not query.user_id or item.get("userId") == query.user_id,
            not query.post_id or item.get("postId") == query.post_id,
            not query.image_id or item.get("id") == query.image_id,
            not version or version in _listed_versions(item),
            not query.base_models or item.get("baseModel") in query.base_models,
            # Junk levels and types are served as they are, like any junk.
            query.type is None or kind not in CHOICES["type"] or kind == query.type,
            type(item_level) is not int or item_level not in BROWSING_LEVELS or bool(item_level & level),
            not query.tags or bool(query.tags & _tag_ids(item)),
            _in_period(item, query.period, older_path),
        )
    )


def _in_period(item: dict[str, Any], period: str, older_path: bool) -> bool:
    """Whether an item is recent enough for `period` (AllTime: any item).

    The search index keeps what was sorted since now minus one period, to the minute
    (image.service.ts lines 3587-3600: `sortAtUnix > snapToInterval(now - 1 period)`, dayjs's
    calendar subtract); the older path what was created since the start of today minus one
    period (lines 1897-1903, with the periodMode 'published' that image-search.service.ts
    lines 169, 187 and 205 pass). The fake's sortAt is the item's createdAt.
    """
    if period == "AllTime":
        return True
    try:
        created = datetime.datetime.fromisoformat(item["createdAt"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, ValueError):
        return True  # junk is served as it is
    now = datetime.datetime.now(datetime.UTC)
    if older_path:  # date_trunc('day', now()) - interval '1 <period>'
        return created >= _one_period_before(now.replace(hour=0, minute=0, second=0, microsecond=0), period)
    start = _one_period_before(now, period).replace(second=0, microsecond=0)  # snapToInterval
    return created > start


def _one_period_before(moment: datetime.datetime, period: str) -> datetime.datetime:
    """`moment` minus one Day, Week, Month or Year, a month or year ending on the same day, or
    on the last day of a shorter month (as dayjs and Postgres intervals do)."""
    if period in ("Day", "Week"):
        return moment - datetime.timedelta(days=1 if period == "Day" else 7)
    year, month = (moment.year - 1, moment.month) if period == "Year" else divmod(moment.month - 2, 12)
    if period != "Year":
        year, month = moment.year + year, month + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def _listed_versions(item: dict[str, Any]) -> list[Any]:
    """The model versions an image is listed under: postedToId, modelVersionIds or
    modelVersionIdsManual in the index (image.service.ts lines 3473-3482), so `_versions`,
    else the served modelVersionIds (which lists auto-detected resources only)."""
    versions = item["_versions"] if "_versions" in item else item.get("modelVersionIds")
    return versions if isinstance(versions, list) else []


def _hidden(item: Any) -> bool:
    return isinstance(item, dict) and bool(item.get("_hidden"))


def _tag_ids(item: dict[str, Any]) -> set[Any]:
    tags = item.get("tags")
    return {tag.get("id") for tag in tags if isinstance(tag, dict)} if isinstance(tags, list) else set()


def _as_served(item: Any, query: _ImagesQuery, nested: bool) -> Any:
    """An item as the API answers it: no private keys, meta and tags only when asked for."""
    if not isinstance(item, dict):
        return item
    served = {key: value for key, value in item.items() if not str(key).startswith("_")}
    if not query.with_tags:
        served.pop("tags", None)
    if "meta" not in served:
        return served
    if not query.with_meta:  # the real default: no meta unless asked for
        served["meta"] = None
    elif nested:
        served["meta"] = {"id": item.get("id"), "meta": item["meta"]}
    return served


def _id_cursor(cursor: str) -> int:
    """The id in an older-path cursor, read as parseCursor does (pagination-helpers.ts ~115-158):
    errors are 400s thrown by the service."""
    values = cursor.split("|")
    if len(values) != 1:  # e.g. an offset cursor of the search index
        message = f"Invalid cursor: expected 1 value(s) for this sort, received {len(values)}"
        raise _service_error(400, "BAD_REQUEST", message)
    if "-" in cursor:  # read as a date, which no id compares with
        raise _service_error(400, "BAD_REQUEST", f'Invalid cursor: unparseable date value "{cursor}"')
    match = re.match(f"[{_JS_WHITESPACE}]*\\+?([0-9]+)", cursor)  # parseInt(value, 10): leading digits
    if match is None:
        raise _service_error(400, "BAD_REQUEST", f'Invalid cursor: unparseable numeric value "{cursor}"')
    return int(match[1])


# zod v4's issues, as JSON.stringify writes them: the keys in zod's order.


def _type_issue(path: list[str | int], expected: str, received: str) -> dict[str, Any]:
    """invalid_type; zod adds `received` for NaN and ±Infinity and calls Infinity a number."""
    issue: dict[str, Any] = {"expected": expected, "code": "invalid_type"}
    if received in ("NaN", "Infinity"):
        issue["received"] = received
    issue["path"] = path
    word = "number" if received == "Infinity" else received
    issue["message"] = f"Invalid input: expected {expected}, received {word}"
    return issue


def _value_issue(
    path: list[str | int], values: tuple[str, ...], expected: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"code": "invalid_value"}
    if expected:
        issue["expected"] = expected
    issue.update(values=list(values), path=path)
    issue["message"] = "Invalid option: expected one of " + "|".join(f'"{value}"' for value in values)
    return issue


def _union_issue(path: list[str | int], errors: list[_Issues]) -> dict[str, Any]:
    return {"code": "invalid_union", "errors": errors, "path": path, "message": "Invalid input"}


def _boolean_string_issue(path: list[str | int], received: str) -> dict[str, Any]:
    """booleanString(): z.boolean().or(z.stringbool()).or(z.number()...), refusing a string or an array."""
    if received == "string":
        stringbool = _value_issue([], STRINGBOOL_TRUE + STRINGBOOL_FALSE, expected="stringbool")
    else:
        stringbool = _type_issue([], "string", received)
    booleans = _union_issue([], [[_type_issue([], "boolean", received)], [stringbool]])
    return _union_issue(path, [[booleans], [_type_issue([], "number", received)]])


def _received(value: str | list[str]) -> str:
    return "array" if isinstance(value, list) else "string"


def _bound_issue(path: list[str | int], too: Literal["small", "big"], bound: int) -> dict[str, Any]:
    """zod 4's issue for a number out of its range, its keys in zod's order."""
    key, sign = ("minimum", ">=") if too == "small" else ("maximum", "<=")
    return {
        "origin": "number",
        "code": f"too_{too}",
        key: bound,
        "inclusive": True,
        "path": path,
        "message": f"Too {too}: expected number to be {sign}{bound}",
    }


def _numeric_string(minimum: int | None = None, maximum: int | None = None) -> _Parser:
    """numericString (src/utils/zod-helpers.ts stringToNumber): Number(value), then z.number()."""

    def parse(value: str | list[str], path: list[str | int], issues: _Issues) -> float | None:
        if isinstance(value, list):
            issues.append(_type_issue(path, "number", "array"))
            return None
        number = _js_number(value)
        if math.isnan(number):  # the preprocess's own issue, which stops the pipe
            message = f"'{value}' cannot be converted to a number"
            issues.append(dict(message=message, code="custom", path=path))
        elif math.isinf(number):
            issues.append(_type_issue(path, "number", "Infinity"))
        elif minimum is not None and number < minimum:
            issues.append(_bound_issue(path, "small", minimum))
        elif maximum is not None and number > maximum:
            issues.append(_bound_issue(path, "big", maximum))
        else:
            return number
        return None

    return parse


def _coerced_number(value: str | list[str], path: list[str | int], issues: _Issues) -> float | None:
    """z.coerce.number(): Number(value); an array of two values is NaN."""
    number = _js_number(value) if isinstance(value, str) else math.nan
    if math.isnan(number) or math.isinf(number):
        issues.append(_type_issue(path, "number", "NaN" if math.isnan(number) else "Infinity"))
        return None
    return number


def _enum(values: tuple[str, ...]) -> _Parser:
    def parse(value: str | list[str], path: list[str | int], issues: _Issues) -> str | None:
        if isinstance(value, str) and value in values:
            return value
        issues.append(_value_issue(path, values))
        return None

    return parse


def _username(value: str | list[str], path: list[str | int], issues: _Issues) -> str | None:
    """usernameSchema (src/shared/zod/username.schema.ts): the regex, then trim()."""
    if isinstance(value, list):
        issues.append(_type_issue(path, "string", "array"))
    elif not USERNAME_PATTERN.fullmatch(value):
        message = 'The "username" field can only contain letters, numbers, and _.'
        pattern = "/^[A-Za-z0-9_]*$/"
        issues.append(
            dict(
                origin="string",
                code="invalid_format",
                format="regex",
                pattern=pattern,
                path=path,
                message=message,
            )
        )
    else:
        return value
    return None


def _stringbool(value: str) -> bool | None:
    lowered = value.lower()
    return True if lowered in STRINGBOOL_TRUE else False if lowered in STRINGBOOL_FALSE else None


def _boolean(value: str | list[str], path: list[str | int], issues: _Issues) -> bool | None:
    flag = _stringbool(value) if isinstance(value, str) else None
    if flag is None:
        issues.append(_boolean_string_issue(path, _received(value)))
    return flag


def _nsfw(value: str | list[str], path: list[str | int], issues: _Issues) -> int | None:
    """z.union([z.enum(NsfwLevelDeprecated), booleanString()]), mapped to levels (index.ts 60-69)."""
    if isinstance(value, str):
        if value in _NSFW_NAMES:
            return NSFW_BROWSING_LEVELS[value]
        flag = _stringbool(value)
        if flag is not None:
            return NSFW_BROWSING_LEVELS["true"] if flag else None  # false: as if absent
    enum_issue = _value_issue([], _NSFW_NAMES)
    issues.append(_union_issue(path, [[enum_issue], [_boolean_string_issue([], _received(value))]]))
    return None


def _tags(value: str | list[str], path: list[str | int], issues: _Issues) -> list[float]:
    """commaDelimitedNumberArray: split on "," and trim (an array as it is), Number() each."""
    texts = value if isinstance(value, list) else [text.strip(_JS_WHITESPACE) for text in value.split(",")]
    numbers = []
    for index, text in enumerate(texts):
        number = _js_number(text)
        if math.isnan(number) or math.isinf(number):
            issues.append(_type_issue([*path, index], "number", "NaN" if math.isnan(number) else "Infinity"))
        else:
            numbers.append(number)
    return numbers


def _base_models(value: str | list[str], path: list[str | int], issues: _Issues) -> list[str]:
    """commaDelimitedEnumArray(baseModels): split on "," and trim (an array as it is), each known."""
    names = value if isinstance(value, list) else [name.strip(_JS_WHITESPACE) for name in value.split(",")]
    for index, name in enumerate(names):
        if name not in KNOWN_BASE_MODELS:
            issues.append(_value_issue([*path, index], KNOWN_BASE_MODELS))
    return names


def _cursor(value: str | list[str], path: list[str | int], issues: _Issues) -> str | None:
    """z.union([z.bigint(), z.number(), z.string(), z.date()]): any one string."""
    if isinstance(value, str):
        return value
    kinds = ("bigint", "number", "string", "date")
    issues.append(_union_issue(path, [[_type_issue([], kind, "array")] for kind in kinds]))
    return None


_IMAGES_SCHEMA: tuple[tuple[str, _Parser], ...] = (
    ("limit", _numeric_string(0, 200)),
    ("page", _numeric_string()),
    ("postId", _numeric_string()),
    ("modelId", _numeric_string()),
    ("modelVersionId", _numeric_string()),
    ("imageId", _numeric_string()),
    ("username", _username),
    ("userId", _numeric_string()),
    ("period", _enum(_ENUM_VALUES["period"])),
    ("sort", _enum(_ENUM_VALUES["sort"])),
    ("nsfw", _nsfw),
    ("browsingLevel", _coerced_number),
    ("tags", _tags),
    ("cursor", _cursor),
    ("type", _enum(_ENUM_VALUES["type"])),
    ("baseModels", _base_models),
    ("withMeta", _boolean),
    ("requiringMeta", _boolean),
    ("flatMeta", _boolean),
    ("withTags", _boolean),
)


def _model_id_problems(text: str) -> list[str]:
    """The messages of models/[id].ts's `z.coerce.number().int().gt(0).lte(2147483647)`."""
    number = _js_number(text)
    if math.isnan(number):
        return ["Invalid input: expected number, received NaN"]
    if math.isinf(number):
        return ["Invalid input: expected number, received number"]
    if not number.is_integer():
        return ["Invalid input: expected int, received number"]  # .int() stops the checks here
    problems = []
    if number > _MAX_SAFE_INTEGER:
        problems.append(f"Too big: expected int to be <{_MAX_SAFE_INTEGER}")
    elif number < -_MAX_SAFE_INTEGER:
        problems.append(f"Too small: expected int to be >-{_MAX_SAFE_INTEGER}")
    if number <= 0:
        problems.append("Too small: expected number to be >0")
    if number > MAX_MODEL_ID:
        problems.append(f"Too big: expected number to be <={MAX_MODEL_ID}")
    return problems


def _js_number(text: str) -> float:
    """JavaScript's Number(text), which the server's zod helpers apply to query values:
    " 7 " is 7, "" is 0, "0x10" is 16, "1e2" is 100, "Infinity" is infinite, "1_0" is NaN."""
    text = text.strip(_JS_WHITESPACE)
    if not text:
        return 0.0
    if _JS_DECIMAL.fullmatch(text):
        return float(text)
    if match := _JS_INFINITY.fullmatch(text):
        return -math.inf if match[1] == "-" else math.inf
    if match := _JS_RADIX_LITERAL.fullmatch(text):
        try:
            return float(int(match[2], {"x": 16, "o": 8, "b": 2}[match[1].lower()]))
        except ValueError:  # a digit beyond the base: 0b12
            return math.nan
        except OverflowError:
            return math.inf
    return math.nan


def _to_int32(number: float) -> int:
    """JavaScript's ToInt32, what a bitwise operator makes of a number."""
    if not math.isfinite(number):
        return 0
    value = int(number) % 2**32
    return value - 2**32 if value >= 2**31 else value


def _iso_time(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))


def _cdn_path(name: str) -> str:
    return f"/{CDN_KEY}/{name}/original=true/{name}.jpeg"


#: getEdgeUrl's options (src/client-utils/edge-url.ts 18-36).
_CDN_OPTIONS = frozenset(
    ("anim", "transcode", "width", "height", "original", "fit", "blur", "quality", "gravity")
    + ("metadata", "background", "gamma", "optimized", "skip")
)
#: The cacher's ladder, COMMON_IMAGE_WIDTHS (edge-url.ts 53).
_CACHER_WIDTHS = (96, 320, 450, 512, 800, 1200, 1600, 2200)
_CDN_QUALITY = 85


def _cdn_options(segment: str) -> dict[str, str] | None:
    """The options of a transform segment, or None if it is not one the CDN takes."""
    options = dict(part.partition("=")[::2] for part in segment.split(","))
    if not options.keys() <= _CDN_OPTIONS or "" in options.values():
        return None
    width = options.get("width")
    if width is not None and not (width.isdigit() and int(width) > 0):
        return None
    return options


def _cacher_width(width: str) -> int:
    # ServeImageMiddleware.cs as edge-url.ts 74-80 describes it: kept when on the ladder, else
    # the next step up, else (over the top) as asked.
    asked = int(width)
    return next((step for step in _CACHER_WIDTHS if step >= asked), asked)


def _resize(body: bytes, width: int, *, optimized: bool) -> tuple[bytes, str]:
    with Image.open(BytesIO(body)) as original:
        original.seek(0)
        alpha = "A" in original.getbands() or "transparency" in original.info
        picture = original.convert("RGBA" if alpha else "RGB")
    if picture.width > width:
        picture = picture.resize(
            (width, max(1, round(picture.height * width / picture.width))), Image.Resampling.LANCZOS
        )
    output = BytesIO()
    if optimized:
        picture.save(output, "WEBP", quality=_CDN_QUALITY)
        return output.getvalue(), "image/webp"
    if picture.mode == "RGBA":
        picture.save(output, "PNG")
        return output.getvalue(), "image/png"
    picture.save(output, "JPEG", quality=_CDN_QUALITY)
    return output.getvalue(), "image/jpeg"


def _path_of(path_or_url: str) -> str:
    """The decoded path of a URL or path: the key of faults and images."""
    return unquote(urlsplit(path_or_url).path) or "/"
