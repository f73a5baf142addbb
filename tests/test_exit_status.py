"""The exit status of ``scrapy crawl civitai``, end to end: 1 when the crawl could not do its work.

1 or 2 for the finish reasons in ``outcomes.EXIT_STATUSES`` (``api_error``, ``cursor_loop``,
``redis_error``: ``tests/test_shared_crawl.py``; ``region_blocked``, ``api_key_refused``,
``model_not_found``: ``tests/test_crawl_server_paths.py``);
0 for any other end (a pause: ``tests/test_kill_and_resume.py``); 2 for a bad argument or setting
(``tests/test_crawl_api.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from civitai_spider import outcomes
from tests import images
from tests.conftest import run_crawl
from tests.fake_civitai import FakeCivitai, Fault


def add_items(server: FakeCivitai, count: int) -> list[int]:
    return [server.add_image_item(images.jpeg_rgb())["id"] for _ in range(count)]


def test_the_failing_finish_reasons() -> None:
    assert outcomes.EXIT_STATUSES == {
        "api_error": 1,
        "cursor_loop": 1,
        "redis_error": 1,
        "region_blocked": 1,
        "api_key_refused": 2,
        "model_not_found": 2,
    }


def test_api_error_exits_with_1(server: FakeCivitai, store: Path) -> None:
    add_items(server, 2)
    server.inject(server.api_url, Fault.status(400))

    result = run_crawl(server, store)

    assert result.finish_reason == "api_error"
    assert result.returncode == 1, result.stderr[-3000:]


def test_cursor_loop_exits_with_1(store: Path) -> None:
    with FakeCivitai(cursor_loop=True) as server:
        add_items(server, 4)
        result = run_crawl(server, store, "limit=2")

    assert result.finish_reason == "cursor_loop"
    assert result.returncode == 1, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("finish_reason", "arguments", "settings"),
    [
        pytest.param("finished", (), {}, id="finished"),
        pytest.param("finished", ("max_pages=1",), {}, id="max_pages"),
        pytest.param("closespider_itemcount", (), {"CLOSESPIDER_ITEMCOUNT": "2"}, id="closespider_itemcount"),
        pytest.param("caught_up", ("sort=Newest", "stop_after_seen=2"), {}, id="caught_up"),
    ],
)
def test_other_ends_exit_with_0(
    server: FakeCivitai,
    store: Path,
    finish_reason: str,
    arguments: tuple[str, ...],
    settings: dict[str, str],
) -> None:
    ids = add_items(server, 12)
    if finish_reason == "caught_up":
        store.mkdir(parents=True)
        (store / "downloaded_image_ID_DB.txt").write_text("".join(f"{image_id}\n" for image_id in ids))

    result = run_crawl(server, store, "limit=3", *arguments, **settings)

    assert result.finish_reason == finish_reason, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
