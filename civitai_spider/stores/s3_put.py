"""The S3 store's upload of bytes in memory, lean: signed by botocore's signer, sent with ``http.client``.

botocore's ``put_object`` spends about 0.75 ms of CPU per request outside the network
(endpoint rules, parameter checks, a dozen events, its header classes, urllib3, the response
parser): four requests per image (the image and its metadata files) made the crawl process's CPU
per saved JPEG 3.4 times the folder's. An upload that goes well needs none of that: this sends
the request botocore would, a PUT with ``Content-Type``, ``x-amz-acl`` and the body's CRC32 in
``x-amz-checksum-crc32`` (the checksum botocore itself sends by default), signed by botocore's own
SigV4 signer (:class:`botocore.auth.S3SigV4Auth`, with the client's config and credentials: the
signature is not code of ours), over a kept-alive connection of the upload thread's own.

The body is not hashed for the signature (``UNSIGNED-PAYLOAD``, from the client's
``payload_signing_enabled=False``): its integrity rests on the CRC32, which the server checks (a
body changed on the way is refused with ``BadDigest``); SeaweedFS, measured, does not check a
signed payload's SHA-256 at all, and SHA-256 costs three times a CRC32.

Only a 200 counts: anything else (another status, an error on the way) is for the caller to
hand to botocore, which retries it with its own rules and words the error. Where botocore's
request would differ in what matters (a proxy, a session's custom signer), :func:`lean_put`
gives None and every upload goes through botocore.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import zlib
from typing import Any
from urllib.parse import quote, urlsplit

#: A key whose URL botocore builds once: the URL of any other key is the same with its name.
_PROBE_KEY = "civitai-spider-url-probe"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class LeanPut:
    """PUTs of bytes to ``base_url`` + key (the bucket's URL as botocore builds it), signed by
    botocore's ``S3SigV4Auth`` with ``config`` (the client's) and ``credentials``."""

    def __init__(
        self,
        base_url: str,
        region: str,
        credentials: Any,
        config: Any,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        from botocore.auth import S3SigV4Auth  # noqa: PLC0415 - only a bucket needs botocore
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        self._signer_class, self._request_class = S3SigV4Auth, AWSRequest
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        default_port = _DEFAULT_PORTS[parts.scheme]
        self._address = parts.hostname or "", parts.port or default_port
        # The Host header, sent and signed: no port when it is the scheme's own (as botocore and
        # http.client write it); netloc keeps an IPv6 address's brackets.
        self._host = parts.netloc.lower().removesuffix(f":{default_port}")
        self._origin, self._path = f"{parts.scheme}://{parts.netloc}", parts.path
        self._region, self._credentials, self._config = region, credentials, config
        self._timeout, self._ssl_context = timeout, ssl_context
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def path(self, key: str) -> str:
        """The URL path of ``key``, quoted as botocore quotes an object key."""
        return self._path + quote(key, safe="/~")

    def url(self, key: str) -> str:
        return self._origin + self.path(key)

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> int:
        """PUT ``data`` as ``key`` with ``headers`` (lower-case names); the answer's status.

        Raises what botocore's signer, ``http.client`` and the socket raise; the connection is
        then dropped, the next upload of this thread opens a new one.
        """
        path = self.path(key)
        signed = self.sign(path, data, headers)
        connection = self._connection()
        try:
            connection.request("PUT", path, body=data, headers=signed)
            response = connection.getresponse()
            response.read()  # all of it, so that the connection serves the next upload
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()  # http.client reopens it for the next request
        return response.status

    def sign(self, path: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` with the body's CRC32, the Host and what botocore's signer adds, for a PUT
        of ``data`` to ``path`` (already quoted: the signer signs the path as it is given, and
        it is sent as it is)."""
        checksum = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        request = self._request_class(
            "PUT",
            self._origin + path,
            headers={**headers, "host": self._host, "x-amz-checksum-crc32": checksum},
            data=data,
        )
        # The client's config: its s3={"payload_signing_enabled": False} is what makes the
        # signer write UNSIGNED-PAYLOAD rather than hash the body (which it does over http).
        request.context["client_config"] = self._config
        # Frozen once per request, as botocore's own RequestSigner does: temporary credentials
        # that expire are refreshed here.
        credentials = self._credentials.get_frozen_credentials()
        self._signer_class(credentials, "s3", self._region).add_auth(request)
        signed = dict(request.headers.items())
        signed["content-length"] = str(len(data))  # not signed, as botocore's is not
        return signed

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            host, port = self._address
            if self._https:
                connection = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout, context=self._ssl_context
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


def lean_put(client: Any, bucket: str, credentials: Any, verify: bool | str) -> LeanPut | None:
    """The lean PUT for ``client``'s bucket, or None where botocore's request would differ in
    what matters (a proxy to go through, a signature other than SigV4) or cannot be made
    (no credentials). Builds one URL through botocore (no request is sent)."""
    config = client.meta.config
    if credentials is None or config.proxies or config.signature_version not in (None, "s3v4"):
        return None
    if config.client_cert:
        return None
    try:
        url = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
    except Exception:  # no credentials after all, a bucket name botocore refuses...: botocore's to say
        return None
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.path.endswith(_PROBE_KEY) or _uses_proxy(url):
        return None
    base_url = f"{parts.scheme}://{parts.netloc}{parts.path.removesuffix(_PROBE_KEY)}"
    context = _ssl_context(verify) if parts.scheme == "https" else None
    timeout = max(config.connect_timeout, config.read_timeout)
    return LeanPut(
        base_url, client.meta.region_name, credentials, config, timeout=timeout, ssl_context=context
    )


def _uses_proxy(url: str) -> bool:
    """Whether botocore goes through a proxy of the environment (``HTTPS_PROXY``...) for ``url``."""
    from botocore.utils import get_environ_proxies  # noqa: PLC0415 - only a bucket needs botocore

    return bool(get_environ_proxies(url))


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """What botocore trusts: ``verify`` as botocore resolved it (False, a CA bundle, True: its own)."""
    from botocore.httpsession import get_cert_path  # noqa: PLC0415 - only a bucket needs botocore

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = get_cert_path(verify)  # type: ignore[arg-type]  # the stubs say bool; a path is fine
    return ssl.create_default_context(cafile=cafile)
