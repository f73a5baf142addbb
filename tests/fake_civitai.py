"""A fake Civitai for tests: the images API and the image CDN, real HTTP on loopback.

The API listens on 127.0.0.1 and the CDN on 127.0.0.2 (Linux routes all of 127/8 to
loopback): two hosts to a client, so a test can catch an API key leaking to the image
host. Both record every request (header names lower-cased, repeated headers joined by
", ") and inject faults per path, or per API page (by cursor). The real API's behaviour is
described in ``../shared/docs/civitai-api.md`` (the shared docs folder beside the repository).

    with FakeCivitai() as server:
        item = server.add_image_item(images.jpeg_rgb())
        server.inject(server.api_url, Fault.status(503, retry_after="1"))
"""

from __future__ import annotations

import collections
import http
import http.server
import json
import re
import socket
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

API_PATH = "/api/v1/images"
CDN_KEY = "xG1nkqKTMzGDvpLrqFT7WA"  # the account segment of Civitai media URLs
CURSOR_EPOCH_MS = 1733858354000
CHOICES = {
    "sort": {"Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random"},
    "period": {"AllTime", "Year", "Month", "Week", "Day"},
    "nsfw": {"None", "Soft", "Mature", "X", "true", "false"},
    "type": {"image", "video", "audio"},
}
#: The browsing levels an image can have, one bit each: PG, PG13, R, X, XXX, Blocked.
BROWSING_LEVELS = (1, 2, 4, 8, 16, 32)
#: nsfw -> the browsing levels it stands for (PG=1, PG13=2, R=4, X=8, XXX=16; X means all of them).
NSFW_BROWSING_LEVELS = {"None": 1, "false": 1, "Soft": 3, "Mature": 7, "X": 31, "true": 31}
INTEGER_PARAMETERS = ("modelId", "modelVersionId", "postId", "imageId", "userId", "browsingLevel", "page")
KNOWN_BASE_MODELS = {
    "SD 1.4",
    "SD 1.5",
    "SD 1.5 LCM",
    "SD 1.5 Hyper",
    "SD 2.0",
    "SD 2.1",
    "SDXL 1.0",
    "SDXL Turbo",
    "SDXL Lightning",
    "SDXL Hyper",
    "SD 3",
    "SD 3.5",
    "Pony",
    "Illustrious",
    "NoobAI",
    "Flux.1 D",
    "Flux.1 S",
    "Hunyuan Video",
    "Wan Video",
    "Other",
}
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_]*")
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

    kind: Literal["replace", "short", "reset", "slow"]
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


