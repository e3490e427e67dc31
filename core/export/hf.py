"""The Hugging Face export: a student as a `trust_remote_code` transformers model directory.

    config.json                 model_type "skillkd", auto_map to the two files below, per-layer heads /
                                FFN widths / conv channels and everything else the architecture needs
    configuration_skillkd.py    SkillkdConfig (copied from core/export/hf_template: torch + transformers only)
    modeling_skillkd.py         SkillkdModel and the task models (CTC, sequence and frame classification,
                                x-vector), each reached through its Auto class
    model.safetensors           the weights, float32, under the same names as our own model's state dict,
                                plus SpecAugment's `masked_spec_embed` for fine-tuning
    preprocessor_config.json    Wav2Vec2FeatureExtractor: sampling rate and do_normalize
    s3prl_upstream.py           the student as an s3prl upstream for SUPERB (docs/superb.md)
    onnx/                       model.onnx, model_fp16.onnx, model_quantized.onnx when exported and verified

`AutoModel.from_pretrained(DIR, trust_remote_code=True)` returns transformers' hidden states: hidden_states[0]
is taken after the positional convolution (and the encoder LayerNorm in the Base layout), not our r0, which
is the projection output before it (docs/algorithm.md §0). The weights keep our names, so `load_student`
reads the directory back into our `SpeechEncoder` without any renaming.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from core.export.s3prl_template import UPSTREAM_FILE as S3PRL_UPSTREAM_FILE
from core.export.student import world_readable
from core.models.config import ModelConfig
from core.models.encoder import SpeechEncoder
from core.models.heads import PROCESSOR_FILES, TaskHead
from core.models.students import (
    HF_BASE_PREFIX,
    HF_MODEL_TYPE,
    is_hf_export_dir,
    load_hf_export,
    model_config_from_hf,
)

MODEL_TYPE = HF_MODEL_TYPE
TEMPLATE_DIR = Path(__file__).resolve().parent / "hf_template"
TEMPLATE_FILES = ("configuration_skillkd.py", "modeling_skillkd.py")
AUTO_MAP = {
    "AutoConfig": "configuration_skillkd.SkillkdConfig",
    "AutoModel": "modeling_skillkd.SkillkdModel",
    "AutoModelForCTC": "modeling_skillkd.SkillkdForCTC",
    "AutoModelForAudioClassification": "modeling_skillkd.SkillkdForSequenceClassification",
    "AutoModelForAudioXVector": "modeling_skillkd.SkillkdForXVector",
    "AutoModelForAudioFrameClassification": "modeling_skillkd.SkillkdForAudioFrameClassification",
}
# The fine-tuning mask vector of SpecAugment: not part of a student (distillation never masks), written with
# every export so that loading it is silent; drawn as transformers draws it (uniform in [0, 1)), seeded.
MASKED_SPEC_EMBED = "masked_spec_embed"


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """Our architecture config as SkillkdConfig's keyword arguments."""
    if config.has_masks:
        raise ValueError("finalise (prune) the student before exporting it")
    wavlm = config.architecture == "wavlm"
    return {
        "architecture": config.architecture,
        "conv_dim": [c.out_channels for c in config.conv],
        "conv_kernel": [c.kernel for c in config.conv],
        "conv_stride": [c.stride for c in config.conv],
        "conv_output_scale": [c.has_output_scale for c in config.conv],
        "conv_bias": config.conv_bias,
        "feat_extract_norm": "layer" if config.extractor_mode == "layer_norm" else "group",
        "feat_proj_layer_norm": config.feat_proj_layer_norm,
        "feat_proj_phantom_channels": config.feat_proj_phantom_channels,
        "hidden_size": config.hidden_size,
        "head_dim": config.head_dim,
        "layer_num_heads": [lc.num_heads for lc in config.layers],
        "layer_intermediate_size": [lc.ffn_dim for lc in config.layers],
        "layer_head_indices": (
            [
                list(lc.head_indices) if lc.head_indices is not None else list(range(lc.num_heads))
                for lc in config.layers
            ]
            if wavlm
            else None
        ),
        "gate_heads": config.gate_heads if wavlm else 0,
        "num_conv_pos_embeddings": config.pos_conv_kernel,
        "num_conv_pos_embedding_groups": config.pos_conv_groups,
        "do_stable_layer_norm": config.layer_norm_first,
        "layer_norm_eps": config.layer_norm_eps,
        "num_buckets": config.num_buckets,
        "max_bucket_distance": config.max_distance,
    }


def preprocessor_dict(config: ModelConfig) -> dict[str, Any]:
    """preprocessor_config.json for Wav2Vec2FeatureExtractor."""
    return {
        "do_normalize": config.normalize_waveform,
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "sampling_rate": config.sample_rate,
    }


