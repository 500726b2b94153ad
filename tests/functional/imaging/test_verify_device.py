"""Read-back verification on a real loop device: every byte is compared, wherever it is."""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.errors import ImageChecksumError
from agent.imaging.verify import verify_device
from agent.progress import Progress

MiB = 1 << 20


def put(dev: str, data: bytes, offset: int = 0) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def data() -> bytes:
    # several read buffers and a tail that is not a whole sector
    return os.urandom(5 * MiB + 1000)


def test_the_bytes_written_pass(data, make_loop):
    dev = make_loop(16 * MiB)
    put(dev, data, 4 * MiB)
    progress = Progress()
    verify_device(dev, len(data), hashlib.sha256(data).hexdigest(), progress, lambda: None,
                  offset=4 * MiB)
    assert progress.snapshot()["done"] == len(data)


@pytest.mark.parametrize("where", [0, 2 * MiB + 17, -1])
def test_one_changed_byte_fails(where, data, make_loop):
    dev = make_loop(16 * MiB)
    changed = bytearray(data)
    changed[where] ^= 0xFF
    put(dev, bytes(changed))
    with pytest.raises(ImageChecksumError) as exc:
        verify_device(dev, len(data), hashlib.sha256(data).hexdigest(), Progress(),
                      lambda: None)
    assert "different bytes" in exc.value.details


def test_a_device_shorter_than_the_image_fails(make_loop):
    dev = make_loop(4 * MiB)
    with pytest.raises(ImageChecksumError) as exc:
        verify_device(dev, 6 * MiB, "0" * 64, Progress(), lambda: None)
    assert "ended at byte 4194304" in exc.value.details


def test_cancel_stops_the_read_back(data, make_loop):
    dev = make_loop(16 * MiB)
    put(dev, data)

    class Cancelled(Exception):
        pass

    def cancel() -> None:
        raise Cancelled()
    with pytest.raises(Cancelled):
        verify_device(dev, len(data), hashlib.sha256(data).hexdigest(), Progress(), cancel)


def test_an_unaligned_offset_is_refused(make_loop):
    with pytest.raises(ValueError):
        verify_device(make_loop(4 * MiB), MiB, "0" * 64, Progress(), lambda: None, offset=512)
