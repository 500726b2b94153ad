import os
import subprocess
import sys
import time

import pytest
from vm import procs

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(procs.__file__)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_children_and_their_helpers_stop_when_the_block_ends(tmp_path):
    pidfile = tmp_path / "grandchild"
    script = (f"import subprocess,time; p=subprocess.Popen(['sleep','60']); "
              f"open({str(pidfile)!r},'w').write(str(p.pid)); time.sleep(60)")
    with procs.Supervisor() as sup:
        child = sup.popen([sys.executable, "-c", script], name="sleeper")
        procs.wait_until(pidfile.exists, 10, 0.05, "grandchild start")
        grandchild = int(pidfile.read_text())
        assert _alive(child.pid) and _alive(grandchild)
    assert child.poll() is not None
    procs.wait_until(lambda: not _alive(grandchild), 5, 0.05, "grandchild exit")


def test_a_child_ignoring_sigterm_is_killed():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import signal,time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert procs.stop_process(proc, grace=0.5) == -9
    assert time.monotonic() - started < 5


def test_undo_runs_in_reverse_even_after_an_error():
    order = []
    with pytest.raises(ValueError):
        with procs.Supervisor() as sup:
            sup.on_close("first", lambda: order.append(1))
            sup.on_close("broken", lambda: 1 / 0)
            sup.on_close("last", lambda: order.append(3))
            raise ValueError("boom")
    assert order == [3, 1]


def test_sigterm_unwinds_the_block():
    code = (f"import os, signal, sys; sys.path.insert(0, {TOOLS!r})\n"
            "from vm import procs\n"
            "with procs.Supervisor() as sup:\n"
            "    sup.on_close('marker', lambda: print('undone', flush=True))\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('not reached')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.stdout == "undone\n"
    assert out.returncode == 128 + 15


def test_wait_until_times_out_with_the_name():
    with pytest.raises(TimeoutError, match="the thing not reached"):
        procs.wait_until(lambda: False, 0.1, 0.02, "the thing")


def test_an_interrupted_close_is_finished_by_the_next_call():
    order = []
    sup = procs.Supervisor()
    sup.on_close("first", lambda: order.append("first"))

    def second_ctrl_c():
        raise KeyboardInterrupt

    sup.on_close("interrupted", second_ctrl_c)
    sup.on_close("last", lambda: order.append("last"))
    with pytest.raises(KeyboardInterrupt):
        sup.close()
    sup.close()                     # what atexit does on the way out
    assert order == ["last", "first"]


def test_stop_matching_finds_detached_helpers_by_exact_argv():
    argv = ["sleep", "61.25"]           # unique enough: nobody else sleeps exactly this
    helper = subprocess.Popen(argv, start_new_session=True)
    other = subprocess.Popen(["sleep", "61.26"], start_new_session=True)
    try:
        assert procs.stop_matching(argv) == [helper.pid]
        assert helper.wait(5) is not None
        assert other.poll() is None
    finally:
        procs.stop_process(other, grace=1)


def test_stop_matching_needs_no_third_party_module(tmp_path):
    # cleanup runs on the way out of a failed run, maybe under a python3 without psutil
    helper = subprocess.Popen(["sleep", "61.27"], start_new_session=True)
    code = (f"import sys; sys.path.insert(0, {TOOLS!r}); sys.modules['psutil'] = None\n"
            "from vm import procs\n"
            "print(procs.stop_matching(['sleep', '61.27']))\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"[{helper.pid}]"
        assert helper.wait(5) is not None
    finally:
        procs.stop_process(helper, grace=1)


def test_stop_matching_kills_what_ignores_sigterm():
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 61.28 & wait"],
                                start_new_session=True)
    try:
        time.sleep(0.3)             # let the shell install its trap
        argv = ["sh", "-c", "trap '' TERM; sleep 61.28 & wait"]
        assert procs.stop_matching(argv, grace=0.5) == [stubborn.pid]
        assert stubborn.wait(5) == -9
    finally:
        procs.stop_process(stubborn, grace=1)


def test_children_die_when_we_are_killed_without_cleanup(tmp_path):
    pidfile = tmp_path / "child"
    code = (f"import sys, time; sys.path.insert(0, {TOOLS!r})\n"
            "from vm import procs\n"
            "sup = procs.Supervisor()\n"
            "child = sup.popen(['sleep', '60'], name='sleeper', die_with_us=True)\n"
            f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n")
    runner = subprocess.Popen([sys.executable, "-c", code])
    try:
        procs.wait_until(pidfile.exists, 10, 0.05, "child start")
        child = int(pidfile.read_text())
        assert _alive(child)
        runner.kill()                   # SIGKILL: no atexit, no handlers
        runner.wait(5)
        procs.wait_until(lambda: not _alive(child), 5, 0.05, "child exit")
    finally:
        procs.stop_process(runner, grace=1)
