"""Build the wheelhouse the image installs the agent from (runs on the build host).

Three steps, all outside the chroot so they work for a foreign architecture too:

1. check that the element's package lists still cover every tool in the
   checkout's ``agent/tools.py`` (a new tool must not silently go missing);
2. build the agent's own wheel from a clean copy of the checkout;
3. fetch its dependencies as binary wheels for the target architecture and
   Python version.  Dependencies that PyPI has no wheel for on every
   architecture come from Debian instead (``DEBIAN_PROVIDED``).

``DIB_DEPLOY_AGENT_WHEELHOUSE`` names a directory of ready wheels for builds
without PyPI access; it then also has to hold ``setuptools`` and ``wheel``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

# PyPI has no ppc64le psutil wheel; python3-psutil (package-installs.yaml)
# serves both architectures so the two images stay alike.
DEBIAN_PROVIDED = {"psutil"}

MACHINE = {"amd64": "x86_64", "ppc64el": "ppc64le", "arm64": "aarch64"}
# Everything up to the glibc of the target release is usable.
GLIBC_MAX_MINOR = 36
SOURCE_FILES = ("setup.cfg", "setup.py", "pyproject.toml", "README.rst", "LICENSE", "agent")


def fail(message: str) -> None:
    print(f"deploy-agent: {message}", file=sys.stderr)
    sys.exit(1)


def check_tool_packages(src: str, element_dir: str) -> None:
    """Fail when a tool in agent/tools.py has no entry in the element's lists."""
    sys.path.insert(0, src)
    try:
        from agent.tools import TOOLS
    finally:
        sys.path.pop(0)
    with open(os.path.join(element_dir, "package-installs.yaml"), encoding="utf-8") as f:
        keys = set(re.findall(r"^([A-Za-z0-9][^:\s]*):", f.read(), re.M))
    with open(os.path.join(element_dir, "pkg-map"), encoding="utf-8") as f:
        mapping = json.load(f)["family"]["debian"]
    problems = []
    for name, tool in sorted(TOOLS.items()):
        if name not in keys:
            problems.append(f"{name} is missing from package-installs.yaml")
        elif mapping.get(name, name) != tool.package:
            problems.append(f"{name} maps to {mapping.get(name, name)!r} in pkg-map, "
                            f"but agent/tools.py says Debian package {tool.package!r}")
    if problems:
        fail("the element's package lists drifted from agent/tools.py:\n  "
             + "\n  ".join(problems))


def target_python(target_root: str) -> str:
    """The chroot's python3 version, read from its symlink (works cross-arch)."""
    override = os.environ.get("DIB_DEPLOY_AGENT_PYTHON_VERSION")
    if override:
        return override
    link = os.path.join(target_root, "usr/bin/python3")
    try:
        name = os.readlink(link)
    except OSError:
        fail(f"cannot read {link}; set DIB_DEPLOY_AGENT_PYTHON_VERSION (e.g. 3.11)")
    match = re.search(r"python(3\.\d+)$", name)
    if not match:
        fail(f"{link} points at {name!r}; set DIB_DEPLOY_AGENT_PYTHON_VERSION")
    return match.group(1)


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd)
    if result.returncode:
        fail(f"pip {args[0]} failed with exit code {result.returncode}")


def build_agent_wheel(src: str, out: str, index_args: list[str]) -> str:
    """Build from a copy so the checkout gets no build/ or .egg-info litter."""
    if not os.path.isfile(os.path.join(src, "setup.cfg")):
        fail(f"{src} is not a deploy-agent checkout (no setup.cfg); "
             "set DIB_DEPLOY_AGENT_SRC")
    with tempfile.TemporaryDirectory(prefix="deploy-agent-src-") as tmp:
        for name in SOURCE_FILES:
            path = os.path.join(src, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(tmp, name),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif os.path.exists(path):
                shutil.copy2(path, tmp)
        pip("wheel", "--no-deps", "--quiet", *index_args, "--wheel-dir", out, tmp)
    wheels = [w for w in os.listdir(out) if w.startswith("deploy_agent-")]
    if len(wheels) != 1:
        fail(f"expected one deploy_agent wheel in {out}, found {wheels}")
    return os.path.join(out, wheels[0])


def requirements(wheel: str) -> list[str]:
    """Requires-Dist of the wheel, without extras and Debian-provided ones."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower()
        if name not in DEBIAN_PROVIDED:
            reqs.append(req)
    return reqs


def platform_args(arch: str) -> list[str]:
    machine = MACHINE.get(arch)
    if machine is None:
        fail(f"no wheel platform known for ARCH={arch}; known: {', '.join(MACHINE)}")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(17, GLIBC_MAX_MINOR + 1)]
    tags += [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    args = []
    for tag in tags:
        args += ["--platform", tag]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--element-dir", required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--target-root", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    src = os.path.abspath(args.src)
    check_tool_packages(src, args.element_dir)
    pyver = target_python(args.target_root)
    os.makedirs(args.out, exist_ok=True)

    offline = os.environ.get("DIB_DEPLOY_AGENT_WHEELHOUSE")
    index_args = ["--no-index", "--find-links", offline] if offline else []
    wheel = build_agent_wheel(src, args.out, index_args)
    reqs = requirements(wheel)
    print(f"deploy-agent: fetching wheels for {args.arch} / Python {pyver}: {', '.join(reqs)}")
    pip("download", "--quiet", *index_args, "--dest", args.out, "--only-binary", ":all:",
        "--implementation", "cp", "--python-version", pyver, *platform_args(args.arch),
        *reqs, "pip")


if __name__ == "__main__":
    main()
