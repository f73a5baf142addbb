"""What ``scrapy civitai-status`` shows: every shared crawl under a prefix, as Redis holds it.

Read with plain (blocking) redis-py: the command runs outside any crawl. Nothing is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from civitai_spider.chains import cursor_of
from civitai_spider.shared_crawl.consumer import GROUP
from civitai_spider.shared_crawl.crawl import HEARTBEAT_INTERVAL

#: A worker whose last heartbeat is older than this many heartbeats is shown as silent.
_SILENT_AFTER_BEATS = 3


@dataclass
class ChainStatus:
    name: str
    pages: int
    #: How it ended ("end", "max_pages", "caught_up", "cursor_loop"); None while live.
    end: str | None
    #: The cursor of its next page (None: the first page, or it ended).
    cursor: str | None


@dataclass
class WorkerStatus:
    name: str
    #: "working", "stopped: <finish reason>", or "silent" when its heartbeats stopped.
    state: str
    seconds_since_heartbeat: float
    report: dict[str, Any]


@dataclass
class CrawlStatus:
    digest: str
    walk: int
    status: str
    started: float | None
    finished: float | None
    definition: dict[str, Any]
    chains: list[ChainStatus] = field(default_factory=list)
    #: Images waiting for a worker, and taken by one but not finished.
    images_queued: int = 0
    images_in_flight: int = 0
    workers: list[WorkerStatus] = field(default_factory=list)
    #: The crawl-wide counts: items_seen, pages, queued, saved, saved/image, dropped/<reason>, failed.
    totals: dict[str, int] = field(default_factory=dict)


def crawl_statuses(client: redis.Redis, prefix: str) -> list[CrawlStatus]:
    """The current walk of every crawl under ``prefix``, most recently started first."""
    # The casts: ``client`` decodes replies (civitai-status makes it with decode_responses),
    # but redis-py types them as bytes | str whatever the client.
    now = time.time()
    statuses = []
    for digest in sorted(cast("set[str]", client.smembers(f"{prefix}:crawls"))):
        crawl_key = f"{prefix}:crawl:{digest}"
        walk = int(client.hget(crawl_key, "run") or 0)
        if not walk:
            continue
        key = f"{crawl_key}:{walk}"
        state = cast("dict[str, str]", client.hgetall(f"{key}:state"))
        status = CrawlStatus(
            digest=digest,
            walk=walk,
            status=state.get("status", "unknown"),
            started=_number(state.get("started")),
            finished=_number(state.get("finished")),
            definition=json.loads(client.hget(crawl_key, "definition") or "{}"),
            totals={
                name: int(value)
                for name, value in cast("dict[str, str]", client.hgetall(f"{key}:stats")).items()
            },
        )
        for name, value in cast("dict[str, str]", client.hgetall(f"{key}:chains")).items():
            chain = json.loads(value)
            status.chains.append(
                ChainStatus(name, int(chain["pages"]), chain.get("end"), cursor_of(chain.get("url")))
            )
        order = json.loads(state.get("chains") or "[]")  # as the spider made them
        status.chains.sort(key=lambda chain: order.index(chain.name) if chain.name in order else len(order))
        queued_or_taken = client.xlen(f"{key}:images") if client.exists(f"{key}:images") else 0
        status.images_in_flight = _pending(client, f"{key}:images")
        status.images_queued = max(queued_or_taken - status.images_in_flight, 0)
        for name, value in sorted(cast("dict[str, str]", client.hgetall(f"{key}:workers")).items()):
            report = json.loads(value)
            age = max(now - float(report.get("beat", 0)), 0.0)
            worker_state = report.get("state", "working")
            if worker_state == "working" and age > _SILENT_AFTER_BEATS * HEARTBEAT_INTERVAL:
                worker_state = "silent"
            status.workers.append(WorkerStatus(name, worker_state, age, report))
        statuses.append(status)
    statuses.sort(key=lambda status: status.started or 0, reverse=True)
    return statuses


def _pending(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xpending(stream, GROUP)["pending"])
    except redis.ResponseError:  # no such stream or group (a walk from before, cleaned up)
        return 0


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def as_json(statuses: list[CrawlStatus]) -> str:
    return json.dumps([asdict(status) for status in statuses], indent=2, ensure_ascii=False)


def as_text(statuses: list[CrawlStatus]) -> str:
    """The report a person reads."""
    lines: list[str] = []
    for status in statuses:
        lines += _crawl_lines(status)
        lines.append("")
    return "\n".join(lines).rstrip()


def _crawl_lines(status: CrawlStatus) -> list[str]:
    when = (
        f"since {_clock(status.started)}" if status.status == "running" else f"at {_clock(status.finished)}"
    )
    definition = status.definition
    limits = (
        ("max_pages", definition.get("max_pages")),
        ("stop_after_seen", definition.get("stop_after_seen")),
    )
    arguments = ", ".join(f"{name}={value}" for name, value in limits if value)
    lines = [
        f"Crawl {status.digest}, walk {status.walk}: {status.status} {when}",
        f"  API: {definition.get('api_url', '?')}" + (f" ({arguments})" if arguments else ""),
    ]
    live = [chain for chain in status.chains if chain.end is None]
    lines.append(f"  Chains: {len(status.chains)} ({len(live)} live, {len(status.chains) - len(live)} done)")
    width = max((len(chain.name) for chain in status.chains), default=0)
    for chain in status.chains:
        if chain.end is not None:
            where = f"done ({chain.end})"
        else:
            where = f"live, next cursor {chain.cursor}" if chain.cursor else "live, next: page 1"
        lines.append(f"    {chain.name:<{width}}  {chain.pages:>6} page(s)  {where}")
    totals = status.totals
    dropped = {
        name.removeprefix("dropped/"): count for name, count in totals.items() if name.startswith("dropped/")
    }
    lines.append(
        f"  Images: {status.images_queued} queued, {status.images_in_flight} in flight, "
        f"{totals.get('saved', 0)} saved, {totals.get('failed', 0)} failed, {sum(dropped.values())} dropped"
    )
    alive = [worker for worker in status.workers if worker.state == "working"]
    lines.append(f"  Workers: {len(alive)} alive, {len(status.workers) - len(alive)} stopped or silent")
    width = max((len(worker.name) for worker in status.workers), default=0)
    for worker in status.workers:
        report = worker.report
        in_flight = (
            f"{report.get('pages_in_flight', 0)} page(s), {report.get('images_in_flight', 0)} image(s)"
        )
        done = f"{report.get('pages_handed_on', 0)} page(s), {report.get('images_finished', 0)} image(s)"
        lines.append(
            f"    {worker.name:<{width}}  {worker.state:<10}  last heartbeat "
            f"{worker.seconds_since_heartbeat:.0f} s ago; in flight {in_flight}; done {done}"
        )
    seen = totals.get("items_seen", 0)
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))
    lines.append(
        f"  Totals: {seen} item(s) seen on {totals.get('pages', 0)} page(s): {totals.get('saved', 0)} saved "
        f"({totals.get('saved/image', 0)} images, {totals.get('saved/video', 0)} videos), "
        f"{totals.get('failed', 0)} failed, {sum(dropped.values())} dropped"
        + (f" ({reasons})" if reasons else "")
    )
    return lines


def _clock(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "?"
