"""Tests of :mod:`civitai_spider.stores.s3` against a real S3 server (SeaweedFS, tests/support/servers.py).

What the store sends is seen in the objects the server keeps and, for the headers, on the wire
(:class:`Wire`, a TCP proxy on loopback that also corrupts bodies): nothing here stands in for the
server. The tests share
one bucket, each under names of its own: a bucket's first object costs the server a volume.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import threading
import zlib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from scrapy.settings import Settings

from civitai_spider.local_files import create_temporary
from civitai_spider.stores.base import StoreError
from civitai_spider.stores.s3 import PART_BYTES, S3Store, _verify, content_type
from civitai_spider.stores.s3_put import LeanPut
from tests.support.servers import SeaweedS3Server, bucket_objects, free_ports, unique_bucket_name

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedS3Server) -> Iterator[str]:
    """One bucket for this module's tests (conftest's ``bucket`` makes one per test)."""
    name = s3_server.create_bucket(unique_bucket_name("s3-store"))
    yield name
    s3_server.delete_bucket(name, missing_ok=True)


@pytest.fixture
def prefix() -> str:
    """A folder of the shared bucket that no other test writes to."""
    return f"civitai-{secrets.token_hex(4)}/"


def s3_settings(s3: SeaweedS3Server, bucket: str, prefix: str, **extra: Any) -> Settings:
    return Settings({**s3.settings(bucket, prefix), **extra})


def opened(s3: SeaweedS3Server, bucket: str, prefix: str, **extra: Any) -> closing[S3Store]:
    return closing(S3Store.build(s3_settings(s3, bucket, prefix, **extra)))


def botocore_requests(store: S3Store) -> list[str]:
    """The operations botocore's client sends from now on (the lean PUTs are not among them)."""
    sent: list[str] = []
    store.client.meta.events.register(
        "before-send.s3", lambda event_name, **_: sent.append(event_name.rsplit(".", 1)[1])
    )
    return sent


def sent_headers(store: S3Store) -> list[tuple[str, dict[str, str]]]:
    """(operation, lower-cased headers) of every request botocore's client sends from now on."""
    sent: list[tuple[str, dict[str, str]]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        headers = {
            name.lower(): value.decode() if isinstance(value, bytes) else value
            for name, value in request.headers.items()
        }
        sent.append((event_name.rsplit(".", 1)[1], headers))

    store.client.meta.events.register("before-send.s3", record)
    return sent


class Wire:
    """A TCP proxy on loopback to the S3 server that records the head of every request (method,
    path, lower-cased headers) and, while ``corrupt`` is set, changes the first byte of every
    occurrence of :attr:`MARK` on the way, as a faulty network or memory would."""

    MARK = b"<bytes-to-corrupt>"

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.corrupt = False
        self.corrupted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target)
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _down(self, source: socket.socket, sink: socket.socket) -> None:
        with source, sink:
            while data := _received(source):
                sink.sendall(data)

    def _up(self, source: socket.socket, sink: socket.socket) -> None:
        buffer, body_left = b"", 0
        with source, sink:
            while data := _received(source):
                if self.corrupt and self.MARK in data:
                    self.corrupted += data.count(self.MARK)
                    data = data.replace(self.MARK, b"!" + self.MARK[1:])
                # Request heads, told apart from the bodies by their Content-Length; recorded
                # before they go on, so that a request answered is a request recorded.
                buffer += data
                while buffer:
                    if body_left:
                        skipped = min(body_left, len(buffer))
                        buffer, body_left = buffer[skipped:], body_left - skipped
                        continue
                    head, found, rest = buffer.partition(b"\r\n\r\n")
                    if not found:
                        break
                    request_line, *lines = head.decode("latin-1").split("\r\n")
                    headers = {
                        name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines)
                    }
                    method, path, _ = request_line.split(" ", 2)
                    self.requests.append((method, path, headers))
                    buffer, body_left = rest, int(headers.get("content-length", 0))
                    # A mark split between two reads is not corrupted: the tests' bodies are small.
                sink.sendall(data)


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def wire(s3_server: SeaweedS3Server) -> Iterator[Wire]:
    proxy = Wire(("127.0.0.1", s3_server.ports["s3"]))
    yield proxy
    proxy.close()


def through(wire: Wire, s3: SeaweedS3Server, bucket: str, prefix: str, **extra: Any) -> closing[S3Store]:
    """A store whose requests go through ``wire``."""
    return opened(s3, bucket, prefix, AWS_ENDPOINT_URL=wire.url, **extra)


