"""The boot phase breakdown, read from a console captured from a real TCG boot."""

import os

from vm import bootphases

CONSOLE = os.path.join(os.path.dirname(__file__), "data", "serial-bios-boot.log")


def console() -> str:
    with open(CONSOLE, encoding="utf-8") as f:
        return f.read()


def test_every_phase_of_a_captured_boot_in_order_and_summing_to_the_heartbeat():
    items = bootphases.phases(console(), {"iPXE script": 6.0, "kernel": 12.0})
    assert [name for name, _ in items] == [
        "firmware and iPXE to its script", "kernel and initramfs download", "kernel start",
        "initramfs unpack", "kernel init", "systemd start (generators, unit files)",
        "units before the agent", "agent start-up (Python)", "network and lookup",
        "TLS and API", "first heartbeat"]
    got = dict(items)
    assert got["initramfs unpack"] == 6.5          # 1.193314 -> 7.649161
    assert got["agent start-up (Python)"] == 4.7   # a login prompt shares that line
    # the heartbeat's kernel time (30.16 s) after the kernel's wall start (12 s)
    assert abs(sum(got.values()) - (12.0 + 30.163290)) < 0.6


def test_the_agent_units_stop_does_not_count_as_its_start():
    marks = dict(bootphases.kernel_marks(console()))
    assert marks["units before the agent"] == 23.118347


def test_without_pid1_on_the_kernel_ring_the_unit_phase_merges_into_the_next():
    text = "\n".join(line for line in console().splitlines() if "systemd[1]" not in line)
    names = [name for name, _ in bootphases.phases(text, {})]
    assert "units before the agent" not in names
    assert "systemd start (generators, unit files)" not in names
    assert names[0] == "kernel start" and names[-1] == "first heartbeat"
