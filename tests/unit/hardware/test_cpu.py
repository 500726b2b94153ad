"""CPU facts on POWER (fixture tree), arm64 and x86 (inline cpuinfo)."""

from __future__ import annotations

import os

import pytest

from agent.hardware import cpu
from tests.unit.hardware.fake_sysfs import write

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hardware")
PPC = os.path.join(FIXTURES, "ppc64le")

ARM64 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
cpu MHz\t\t: 2100.000
flags\t\t: fpu vme de pse sse sse2

processor\t: 1
vendor_id\t: GenuineIntel
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
cpu MHz\t\t: 1000.000
flags\t\t: fpu vme de pse sse sse2
"""


def test_ppc64le_from_fixture():
    info = cpu.collect(PPC, arch="ppc64le")
    assert info == {"model_name": "POWER9, altivec supported", "frequency": "3800.0000",
                    "count": 8, "architecture": "ppc64le", "flags": [], "socket_count": 2}


def test_ppc64le_clock_without_cpufreq(tmp_path):
    with open(os.path.join(PPC, "proc/cpuinfo")) as f:
        write(tmp_path / "proc/cpuinfo", f.read())
    info = cpu.collect(str(tmp_path), arch="ppc64le")
    assert info["frequency"] == "2166.0000"
    assert info["count"] == 8                      # counted from cpuinfo blocks
    assert info["socket_count"] is None


def test_arm64_features_and_no_model_line(tmp_path):
    write(tmp_path / "proc/cpuinfo", ARM64)
    write(tmp_path / "sys/devices/system/cpu/online", "0-1\n")
    write(tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "3000000\n")
    info = cpu.collect(str(tmp_path), arch="aarch64")
    assert info["flags"][:3] == ["fp", "asimd", "evtstrm"]
    assert info["frequency"] == "3000.0000"
    assert info["count"] == 2
    assert info["model_name"] == "ARM Neoverse-N1"     # from implementer 0x41, part 0xd0c


def test_arm64_model_of_an_unknown_core_names_its_ids(tmp_path):
    write(tmp_path / "proc/cpuinfo", ARM64.replace("0xd0c", "0xabc").replace("0x41", "0x99"))
    assert cpu.collect(str(tmp_path), arch="aarch64")["model_name"] == \
        "implementer 0x99 part 0xabc"
    write(tmp_path / "proc/cpuinfo", "processor\t: 0\nFeatures\t: fp\n")
    assert cpu.collect(str(tmp_path), arch="aarch64")["model_name"] is None


def test_x86_uses_first_cpu_mhz_when_no_cpufreq(tmp_path):
    write(tmp_path / "proc/cpuinfo", X86)
    info = cpu.collect(str(tmp_path), arch="x86_64")
    assert info["model_name"] == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"
    assert info["frequency"] == "2100.0000"
    assert info["flags"] == ["fpu", "vme", "de", "pse", "sse", "sse2"]


def test_unreadable_cpuinfo_raises(tmp_path):
    with pytest.raises(OSError):
        cpu.collect(str(tmp_path))