def save_hf_export(
    model: SpeechEncoder,
    directory: Path,
    *,
    metadata: dict[str, Any] | None = None,
    head: TaskHead | None = None,
    processor_dir: Path | None = None,
) -> Path:
    """Write `model` (finalised, no masks) as a transformers model directory; returns `directory`. With a
    task `head` the directory is that task model (architectures SkillkdForCTC, ...: the head's config keys
    and weights, the encoder under `skillkd.`), and the teacher's processor files found in `processor_dir`
    (a CTC tokenizer) are copied beside it, so transformers' pipelines load it as they load the teacher."""
    from core.export.hf_template.configuration_skillkd import SkillkdConfig

    config = model.config
    head_config = head.hf_config() if head is not None else {}
    hf_config = SkillkdConfig(**hf_config_dict(config), **head_config)
    hf_config.architectures = [TASK_CLASSES[head.spec.task] if head is not None else "SkillkdModel"]
    hf_config.auto_map = dict(AUTO_MAP)
    directory.mkdir(parents=True, exist_ok=True)
    data = hf_config.to_dict()
    data["skillkd"] = {"num_params": model.num_params(), **(metadata or {})}
    (directory / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    for name in TEMPLATE_FILES:
        shutil.copyfile(TEMPLATE_DIR / name, directory / name)
    shutil.copyfile(S3PRL_UPSTREAM_FILE, directory / S3PRL_UPSTREAM_FILE.name)  # SUPERB (docs/superb.md)
    state = hf_state_dict(model)
    if head is not None:
        state = {HF_BASE_PREFIX + k: v for k, v in state.items()}
        state.update({k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()})
        data["skillkd"]["task_head"] = head.spec.to_dict()
        (directory / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
        for name in PROCESSOR_FILES:
            if processor_dir is not None and (processor_dir / name).is_file():
                shutil.copyfile(processor_dir / name, directory / name)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_dict(config), indent=2))
    world_readable(directory)
    return directory


def hf_state_dict(model: SpeechEncoder) -> dict[str, Tensor]:
    """The export's weights: our encoder's state dict under our names, plus SpecAugment's mask vector."""
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state[MASKED_SPEC_EMBED] = torch.rand(model.config.hidden_size, generator=generator)
    return state


def hf_module(model: SpeechEncoder) -> Any:
    """The transformers module (`SkillkdModel`) computing what `model` computes, with transformers' hidden
    states; built in-process from the template (used to export ONNX and in tests)."""
    from core.export.hf_template.configuration_skillkd import SkillkdConfig
    from core.export.hf_template.modeling_skillkd import SkillkdModel

    module = SkillkdModel(SkillkdConfig(**hf_config_dict(model.config)))
    module.load_state_dict(hf_state_dict(model), strict=True)
    return module.eval()


TASK_CLASSES = {
    "ctc": "SkillkdForCTC",
    "sequence": "SkillkdForSequenceClassification",
    "xvector": "SkillkdForXVector",
    "frame": "SkillkdForAudioFrameClassification",
}


def hf_task_module(model: SpeechEncoder, task: str, **config: Any) -> Any:
    """The transformers task model (`TASK_CLASSES[task]`) on `model`'s encoder with a new head, built
    in-process from the template as `AutoModelFor...from_pretrained(export, **config)` would load it; `config`
    sets the head's and the fine-tuning's SkillkdConfig fields (vocab_size, num_labels, mask_time_prob, ...).
    In training mode; the caller picks its optimiser and loop (e.g. transformers' Trainer)."""
    from core.export.hf_template import modeling_skillkd
    from core.export.hf_template.configuration_skillkd import SkillkdConfig

    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASK_CLASSES)}")
    cls = getattr(modeling_skillkd, TASK_CLASSES[task])
    module = cls(SkillkdConfig(**hf_config_dict(model.config), **config))
    module.skillkd.load_state_dict(hf_state_dict(model), strict=True)
    return module.train()


def hf_task_head_module(model: SpeechEncoder, head: TaskHead) -> Any:
    """The transformers task model of a student that kept its teacher's `head` (what its `hf` export loads
    as), in eval mode: `hf_task_module` with the head's config and weights."""
    module = hf_task_module(model, head.spec.task, **head.hf_config())
    module.load_state_dict(
        {**{HF_BASE_PREFIX + k: v for k, v in hf_state_dict(model).items()}, **head.state_dict()}, strict=True
    )
    return module.eval()


def hidden_states_from_reps(model: SpeechEncoder, reps: list[Tensor]) -> list[Tensor]:
    """Our r0..rL -> transformers' hidden_states[0..L]: only index 0 differs (positional conv, and the encoder
    LayerNorm in the Base layout, applied to r0)."""
    return model.hf_hidden_states(reps)


__all__ = [
    "MODEL_TYPE",
    "hf_config_dict",
    "model_config_from_hf",
    "is_hf_export_dir",
    "save_hf_export",
    "load_hf_export",
    "hf_module",
    "hf_state_dict",
    "hf_task_module",
    "hf_task_head_module",
    "TASK_CLASSES",
    "hidden_states_from_reps",
    "preprocessor_dict",
]
