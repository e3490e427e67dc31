"""Fixtures of the API tests (defined in servicefixtures.py, shared with tests/worker)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # servicekit, servicefixtures (tests/ is not a package)

from servicefixtures import *  # noqa: E402,F401,F403
