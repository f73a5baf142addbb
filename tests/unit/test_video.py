"""Tests of :func:`civitai_spider.video.check_video`: a whole MP4, WebM or Matroska, or refused.

Every check is made twice, on the bytes and on a file of them (:func:`check_video_file`, what a
crawl checks: the file a video was downloaded to), and must answer the same.
"""

from __future__ import annotations

import io
import json
import random
import re
import tempfile
import tracemalloc
from collections.abc import Callable

import av
import pytest

from civitai_spider import video
from civitai_spider.video import VideoRejected, check_video, check_video_file
from tests.support import images, videos
from tests.support.videos import (
    CLUSTER,
    CUES,
    INFO,
    SEGMENT,
    SIMPLE_BLOCK,
    TIMESTAMP,
    TRACKS,
    VOID,
    box,
    ebml,
)

#: Real videos from FFmpeg's muxers, and the extension each is saved under.
REAL: dict[str, tuple[Callable[[], bytes], str]] = {
    "mp4-h264": (videos.mp4, "mp4"),
    "mp4-fragmented": (lambda: videos.mp4(fragmented=True), "mp4"),
    "webm-vp8": (lambda: videos.webm("libvpx"), "webm"),
    "webm-vp9": (videos.webm, "webm"),
    "webm-live": (lambda: videos.webm(live=True), "webm"),
    "mkv-h264": (videos.mkv, "mkv"),
}
#: Those whose every size is known: no cut short of them looks whole.
KNOWN_SIZES = ["mp4-h264", "webm-vp8", "webm-vp9", "mkv-h264"]


def checked(body: bytes | memoryview) -> str:
    """``check_video(body)``, once the file of ``body`` was checked to give the same answer."""
    in_memory, on_disk = _outcome(check_video, body), _outcome(_check_as_a_file, body)
    assert on_disk == in_memory
    if in_memory[0] == "refused":
        raise VideoRejected(in_memory[1])
    return in_memory[1]


def _check_as_a_file(body: bytes | memoryview) -> str:
    with tempfile.NamedTemporaryFile() as file:
        file.write(body)
        file.flush()
        return check_video_file(file.name)


def _outcome(check: Callable[[bytes | memoryview], str], body: bytes | memoryview) -> tuple[str, str]:
    try:
        return "accepted", check(body)
    except VideoRejected as error:
        return "refused", str(error)


def reason(body: bytes | memoryview) -> str:
    with pytest.raises(VideoRejected) as raised:
        checked(body)
    return str(raised.value)


def webm_of(*children: bytes, unknown_size: bool = False) -> bytes:
    """A WebM built by hand: the EBML header, then a Segment of `children`."""
    return videos.ebml_header() + ebml(SEGMENT, b"".join(children), unknown_size=unknown_size)


HEADER = len(videos.ebml_header())  # where the Segment starts
SEGMENT_DATA = HEADER + 12  # an ID of 4 bytes, a size of 8
TRACKS_ELEMENT = ebml(TRACKS, b"\xae\x80")  # one empty TrackEntry
A_CLUSTER = ebml(CLUSTER, ebml(TIMESTAMP, b"\x00") + ebml(SIMPLE_BLOCK, b"\x81\x00\x00\x80frame"))


# --- accepted --------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_real_videos_are_accepted_with_their_extension(name: str) -> None:
    make, extension = REAL[name]
    assert checked(make()) == extension
    assert check_video(memoryview(make())) == extension


@pytest.mark.parametrize("name", REAL)
def test_the_test_videos_are_real_playable_files(name: str) -> None:
    with av.open(io.BytesIO(REAL[name][0]())) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == videos.FRAMES
    assert (frames[0].width, frames[0].height) == videos.DEFAULT_SIZE


def test_the_live_webm_has_a_segment_and_clusters_of_unknown_size() -> None:
    body = memoryview(videos.webm(live=True))
    containers = [
        (offset, ident) for offset, ident, _, _ in videos.elements(body) if ident in (SEGMENT, CLUSTER)
    ]
    # More than one Cluster, so that one unknown-size Cluster ends where the next starts.
    assert [ident for _, ident in containers].count(CLUSTER) > 1
    for offset, _ in containers:
        _, size, _ = video._element(body, offset, len(body))  # the parser under test
        assert size is None


