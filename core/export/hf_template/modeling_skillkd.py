"""A skillkd student (pruned wav2vec 2.0 / HuBERT / WavLM encoder) as a transformers model.

Load with `AutoModel.from_pretrained(directory, trust_remote_code=True)`. The model takes `input_values`
(batch, time), as Wav2Vec2FeatureExtractor produces them (normalised when the export's
preprocessor_config.json says `do_normalize`), and an optional `attention_mask` (batch, time) of 1 for
samples and 0 for right padding. With `output_hidden_states=True` it returns the L+1 hidden states with
transformers' definitions:

    hidden_states[0]   the projected conv features after the positional convolution (and, in the Base
                       layout, the encoder LayerNorm): the input of the first transformer layer
    hidden_states[i]   the output of transformer layer i (1 <= i <= L), no final LayerNorm
    last_hidden_state  hidden_states[L], after the encoder's final LayerNorm in the Large layout
                       ("stable layer norm"); equal to hidden_states[L] in the Base layout

One class per block, as in skillkd's own model. Each transformer layer has its own number of heads and FFN
units and each conv layer its own number of channels (config lists). The file needs only torch and
transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_skillkd import SkillkdConfig


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear; without its random init when it holds no weights (a layer pruned to zero heads or FFN
    units), which torch would warn about on every load ("Initializing zero-element tensors is a no-op")."""
    if in_features > 0 and out_features > 0:
        return nn.Linear(in_features, out_features)
    linear = nn.Linear(1, 1)
    linear.weight = nn.Parameter(torch.empty(out_features, in_features))
    linear.bias = nn.Parameter(torch.zeros(out_features))
    linear.in_features, linear.out_features = in_features, out_features
    return linear


# ------------------------------------------------------------------------------------------------------------
# Feature extractor
# ------------------------------------------------------------------------------------------------------------
class ConvLayerBlock(nn.Module):
    """Conv1d -> (GroupNorm | LayerNorm | nothing) -> GELU -> (fixed per-channel scale)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        bias: bool,
        norm: str | None,
        has_output_scale: bool,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        self.norm: nn.Module | None
        if norm == "group":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        else:
            self.norm = None
        self.output_scale: Tensor | None
        self.register_buffer("output_scale", torch.ones(out_channels) if has_output_scale else None)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, channel, time) -> (batch, channel', time')"""
        x = self.conv(x)
        if self.norm is not None and self.norm_kind == "group":
            x = self.norm(x)
        elif self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = F.gelu(x)
        if self.output_scale is not None:
            x = x * self.output_scale[None, :, None]
        return x


