"""The s3prl upstream written into every Hugging Face export (`s3prl_upstream.py`): a self-contained file
(torch + transformers) that s3prl's SUPERB runner loads a student through. See docs/superb.md."""

from pathlib import Path

UPSTREAM_FILE = Path(__file__).resolve().parent / "s3prl_upstream.py"

__all__ = ["UPSTREAM_FILE"]