@pytest.mark.parametrize(
    "body",
    [
        videos.mp4_boxes(1000),
        videos.mp4_boxes(1000, largesize=True),
        videos.mp4_boxes(1000, last_box_size_zero=True),
        videos.FTYP + box(b"free") + box(b"mdat", b"frames") + videos.MOOV,  # moov last, as ffmpeg writes
        webm_of(TRACKS_ELEMENT, A_CLUSTER, ebml(CUES, b"cues")),
        # An unknown-size Cluster ends at the next element of the Segment, in a Segment of known size too.
        webm_of(TRACKS_ELEMENT, ebml(CLUSTER, A_CLUSTER[12:], unknown_size=True), ebml(CUES, b"cues")),
        webm_of(TRACKS_ELEMENT, ebml(CLUSTER, A_CLUSTER[12:], unknown_size=True), unknown_size=True),
        # Void and CRC-32 are children of a Cluster too: they do not end an unknown-size one.
        webm_of(
            TRACKS_ELEMENT, ebml(CLUSTER, ebml(VOID) + A_CLUSTER[12:] + b"\xbf\x84abcd", unknown_size=True)
        ),
    ],
    ids=[
        "mp4",
        "mp4-largesize",
        "mp4-size-zero",
        "mp4-moov-last",
        "webm",
        "unknown-cluster-in-known-segment",
        "unknown-cluster-and-segment",
        "void-and-crc-in-unknown-cluster",
    ],
)
def test_hand_built_structures_are_accepted(body: bytes) -> None:
    assert checked(body) in ("mp4", "webm")


@pytest.mark.parametrize("largesize", [False, True])
def test_a_200_mb_video_is_checked_without_copying_it(largesize: bool) -> None:
    body = videos.mp4_boxes(200_000_000, largesize=largesize)
    tracemalloc.start()
    try:
        assert check_video(body) == "mp4"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_live_webm_cut_between_two_elements_looks_whole() -> None:
    """A limit, not a wish: with unknown sizes nothing tells where the file should end."""
    body = videos.webm(live=True)
    first_cluster = next(offset for offset, ident, _, _ in videos.elements(body) if ident == CLUSTER)
    boundaries = {offset for offset, _, _, _ in videos.elements(body) if offset > first_cluster}
    accepted = {cut for cut in range(len(body)) if _accepted(memoryview(body)[:cut])}
    assert accepted == boundaries


def test_a_fragmented_mp4_cut_after_a_fragment_looks_whole() -> None:
    """Whole fragments play: a cut after a fragment's mdat is accepted, anywhere else refused."""
    body = videos.mp4(fragmented=True)
    ends_of_fragments = set()
    offset = 0
    while offset < len(body):  # ftyp, moov, three moof/mdat pairs, mfra
        size = int.from_bytes(body[offset : offset + 4], "big")
        offset += size
        if body[offset - size + 4 : offset - size + 8] == b"mdat":
            ends_of_fragments.add(offset)
    assert len(ends_of_fragments) == videos.FRAMES // videos.KEYFRAME_EVERY
    accepted = {cut for cut in range(len(body)) if _accepted(memoryview(body)[:cut])}
    assert accepted == ends_of_fragments


def _accepted(body: memoryview) -> bool:
    try:
        checked(body)
    except VideoRejected:
        return False
    return True


# --- refused: not a video --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "empty body"),
        (images.NOT_AN_IMAGE, "not a video (body starts with b'<!DOCTYPE html><')"),
        (images.jpeg_rgb(), "not a video (body starts with b'\\xff\\xd8"),
        (images.png_rgb(), "not a video (body starts with b'\\x89PNG"),
        (json.dumps({"error": "Not Found"}).encode(), 'not a video (body starts with b\'{"error"'),
        (random.Random(5).randbytes(2000), "not a video"),
        (b"ftyp", "not a video"),
        # An AVIF picture is ISO-BMFF too, with no movie in it.
        (images.make_image("AVIF"), "MP4 without a 'moov' box"),
        (videos.ebml_header("mka") + webm_of(TRACKS_ELEMENT, A_CLUSTER)[HEADER:], "DocType 'mka'"),
    ],
    ids=["empty", "html", "jpeg", "png", "json", "random", "short", "avif", "doctype"],
)
def test_what_is_not_a_video_is_refused(body: bytes, expected: str) -> None:
    assert expected in reason(body)


# --- refused: cut short or with junk after ---------------------------------------------


CUTS: dict[str, Callable[[bytes], int]] = {
    "one-byte-short": lambda body: len(body) - 1,
    "half": lambda body: len(body) // 2,
    "after-the-first-header": lambda body: 8 if body[4:8] == b"ftyp" else 5,
}


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("name", REAL)
def test_a_video_cut_short_is_refused(name: str, cut: str) -> None:
    body = REAL[name][0]()
    assert reason(body[: CUTS[cut](body)]).startswith("cut short: ")


