"""Time a full hardware inventory against the lshw + lsblk route, in one run.

Rows:
  agent, in process   - inventory.collect() in the running agent (what
                        poll.get_hardware_info and inspection pay), median
  agent, new process  - a fresh Python process that imports the agent and
                        collects once (start-up included), median
  lshw -json + lsblk  - the two tools IPA starts for the same facts, median

Targets: in-process under 0.2 s and at least 10x faster than lshw + lsblk.
Run as root for the full picture (lshw sees less as a user):
    python bench/inventory.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.hardware import inventory  # noqa: E402

CONFIG = types.SimpleNamespace(include_loop_devices=False, bootif=None, skip_bmc_detect=False)
ONE_SHOT = ("import types, json; from agent.hardware import inventory; "
            "json.dumps(inventory.collect(types.SimpleNamespace(include_loop_devices=False, "
            "bootif=None, skip_bmc_detect=False)))")


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    missing = [t for t in ("lshw", "lsblk") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install lshw util-linux)")
        return 2

    inventory.collect(CONFIG)                       # warm the page cache, as lshw gets too
    agent = timed(lambda: inventory.collect(CONFIG), args.runs)
    env = dict(os.environ, PYTHONPATH=ROOT)
    fresh = timed(lambda: run([sys.executable, "-c", ONE_SHOT], env), max(3, args.runs // 3))
    lshw = timed(lambda: (run(["lshw", "-json"]), run(["lsblk", "--json"])),
                 max(3, args.runs // 3))

    rows = [("agent, in process", agent), ("agent, new process", fresh),
            ("lshw -json + lsblk --json", lshw)]
    print(f"{'route':<28}{'median':>12}{'vs lshw':>10}")
    for label, value in rows:
        print(f"{label:<28}{value * 1000:>9.1f} ms{lshw / value:>9.1f}x")
    ok = agent < 0.2 and lshw / agent >= 10
    print(f"target (< 200 ms and >= 10x faster in process): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
