"""End to end on a real Scrapyd: deploy with the real scrapyd-deploy, schedule, read logs and files.

One Scrapyd serves the whole module (a second node joins it for the shared crawl). Its
configuration is the sample deploy/scrapyd.conf with a free port and folders of its own;
credentials and the API key reach it through the environment, as the README tells users to do.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.support import images
from tests.support.crawls import FAST_SETTINGS, REPOSITORY, run_crawl
from tests.support.fake_civitai import ME_PATH, FakeCivitai
from tests.support.servers import SeaweedS3Server, bucket_objects, redis_ids, redis_keys_besides_ids

PROJECT = "civitai_spider"  # the project name of scrapy.cfg's [deploy] section
USERNAME, PASSWORD = "civitai", "scrapyd-test-password-8d1f"
ENVIRONMENT_KEY = "civitai-key-from-environment-31c9e2"
SETTING_KEY = "civitai-key-from-setting-7a64b0"
ID_FILE = "downloaded_image_ID_DB.txt"
BIN = Path(sys.executable).parent  # scrapyd and scrapyd-deploy are installed beside this Python


@dataclass
class Scrapyd:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    checkout_before_deploy: set[str] = field(default_factory=set)
    checkout_after_deploy: set[str] = field(default_factory=set)
    deploy_output: str = ""

    def call(self, endpoint: str, data: list[tuple[str, str]] | None = None) -> Any:
        """GET (or POST `data` to) a JSON endpoint, with the right credentials."""
        request = urllib.request.Request(
            self.url + endpoint, data=urllib.parse.urlencode(data).encode() if data is not None else None
        )
        request.add_header("Authorization", _basic_auth(USERNAME, PASSWORD))
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def schedule(self, *arguments: str, **settings: str) -> str:
        data = [("project", PROJECT), ("spider", "civitai")]
        data += [tuple(argument.split("=", 1)) for argument in arguments]
        data += [("setting", f"{name}={value}") for name, value in settings.items()]
        answer = self.call("schedule.json", data)
        assert answer["status"] == "ok", answer
        return answer["jobid"]

    def wait_until_finished(self, job: str, timeout: float = 40) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.call(f"listjobs.json?project={PROJECT}")
            finished = [entry for entry in jobs["finished"] if entry["id"] == job]
            if finished:
                return finished[0]
            time.sleep(0.2)
        raise AssertionError(f"job {job} not finished after {timeout} s:\n{self.output()}")

    def job_log(self, job: str) -> str:
        return (self.home / "logs" / PROJECT / "civitai" / f"{job}.log").read_text()

    def job_items(self, job: str) -> str:
        return (self.home / "items" / PROJECT / "civitai" / f"{job}.jl").read_text()

    def output(self) -> str:
        """Scrapyd's own log (its stdout and stderr, with the jobs' stderr)."""
        return (self.home / "scrapyd.out").read_text()


def _basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _checkout_files() -> set[str]:
    """Every path in the checkout, leaving out Git's folder and virtual environments."""
    found = set()
    for folder, subfolders, files in os.walk(REPOSITORY):
        subfolders[:] = [
            name for name in subfolders if name != ".git" and not (Path(folder, name) / "pyvenv.cfg").exists()
        ]
        found.update(os.path.relpath(os.path.join(folder, name), REPOSITORY) for name in subfolders + files)
    return found


def _environment(home: Path, s3: SeaweedS3Server) -> dict[str, str]:
    """The environment of Scrapyd and scrapyd-deploy: credentials and keys as the README says.

    HOME and XDG_CONFIG_HOME point into the test's folder, so that no ~/.scrapyd.conf, ~/.netrc or
    ~/.config/scrapy.cfg of the machine takes part.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SCRAPYD_", "CIVITAI_", "SCRAPY_", "XDG_CONFIG_HOME", "AWS_"))
        and name != "HOME"
    }
    environment.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        SCRAPYD_USERNAME=USERNAME,
        SCRAPYD_PASSWORD=PASSWORD,
        CIVITAI_API_KEY=ENVIRONMENT_KEY,
        # botocore reads the bucket's credentials from here: they stay out of schedule.json.
        AWS_ACCESS_KEY_ID=s3.access_key,
        AWS_SECRET_ACCESS_KEY=s3.secret_key,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return environment


def _write_configuration(home: Path, port: int) -> None:
    """The sample deploy/scrapyd.conf, on a free port, polling often, in the test's folders."""
    configuration = configparser.ConfigParser()
    configuration.read(REPOSITORY / "deploy" / "scrapyd.conf")
    section = configuration["scrapyd"]
    assert section["bind_address"] == "127.0.0.1"
    assert "jobs_dir" not in section  # a JOBDIR for every job: the shared crawl's jobs would exit 2
    section["http_port"] = str(port)
    section["poll_interval"] = "0.2"
    for name in ("eggs_dir", "logs_dir", "items_dir", "dbs_dir"):
        section[name] = str(home / section[name])
    with open(home / "scrapyd.conf", "w") as file:
        configuration.write(file)

    # A deploy target of the user's own, beside the committed scrapy.cfg (which stays untouched).
    (home / "config").mkdir()
    (home / "config" / "scrapy.cfg").write_text(f"[deploy:test]\nurl = http://127.0.0.1:{port}/\n")


