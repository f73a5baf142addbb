"""End to end: where ``scrapy civitai-manifest`` and ``scrapy civitai-export`` read and write.

A mistyped ``IMAGES_STORE`` (a folder that does not exist, a bucket prefix with nothing under
it) is one ``error:`` line naming it, exit status 2, and nothing made; an ``--output`` that
cannot be used is one ``error:`` line naming ``--output``, not the ``IMAGES_STORE`` that the
stores' own messages would name. An output that fails on the way, after the checks, is one
``error:`` line and exit status 1.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.crawls import run_scrapy_command
from tests.support.datasets import NO_METADATA
from tests.support.servers import SeaweedS3Server

COMMANDS = ("civitai-manifest", "civitai-export")


def run(command: str, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return run_scrapy_command(command, *arguments, environment=NO_METADATA, **settings)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a command that exited with status 2."""
    assert result.returncode == 2, result.stderr[-2000:]
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    return error


def bucket_settings(s3_server: SeaweedS3Server) -> dict[str, str]:
    """The endpoint and credentials of the test S3 server, without an IMAGES_STORE."""
    settings = s3_server.settings("unused", "")
    del settings["IMAGES_STORE"]
    return settings


@pytest.mark.parametrize("command", COMMANDS)
def test_a_store_folder_that_does_not_exist_is_an_error_and_nothing_is_made(
    command: str, tmp_path: Path
) -> None:
    mistyped = tmp_path / "civitai-imgaes"
    error = error_line(run(command, IMAGES_STORE=str(mistyped)))
    assert f"IMAGES_STORE={str(mistyped)!r}: no such folder" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bucket_prefix_with_nothing_stored_is_an_error_and_nothing_is_made(
    command: str, s3_server: SeaweedS3Server, bucket: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    settings = {**s3_server.settings(bucket, "civitai-typo"), "CIVITAI_LOG_DIR": str(logs)}
    error = error_line(run(command, **settings))
    assert f"IMAGES_STORE='s3://{bucket}/civitai-typo': nothing is stored there" in error
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket)
    assert not logs.exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("s3://no-such-bucket-here/out", "bucket 'no-such-bucket-here' does not exist"),
        ("s3://", "names no bucket"),
        ("taken", "Not a directory"),  # a file where the output's folder would go
    ],
)
def test_an_output_that_cannot_be_used_is_named_as_output(
    command: str, output: str, problem: str, store: Path, s3_server: SeaweedS3Server, tmp_path: Path
) -> None:
    if output == "taken":
        output = str(tmp_path / "taken")
        Path(output).write_text("a file, not a folder")
    settings = {"IMAGES_STORE": str(store), **bucket_settings(s3_server)}
    error = error_line(run(command, "--output", output, **settings))
    assert f"--output {output!r}" in error and problem in error
    assert "IMAGES_STORE" not in error


#: Each command's first file in its output: a folder there makes the rename into place fail.
FIRST_FILE = {
    "civitai-manifest": "manifest/part-000000.parquet",
    "civitai-export": "webdataset/shard-000000.tar",
}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_that_fails_on_the_way_is_one_line_and_status_1(command: str, store: Path) -> None:
    # A folder is no file to the listing: the command writes that name and the rename fails.
    (store / FIRST_FILE[command]).mkdir(parents=True)
    result = run(command, IMAGES_STORE=str(store))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error.startswith("error: ") and FIRST_FILE[command] in error
    assert result.stdout == ""  # no summary of a run that did not complete