def puts(wire: Wire) -> list[dict[str, str]]:
    """The headers of the PUTs seen on the wire."""
    return [headers for method, _, headers in wire.requests if method == "PUT"]


@pytest.fixture
def no_aws_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or endpoint from the environment, ~/.aws or EC2 metadata; one attempt per request."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty-aws-file"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # an unreachable endpoint fails at once


# --- names and bytes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after_bucket", "folder"),
    [
        ("/{p}", "{p}/"),
        ("/{p}/", "{p}/"),
        ("/", ""),
        ("", ""),
        ("/sets/{p}/civitai", "sets/{p}/civitai/"),
        ("//sets/{p}//", "sets/{p}/"),
    ],
)
def test_prefix_of_the_uri(s3_server: SeaweedS3Server, bucket: str, after_bucket: str, folder: str) -> None:
    # No prefix puts the objects at the top of the bucket: a name of this test's own there.
    unique = secrets.token_hex(4)
    uri, folder, name = (
        f"s3://{bucket}{after_bucket.format(p=unique)}",
        folder.format(p=unique),
        f"{unique}.jpg",
    )
    with opened(s3_server, bucket, "", IMAGES_STORE=uri) as store:
        assert store.prefix == folder
        store.put(name, JPEG)
        assert store.describe(name) == f"s3://{bucket}/{folder}{name}"

    assert bucket_objects(s3_server, bucket, folder + name) == {"": (JPEG, "image/jpeg")}


CONTENT_TYPES = {
    "7.jpg": "image/jpeg",
    "7.png": "image/png",
    "7.mp4": "video/mp4",
    "7.webm": "video/webm",
    "7.mkv": "video/x-matroska",
    "7_meta.json": "application/json",
    "7_pos-prompt.txt": "text/plain; charset=utf-8",
    "7.JPG": "image/jpeg",
    # What a resizing CDN may send (CIVITAI_IMAGE_WIDTH), stored as it came.
    "7.webp": "image/webp",
    "7.avif": "image/avif",
    "7.gif": "image/gif",
    "7.bmp": "application/octet-stream",
    "7.tar.gz": "application/octet-stream",
    "README": "application/octet-stream",
}


@pytest.mark.parametrize(("name", "expected"), CONTENT_TYPES.items())
def test_content_type_by_extension(name: str, expected: str) -> None:
    assert content_type(name) == expected


def test_put_stores_the_bytes_with_their_content_type(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire
) -> None:
    files = {name: f"{name}: ".encode() + JPEG for name in CONTENT_TYPES}
    with through(wire, s3_server, bucket, prefix) as store:
        for name, data in files.items():
            store.put(name, data)

    assert [headers["content-type"] for headers in puts(wire)] == list(CONTENT_TYPES.values())
    objects = bucket_objects(s3_server, bucket, prefix)
    assert {name: data for name, (data, _) in objects.items()} == files
    # SeaweedFS guesses a type of its own for application/octet-stream (.bmp, .tar.gz): only the
    # types this project stores are compared as the server keeps them.
    assert {name: objects[name][1] for name in list(CONTENT_TYPES)[:11]} == dict(
        list(CONTENT_TYPES.items())[:11]
    )


def test_save_uploads_in_the_stores_threads(s3_server: SeaweedS3Server, bucket: str, prefix: str) -> None:
    threads: dict[str, str] = {}

    class Watched(S3Store):
        def put(self, name: str, data: bytes) -> None:
            threads[name] = threading.current_thread().name
            super().put(name, data)

    files = {f"{image_id}.png": b"\x89PNG" + bytes([image_id]) * 100 for image_id in range(12)}
    files["1_meta.json"] = b'{"id": 1}'
    settings = s3_settings(s3_server, bucket, prefix, AWS_MAX_POOL_CONNECTIONS="3")
    with closing(Watched.build(settings)) as store:
        asyncio.run(store.save(files))

    assert sorted(threads) == sorted(files)
    # Never the calling (reactor) thread; at most AWS_MAX_POOL_CONNECTIONS threads.
    assert threading.current_thread().name not in threads.values()
    assert all(name.startswith("s3-upload") for name in threads.values()), threads
    assert len(set(threads.values())) <= 3
    assert bucket_objects(s3_server, bucket, prefix) == {
        name: (data, content_type(name)) for name, data in files.items()
    }


