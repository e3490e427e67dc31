"""The ways in for our own students: the skillkd export directory and its Hugging Face export.

Both are read back into `SpeechEncoder` strictly (a missing or unexpected key, or a wrong shape, is an error),
with only torch and this package. Writing them is `core.export` (`save_student`) and `core.export.hf`
(`save_hf_export`); teachers come in through `import_huggingface`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from core.errors import CheckpointError
from core.models.config import ConvConfig, LayerConfig, ModelConfig
from core.models.encoder import SpeechEncoder, build_model

STUDENT_FORMAT = "skillkd-student"
FORMAT_VERSION = 1
HF_MODEL_TYPE = "skillkd"  # config.json "model_type" of the Hugging Face export


def is_student_dir(path: Path | str) -> bool:
    """Our own export directory, or its Hugging Face export (config.json with model_type "skillkd")."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        return config.get("format") == STUDENT_FORMAT or config.get("model_type") == HF_MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def is_hf_export_dir(path: Path | str) -> bool:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == HF_MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def model_config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> ModelConfig:
    """The inverse of `hf_config_dict` (plus the preprocessor's sampling rate and do_normalize)."""
    try:
        wavlm = hf["architecture"] == "wavlm"
        heads, ffn = hf["layer_num_heads"], hf["layer_intermediate_size"]
        indices = hf.get("layer_head_indices") or [None] * len(heads)
        scales = hf.get("conv_output_scale") or [False] * len(hf["conv_dim"])
        pre = preprocessor or {}
        return ModelConfig(
            architecture=hf["architecture"],
            conv=[
                ConvConfig(int(d), int(k), int(s), bool(o))
                for d, k, s, o in zip(
                    hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], scales, strict=True
                )
            ],
            layers=[
                LayerConfig(int(h), int(f), list(i) if wavlm and i is not None else None)
                for h, f, i in zip(heads, ffn, indices, strict=True)
            ],
            hidden_size=int(hf["hidden_size"]),
            head_dim=int(hf["head_dim"]),
            extractor_mode="layer_norm" if hf["feat_extract_norm"] == "layer" else "group_norm",
            conv_bias=bool(hf["conv_bias"]),
            feat_proj_layer_norm=bool(hf["feat_proj_layer_norm"]),
            feat_proj_phantom_channels=int(hf.get("feat_proj_phantom_channels", 0)),
            pos_conv_kernel=int(hf["num_conv_pos_embeddings"]),
            pos_conv_groups=int(hf["num_conv_pos_embedding_groups"]),
            layer_norm_first=bool(hf["do_stable_layer_norm"]),
            layer_norm_eps=float(hf["layer_norm_eps"]),
            num_buckets=int(hf["num_buckets"]),
            max_distance=int(hf["max_bucket_distance"]),
            gate_heads=int(hf.get("gate_heads", 0)) if wavlm else 0,
            normalize_waveform=bool(pre.get("do_normalize", False)),
            sample_rate=int(pre.get("sampling_rate", 16_000)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"config.json of the Hugging Face export is incomplete or malformed: {exc!r}"
        ) from None


HF_BASE_PREFIX = "skillkd."  # the encoder's weights inside a task model (SkillkdForCTC, ...)
HF_MASK_VECTOR = "masked_spec_embed"  # SpecAugment's fine-tuning mask vector: not part of the encoder


def encoder_state(state: dict[str, Any]) -> dict[str, Any]:
    """The encoder's weights in a Hugging Face export's state dict: a base model's (SkillkdModel) as they are,
    a task model's (saved by `save_pretrained` after fine-tuning) without the `skillkd.` prefix and without
    the task head; SpecAugment's mask vector left out either way."""
    if any(key.startswith(HF_BASE_PREFIX) for key in state):
        state = {k[len(HF_BASE_PREFIX) :]: v for k, v in state.items() if k.startswith(HF_BASE_PREFIX)}
    return {k: v for k, v in state.items() if k != HF_MASK_VECTOR}


def load_hf_export(path: Path | str) -> SpeechEncoder:
    """Read a Hugging Face export back into our encoder (strict about the encoder's keys and shapes; a task
    model's head is not part of the encoder and is left out)."""
    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
        pre_path = path / "preprocessor_config.json"
        pre = json.loads(pre_path.read_text()) if pre_path.exists() else None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a readable Hugging Face export: {exc}") from None
    config = model_config_from_hf(hf, pre)
    try:
        model = build_model(config)
        model.load_state_dict(encoder_state(load_file(str(path / "model.safetensors"))), strict=True)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"cannot load the Hugging Face export {path.name}: {exc}") from None
    return model.eval()


def load_student(path: Path | str) -> SpeechEncoder:
    """Load an exported student (ours, or its Hugging Face export: core.export.hf); strict: a missing or
    unexpected key, or a wrong shape, is an error."""
    path = Path(path)
    if is_hf_export_dir(path):
        return load_hf_export(path)
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


__all__ = [
    "FORMAT_VERSION",
    "HF_MODEL_TYPE",
    "STUDENT_FORMAT",
    "is_hf_export_dir",
    "is_student_dir",
    "load_hf_export",
    "load_student",
    "model_config_from_hf",
]