class _BadRequest(Exception):
    """A query the API refuses: the message goes in `{"error": ...}`; status 400 unless given."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
        with fake._lock:
            fake._requests.append(
                RecordedRequest(role, self.command, path, query, raw_query, headers, time.monotonic())
            )
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
            response = fake._api_response(path, raw_query)
        else:
            response = fake._cdn_response(path)
        if fault and fault.response:
            response = fault.response
        try:
            self._send(response, short=bool(fault and fault.kind == "short"))
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _send(self, response: _Response, short: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body[: len(response.body) // 2] if short else response.body)
        if short:
            self.close_connection = True  # the rest never comes: the client sees a cut body


class FakeCivitai:
    """The fake API (127.0.0.1) and CDN (127.0.0.2); as a context manager, starts and stops both.

    `cursor_style`: "offset" (`2|1733858354002`), "json" (`bdx:{"offset": 2, "k": "a b"}`) or
    "hostile" (a JSON cursor also holding `+&=#%;/?é`, which only a properly encoded query keeps).
    `next_page_host` ("host:port" or "scheme://host:port") replaces the API host in nextPage.
    `cursor_loop` answers every page with the first page's nextCursor. Setting the attribute
    `strip_next_cursor` leaves only nextPage in the metadata; `ignore_flat_meta` nests meta on
    the older query path even with flatMeta=true. `delay` slows every
    answer of both servers, `cdn_delay` overrides it for the CDN (both are attributes too).
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
        self.items: list[Any] = []  # served in this order; may be changed between requests
        self._images: dict[str, tuple[bytes, str]] = {}  # CDN path -> (body, Content-Type)
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
        **fields: Any,
    ) -> dict[str, Any]:
        """Append a Civitai-shaped item whose url serves `body` (unless None) and return it.

        `name` is the uuid segment of the URL (default: made from the id); the URL always ends
        in `.jpeg`, as Civitai's do. Content-Type: `content_type`, else guessed from the bytes.
        `fields` replace top-level keys (stats=..., meta=None, type="video", url=...).
        """
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
                "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(1725066707 + id)),
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
            item.update(fields)
            self.items.append(item)
            return item

    def add_raw_item(self, obj: Any) -> Any:
        """Append any JSON value as an item (for junk tests); filters let it through."""
        with self._lock:
            self.items.append(obj)
        return obj

    def inject(self, path_or_url: str, *faults: Fault) -> None:
        """Queue faults for a path (or URL, query ignored): one per request, then normal service."""
        with self._lock:
            self._faults.setdefault(_path_of(path_or_url), collections.deque()).extend(faults)

    def inject_page(self, cursor: str | None, *faults: Fault) -> None:
        """Queue faults for the API page asked for with `cursor` (None: the first page, which has none).

        They come before the faults queued with :meth:`inject` for the API path.
        """
        with self._lock:
            self._page_faults.setdefault(cursor, collections.deque()).extend(faults)

    def cursor_for(self, offset: int) -> str:
        """The nextCursor leading to the page that starts at item `offset` (cursors hold offsets)."""
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
        return [request for request in self.requests if request.host == "api"]

    def cdn_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.host == "cdn"]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _cdn_response(self, path: str) -> _Response:
        with self._lock:
            entry = self._images.get(path)
        if entry is None:
            return _Response(404, b"Not Found", "text/plain; charset=utf-8")
        return _Response(200, entry[0], entry[1], (("Cache-Control", "public, max-age=31536000"),))

    def _api_response(self, path: str, raw_query: str) -> _Response:
        if path != API_PATH:
            return _json_response(404, {"error": "Not found"})
        try:
            return _json_response(200, self._page(raw_query))
        except _BadRequest as error:
            return _json_response(error.status, {"error": str(error)})

    def _page(self, raw_query: str) -> dict[str, Any]:
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        query = dict(pairs)
        with self._lock:
            items = list(self.items)
        limit, numbers, base_models = _validate(query, items)
        page = numbers["page"]

        levels = _browsing_levels(query, numbers)
        tags = {int(tag) for tag in query.get("tags", "").split(",") if tag.strip()}

        def wanted(item: Any) -> bool:
            if not isinstance(item, dict):
                return True  # junk is served as is, whatever the filters
            version = numbers["modelVersionId"]
            level, kind = item.get("browsingLevel"), item.get("type")
            return all(
                (
                    not query.get("username") or item.get("username") == query["username"],
                    numbers["userId"] is None or item.get("userId") == numbers["userId"],
                    numbers["postId"] is None or item.get("postId") == numbers["postId"],
                    numbers["imageId"] is None or item.get("id") == numbers["imageId"],
                    version is None or version in (item.get("modelVersionIds") or []),
                    not base_models or item.get("baseModel") in base_models,
                    # Junk levels and types are served as they are, like any junk.
                    "type" not in query or kind not in CHOICES["type"] or kind == query["type"],
                    type(level) is not int or level not in BROWSING_LEVELS or bool(level & levels),
                    not tags or bool(tags & _tag_ids(item)),
                )
            )

        selected = [item for item in items if wanted(item)]
        if "cursor" in query:
            offset = self._decode_cursor(query["cursor"])
        else:
            offset = max(page - 1, 0) * limit if page else 0
        flat = query.get("flatMeta") == "true" and not self.ignore_flat_meta
        served = [_as_served(item, query, numbers, flat) for item in selected[offset : offset + limit]]
        if self.cursor_loop:
            next_cursor = query.get("cursor") or self._encode_cursor(offset + limit)
        elif limit and offset + limit < len(selected):
            next_cursor = self._encode_cursor(offset + limit)
        else:
            return {"items": served, "metadata": {}}  # the end: the keys are absent, not null
        next_query = urlencode([pair for pair in pairs if pair[0] != "cursor"] + [("cursor", next_cursor)])
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
        """The offset in `cursor`, which must be exactly one this server made (else 400)."""
        offset: Any = -1
        if cursor.startswith("bdx:"):
            try:
                offset = json.loads(cursor[4:]).get("offset", -1)
            except (ValueError, AttributeError):
                pass
        elif match := re.fullmatch(r"(\d+)\|(\d+)", cursor):
            offset = int(match[1])
        if not isinstance(offset, int) or offset < 0 or self._encode_cursor(offset) != cursor:
            raise _BadRequest(f"cursor: Invalid cursor {cursor!r}")
        return offset