class FeatureExtractor(nn.Module):
    """Waveform (batch, time) -> features (batch, frame, channel)."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__()
        layers = []
        in_channels = 1
        for i, (dim, kernel, stride) in enumerate(
            zip(config.conv_dim, config.conv_kernel, config.conv_stride)
        ):
            if config.feat_extract_norm == "layer":
                norm: str | None = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(
                ConvLayerBlock(
                    in_channels,
                    dim,
                    kernel,
                    stride,
                    config.conv_bias,
                    norm,
                    bool(config.conv_output_scale[i]),
                )
            )
            in_channels = dim
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, input_values: Tensor) -> Tensor:
        x = input_values[:, None]  # (batch, channel=1, time)
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)  # (batch, frame, channel)


class PhantomLayerNorm(nn.LayerNorm):
    """LayerNorm over the kept features plus `phantom` pruned features known to be zero.

    Returns the normalised features and, when phantom > 0, the normalised value of a zero feature
    (-mean/std per frame, shape (..., 1)), which is what the pruned channels contributed.
    """

    def __init__(self, features: int, phantom: int, eps: float) -> None:
        super().__init__(features, eps=eps)
        self.phantom = phantom

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.phantom == 0:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps), None
        total = x.shape[-1] + self.phantom
        mean = x.sum(-1, keepdim=True) / total
        centred = x - mean
        inv = torch.rsqrt(
            (centred.pow(2).sum(-1, keepdim=True) + self.phantom * mean.pow(2)) / total + self.eps
        )
        return centred * inv * self.weight + self.bias, -mean * inv


class FeatureProjection(nn.Module):
    """(LayerNorm) -> Linear(channel -> hidden); pruned channels enter through `phantom_direction`."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__()
        channels = config.conv_dim[-1]
        phantom = config.feat_proj_phantom_channels
        self.layer_norm = (
            PhantomLayerNorm(channels, phantom, config.layer_norm_eps)
            if config.feat_proj_layer_norm
            else None
        )
        self.projection = nn.Linear(channels, config.hidden_size)
        self.phantom_direction: nn.Parameter | None = None
        if config.feat_proj_layer_norm and phantom > 0:
            self.phantom_direction = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, channel) -> (batch, frame, hidden)"""
        if self.layer_norm is None:
            return self.projection(x)
        x, zero = self.layer_norm.normalize(x)
        out = self.projection(x)
        if zero is not None and self.phantom_direction is not None:
            out = out + zero * self.phantom_direction
        return out


# ------------------------------------------------------------------------------------------------------------
# Transformer
# ------------------------------------------------------------------------------------------------------------
class ConvolutionalPositionalEmbedding(nn.Module):
    """Grouped conv over time (weight norm already folded into `conv.weight`), then GELU."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        self.kernel = kernel
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, hidden) -> (batch, frame, hidden)"""
        y = self.conv(x.transpose(1, 2))
        if self.kernel % 2 == 0:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


def relative_position_buckets(
    num_frames: int, num_buckets: int, max_distance: int, device: torch.device
) -> Tensor:
    """WavLM's bidirectional log-spaced buckets of key - query offsets: (frame, frame) int64."""
    pos = torch.arange(num_frames, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    is_small = rel < max_exact
    large = torch.log(rel.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + large * (half - max_exact)).long().clamp(max=half - 1)
    return buckets + torch.where(is_small, rel, large)


class SelfAttention(nn.Module):
    """Multi-head self-attention with this layer's own head count. WavLM: adds the gated relative position
    bias of the heads this layer kept (`head_indices`, numbered as in the original model)."""

    def __init__(self, config: SkillkdConfig, layer: int) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.layer_num_heads[layer]
        self.head_dim = config.head_dim
        inner = self.num_heads * self.head_dim
        self.q_proj = _linear(self.embed_dim, inner)
        self.k_proj = _linear(self.embed_dim, inner)
        self.v_proj = _linear(self.embed_dim, inner)
        self.out_proj = _linear(inner, self.embed_dim)
        self.wavlm = config.architecture == "wavlm"
        if self.wavlm:
            self.gate_heads = config.gate_heads
            indices = config.layer_head_indices[layer] if config.layer_head_indices else None
            self.head_indices = list(range(self.num_heads)) if indices is None else list(indices)
            self.all_heads = self.head_indices == list(range(self.gate_heads))
            self.gru_rel_pos_linear = nn.Linear(self.embed_dim // self.gate_heads, 8)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(self, x: Tensor, key_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        """x: (batch, frame, hidden); key_mask: (batch, 1, 1, frame) additive or None;
        position_bias: WavLM's (original head, frame, frame) ungated bias or None."""
        batch, frames, _ = x.shape
        if self.num_heads == 0:  # every head pruned: only the output bias remains
            return self.out_proj.bias.expand(batch, frames, self.embed_dim)
        shape = (batch, frames, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (batch, head, frame, head_dim)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        mask = key_mask
        if self.wavlm and position_bias is not None:
            split = x.view(batch, frames, self.gate_heads, -1).transpose(1, 2)  # (batch, head, frame, d)
            table = position_bias
            if not self.all_heads:
                split, table = split[:, self.head_indices], position_bias[self.head_indices]
            proj = self.gru_rel_pos_linear(split).view(batch, self.num_heads, frames, 2, 4).sum(-1)
            gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)  # (batch, head, frame, 1) each
            gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
            bias = gate * table.unsqueeze(0)  # (batch, head, frame, frame)
            mask = bias if key_mask is None else bias + key_mask
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, head, frame, head_dim)
        out = out.transpose(1, 2).reshape(batch, frames, self.num_heads * self.head_dim)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with this layer's own width."""

    def __init__(self, config: SkillkdConfig, layer: int) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.ffn_dim = config.layer_intermediate_size[layer]
        self.intermediate_dense = _linear(self.embed_dim, self.ffn_dim)
        self.output_dense = _linear(self.ffn_dim, self.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.ffn_dim == 0:  # every unit pruned: only the output bias remains
            return self.output_dense.bias.expand(*x.shape[:-1], self.embed_dim)
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN (Base) or pre-LN (Large, "stable layer norm") transformer layer."""

    def __init__(self, config: SkillkdConfig, layer: int) -> None:
        super().__init__()
        self.attention = SelfAttention(config, layer)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config, layer)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer_norm_first = config.do_stable_layer_norm

    def forward(self, x: Tensor, key_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.attention(self.layer_norm(x), key_mask, position_bias)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, key_mask, position_bias))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """Positional conv (+ LayerNorm in the Base layout) and the layers; returns all L+1 hidden states and
    the last hidden state (final LayerNorm in the Large layout)."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__()
        self.pos_conv = ConvolutionalPositionalEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([EncoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layer_norm_first = config.do_stable_layer_norm
        self.rel_attn_embed = (
            nn.Embedding(config.num_buckets, config.gate_heads) if config.architecture == "wavlm" else None
        )
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_bucket_distance

    def forward(self, x: Tensor, key_mask: Tensor | None) -> tuple[list[Tensor], Tensor]:
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        bias = None
        if self.rel_attn_embed is not None:
            buckets = relative_position_buckets(x.shape[1], self.num_buckets, self.max_distance, x.device)
            bias = self.rel_attn_embed(buckets).permute(2, 0, 1)  # (original head, frame, frame)
        hidden_states = [x]
        for layer in self.layers:
            x = layer(x, key_mask, bias)
            hidden_states.append(x)
        last = self.layer_norm(x) if self.layer_norm_first else x
        return hidden_states, last


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------
class SkillkdPreTrainedModel(PreTrainedModel):
    config_class = SkillkdConfig
    base_model_prefix = "skillkd"
    main_input_name = "input_values"

    def _init_weights(self, module: nn.Module) -> None:
        # Only used for weights absent from a checkpoint; an export holds all of them.
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SkillkdModel(SkillkdPreTrainedModel):
    """input_values (batch, time) [+ attention_mask (batch, time)] -> BaseModelOutput."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        self.feature_extractor = FeatureExtractor(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)
        self.post_init()

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Valid frames for `sample_lengths` valid samples (the conv strides' arithmetic)."""
        lengths = sample_lengths
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> BaseModelOutput:
        if input_values.ndim != 2:
            raise ValueError(
                f"expected input_values of shape (batch, time), found {tuple(input_values.shape)}"
            )
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        x = self.feature_projection(self.feature_extractor(input_values))  # (batch, frame, hidden)
        key_mask = None
        if attention_mask is not None:
            frames = self.frame_lengths(attention_mask.sum(-1).long())
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < frames[:, None]  # (batch, frame)
            x = x * valid[..., None].to(x.dtype)
            key_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            key_mask = key_mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        hidden_states, last = self.encoder(x, key_mask)
        return BaseModelOutput(
            last_hidden_state=last, hidden_states=tuple(hidden_states) if output_hidden_states else None
        )


__all__ = ["SkillkdModel", "SkillkdPreTrainedModel"]
