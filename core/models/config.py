"""The architecture config saved with every checkpoint and export.

It describes one concrete network of the wav2vec 2.0 family, per layer, so that a pruned student (different
head counts, FFN widths and conv channels in each layer) round-trips through JSON exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Architecture = Literal["wav2vec2", "hubert", "wavlm"]


@dataclass
class ConvConfig:
    out_channels: int
    kernel: int
    stride: int
    # After pruning: a fixed per-channel scale that could not be folded into a following weight.
    has_output_scale: bool = False


@dataclass
class LayerConfig:
    num_heads: int
    ffn_dim: int
    # WavLM: which original heads remain (its relative-position table and gates are per original head).
    head_indices: list[int] | None = None


@dataclass
class ModelConfig:
    architecture: Architecture
    conv: list[ConvConfig]
    layers: list[LayerConfig]
    hidden_size: int
    head_dim: int
    extractor_mode: Literal["group_norm", "layer_norm"] = "group_norm"
    conv_bias: bool = False
    feat_proj_layer_norm: bool = True
    # Channels removed from the last conv layer that the projection LayerNorm must still count (see
    # components.FeatureProjection): keeps physical pruning exact.
    feat_proj_phantom_channels: int = 0
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_first: bool = False
    layer_norm_eps: float = 1e-5
    num_buckets: int = 320
    max_distance: int = 800
    # WavLM's gate splits the residual stream into the *original* number of heads.
    gate_heads: int = 0
    normalize_waveform: bool = False
    sample_rate: int = 16_000
    # Prunable units (masks exist only while these are set; a finalised student has none).
    prune_conv: bool = False
    prune_heads: bool = False
    prune_ffn: bool = False
    prune_layers: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def has_masks(self) -> bool:
        return self.prune_conv or self.prune_heads or self.prune_ffn or self.prune_layers

    def frame_stride(self) -> int:
        stride = 1
        for c in self.conv:
            stride *= c.stride
        return stride

    def unit_counts(self) -> dict[str, Any]:
        """Heads and FFN width per transformer layer, and channels per conv layer (what pruning changes)."""
        return {
            "layers": [{"heads": lc.num_heads, "ffn": lc.ffn_dim} for lc in self.layers],
            "conv_channels": [c.out_channels for c in self.conv],
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["conv"] = [ConvConfig(**c) for c in data["conv"]]
        data["layers"] = [LayerConfig(**layer) for layer in data["layers"]]
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture config keys: {sorted(unknown)}")
        return cls(**data)

    def without_masks(self) -> ModelConfig:
        return replace(self, prune_conv=False, prune_heads=False, prune_ffn=False, prune_layers=False)

    def with_masks(
        self, *, conv: bool = True, heads: bool = True, ffn: bool = True, layers: bool = False
    ) -> ModelConfig:
        # Conv channels under a per-layer LayerNorm (Large layout) are coupled through the norm's
        # statistics, so removing one would change the others: they are not pruned there.
        return replace(
            self,
            prune_conv=conv and self.extractor_mode == "group_norm",
            prune_heads=heads,
            prune_ffn=ffn,
            prune_layers=layers,
        )
