"""A real process holding a block device open, for the "is this disk in use?" tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

# the comm is set before the open, so a scan never sees the process under another name
_HOLD = """\
import os, sys, time
if sys.argv[2]:
    with open("/proc/self/comm", "w") as f:
        f.write(sys.argv[2])
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def holder(device: str, comm: str = "") -> Iterator[subprocess.Popen[str]]:
    """A child process with ``device`` open (named ``comm`` when given) until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, device, comm],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def described(proc: subprocess.Popen[str]) -> str:
    """The process as usage reports name it: 'PID (comm)'."""
    with open(f"/proc/{proc.pid}/comm") as f:
        return f"{proc.pid} ({f.read().strip()})"
