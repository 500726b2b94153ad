import shutil

import pytest
from vm import qemu

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86 is not installed")
needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is missing")


@needs_socat
def test_netdev_is_restricted_and_loopback_only():
    net = qemu.UserNet(mac="52:54:00:12:34:56", hostfwd=[(40001, 9999)],
                       guestfwd=[("10.0.2.100", 80, 40002)], tftp_dir="/tmp/a,b",
                       bootfile="first.ipxe")
    spec = qemu.netdev(net)
    parts = spec.split(",")
    assert parts[:3] == ["user", "id=n0", "restrict=on"]
    assert "tftp=/tmp/a,,b" in spec                 # commas in values are doubled
    assert "hostfwd=tcp:127.0.0.1:40001-:9999" in parts
    guestfwd = next(p for p in parts if p.startswith("guestfwd="))
    assert guestfwd.startswith("guestfwd=tcp:10.0.2.100:80-cmd:")
    assert guestfwd.endswith(" - TCP:127.0.0.1:40002")


@needs_qemu
@needs_socat
def test_netboot_argv_bios():
    m = qemu.Machine(firmware="bios", disk="/d/disk.img", disk_bootindex=2,
                     serial_log="/r/serial.log", sercon_file="/r/sercon",
                     net=qemu.UserNet(mac="52:54:00:00:00:01", ipxe_rom=True,
                                      bootindex=1))
    argv = qemu.argv(m)
    joined = " ".join(argv)
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-serial file:/r/serial.log" in joined
    assert "name=etc/sercon-port,file=/r/sercon" in joined
    # the default ROM (Debian's ipxe-qemu efi-virtio.rom) stays: no romfile= at all
    assert "mac=52:54:00:00:00:01,bootindex=1" in joined
    assert "romfile" not in joined
    assert "virtio-blk-pci,drive=d0,bootindex=2" in joined
    assert "pflash" not in joined


@needs_qemu
def test_disk_boot_has_no_option_rom():
    m = qemu.Machine(net=qemu.UserNet(mac="52:54:00:00:00:02"))
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,romfile=" in qemu.argv(m)


@needs_qemu
def test_uefi_needs_a_private_variable_store():
    with pytest.raises(qemu.QemuError, match="variable store"):
        qemu.argv(qemu.Machine(firmware="uefi"))


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                    reason="qemu-system-arm is not installed")
def test_aarch64_virt_with_uefi_firmware(monkeypatch):
    monkeypatch.setattr(qemu, "aavmf_files", lambda: ("/fw/CODE.fd", "/fw/VARS.fd"))
    with pytest.raises(qemu.QemuError, match="variable store"):
        qemu.argv(qemu.Machine(arch="aarch64", firmware="uefi"))
    m = qemu.Machine(arch="aarch64", firmware="uefi", ovmf_vars="/r/VARS.fd",
                     serial_log="/r/serial.log", disk="/r/disk.img", kernel="/k",
                     initrd="/i", append="console=ttyAMA0",
                     net=qemu.UserNet(mac="52:54:00:00:00:03"))
    argv = qemu.argv(m)
    joined = " ".join(argv)
    assert argv[0].endswith("qemu-system-aarch64")
    assert "-M virt -serial file:/r/serial.log -cpu cortex-a57" in joined
    assert "if=pflash,format=raw,readonly=on,file=/fw/CODE.fd" in joined
    assert "if=pflash,format=raw,file=/r/VARS.fd" in joined
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:03,romfile=" in joined
    assert "-kernel /k -initrd /i -append console=ttyAMA0" in joined
    assert "pseries" not in joined


def test_missing_aavmf_names_the_package(monkeypatch):
    monkeypatch.setattr(qemu, "AAVMF_CODE", "/nonexistent/AAVMF_CODE.fd")
    with pytest.raises(qemu.QemuMissing, match="qemu-efi-aarch64"):
        qemu.aavmf_files()


@needs_qemu
def test_probe_sector_runs_under_tcg():
    ran, seconds, why = qemu.probe_accel("tcg")
    assert ran, why
    assert seconds > 0


def test_requested_accel_is_not_probed(tmp_path):
    assert qemu.choose_accel("tcg", str(tmp_path)) == ("tcg", "requested")
    assert not list(tmp_path.iterdir())


def test_console_text_is_cleaned_of_terminal_escapes():
    raw = "\x1b[2J\x1b[01;01HBooting `x'\r\nDEPLOY-AGENT-TEST-OS: booted\x1b[0m\r\n"
    assert qemu.clean(raw) == "Booting `x'\nDEPLOY-AGENT-TEST-OS: booted\n"
