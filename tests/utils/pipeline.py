"""Settings of a tiny compression run: `CompressionSpec(**SPEC, ...)` runs both stages in seconds."""

from __future__ import annotations

SPEC = dict(stage1_steps=8, stage2_steps=4, batch_seconds=2.0, checkpoint_every=2)