def test_copy_keeps_the_bytes_and_the_content_type(
    s3_server: SeaweedS3Server, bucket: str, prefix: str
) -> None:
    with opened(s3_server, bucket, prefix) as store:
        store.put("7.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(500))
        asyncio.run(store.copy("7.mp4", "8.mp4"))

    objects = bucket_objects(s3_server, bucket, prefix)
    assert objects["8.mp4"] == objects["7.mp4"]
    assert objects["8.mp4"][1] == "video/mp4"


def test_copy_of_a_missing_object_is_a_store_error(
    s3_server: SeaweedS3Server, bucket: str, prefix: str
) -> None:
    with opened(s3_server, bucket, prefix) as store, pytest.raises(StoreError) as caught:
        asyncio.run(store.copy("missing.jpg", "8.jpg"))

    assert str(caught.value).startswith(f"copy to s3://{bucket}/{prefix}8.jpg failed: ")
    assert bucket_objects(s3_server, bucket, prefix) == {}


# --- a file too large for memory (put_file) ---------------------------------------------------


def spooled_file(folder: Path, data: bytes) -> str:
    """A temporary file in ``folder``, as the download handler leaves a video there."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, path = create_temporary(folder / "7.video")
    with open(descriptor, "wb") as file:
        file.write(data)
    return path


def test_put_file_uploads_a_large_file_in_parts_and_removes_it(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * PART_BYTES + 12345)  # three parts, the last one short
    path = spooled_file(tmp_path, data)
    with opened(s3_server, bucket, prefix) as store:
        sent = sent_headers(store)
        asyncio.run(store.save_file("7.mp4", path))

    operations = [operation for operation, _ in sent]
    assert operations == ["CreateMultipartUpload"] + ["UploadPart"] * 3 + ["CompleteMultipartUpload"]
    assert sent[0][1]["content-type"] == "video/mp4"
    assert bucket_objects(s3_server, bucket, prefix) == {"7.mp4": (data, "video/mp4")}
    assert not os.path.exists(path)


def test_put_file_sends_a_small_file_in_one_put(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, tmp_path: Path, wire: Wire
) -> None:
    data = b"\x1a\x45\xdf\xa3" + os.urandom(5000)
    path = spooled_file(tmp_path, data)
    with through(wire, s3_server, bucket, prefix) as store:
        by_botocore = botocore_requests(store)
        store.put_file("7.webm", path)

    assert by_botocore == []  # bytes in memory by then: the lean PUT
    assert [(method, sent.rsplit("/", 1)[1]) for method, sent, _ in wire.requests] == [("PUT", "7.webm")]
    assert bucket_objects(s3_server, bucket, prefix) == {"7.webm": (data, "video/webm")}
    assert not os.path.exists(path)


def test_a_multipart_upload_that_fails_is_aborted_and_its_file_removed(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, tmp_path: Path
) -> None:
    path = spooled_file(tmp_path, os.urandom(PART_BYTES + 1))
    with opened(s3_server, bucket, prefix) as store:
        sent = sent_headers(store)
        upload_part = store.client.upload_part

        def second_part_fails(**arguments: Any) -> Any:
            if arguments["PartNumber"] == 2:
                raise ConnectionResetError("the connection broke")
            return upload_part(**arguments)

        store.client.upload_part = second_part_fails
        with pytest.raises(StoreError) as caught:
            store.put_file("7.mp4", path)

    assert str(caught.value) == (
        f"upload of s3://{bucket}/{prefix}7.mp4 failed: ConnectionResetError: the connection broke"
    )
    assert [operation for operation, _ in sent] == [
        "CreateMultipartUpload",
        "UploadPart",
        "AbortMultipartUpload",
    ]
    assert bucket_objects(s3_server, bucket, prefix) == {}
    assert s3_server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []
    assert not os.path.exists(path)


def test_the_spool_is_the_log_folder_and_a_killed_runs_leftovers_go_at_open(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    leftover = spooled_file(logs, b"half a video")
    dead = Path(leftover).with_name(Path(leftover).name.replace(f"-{os.getpid()}-", "-999999999-"))
    os.rename(leftover, dead)  # as a process that no longer runs left it
    (logs / "error_log.txt").write_text("kept\n")
    with opened(s3_server, bucket, prefix, CIVITAI_LOG_DIR=str(logs)) as store:
        assert store.spool_directory() == logs
        store.open()

    assert sorted(path.name for path in logs.iterdir()) == ["error_log.txt"]


# --- ACL ---------------------------------------------------------------------------------------


def test_the_default_acl_is_private_and_accepted(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire
) -> None:
    # Scrapy's default IMAGES_STORE_S3_ACL: "private"
    with through(wire, s3_server, bucket, prefix) as store:
        store.put("7.jpg", JPEG)
        asyncio.run(store.copy("7.jpg", "8.jpg"))
        with store.writing("9.jpg") as file:  # a file's upload: botocore's put_object
            file.write(JPEG)

    assert [(headers.get("x-amz-copy-source", ""), headers.get("x-amz-acl")) for headers in puts(wire)] == [
        ("", "private"),
        (f"{bucket}/{prefix}7.jpg", "private"),
        ("", "private"),
    ]
    assert sorted(bucket_objects(s3_server, bucket, prefix)) == ["7.jpg", "8.jpg", "9.jpg"]


def test_an_empty_acl_sends_none(s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire) -> None:
    with through(wire, s3_server, bucket, prefix, IMAGES_STORE_S3_ACL="") as store:
        store.put("7.jpg", JPEG)
        asyncio.run(store.copy("7.jpg", "8.jpg"))
        with store.writing("9.jpg") as file:
            file.write(JPEG)

    assert len(puts(wire)) == 3
    assert all("x-amz-acl" not in headers for headers in puts(wire))
    assert sorted(bucket_objects(s3_server, bucket, prefix)) == ["7.jpg", "8.jpg", "9.jpg"]


def test_uploads_send_their_body_without_waiting_for_100_continue(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire
) -> None:
    # botocore's default would hold each body back for the server's interim answer: a round
    # trip more per upload (the benchmark's S3 runs: 1.13x-1.36x the images/s without it).
    with through(wire, s3_server, bucket, prefix) as store:
        store.put("7.jpg", JPEG)
        asyncio.run(store.save({"7_meta.json": b"{}", "7_pos-prompt.txt": b"a lighthouse"}))
        with store.writing("8.jpg") as file:
            file.write(JPEG)

    assert len(puts(wire)) == 4
    assert all("expect" not in headers for headers in puts(wire))
    assert sorted(bucket_objects(s3_server, bucket, prefix)) == [
        "7.jpg",
        "7_meta.json",
        "7_pos-prompt.txt",
        "8.jpg",
    ]


# --- integrity and the lean PUT ----------------------------------------------------------------


def test_uploads_of_bytes_skip_botocore_and_carry_the_bodys_crc32(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire
) -> None:
    files = {"7.jpg": JPEG, "7_meta.json": b'{"id": 7}', "7_pos-prompt.txt": b"a lighthouse"}
    with through(wire, s3_server, bucket, prefix) as store:
        by_botocore = botocore_requests(store)
        asyncio.run(store.save(files))
        with store.writing("8.jpg") as file:
            file.write(JPEG)

    assert by_botocore == ["PutObject"]  # the file's; the bytes went lean
    sent = {path.rsplit("/", 1)[1]: headers for method, path, headers in wire.requests if method == "PUT"}
    for name, data in {**files, "8.jpg": JPEG}.items():
        crc32 = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        assert sent[name]["x-amz-checksum-crc32"] == crc32, name
        # No SHA-256 of the body: the CRC32 is what the server checks.
        assert sent[name]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD", name
    assert bucket_objects(s3_server, bucket, prefix) == {
        name: (data, content_type(name)) for name, data in {**files, "8.jpg": JPEG}.items()
    }


@pytest.mark.parametrize("how", ["bytes", "file"])
def test_a_body_corrupted_on_the_way_is_refused(
    how: str, s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire
) -> None:
    data = JPEG + Wire.MARK + JPEG
    with through(wire, s3_server, bucket, prefix, AWS_MAX_ATTEMPTS="2") as store:
        store.put("1.jpg", data)  # through untouched: stored
        wire.corrupt = True
        with pytest.raises(StoreError) as caught:
            if how == "bytes":
                store.put("2.jpg", data)
            else:
                with store.writing("2.jpg") as file:
                    file.write(data)

    assert wire.corrupted >= 1
    assert str(caught.value).startswith(f"upload of s3://{bucket}/{prefix}2.jpg failed: ")
    assert "BadDigest" in str(caught.value)
    assert bucket_objects(s3_server, bucket, prefix) == {"1.jpg": (data, "image/jpeg")}


#: Keys botocore quotes in the URL (a space, non-ASCII, ``+``, ``%``...): the server checks the
#: signature of the path as it arrived, so what is signed must be what is sent.
AWKWARD_NAMES = ["a b/7.jpg", "île ~ été.jpg", "7+8=15.json", "100%;&$@,!'()*.txt"]


def test_keys_that_need_quoting_are_signed_as_sent_and_stored_under_their_names(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, wire: Wire
) -> None:
    files = {name: name.encode() + JPEG for name in AWKWARD_NAMES}
    with through(wire, s3_server, bucket, prefix) as store:
        by_botocore = botocore_requests(store)
        for name, data in files.items():
            store.put(name, data)
        botocore_urls = [
            store.client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": prefix + name})
            for name in files
        ]

    assert by_botocore == []  # every one lean, and taken (a signature the server refused: 403, botocore's)
    # The path on the wire is the one botocore's client would have sent.
    assert [sent for method, sent, _ in wire.requests if method == "PUT"] == [
        urlsplit(url).path for url in botocore_urls
    ]
    assert {name: data for name, (data, _) in bucket_objects(s3_server, bucket, prefix).items()} == files


@pytest.mark.parametrize(
    ("endpoint", "style", "base"),
    [
        ("https://s3.example.com", "path", "https://s3.example.com/my-bucket/"),
        ("https://s3.example.com", "virtual", "https://my-bucket.s3.example.com/"),
        ("http://127.0.0.1:8333", "path", "http://127.0.0.1:8333/my-bucket/"),
        ("https://[::1]:8443", "path", "https://[::1]:8443/my-bucket/"),
        # AWS itself: botocore presigns to the global name, which AWS routes to the bucket's region.
        (None, "auto", "https://my-bucket.s3.amazonaws.com/"),
    ],
    ids=["path", "virtual", "port", "ipv6", "aws"],
)
def test_the_lean_url_of_a_key_is_botocores(
    endpoint: str | None, style: str, base: str, no_aws_environment: None
) -> None:
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import Credentials

    from civitai_spider.stores.s3_put import lean_put

    client = botocore.session.get_session().create_client(
        "s3",
        aws_access_key_id="AKEXAMPLE",
        aws_secret_access_key="secret",
        endpoint_url=endpoint,
        region_name="eu-west-3",
        config=Config(s3={"addressing_style": style, "payload_signing_enabled": False}),
    )
    with closing(client):
        lean = lean_put(client, "my-bucket", Credentials("AKEXAMPLE", "secret"), True)
        assert lean is not None
        for name in ["civitai/7.jpg", *AWKWARD_NAMES]:
            url = client.generate_presigned_url("put_object", Params={"Bucket": "my-bucket", "Key": name})
            expected = urlsplit(url)
            assert lean.url(name) == f"{expected.scheme}://{expected.netloc}{expected.path}", name
        assert lean.url("7.jpg") == base + "7.jpg"
        lean.close()


@pytest.mark.parametrize("token", [None, "a-session-token"])
def test_the_signed_headers_are_botocores_with_the_crc32_and_an_unsigned_payload(token: str | None) -> None:
    from botocore.config import Config
    from botocore.credentials import Credentials

    credentials = Credentials("AKEXAMPLE", "secret/example+key", token)
    config = Config(s3={"payload_signing_enabled": False})
    # Plain http: without the client's config botocore's signer would hash the body.
    lean = LeanPut(
        "http://127.0.0.1:8333/my-bucket/", "eu-west-3", credentials, config, timeout=1, ssl_context=None
    )
    data = "une île ~ +".encode()

    signed = lean.sign(lean.path("a b/7.txt"), data, {"content-type": "text/plain", "x-amz-acl": "private"})

    crc32 = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert signed["x-amz-checksum-crc32"] == crc32
    assert signed["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert signed["host"] == "127.0.0.1:8333"
    assert signed["content-length"] == str(len(data))
    assert signed.get("X-Amz-Security-Token") == token
    authorization = signed["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKEXAMPLE/")
    assert "/eu-west-3/s3/aws4_request, " in authorization
    signed_names = ["content-type", "host", "x-amz-acl", "x-amz-checksum-crc32", "x-amz-content-sha256"]
    signed_names += ["x-amz-date"] + (["x-amz-security-token"] if token else [])
    assert f"SignedHeaders={';'.join(signed_names)}, " in authorization
    assert "secret/example+key" not in repr(signed)


def test_refreshed_credentials_sign_the_next_upload(
    s3_server: SeaweedS3Server, bucket: str, prefix: str
) -> None:
    from botocore.credentials import RefreshableCredentials

    refreshed = []

    def refresh() -> dict[str, str]:
        refreshed.append(True)
        return {
            "access_key": s3_server.access_key,
            "secret_key": s3_server.secret_key,
            "token": "",
            "expiry_time": "2999-01-01T00:00:00Z",
        }

    # Temporary credentials that have expired, with a secret the server refuses: only those
    # refreshed before the upload are taken (a 403 would hand the upload to botocore).
    expired = RefreshableCredentials.create_from_metadata(
        {
            "access_key": s3_server.access_key,
            "secret_key": "an-expired-secret-5c2a",
            "token": "",
            "expiry_time": "2000-01-01T00:00:00Z",
        },
        refresh,
        "test",
    )
    with opened(s3_server, bucket, prefix) as store:
        assert store._lean is not None
        store._lean._credentials = expired
        by_botocore = botocore_requests(store)
        store.put("7.jpg", JPEG)

        assert refreshed and by_botocore == []
        assert store._lean is not None
    assert sorted(bucket_objects(s3_server, bucket, prefix)) == ["7.jpg"]


def test_a_lean_upload_the_server_refuses_is_botocores_from_then_on(
    s3_server: SeaweedS3Server, bucket: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from botocore.credentials import Credentials

    with opened(s3_server, bucket, prefix) as store:
        # A lean PUT signed with another secret: refused (403), where botocore's is taken.
        assert store._lean is not None
        store._lean._credentials = Credentials(s3_server.access_key, "not-the-secret-4e1b")
        by_botocore = botocore_requests(store)
        store.put("7.jpg", JPEG)
        store.put("8.jpg", JPEG)

    assert by_botocore == ["PutObject", "PutObject"]
    assert store._lean is None
    [warning] = [record for record in caplog.records if record.levelname == "WARNING"]
    assert "answered 403 to an upload that botocore's client then stored" in warning.getMessage()
    assert "not-the-secret-4e1b" not in caplog.text and s3_server.secret_key not in caplog.text
    assert sorted(bucket_objects(s3_server, bucket, prefix)) == ["7.jpg", "8.jpg"]


def test_a_lean_upload_that_fails_on_the_way_is_retried_by_botocore(
    s3_server: SeaweedS3Server, bucket: str, prefix: str
) -> None:
    with opened(s3_server, bucket, prefix) as store:
        assert store._lean is not None
        (port,) = free_ports(1)  # nothing listens there: the lean connection is refused
        store._lean._address = ("127.0.0.1", port)
        by_botocore = botocore_requests(store)
        store.put("7.jpg", JPEG)

        assert by_botocore == ["PutObject"]
        assert store._lean is not None  # a connection lost is no reason to give the lean PUT up
    assert sorted(bucket_objects(s3_server, bucket, prefix)) == ["7.jpg"]


# --- failures ------------------------------------------------------------------------------------


def test_an_upload_to_a_dead_server_is_a_store_error_without_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # read when the client is made: fail at once
    with SeaweedS3Server(tmp_path / "s") as s3:
        bucket = s3.create_bucket("dying")
        with opened(s3, bucket, "civitai/") as store:
            # A kept-alive connection, soon to a server that is gone (a listing, not a first
            # object: that would cost the new server a volume).
            store.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            s3.kill()
            failures = []
            with pytest.raises(StoreError) as caught:
                store.put("2.jpg", JPEG)
            failures.append((caught.value, "upload of", "2.jpg"))
            with pytest.raises(StoreError) as caught:
                asyncio.run(store.save({"3.jpg": JPEG, "3_meta.json": b"{}"}))
            failures.append((caught.value, "upload of", "3"))
            with pytest.raises(StoreError) as caught:
                asyncio.run(store.copy("1.jpg", "4.jpg"))
            failures.append((caught.value, "copy to", "4.jpg"))

    for error, action, name in failures:
        message = str(error)
        assert message.startswith(f"{action} s3://dying/civitai/{name}"), message
        assert " failed: " in message and "\n" not in message
        assert s3.secret_key not in message + repr(error)
        assert error.__suppress_context__  # botocore's exception (and its request) is not chained


# --- the check before a crawl ------------------------------------------------------------------------


def test_check_passes_for_a_bucket_that_works(s3_server: SeaweedS3Server, bucket: str, prefix: str) -> None:
    S3Store.check(s3_settings(s3_server, bucket, prefix))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist at http://127.0.0.1:"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret-0d9e"}, "refused the secret key (AWS_SECRET_ACCESS_KEY)"),
        ({"AWS_ACCESS_KEY_ID": "nobody"}, "does not know the access key (AWS_ACCESS_KEY_ID)"),
        ({"AWS_ENDPOINT_URL": "unreachable"}, "cannot reach http://127.0.0.1:"),
    ],
    ids=["missing_bucket", "wrong_secret", "unknown_key", "unreachable"],
)
def test_check_names_what_is_wrong(
    change: dict[str, str],
    named: str,
    s3_server: SeaweedS3Server,
    bucket: str,
    no_aws_environment: None,
) -> None:
    if change.get("AWS_ENDPOINT_URL") == "unreachable":
        (port,) = free_ports(1)  # nothing listens there
        change["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    settings = s3_settings(s3_server, change.pop("bucket", bucket), "civitai/", **change)

    with pytest.raises(ValueError) as caught:
        S3Store.check(settings)

    message = str(caught.value)
    assert message.startswith(f"IMAGES_STORE='{settings['IMAGES_STORE']}': ")
    assert named in message and "\n" not in message
    assert s3_server.secret_key not in message and "wrong-secret-0d9e" not in message


def test_check_without_credentials(s3_server: SeaweedS3Server, bucket: str, no_aws_environment: None) -> None:
    settings = s3_settings(s3_server, bucket, "civitai/", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")

    with pytest.raises(ValueError) as caught:
        S3Store.check(settings)

    assert str(caught.value) == (
        f"IMAGES_STORE='s3://{bucket}/civitai/': no credentials; "
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


@pytest.mark.parametrize("uri", ["s3://", "s3:///civitai", "S3:///civitai/"])
def test_a_uri_without_a_bucket(uri: str, no_aws_environment: None) -> None:
    with pytest.raises(ValueError) as caught:
        S3Store.build(Settings({"IMAGES_STORE": uri}))
    assert str(caught.value) == f"IMAGES_STORE='{uri}' names no bucket: use s3://bucket/prefix"


# --- connection settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (False, False),
        ("1", True),
        ("true", True),
        ("True", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
        ("no", False),
        ("off", False),
        ("/etc/ssl/certs/ca.pem", "/etc/ssl/certs/ca.pem"),
        (" /opt/ca bundle.pem ", "/opt/ca bundle.pem"),
        ("", None),  # -s AWS_VERIFY= : as if unset
        ("  ", None),
    ],
)
def test_verify_setting(value: Any, expected: bool | str | None) -> None:
    result = _verify(value)
    assert (result, type(result)) == (expected, type(expected))  # "1" is True, not a CA bundle "1"


@pytest.fixture
def store_of() -> Iterator[Any]:
    """Make a store from settings (no request is sent) and close it after the test."""
    stores: list[S3Store] = []

    def make(**settings: Any) -> S3Store:
        stores.append(S3Store.build(Settings({"IMAGES_STORE": "s3://b/p", **settings})))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


@pytest.mark.parametrize(
    ("use_ssl", "scheme"),
    [
        (None, "https"),
        ("false", "http"),
        ("False", "http"),
        (False, "http"),
        ("true", "https"),
        ("1", "https"),
    ],
)
def test_use_ssl_setting(use_ssl: Any, scheme: str, store_of: Any, no_aws_environment: None) -> None:
    # Without AWS_ENDPOINT_URL, botocore builds Amazon's endpoint with the scheme AWS_USE_SSL says.
    store = store_of(AWS_USE_SSL=use_ssl, AWS_REGION_NAME="us-east-1")
    assert store.endpoint.startswith(f"{scheme}://"), store.endpoint


def test_a_bad_client_setting_is_one_line(store_of: Any, no_aws_environment: None) -> None:
    with pytest.raises(ValueError) as caught:
        store_of(AWS_ENDPOINT_URL="not a url")
    assert str(caught.value).startswith("IMAGES_STORE='s3://b/p': ") and "\n" not in str(caught.value)
