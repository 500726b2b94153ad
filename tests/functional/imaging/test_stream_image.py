"""The byte path on real loop devices, fed by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import subprocess
import threading
import time

import pytest
import zstandard

from agent.disk import blockdev
from agent.disk.partition_table import read_table
from agent.errors import (
    Cancelled,
    ImageChecksumError,
    ImageDownloadError,
    InvalidImage,
    UnsafeDevice,
)
from agent.imaging.checksum import Expected
from agent.imaging.deploy import stream_image
from agent.imaging.head import open_image
from agent.imaging.source import HTTPSource
from agent.imaging.stream import StreamOptions
from agent.progress import Progress
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1 << 20


def make_gpt_image(tmp_path, size: int = 24 * MiB) -> bytes:
    """A GPT disk image with random data in partitions and long zero runs."""
    path = tmp_path / "image.raw"
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sgdisk", "-n", "1:2048:+4M", "-t", "1:ef00", "-n", "2:0:0", str(path)],
                   check=True, capture_output=True)
    rnd = os.urandom(3 * MiB + 1234)
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(rnd)
        f.seek(12 * MiB + 512)        # unaligned island in the middle of zeros
        f.write(rnd[:700 * 1024])
    return path.read_bytes()


def sha256(data: bytes) -> Expected:
    return Expected("sha256", hashlib.sha256(data).hexdigest(), "test")


def source(server, name: str = "image.raw", **kw) -> HTTPSource:
    kw.setdefault("retries", 3)
    kw.setdefault("retry_interval", 0.01)
    kw.setdefault("timeout", 5)
    return HTTPSource([f"{server.url}/{name}"], **kw)


def device_bytes(dev: str, n: int) -> bytes:
    with open(dev, "rb") as f:
        return f.read(n)


def assert_unbootable(dev: str) -> None:
    table = read_table(dev)
    assert table.kind is None, f"{dev} still has a {table.kind} partition table"
    assert device_bytes(dev, MiB) == bytes(MiB)


@pytest.fixture
def image(tmp_path):
    return make_gpt_image(tmp_path)


def test_raw_image_lands_byte_for_byte(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    report = stream_image(open_image(source(image_server)), loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image)) == image
    assert report.digest == hashlib.sha256(image).hexdigest()
    assert report.image_bytes == len(image)
    assert report.write_path == "O_DIRECT"
    assert report.zero_path == "punch-hole"
    assert report.zeroed_bytes > 10 * MiB     # the zero runs were punched, not written
    assert read_table(loop_disk).kind == "gpt"


def test_zero_runs_are_written_when_skipping_is_off(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    with open(loop_disk, "r+b") as f:         # stale bytes that must not survive
        f.seek(8 * MiB)
        f.write(b"\xff" * MiB)
    report = stream_image(open_image(source(image_server)), loop_disk, sha256(image),
                          options=StreamOptions(zero_skip=False, direct=False))
    assert report.zero_path == "write" and report.zeroed_bytes == 0
    assert device_bytes(loop_disk, len(image)) == image


def test_punched_zero_runs_overwrite_stale_data(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    with open(loop_disk, "r+b") as f:
        f.seek(8 * MiB)
        f.write(b"\xff" * MiB)
    stream_image(open_image(source(image_server)), loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image))[8 * MiB:9 * MiB] == bytes(MiB)


@pytest.mark.parametrize("kind,compress", [
    ("gzip", gzip.compress), ("xz", lzma.compress), ("bzip2", bz2.compress),
    ("zstd", lambda d: zstandard.ZstdCompressor().compress(d))])
def test_compressed_images(kind, compress, image, image_server, loop_disk):
    blob = compress(image)
    image_server.files["image.raw.x"] = blob
    report = stream_image(open_image(source(image_server, "image.raw.x")), loop_disk, sha256(blob))
    assert report.compression == kind
    assert device_bytes(loop_disk, len(image)) == image
    assert report.received_bytes == len(blob)


def test_checksum_mismatch_leaves_no_partition_table(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    wrong = Expected("sha256", "0" * 64, "test")
    with pytest.raises(ImageChecksumError) as exc:
        stream_image(open_image(source(image_server)), loop_disk, wrong)
    assert "without a partition table" in exc.value.details
    assert_unbootable(loop_disk)
    # the image's own backup GPT (at the image end) must not survive either
    tail = device_bytes(loop_disk, len(image))[-MiB:]
    assert b"EFI PART" not in tail


def test_checksum_mismatch_downloads_once_more_then_fails(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    with pytest.raises(ImageChecksumError):
        stream_image(open_image(source(image_server)), loop_disk, Expected("sha256", "1" * 64, "t"))
    assert len([e for e in image_server.log if e["path"] == "image.raw"]) == 2


@pytest.mark.parametrize("kind,compress", [("gzip", gzip.compress),
                                           ("zstd", zstandard.ZstdCompressor().compress)])
def test_truncated_and_trailing_garbage_fail(kind, compress, image, image_server, loop_disk):
    blob = compress(image)
    for name, data in (("trunc", blob[:-100]), ("garbage", blob + b"garbage" * 10)):
        image_server.files[name] = data
        with pytest.raises(InvalidImage) as exc:
            stream_image(open_image(source(image_server, name)), loop_disk, sha256(data))
        assert ("truncated" if name == "trunc" else "trailing garbage") in exc.value.details
        assert_unbootable(loop_disk)


@pytest.mark.parametrize("offsets", [[1], [MiB - 7], [5 * MiB + 3, 9 * MiB, 17 * MiB + 11]])
def test_dropped_connection_resumes_with_range(offsets, image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    image_server.drop_at = list(offsets)
    src = source(image_server)
    report = stream_image(open_image(src), loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image)) == image
    assert report.resumes == len(offsets) and report.restarts == 0
    ranged = [e for e in image_server.log if e["range"]]
    assert [e["range"] for e in ranged] == [f"bytes={o}-" for o in offsets]
    assert all(e["if_range"] == image_server.etag for e in ranged)


def test_server_without_range_restarts_from_zero(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    image_server.ranges = False
    image_server.drop_at = [7 * MiB + 5]
    report = stream_image(open_image(source(image_server)), loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image)) == image
    assert report.restarts == 1 and report.resumes == 0
    assert report.digest == hashlib.sha256(image).hexdigest()
    # the second pass reads the response that answered the Range request with 200,
    # not the closed first one (which would cost a third request)
    assert len(image_server.log) == 2, image_server.log


def test_changed_file_is_not_spliced(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    image_server.drop_at = [3 * MiB]

    def change_etag() -> None:   # the server's copy changes between the two requests
        image_server.etag = '"v2"'
    threading.Timer(0, change_etag).start()
    time.sleep(0.05)
    report = stream_image(open_image(source(image_server)), loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image)) == image
    assert report.restarts + report.resumes == 1


def test_404_is_not_retried(image_server, loop_disk):
    with pytest.raises(ImageDownloadError) as exc:
        stream_image(open_image(source(image_server, "missing")), loop_disk, sha256(b""))
    assert "404" in exc.value.details
    assert len(image_server.log) == 1


def test_503_then_200_is_retried(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    image_server.statuses = [503, 503]
    stream_image(open_image(source(image_server)), loop_disk, sha256(image))
    assert [e["status"] for e in image_server.log] == [503, 503, 200]
    assert device_bytes(loop_disk, len(image)) == image


def test_retries_are_bounded(image_server, loop_disk):
    image_server.statuses = [503] * 10
    with pytest.raises(ImageDownloadError):
        stream_image(open_image(source(image_server, retries=2)), loop_disk, sha256(b""))
    assert len(image_server.log) == 3


def test_second_url_is_tried_after_a_404(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    src = HTTPSource([f"{image_server.url}/gone", f"{image_server.url}/image.raw"],
                     retries=1, retry_interval=0.01, timeout=5)
    stream_image(open_image(src), loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image)) == image


def test_cancel_mid_write_leaves_disk_unbootable(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    image_server.throttle_s = 0.05
    cancel = threading.Event()
    progress = Progress()

    def check() -> None:
        if cancel.is_set():
            raise Cancelled("cancelled by test")
    threading.Timer(2.5, cancel.set).start()   # after the 8 MiB head was inspected
    with pytest.raises(Cancelled) as exc:
        stream_image(open_image(source(image_server)), loop_disk, sha256(image), progress=progress,
                     cancel_check=check)
    assert "will not boot" in exc.value.details
    assert 0 < progress.snapshot()["done"] < len(image)
    assert_unbootable(loop_disk)


def test_progress_rises_while_writing(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    image_server.throttle_s = 0.02
    progress = Progress()
    seen = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(progress.snapshot())
            time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()
    stream_image(open_image(source(image_server)), loop_disk, sha256(image), progress=progress)
    done.set()
    writes = [s["done"] for s in seen if s["phase"] == "write"]
    assert len(set(writes)) >= 3 and writes == sorted(writes)
    assert any(s.get("total") == len(image) for s in seen)
    assert any(s.get("rate") for s in seen if s["phase"] == "write")


def test_verify_after_write(image, image_server, loop_disk):
    image_server.files["image.raw"] = image
    report = stream_image(open_image(source(image_server)), loop_disk, sha256(image),
                          options=StreamOptions(verify_after_write=True))
    assert report.verified_after_write


def test_mounted_target_is_refused_before_any_write(tmp_path, make_loop):
    dev = make_loop(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", dev], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        before = device_bytes(dev, 2 * MiB)
        with pytest.raises(UnsafeDevice) as exc:
            blockdev.check_target(dev, allow_loop=True)
        assert str(mnt) in exc.value.details
        assert device_bytes(dev, 2 * MiB) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_target_checks(make_loop, tmp_path):
    dev = make_loop(16 * MiB)
    with pytest.raises(UnsafeDevice, match="loop device"):
        blockdev.check_target(dev)
    with pytest.raises(UnsafeDevice, match="larger than"):
        blockdev.check_target(dev, image_size=17 * MiB, allow_loop=True)
    assert blockdev.check_target(dev, allow_loop=True) == 16 * MiB
    plain = tmp_path / "file"
    plain.write_bytes(b"x")
    with pytest.raises(UnsafeDevice, match="not a block device"):
        blockdev.check_target(str(plain))


def test_image_larger_than_device_fails_and_wipes(image_server, make_loop):
    dev = make_loop(8 * MiB)
    big = os.urandom(9 * MiB)
    image_server.files["big"] = big
    with pytest.raises(Exception) as exc:
        stream_image(open_image(source(image_server, "big")), dev, sha256(big))
    assert "larger than" in str(exc.value)
    assert_unbootable(dev)


@pytest.mark.parametrize("kind,compress", [
    (None, None), ("zstd", lambda d: zstandard.ZstdCompressor(level=3).compress(d)),
    ("gzip", gzip.compress)])
def test_a_stage_never_judges_a_buffer_after_handing_it_on(kind, compress, image,
                                                           image_server, loop_disk,
                                                           monkeypatch):
    """The next stage may empty and recycle a buffer before ``put`` returns.

    A single-CPU ramdisk VM hit this: the decompressor read ``buf.n`` after the
    writer had recycled the buffer, took it for a short read, ended the stream
    early and left the receiving stages waiting forever.  Here every hand-off
    yields long enough for the consumer to finish with what it was given.
    """
    from agent.imaging import plumbing

    handed_on = plumbing.Pipe.put

    def put_then_yield(self, item):
        handed_on(self, item)
        time.sleep(0.03)

    monkeypatch.setattr(plumbing.Pipe, "put", put_then_yield)
    image_server.files["image.bin"] = compress(image) if compress else image
    deadline = time.monotonic() + 60

    def give_up_instead_of_hanging() -> None:
        if time.monotonic() > deadline:
            raise Cancelled("the pipeline stalled")

    report = stream_image(open_image(source(image_server, "image.bin")), loop_disk,
                          sha256(image_server.files["image.bin"]),
                          cancel_check=give_up_instead_of_hanging)
    assert report.compression == kind
    assert report.image_bytes == len(image)
    assert device_bytes(loop_disk, len(image)) == image


@pytest.mark.parametrize("compress", [None, gzip.compress, lzma.compress,
                                      lambda d: zstandard.ZstdCompressor().compress(d)])
def test_no_buffer_outlives_the_write(compress, image, image_server, loop_disk):
    """A ramdisk writes many images in one life (cleaning, rebuilds, retries); each
    write's buffers must go with it.  zstd once kept 8 MiB and its context per image."""
    import gc

    from agent.imaging import plumbing

    blob = compress(image) if compress else image
    image_server.files["image.bin"] = blob
    for _ in range(2):
        stream_image(open_image(source(image_server, "image.bin")), loop_disk, sha256(blob))
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, plumbing.Buffer)] == []