def _wait_until_up(scrapyd: Scrapyd, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scrapyd.process.poll() is not None:
            raise AssertionError(f"scrapyd exited with {scrapyd.process.returncode}:\n{scrapyd.output()}")
        try:
            if scrapyd.call("daemonstatus.json")["status"] == "ok":
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"scrapyd did not answer within {timeout} s:\n{scrapyd.output()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop Scrapyd and any job it still runs: they share the process group led by its pid."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def _running_scrapyd(home: Path, s3: SeaweedS3Server) -> Iterator[Scrapyd]:
    """A Scrapyd in ``home`` with the project deployed by ``scrapyd-deploy``; stopped after."""
    port = _free_port()
    _write_configuration(home, port)
    environment = _environment(home, s3)
    with open(home / "scrapyd.out", "wb") as output:
        # Scrapyd reads ./scrapyd.conf, so it runs in its own folder (its pid file lands there too).
        process = subprocess.Popen(
            [BIN / "scrapyd"], cwd=home, env=environment, stdout=output, stderr=output, start_new_session=True
        )
    scrapyd = Scrapyd(f"http://127.0.0.1:{port}/", home, process)
    try:
        _wait_until_up(scrapyd)
        scrapyd.checkout_before_deploy = _checkout_files()
        deploy = subprocess.run(
            [BIN / "scrapyd-deploy", "test"],
            cwd=REPOSITORY,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        scrapyd.checkout_after_deploy = _checkout_files()
        scrapyd.deploy_output = deploy.stdout + deploy.stderr
        assert deploy.returncode == 0, scrapyd.deploy_output
        yield scrapyd
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def scrapyd(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3Server) -> Iterator[Scrapyd]:
    with _running_scrapyd(tmp_path_factory.mktemp("scrapyd"), s3_server) as node:
        yield node


def _add_items(server: FakeCivitai, heart_counts: list[int]) -> list[int]:
    ids = []
    for heart_count in heart_counts:
        stats = {"likeCount": 1, "heartCount": heart_count, "commentCount": 0}
        ids.append(server.add_image_item(images.jpeg_rgb((96, 64)), stats=stats)["id"])
    return ids


def _store_files(store: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes() for path in store.iterdir() if path.is_file() and path.name != ID_FILE
    }


def _manifest_rows(store: Path) -> list[dict[str, Any]]:
    """The rows of the crawl's manifest parts (named by each crawl), by id."""
    return sorted(pq.read_table(store / "manifest").to_pylist(), key=lambda row: row["id"])


def test_deploy_uploads_the_project_and_leaves_the_checkout_as_it_was(scrapyd: Scrapyd) -> None:
    assert '"status": "ok"' in scrapyd.deploy_output
    assert scrapyd.call(f"listspiders.json?project={PROJECT}")["spiders"] == ["civitai"]
    assert scrapyd.checkout_after_deploy == scrapyd.checkout_before_deploy


@pytest.mark.parametrize(
    "authorization", [None, _basic_auth(USERNAME, "wrong-password"), _basic_auth("someone", PASSWORD)]
)
def test_requests_without_the_right_credentials_are_refused(
    scrapyd: Scrapyd, authorization: str | None
) -> None:
    schedule = urllib.parse.urlencode({"project": PROJECT, "spider": "civitai"}).encode()
    for endpoint, data in [
        ("daemonstatus.json", None),
        (f"listjobs.json?project={PROJECT}", None),
        ("schedule.json", schedule),
        ("addversion.json", b"project=x&version=1"),
    ]:
        request = urllib.request.Request(scrapyd.url + endpoint, data=data)
        if authorization:
            request.add_header("Authorization", authorization)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert refused.value.code == 401, endpoint
    assert scrapyd.call(f"listjobs.json?project={PROJECT}")["pending"] == []


def test_scheduled_crawl_saves_what_scrapy_crawl_saves(
    scrapyd: Scrapyd, server: FakeCivitai, tmp_path: Path
) -> None:
    # Three items per page; max_pages=2 stops after six, of which four reach the threshold of 3 hearts.
    ids = _add_items(server, [5, 1, 3, 9, 0, 4, 5, 5, 5])
    expected = [ids[0], ids[2], ids[3], ids[5]]
    arguments = ("sort=Newest", "limit=3", "max_pages=2")
    settings = {**FAST_SETTINGS, "CIVITAI_API_URL": server.api_url, "CIVITAI_THRESHOLDS": '{"heartCount": 3}'}
    store = tmp_path / "scrapyd-store"

    job = scrapyd.schedule(*arguments, IMAGES_STORE=str(store), **settings)
    scrapyd.wait_until_finished(job)

    log = scrapyd.job_log(job)
    assert "'finish_reason': 'finished'" in log, log
    assert "'civitai/saved': 4" in log and "'civitai/dropped/below_threshold': 2" in log, log
    assert "Traceback" not in log and " ERROR: " not in log, log
    assert sorted(int(line) for line in (store / ID_FILE).read_text().split()) == sorted(expected)
    assert sorted(json.loads(line)["id"] for line in scrapyd.job_items(job).splitlines()) == sorted(expected)

    # Every page asked with the job's arguments, and with the key from Scrapyd's environment.
    pages = server.page_requests()
    assert len(pages) == 2
    for request in pages:
        assert request.query["sort"] == "Newest" and request.query["limit"] == "3"
    # The key's check (/api/v1/me) came first, and the key was on every API request.
    assert server.api_requests()[0].path == ME_PATH
    assert all(
        request.headers["authorization"] == f"Bearer {ENVIRONMENT_KEY}" for request in server.api_requests()
    )
    assert all("authorization" not in request.headers for request in server.cdn_requests())

    # The key appears in no log, feed or file; no progress bar is drawn where nothing is a terminal.
    for path in [*store.iterdir(), *(scrapyd.home / "logs").rglob("*"), *(scrapyd.home / "items").rglob("*")]:
        if path.is_file():
            assert ENVIRONMENT_KEY.encode() not in path.read_bytes(), path
    assert ENVIRONMENT_KEY not in scrapyd.output()
    assert "Saving images and metadata" not in scrapyd.output()

    # The same crawl by `scrapy crawl civitai` saves byte-identical files.
    direct = run_crawl(server, tmp_path / "direct-store", *arguments, api_key=ENVIRONMENT_KEY, **settings)
    assert direct.finish_reason == "finished", direct.stderr
    assert _store_files(direct.store) == _store_files(store)
    assert _manifest_rows(direct.store) == _manifest_rows(store)
    assert sorted(direct.ids_recorded()) == sorted(expected)


def test_api_failure_shows_in_the_finish_reason_and_a_setting_key_stays_out_of_the_log(
    scrapyd: Scrapyd, server: FakeCivitai, tmp_path: Path
) -> None:
    _add_items(server, [5, 5])
    settings = {
        **FAST_SETTINGS,
        "CIVITAI_API_URL": server.api_url,
        "IMAGES_STORE": str(tmp_path / "store"),
        "CIVITAI_API_KEY": SETTING_KEY,
    }

    job = scrapyd.schedule("base_models=NoSuchModel", **settings)
    scrapyd.wait_until_finished(job)

    log = scrapyd.job_log(job)
    assert "'finish_reason': 'api_error'" in log, log
    # The server's zod issue: the parameter, its index and the names it knows (zod names not the bad one).
    assert 'HTTP 400: baseModels.0: Invalid option: expected one of "Anima"|"AuraFlow"|' in log, log
    [request] = server.page_requests()
    # The setting wins over the environment.
    assert request.headers["authorization"] == f"Bearer {SETTING_KEY}"
    assert SETTING_KEY not in log and ENVIRONMENT_KEY not in log
    assert not server.cdn_requests()


def test_cancelled_job_stops_cleanly_and_the_next_job_finishes_the_set(
    scrapyd: Scrapyd, server: FakeCivitai, tmp_path: Path
) -> None:
    ids = _add_items(server, [5] * 40)
    server.api_delay = 0.5  # ten slow pages keep the job running until it is cancelled
    store = tmp_path / "store"
    settings = {**FAST_SETTINGS, "CIVITAI_API_URL": server.api_url, "IMAGES_STORE": str(store)}

    job = scrapyd.schedule("limit=4", **settings)
    deadline = time.monotonic() + 30
    while not ((store / ID_FILE).exists() and (store / ID_FILE).read_text()):
        assert time.monotonic() < deadline, scrapyd.output()
        time.sleep(0.1)
    assert scrapyd.call("cancel.json", [("project", PROJECT), ("job", job)])["prevstate"] == "running"
    scrapyd.wait_until_finished(job)

    assert "'finish_reason': 'shutdown'" in scrapyd.job_log(job)
    saved = [int(line) for line in (store / ID_FILE).read_text().split()]
    assert 0 < len(saved) < len(ids)
    for image_id in saved:
        assert {f"{image_id}.jpg", f"{image_id}_meta.json", f"{image_id}_pos-prompt.txt"} <= set(
            path.name for path in store.iterdir()
        )

    server.api_delay = 0
    job = scrapyd.schedule("limit=4", **settings)
    scrapyd.wait_until_finished(job)

    log = scrapyd.job_log(job)
    assert "'finish_reason': 'finished'" in log, log
    assert f"'civitai/dropped/already_downloaded': {len(saved)}" in log, log
    recorded = [int(line) for line in (store / ID_FILE).read_text().split()]
    assert sorted(recorded) == sorted(ids)  # every id once: nothing lost, nothing twice


def _bucket_and_redis(
    server: FakeCivitai, s3: SeaweedS3Server, bucket: str, redis_url: str
) -> dict[str, str]:
    """The settings of the README's schedule into a bucket with Redis (the keys are in the environment)."""
    return {
        **FAST_SETTINGS,
        "CIVITAI_API_URL": server.api_url,
        "IMAGES_STORE": f"s3://{bucket}/civitai",
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_REGION_NAME": "us-east-1",
        "CIVITAI_REDIS_URL": redis_url,
    }


def test_scheduled_crawl_to_a_bucket_with_redis_ids(
    scrapyd: Scrapyd,
    server: FakeCivitai,
    s3_server: SeaweedS3Server,
    bucket: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # The README's schedule: the bucket and Redis as settings, the bucket's keys in the environment.
    ids = _add_items(server, [5, 5, 5, 5, 5])
    settings = {
        **_bucket_and_redis(server, s3_server, bucket, redis_url),
        "CIVITAI_LOG_DIR": str(tmp_path / "logs"),
    }

    job = scrapyd.schedule("limit=2", **settings)
    scrapyd.wait_until_finished(job)

    log = scrapyd.job_log(job)
    assert "'finish_reason': 'finished'" in log and "'civitai/saved': 5" in log, log
    assert redis_ids(redis_url) == set(ids)
    assert redis_keys_besides_ids(redis_url) == []  # a crawl of its own: Redis holds its ids alone
    objects = bucket_objects(s3_server, bucket, "civitai/")
    assert {f"{image_id}.jpg" for image_id in ids} <= set(objects)
    for data, _ in objects.values():
        assert ENVIRONMENT_KEY.encode() not in data
    assert s3_server.secret_key not in log + scrapyd.output()

    server.clear_requests()
    job = scrapyd.schedule("limit=2", **settings)
    scrapyd.wait_until_finished(job)
    assert "'civitai/dropped/already_downloaded': 5" in scrapyd.job_log(job)
    assert server.cdn_requests() == []


def test_the_same_job_on_two_scrapyd_nodes_is_one_shared_crawl(
    scrapyd: Scrapyd,
    tmp_path_factory: pytest.TempPathFactory,
    server: FakeCivitai,
    s3_server: SeaweedS3Server,
    bucket: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # The README's loop over nodes: the shared crawl, the same arguments, Redis and bucket on each.
    body = images.jpeg_rgb((96, 64))
    ids = [server.add_image_item(body, browsingLevel=(1, 2, 4, 8, 16)[n % 5])["id"] for n in range(400)]
    server.cdn_delay = 0.03  # long enough for both nodes to take part
    settings = {
        **_bucket_and_redis(server, s3_server, bucket, redis_url),
        "CIVITAI_SHARED_CRAWL": "true",
        "CIVITAI_IMAGES_IN_FLIGHT": "8",
    }
    arguments = ("nsfw=X", "split=browsing_level", "limit=20")
    with _running_scrapyd(tmp_path_factory.mktemp("scrapyd-node-2"), s3_server) as second:
        jobs = [
            (node, node.schedule(*arguments, **settings, CIVITAI_LOG_DIR=str(tmp_path / f"logs-{index}")))
            for index, node in enumerate((scrapyd, second))
        ]
        for node, job in jobs:
            node.wait_until_finished(job, timeout=120)
        logs = [node.job_log(job) for node, job in jobs]

    for log in logs:
        assert "'finish_reason': 'finished'" in log, log[-3000:]
    saved = [int(re.search(r"'civitai/saved': (\d+)", log)[1]) for log in logs]
    assert all(count > 0 for count in saved) and sum(saved) == len(ids)  # each image once, both nodes
    assert redis_ids(redis_url) == set(ids)
    assert {f"{image_id}.jpg" for image_id in ids} <= set(bucket_objects(s3_server, bucket, "civitai/"))
