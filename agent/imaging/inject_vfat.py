"""Files written into a vfat partition (an ESP, a config drive) with mtools, unmounted.

The same result as mounting it, without depending on the kernel's vfat
driver (absent on some hosts).  vfat has no symlinks, owners or permission
bits: ``owner``, ``group`` and ``dirmode`` are ignored and said so in the
result, and a ``mode`` without any write bit sets the read-only attribute
(what the kernel driver shows as a mode without write bits).  Names compare
case-insensitively, as on the filesystem.  FAT cannot rename atomically, so a
file is overwritten in place (``mcopy -D o``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence

from agent import tools
from agent.errors import DeploymentError, ToolError
from agent.imaging.inject_tree import Outcome, Refused

ENV = {"MTOOLS_SKIP_CHECK": "1"}
# characters FAT long names cannot hold; '*' and '?' would also be mtools wildcards
FORBIDDEN = set('"*:<>?\\|') | {chr(c) for c in range(32)}


def bad_name(parts: Sequence[str]) -> bool:
    return any(set(p) & FORBIDDEN or p.endswith((" ", ".")) for p in parts)


@dataclasses.dataclass
class VfatTree:
    node: str
    entries: dict[str, bool] = dataclasses.field(default_factory=dict)   # KEY -> is_dir

    @classmethod
    def read(cls, node: str) -> VfatTree:
        """Every file and directory on the filesystem (one ``mdir`` listing)."""
        proc = tools.run("mdir", "-/", "-b", "-a", "-i", node, "::/", env=ENV, check=False,
                         timeout=120.0)
        if proc.returncode != 0:
            if proc.stdout.strip() or "not found" not in (proc.stderr or ""):
                raise DeploymentError(f"could not list the vfat filesystem on {node}: "
                                      f"{tools.tail(proc.stderr or proc.stdout, 300)}")
            return cls(node)      # an empty root directory: mdir finds nothing to print
        tree = cls(node)
        for line in proc.stdout.splitlines():
            if line.startswith("::/"):
                is_dir = line.endswith("/")
                tree.entries[cls.key(line[3:].rstrip("/").split("/"))] = is_dir
        return tree

    @staticmethod
    def key(parts: Sequence[str]) -> str:
        return "/".join(parts).upper()

    def holds_dir(self, name: str) -> bool:
        return self.entries.get(self.key([name])) is True

    def check(self, parts: Sequence[str], *, delete: bool) -> None:
        """Dry run: raise Refused now for what writing ``parts`` would refuse later."""
        if bad_name(parts):
            raise Refused(f"/{'/'.join(parts)} has characters a vfat name cannot hold")
        for depth in range(1, len(parts)):
            if self.entries.get(self.key(parts[:depth])) is False:
                raise Refused(f"/{'/'.join(parts[:depth])} is a file on the vfat partition, "
                              "not a directory")
        if self.entries.get(self.key(parts)) is True:
            raise Refused(f"/{'/'.join(parts)} is a directory on the vfat partition; only "
                          f"files can be {'deleted' if delete else 'written'}")

    def _run(self, tool: str, *args: str) -> None:
        try:
            tools.run(tool, "-i", self.node, *args, env=ENV, timeout=120.0)
        except ToolError as exc:
            raise DeploymentError(f"{tool} failed on the vfat partition {self.node}: "
                                  f"{exc.stderr or exc.details}") from exc

    def apply(self, parts: Sequence[str], *, data: bytes | None,
              mode: int | None = None) -> Outcome:
        self.check(parts, delete=data is None)
        target = "::/" + "/".join(parts)
        if data is None:
            if self.key(parts) not in self.entries:
                return Outcome(action="absent")
            self._run("mdel", target)
            del self.entries[self.key(parts)]
            return Outcome(action="deleted")
        outcome = Outcome(action="written", size=len(data))
        for depth in range(1, len(parts)):
            if self.key(parts[:depth]) not in self.entries:
                self._run("mmd", "::/" + "/".join(parts[:depth]))
                self.entries[self.key(parts[:depth])] = True
                outcome.created_dirs.append("/" + "/".join(parts[:depth]))
        with tempfile.NamedTemporaryFile(prefix="deploy-agent-inject-") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
            self._run("mcopy", "-D", "o", tmp.name, target)
        self.entries[self.key(parts)] = False
        if mode is not None and not mode & 0o222:
            self._run("mattrib", "+r", target)
            outcome.mode = mode
        return outcome