@pytest.mark.parametrize("name", KNOWN_SIZES)
def test_a_video_of_known_sizes_is_refused_cut_anywhere(name: str) -> None:
    body = memoryview(REAL[name][0]())  # slices of a view, as the pipeline could pass them
    reasons = {reason(body[:cut]).split(" ")[0] for cut in range(len(body))}
    # Under 8 bytes (4 for EBML): not a video yet. A cut between boxes leaves too few bytes
    # for a box header, or no moov yet; a cut right after the EBML header, no Segment.
    if name.startswith("mp4"):
        assert reasons == {"empty", "not", "cut", "junk", "MP4"}
    else:
        assert reasons == {"empty", "not", "cut", "EBML"}


def test_a_live_webm_cut_inside_an_element_is_refused() -> None:
    body = videos.webm(live=True)
    tracks = next(offset for offset, ident, _, _ in videos.elements(body) if ident == TRACKS)
    assert reason(body[: tracks + 20]).startswith(f"cut short: Tracks at offset {tracks} claims ")
    start, end = videos.simple_blocks(body)[5]
    assert reason(body[: start + 1]) == (
        f"cut short: an element header at offset {start} claims 2 bytes, the file ends at {start + 1}"
    )
    for cut in ((start + end) // 2, end - 1):
        assert reason(body[:cut]) == (
            f"cut short: SimpleBlock at offset {start} claims {end - start} bytes, the file ends at {cut}"
        )


@pytest.mark.parametrize(
    "junk", [b"\x00", bytes(100), images.NOT_AN_IMAGE, b"\xff" * 3], ids=["zero", "zeros", "html", "ff"]
)
@pytest.mark.parametrize("name", REAL)
def test_junk_after_a_video_is_refused_where_it_starts(name: str, junk: bytes) -> None:
    body = REAL[name][0]()
    assert f"at offset {len(body)}" in reason(body + junk)


@pytest.mark.parametrize("name", KNOWN_SIZES)
def test_junk_after_a_video_of_known_sizes_is_called_junk(name: str) -> None:
    body = REAL[name][0]()
    assert re.fullmatch(r"junk after the (last box|Segment) at offset \d+", reason(body + bytes(10)))


# --- refused: broken MP4 structures ----------------------------------------------------

MDAT = box(b"mdat", b"frames")
AFTER_FTYP = len(videos.FTYP)
AFTER_MOOV = AFTER_FTYP + len(videos.MOOV)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (videos.FTYP + MDAT, "MP4 without a 'moov' box"),
        (videos.FTYP + videos.MOOV, "MP4 without a 'mdat' box"),
        (videos.FTYP + videos.MOOV + box(b"free", bytes(20)), "MP4 without a 'mdat' box"),
        (
            videos.FTYP + box(b"moov", videos.MOOV[8:], size=0) + MDAT,
            f"MP4 without a 'mdat' box (box 'moov' at offset {AFTER_FTYP} has size 0:"
            " it runs to the end of the file)",
        ),
        (
            videos.FTYP + box(b"moov", size=4) + MDAT,
            f"broken box 'moov' at offset {AFTER_FTYP}: size 4, under its header",
        ),
        (
            videos.FTYP + videos.MOOV + box(b"mdat", b"x", size=12, largesize=True),
            f"broken box 'mdat' at offset {AFTER_MOOV}: size 12, under its header",
        ),
        (
            videos.FTYP + videos.MOOV + box(b"mdat", bytes(100), size=5_000_000_000, largesize=True),
            f"cut short: box 'mdat' at offset {AFTER_MOOV} claims 5000000000 bytes, the file ends at"
            f" {AFTER_MOOV + 116}",
        ),
        (
            videos.FTYP + videos.MOOV + box(b"mdat", largesize=True)[:12],
            f"cut short: the 64-bit size of box 'mdat' at offset {AFTER_MOOV} claims 16 bytes",
        ),
        (
            videos.FTYP + videos.MOOV + box(b"md\x00t", b"frames"),
            f"junk after the last box at offset {AFTER_MOOV}",
        ),
        (
            videos.FTYP + videos.MOOV + box(b"moof") + MDAT + box(b"moof"),
            f"cut short: box 'moof' at offset {AFTER_MOOV + 8 + len(MDAT)} has no 'mdat' after it",
        ),
        (
            videos.mp4_boxes(1000)[:-1],
            f"cut short: box 'mdat' at offset {AFTER_MOOV} claims 1000 bytes, the file ends at"
            f" {AFTER_MOOV + 999}",
        ),
    ],
    ids=[
        "no-moov",
        "no-mdat",
        "no-mdat-but-free",
        "size-zero-not-last",
        "size-under-header",
        "largesize-under-header",
        "lying-largesize",
        "largesize-cut",
        "unprintable-type",
        "moof-without-mdat",
        "mdat-cut",
    ],
)
def test_broken_mp4_structures_are_refused(body: bytes, expected: str) -> None:
    assert expected in reason(body)


