"""Real small videos made with PyAV (FFmpeg's encoders), returned as bytes, for tests.

Each video shows a gradient with a rectangle moving across it: 12 frames of 64x48 by
default, a keyframe every 4, a few kilobytes made in milliseconds, and cached. Also MP4
and EBML structures built by hand, for what no muxer writes: boxes of size 0 or with a
64-bit size, an mdat of hundreds of megabytes made in a blink, a Segment without a Cluster.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator

import av
from PIL import Image, ImageDraw

DEFAULT_SIZE: tuple[int, int] = (64, 48)
FRAMES = 12
# A keyframe every few frames, so that a video has several fragments (MP4) or Clusters.
KEYFRAME_EVERY = 4
# ffmpeg starts a Cluster at a keyframe once the current one lasts this long (ms; 5 s by default).
_CLUSTERS = (("cluster_time_limit", "100"),)

EBML = 0x1A45DFA3
DOC_TYPE = 0x4282
SEGMENT = 0x18538067
INFO = 0x1549A966
TRACKS = 0x1654AE6B
CLUSTER = 0x1F43B675
CUES = 0x1C53BB6B
VOID = 0xEC
TIMESTAMP = 0xE7
SIMPLE_BLOCK = 0xA3


def _frame(size: tuple[int, int], number: int) -> Image.Image:
    width, height = size
    picture = Image.linear_gradient("L").resize(size).convert("RGB")
    left = number * width // FRAMES
    ImageDraw.Draw(picture).rectangle(
        (left, height // 4, left + width // 3, height * 3 // 4), fill=(250, 250, 30)
    )
    return picture


@functools.lru_cache
def _encode(
    container_format: str,
    codec: str,
    size: tuple[int, int],
    frames: int,
    options: tuple[tuple[str, str], ...] = (),
) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format, options=dict(options)) as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_EVERY
        for number in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_image(_frame(size, number))))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return buffer.getvalue()


def mp4(
    width: int = 64, height: int = 48, frames: int = FRAMES, codec: str = "libx264", fragmented: bool = False
) -> bytes:
    """An MP4 as ffmpeg writes it to a file (ftyp, free, mdat, moov), or fragmented as for
    streaming (ftyp, an empty moov, moof/mdat pairs, mfra)."""
    options = (("movflags", "frag_keyframe+empty_moov"),) if fragmented else ()
    return _encode("mp4", codec, (width, height), frames, options)


def webm(
    codec: str = "libvpx-vp9", *, live: bool = False, width: int = 64, height: int = 48, frames: int = FRAMES
) -> bytes:
    """A WebM; ``live``: with a Segment and Clusters of unknown size, as a browser's
    MediaRecorder writes it."""
    if not live:
        return _encode("webm", codec, (width, height), frames, _CLUSTERS)
    # ffmpeg's live mode leaves the Segment's size unknown but still writes each Cluster's
    # size (it buffers a Cluster whole); MediaRecorder does not, so unknown they are made.
    return _unknown_size_clusters(
        _encode("webm", codec, (width, height), frames, (*_CLUSTERS, ("live", "1")))
    )


def mkv(codec: str = "libx264", *, width: int = 64, height: int = 48, frames: int = FRAMES) -> bytes:
    """A Matroska file (DocType matroska), with the CRC-32 elements ffmpeg writes in it."""
    return _encode("matroska", codec, (width, height), frames, _CLUSTERS)


# --- MP4 boxes by hand -----------------------------------------------------------------


def box(kind: bytes, payload: bytes = b"", *, size: int | None = None, largesize: bool = False) -> bytes:
    """An MP4 box; ``size`` overrides the size written (0: to the end of the file)."""
    if largesize:
        return (
            (1).to_bytes(4, "big")
            + kind
            + (16 + len(payload) if size is None else size).to_bytes(8, "big")
            + payload
        )
    return (8 + len(payload) if size is None else size).to_bytes(4, "big") + kind + payload


FTYP = box(b"ftyp", b"isom" + (512).to_bytes(4, "big") + b"isomiso2avc1mp41")
MOOV = box(b"moov", box(b"mvhd", bytes(100)))


def mp4_boxes(mdat_size: int, *, largesize: bool = False, last_box_size_zero: bool = False) -> bytes:
    """ftyp, moov, then an mdat of ``mdat_size`` bytes in all, its data zeros (cheap to make
    however large), with a 64-bit size or with size 0 (to the end of the file)."""
    if last_box_size_zero:
        mdat = box(b"mdat", size=0)  # size 0 is only ever in the 32-bit field
    else:
        mdat = box(b"mdat", size=mdat_size, largesize=largesize)
    return FTYP + MOOV + mdat + bytes(mdat_size - len(mdat))


# --- EBML elements by hand and a walk through real files -------------------------------


def ebml(ident: int, payload: bytes = b"", *, unknown_size: bool = False) -> bytes:
    """An EBML element: its ID, its size in 8 bytes (or unknown), its payload."""
    size = (1 << 56) - 1 if unknown_size else len(payload)
    return (
        ident.to_bytes((ident.bit_length() + 7) // 8, "big") + (1 << 56 | size).to_bytes(8, "big") + payload
    )


def ebml_header(doc_type: str = "webm") -> bytes:
    return ebml(EBML, ebml(DOC_TYPE, doc_type.encode()))


def _number(body: bytes, offset: int) -> tuple[int, int]:
    """The EBML variable-length integer at `offset` (marker bit kept) and its length."""
    length = 9 - body[offset].bit_length()
    return int.from_bytes(body[offset : offset + length], "big"), length


def elements(body: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, ID, size offset, end) of each element of a well-formed WebM or Matroska in
    file order, stepping into the Segment and the Clusters (whose end may then be meaningless:
    their size may be unknown)."""
    offset = 0
    while offset < len(body):
        ident, id_length = _number(body, offset)
        size, size_length = _number(body, offset + id_length)
        data = offset + id_length + size_length
        end = data + (size & ((1 << 7 * size_length) - 1))
        yield offset, ident, offset + id_length, end
        offset = data if ident in (SEGMENT, CLUSTER) else end


def _unknown_size_clusters(body: bytes) -> bytes:
    """`body` with the size of each Cluster made unknown: all value bits set, in as many bytes,
    so that nothing moves."""
    patched = bytearray(body)
    for _, ident, size_offset, _ in elements(body):
        if ident == CLUSTER:
            length = _number(body, size_offset)[1]
            patched[size_offset : size_offset + length] = ((1 << 7 * length + 1) - 1).to_bytes(length, "big")
    return bytes(patched)


def simple_blocks(body: bytes) -> list[tuple[int, int]]:
    """Where each SimpleBlock of `body` starts and ends."""
    return [(offset, end) for offset, ident, _, end in elements(body) if ident == SIMPLE_BLOCK]
