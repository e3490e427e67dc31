"""Paths the tests use: the repository, the shared assets beside it, the demo teacher and audio."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SKILLKD_SHARED", REPO.parent / "shared"))
DEMO_TEACHER = REPO / "core" / "assets" / "demo-teacher"
DEMO_AUDIO = REPO / "core" / "assets" / "demo-audio"