def _validate(query: dict[str, str], items: list[Any]) -> tuple[int, dict[str, int | None], list[str]]:
    """(limit, integer parameters, base models) of a query, or _BadRequest as the API would answer."""

    def integer(name: str, default: int | None) -> int | None:
        try:
            return int(query[name]) if name in query else default
        except ValueError:
            raise _BadRequest(f"{name}: Expected number, received string") from None

    limit = integer("limit", 100)
    if limit is None or not 0 <= limit <= 200:
        raise _BadRequest("limit: Number must be between 0 and 200")
    numbers = {name: integer(name, None) for name in INTEGER_PARAMETERS}
    for name, allowed in CHOICES.items():
        if name in query and query[name] not in allowed:
            raise _BadRequest(f"{name}: Invalid enum value. Expected {' | '.join(sorted(allowed))}")
    if not USERNAME_PATTERN.fullmatch(query.get("username", "")):
        raise _BadRequest("username: Invalid username")
    if not all(tag.strip().isdigit() for tag in query.get("tags", "").split(",") if tag):
        raise _BadRequest("tags: Expected number")
    base_models = [name.strip() for name in query.get("baseModels", "").split(",") if name.strip()]
    known = KNOWN_BASE_MODELS | {
        item["baseModel"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("baseModel"), str)
    }
    for name in base_models:
        if name not in known:  # the models the tests' items use count as known
            raise _BadRequest(f"baseModels: Invalid enum value '{name}'")
    if numbers["page"] is not None and numbers["page"] * limit > 1000:
        raise _BadRequest("Too many pages: use cursors instead", status=429)
    return limit, numbers, base_models


def _browsing_levels(query: dict[str, str], numbers: dict[str, int | None]) -> int:
    """The browsingLevel bitmask a query asks for: browsingLevel, else from nsfw, else PG only."""
    if numbers["browsingLevel"] is not None:
        return numbers["browsingLevel"]
    return NSFW_BROWSING_LEVELS.get(query.get("nsfw", "None"), 1)


def _tag_ids(item: dict[str, Any]) -> set[Any]:
    tags = item.get("tags")
    return {tag.get("id") for tag in tags if isinstance(tag, dict)} if isinstance(tags, list) else set()


def _as_served(item: Any, query: dict[str, str], numbers: dict[str, int | None], flat: bool) -> Any:
    """An item as the API answers it: meta and tags only when asked for, meta flat or nested."""
    if not isinstance(item, dict):
        return item
    served = dict(item)
    if query.get("withTags") != "true":
        served.pop("tags", None)
    if "meta" not in served:
        return served
    if query.get("withMeta") != "true":  # the real default: no meta unless asked for
        served["meta"] = None
    elif not flat and _older_query_path(numbers):
        served["meta"] = {"id": item.get("id"), "meta": item["meta"]}
    return served


def _older_query_path(numbers: dict[str, int | None]) -> bool:
    """Whether the real server answers this query from its database rather than its search index."""
    return numbers["imageId"] is not None or (
        numbers["modelId"] is not None and numbers["modelVersionId"] is None
    )


def _cdn_path(name: str) -> str:
    return f"/{CDN_KEY}/{name}/original=true/{name}.jpeg"


def _path_of(path_or_url: str) -> str:
    """The decoded path of a URL or path: the key of faults and images."""
    return unquote(urlsplit(path_or_url).path) or "/"