def test_a_real_mp4_without_its_moov_is_refused() -> None:
    body = videos.mp4()
    moov = body.rindex(b"moov")  # ffmpeg writes the moov last
    assert reason(body[:moov] + b"free" + body[moov + 4 :]) == "MP4 without a 'moov' box"


# --- refused: broken Matroska structures -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (webm_of(ebml(INFO), TRACKS_ELEMENT), "no Cluster in the Segment: no video data"),
        (webm_of(ebml(INFO), A_CLUSTER), "no Tracks in the Segment: no video data"),
        (videos.ebml_header(), "EBML header without a Segment"),
        (
            ebml(videos.EBML, ebml(0x4286, b"\x01")) + webm_of(TRACKS_ELEMENT, A_CLUSTER)[HEADER:],
            "without a DocType",
        ),
        (ebml(videos.EBML, unknown_size=True), "EBML header of unknown size"),
        (
            videos.ebml_header() + ebml(VOID) + webm_of(A_CLUSTER)[HEADER:],
            f"Void at offset {HEADER} where the Segment",
        ),
        (webm_of(TRACKS_ELEMENT, A_CLUSTER) + ebml(VOID), "junk after the Segment at offset"),
        (
            webm_of(TRACKS_ELEMENT, A_CLUSTER, ebml(0x4286, b"\x01")),
            "element 0x4286 at offset",  # an EBML header element, not a child of the Segment
        ),
        (webm_of(ebml(TRACKS, unknown_size=True), A_CLUSTER), "Tracks of unknown size at offset"),
        (
            webm_of(TRACKS_ELEMENT, ebml(CLUSTER, ebml(SIMPLE_BLOCK, unknown_size=True))),
            "SimpleBlock of unknown size at offset",
        ),
        (webm_of(TRACKS_ELEMENT, A_CLUSTER, bytes(3)), "broken EBML element header at offset"),
        # IDs are at most 4 bytes long: 00001xxx starts a 5-byte one.
        (webm_of(TRACKS_ELEMENT, A_CLUSTER, b"\x08\x00\x00\x00\x01\x80"), "(byte 0x08)"),
        (webm_of(TRACKS_ELEMENT, A_CLUSTER)[:-1], f"cut short: Segment at offset {HEADER}"),
        (webm_of(TRACKS_ELEMENT, A_CLUSTER, ebml(CUES, b"cues")[:-2]), "cut short: Cues at offset"),
        (
            webm_of(TRACKS_ELEMENT, A_CLUSTER, ebml(CUES, b"cues")[:-2], unknown_size=True),
            "cut short: Cues at offset",
        ),
        (
            webm_of(TRACKS_ELEMENT, ebml(CLUSTER, A_CLUSTER[12:-1], unknown_size=True), unknown_size=True),
            "cut short: SimpleBlock at offset",
        ),
    ],
    ids=[
        "no-cluster",
        "no-tracks",
        "no-segment",
        "no-doctype",
        "unknown-size-header",
        "void-before-segment",
        "void-after-segment",
        "stranger-in-segment",
        "unknown-size-tracks",
        "unknown-size-block",
        "zeros-in-segment",
        "id-of-5-bytes",
        "segment-cut",
        "cues-cut-in-known-size-segment",
        "cues-cut-in-unknown-size-segment",
        "unknown-size-cluster-cut",
    ],
)
def test_broken_matroska_structures_are_refused(body: bytes, expected: str) -> None:
    assert expected in reason(body)


def test_a_block_past_its_cluster_names_the_parent() -> None:
    cluster = ebml(CLUSTER, ebml(SIMPLE_BLOCK, bytes(10))[:-4])
    body = webm_of(TRACKS_ELEMENT, cluster, ebml(CUES, b"cues"))
    block = SEGMENT_DATA + len(TRACKS_ELEMENT) + 12
    assert reason(body) == (
        f"SimpleBlock at offset {block} claims 19 bytes, past the end of its parent at offset {block + 15}"
    )
