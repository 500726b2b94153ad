"""tools/vm-deploy's parts: cached builds, the test OS, QEMU, host services, the flows.

Imported as ``vm`` with ``tools/`` on ``sys.path`` (tools/vm-deploy and the
tests put it there); nothing here is part of the agent package.
"""
