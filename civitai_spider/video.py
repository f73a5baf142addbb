"""Decide whether downloaded bytes are a whole video, and the extension to save it under.

Functions of the bytes (no Scrapy, no decoder), run in a worker thread by the pipeline, on
the file a video was downloaded to (:func:`check_video_file`) or on bytes in memory
(:func:`check_video`). A structural check, as for JPEG and PNG in ``imaging``: a video cut short
or followed by an error page is refused, without decoding a frame.

- MP4 (ISO-BMFF, first box ``ftyp``): the top-level box sizes add up to the file length
  exactly, and there is a ``moov`` (what to play) and an ``mdat`` (the frames).
  A fragmented MP4 (``moov``, then ``moof``/``mdat`` pairs) is accepted.
- WebM and Matroska (an EBML header whose DocType is ``webm`` or ``matroska``, then a
  Segment): the element sizes add up exactly at the top level and inside the Segment, and
  the Segment has Tracks and a Cluster. Live muxers leave sizes unknown: the Segment's
  (ffmpeg writing to a pipe), its Clusters' too (a browser's MediaRecorder). Such a Cluster
  ends where the next child of the Segment starts (a Cluster, Cues...), and its blocks must
  fit. A live file cut between two blocks looks whole; one cut inside a block is refused.
- Bodies are up to 1 GiB: nothing is copied; headers are read a few bytes at a time,
  and the work is proportional to the number of boxes or elements, not of bytes. A file is
  read with ``pread``, a window of :data:`_WINDOW` bytes at a time, never mapped: mapped
  pages that the walk touches would count in the crawl's peak RSS, and the walk skips
  ``mdat`` and the frames without reading them.
"""

from __future__ import annotations

import os
from typing import Protocol, SupportsIndex, overload

_EBML = 0x1A45DFA3
_DOC_TYPE = 0x4282
_SEGMENT = 0x18538067
_TRACKS = 0x1654AE6B
_CLUSTER = 0x1F43B675
_VOID = 0xEC
_CRC32 = 0xBF
# The Segment's children (level 1) in the Matroska specification. An unknown-size Cluster
# ends where one of them starts; any other ID there is a sign of junk.
_LEVEL_1 = {
    0x114D9B74: "SeekHead",
    0x1549A966: "Info",
    _TRACKS: "Tracks",
    _CLUSTER: "Cluster",
    0x1C53BB6B: "Cues",
    0x1043A770: "Chapters",
    0x1254C367: "Tags",
    0x1941A469: "Attachments",
    _VOID: "Void",
    _CRC32: "CRC-32",
}
_NAMES = {
    **_LEVEL_1,
    _EBML: "EBML header",
    _DOC_TYPE: "DocType",
    _SEGMENT: "Segment",
    0xE7: "Timestamp",
    0xA3: "SimpleBlock",
    0xA0: "BlockGroup",
}
# Void and CRC-32 may sit in a Cluster too: they do not end it.
_ENDS_A_CLUSTER = _LEVEL_1.keys() - {_VOID, _CRC32}
_EXTENSIONS = {"webm": "webm", "matroska": "mkv"}


#: Bytes a file's walk reads at once: the headers of a Cluster's blocks are often a few
#: kilobytes apart, and one read then serves many of them.
_WINDOW = 64 * 1024


class VideoRejected(Exception):
    """The bytes cannot be stored as a video; the message is the reason."""


