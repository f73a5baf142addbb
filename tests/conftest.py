"""Fixtures: the fake Civitai server, a store folder, real Redis and S3 servers (support code
is in :mod:`tests.support`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_civitai import FakeCivitai
from tests.support.servers import RedisServer, SeaweedS3Server, unique_bucket_name


@pytest.fixture
def server() -> Iterator[FakeCivitai]:
    with FakeCivitai() as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


# Real servers (tests/support/servers.py), one of each for the session. A test that restarts or kills a
# server makes its own instance instead, so these stay up for everyone else.


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis's URL, every database emptied first (tests run one at a time)."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    with SeaweedS3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def bucket(s3_server: SeaweedS3Server) -> Iterator[str]:
    """A new, empty bucket on the session S3 server, for this test alone."""
    name = s3_server.create_bucket(unique_bucket_name())
    yield name
    # Each bucket with data holds one of the server's 64 volumes until it is deleted.
    s3_server.delete_bucket(name, missing_ok=True)
