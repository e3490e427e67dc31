"""The student format (algorithm.md §6), written here and read by `core.models.load_student`.

An exported student is a directory:
    model.safetensors        the encoder's weights (our names, float32)
    config.json              {"format": "skillkd-student", "version": 1, "model": <ModelConfig>, ...}
    distill_heads.safetensors  the cluster projections (only needed to distil further)
    task_head.safetensors    a fine-tuned teacher's task head as the student keeps it (transformers' names;
                             config.json's "task_head" says which: core.models.heads.HeadSpec)
    report.json              teacher, sizes, sparsity, clusters, CKA, losses, spec (core.export.report)
    cka.png, clusters.json   calibration plots and clusters
    model.onnx, model_fp16.onnx, model_quantized.onnx
                             optional ONNX variants, each verified against PyTorch fp32 (core.export.onnx)

`load_student(path)` needs only torch + this package and is strict about keys and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from core.models import FORMAT_VERSION, STUDENT_FORMAT, SpeechEncoder
from core.models.heads import TaskHead

TASK_HEAD_FILE = "task_head.safetensors"


def save_student(
    model: SpeechEncoder,
    directory: Path,
    *,
    metadata: dict[str, Any] | None = None,
    heads: nn.Module | None = None,
    task_head: TaskHead | None = None,
) -> Path:
    """Write `model` (no masks) as an exported student; `heads`: the cluster projections; `task_head`: the
    task head it keeps."""
    if model.config.has_masks:
        raise ValueError("finalise (prune) the student before exporting it")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": STUDENT_FORMAT})
    if heads is not None:
        save_file(
            {k: v.detach().float().contiguous().cpu() for k, v in heads.state_dict().items()},
            str(directory / "distill_heads.safetensors"),
        )
    config = {
        "format": STUDENT_FORMAT,
        "version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "num_params": model.num_params(),
        **(metadata or {}),
    }
    if task_head is not None:
        save_file(
            {k: v.detach().float().contiguous().cpu() for k, v in task_head.state_dict().items()},
            str(directory / TASK_HEAD_FILE),
        )
        config["task_head"] = task_head.spec.to_dict()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    world_readable(directory)
    return directory


EXPORT_FILE_MODE = 0o644


def world_readable(directory: Path) -> None:
    """Give every file under `directory` mode 0644: exports are published (safetensors writes 0600)."""
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(EXPORT_FILE_MODE)


__all__ = ["EXPORT_FILE_MODE", "TASK_HEAD_FILE", "save_student", "world_readable"]
