"""Non-raw images onto real loop devices, through the real qemu-img.

Every image is made by qemu-img here; the bytes that land on the device must
equal ``qemu-img convert -O raw`` of the same image.  Malicious images must be
refused before the device changes at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess

import pytest

from agent.errors import ImageChecksumError, InvalidImage, UnsafeDevice
from agent.imaging import formats, nonraw
from agent.imaging import qemu_img as qemu_img_mod
from tests.conftest import requires_loop

pytestmark = requires_loop

MiB = 1 << 20
VSIZE = 64 * MiB
GARBAGE = b"\xee"
# data in the first MiB (the part written last), across the boundary, and at the end
DATA_AT = (0, 512 * 1024, MiB - 4096, 5 * MiB, 33 * MiB + 777, VSIZE - 200 * 1024)


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def raw_source(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("src") / "disk.raw")
    rnd = random.Random(4)
    with open(path, "wb") as f:
        f.truncate(VSIZE)
        for off in DATA_AT:
            f.seek(off)
            f.write(rnd.randbytes(150 * 1024)[:VSIZE - off])
        f.seek(20 * MiB)
        f.write(b"compressible " * 50000)
    return path


def make_image(tmp_path, raw: str, driver: str, *opts: str) -> str:
    out = str(tmp_path / f"image.{driver}")
    qemu_img("convert", "-f", "raw", "-O", driver, *opts, raw, out)
    return out


def reference(tmp_path, image: str, driver: str) -> tuple[int, str]:
    ref = str(tmp_path / "reference.raw")
    qemu_img("convert", "-f", driver, "-O", "raw", image, ref)
    with open(ref, "rb") as f:
        data = f.read()
    return len(data), hashlib.sha256(data).hexdigest()


def fill(device: str, size: int) -> None:
    with open(device, "r+b") as f:
        f.write(GARBAGE * size)
        f.flush()
        os.fsync(f.fileno())


def device_bytes(device: str, start: int, length: int) -> bytes:
    with open(device, "rb") as f:
        return os.pread(f.fileno(), length, start)


def digest(device: str, length: int) -> str:
    h = hashlib.sha256()
    with open(device, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 4 * MiB))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


FORMATS = [("qcow2", ()), ("qcow2", ("-c",)), ("vmdk", ()),
           ("vmdk", ("-o", "subformat=streamOptimized")), ("vhdx", ()), ("vpc", ()),
           ("vdi", ()), ("qed", ())]


@pytest.mark.parametrize("driver,opts", FORMATS, ids=[f"{d}{''.join(o)}" for d, o in FORMATS])
def test_device_equals_qemu_raw_conversion(tmp_path, make_loop, raw_source, driver, opts):
    image = make_image(tmp_path, raw_source, driver, *opts)
    vsize, want = reference(tmp_path, image, driver)
    device = make_loop(80 * MiB)
    fill(device, 80 * MiB)
    seen: list[tuple[int, int]] = []
    result = nonraw.write_nonraw(image, driver, device,
                                 progress=lambda d, t: seen.append((d, t)))
    assert digest(device, vsize) == want
    assert device_bytes(device, vsize, 4096) == GARBAGE * 4096    # nothing past the image
    assert result["virtual_size"] == vsize and result["head_bytes"] == MiB
    assert result["body_bytes"] == vsize - MiB
    assert 0 < result["peak_rss_bytes"] < 512 * MiB
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[0] == (0, vsize) and seen[-1] == (vsize, vsize)


def test_head_is_written_only_after_before_head(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "qcow2")
    device = make_loop(80 * MiB)
    fill(device, 80 * MiB)
    observed = {}

    def before_head():
        observed["head"] = device_bytes(device, 0, MiB)
        observed["body"] = device_bytes(device, 5 * MiB, 4096)
    nonraw.write_nonraw(image, "qcow2", device, before_head=before_head)
    assert observed["head"] == GARBAGE * MiB
    assert observed["body"] == device_bytes(raw_source, 5 * MiB, 4096)
    assert device_bytes(device, 0, MiB) == device_bytes(raw_source, 0, MiB)


def test_failed_checksum_leaves_the_head_unwritten(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "qcow2", "-c")
    device = make_loop(80 * MiB)
    fill(device, 80 * MiB)

    def bad_checksum():
        raise ImageChecksumError("checksum mismatch")
    with pytest.raises(ImageChecksumError):
        nonraw.write_nonraw(image, "qcow2", device, before_head=bad_checksum)
    assert device_bytes(device, 0, MiB) == GARBAGE * MiB
    assert device_bytes(device, 5 * MiB, 4096) == device_bytes(raw_source, 5 * MiB, 4096)


def stage(device: str, image: str, offset: int) -> int:
    with open(image, "rb") as src, open(device, "r+b") as dst:
        data = src.read()
        dst.seek(offset)
        dst.write(data)
        dst.flush()
        os.fsync(dst.fileno())
    return len(data)


def test_source_is_a_byte_range_of_another_device(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "vmdk", "-o", "subformat=streamOptimized")
    vsize, want = reference(tmp_path, image, "vmdk")
    staging = make_loop(64 * MiB)
    fill(staging, 64 * MiB)
    size = stage(staging, image, 7 * MiB + 4096)
    device = make_loop(80 * MiB)
    nonraw.write_nonraw(staging, "vmdk", device, source_offset=7 * MiB + 4096,
                        source_size=size)
    assert digest(device, vsize) == want


@pytest.mark.parametrize("sector", [512, 4096])
def test_staging_in_the_tail_of_the_target_itself(tmp_path, make_loop, raw_source, sector):
    image = make_image(tmp_path, raw_source, "qcow2")
    vsize, want = reference(tmp_path, image, "qcow2")
    device = make_loop(160 * MiB, sector_size=sector)
    fill(device, 160 * MiB)
    size = stage(device, image, 100 * MiB)
    result = nonraw.write_nonraw(device, "qcow2", device, source_offset=100 * MiB,
                                 source_size=size)
    assert digest(device, vsize) == want
    assert result["virtual_size"] == vsize


def test_staging_that_the_image_would_overwrite_is_refused(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "qcow2")
    device = make_loop(160 * MiB)
    fill(device, 160 * MiB)
    size = stage(device, image, 10 * MiB)
    before = digest(device, 160 * MiB)
    with pytest.raises(UnsafeDevice, match="overlaps the 67108864 bytes"):
        nonraw.write_nonraw(device, "qcow2", device, source_offset=10 * MiB, source_size=size)
    assert digest(device, 160 * MiB) == before


def test_staging_range_outside_the_source_is_refused(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "qcow2")
    with pytest.raises(InvalidImage, match="lies outside"):
        nonraw.write_nonraw(image, "qcow2", make_loop(80 * MiB), source_offset=1,
                            source_size=os.path.getsize(image))


# --- malicious and mismatched images: refused before any write ----------------------------

def refused(device: str, image: str, declared: str, **check) -> str:
    """Both gates refuse: formats.check on the image, and write_nonraw itself."""
    before = digest(device, 64 * MiB)
    with pytest.raises(InvalidImage) as first:
        formats.check(formats.inspect(image), declared_format=declared,
                      permitted_formats=check.get("permitted", ["qcow2", "vmdk"]),
                      device_size=_dev_size(device))
    with pytest.raises(InvalidImage) as second:
        nonraw.write_nonraw(image, declared, device)
    assert digest(device, 64 * MiB) == before
    assert first.value.code == second.value.code == 400
    return first.value.details


def _dev_size(device: str) -> int:
    with open(device, "rb") as f:
        return os.lseek(f.fileno(), 0, os.SEEK_END)


@pytest.fixture
def target(make_loop) -> str:
    device = make_loop(64 * MiB)
    fill(device, 64 * MiB)
    return device


def test_qcow2_backed_by_etc_shadow(tmp_path, target):
    image = str(tmp_path / "evil.qcow2")
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", "-u", image, "1M")
    assert "backing file ('/etc/shadow')" in refused(target, image, "qcow2")


def test_qcow2_with_external_data_file(tmp_path, target):
    image, data = str(tmp_path / "evil.qcow2"), str(tmp_path / "host-file")
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", image, "1M")
    text = refused(target, image, "qcow2")
    assert "keeps its data in an external data file" in text
    assert f"names an external data file ('{data}')" in text


def test_declared_format_mismatch(tmp_path, target, raw_source):
    image = make_image(tmp_path, raw_source, "vmdk")
    text = refused(target, image, "qcow2")
    assert text == "the image was declared as disk_format 'qcow2' but its contents are vmdk"


def test_virtual_size_larger_than_the_device(tmp_path, target):
    image = str(tmp_path / "huge.qcow2")
    qemu_img("create", "-f", "qcow2", image, "1G")
    assert "needs 1073741824 bytes" in refused(target, image, "qcow2")


def rewrite_descriptor(image: str, transform) -> None:
    with open(image, "r+b") as f:
        header = f.read(512)
        desc_sector, desc_sectors = struct.unpack_from("<QQ", header, 28)
        f.seek(desc_sector * 512)
        text = f.read(desc_sectors * 512).split(b"\0", 1)[0].decode()
        new = transform(text).encode()
        assert len(new) < desc_sectors * 512
        f.seek(desc_sector * 512)
        f.write(new.ljust(desc_sectors * 512, b"\0"))


def test_vmdk_extent_pointing_outside_the_image(tmp_path, target, raw_source):
    image = make_image(tmp_path, raw_source, "vmdk")
    rewrite_descriptor(image, lambda t: t.replace(
        '# Extent description\n', '# Extent description\nRW 2048 FLAT "/etc/shadow" 0\n'))
    assert "FLAT extent '/etc/shadow' outside the image" in refused(target, image, "vmdk")


def test_vmdk_with_zero_capacity_deferring_to_its_descriptor(tmp_path, target, raw_source):
    image = make_image(tmp_path, raw_source, "vmdk")
    with open(image, "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<Q", 0))
    assert "zero capacity" in refused(target, image, "vmdk")


def test_vmdk_with_a_parent(tmp_path, target, raw_source):
    image = make_image(tmp_path, raw_source, "vmdk")
    rewrite_descriptor(image, lambda t: t.replace(
        'parentCID=ffffffff\n', 'parentCID=12345678\nparentFileNameHint="/etc/shadow"\n'))
    assert "names a parent disk ('/etc/shadow')" in refused(target, image, "vmdk")


def test_qemu_img_failure_is_translated_and_nothing_written(tmp_path, target, raw_source):
    image = make_image(tmp_path, raw_source, "qcow2")
    with open(image, "r+b") as f:
        f.seek(40)
        f.write(struct.pack(">Q", 0x30001))         # misaligned L1 table: qemu refuses
    formats.check(formats.inspect(image), declared_format="qcow2")   # headers look fine
    before = digest(target, 64 * MiB)
    with pytest.raises(InvalidImage) as exc:
        nonraw.write_nonraw(image, "qcow2", target)
    assert "reading the image header: the image is corrupt" in exc.value.details
    assert "Active L1 table offset invalid" in exc.value.details
    assert digest(target, 64 * MiB) == before


def test_qemu_info_agrees_with_the_result(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "vhdx")
    info = json.loads(qemu_img("info", "-f", "vhdx", "--output=json", image))
    result = nonraw.write_nonraw(image, "vhdx", make_loop(80 * MiB))
    assert result["virtual_size"] == info["virtual-size"] == formats.inspect(image).virtual_size


def partition(device: str, start_mib: int) -> str:
    subprocess.run(["sgdisk", "-n", f"1:{start_mib * 2048}:0", device], check=True,
                   capture_output=True)
    subprocess.run(["partx", "-a", device], check=True, capture_output=True)
    part = f"{device}p1"
    assert os.path.exists(part), "BLKPG did not create the partition node"
    return part


def test_staging_in_a_partition_of_the_target(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "vdi")
    vsize, want = reference(tmp_path, image, "vdi")
    device = make_loop(160 * MiB)
    part = partition(device, 100)
    size = stage(part, image, 0)
    nonraw.write_nonraw(part, "vdi", device, source_size=size)
    assert digest(device, vsize) == want


def test_staging_partition_inside_the_image_area_is_refused(tmp_path, make_loop, raw_source):
    image = make_image(tmp_path, raw_source, "vdi")
    device = make_loop(160 * MiB)
    part = partition(device, 30)
    size = stage(part, image, MiB)
    before = digest(device, 160 * MiB)
    with pytest.raises(UnsafeDevice, match="overlaps"):
        nonraw.write_nonraw(part, "vdi", device, source_offset=MiB, source_size=size)
    assert digest(device, 160 * MiB) == before


def test_qemu_reported_size_is_checked_again(tmp_path, make_loop, raw_source, monkeypatch):
    # the inspector and qemu should agree; if they ever do not, qemu's figure decides
    image = make_image(tmp_path, raw_source, "qcow2")
    real = qemu_img_mod.info
    monkeypatch.setattr(qemu_img_mod, "info",
                        lambda *a, **kw: {**real(*a, **kw), "virtual-size": 2**40})
    with pytest.raises(InvalidImage, match="virtual size 1099511627776 bytes exceeds"):
        nonraw.write_nonraw(image, "qcow2", make_loop(80 * MiB))


def test_qemu_info_second_opinion_refuses_references(tmp_path):
    backed = str(tmp_path / "backed.qcow2")
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", "-u", backed, "1M")
    with pytest.raises(InvalidImage, match="backing file \\('/etc/shadow'\\)"):
        nonraw._refuse_references(qemu_img_mod.info(backed, "qcow2"))
    data_file = str(tmp_path / "data")
    external = str(tmp_path / "external.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data_file}", external, "1M")
    with pytest.raises(InvalidImage, match="external data file"):
        nonraw._refuse_references(qemu_img_mod.info(external, "qcow2"))
