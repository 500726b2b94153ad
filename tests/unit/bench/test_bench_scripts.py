"""bench/limits.py and bench/fixed_cost.py run end to end at tiny sizes (no timing checked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench import limits
from tests.conftest import requires_loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
MiB = 1 << 20
RATIO = r"(\d+\.\d\d)x"


def run_bench(*argv: str) -> str:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_table_names_the_slowest_limit_and_the_ratio_to_it():
    size = 1000 * MiB
    # 1000, 500, 2000 MB/s and the agent at 250 MB/s
    seconds = {"sha256": [size / 1e9], "HTTP download": [size / 5e8, size / 5e8],
               "O_DIRECT write": [size / 2e9], "agent stream only": [size / 4e8],
               "agent end to end": [size / 2.5e8]}
    lines = limits.table(size, seconds)
    text = "\n".join(lines)
    assert "| HTTP download (slowest limit) | 500 | 0.50x |" in lines
    assert "| sha256 | 1000 | 0.25x |" in lines
    assert "| O_DIRECT write | 2000 | 0.12x |" in lines
    assert "curl" not in text       # absent rows are left out, not invented
    assert text.endswith("agent end to end / slowest limit (HTTP download): 0.50x")


@requires_loop
def test_limits_runs_at_a_tiny_size_and_prints_the_ratios():
    out = run_bench("bench/limits.py", "--size-mib", "8", "--runs", "1", "--content",
                    "random", "--server", "python")
    for row in ("sha256", "HTTP download", "O_DIRECT write"):
        assert re.search(rf"^\| {row}( \(slowest limit\))? \| \d+ \| {RATIO} \|$", out, re.M), out
    assert re.search(r"^\| agent end to end \(raw, prepare_image to SUCCEEDED\) \| \d+ \| - \|$",
                     out, re.M), out
    assert re.search(rf"^agent end to end / slowest limit \((sha256|HTTP download|O_DIRECT "
                     rf"write)\): {RATIO}$", out, re.M), out


@requires_loop
def test_fixed_cost_runs_and_prints_every_phase():
    out = run_bench("bench/fixed_cost.py", "--runs", "1", "--poll", "0.1", "--image-mib", "8")
    for phase in ("client imports", "step setup", "stream", "after stream", "report (polling)",
                  "sync", "interpreter exit", "outside the stream", "total"):
        assert re.search(rf"^\| {re.escape(phase)} \| \d+\.\d{{3}} \| \d+\.\d{{3}} \|$", out,
                         re.M), out