class _Bytes(Protocol):
    """What the walk needs of the bytes: their length, a byte, a slice."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, key: SupportsIndex, /) -> int: ...

    @overload
    def __getitem__(self, key: slice, /) -> bytes | memoryview: ...


class _FileBytes:
    """A file's bytes, read as the walk asks for them (``pread``, a window at a time)."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor
        self._size = os.fstat(descriptor).st_size
        self._window, self._window_start = b"", 0

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, key: SupportsIndex, /) -> int: ...

    @overload
    def __getitem__(self, key: slice, /) -> bytes: ...

    def __getitem__(self, key: SupportsIndex | slice, /) -> int | bytes:
        if isinstance(key, slice):
            start, stop, _ = key.indices(self._size)
            return self._read(start, stop)
        index = key.__index__()
        if not 0 <= index < self._size:
            raise IndexError(index)
        return self._read(index, index + 1)[0]

    def _read(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        offset = start - self._window_start
        if offset < 0 or stop - self._window_start > len(self._window):
            self._window = os.pread(self._descriptor, max(stop - start, _WINDOW), start)
            self._window_start, offset = start, 0
        return self._window[offset : offset + stop - start]


def check_video_file(path: str | os.PathLike[str]) -> str:
    """:func:`check_video` of the bytes of the file at ``path``, read as the walk needs them."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _check(_FileBytes(descriptor))
    finally:
        os.close(descriptor)


def check_video(body: bytes | memoryview) -> str:
    """Return the extension to save ``body`` under ("mp4", "webm" or "mkv"), or raise
    :class:`VideoRejected` with the reason."""
    return _check(memoryview(body).cast("B"))  # slices of a view are views: no copy of the body


def _check(view: _Bytes) -> str:
    if not len(view):
        raise VideoRejected("empty body")
    if view[4:8] == b"ftyp":
        _check_mp4(view)
        return "mp4"
    if int.from_bytes(view[:4], "big") == _EBML:
        return _check_matroska(view)
    raise VideoRejected(f"not a video (body starts with {bytes(view[:16])!r})")


def _name(ident: int | bytes) -> str:
    """An MP4 box type or an EBML element ID, as the reasons show it."""
    if isinstance(ident, bytes):
        return f"box {ident.decode('ascii')!r}"
    return _NAMES.get(ident, f"element {ident:#x}")


def _check_fits(name: str, offset: int, stop: int, limit: int, end: int) -> None:
    """Refuse an element at ``offset`` that runs to ``stop``, past its parent's ``limit``."""
    if stop <= limit:
        return
    claim = f"{name} at offset {offset} claims {stop - offset} bytes"
    if limit == end:
        raise VideoRejected(f"cut short: {claim}, the file ends at {end}")
    raise VideoRejected(f"{claim}, past the end of its parent at offset {limit}")


# --- MP4 -------------------------------------------------------------------------------


def _check_mp4(view: _Bytes) -> None:
    end = len(view)
    offset = 0
    kinds: set[bytes] = set()
    to_the_end = ""
    last_moof = last_mdat = -1
    while offset < end:
        kind = bytes(view[offset + 4 : offset + 8])
        # A box type is four printable characters; anything else (zero padding, an error
        # page's text, a box header cut in two) is not a box.
        if len(kind) < 4 or not all(0x20 <= byte < 0x7F for byte in kind):
            raise VideoRejected(f"junk after the last box at offset {offset}")
        size = int.from_bytes(view[offset : offset + 4], "big")
        header = 8
        if size == 1:  # a 64-bit size follows the type
            header = 16
            _check_fits(f"the 64-bit size of {_name(kind)}", offset, offset + header, end, end)
            size = int.from_bytes(view[offset + 8 : offset + 16], "big")
        elif size == 0:
            # The box runs to the end of the file: the last one by definition. One that
            # is not last swallows those after it, hence the note on a missing box.
            size = end - offset
            to_the_end = f" ({_name(kind)} at offset {offset} has size 0: it runs to the end of the file)"
        if size < header:
            raise VideoRejected(f"broken {_name(kind)} at offset {offset}: size {size}, under its header")
        _check_fits(_name(kind), offset, offset + size, end, end)
        kinds.add(kind)
        if kind == b"moof":
            last_moof = offset
        elif kind == b"mdat":
            last_mdat = offset
        offset += size
    for needed in (b"moov", b"mdat"):
        if needed not in kinds:
            raise VideoRejected(f"MP4 without a {needed.decode()!r} box{to_the_end}")
    # A fragment's frames are in the mdat after its moof: a file cut between the two lacks them.
    if last_moof > last_mdat:
        raise VideoRejected(f"cut short: box 'moof' at offset {last_moof} has no 'mdat' after it")


# --- WebM and Matroska -----------------------------------------------------------------


def _check_matroska(view: _Bytes) -> str:
    end = len(view)
    _, size, data = _element(view, 0, end)
    if size is None:
        raise VideoRejected("EBML header of unknown size")
    header_end = data + size
    _check_fits(_name(_EBML), 0, header_end, end, end)
    doc_type = _doc_type(view, data, header_end)
    if doc_type not in _EXTENSIONS:
        raise VideoRejected(f"EBML DocType {doc_type!r}: neither WebM nor Matroska")

    if header_end == end:
        raise VideoRejected("EBML header without a Segment")
    ident, size, data = _element(view, header_end, end)
    if ident != _SEGMENT:
        raise VideoRejected(f"{_name(ident)} at offset {header_end} where the Segment should be")
    segment_end = end if size is None else data + size
    _check_fits(_name(_SEGMENT), header_end, segment_end, end, end)
    if segment_end < end:
        raise VideoRejected(f"junk after the Segment at offset {segment_end}")
    _check_segment(view, data, segment_end)
    return _EXTENSIONS[doc_type]


def _doc_type(view: _Bytes, offset: int, stop: int) -> str:
    while offset < stop:
        ident, size, data = _element(view, offset, stop)
        if size is None:
            raise VideoRejected(f"{_name(ident)} of unknown size at offset {offset} in the EBML header")
        _check_fits(_name(ident), offset, data + size, stop, len(view))
        if ident == _DOC_TYPE:
            # EBML strings may be padded with zeros. A name this short, so the copy is tiny.
            return bytes(view[data : data + min(size, 32)]).rstrip(b"\x00").decode("ascii", "replace")
        offset = data + size
    raise VideoRejected("EBML header without a DocType")


def _check_segment(view: _Bytes, offset: int, stop: int) -> None:
    seen: set[int] = set()
    while offset < stop:
        ident, size, data = _element(view, offset, stop)
        if ident not in _LEVEL_1:
            raise VideoRejected(f"{_name(ident)} at offset {offset} in the Segment: not one of its elements")
        if size is not None:
            child_end = data + size
            _check_fits(_name(ident), offset, child_end, stop, len(view))
            if ident == _CLUSTER:
                _check_cluster(view, data, child_end, unknown_size=False)
        elif ident == _CLUSTER:
            child_end = _check_cluster(view, data, stop, unknown_size=True)
        else:
            raise VideoRejected(f"{_name(ident)} of unknown size at offset {offset}: only a Cluster may be")
        seen.add(ident)
        offset = child_end
    for needed in (_TRACKS, _CLUSTER):
        if needed not in seen:
            raise VideoRejected(f"no {_name(needed)} in the Segment: no video data")


def _check_cluster(view: _Bytes, offset: int, stop: int, *, unknown_size: bool) -> int:
    """Walk a Cluster's children from ``offset`` to at most ``stop``; return where it ends."""
    while offset < stop:
        ident, size, data = _element(view, offset, stop)
        if unknown_size and ident in _ENDS_A_CLUSTER:
            return offset
        if size is None:
            raise VideoRejected(f"{_name(ident)} of unknown size at offset {offset} in a Cluster")
        _check_fits(_name(ident), offset, data + size, stop, len(view))
        offset = data + size
    return offset


def _element(view: _Bytes, offset: int, stop: int) -> tuple[int, int | None, int]:
    """The ID, the size (None if unknown) and the data offset of the element at ``offset``."""
    id_length = _vint_length(view, offset, stop, 4)
    size_offset = offset + id_length
    size_length = _vint_length(view, size_offset, stop, 8)
    data = size_offset + size_length
    _check_fits("an element header", offset, data, stop, len(view))
    ident = int.from_bytes(view[offset:size_offset], "big")  # an ID keeps its marker bit
    size = int.from_bytes(view[size_offset:data], "big")
    all_ones = (1 << 7 * size_length) - 1
    size &= all_ones  # a size drops its marker bit; all value bits set means unknown
    return ident, None if size == all_ones else size, data


def _vint_length(view: _Bytes, offset: int, stop: int, longest: int) -> int:
    """The length of the EBML variable-length integer at ``offset``: 1xxxxxxx is one byte,
    01xxxxxx xxxxxxxx two, and so on."""
    if offset >= stop:
        return 1  # past the parent: the caller refuses the header as running past it
    length = 9 - view[offset].bit_length()
    if length > longest:
        raise VideoRejected(f"broken EBML element header at offset {offset} (byte {view[offset]:#04x})")
    return length
