"""Every process, thread-server and temporary file the harness starts, undone on every exit.

One ``Supervisor`` per run holds a LIFO stack of undo callbacks.  It is
closed by the ``with`` block, by ``atexit`` (an exception escaping somewhere
unexpected) and by SIGTERM/SIGHUP/SIGINT, which are turned into SystemExit
so that the ``with`` block unwinds normally.  Child processes get their own
session, and stopping one signals its whole process group (its id is the
child's pid), so helpers the child spawned go with it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

TERM_GRACE_S = 5.0


def stop_process(proc: subprocess.Popen, grace: float = TERM_GRACE_S) -> int | None:
    """SIGTERM the child's process group, SIGKILL it after ``grace``; return the exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    # the leader is gone; anything left in its group (a socat QEMU forked) goes too
    _signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def stop_matching(argv: Sequence[str], grace: float = 2.0) -> list[int]:
    """Stop processes whose command line is exactly ``argv``; return their pids.

    For helpers that detach from their starter (QEMU's guestfwd socat runs in
    a session of its own, reparented to init), found by their exact argv,
    which carries this run's own ephemeral port.  Reads /proc itself: cleanup
    must work even where an import would fail.
    """
    wanted = "\0".join(argv)
    found = [pid for pid, cmdline in _process_cmdlines() if cmdline == wanted]
    for pid in found:
        _signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in found):
        time.sleep(0.05)
    for pid in found:
        if _alive(pid):
            _signal_pid(pid, signal.SIGKILL)
    return found


def _process_cmdlines() -> list[tuple[int, str]]:
    listed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue        # exited meanwhile, or not ours to read
        listed.append((int(entry), raw.rstrip(b"\0").decode(errors="replace")))
    return listed


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # a zombie has exited; only its parent's wait() is left
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self._lock = threading.Lock()
        self._old_handlers: dict[int, Any] = {}

    # -- registration ------------------------------------------------------------
    def on_close(self, what: str, fn: Callable[[], Any]) -> None:
        with self._lock:
            self._undo.append((what, fn))

    def popen(self, argv: Sequence[str], *, name: str, log: str | None = None,
              stdin: Any = subprocess.DEVNULL, die_with_us: bool = False,
              **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in its own session; it is stopped when the run ends.

        ``die_with_us``: the kernel SIGKILLs the child if this process dies
        without running any cleanup (SIGKILL, OOM), through setpriv's
        parent-death signal; for children that would otherwise run forever.
        """
        if die_with_us and shutil.which("setpriv"):
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        out: TextIO | int = subprocess.DEVNULL
        if log:
            out = open(log, "ab")  # noqa: SIM115 - closed by the undo callback
        try:
            proc = subprocess.Popen(list(argv), stdin=stdin, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    **kwargs)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.on_close(f"{name} (pid {proc.pid})", lambda: stop_process(proc))
        return proc

    # -- teardown ----------------------------------------------------------------
    def close(self) -> None:
        """Undo everything, newest first; safe to call again (atexit, a second signal).

        Entries are taken off the stack one at a time, so a close that a
        second Ctrl-C interrupts is finished by the next call rather than lost.
        """
        while True:
            with self._lock:
                if not self._undo:
                    break
                what, fn = self._undo.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                print(f"vm-deploy: stopping {what} failed: {exc}", file=sys.stderr)
        self._restore_signals()

    def __enter__(self) -> Supervisor:
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, _raise_exit)
            except ValueError:      # not the main thread: the caller handles signals
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        atexit.unregister(self.close)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            try:
                signal.signal(sig, handler)
            except ValueError:
                pass
        self._old_handlers.clear()


class Interrupted(SystemExit):
    pass


def _raise_exit(signum: int, frame: Any) -> None:
    # SystemExit unwinds every ``with``/``finally`` on the way out
    raise Interrupted(128 + signum)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(interval)
