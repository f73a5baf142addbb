"""A benchmark video: a structurally whole MP4 (``ftyp``, ``moov``, ``mdat``) of any size.

The crawl never decodes a video, it walks its top-level boxes and writes the bytes, so
the content of ``mdat`` does not matter; its size is what costs memory and time.
"""

from __future__ import annotations

import struct


def make_video(size: int) -> bytes:
    """An MP4 of exactly ``size`` bytes (at least a few dozen)."""
    ftyp = _box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
    moov = _box(b"moov", _box(b"mvhd", bytes(100)))
    header = 8
    mdat_payload = size - len(ftyp) - len(moov) - header
    if mdat_payload < 0:
        raise ValueError(f"a video needs at least {len(ftyp) + len(moov) + header} bytes")
    return b"".join((ftyp, moov, struct.pack(">I4s", header + mdat_payload, b"mdat"), bytes(mdat_payload)))


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload
