"""An HTTPS proxy on loopback that stands in for the internet: a crawl of ``https://civitai.red``
goes through it (``https_proxy``, which Scrapy's HttpProxyMiddleware honours) and never leaves
the machine.

It records the host of every ``CONNECT``. Without ``forward_to`` it refuses each tunnel (403),
so nothing is asked of any host. With it, it plays the host itself: it accepts the tunnel,
speaks TLS with a self-signed certificate (Scrapy does not verify certificates by default),
records each request inside with its headers, and answers it with the fake Civitai's answer to
the same path. A test then sees which host each request was meant for, and what it carried.
"""

from __future__ import annotations

import datetime
import http.client
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Headers of a hop, not of the request: not forwarded.
_HOP_HEADERS = frozenset({"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding"})


@dataclass(frozen=True)
class TunnelledRequest:
    #: The tunnel's target, ``host:port``, as the client's CONNECT named it.
    tunnel: str
    path: str
    #: Header names lower-cased.
    headers: dict[str, str]


class RecordingProxy:
    def __init__(self, folder: Path, forward_to: str | None = None) -> None:
        """``folder`` keeps the certificate; ``forward_to``: an ``http://host:port`` that answers
        the requests inside the tunnels (None: every tunnel is refused)."""
        self.forward_to = urlsplit(forward_to) if forward_to else None
        self.tunnels: list[str] = []
        self.connect_headers: list[dict[str, str]] = []
        self.requests: list[TunnelledRequest] = []
        self._lock = threading.Lock()
        self._context = _server_context(folder)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02})

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_CONNECT(self) -> None:
        proxy: RecordingProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy._lock:
            proxy.tunnels.append(self.path)
            proxy.connect_headers.append({name.lower(): value for name, value in self.headers.items()})
        self.close_connection = True
        if proxy.forward_to is None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            tls = proxy._context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        handler = type("_Tunnel", (_TunnelHandler,), {"tunnel": self.path, "proxy": proxy})
        with tls:
            handler(tls, self.client_address, self.server)


class _TunnelHandler(BaseHTTPRequestHandler):
    """The requests inside one tunnel, answered by the fake Civitai."""

    protocol_version = "HTTP/1.1"
    tunnel: str
    proxy: RecordingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.proxy._lock:
            self.proxy.requests.append(TunnelledRequest(self.tunnel, self.path, headers))
        target = self.proxy.forward_to
        assert target is not None and target.hostname is not None
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            forwarded = {name: value for name, value in headers.items() if name not in _HOP_HEADERS}
            connection.request("GET", self.path, headers=forwarded)
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _server_context(folder: Path) -> ssl.SSLContext:
    """A TLS server context with a new self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recording-proxy.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "proxy-cert.pem", folder / "proxy-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context
