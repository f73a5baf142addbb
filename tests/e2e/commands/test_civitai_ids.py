"""``scrapy civitai-ids import|export FILE``, run as a user would: a real subprocess, a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from civitai_spider.stores.redis_ids import RedisIds
from tests.support.crawls import run_scrapy_command
from tests.support.servers import free_ports, redis_ids

T = TypeVar("T")
CHUNK = 2**20
PASSWORD = "hunter2-5e0b"


def civitai_ids(*arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return run_scrapy_command("civitai-ids", *arguments, **settings)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the command printed."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = result.stdout.splitlines()
    return line


def with_store(url: str, prefix: str, work: Callable[[RedisIds], Awaitable[T]]) -> T:
    """``work`` on the Redis id store, in this process (to set up what a command finds)."""

    async def run() -> T:
        store = RedisIds(url, prefix)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def ids_text(ids: list[int]) -> bytes:
    return b"".join(b"%d\n" % image_id for image_id in ids)


# Ids in several chunks, out of order, one twice.
IDS = [123_456_789, 7, 2 * CHUNK + 1, 1, CHUNK - 1, 7, 99_000_001]


def test_import_into_redis_then_again_then_export(redis_url: str, tmp_path: Path) -> None:
    source = tmp_path / "downloaded_image_ID_DB.txt"
    # A torn last line (a run killed mid-write) is no id: neither imported nor cut off the file.
    source.write_bytes(ids_text(IDS) + b"4242")
    before = source.read_bytes()

    first = succeeded(civitai_ids("import", str(source), CIVITAI_REDIS_URL=redis_url))
    again = succeeded(civitai_ids("import", str(source), CIVITAI_REDIS_URL=redis_url))
    target = tmp_path / "out" / "exported.txt"
    exported = succeeded(civitai_ids("export", str(target), CIVITAI_REDIS_URL=redis_url))

    where = f"{redis_url} (keys civitai:ids:*)"
    assert first == f"Imported 6 new id(s) from {source} into {where} (0 already there)"
    assert again == f"Imported 0 new id(s) from {source} into {where} (6 already there)"
    assert exported == f"Exported 6 id(s) from {where} to {target}"
    assert source.read_bytes() == before
    assert target.read_bytes() == ids_text(sorted(set(IDS)))
    assert [path.name for path in target.parent.iterdir()] == ["exported.txt"]  # no temporary left


def test_export_and_import_move_ids_between_prefixes(redis_url: str, tmp_path: Path) -> None:
    with_store(redis_url, "team-a", lambda store: store.record(IDS))
    exported = tmp_path / "team-a.txt"

    succeeded(
        civitai_ids("export", str(exported), CIVITAI_REDIS_URL=redis_url, CIVITAI_REDIS_PREFIX="team-a")
    )
    moved = succeeded(
        civitai_ids("import", str(exported), CIVITAI_REDIS_URL=redis_url, CIVITAI_REDIS_PREFIX="team-b")
    )

    assert moved.startswith("Imported 6 new id(s)") and "(keys team-b:ids:*)" in moved
    assert exported.read_bytes() == ids_text(sorted(set(IDS)))

    assert redis_ids(redis_url, "team-b") == redis_ids(redis_url, "team-a") == set(IDS)


def test_import_into_the_id_file_appends_only_new_ids(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    id_file = store / "downloaded_image_ID_DB.txt"
    id_file.write_bytes(b"7\n1\n")
    source = tmp_path / "old-ids.txt"
    source.write_bytes(ids_text(IDS))

    imported = succeeded(civitai_ids("import", str(source), IMAGES_STORE=str(store)))
    exported = succeeded(civitai_ids("export", str(tmp_path / "all.txt"), IMAGES_STORE=str(store)))

    assert imported == f"Imported 4 new id(s) from {source} into {id_file} (2 already there)"
    assert id_file.read_bytes() == b"7\n1\n" + ids_text(sorted(set(IDS) - {1, 7}))
    assert exported == f"Exported 6 id(s) from {id_file} to {tmp_path / 'all.txt'}"
    assert (tmp_path / "all.txt").read_bytes() == ids_text(sorted(set(IDS)))


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ([], "expected: import FILE or export FILE"),
        (["merge", "ids.txt"], "expected: import FILE or export FILE"),
        (["import", "no-such-file.txt"], "no-such-file.txt: no such file to import"),
    ],
    ids=["no_arguments", "unknown_action", "missing_file"],
)
def test_a_usage_error_is_one_line_and_status_2(arguments: list[str], named: str, tmp_path: Path) -> None:
    arguments = [
        str(tmp_path / argument) if argument.endswith(".txt") else argument for argument in arguments
    ]

    result = civitai_ids(*arguments, IMAGES_STORE=str(tmp_path / "store"))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert named in error
    assert not (tmp_path / "store").exists()


def test_unreachable_redis_is_one_line_without_the_password(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    source = tmp_path / "ids.txt"
    source.write_bytes(b"1\n")

    result = civitai_ids("import", str(source), CIVITAI_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"CIVITAI_REDIS_URL=redis://:***@127.0.0.1:{port}/0: Redis does not answer" in error
    assert PASSWORD not in result.stdout + result.stderr


def test_a_failure_after_the_checks_is_one_line_and_status_1(redis_url: str, tmp_path: Path) -> None:
    with_store(redis_url, "civitai", lambda store: store.record([5, 6]))
    (tmp_path / "not-a-folder").write_text("")

    result = civitai_ids("export", str(tmp_path / "not-a-folder" / "ids.txt"), CIVITAI_REDIS_URL=redis_url)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "not-a-folder" in error and error.startswith("error: ")
    assert redis_ids(redis_url) == {5, 6}
