"""The byte path's copies: the body is read into the caller's buffer, zero grains are
judged without copying them, and both still give the right answers."""

from __future__ import annotations

import hashlib
import mmap
import os
import tracemalloc

import requests

from agent.imaging import plumbing
from agent.imaging.source import HTTPSource, body_reader
from agent.imaging.writer import ZERO_GRAIN, is_zero
from bench.harness import python_server

MiB = 1 << 20


def read_all(source: HTTPSource) -> tuple[str, int]:
    """The body's sha256 through 2 MiB pipeline buffers, and the most Python allocated
    at once while reading."""
    buf = plumbing.Buffer(2 * MiB)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        while True:
            n = plumbing.fill(source.readinto, buf)
            digest.update(buf.view[:n])
            if n < len(buf.view):
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return digest.hexdigest(), peak


def test_the_body_is_read_into_the_buffer_without_a_copy(tmp_path):
    data = os.urandom(9 * MiB + 123)
    (tmp_path / "image").write_bytes(data)
    with python_server(str(tmp_path)) as url:
        source = HTTPSource([f"{url}/image"], retries=0)
        source.open()
        try:
            got, peak = read_all(source)
        finally:
            source.close()
    assert got == hashlib.sha256(data).hexdigest() and source.received == len(data)
    # urllib3's readinto allocated a bytes object the size of every read (2 MiB)
    assert peak < 256 << 10, peak


def test_a_decoding_response_keeps_urllib3s_reader(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    with python_server(str(tmp_path)) as url, requests.get(f"{url}/f", stream=True) as resp:
        assert body_reader(resp).__self__ is not resp.raw
        resp.raw.decode_content = True      # only urllib3 would decode: it must read then
        reader = body_reader(resp)
        assert reader.__self__ is resp.raw
        buf = bytearray(200)
        assert reader(memoryview(buf)) == 100 and bytes(buf[:100]) == b"x" * 100


def test_zero_grains_are_recognised_in_writable_and_read_only_buffers():
    mem = mmap.mmap(-1, 2 * ZERO_GRAIN)
    grain = memoryview(mem)[:ZERO_GRAIN]
    assert is_zero(grain)
    assert is_zero(memoryview(bytes(ZERO_GRAIN)))              # read-only: copied, compared
    for where in (0, 1, ZERO_GRAIN // 2, ZERO_GRAIN - 2, ZERO_GRAIN - 1):
        mem[where] = 7
        assert not is_zero(grain), where
        assert not is_zero(memoryview(bytes(grain))), where
        mem[where] = 0
    # a non-zero byte just past the grain is not the grain's
    mem[ZERO_GRAIN] = 1
    assert is_zero(grain)
    assert not is_zero(memoryview(mem)[1:ZERO_GRAIN + 1])
