"""Cursor chains: the walks a crawl is made of.

The API lists images as a chain of pages, each naming the next one's cursor, so one chain is
walked one page at a time; a crawl is one chain, or several (``split``, a model's versions:
:mod:`civitai_spider.query` makes their queries) walked at once.

A :class:`Chain` is where one walk stands: the URL of its next page, its page count, the
cursors it followed (a cursor given twice is a loop), whether its last page was full (an empty
page after a full one is asked again) and, with ``stop_after_seen``, how many
already-downloaded images it met in a row. The spider keeps chains in memory (and in the
JOBDIR state); a shared crawl keeps them in Redis (:mod:`civitai_spider.shared_crawl.crawl`). A
paused job's chains stand before their oldest page with items not done (:class:`ListedPage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from civitai_spider.outcomes import CURSOR_LOOP

#: How a chain ended (``Chain.end``), besides CURSOR_LOOP (a finish reason of its own).
END_OF_LISTING = "end"
MAX_PAGES = "max_pages"
CAUGHT_UP = "caught_up"


@dataclass
class Chain:
    """Where one walk stands. ``next_url`` is the page to fetch next (``None`` once it ended)."""

    name: str
    next_url: str | None
    #: Pages fetched and handed on.
    pages: int = 0
    #: The cursors (or ``nextPage`` addresses) it followed -> the page each one led to.
    cursors_seen: dict[str, int] = field(default_factory=dict)
    #: Whether the last page held ``limit`` items: an empty page without a cursor after it is
    #: not taken for the end at once (the spider asks again, CIVITAI_EMPTY_PAGE_RETRIES).
    last_page_full: bool = False
    #: Already-downloaded images in a row (``stop_after_seen``).
    seen_streak: int = 0
    #: Why it ended: END_OF_LISTING, MAX_PAGES, CAUGHT_UP or CURSOR_LOOP; ``None`` while live.
    end: str | None = None

    @property
    def live(self) -> bool:
        return self.end is None

    def follow(self, url: str, cursor: str) -> bool:
        """Make ``url``, reached by ``cursor``, the next page; False when the chain followed
        that cursor before: it ends then, as a loop (CURSOR_LOOP)."""
        if cursor in self.cursors_seen:
            self.end = CURSOR_LOOP
            return False
        self.cursors_seen[cursor] = self.pages + 1
        self.next_url = url
        return True

    def rewind(self, page: int, listed: ListedPage) -> None:
        """Stand again where the chain stood before ``page`` (``listed``): it is fetched next."""
        self.next_url = listed.url
        self.pages = page - 1
        self.seen_streak = listed.seen_streak
        self.last_page_full = listed.last_page_full
        self.end = None
        # The cursors of the pages after it are followed again: not a loop.
        self.cursors_seen = {key: led_to for key, led_to in self.cursors_seen.items() if led_to <= page}


@dataclass
class ListedPage:
    """A page whose items are not all through the pipelines yet, and where its chain stood
    before it: a paused job (JOBDIR) rewinds the chain to its oldest such page, so that what
    a stop left unsaved is listed again."""

    url: str
    seen_streak: int
    last_page_full: bool
    #: Its items not yet saved, dropped or failed.
    pending: int


def cursor_of(url: str | None) -> str | None:
    """The cursor a page URL asks for (``None``: the first page)."""
    if url is None:
        return None
    return dict(parse_qsl(urlsplit(url).query)).get("cursor")


def crawl_end(ends: list[str | None]) -> str | None:
    """The finish reason a crawl whose chains ended so takes, ``None`` for Scrapy's own.

    A chain that looped makes the crawl incomplete (``cursor_loop``, exit status 1); chains
    that all caught up end it as ``caught_up``.
    """
    if CURSOR_LOOP in ends:
        return CURSOR_LOOP
    if ends and all(end == CAUGHT_UP for end in ends):
        return CAUGHT_UP
    return None
