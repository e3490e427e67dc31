"""The export format and its loader (algorithm.md §6).

An exported student is a directory:
    model.safetensors        the encoder's weights (our names, float32)
    config.json              {"format": "skillkd-student", "version": 1, "model": <ModelConfig>, ...}
    distill_heads.safetensors  the cluster projections (only needed to distil further)
    report.json              teacher, sizes, sparsity, clusters, CKA, losses, spec
    cka.png, clusters.json   calibration plots and clusters
    model.onnx               optional, verified against PyTorch with onnxruntime

`load_student(path)` needs only torch + this package and is strict about keys and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import CheckpointError
from .models import STUDENT_FORMAT, ModelConfig, SpeechEncoder, build_model

FORMAT_VERSION = 1


def save_student(model: SpeechEncoder, directory: Path, *, metadata: dict[str, Any] | None = None,
                 heads: nn.Module | None = None) -> Path:
    """Write `model` (no masks) as an exported student."""
    if model.config.has_masks:
        raise ValueError("finalise (prune) the student before exporting it")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": STUDENT_FORMAT})
    if heads is not None:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in heads.state_dict().items()},
                  str(directory / "distill_heads.safetensors"))
    config = {"format": STUDENT_FORMAT, "version": FORMAT_VERSION, "model": model.config.to_dict(),
              "num_params": model.num_params(), **(metadata or {})}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def load_student(path: Path | str) -> SpeechEncoder:
    """Load an exported student; strict: a missing or unexpected key, or a wrong shape, is an error."""
    path = Path(path)
    try:
        config_data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not an exported student: {exc}") from None
    if config_data.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{path}/config.json is not a {STUDENT_FORMAT} config")
    if int(config_data.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was exported by a newer skillkd (format {config_data['version']})")
    try:
        config = ModelConfig.from_dict(config_data["model"])
        model = build_model(config)
        state = load_file(str(path / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"cannot load student from {path}: {exc}") from None
    return model.eval()


class _AllRepresentations(nn.Module):
    """ONNX-friendly wrapper: waveforms (batch, time) -> stacked reps (rep, batch, frame, feature)."""

    def __init__(self, model: SpeechEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveforms: Tensor) -> Tensor:
        reps, _ = self.model(waveforms, None)
        return torch.stack(reps)


def export_onnx(model: SpeechEncoder, path: Path, *, seconds: float = 2.0, atol: float = 1e-3) -> dict[str, Any]:
    """Export to ONNX (dynamic batch and time) and check it against PyTorch with onnxruntime on a length
    different from the traced one. Returns the check's figures."""
    import onnxruntime as ort

    model = model.eval()
    wrapper = _AllRepresentations(model).eval()
    sr = model.config.sample_rate
    example = torch.randn(1, int(seconds * sr))
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=["waveforms"], output_names=["representations"],
            dynamic_axes={"waveforms": {0: "batch", 1: "time"},
                          "representations": {1: "batch", 2: "frame"}},
            opset_version=17, dynamo=False,
        )
    check = torch.randn(2, int(seconds * sr * 1.37))
    with torch.no_grad():
        expected = wrapper(check).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveforms": check.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not np.isfinite(diff) or diff > atol:
        raise CheckpointError(f"ONNX export differs from PyTorch by {diff:.3g} (> {atol})")
    return {"path": str(path), "max_abs_diff": diff, "opset": 17, "checked_shape": list(check.shape)}
