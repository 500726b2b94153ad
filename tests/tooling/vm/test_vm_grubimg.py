import shutil
import struct

import pytest
from vm import grubimg

needs_grub_pc = pytest.mark.skipif(shutil.which("grub-mkimage") is None,
                                   reason="grub-mkimage is not installed")


def _boot_sector() -> bytes:
    return bytes(range(256)) + bytes(254) + b"\x55\xaa"


def test_boot_img_points_at_core_and_skips_drive_check():
    patched = grubimg.patch_boot_img(_boot_sector(), 2048)
    assert struct.unpack_from("<Q", patched, 0x5C)[0] == 2048
    assert patched[0x66:0x68] == b"\x90\x90"
    # everything else is boot.img as shipped
    original = _boot_sector()
    changed = [i for i in range(512) if patched[i] != original[i]]
    assert all(0x5C <= i < 0x64 or i in (0x66, 0x67) for i in changed)


def test_boot_img_must_be_a_boot_sector():
    with pytest.raises(grubimg.GrubError, match="512-byte boot sector"):
        grubimg.patch_boot_img(bytes(512), 2048)


def test_core_img_blocklist_covers_the_rest_of_core():
    core = bytes(512 * 40 + 100)             # 41 sectors once padded
    patched = grubimg.patch_core_img(core, 2048)
    assert len(patched) == 41 * 512
    start, length, segment = struct.unpack_from("<QHH", patched, 512 - 12)
    assert (start, length, segment) == (2049, 40, 0x820)


def test_core_img_too_small_is_refused():
    with pytest.raises(grubimg.GrubError, match="cannot be blocklisted"):
        grubimg.patch_core_img(bytes(100), 2048)


@needs_grub_pc
def test_install_bios_writes_code_and_keeps_partition_table(tmp_path):
    disk = tmp_path / "disk.img"
    table = bytes(446) + b"\xee" * 64 + b"\x55\xaa"     # stand-in protective MBR
    disk.write_bytes(table + bytes(4 << 20))
    early = tmp_path / "early.cfg"
    early.write_text(grubimg.early_config("0e6f7a1c-1111-2222-3333-444455556666"))
    core = tmp_path / "core.img"
    grubimg.mkimage("i386-pc", str(core), str(early))
    grubimg.install_bios(str(disk), str(core), 2048, 2048)
    data = disk.read_bytes()
    assert data[446:512] == table[446:512]
    assert struct.unpack_from("<Q", data, 0x5C)[0] == 2048
    core_sector = data[2048 * 512:2049 * 512]
    assert struct.unpack_from("<Q", core_sector, 500)[0] == 2049
    shipped = core.read_bytes()
    # after its first sector (the patched blocklist) core.img lands byte for byte
    assert data[2049 * 512:2048 * 512 + len(shipped)] == shipped[512:]


@needs_grub_pc
def test_install_bios_refuses_a_too_small_boot_partition(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 << 20))
    early = tmp_path / "early.cfg"
    early.write_text(grubimg.early_config("x"))
    core = tmp_path / "core.img"
    grubimg.mkimage("i386-pc", str(core), str(early))
    with pytest.raises(grubimg.GrubError, match="BIOS boot partition holds"):
        grubimg.install_bios(str(disk), str(core), 2048, 4)
