"""The whole encoder: waveform -> all L+1 representations r[0..L] (DPHuBERT's indexing, algorithm.md §0).

`build_model(config)` builds the children and hands them to their parents; `SpeechEncoder.prune()` removes
masked units physically and returns the new `ModelConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from core.models.components import (
    ConvLayerBlock,
    ConvolutionalPositionalEmbedding,
    EncoderLayer,
    FeatureExtractor,
    FeatureProjection,
    FeedForward,
    SelfAttention,
    Transformer,
)
from core.models.config import ConvConfig, LayerConfig, ModelConfig
from core.models.hardconcrete import HardConcrete


def normalize_waveforms(waveforms: Tensor, lengths: Tensor | None) -> Tensor:
    """Zero-mean unit-variance per utterance over its valid samples (the HF feature extractor's
    `do_normalize`); padding stays zero."""
    if lengths is None:
        mean = waveforms.mean(-1, keepdim=True)
        var = waveforms.var(-1, keepdim=True, unbiased=False)
        return (waveforms - mean) / torch.sqrt(var + 1e-7)
    valid = (torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]).to(
        waveforms.dtype
    )
    count = lengths.clamp(min=1).to(waveforms.dtype)[:, None]
    mean = (waveforms * valid).sum(-1, keepdim=True) / count
    var = (((waveforms - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(var + 1e-7) * valid


class SpeechEncoder(nn.Module):
    """wav2vec 2.0 / HuBERT / WavLM encoder with optional Hard Concrete masks (a student in stage 1)."""

    def __init__(
        self,
        config: ModelConfig,
        feature_extractor: FeatureExtractor,
        feature_projection: FeatureProjection,
        transformer: Transformer,
    ) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = feature_extractor
        self.feature_projection = feature_projection
        self.encoder = transformer

    def layers(self) -> list[EncoderLayer]:
        """The transformer layers, typed (nn.ModuleList items are typed as Module)."""
        return [cast(EncoderLayer, layer) for layer in self.encoder.layers]

    def conv_blocks(self) -> list[ConvLayerBlock]:
        return [cast(ConvLayerBlock, block) for block in self.feature_extractor.conv_layers]

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        for c in self.config.conv:
            lengths = torch.div(lengths - c.kernel, c.stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(
        self, waveforms: Tensor, lengths: Tensor | None = None, max_layer: int | None = None
    ) -> tuple[list[Tensor], Tensor | None]:
        """waveforms: (batch, time) float at `config.sample_rate`; lengths: (batch,) valid samples or None.

        Returns ([r0, r1, ..., r_max_layer] each (batch, frame, feature), frame lengths (batch,) or None).
        """
        if waveforms.ndim != 2:
            raise ValueError(f"expected waveforms of shape (batch, time), found {tuple(waveforms.shape)}")
        if self.config.normalize_waveform:
            waveforms = normalize_waveforms(waveforms, lengths)
        features, frame_lengths = self.feature_extractor(waveforms, lengths)  # (batch, frame, channel)
        x = self.feature_projection(features)  # (batch, frame, feature)
        key_mask = None
        if frame_lengths is not None:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < frame_lengths[:, None]
            if not bool(valid.all()):
                x = x * valid[..., None].to(x.dtype)
                key_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
                key_mask = key_mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        if max_layer == 0:
            return [x], frame_lengths
        reps = [x, *self.encoder(x, key_mask, max_layer)]
        return reps, frame_lengths

    def hf_hidden_states(self, reps: list[Tensor]) -> list[Tensor]:
        """Our r0..rL -> transformers' hidden_states[0..L]: only index 0 differs (positional conv, and the
        encoder LayerNorm in the Base layout, applied to r0)."""
        enc = self.encoder
        h0 = reps[0] + enc.pos_conv(reps[0])
        if not self.config.layer_norm_first:
            h0 = enc.layer_norm(h0)
        return [h0, *reps[1:]]

    # ---------------------------------------------------------------------------------------------- sizes
    def num_params(self) -> int:
        """Real parameter count (masks excluded)."""
        return sum(p.numel() for name, p in self.named_parameters() if "hard_concrete" not in name)

    def expected_num_params(self) -> Tensor:
        """Differentiable expected parameter count under the current masks (== num_params() without masks).
        In eval mode it is the exact count of what `prune()` keeps."""
        conv, last_channels = self.feature_extractor.num_params()
        proj = self.feature_projection.num_params(last_channels)
        last = self.conv_blocks()[-1]
        projection = self.feature_projection
        if (
            not self.training
            and last.hard_concrete is not None
            and projection.layer_norm is not None
            and projection.phantom_direction is None
            and float(last_channels.detach() if isinstance(last_channels, Tensor) else last_channels)
            < last.out_channels
        ):
            # removing channels under the projection LayerNorm adds its phantom direction (components.py)
            proj = proj + projection.projection.out_features
        return conv + proj + self.encoder.num_params().to(conv.device)

    def conv_frames(self, samples: int) -> list[int]:
        """Output frames of each conv layer for one utterance of `samples` samples."""
        frames = []
        for c in self.config.conv:
            samples = max(0, (samples - c.kernel) // c.stride + 1)
            frames.append(samples)
        return frames

    def macs_parts(self, seconds: float) -> dict[str, Any]:
        """`expected_macs` per part, as tensors for the whole `seconds`-long utterance (not per second):
        {"conv": [per conv layer], "feature_projection", "positional_conv", "layers": [{"attention", "ffn"}]};
        differentiable in the masks, as `expected_macs` (the latency cost model builds on it)."""
        samples = int(round(seconds * self.config.sample_rate))
        frames = self.conv_frames(samples)
        if frames[-1] < 1:
            raise ValueError(f"{seconds} s of audio is shorter than one frame of this model")
        num_frames = frames[-1]
        conv: list[Tensor] = []
        in_channels: Tensor | float = 1.0
        for block, out_frames in zip(self.conv_blocks(), frames):
            conv.append(block.num_macs(in_channels, out_frames))
            in_channels = block.expected_out()
        ref = self.feature_projection.projection.weight
        return {
            "conv": conv,
            "feature_projection": self.feature_projection.num_macs(in_channels, num_frames),
            "positional_conv": torch.full((), self.encoder.pos_conv.num_macs(num_frames), device=ref.device),
            "layers": [
                {
                    "attention": layer.attention.num_macs(num_frames),
                    "ffn": layer.feed_forward.num_macs(num_frames),
                }
                for layer in self.layers()
            ],
        }

    def expected_macs(self, seconds: float = 10.0) -> Tensor:
        """Multiply-accumulates per second of audio for one `seconds`-long utterance, differentiable in the
        masks (expected counts in training, exact eval-gate counts in eval); equals
        `core.evaluation.facts.count_macs(model, seconds=seconds)` for a model without masks. Attention's
        T² term makes the figure depend on `seconds` (the spec's `macs_reference_seconds`). Counted: conv,
        projection, q/k/v/out, attention products, WavLM's gate, FFN, positional conv; not element-wise
        work."""
        parts = self.macs_parts(seconds)
        total = torch.stack(parts["conv"]).sum() + parts["feature_projection"] + parts["positional_conv"]
        for layer in parts["layers"]:
            total = total + layer["attention"] + layer["ffn"]
        return total / seconds

    def macs_by_part(self, seconds: float = 10.0) -> dict[str, Any]:
        """`expected_macs` per part, per second of audio, as floats: {"conv": [per conv layer],
        "feature_projection", "positional_conv", "layers": [{"attention", "ffn"}], "total"}."""
        with torch.no_grad():
            parts = self.macs_parts(seconds)
            out: dict[str, Any] = {
                "conv": [float(x) / seconds for x in parts["conv"]],
                "feature_projection": float(parts["feature_projection"]) / seconds,
                "positional_conv": float(parts["positional_conv"]) / seconds,
                "layers": [{k: float(v) / seconds for k, v in layer.items()} for layer in parts["layers"]],
            }
        out["total"] = (
            sum(out["conv"])
            + out["feature_projection"]
            + out["positional_conv"]
            + sum(v for layer in out["layers"] for v in layer.values())
        )
        return out

    def hard_concretes(self) -> list[HardConcrete]:
        return [m for m in self.modules() if isinstance(m, HardConcrete)]

    def mask_parameters(self) -> list[nn.Parameter]:
        return [hc.log_alpha for hc in self.hard_concretes()]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if "hard_concrete" not in name]

    # -------------------------------------------------------------------------------------------- pruning
    @torch.no_grad()
    def prune(self) -> ModelConfig:
        """Remove every unit whose eval gate is zero, in place; return the new architecture config."""
        was_training = self.training
        self.eval()
        last = self.feature_extractor.prune()
        cfg = self.config
        if last is not None:
            keep, scale = last
            folded = self.feature_projection.prune_inputs(keep, scale)
            if not folded:
                self.feature_extractor.conv_layers[-1].set_output_scale(scale)
        for layer in self.layers():
            layer.attention.prune()
            layer.feed_forward.prune()
        conv = []
        for c, block in zip(cfg.conv, self.conv_blocks()):
            conv.append(
                ConvConfig(
                    block.out_channels, c.kernel, c.stride, has_output_scale=block.output_scale is not None
                )
            )
        layers = []
        for layer in self.layers():
            att = layer.attention
            layers.append(
                LayerConfig(
                    att.num_heads, layer.feed_forward.ffn_dim, list(att.head_indices) if att.wavlm else None
                )
            )
        ln = self.feature_projection.layer_norm
        self.config = replace(
            cfg.without_masks(),
            conv=conv,
            layers=layers,
            feat_proj_phantom_channels=ln.phantom if ln is not None else 0,
        )
        self.train(was_training)
        return self.config


def build_model(config: ModelConfig) -> SpeechEncoder:
    """Build the encoder described by `config` (random init; load weights with load_state_dict)."""
    convs = []
    in_ch = 1
    for i, c in enumerate(config.conv):
        if config.extractor_mode == "layer_norm":
            norm: str | None = "layer"
        else:
            norm = "group" if i == 0 else None
        convs.append(
            ConvLayerBlock(
                in_ch,
                c.out_channels,
                c.kernel,
                c.stride,
                config.conv_bias,
                norm,
                prune=config.prune_conv,
                has_output_scale=c.has_output_scale,
            )
        )
        in_ch = c.out_channels
    extractor = FeatureExtractor(nn.ModuleList(convs))
    projection = FeatureProjection(
        in_ch,
        config.hidden_size,
        config.feat_proj_layer_norm,
        config.feat_proj_phantom_channels,
        config.layer_norm_eps,
    )
    wavlm = config.architecture == "wavlm"
    gate_heads = config.gate_heads or (config.layers[0].num_heads if config.layers else 1)
    layers = []
    for lc in config.layers:
        attention = SelfAttention(
            config.hidden_size,
            lc.num_heads,
            config.head_dim,
            config.prune_heads,
            config.prune_layers,
            wavlm=wavlm,
            gate_heads=gate_heads,
            head_indices=lc.head_indices,
        )
        ffn = FeedForward(config.hidden_size, lc.ffn_dim, config.prune_ffn, config.prune_layers)
        layers.append(
            EncoderLayer(attention, ffn, config.hidden_size, config.layer_norm_first, config.layer_norm_eps)
        )
    pos_conv = ConvolutionalPositionalEmbedding(
        config.hidden_size, config.pos_conv_kernel, config.pos_conv_groups
    )
    rel = nn.Embedding(config.num_buckets, gate_heads) if wavlm else None
    transformer = Transformer(
        pos_conv,
        nn.ModuleList(layers),
        config.hidden_size,
        config.layer_norm_first,
        config.layer_norm_eps,
        rel,
        config.num_buckets,
        config.max_distance,
    )
    if wavlm and config.gate_heads == 0:
        config = replace(config, gate_heads=gate_heads)
    return SpeechEncoder(config, extractor, projection, transformer)


def make_student(
    teacher: SpeechEncoder, *, conv: bool = True, heads: bool = True, ffn: bool = True, layers: bool = False
) -> SpeechEncoder:
    """A copy of the teacher (same weights) with Hard Concrete masks on the chosen units."""
    config = teacher.config.with_masks(conv=conv, heads=heads, ffn=ffn, layers=layers)
    student = build_model(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    bad_missing = [k for k in missing if "hard_concrete" not in k]
    if bad_missing or unexpected:
        raise RuntimeError(f"student/teacher mismatch: missing {bad_missing}, unexpected {unexpected}")
    return student.to(next(teacher.parameters()).device)
