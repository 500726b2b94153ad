"""tools/vm is imported as ``vm`` with tools/ on sys.path, as tools/vm-deploy does."""

import os
import sys

TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools")
if os.path.abspath(TOOLS) not in sys.path:
    sys.path.insert(0, os.path.abspath(TOOLS))
