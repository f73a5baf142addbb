"""The real servers of tests/support/servers.py: they answer, keep their data across restarts, refuse
strangers, and leave no process behind."""

from __future__ import annotations

import base64
import os
import socket
import time
import zlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import botocore.session
import pytest
import redis
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.support.servers import RedisServer, SeaweedS3Server


def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout} s"
        time.sleep(0.02)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def append_only_file(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted((directory / "appendonlydir").glob("*.aof")))


# -- Redis


def test_redis_url_answers(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"


def test_redis_url_is_emptied_for_each_test(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    with redis_server.client() as client:
        client.set("left-over", "1")
        client.execute_command("SELECT", 1)
        client.set("left-over", "1")
    url = request.getfixturevalue("redis_url")
    assert url == f"redis://127.0.0.1:{redis_server.port}/0"
    for database in (0, 1):
        with redis_server.client(db=database) as client:
            assert client.dbsize() == 0


def test_redis_restart_keeps_what_the_append_only_file_holds(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        port, pid = server.port, server.pid
        with server.client() as client:
            client.set("cursor", "abc")
        server.restart()  # SIGTERM: Redis writes and syncs its append-only file, then exits
        assert_gone(pid)
        assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
        with server.client() as client:
            assert client.get("cursor") == b"abc"


def test_redis_without_append_only_file_forgets_on_restart(tmp_path: Path) -> None:
    # The contrast to the test above: no RDB snapshots either, so nothing is kept.
    with RedisServer(tmp_path, appendonly=False) as server:
        with server.client() as client:
            client.set("cursor", "abc")
        server.restart()
        with server.client() as client:
            assert client.get("cursor") is None


def test_redis_kill_leaves_no_process_and_keeps_what_was_written(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        with server.client() as client:
            client.set("downloaded:42", "1")
        # Once the write is in the file, the kernel holds it: SIGKILL (unlike power loss) keeps it.
        wait_until(lambda: b"downloaded:42" in append_only_file(tmp_path))
        pid = server.pid
        server.kill()
        assert_gone(pid)
        with pytest.raises(redis.ConnectionError), server.client(retry=None) as client:
            client.ping()
        server.start()
        pid = server.pid
        with server.client() as client:
            assert client.get("downloaded:42") == b"1"
    assert_gone(pid)


# -- SeaweedFS (S3)


def test_s3_put_and_get_as_scrapy_does(s3_server: SeaweedS3Server, bucket: str) -> None:
    body = b"RIFF\x1a\x00\x00\x00WEBPVP8L" + bytes(range(256))
    with closing(s3_server.client()) as client:
        # The arguments of Scrapy's S3FilesStore.persist_file (ACL from FILES_STORE_S3_ACL).
        put = client.put_object(
            Bucket=bucket,
            Key="run/full/1.webp",
            Body=body,
            Metadata={},
            ACL="private",
            CacheControl="max-age=172800",
            ContentType="image/webp",
        )
        # botocore sends a CRC32 of the body by default; SeaweedFS checks it and echoes it.
        assert put["ChecksumCRC32"] == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        got = client.get_object(Bucket=bucket, Key="run/full/1.webp")
        assert (got["Body"].read(), got["ContentType"]) == (body, "image/webp")
        listing = client.list_objects_v2(Bucket=bucket, Prefix="run/")
        assert [entry["Key"] for entry in listing["Contents"]] == ["run/full/1.webp"]


def test_s3_settings_for_a_crawl(s3_server: SeaweedS3Server, bucket: str) -> None:
    assert s3_server.settings(bucket, "run-1/") == {
        "IMAGES_STORE": f"s3://{bucket}/run-1/",
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "civitai-test",
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION_NAME": "us-east-1",
    }
    assert s3_server.endpoint_url == f"http://127.0.0.1:{s3_server.ports['s3']}"


@pytest.mark.parametrize(
    ("access_key", "secret_key", "code"),
    [("civitai-test", "not-the-secret", "SignatureDoesNotMatch"), ("stranger", "x", "InvalidAccessKeyId")],
)
def test_s3_refuses_a_wrong_key(
    s3_server: SeaweedS3Server, bucket: str, access_key: str, secret_key: str, code: str
) -> None:
    with closing(s3_server.client()) as client:
        client.put_object(Bucket=bucket, Key="a", Body=b"a")
    stranger = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    )
    with closing(stranger):
        for call in (
            lambda: stranger.get_object(Bucket=bucket, Key="a"),
            lambda: stranger.put_object(Bucket=bucket, Key="b", Body=b"b"),
        ):
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["Error"]["Code"] == code
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_unknown_bucket(s3_server: SeaweedS3Server) -> None:
    with closing(s3_server.client()) as client:
        for call in (
            lambda: client.get_object(Bucket="no-such-bucket", Key="a"),
            # Not created on the fly (-s3.autoCreateBucket=false), as with Amazon S3.
            lambda: client.put_object(Bucket="no-such-bucket", Key="a", Body=b"a"),
        ):
            with pytest.raises(ClientError) as missing:
                call()
            assert missing.value.response["Error"]["Code"] == "NoSuchBucket"


def test_s3_bucket_names_are_checked(s3_server: SeaweedS3Server) -> None:
    for name in ("ab", "Upper", "under_score", "x" * 64):
        with pytest.raises(ValueError, match="invalid bucket name"):
            s3_server.create_bucket(name)


def test_s3_kill_ends_the_server_and_start_brings_the_data_back(tmp_path: Path) -> None:
    with SeaweedS3Server(tmp_path) as server:
        server.create_bucket("kept")
        with closing(server.client()) as client:
            client.put_object(Bucket="kept", Key="a.png", Body=b"png", ContentType="image/png")
        pid, ports = server.pid, server.ports
        server.kill()
        assert_gone(pid)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["s3"]), timeout=2).close()
        with closing(server.client(retries={"total_max_attempts": 1})) as client:
            with pytest.raises(EndpointConnectionError):
                client.list_buckets()
        assert not [path for port in ports.values() for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
        server.start()  # the same ports and directory
        pid = server.pid
        with closing(server.client()) as client:
            got = client.get_object(Bucket="kept", Key="a.png")
            assert (got["Body"].read(), got["ContentType"]) == (b"png", "image/png")
    assert_gone(pid)
