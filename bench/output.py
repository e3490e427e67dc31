"""What every bench prints and writes: its markdown table on stdout, and on request the same text and the full
figures as files (parents created)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_outputs(
    report: dict[str, Any], text: str, json_path: Path | None, markdown_path: Path | None
) -> None:
    """Print `text`; write `report` as JSON to `json_path` and `text` to `markdown_path` when given."""
    print(text)
    for path, content in ((json_path, json.dumps(report, indent=2) + "\n"), (markdown_path, text)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


__all__ = ["write_outputs"]
