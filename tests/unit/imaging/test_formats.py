"""Format inspection: every detection branch and every refusal.

Headers are crafted byte by byte here (the layouts are the published ones), and
checked against images the real qemu-img makes so the two cannot drift apart.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import uuid

import pycdlib
import pytest

from agent.errors import InvalidImage
from agent.imaging import format_headers, formats

MiB = 1 << 20


def buf(size: int = 64 * 1024) -> bytearray:
    return bytearray(size)


def qcow2(*, version: int = 3, size: int = 64 * MiB, cluster_bits: int = 16, crypt: int = 0,
          backing: bytes | None = None, incompat: int = 0,
          extensions: list[tuple[int, bytes]] = ()) -> bytes:
    b = buf(1 << 16)
    bf_off = 0x8000 if backing else 0
    struct.pack_into(">4sIQIIQI", b, 0, b"QFI\xfb", version, bf_off, len(backing or b""),
                     cluster_bits, size, crypt)
    pos = 72
    if version >= 3:
        struct.pack_into(">QQQII", b, 72, incompat, 0, 0, 4, 104)
        pos = 104
    for ext, data in extensions:
        struct.pack_into(">II", b, pos, ext, len(data))
        b[pos + 8:pos + 8 + len(data)] = data
        pos += 8 + (len(data) + 7) // 8 * 8
    if backing:
        b[bf_off:bf_off + len(backing)] = backing
    return bytes(b)


def qed(*, features: int = 0, backing: bytes = b"") -> bytes:
    b = buf()
    struct.pack_into("<4sIIIQQQQQII", b, 0, b"QED\0", 65536, 4, 1, features, 0, 0, 65536,
                     32 * MiB, 1024 if backing else 0, len(backing))
    b[1024:1024 + len(backing)] = backing
    return bytes(b)


DESCRIPTOR = ('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
              'createType="{create}"\n\n# Extent description\n{extents}\n\n'
              '# The Disk Data Base\n#DDB\nddb.adapterType = "ide"\n{extra}')


def descriptor(create: str = "monolithicSparse", extents: str = 'RW 131072 SPARSE "d.vmdk"',
               extra: str = "") -> bytes:
    return DESCRIPTOR.format(create=create, extents=extents, extra=extra).encode()


def vmdk(*, capacity: int = 131072, desc: bytes | None = None, desc_sector: int = 1,
         magic: bytes = b"KDMV") -> bytes:
    b = buf()
    struct.pack_into("<4sIIQQQQ", b, 0, magic, 1, 3, capacity, 128, desc_sector, 20)
    text = descriptor() if desc is None else desc
    b[desc_sector * 512:desc_sector * 512 + len(text)] = text
    return bytes(b)


def vdi(*, version: int = 0x00010001, image_type: int = 1, size: int = 64 * MiB) -> bytes:
    b = buf()
    b[0:40] = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    struct.pack_into("<IIII", b, 0x40, format_headers.VDI_SIGNATURE, version, 0x180,
                     image_type)
    struct.pack_into("<Q", b, 0x170, size)
    return bytes(b)


def vhd_footer(*, disk_type: int = 3, creator: bytes = b"qemu", current: int = 64 * MiB,
               chs: tuple[int, int, int] = (520, 16, 63)) -> bytes:
    b = bytearray(512)
    b[0:8] = b"conectix"
    b[28:32] = creator
    struct.pack_into(">QQHBBI", b, 40, current, current, *chs, disk_type)
    return bytes(b)


def vhdx(*, size: int | None = 64 * MiB, flags: int = 0, parent_locator: bool = False,
         region_sig: bytes = b"regi", meta_sig: bytes = b"metadata",
         with_metadata_region: bool = True, meta_at: int = 256 * 1024) -> bytes:
    b = buf(meta_at + 128 * 1024)
    b[0:8] = b"vhdxfile"
    rt = format_headers.VHDX_REGION_TABLE
    b[rt:rt + 4] = region_sig
    region = (format_headers.VHDX_METADATA_REGION if with_metadata_region
              else uuid.UUID("2dc27766-f623-4200-9d64-115e9bfd4a08"))
    struct.pack_into("<I", b, rt + 8, 1)
    b[rt + 16:rt + 32] = region.bytes_le
    struct.pack_into("<QII", b, rt + 32, meta_at, MiB, 0)
    items = [(format_headers.VHDX_FILE_PARAMETERS, struct.pack("<II", MiB, flags))]
    if size is not None:
        items.append((format_headers.VHDX_VIRTUAL_DISK_SIZE, struct.pack("<Q", size)))
    if parent_locator:
        items.append((format_headers.VHDX_PARENT_LOCATOR, b"\0" * 8))
    b[meta_at:meta_at + 8] = meta_sig
    struct.pack_into("<H", b, meta_at + 10, len(items))
    for i, (guid, value) in enumerate(items):
        entry = meta_at + 32 + 32 * i
        b[entry:entry + 16] = guid.bytes_le
        struct.pack_into("<II", b, entry + 16, 0x10000 + 16 * i, len(value))
        b[meta_at + 0x10000 + 16 * i:meta_at + 0x10000 + 16 * i + len(value)] = value
    return bytes(b)


def mbr(types: tuple[int, ...] = (0x83,), status: int = 0x80) -> bytearray:
    b = buf()
    for i, t in enumerate(types):
        struct.pack_into("<B3sB3sII", b, 446 + 16 * i, status, b"", t, b"", 2048, 4096)
    b[510:512] = b"\x55\xaa"
    return b


def gpt(sector: int = 512) -> bytearray:
    b = mbr((0xEE,), status=0)
    b[sector:sector + 12] = b"EFI PART\0\0\1\0"
    return b


def iso_bytes(tmp_path) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new()
    iso.add_fp(io.BytesIO(b"hello\n"), 6, "/HELLO.;1")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


# --- detection ------------------------------------------------------------------------

def test_plain_raw_has_no_signature_and_takes_the_given_size():
    i = formats.inspect(bytes(buf()), size=10 * MiB)
    assert (i.format, i.virtual_size, i.partition_table, i.matches) == ("raw", 10 * MiB,
                                                                        None, ())
    assert i.qemu_format == "raw"


def test_raw_with_mbr_is_raw_noting_the_table():
    i = formats.inspect(bytes(mbr()))
    assert (i.format, i.partition_table, i.matches) == ("raw", "mbr", ("mbr",))


def test_a_boot_sector_is_not_mistaken_for_an_mbr():
    b = mbr()
    b[446] = 0x12                     # FAT boot code where partition entries would be
    assert formats.inspect(bytes(b)).partition_table is None
    empty = buf()
    empty[510:512] = b"\x55\xaa"      # signature but no partitions
    assert formats.inspect(bytes(empty)).partition_table is None


@pytest.mark.parametrize("sector", [512, 4096])
def test_gpt_found_at_either_sector_size(sector):
    i = formats.inspect(bytes(gpt(sector)))
    assert (i.format, i.partition_table, i.qemu_format) == ("gpt", "gpt", "raw")


def test_protective_mbr_alone_counts_as_gpt():
    assert formats.inspect(bytes(mbr((0xEE,), status=0))).format == "gpt"


def test_real_sgdisk_image_is_gpt(tmp_path):
    path = tmp_path / "gpt.img"
    path.write_bytes(b"")
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sgdisk", "-n1:2048:+2M", str(path)], check=True, capture_output=True)
    i = formats.inspect(str(path))
    assert (i.format, i.virtual_size) == ("gpt", 8 * MiB)


def test_iso_reports_its_volume_size(tmp_path):
    data = iso_bytes(tmp_path)
    i = formats.inspect(data, size=len(data))
    assert (i.format, i.matches, i.qemu_format) == ("iso", ("iso",), "raw")
    assert i.virtual_size == len(data)


def test_hybrid_iso_with_partition_table_is_iso_not_a_conflict(tmp_path):
    data = bytearray(iso_bytes(tmp_path))
    data[:4096] = gpt()[:4096]
    i = formats.inspect(bytes(data))
    assert (i.format, i.partition_table, i.conflicts) == ("iso", "gpt", ())
    formats.check(i, declared_format="iso", permitted_formats=["iso"])


def test_qcow2_header_fields():
    i = formats.inspect(qcow2(version=2, size=5 * MiB))
    assert (i.format, i.virtual_size, i.problems, i.qemu_format) == ("qcow2", 5 * MiB, (),
                                                                      "qcow2")
    assert i.details["version"] == 2


def test_qed_vdi_vhd_vhdx_vmdk_sizes():
    assert formats.inspect(qed()).virtual_size == 32 * MiB
    assert formats.inspect(vdi()).virtual_size == 64 * MiB
    assert formats.inspect(vhdx()).virtual_size == 64 * MiB
    assert formats.inspect(vmdk()).virtual_size == 131072 * 512
    vhd = formats.inspect(vhd_footer() + bytes(1024))
    assert (vhd.format, vhd.qemu_format, vhd.virtual_size) == ("vhd", "vpc", 520 * 16 * 63 * 512)


@pytest.mark.parametrize("creator", [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"])
def test_vhd_size_from_current_size_for_creators_qemu_trusts(creator):
    assert formats.inspect(vhd_footer(creator=creator)).virtual_size == 64 * MiB


def test_vhd_at_maximum_geometry_uses_current_size():
    i = formats.inspect(vhd_footer(chs=(65535, 16, 255), current=200 * 2**30))
    assert i.virtual_size == 200 * 2**30


def test_fixed_vhd_footer_at_end_reads_as_raw_and_matches_declared_vhd():
    data = bytes(4 * MiB) + vhd_footer(disk_type=2)
    i = formats.inspect(data, size=len(data))
    assert (i.format, i.details) == ("raw", {"vhd_footer": True})
    formats.check(i, declared_format="vhd")
    formats.check(i, declared_format="raw")
    with pytest.raises(InvalidImage):
        formats.check(formats.inspect(bytes(4 * MiB), size=4 * MiB), declared_format="vhd")


def test_inspect_reads_a_path_and_a_callable(tmp_path):
    path = tmp_path / "x.qcow2"
    path.write_bytes(qcow2())
    assert formats.inspect(str(path)).format == "qcow2"
    data = qcow2()
    calls = []

    def read_at(off, n):
        calls.append((off, n))
        return data[off:off + n]
    assert formats.inspect(read_at, size=len(data)).format == "qcow2"
    assert max(off + n for off, n in calls) <= 16 * MiB


QEMU_FORMATS = [("qcow2", [], "qcow2"), ("qcow2", ["-o", "compat=0.10"], "qcow2"),
                ("qcow2", ["-c"], "qcow2"), ("vmdk", [], "vmdk"),
                ("vmdk", ["-o", "subformat=streamOptimized"], "vmdk"), ("vpc", [], "vhd"),
                ("vhdx", [], "vhdx"), ("vdi", [], "vdi"), ("qed", [], "qed")]


@pytest.mark.parametrize("driver,opts,name", QEMU_FORMATS)
def test_agrees_with_real_qemu_img(tmp_path, driver, opts, name):
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(20 * MiB + 12345)
        f.seek(3 * MiB)
        f.write(b"\xab" * 70000)
    out = str(tmp_path / f"img.{driver}")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", driver, *opts, str(raw), out],
                   check=True, capture_output=True)
    qi = json.loads(subprocess.run(["qemu-img", "info", "-f", driver, "--output=json", out],
                                   check=True, capture_output=True, text=True).stdout)
    i = formats.inspect(out)
    assert (i.format, i.problems, i.conflicts) == (name, (), ())
    assert i.virtual_size == qi["virtual-size"]
    assert i.qemu_format == driver
    # a streaming caller only has the head
    with open(out, "rb") as f:
        head = f.read(formats.STREAM_HEAD)
    assert formats.inspect(head).virtual_size == qi["virtual-size"]
    formats.check(i, declared_format=name, permitted_formats=[name], device_size=64 * MiB)


# --- problems found while parsing -------------------------------------------------------

def problems(data: bytes, size: int | None = None) -> str:
    return " | ".join(formats.inspect(data, size=size).problems)


def test_qcow2_problems():
    assert "backing file ('/etc/shadow')" in problems(qcow2(backing=b"/etc/shadow"))
    assert "external data file" in problems(qcow2(incompat=1 << 2))
    assert "unknown incompatible feature bits 0x20" in problems(qcow2(incompat=1 << 5))
    assert "names an external data file ('/dev/sda')" in problems(
        qcow2(extensions=[(0x44415441, b"/dev/sda")]))
    assert "encryption header" in problems(qcow2(extensions=[(0x0537BE77, b"\0" * 16)]))
    assert "is encrypted" in problems(qcow2(crypt=2))
    assert "version 4 is not supported" in problems(qcow2(version=4))
    assert "cluster size 2^30 is invalid" in problems(qcow2(cluster_bits=30))
    # dirty, corrupt, compression type and extended L2 bits are all safe
    assert problems(qcow2(incompat=0b11011)) == ""


def test_qcow2_unknown_extension_is_skipped_and_later_ones_still_seen():
    data = qcow2(extensions=[(0x12345678, b"x" * 13), (0x44415441, b"f")])
    assert "external data file ('f')" in problems(data)


def test_qed_problems():
    assert "qed image names a backing file ('/etc/shadow')" in problems(
        qed(features=1, backing=b"/etc/shadow"))
    assert "unknown feature bits 0x8" in problems(qed(features=8))


def test_vmdk_problems():
    assert "parent disk ('base.vmdk')" in problems(
        vmdk(desc=descriptor(extra='parentFileNameHint="base.vmdk"\n')))
    assert "createType 'vmfs'" in problems(vmdk(desc=descriptor(create="vmfs")))
    assert "FLAT extent '/etc/shadow'" in problems(
        vmdk(desc=descriptor(extents='RW 2048 FLAT "/etc/shadow" 0')))
    two = 'RW 2048 SPARSE "d.vmdk"\nRW 2048 SPARSE "e.vmdk"'
    assert "SPARSE extent 'e.vmdk'" in problems(vmdk(desc=descriptor(extents=two)))
    assert "SPARSE extent 'sub/d.vmdk'" in problems(
        vmdk(desc=descriptor(extents='RW 2048 SPARSE "sub/d.vmdk"')))
    assert "zero capacity" in problems(vmdk(capacity=0))
    assert "COWD" in problems(vmdk(magic=b"COWD"))
    bare = descriptor("monolithicFlat", 'RW 2048 FLAT "disk-flat.vmdk" 0') + b"\0"
    text = problems(bare)
    assert "bare descriptor" in text and "FLAT extent 'disk-flat.vmdk'" in text


def test_vmdk_parent_hint_at_sector_one_counts_even_when_header_points_elsewhere():
    data = bytearray(vmdk(desc_sector=8))
    hint = b'parentFileNameHint="/etc/shadow"\n'
    data[512:512 + len(hint)] = hint
    assert "parent disk ('/etc/shadow')" in problems(bytes(data))


def test_vmdk_empty_parent_hint_is_fine():
    assert problems(vmdk(desc=descriptor(extra='parentFileNameHint=""\n'))) == ""


def test_vmdk_descriptor_cut_off_by_the_head_is_a_problem():
    data = bytearray(vmdk())
    data[512:] = b"#" * (len(data) - 512)           # no terminating NUL in our bytes
    assert "runs past the bytes available" in problems(bytes(data), size=64 * MiB)


def test_vdi_problems():
    assert "vdi image type 4 depends on another image" in problems(vdi(image_type=4))
    assert "vdi version 0x00020000" in problems(vdi(version=0x00020000))


def test_vhd_problems():
    assert "differencing disk" in problems(vhd_footer(disk_type=4))
    assert "vhd disk type 7" in problems(vhd_footer(disk_type=7))


def test_vhdx_problems():
    assert "differencing disk" in problems(vhdx(flags=2))
    assert "parent locator" in problems(vhdx(parent_locator=True))
    assert "no virtual disk size" in problems(vhdx(size=None))
    assert "region table is missing" in problems(vhdx(region_sig=b"xxxx"))
    assert "no metadata region" in problems(vhdx(with_metadata_region=False))
    assert "metadata table is missing" in problems(vhdx(meta_sig=b"nothere!"))


def test_structure_beyond_the_head_is_a_problem_not_a_pass():
    data = vhdx(meta_at=3 * MiB)
    assert formats.inspect(data).virtual_size == 64 * MiB
    text = problems(data[:2 * MiB])
    assert "vhdx metadata table at offset 3145728 could not be read" in text
    assert "truncated" in problems(qcow2()[:40])


def test_read_budget_bounds_a_hostile_header():
    r = format_headers.Reader(lambda off, n: bytes(n), None)
    with pytest.raises(format_headers.Short, match="more than"):
        for _ in range(100):
            r.read(0, 2 * MiB)


def test_conflicting_signatures():
    data = bytearray(qcow2())
    data[446:512] = mbr()[446:512]
    i = formats.inspect(bytes(data))
    assert i.conflicts == ("qcow2", "mbr")


# --- policy -----------------------------------------------------------------------------

def refusal(i: formats.Inspection, **kw) -> str:
    with pytest.raises(InvalidImage) as exc:
        formats.check(i, **kw)
    assert exc.value.code == 400
    return exc.value.details


def test_check_refuses_ambiguous_bytes():
    data = bytearray(qcow2())
    data[446:512] = mbr()[446:512]
    assert "matches more than one format (qcow2, mbr)" in refusal(formats.inspect(bytes(data)))


def test_check_refuses_declared_mismatch():
    text = refusal(formats.inspect(qcow2()), declared_format="raw")
    assert text == "the image was declared as disk_format 'raw' but its contents are qcow2"
    assert "declared as disk_format 'qcow2' but its contents are raw" in refusal(
        formats.inspect(bytes(buf())), declared_format="qcow2")
    assert "contents are gpt" in refusal(formats.inspect(bytes(gpt())), declared_format="iso")


@pytest.mark.parametrize("declared", [None, "", "unknown", "UNKNOWN"])
def test_undeclared_format_is_not_compared(declared):
    formats.check(formats.inspect(qcow2()), declared_format=declared)


@pytest.mark.parametrize("data,declared", [
    (bytes(buf()), "raw"), (bytes(gpt()), "raw"), (bytes(gpt()), "gpt"),
    (vhd_footer(), "vpc"), (vhd_footer(), "VHD"), (qcow2(), "qcow2"), (bytes(buf()), "ami"),
])
def test_declared_format_aliases_and_raw_family(data, declared):
    formats.check(formats.inspect(data), declared_format=declared)


def test_declared_raw_accepts_an_iso(tmp_path):
    formats.check(formats.inspect(iso_bytes(tmp_path)), declared_format="raw")


def test_check_refuses_format_not_permitted():
    text = refusal(formats.inspect(vdi()), permitted_formats=["raw", "gpt", "qcow2", "iso"])
    assert text == ("the image format vdi is not permitted; permitted_image_formats is "
                    "raw, gpt, qcow2, iso")
    assert "is empty" in refusal(formats.inspect(qcow2()), permitted_formats=[])


def test_gpt_is_permitted_by_either_name_and_vhd_by_vpc():
    for allowed in (["gpt"], ["raw"]):
        formats.check(formats.inspect(bytes(gpt())), permitted_formats=allowed)
    formats.check(formats.inspect(vhd_footer()), permitted_formats=["vpc"])
    assert "raw is not permitted" in refusal(formats.inspect(bytes(buf())),
                                             permitted_formats=["gpt"])


def test_check_refuses_unsafe_images_with_every_reason():
    text = refusal(formats.inspect(qcow2(backing=b"/etc/shadow", incompat=4)),
                   declared_format="qcow2", permitted_formats=["qcow2"])
    assert text.startswith("unsafe qcow2 image: the qcow2 image names a backing file")
    assert "external data file" in text


def test_check_refuses_an_image_larger_than_the_device():
    text = refusal(formats.inspect(qcow2(size=2 * 2**30)), device_size=2**30)
    assert text == ("the qcow2 image needs 2147483648 bytes (2.00 GiB) but the target device "
                    "holds only 1073741824 bytes (1.00 GiB)")
    formats.check(formats.inspect(qcow2(size=2**30)), device_size=2**30)


def test_raw_size_check_uses_the_image_length():
    i = formats.inspect(bytes(gpt()), size=3 * MiB)
    assert "needs 3145728 bytes" in refusal(i, device_size=2 * MiB)
    assert "needs 5242880 bytes" in refusal(i, device_size=4 * MiB, image_size=5 * MiB)


def test_qemu_driver_names():
    assert [formats.qemu_driver(n) for n in ("vhd", "vpc", "gpt", "iso", "qcow2", "raw")] == \
        ["vpc", "vpc", "raw", "raw", "qcow2", "raw"]
    with pytest.raises(InvalidImage, match="unsupported image format 'ploop'"):
        formats.qemu_driver("ploop")
