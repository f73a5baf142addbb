"""Tests of :mod:`civitai_spider.download_handler`: a spooled body goes to a file, never to memory.

The reader is Scrapy's own (``http11._ResponseReader``) with its buffer swapped: these tests
drive it as Twisted does (``dataReceived``, then ``connectionLost``), so a Scrapy release that
renames what the swap relies on fails here first. The crawls of ``tests/e2e/test_crawl_videos.py``
show the rest through real HTTP: retries, redirects, timeouts, the size cap, data loss.
"""

from __future__ import annotations

import errno
import inspect
import os
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.core.downloader.handlers import http11
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from civitai_spider import download_handler
from civitai_spider.download_handler import (
    SPOOL_META_KEY,
    Spool,
    SpoolingDownloadHandler,
    _SpoolingResponseReader,
    install_reader,
)
from civitai_spider.local_files import TEMPORARY_PREFIX
from tests.support.crawls import project_crawler


class _Transport:
    """What the reader asks of its transport when it stops a download."""

    def stopProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass


class _TxResponse:
    def __init__(self, code: int) -> None:
        self.code = code


def reader_of(spool: Spool | None, *, code: int = 200, maxsize: int = 0) -> tuple[Any, list[Any]]:
    """Scrapy's reader (ours in its place) of a response ``code`` to a request with ``spool``;
    and the list its outcome lands in: the result dict, or a Failure."""
    finished: Deferred[Any] = Deferred()
    outcome: list[Any] = []
    finished.addBoth(outcome.append)
    meta = {} if spool is None else {SPOOL_META_KEY: spool}
    reader = _SpoolingResponseReader(
        finished,
        _TxResponse(code),
        Request("https://image.civitai.com/x/video.mp4", meta=meta),
        maxsize,
        0,
        True,
        project_crawler(),
    )
    reader.transport = _Transport()
    return reader, outcome


def temporary_files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.startswith(TEMPORARY_PREFIX)]


def test_a_spooled_body_goes_to_a_temporary_file_and_the_response_body_is_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "7.video")
    reader, outcome = reader_of(spool)

    chunks = [os.urandom(65536) for _ in range(5)]
    for chunk in chunks:
        reader.dataReceived(chunk)
    reader.connectionLost(Failure(ResponseDone()))
    spool.finish()

    [result] = outcome
    assert result["body"] == b""
    assert spool.path is not None and Path(spool.path).read_bytes() == b"".join(chunks)
    assert spool.size == 5 * 65536 and spool.error is None
    assert [Path(spool.path)] == temporary_files(tmp_path)  # a name the next start removes
    assert Path(spool.path).name.endswith("-7.video.partial")


@pytest.mark.parametrize(
    ("spooled", "code"), [(False, 200), (True, 302), (True, 503)], ids=["no-spool", "redirect", "error"]
)
def test_other_responses_stay_in_memory_as_scrapy_keeps_them(
    tmp_path: Path, spooled: bool, code: int
) -> None:
    spool = Spool(tmp_path, "7.video")
    reader, outcome = reader_of(spool if spooled else None, code=code)

    reader.dataReceived(b"<html>moved or busy</html>")
    reader.connectionLost(Failure(ResponseDone()))

    assert isinstance(reader._bodybuf, BytesIO)
    assert outcome[0]["body"] == b"<html>moved or busy</html>"
    assert spool.path is None and list(tmp_path.iterdir()) == []


def test_a_body_over_the_size_cap_is_cancelled_and_its_file_discarded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "7.video")
    reader, outcome = reader_of(spool, maxsize=100_000)

    reader.dataReceived(bytes(65536))
    reader.dataReceived(bytes(65536))  # over the cap: Scrapy cancels the download

    [failure] = outcome
    assert isinstance(failure, Failure)
    spool.discard()  # what the handler does when the download fails
    assert list(tmp_path.iterdir()) == []


def test_each_attempt_writes_a_new_file_and_the_last_ones_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "7.video")
    first = spool.begin()
    first.write(b"half of the first attempt")
    second = spool.begin()  # a retry
    second.write(b"the whole body")
    first.close()  # the first attempt's reader lets go late: the second's file is not touched
    second.write(b", to the end")
    spool.finish()

    assert spool.path is not None and Path(spool.path).read_bytes() == b"the whole body, to the end"
    assert temporary_files(tmp_path) == [Path(spool.path)]
    spool.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_keeps_its_error_and_drops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, "7.video")
    spool_file = spool.begin()
    spool_file.write(b"first chunk")

    def full_disk(descriptor: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download_handler.os, "write", full_disk)
    assert spool_file.write(b"second chunk") == len(b"second chunk")  # the download goes on
    monkeypatch.undo()
    spool_file.write(b"third chunk")
    spool.finish()

    assert spool.error is not None and spool.error.errno == errno.ENOSPC
    assert spool.path is not None and Path(spool.path).read_bytes() == b"first chunk"


def test_a_folder_that_cannot_take_the_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "missing", "7.video")
    spool.begin().write(b"bytes")
    spool.finish()

    assert isinstance(spool.error, FileNotFoundError)
    spool.discard()


def test_the_handler_puts_its_reader_in_scrapys_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scrapy's agent builds the reader of each response by this module-level name.
    assert "_ResponseReader(" in inspect.getsource(http11._ScrapyAgent._cb_bodyready)
    assert issubclass(SpoolingDownloadHandler, http11.HTTP11DownloadHandler)
    monkeypatch.setattr(http11, "_ResponseReader", http11._ResponseReader)  # undone after the test
    install_reader()
    assert http11._ResponseReader is _SpoolingResponseReader
