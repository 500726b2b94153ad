"""Import the repository's extension-less scripts (tools/build-ramdisk, DIB hooks) as modules."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str, *path: str) -> ModuleType:
    """Load the script at REPO/``path`` under the module name ``name``."""
    loader = importlib.machinery.SourceFileLoader(name, os.path.join(REPO, *path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
