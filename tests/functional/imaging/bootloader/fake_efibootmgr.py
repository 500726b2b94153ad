"""Stand-in for efibootmgr: this machine has no efivarfs, so NVRAM is a text file.

The state is efibootmgr's own ``-v`` listing (seeded from a captured fixture);
deleting and creating edit it the way firmware would, and every run prints the
listing in the real format (labels only without ``-v``, efibootmgr 17 style).
Each argv is appended to $FAKE_EFI_LOG as a JSON line.  $FAKE_EFI_FAIL=create
makes creation fail the way a full NVRAM does.
"""

from __future__ import annotations

import json
import os
import re
import sys

ENTRY = re.compile(r"^Boot([0-9A-F]{4})")


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_EFI_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    state_path = os.environ["FAKE_EFI_STATE"]
    with open(state_path) as f:
        lines = f.read().splitlines()
    verbose = "-v" in argv
    if "-B" in argv:
        number = argv[argv.index("-b") + 1].upper()
        if not any(ENTRY.match(line) and line[4:8] == number for line in lines):
            sys.stderr.write("Could not delete variable: No such file or directory\n")
            return 5
        lines = [line for line in lines if not line.startswith(f"Boot{number}")]
        lines = [_order(line, remove=number) for line in lines]
    elif "-c" in argv:
        if os.environ.get("FAKE_EFI_FAIL") == "create":
            sys.stderr.write("Could not prepare Boot variable: No space left on device\n")
            return 5
        used = {line[4:8] for line in lines if ENTRY.match(line)}
        number = next(f"{n:04X}" for n in range(0x10000) if f"{n:04X}" not in used)
        label = argv[argv.index("-L") + 1]
        loader = argv[argv.index("-l") + 1]
        part = argv[argv.index("-p") + 1]
        lines.append(f"Boot{number}* {label}\tHD({part},GPT,4f8c2d6e-1b3a-4c5d-9e7f-"
                     f"0a1b2c3d4e5f,0x800,0x113000)/File({loader})")
        lines = [_order(line, add=number) for line in lines]
    with open(state_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    for line in lines:
        print(line if verbose else line.split("\t")[0])
    return 0


def _order(line: str, add: str | None = None, remove: str | None = None) -> str:
    if not line.startswith("BootOrder: "):
        return line
    order = [n for n in line[len("BootOrder: "):].split(",") if n and n != remove]
    if add:
        order.insert(0, add)
    return "BootOrder: " + ",".join(order)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
