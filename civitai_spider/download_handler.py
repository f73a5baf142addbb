"""Scrapy's HTTP/1.1 download handler, but a video's body goes to a file as it arrives.

Scrapy holds every body whole in memory until the download ends (``_ResponseReader`` writes
each chunk to a ``BytesIO``), so a crawl with four videos of a gigabyte in flight needs four
gigabytes. A request whose ``meta`` holds a :class:`Spool` (the media pipeline gives one to
each video) has its body written to a temporary file instead, chunk by chunk: the response
comes with an empty body, and the spool says where the bytes are. Every other request (API
pages, images) is Scrapy's handler's, untouched.

Why this way: the reading stays Scrapy's own. The only thing replaced is the buffer
Scrapy's reader writes each chunk to, and only for a spooled 200 response: a subclass of
the reader swaps its ``_bodybuf`` for the spool's file. So everything Scrapy does with a
download still holds: the downloader middlewares (retries, redirects, the API key), the
timeout (``download_timeout``), the size cap (``download_maxsize``: cancelled from the
``Content-Length``, or once that many bytes came without one), data loss (a body shorter than
its ``Content-Length``, or a chunked body cut before its end, fails), the ``bytes_received``
signal. The price is two private names of ``scrapy.core.downloader.handlers.http11``: the
class ``_ResponseReader`` (replaced in that module by our subclass, which does what it did
for any request without a spool) and its attributes ``_request``, ``_txresponse`` and
``_bodybuf``; ``tests/unit/test_download_handler.py`` pins them. Scrapy's streaming handlers
(aiohttp, httpx) buffer the same way and need a library this project does not install.

The file is made with :func:`~civitai_spider.local_files.create_temporary` in the folder the
spool names (the store's folder, or the log folder for a bucket), so a ``kill -9`` leaves a
temporary file that the next start removes, never a file under a final name. A failed
attempt (timeout, too large, cut short, an error) removes its file at once; a retry writes a
new one. Only 200 responses are spooled: a redirect's or an error page's body stays in
memory, as small as it is today, and never leaves a file behind.

Writing a chunk is an ``os.write`` to the page cache in the reactor thread, as Scrapy's
reader copies it into its buffer there: tens of microseconds for Twisted's 64 KB reads.
Scrapy counts ``downloader/response_bytes`` from the body it is handed, empty here, so the
spooled bytes are added to that statistic here.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers import http11
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler

from civitai_spider.local_files import create_temporary

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response

#: ``Request.meta`` key: the :class:`Spool` a download's body is written to.
SPOOL_META_KEY = "civitai_spool"


class Spool:
    """Where the body of one download goes: a temporary file beside ``folder / name``.

    Shared by the copies of its request that retries and redirects make (``meta`` is copied
    shallowly): each attempt that gets a 200 response writes a new file, the previous one
    removed. Once the download is done, :attr:`path` is the file holding the whole body
    (None if nothing was spooled: an empty body, a response other than 200) and
    :attr:`error` the error that stopped its writing (a full disk), if any. Whoever takes the
    file (the media pipeline) moves it into place or calls :meth:`discard`.
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.target = folder / name
        self._file: _SpoolFile | None = None

    @property
    def path(self) -> str | None:
        return self._file.path if self._file is not None else None

    @property
    def size(self) -> int:
        return self._file.size if self._file is not None else 0

    @property
    def error(self) -> OSError | None:
        return self._file.error if self._file is not None else None

    def begin(self) -> _SpoolFile:
        """A new file for an attempt's body, in place of the last attempt's."""
        self.discard()
        self._file = _SpoolFile(self.target)
        return self._file

    def finish(self) -> None:
        """The download is done: every byte is in the file; release its descriptor."""
        if self._file is not None:
            self._file.close()

    def discard(self) -> None:
        """Remove the file, if any (one already moved into place stays where it was moved)."""
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file.path)
            self._file = None


class _SpoolFile:
    """One attempt's file, in the role of the ``BytesIO`` that Scrapy's reader writes to.

    A write that fails (a full disk) keeps its error and drops the rest of the body: the
    download itself goes on to its end and its outcome is Scrapy's; the media pipeline then
    fails the item as a store failure, with the reason.
    """

    def __init__(self, target: Path) -> None:
        self.size = 0
        self.error: OSError | None = None
        try:
            self._descriptor, self.path = create_temporary(target)
        except OSError as error:
            self._descriptor, self.path, self.error = -1, str(target), error

    def write(self, data: bytes) -> int:
        if self._descriptor < 0:
            return len(data)
        try:
            with memoryview(data) as view:
                written = 0
                while written < len(view):
                    written += os.write(self._descriptor, view[written:])
        except OSError as error:
            self.error = error
            self.close()
        else:
            self.size += len(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b""  # the body is in the file

    def truncate(self, size: int | None = None) -> int:
        return 0  # over the size cap: the download is cancelled, and its file discarded

    def close(self) -> None:
        if self._descriptor >= 0:
            descriptor, self._descriptor = self._descriptor, -1
            os.close(descriptor)


class _SpoolingResponseReader(http11._ResponseReader):
    """Scrapy's reader of a response body, writing to the request's spool when it has one
    and the response is a 200."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spool = self._request.meta.get(SPOOL_META_KEY)
        if isinstance(spool, Spool) and self._txresponse.code == 200:
            self._bodybuf = spool.begin()  # type: ignore[assignment]


def install_reader() -> None:
    """Put our reader in the place of Scrapy's: its agent builds the reader of each response
    by this module-level name. Any request without a spool is read as before."""
    http11._ResponseReader = _SpoolingResponseReader  # type: ignore[misc]


class SpoolingDownloadHandler(HTTP11DownloadHandler):
    """``DOWNLOAD_HANDLERS`` for http and https: Scrapy's HTTP/1.1 handler, spooling the
    bodies of requests that carry a :class:`Spool`."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._stats = crawler.stats
        install_reader()

    async def download_request(self, request: Request) -> Response:
        spool = request.meta.get(SPOOL_META_KEY)
        if not isinstance(spool, Spool):
            return await super().download_request(request)
        try:
            response = await super().download_request(request)
        except BaseException:
            spool.discard()
            raise
        spool.finish()
        if spool.size:
            self._stats.inc_value("downloader/response_bytes", spool.size)
        return response
