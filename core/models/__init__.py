"""Our prunable implementation of the wav2vec 2.0 family and the ways in: Hugging Face teachers and our
own exported students."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.errors import TeacherError
from core.models.config import ConvConfig, LayerConfig, ModelConfig
from core.models.encoder import SpeechEncoder, build_model, make_student
from core.models.hardconcrete import HardConcrete
from core.models.import_huggingface import load_huggingface
from core.models.students import FORMAT_VERSION, STUDENT_FORMAT, is_student_dir, load_student


def load_model(path: Path | str) -> SpeechEncoder:
    """Load a teacher (Hugging Face directory) or an exported skillkd student (ours or its Hugging Face
    export); eval mode, on CPU."""
    path = Path(path)
    if is_student_dir(path):
        return load_student(path)
    return load_huggingface(path)


def macs_per_second(path: Path | str, seconds: float = 10.0) -> float:
    """MACs per second of audio of the teacher or student at `path` for one `seconds`-long utterance, from its
    architecture alone for a Hugging Face teacher (the layers are built on the meta device: no weights read,
    no memory spent), else from the loaded model."""
    path = Path(path)
    if is_student_dir(path):
        model = load_model(path)
    else:
        from core.models.import_huggingface import config_from_hf, read_json

        pre_path = path / "preprocessor_config.json"
        config = config_from_hf(
            read_json(path / "config.json"), read_json(pre_path) if pre_path.exists() else None
        )
        with torch.device("meta"):
            model = build_model(config)
        model = model.to_empty(device="cpu")  # uninitialised storage: only the shapes are used
    with torch.no_grad():
        return float(model.expected_macs(seconds))


def inspect_teacher(path: Path | str) -> dict[str, Any]:
    """Validate a teacher directory by importing it; returns what the service shows about it."""
    model = load_model(path)
    cfg = model.config
    return {
        "architecture": cfg.architecture,
        "layout": "large" if cfg.layer_norm_first else "base",
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "num_params": model.num_params(),
        "sample_rate": cfg.sample_rate,
        "is_student": is_student_dir(Path(path)),
    }


__all__ = [
    "ConvConfig",
    "LayerConfig",
    "ModelConfig",
    "SpeechEncoder",
    "HardConcrete",
    "build_model",
    "make_student",
    "load_huggingface",
    "load_model",
    "load_student",
    "FORMAT_VERSION",
    "inspect_teacher",
    "macs_per_second",
    "is_student_dir",
    "STUDENT_FORMAT",
    "TeacherError",
]
