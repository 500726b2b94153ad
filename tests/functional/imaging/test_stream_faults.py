"""Issue 15, points 3 and 5: retries that cannot leave a bootable disk or loop forever."""

from __future__ import annotations

import threading

import pytest

from agent.disk.partition_table import read_table
from agent.errors import ImageChecksumError, ImageDownloadError
from agent.imaging.checksum import Expected
from agent.imaging.deploy import stream_image
from agent.imaging.head import open_image
from agent.imaging.source import HTTPSource
from tests.conftest import requires_loop
from tests.functional.imaging.test_stream_image import make_gpt_image, sha256

pytestmark = requires_loop
MiB = 1 << 20


def source(server, name: str = "image.raw", **kw) -> HTTPSource:
    kw.setdefault("retries", 3)
    kw.setdefault("retry_interval", 0.01)
    kw.setdefault("timeout", 5)
    return HTTPSource([f"{server.url}/{name}"], **kw)


def gpt_anywhere(dev: str, length: int) -> list[int]:
    """Offsets of every GPT header signature in the first ``length`` bytes and the last MiB."""
    found = []
    with open(dev, "rb") as f:
        data = f.read(length)
        f.seek(0, 2)
        size = f.tell()
        f.seek(size - MiB)
        tail = f.read()
    for blob, base in ((data, 0), (tail, size - MiB)):
        pos = blob.find(b"EFI PART")
        while pos >= 0:
            found.append(base + pos)
            pos = blob.find(b"EFI PART", pos + 1)
    return found


# --- 3. a retry after a checksum mismatch leaves nothing bootable -------------------------

def test_failed_second_pass_leaves_no_backup_gpt(tmp_path, server, loop_disk):
    image = make_gpt_image(tmp_path)
    server.files["image.raw"] = image
    original = server._handle

    def handle(h):
        # the first pass is served whole; the second breaks at 5 MiB and cannot resume
        if server.count("image.raw") == 1:
            server.drop_at = [5 * MiB]
            server.serve_limit["image.raw"] = 2
        original(h)
    server._handle = handle
    with pytest.raises(ImageDownloadError) as exc:
        stream_image(open_image(source(server)), loop_disk, Expected("sha256", "2" * 64, "t"))
    assert "404" in exc.value.details
    assert server.count("image.raw") == 3
    assert read_table(loop_disk).kind is None
    assert gpt_anywhere(loop_disk, len(image)) == []


def test_nothing_bootable_while_the_second_pass_runs(tmp_path, server, loop_disk):
    """What a kill during the second download would find."""
    image = make_gpt_image(tmp_path)
    server.files["image.raw"] = image
    result: dict = {}

    def run() -> None:
        try:
            stream_image(open_image(source(server)), loop_disk, Expected("sha256", "3" * 64, "t"))
        except ImageChecksumError as exc:
            result["error"] = exc

    def stall_second_pass() -> None:
        # the first pass runs to the end; only the re-download stops half way
        while server.count("image.raw") < 1:
            threading.Event().wait(0.01)
        server.stall_at["image.raw"] = 12 * MiB

    threading.Thread(target=stall_second_pass, daemon=True).start()
    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert server.stalled.wait(60), "the second pass never reached the stall point"
        assert server.count("image.raw") == 2
        assert read_table(loop_disk).kind is None
        assert gpt_anywhere(loop_disk, len(image)) == []
    finally:
        server.release.set()
        worker.join(60)
    assert not worker.is_alive() and "error" in result
    assert gpt_anywhere(loop_disk, len(image)) == []


# --- 5. no endless restart loop ----------------------------------------------------------

def test_server_that_cuts_every_response_at_the_same_byte_fails_clearly(tmp_path, server,
                                                                        loop_disk):
    image = make_gpt_image(tmp_path)
    server.files["image.raw"] = image
    server.ranges = False
    server.cut_every_at = 13 * MiB + 5       # past the 8 MiB read for inspection
    with pytest.raises(ImageDownloadError) as exc:
        stream_image(open_image(source(server, retries=3)), loop_disk, sha256(image))
    assert "restart" in exc.value.details and "404" not in exc.value.details
    # the first request, ``retries`` restarts, and the one that was refused
    assert server.count("image.raw") <= 1 + 3 + 1
    assert read_table(loop_disk).kind is None


def test_resumes_that_bring_nothing_new_are_bounded_by_time(tmp_path, server, loop_disk):
    image = make_gpt_image(tmp_path)
    server.files["image.raw"] = image
    server.ranges = False
    server.cut_every_at = 13 * MiB + 5
    server.throttle_s = 0.01
    src = source(server, retries=50, stall_limit=0.5)
    with pytest.raises(ImageDownloadError) as exc:
        stream_image(open_image(src), loop_disk, sha256(image))
    assert "no new data" in exc.value.details
    assert read_table(loop_disk).kind is None


def test_reconnections_without_progress_are_bounded_by_count(server):
    data = bytes(range(256)) * 8192          # 2 MiB
    server.files["f"] = data
    server.cut_every_at = MiB               # with Range: each resume at 1 MiB gets 0 bytes
    src = source(server, "f", retries=4)
    src.open()
    buf = bytearray(4 << 20)
    got = 0
    with pytest.raises(ImageDownloadError) as exc:
        while True:
            n = src.readinto(memoryview(buf)[got:])
            if not n:
                break
            got += n
    assert got == MiB
    assert "at byte 1048576" in exc.value.details
    assert server.count("f") <= 1 + 4 + 1
