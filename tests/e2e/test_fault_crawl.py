"""A long crawl under random faults: all that the server would serve is saved, every item is accounted for.

2,000 items over 100 pages. One image request in ten fails once or twice at random (500,
503 with Retry-After, a connection reset, a body cut short against its Content-Length,
an answer slower than DOWNLOAD_TIMEOUT), and one page in ten fails once (503, 429, HTML
with status 200). Some images fail for good (404, not an image, truncated, always 500),
some items are below the thresholds or listed twice. The crawl must finish, save every
image the server would eventually serve, and reconcile exactly: saved + dropped by reason
+ failed = items seen, in the stats as in error_log.txt and the ID file.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from tests.support import images
from tests.support.crawls import run_crawl
from tests.support.fake_civitai import FakeCivitai, Fault

ITEM_COUNT = 2000
PAGE_SIZE = 20
IMAGE_FAULT_RATE = 0.10
PAGE_FAULT_RATE = 0.10
DOWNLOAD_TIMEOUT = 3.0
BODIES = {"jpg": images.jpeg_rgb(), "png": images.png_rgb(), "webp": images.webp_rgb()}
#: Images that never come, and the reason their error_log.txt line must give.
PERMANENT_FAILURES = {
    "missing": "HTTP 404",
    "not_an_image": "not an image",
    "truncated": "truncated JPEG",
    "always_500": "HTTP 500",
}


def transient_image_fault(rng: random.Random) -> Fault:
    return rng.choice(
        [
            Fault.status(500),
            Fault.status(503, retry_after="1"),
            Fault.reset(),
            Fault.short_body(),
            Fault.slow(DOWNLOAD_TIMEOUT + 1.5),
        ]
    )


def page_fault(rng: random.Random) -> Fault:
    return rng.choice([Fault.status(503, retry_after="1"), Fault.status(429), Fault.html_200()])


@dataclass
class Plan:
    """What the crawl must end with, decided while the items are made."""

    saved: dict[int, str] = field(default_factory=dict)  # id -> kind of body served
    failed: dict[int, str] = field(default_factory=dict)  # id -> reason expected in error_log.txt
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    image_faults: int = 0
    page_faults: int = 0


def build(server: FakeCivitai, rng: random.Random) -> Plan:
    """Serve ITEM_COUNT items with faults chosen by ``rng``; return what must become of them."""
    plan = Plan()
    while len(server.items) < ITEM_COUNT:
        roll = rng.random()
        if roll < 0.01 and plan.saved:  # the API lists an item again (pages shift on a live site)
            original = rng.choice(sorted(plan.saved))
            server.add_raw_item(next(dict(item) for item in server.items if item["id"] == original))
            plan.dropped["duplicate"] += 1
            continue
        if roll < 0.04:
            server.add_image_item(BODIES["jpg"], stats={"heartCount": 0, "likeCount": 1})
            plan.dropped["below_threshold"] += 1
            continue
        if roll < 0.06:
            kind = rng.choice(sorted(PERMANENT_FAILURES))
            body = {
                "missing": None,
                "not_an_image": images.NOT_AN_IMAGE,
                "truncated": images.truncated(BODIES["jpg"]),
                "always_500": BODIES["jpg"],
            }[kind]
            item = server.add_image_item(body)
            if kind == "always_500":
                server.inject_always(item["url"], Fault.status(500))
            plan.failed[item["id"]] = PERMANENT_FAILURES[kind]
            continue
        kind = rng.choice(sorted(BODIES))
        item = server.add_image_item(BODIES[kind])
        plan.saved[item["id"]] = kind
        if rng.random() < IMAGE_FAULT_RATE:
            faults = [transient_image_fault(rng) for _ in range(rng.choice([1, 1, 1, 2]))]
            server.inject(item["url"], *faults)
            plan.image_faults += len(faults)
    for offset in range(0, ITEM_COUNT, PAGE_SIZE):
        if rng.random() < PAGE_FAULT_RATE:
            server.inject_page(server.cursor_for(offset) if offset else None, page_fault(rng))
            plan.page_faults += 1
    return plan


def check_saved_file(path: Path, kind: str) -> None:
    if kind in ("jpg", "png"):
        assert path.read_bytes() == BODIES[kind], f"{path.name}: the original bytes must be kept"
    with Image.open(path) as image:
        image.load()
        assert image.size == images.DEFAULT_SIZE


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [20261126])
def test_crawl_under_random_faults_saves_all_it_can_and_reconciles(store: Path, seed: int) -> None:
    rng = random.Random(seed)
    with FakeCivitai() as server:
        plan = build(server, rng)
        assert plan.page_faults >= 5 and plan.image_faults >= 150, "the seed injects too few faults"

        result = run_crawl(
            server,
            store,
            f"limit={PAGE_SIZE}",
            timeout=240,
            DOWNLOAD_TIMEOUT=str(DOWNLOAD_TIMEOUT),
            LOG_LEVEL="INFO",  # DEBUG would log 2,000 items twice
        )
        faults_left = server.faults_left()
        api_requests = len(server.api_requests())

    assert result.returncode == 0, result.stderr[-5000:]
    assert result.finish_reason == "finished", result.stderr[-5000:]
    assert "Traceback" not in result.stderr
    assert faults_left == 0, "some injected faults were never met: the crawl missed requests"
    assert api_requests >= ITEM_COUNT // PAGE_SIZE + plan.page_faults

    # Every image the server would eventually serve is saved, once, whole.
    recorded = result.ids_recorded()
    assert len(recorded) == len(set(recorded)), "an id is twice in the ID file"
    assert set(recorded) == set(plan.saved), (
        f"missing: {sorted(set(plan.saved) - set(recorded))[:20]},"
        f" unexpected: {sorted(set(recorded) - set(plan.saved))[:20]}"
    )
    for image_id, kind in plan.saved.items():
        extension = "png" if kind == "png" else "jpg"
        check_saved_file(store / f"{image_id}.{extension}", kind)

    # The permanent failures: one error_log.txt line each with its reason, no file.
    lines = result.error_log().splitlines()
    logged = Counter(int(line.split("\t")[1]) for line in lines)
    assert logged == Counter(list(plan.failed)), "each failed image must have exactly one error_log.txt line"
    for line in lines:
        image_id = int(line.split("\t")[1])
        assert plan.failed[image_id] in line, line
        assert not list(store.glob(f"{image_id}.*")), f"a failed image {image_id} left a file"

    # The counts reconcile exactly.
    stats = result.stats
    dropped = {
        key.removeprefix("civitai/dropped/"): value
        for key, value in stats.items()
        if key.startswith("civitai/dropped/")
    }
    assert stats["civitai/items_seen"] == ITEM_COUNT
    assert stats["civitai/saved"] == len(plan.saved)
    assert stats["civitai/failed"] == len(plan.failed) == len(lines)
    assert dropped == dict(plan.dropped)
    assert stats["civitai/saved"] + sum(dropped.values()) + stats["civitai/failed"] == ITEM_COUNT
    # Each transient fault cost one retry; the always-500 images used up theirs.
    assert stats["retry/count"] >= plan.image_faults + plan.page_faults
