"""Decompression by magic bytes: every kind, concatenation, truncation, garbage."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os

import pytest
import zstandard

from agent.errors import InvalidImage
from agent.imaging.decompress import Decompressor, ZstdFrameTracker, sniff

DATA = os.urandom(100_000) + bytes(2 << 20) + os.urandom(3000)
KINDS = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
    "zstd": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
}


def inflate(kind: str, blob: bytes, chunk: int = 1 << 20) -> bytes:
    src = io.BytesIO(blob)
    d = Decompressor(kind, src.read)
    out = bytearray()
    buf = memoryview(bytearray(chunk))
    while True:
        n = d.readinto(buf)
        out += buf[:n]
        if n < len(buf):
            return bytes(out)


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip_and_sniff(kind):
    blob = KINDS[kind](DATA)
    assert sniff(blob[:8]) == kind
    assert inflate(kind, blob) == DATA


@pytest.mark.parametrize("kind", KINDS)
def test_concatenated_streams_are_accepted(kind):
    blob = KINDS[kind](DATA[:1000]) + KINDS[kind](DATA[1000:])
    assert inflate(kind, blob) == DATA


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", [1, 9, 500])
def test_truncation_is_an_error(kind, cut):
    blob = KINDS[kind](DATA)
    with pytest.raises(InvalidImage, match="truncated"):
        inflate(kind, blob[:-cut])


@pytest.mark.parametrize("kind", KINDS)
def test_trailing_garbage_is_an_error(kind):
    with pytest.raises(InvalidImage, match="trailing garbage"):
        inflate(kind, KINDS[kind](DATA) + b"\x00garbage" * 4)


@pytest.mark.parametrize("kind", KINDS)
def test_output_per_call_is_bounded(kind):
    """A small input that inflates hugely never comes back in one piece."""
    blob = KINDS[kind](bytes(12 << 20))
    d = Decompressor(kind, io.BytesIO(blob).read)
    buf = memoryview(bytearray(1 << 20))
    assert d.readinto(buf) == len(buf)
    assert d.produced == len(buf)


def test_uncompressed_is_not_sniffed():
    assert sniff(b"\x00" * 8) is None
    assert sniff(b"EFI PART") is None


def test_zstd_tracker_skippable_frame():
    frame = zstandard.ZstdCompressor().compress(b"abc")
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"xyz"
    tracker = ZstdFrameTracker()
    tracker.feed(skippable + frame)
    assert tracker.at_boundary and tracker.frames == 2
    tracker.feed(frame[:5])
    assert not tracker.at_boundary


def inflate_external(blob: bytes) -> bytes:
    from agent.imaging.decompress import ExternalXz
    src = io.BytesIO(blob)
    d = ExternalXz(src.read)
    out = bytearray()
    buf = memoryview(bytearray(1 << 20))
    try:
        while True:
            n = d.readinto(buf)
            out += buf[:n]
            if n < len(buf):
                return bytes(out)
    finally:
        d.close()


def test_external_xz_matches_and_is_strict():
    blob = lzma.compress(DATA)
    assert inflate_external(blob) == DATA
    assert inflate_external(blob + blob) == DATA + DATA
    with pytest.raises(InvalidImage, match="truncated"):
        inflate_external(blob[:-20])
    with pytest.raises(InvalidImage, match="trailing garbage"):
        inflate_external(blob + b"garbage!")


@pytest.mark.parametrize("inflater", [lambda b: inflate("xz", b), inflate_external])
def test_xz_stream_padding_is_accepted(inflater):
    assert inflater(lzma.compress(DATA) + bytes(8)) == DATA


@pytest.mark.parametrize("kind", KINDS)
def test_a_finished_decompressor_is_freed(kind):
    """No reference cycle through the C decompressor: the collector cannot see into it."""
    import gc
    import weakref

    d = Decompressor(kind, io.BytesIO(KINDS[kind](DATA)).read)
    buf = memoryview(bytearray(len(DATA) + 1))
    assert d.readinto(buf) == len(DATA)
    gone = weakref.ref(d)
    del d
    gc.collect()
    assert gone() is None
