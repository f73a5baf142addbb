"""End to end: ``scrapy crawl civitai`` against the server's own query paths and answers.

The fake Civitai models what the server's code does (``tests/support/fake_civitai.py``, each behaviour
cited there): the nsfw levels, the older database path that ``modelId`` alone takes, pages that
are short or empty but go on, an empty page before the real one, a key it serves as anonymous,
451 and zod 400s, and a ranking that moves while a crawl pages through it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import images
from tests.support.crawls import REPOSITORY, CrawlResult, crawl_command, crawl_environment, run_crawl
from tests.support.fake_civitai import API_PATH, ME_PATH, MODELS_PATH, FakeCivitai, Fault

BODY = images.jpeg_rgb()
#: Re-asks of an empty page in these tests: quick, and still a real wait.
QUICK_EMPTY_PAGE = {"CIVITAI_EMPTY_PAGE_DELAY": "0.05"}


def add_items(server: FakeCivitai, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [server.add_image_item(BODY, **fields) for _ in range(count)]


def pages(server: FakeCivitai) -> list[dict[str, str]]:
    """The queries of the image pages asked for, in order."""
    return [request.query for request in server.page_requests()]


def error_lines(result: CrawlResult) -> list[str]:
    return [line for line in result.stderr.splitlines() if " ERROR: " in line]


# --- nsfw levels as the server maps them ---------------------------------------------------


def test_nsfw_true_splits_into_r_x_and_xxx_only(server: FakeCivitai, store: Path) -> None:
    by_level = {level: add_items(server, 2, browsingLevel=level) for level in (1, 2, 4, 8, 16)}

    result = run_crawl(server, store, "nsfw=true", "split=browsing_level", "limit=5")

    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(query["browsingLevel"] for query in pages(server)) == ["16", "4", "8"]
    assert all("nsfw" not in query for query in pages(server))
    wanted = [item["id"] for level in (4, 8, 16) for item in by_level[level]]
    assert sorted(result.ids_recorded()) == sorted(wanted)


@pytest.mark.parametrize("level", ["32", "63", "40"])
def test_a_browsing_level_with_blocked_is_refused_before_any_request(
    server: FakeCivitai, store: Path, level: str
) -> None:
    add_items(server, 1)

    result = run_crawl(server, store, f"browsing_level={level}")

    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"browsing_level='{level}'" in line and "Blocked level (32)" in line and "1 to 31" in line
    assert server.requests == []


# --- a model's images: one chain per version, through the search index ---------------------

MODEL = 4201
VERSIONS = [9003, 9002, 9001]


def add_model_images(server: FakeCivitai, count: int) -> tuple[list[int], int]:
    """``count`` images of MODEL's three versions, every tenth also under the next version;
    the ids, and how many are under two versions."""
    server.add_model(MODEL, VERSIONS)
    ids, shared = [], 0
    for index in range(count):
        versions = [VERSIONS[index % 3]]
        if index % 10 == 0:
            versions.append(VERSIONS[(index + 1) % 3])
            shared += 1
        # What the record shows is the auto-detected resources only: here none.
        ids.append(server.add_image_item(BODY, versions=versions, modelVersionIds=[])["id"])
    return ids, shared


def older_path_walk(server: FakeCivitai, limit: int) -> tuple[list[int], int]:
    """The ids the older database path lists for ``modelId`` alone, and its page count."""
    query = {"modelId": str(MODEL), "limit": str(limit), "withMeta": "true", "flatMeta": "true"}
    url: str | None = f"{server.api_url}?{urlencode(query)}"
    ids, count = [], 0
    while url:
        with urllib.request.urlopen(url, timeout=10) as answer:
            page = json.load(answer)
        ids += [item["id"] for item in page["items"]]
        count += 1
        url = page["metadata"].get("nextPage")
    return ids, count


def test_a_model_crawl_saves_every_image_of_every_version_once(server: FakeCivitai, store: Path) -> None:
    ids, shared = add_model_images(server, 1000)

    result = run_crawl(server, store, f"model_id={MODEL}", "limit=100", timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.finish_reason == "finished"
    recorded = result.ids_recorded()
    assert len(recorded) == len(set(recorded)) == 1000 and set(recorded) == set(ids)
    stats = result.stats
    assert (stats["civitai/saved"], stats["civitai/dropped/other_chain"]) == (1000, shared)
    assert "civitai/dropped/duplicate" not in stats
    # The versions were asked for first; every page went through the search index.
    api = server.api_requests()
    assert api[0].path == f"{MODELS_PATH}{MODEL}"
    assert {query["modelVersionId"] for query in pages(server)} == {str(version) for version in VERSIONS}
    assert all("modelId" not in query for query in pages(server))
    assert f"Model {MODEL} has 3 version(s)" in result.stderr
    assert "other_chain 100" in result.stderr  # the summary line
    # The older path, which modelId alone takes, loses the image it takes as each page's cursor.
    listed, page_count = older_path_walk(server, 100)
    assert page_count == 10 and len(listed) == 1000 - (page_count - 1)


def test_a_model_crawl_splits_each_version_and_keeps_the_query(server: FakeCivitai, store: Path) -> None:
    server.add_model(MODEL, [11, 12])
    wanted = [server.add_image_item(BODY, versions=[11], browsingLevel=4)["id"]]
    wanted.append(server.add_image_item(BODY, versions=[12], browsingLevel=8)["id"])
    add_items(server, 2, versions=[11], browsingLevel=1)  # not asked for
    add_items(server, 1, versions=[99], browsingLevel=4)  # another model

    result = run_crawl(
        server, store, f"model_id={MODEL}", "nsfw=true", "split=browsing_level", "sort=Newest",
        CIVITAI_API_CONCURRENCY="3",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(result.ids_recorded()) == sorted(wanted)
    asked = sorted((query["modelVersionId"], query["browsingLevel"]) for query in pages(server))
    assert asked == [(version, level) for version in ("11", "12") for level in ("16", "4", "8")]
    assert all(query["sort"] == "Newest" for query in pages(server))


def test_a_model_that_does_not_exist_ends_with_exit_status_2(server: FakeCivitai, store: Path) -> None:
    add_items(server, 2)

    result = run_crawl(server, store, "model_id=777")

    assert result.returncode == 2, result.stderr[-3000:]
    assert result.finish_reason == "model_not_found"
    [line] = error_lines(result)
    assert "model_id=777: the API has no such model" in line and "HTTP 404: No model with id 777" in line
    assert pages(server) == [] and server.cdn_requests() == []


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.html_200(), id="html"),
        pytest.param(Fault.json_200({"id": 5, "modelVersions": [{"name": "v1"}]}), id="no-ids"),
        pytest.param(Fault.json_200({"id": 5}), id="no-versions"),
        pytest.param(Fault.status(500), id="server-error"),
    ],
)
def test_a_models_answer_that_cannot_be_read_ends_with_api_error(
    server: FakeCivitai, store: Path, fault: Fault
) -> None:
    server.add_model(5, [51])
    server.inject_always(f"{MODELS_PATH}5", fault)

    result = run_crawl(server, store, "model_id=5", RETRY_TIMES="1")

    assert result.returncode == 1, result.stderr[-3000:]
    assert result.finish_reason == "api_error"
    [line] = error_lines(result)
    assert "The API request failed, stopping the crawl" in line and f"{MODELS_PATH}5" in line
    assert pages(server) == []


def test_a_model_without_published_versions_has_nothing_to_crawl(server: FakeCivitai, store: Path) -> None:
    server.add_model(6, [])
    add_items(server, 2, versions=[61])

    result = run_crawl(server, store, "model_id=6")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model 6 lists no published version: there is nothing to crawl" in result.stderr
    assert pages(server) == []


def test_one_image_still_goes_through_the_older_path(server: FakeCivitai, store: Path) -> None:
    server.add_model(MODEL, VERSIONS)
    [item] = add_items(server, 1, versions=[VERSIONS[0]])

    result = run_crawl(server, store, f"model_id={MODEL}", f"image_id={item['id']}")

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.ids_recorded() == [item["id"]]
    [query] = pages(server)
    assert (query["modelId"], query["imageId"]) == (str(MODEL), str(item["id"]))
    assert not any(request.path.startswith(MODELS_PATH) for request in server.api_requests())


# --- short and empty pages -----------------------------------------------------------------


def test_short_and_empty_pages_with_a_cursor_go_on(server: FakeCivitai, store: Path) -> None:
    items = add_items(server, 10)
    for index in (3, 4, 5, 7):  # hidden after paging: page 2 comes back empty, page 3 short
        items[index]["_hidden"] = True

    result = run_crawl(server, store, "limit=3", **QUICK_EMPTY_PAGE)

    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pages(server)) == 4  # no page asked twice
    assert sorted(result.ids_recorded()) == [item["id"] for item in items if not item.get("_hidden")]
    assert "civitai/empty_page_retries" not in result.stats


@pytest.mark.parametrize("retries", ["3", "0"])
def test_an_empty_page_after_a_full_one_is_asked_again(
    server: FakeCivitai, store: Path, retries: str
) -> None:
    items = add_items(server, 9)
    server.inject_page(server.cursor_for(6), Fault.empty_page())  # page 3: empty, then the real one

    result = run_crawl(server, store, "limit=3", CIVITAI_EMPTY_PAGE_RETRIES=retries, **QUICK_EMPTY_PAGE)

    assert result.returncode == 0, result.stderr[-3000:]
    cursors = [query.get("cursor") for query in pages(server)]
    if retries == "0":  # the end, as before: the last page's images are lost
        assert cursors == [None, server.cursor_for(3), server.cursor_for(6)]
        assert sorted(result.ids_recorded()) == [item["id"] for item in items[:6]]
        assert "right after a full page, CIVITAI_EMPTY_PAGE_RETRIES=0: the chain ends there" in result.stderr
        return
    assert cursors == [None, server.cursor_for(3), server.cursor_for(6), server.cursor_for(6)]
    assert sorted(result.ids_recorded()) == [item["id"] for item in items]
    assert result.stats["civitai/empty_page_retries"] == 1
    assert "came back empty without a cursor right after a full page: asking again in 0.05 s (1 of 3)" in (
        result.stderr
    )
    assert "answered 3 item(s) when asked again (1 of 3): going on" in result.stderr


def test_an_empty_page_that_stays_empty_ends_its_chain_after_the_retries(
    server: FakeCivitai, store: Path
) -> None:
    items = add_items(server, 9)
    server.inject_page(server.cursor_for(6), *[Fault.empty_page()] * 3)

    started = time.monotonic()
    result = run_crawl(
        server, store, "limit=3", CIVITAI_EMPTY_PAGE_RETRIES="2", CIVITAI_EMPTY_PAGE_DELAY="0.5"
    )

    assert result.returncode == 0 and result.finish_reason == "finished", result.stderr[-3000:]
    assert [query.get("cursor") for query in pages(server)][2:] == [server.cursor_for(6)] * 3
    assert time.monotonic() - started >= 1.5  # waited 0.5 s, then 1 s: backoff
    assert sorted(result.ids_recorded()) == [item["id"] for item in items[:6]]
    assert result.stats["civitai/empty_page_retries"] == 2
    assert (
        "was empty without a cursor right after a full page, still after 2 more tries: the chain ends there"
        in (result.stderr)
    )


def test_an_empty_page_after_a_short_one_or_first_is_the_end(server: FakeCivitai, store: Path) -> None:
    result = run_crawl(server, store, "limit=3", **QUICK_EMPTY_PAGE)  # nothing listed at all

    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pages(server)) == 1
    assert "civitai/empty_page_retries" not in result.stats

    items = add_items(server, 9)
    for index in (3, 4):  # page 2 comes back short, with its cursor
        items[index]["_hidden"] = True
    server.inject_page(server.cursor_for(6), Fault.empty_page())  # then page 3 empty, no cursor
    server.clear_requests()

    again = run_crawl(server, store, "limit=3", **QUICK_EMPTY_PAGE)

    assert again.returncode == 0, again.stderr[-3000:]
    assert [query.get("cursor") for query in pages(server)] == [
        None,
        server.cursor_for(3),
        server.cursor_for(6),
    ]
    assert sorted(again.ids_recorded()) == sorted(item["id"] for item in items[:6] if not item.get("_hidden"))
    assert "civitai/empty_page_retries" not in again.stats


def test_ctrl_c_while_a_page_is_asked_again_stops_at_once_and_a_resume_asks_it_again(
    server: FakeCivitai, store: Path, tmp_path: Path
) -> None:
    items = add_items(server, 9)
    server.inject_page(server.cursor_for(6), Fault.empty_page())
    jobdir = str(tmp_path / "job")
    log = tmp_path / "paused.log"
    command = crawl_command(server, store, "limit=3", JOBDIR=jobdir, CIVITAI_EMPTY_PAGE_DELAY="60")
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=crawl_environment(), stderr=output)
        deadline = time.monotonic() + 30
        while "asking again in 60 s" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    assert time.monotonic() - interrupted < 10  # not the minute of the wait
    assert "(shutdown)" in log.read_text()

    resumed = run_crawl(server, store, "limit=3", JOBDIR=jobdir, **QUICK_EMPTY_PAGE)

    assert resumed.returncode == 0 and resumed.finish_reason == "finished", resumed.stderr[-3000:]
    assert sorted(resumed.ids_recorded()) == [item["id"] for item in items]


# --- the API key ---------------------------------------------------------------------------


def test_a_key_the_api_does_not_accept_ends_the_crawl_before_any_page(
    server: FakeCivitai, store: Path
) -> None:
    server.api_keys = {"good-key": "alice"}
    add_items(server, 2, browsingLevel=8)

    result = run_crawl(server, store, "nsfw=X", api_key="expired-key-123")

    assert result.returncode == 2, result.stderr[-3000:]
    assert result.finish_reason == "api_key_refused"
    [line] = error_lines(result)
    assert "CIVITAI_API_KEY is not accepted by the API" in line and "HTTP 401" in line
    assert "expired-key-123" not in result.stderr + result.stdout
    [me] = server.api_requests()
    assert me.path == ME_PATH and me.headers["authorization"] == "Bearer expired-key-123"
    assert server.cdn_requests() == []


def test_a_key_the_api_accepts_crawls_what_it_may_see(server: FakeCivitai, store: Path) -> None:
    server.api_keys = {"good-key": "alice"}
    items = add_items(server, 2, browsingLevel=8)

    result = run_crawl(server, store, "nsfw=X", api_key="good-key")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "CIVITAI_API_KEY is accepted (user alice)" in result.stderr
    assert sorted(result.ids_recorded()) == [item["id"] for item in items]
    assert [request.path for request in server.api_requests()] == [ME_PATH, API_PATH]
    assert all(request.headers["authorization"] == "Bearer good-key" for request in server.api_requests())
    assert not any("authorization" in request.headers for request in server.cdn_requests())
    assert "good-key" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "fault", [pytest.param(Fault.status(500), id="500"), pytest.param(Fault.reset(), id="unreachable")]
)
def test_a_key_check_that_gets_no_answer_warns_and_the_crawl_goes_on(
    server: FakeCivitai, store: Path, fault: Fault
) -> None:
    items = add_items(server, 2)
    server.inject_always(ME_PATH, fault)

    result = run_crawl(server, store, api_key="some-key")

    assert result.returncode == 0 and result.finish_reason == "finished", result.stderr[-3000:]
    [warning] = [line for line in result.stderr.splitlines() if "Could not check CIVITAI_API_KEY" in line]
    assert " WARNING: " in warning and "crawling on" in warning
    assert sorted(result.ids_recorded()) == [item["id"] for item in items]
    assert [request.path for request in server.api_requests()].count(ME_PATH) == 3  # two retries


def test_without_a_key_there_is_no_key_check(server: FakeCivitai, store: Path) -> None:
    add_items(server, 1)

    result = run_crawl(server, store)

    assert result.returncode == 0, result.stderr[-3000:]
    assert [request.path for request in server.api_requests()] == [API_PATH]


# --- the errors the server sends -----------------------------------------------------------


@pytest.mark.parametrize("cursor", [None, "3|1733858354003"], ids=["first-page", "later-page"])
def test_region_blocked_ends_with_its_own_reason(
    server: FakeCivitai, store: Path, cursor: str | None
) -> None:
    add_items(server, 6)
    server.inject_page(cursor if cursor is None else server.cursor_for(3), Fault.region_blocked())

    result = run_crawl(server, store, "limit=3")

    assert result.returncode == 1, result.stderr[-3000:]
    assert result.finish_reason == "region_blocked"
    [line] = error_lines(result)
    assert "The API refuses requests from this country, stopping the crawl: HTTP 451: Access to this" in line
    assert result.stats["log_count/ERROR"] == 1
    assert len(pages(server)) == (1 if cursor is None else 2)  # 451 is not retried


def test_a_zod_400_is_logged_as_its_messages(server: FakeCivitai, store: Path) -> None:
    add_items(server, 1)

    result = run_crawl(server, store, "base_models=SDXL 9.9")

    assert result.returncode == 1 and result.finish_reason == "api_error", result.stderr[-3000:]
    [line] = error_lines(result)
    # The path and message, not the serialised ZodError around them.
    assert 'stopping the crawl: HTTP 400: baseModels.0: Invalid option: expected one of "Anima"|' in line
    assert "ZodError" not in line and "{" not in line


def test_a_numeric_next_cursor_is_followed(server: FakeCivitai, store: Path) -> None:
    first, second = add_items(server, 2)
    server.inject_page(None, Fault.json_200({"items": [first], "metadata": {"nextCursor": 4242}}))
    server.inject_page("4242", Fault.json_200({"items": [second], "metadata": {}}))

    result = run_crawl(server, store)

    assert result.returncode == 0, result.stderr[-3000:]
    assert [query.get("cursor") for query in pages(server)] == [None, "4242"]
    assert sorted(result.ids_recorded()) == [first["id"], second["id"]]


# --- a ranking that moves ------------------------------------------------------------------


def test_images_listed_twice_are_reported_as_the_sign_of_a_moving_ranking(
    server: FakeCivitai, store: Path
) -> None:
    items = add_items(server, 10)
    moved = []

    def climb(request: Any) -> None:
        # Between pages 1 and 2 the last image gains reactions and climbs to the top: page 2
        # (offset 5) then repeats page 1's last image, and the climber is never listed.
        if request.path == API_PATH and "cursor" in request.query and not moved:
            moved.append(server.items.pop())
            server.items.insert(0, moved[0])

    server.on_api_request = climb

    result = run_crawl(server, store, "limit=5")

    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(result.ids_recorded()) == [item["id"] for item in items[:9]]  # the climber: lost
    assert result.stats["civitai/dropped/duplicate"] == 1
    [summary] = [line for line in result.stderr.splitlines() if "Crawl ended (finished)" in line]
    assert "9 saved (9 images), 1 dropped (duplicate 1)" in summary
    assert "1 came twice in one chain: the listing moved while the crawl paged through it" in summary


def test_a_crawl_without_repeats_says_nothing_of_them(server: FakeCivitai, store: Path) -> None:
    add_items(server, 4)

    result = run_crawl(server, store, "limit=2")

    [summary] = [line for line in result.stderr.splitlines() if "Crawl ended (finished)" in line]
    assert summary.endswith("4 saved (4 images), 0 dropped, 0 failed, of 4 listed")


# --- a model's crawl paused, and shared by workers -----------------------------------------


def test_a_paused_model_crawl_resumes_its_version_chains(store: Path, tmp_path: Path) -> None:
    with FakeCivitai(delay=0.5, cdn_delay=0.01) as server:  # pages come slowly: a pause leaves some
        server.add_model(MODEL, [21, 22])
        ids = [server.add_image_item(BODY, versions=[21 + index % 2])["id"] for index in range(60)]
        jobdir = str(tmp_path / "job")
        log = tmp_path / "paused.log"
        command = crawl_command(server, store, f"model_id={MODEL}", "limit=10", JOBDIR=jobdir)
        with log.open("w") as output:
            process = subprocess.Popen(command, cwd=REPOSITORY, env=crawl_environment(), stderr=output)
            id_file = store / "downloaded_image_ID_DB.txt"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                not id_file.exists() or len(id_file.read_text().split()) < 10
            ):
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0
        paused = CrawlResult(0, "", log.read_text(), store)
        assert paused.finish_reason == "shutdown"
        assert 10 <= len(paused.ids_recorded()) < 60

        resumed = run_crawl(server, store, f"model_id={MODEL}", "limit=10", JOBDIR=jobdir)

    assert resumed.returncode == 0 and resumed.finish_reason == "finished", resumed.stderr[-3000:]
    assert "Resuming a paused job" in resumed.stderr
    recorded = resumed.ids_recorded()
    assert len(recorded) == len(set(recorded)) and set(recorded) == set(ids)


def run_workers(server: FakeCivitai, store: Path, logs: Path, count: int, *arguments: str, **settings: str):
    """``count`` workers of one shared crawl (``settings`` give its Redis), waited for together."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(count):
        with (logs / f"worker-{index}.log").open("w") as output:
            command = crawl_command(
                server, store, *arguments, LOG_LEVEL="INFO", CIVITAI_SHARED_CRAWL="true", **settings
            )
            processes.append(
                subprocess.Popen(command, cwd=REPOSITORY, env=crawl_environment(), stderr=output)
            )
    try:
        codes = [process.wait(timeout=120) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [
        CrawlResult(code, "", (logs / f"worker-{i}.log").read_text(), store) for i, code in enumerate(codes)
    ]


def test_workers_share_a_model_crawl_and_save_each_image_once(
    store: Path, redis_url: str, tmp_path: Path
) -> None:
    from tests.support.servers import redis_ids

    with FakeCivitai(cdn_delay=0.01) as server:
        ids, shared = add_model_images(server, 300)
        results = run_workers(
            server, store, tmp_path / "logs", 2, f"model_id={MODEL}", "limit=20", CIVITAI_REDIS_URL=redis_url
        )
        cdn = [request.path for request in server.cdn_requests()]

    assert all(result.returncode == 0 for result in results), results[0].stderr[-3000:]
    assert redis_ids(redis_url) == set(ids)
    assert len(cdn) == len(set(cdn)) == 300  # each image downloaded once, by one of the workers
    assert sorted(path.name for path in store.glob("*.jpg")) == sorted(f"{image_id}.jpg" for image_id in ids)


def test_a_shared_crawl_asks_an_empty_page_again(
    server: FakeCivitai, store: Path, redis_url: str, tmp_path: Path
) -> None:
    from tests.support.servers import redis_ids

    items = add_items(server, 9)
    server.inject_page(server.cursor_for(6), Fault.empty_page())

    [result] = run_workers(
        server, store, tmp_path / "logs", 1, "limit=3", CIVITAI_REDIS_URL=redis_url, **QUICK_EMPTY_PAGE
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert redis_ids(redis_url) == {item["id"] for item in items}
    assert [query.get("cursor") for query in pages(server)][2:] == [server.cursor_for(6)] * 2
    assert "answered 3 item(s) when asked again (1 of 3): going on" in result.stderr


# --- records as they really come -----------------------------------------------------------


def add_real_world_records(server: FakeCivitai) -> dict[str, dict[str, Any]]:
    """Records with the values the server's code really sends (../shared/docs/civitai-api.md, point 7)."""
    from tests.support import videos

    def media_cache(body: bytes) -> str:
        # Since June 2026 some files come from the media cache, at a URL without any extension.
        return server.add_image(f"/file/civitai-media-cache/{uuid.uuid4()}/original", body)

    png, webm = images.png_rgb(), videos.webm()
    on_site = {
        "prompt": "a lighthouse at dusk",
        "workflow": "txt2img",
        "fluxMode": "urn:air:flux1:checkpoint:civitai:618692@691639",
        "baseModel": "Flux1",
        "Created Date": "2025-02-30T25:61:00.0000000Z",
        "steps": 28,
        "seed": 12,
    }
    return {
        "model_object": server.add_image_item(
            BODY, meta={"prompt": "tea", "Model": {"name": "ponyDiffusionV6XL", "hash": "67ab2fd8ec"}}
        ),
        "comfy_not_json": server.add_image_item(BODY, meta={"prompt": "cat", "comfy": '{"prompt": {"3": '}),
        "on_site": server.add_image_item(BODY, meta=on_site, baseModel="Flux.1 D"),
        "base_model_empty": server.add_image_item(BODY, baseModel=""),
        "base_model_null": server.add_image_item(BODY, baseModel=None),
        "base_models_run_together": server.add_image_item(BODY, baseModel="SDXL 1.0Pony"),
        "versions_empty": server.add_image_item(BODY, modelVersionIds=[]),
        "versions_missing": server.add_image_item(BODY, modelVersionIds=None),
        "username_null": server.add_image_item(BODY, username=None),
        "username_unknown": server.add_image_item(BODY, username="unknown"),
        "username_missing": server.add_image_item(BODY, username=None),
        "media_cache_png": server.add_image_item(None, url=media_cache(png)),
        "media_cache_video": server.add_image_item(None, url=media_cache(webm), type="video", meta=None),
        "audio": server.add_image_item(
            None, url=server.add_image("/k/a1/original=true/a1.mp3", b"ID3"), type="audio"
        ),
    }


def test_records_as_they_really_come_are_saved_and_read_into_the_manifest(
    server: FakeCivitai, store: Path
) -> None:
    import pyarrow.parquet as pq

    from tests.support.crawls import run_scrapy_command

    records = add_real_world_records(server)
    for name in ("versions_missing", "username_missing"):
        del records[name]["modelVersionIds" if name == "versions_missing" else "username"]

    result = run_crawl(server, store, "media=all", CIVITAI_REQUIRE_PROMPT="false")

    assert result.returncode == 0 and result.finish_reason == "finished", result.stderr[-3000:]
    assert result.stats["civitai/dropped/audio"] == 1
    saved = {name: record for name, record in records.items() if name != "audio"}
    assert sorted(result.ids_recorded()) == sorted(record["id"] for record in saved.values())
    files = set(result.files())
    for name, record in saved.items():
        extension = {"media_cache_png": "png", "media_cache_video": "webm"}.get(name, "jpg")
        assert {f"{record['id']}.{extension}", f"{record['id']}_meta.json"} <= files, name
        stored = json.loads((store / f"{record['id']}_meta.json").read_text())
        assert {key: stored[key] for key in record} == record  # the record exactly as received
    assert result.error_log() == ""

    manifest = run_scrapy_command("civitai-manifest", IMAGES_STORE=str(store))
    assert manifest.returncode == 0, manifest.stderr[-3000:]
    rows = {row["id"]: row for row in pq.read_table(store / "manifest").to_pylist()}
    row = {name: rows[record["id"]] for name, record in saved.items()}
    assert row["model_object"]["model"] == "ponyDiffusionV6XL"
    assert json.loads(row["comfy_not_json"]["meta_json"])["comfy"] == '{"prompt": {"3": '
    assert (row["on_site"]["base_model"], row["on_site"]["steps"], row["on_site"]["seed"]) == (
        "Flux.1 D",
        28,
        12,
    )
    assert json.loads(row["on_site"]["meta_json"])["fluxMode"].startswith("urn:air:flux1")
    assert [row[name]["base_model"] for name in ("base_model_empty", "base_model_null")] == ["", None]
    assert row["base_models_run_together"]["base_model"] == "SDXL 1.0Pony"
    assert [row[name]["username"] for name in ("username_null", "username_unknown", "username_missing")] == [
        None,
        "unknown",
        None,
    ]
    assert (row["media_cache_png"]["format"], row["media_cache_png"]["media"]) == ("png", "image")
    assert (row["media_cache_video"]["format"], row["media_cache_video"]["media"]) == ("webm", "video")
    assert row["media_cache_png"]["url"].endswith("/original")
