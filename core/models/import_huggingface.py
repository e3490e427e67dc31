"""The only module that knows Hugging Face names: one config mapping, one state-dict transform, strict load.

Accepted: a local directory with `config.json` and `model.safetensors` (or `pytorch_model.bin`, read with
`weights_only=True`) of `Wav2Vec2Model`, `HubertModel` or `WavLMModel`, Base ("group" norm extractor, post-LN)
or Large ("layer" norm extractor, pre-LN "stable layer norm") layout, plus `preprocessor_config.json`.
Task heads (`*ForCTC`, `*ForPreTraining`, ...) are accepted when their encoder weights are under the usual
prefix; the head weights are not part of the encoder (core.models.heads reads a task head). Anything else
fails with a `TeacherError` naming the problem.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.errors import TeacherError
from core.models.config import ConvConfig, LayerConfig, ModelConfig
from core.models.encoder import SpeechEncoder, build_model

_MODEL_TYPES = {"wav2vec2": "wav2vec2", "hubert": "hubert", "wavlm": "wavlm"}
# Keys of pretraining / task heads and training-only parameters we drop on import.
_IGNORED = re.compile(
    r"^(masked_spec_embed|quantizer\..*|project_q\..*|project_hid\..*|final_proj\..*|label_embs_concat|"
    r"lm_head\..*|projector\..*|classifier\..*|layer_weights|dropout_features.*|adapter\..*|"
    r"tdnn\.\d+\.kernel\..*|feature_extractor\.(weight|bias)|objective\.weight|"
    r"encoder\.layers\.\d+\.adapter_layer\..*)$"
)
_PREFIXES = ("wav2vec2.", "hubert.", "wavlm.")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TeacherError(f"{path.name} not found in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TeacherError(f"{path.name} is not valid JSON: {exc}") from None


def config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> ModelConfig:
    """Map a Hugging Face config dict to our ModelConfig; unsupported options raise TeacherError."""
    model_type = hf.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise TeacherError(
            f"unsupported architecture model_type={model_type!r}; supported: wav2vec2, hubert, wavlm"
        )
    for key in ("hidden_act", "feat_extract_activation"):
        if hf.get(key, "gelu") != "gelu":
            raise TeacherError(f"unsupported {key}={hf.get(key)!r} (only gelu)")
    if hf.get("conv_pos_batch_norm"):
        raise TeacherError("unsupported conv_pos_batch_norm=true")
    if hf.get("add_adapter"):
        raise TeacherError("unsupported add_adapter=true")
    try:
        dims, kernels, strides = hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"]
        hidden, heads, ffn, num_layers = (
            int(hf["hidden_size"]),
            int(hf["num_attention_heads"]),
            int(hf["intermediate_size"]),
            int(hf["num_hidden_layers"]),
        )
    except KeyError as exc:
        raise TeacherError(f"config.json lacks {exc.args[0]!r}") from None
    if not (len(dims) == len(kernels) == len(strides)):
        raise TeacherError("conv_dim, conv_kernel and conv_stride differ in length")
    if hidden % heads:
        raise TeacherError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    norm = hf.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise TeacherError(f"unsupported feat_extract_norm={norm!r}")
    arch = _MODEL_TYPES[model_type]
    # HuBERT has an explicit switch; wav2vec 2.0 and WavLM always normalise before the projection.
    proj_ln = bool(hf.get("feat_proj_layer_norm", True)) if arch == "hubert" else True
    pre = preprocessor or {}
    return ModelConfig(
        architecture=arch,  # type: ignore[arg-type]
        conv=[ConvConfig(int(d), int(k), int(s)) for d, k, s in zip(dims, kernels, strides)],
        layers=[
            LayerConfig(heads, ffn, list(range(heads)) if arch == "wavlm" else None)
            for _ in range(num_layers)
        ],
        hidden_size=hidden,
        head_dim=hidden // heads,
        extractor_mode="layer_norm" if norm == "layer" else "group_norm",
        conv_bias=bool(hf.get("conv_bias", False)),
        feat_proj_layer_norm=proj_ln,
        pos_conv_kernel=int(hf.get("num_conv_pos_embeddings", 128)),
        pos_conv_groups=int(hf.get("num_conv_pos_embedding_groups", 16)),
        layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        num_buckets=int(hf.get("num_buckets", 320)),
        max_distance=int(hf.get("max_bucket_distance", 800)),
        gate_heads=heads if arch == "wavlm" else 0,
        normalize_waveform=bool(pre.get("do_normalize", False)),
        sample_rate=int(pre.get("sampling_rate", 16_000)),
    )


def _fold_weight_norm(state: dict[str, Tensor], prefix: str) -> None:
    """Positional conv: weight = g * v / ||v|| with the norm over all dims but 2 (HF's weight_norm dim=2)."""
    pairs = [
        (prefix + "parametrizations.weight.original0", prefix + "parametrizations.weight.original1"),
        (prefix + "weight_g", prefix + "weight_v"),
    ]
    for g_key, v_key in pairs:
        if g_key in state and v_key in state:
            g, v = state.pop(g_key).float(), state.pop(v_key).float()
            norm = v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
            state[prefix + "weight"] = g * v / norm
            return


def transform_state_dict(hf_state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Rename Hugging Face keys to ours; drop task heads; keep unknown keys so strict loading reports them."""
    state: dict[str, Tensor] = {}
    for key, value in hf_state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if _IGNORED.match(key):
            continue
        state[key] = value
    _fold_weight_norm(state, "encoder.pos_conv_embed.conv.")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        new = re.sub(
            r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.",
            r"feature_extractor.conv_layers.\1.norm.",
            new,
        )
        new = new.replace("encoder.pos_conv_embed.conv.", "encoder.pos_conv.conv.")
        new = re.sub(r"^encoder\.layers\.0\.attention\.rel_attn_embed\.", "encoder.rel_attn_embed.", new)
        out[new] = value.float()
    # Some wav2vec 2.0 checkpoints name the feature extractor "feature_extractor.conv_layers" under
    # a legacy "feature_extractor.conv_layers.N.conv" — same as ours; nothing else to rename.
    return out


def read_weights(directory: Path) -> dict[str, Tensor]:
    """A Hugging Face directory's weights as stored (its names), checked readable."""
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise TeacherError(f"model.safetensors cannot be read (corrupt or truncated?): {exc}") from None
    binary = directory / "pytorch_model.bin"
    if binary.exists():
        try:
            obj = torch.load(str(binary), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise TeacherError(
                "pytorch_model.bin needs more than plain weights to unpickle and is refused "
                f"(only weights_only loading is allowed): {str(exc).splitlines()[0]}"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise TeacherError(f"pytorch_model.bin cannot be read (corrupt or truncated?): {exc}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise TeacherError("pytorch_model.bin does not hold a flat state dict of tensors")
        return obj
    raise TeacherError(f"no model.safetensors or pytorch_model.bin in {directory}")


def check_weights(state: dict[str, Tensor], expected: dict[str, Tensor], owner: str = "") -> None:
    """Every weight of `state` has the shape its config implies (`expected`) and finite values; TeacherError
    naming the weight (and its `owner`, e.g. "the head's ") otherwise."""
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise TeacherError(
                f"shape of {owner}{key} is {tuple(value.shape)}, config implies {tuple(expected[key].shape)}"
            )
        if not torch.isfinite(value).all():
            raise TeacherError(f"weight {owner}{key} holds NaN or inf values")


def load_huggingface(directory: Path | str) -> SpeechEncoder:
    """Import a Hugging Face teacher directory into our encoder with strict key and shape checks."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise TeacherError(f"teacher {directory.name} is a file, not a directory")
        raise TeacherError(f"teacher directory {directory} does not exist")
    hf = read_json(directory / "config.json")
    pre_path = directory / "preprocessor_config.json"
    pre = read_json(pre_path) if pre_path.exists() else None
    config = config_from_hf(hf, pre)
    state = transform_state_dict(read_weights(directory), config)
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TeacherError(
            f"weights do not match a {config.architecture} {('Large' if config.layer_norm_first else 'Base')}"
            f"-layout model: missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    check_weights(state, expected)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
