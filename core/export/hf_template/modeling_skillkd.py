"""A skillkd student (pruned wav2vec 2.0 / HuBERT / WavLM encoder) as a transformers model, with the task
models of the wav2vec 2.0 family.

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

With `output_attentions=True` it returns each layer's attention probabilities over the heads that layer kept,
(batch, kept heads, frame, frame): the number of heads differs between layers, as pruning left them.

Fine-tuning works as with transformers' own WavLM / HuBERT / wav2vec 2.0 models: the task classes below
(`AutoModelForCTC`, `AutoModelForAudioClassification`, `AutoModelForAudioXVector`,
`AutoModelForAudioFrameClassification`) add their head at load time from the config
(`from_pretrained(dir, vocab_size=..., trust_remote_code=True)`), and compute the loss when `labels` are
given; `freeze_feature_encoder()`, `gradient_checkpointing_enable()`, SpecAugment (`mask_time_*`,
`mask_feature_*`, `mask_time_indices=`), dropouts and LayerDrop follow the config's fields and act in training
mode only. In eval mode, or with all of them off, the outputs are exactly the compressed student's.

One class per block, as in skillkd's own model. Each transformer layer has its own number of heads and FFN
units and each conv layer its own number of channels (config lists). The file needs only torch, numpy and
transformers.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutput,
    CausalLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    XVectorOutput,
)

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
        self.gradient_checkpointing = False  # set by transformers' gradient_checkpointing_enable()
        self._requires_grad = True

    def _freeze_parameters(self) -> None:
        for param in self.parameters():
            param.requires_grad = False
        self._requires_grad = False

    def forward(self, input_values: Tensor) -> Tensor:
        x = input_values[:, None]  # (batch, channel=1, time)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing and self._requires_grad:
            x = x.detach().requires_grad_(True)  # so a reentrant checkpoint passes gradients to the convs
        for layer in self.conv_layers:
            x = self._gradient_checkpointing_func(layer.__call__, x) if checkpointing else layer(x)
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
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, channel) -> (batch, frame, hidden)"""
        if self.layer_norm is None:
            return self.dropout(self.projection(x))
        x, zero = self.layer_norm.normalize(x)
        out = self.projection(x)
        if zero is not None and self.phantom_direction is not None:
            out = out + zero * self.phantom_direction
        return self.dropout(out)


# ------------------------------------------------------------------------------------------------------------
# Transformer
# ------------------------------------------------------------------------------------------------------------
def spectral_kernel(conv: nn.Conv1d, n: int) -> Tensor:
    """A grouped Conv1d's kernel for `overlap_save`: time-reversed, its `n`-point spectrum per (group,
    frequency) an (out / groups, in / groups) complex matrix: (groups, n // 2 + 1, out / groups, in / groups),
    fp32."""
    g = conv.groups
    spectrum = torch.fft.rfft(conv.weight.detach().float().flip(-1), n=n)  # (out, in / g, f)
    out, per_group, f = spectrum.shape
    return spectrum.view(g, out // g, per_group, f).permute(0, 3, 1, 2).contiguous()


def overlap_save(x: Tensor, conv: nn.Conv1d, spectrum: Tensor, n: int) -> Tensor:
    """`conv(x)`'s first T outputs (x: (batch, channel, T); a grouped Conv1d, stride 1, padding
    kernel // 2), by overlap-save: blocks of n samples overlapping by kernel - 1, each block's spectrum
    multiplied per frequency by its group's kernel matrix (`spectral_kernel`), the last n - kernel + 1 samples
    of each inverse kept. Exact up to fp32 rounding (1e-6 on the positional conv) and 4-8x faster than the
    direct grouped conv for the positional conv's kernel of 128 on a CPU (skillkd's
    bench/results/positional_conv.md)."""
    b, c, t = x.shape
    k = conv.kernel_size[0]
    g = spectrum.shape[0]
    step = n - k + 1
    blocks_n = -(-t // step)
    padded = F.pad(x.float(), (k // 2, blocks_n * step + k - 1 - t - k // 2))
    spectra = torch.fft.rfft(padded.unfold(2, n, step), n=n)  # (b, c, blocks, f)
    f = spectra.shape[-1]
    grouped = spectra.view(b, g, c // g, blocks_n, f).permute(1, 4, 2, 0, 3).reshape(g, f, c // g, -1)
    mixed = torch.matmul(spectrum, grouped)  # (g, f, out / g, b x blocks)
    out = g * spectrum.shape[2]
    mixed = mixed.view(g, f, out // g, b, blocks_n).permute(3, 0, 2, 4, 1).reshape(b, out, blocks_n, f)
    y = torch.fft.irfft(mixed, n=n)[..., k - 1 :].reshape(b, out, -1)[..., :t]
    if conv.bias is not None:
        y = y + conv.bias.float()[:, None]
    return y.to(x.dtype)


def spectral_ok(module: nn.Module, weight: Tensor) -> bool:
    """Whether `overlap_save` may stand in for the conv: inference in eager PyTorch (eval mode, no gradient to
    the weight; not while tracing, scripting, exporting to ONNX or compiling, nor under a dispatch mode such
    as a MACs counter or fake tensors: those see the plain conv, the architecture's own operator)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if module.training or (torch.is_grad_enabled() and weight.requires_grad):
        return False
    if weight.is_inference():  # made under inference_mode: no version counter to tell a changed weight by
        return False
    if weight.device.type not in ("cpu", "cuda"):  # where it was measured and tested
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    return not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


class ConvolutionalPositionalEmbedding(nn.Module):
    """Grouped conv over time (weight norm already folded into `conv.weight`), then GELU. In inference
    (`spectral_ok`) the conv is computed by overlap-save FFT: the same output, several times faster."""

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
        self.block = 1 << (2 * kernel - 1).bit_length()  # overlap-save block: a power of two >= 2 x kernel
        self._spectrum: Tensor | None = None
        self._spectrum_key: tuple[object, ...] | None = None

    def _spectral(self, x: Tensor) -> Tensor:
        weight = self.conv.weight
        key = (x.device, weight.data_ptr(), weight._version)
        if self._spectrum is None or self._spectrum_key != key:
            self._spectrum = spectral_kernel(self.conv, self.block).to(x.device)
            self._spectrum_key = key
        return overlap_save(x, self.conv, self._spectrum, self.block)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, hidden) -> (batch, frame, hidden)"""
        x = x.transpose(1, 2)
        if spectral_ok(self, self.conv.weight):
            y = self._spectral(x)
        else:
            y = self.conv(x)
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
        self.dropout = config.attention_dropout
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

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        position_bias: Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (batch, frame, hidden); key_mask: (batch, 1, 1, frame) additive or None;
        position_bias: WavLM's (original head, frame, frame) ungated bias or None.
        Returns the output and, with output_attentions, the probabilities (batch, head, frame, frame)."""
        batch, frames, _ = x.shape
        if self.num_heads == 0:  # every head pruned: only the output bias remains
            out = self.out_proj.bias.expand(batch, frames, self.embed_dim)
            return out, (x.new_zeros(batch, 0, frames, frames) if output_attentions else None)
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
        dropout = self.dropout if self.training else 0.0
        probs = None
        if output_attentions:  # explicit softmax, to return the probabilities
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores, dim=-1)
            out = torch.matmul(F.dropout(probs, p=dropout, training=self.training), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, frames, self.num_heads * self.head_dim)
        return self.out_proj(out), probs


class FeedForward(nn.Module):
    """Linear -> GELU -> (dropout) -> Linear -> (dropout) with this layer's own width."""

    def __init__(self, config: SkillkdConfig, layer: int) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.ffn_dim = config.layer_intermediate_size[layer]
        self.intermediate_dense = _linear(self.embed_dim, self.ffn_dim)
        self.output_dense = _linear(self.ffn_dim, self.embed_dim)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.ffn_dim == 0:  # every unit pruned: only the output bias remains
            return self.output_dropout(self.output_dense.bias.expand(*x.shape[:-1], self.embed_dim))
        hidden = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(hidden))


class EncoderLayer(nn.Module):
    """Post-LN (Base) or pre-LN (Large, "stable layer norm") transformer layer."""

    def __init__(self, config: SkillkdConfig, layer: int) -> None:
        super().__init__()
        self.attention = SelfAttention(config, layer)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config, layer)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer_norm_first = config.do_stable_layer_norm

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        position_bias: Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if self.layer_norm_first:
            attended, probs = self.attention(self.layer_norm(x), key_mask, position_bias, output_attentions)
            x = x + self.dropout(attended)
            return x + self.feed_forward(self.final_layer_norm(x)), probs
        attended, probs = self.attention(x, key_mask, position_bias, output_attentions)
        x = self.layer_norm(x + self.dropout(attended))
        return self.final_layer_norm(x + self.feed_forward(x)), probs


class Encoder(nn.Module):
    """Positional conv (+ LayerNorm in the Base layout) and the layers; returns all L+1 hidden states, the
    last hidden state (final LayerNorm in the Large layout) and, when asked, each layer's attentions.

    LayerDrop (training only) skips a layer; its hidden state is then its input, so there are always L+1."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__()
        self.pos_conv = ConvolutionalPositionalEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([EncoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layer_norm_first = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.rel_attn_embed = (
            nn.Embedding(config.num_buckets, config.gate_heads) if config.architecture == "wavlm" else None
        )
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_bucket_distance
        self.gradient_checkpointing = False  # set by transformers' gradient_checkpointing_enable()

    def forward(
        self, x: Tensor, key_mask: Tensor | None, output_attentions: bool = False
    ) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        bias = None
        if self.rel_attn_embed is not None:
            buckets = relative_position_buckets(x.shape[1], self.num_buckets, self.max_distance, x.device)
            bias = self.rel_attn_embed(buckets).permute(2, 0, 1)  # (original head, frame, frame)
        hidden_states, attentions = [x], []
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand([]).item() < self.layerdrop:
                hidden_states.append(x)
                continue
            if checkpointing:
                x, probs = self._gradient_checkpointing_func(
                    layer.__call__, x, key_mask, bias, output_attentions
                )
            else:
                x, probs = layer(x, key_mask, bias, output_attentions)
            hidden_states.append(x)
            if probs is not None:
                attentions.append(probs)
        last = self.layer_norm(x) if self.layer_norm_first else x
        return hidden_states, last, attentions


def spec_augment_time_mask(config: Any, frames: Tensor, num_frames: int) -> Tensor:
    """SpecAugment's random time spans for valid lengths `frames` (batch,), as transformers' wav2vec 2.0
    family draws them (its own `_compute_mask_indices`, numpy's global generator): (batch, frame) bool."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    valid = torch.arange(num_frames, device=frames.device)[None, :] < frames[:, None]
    mask = _compute_mask_indices(
        (frames.shape[0], num_frames),
        mask_prob=config.mask_time_prob,
        mask_length=config.mask_time_length,
        attention_mask=cast(torch.LongTensor, valid.long().cpu()),
        min_masks=config.mask_time_min_masks,
    )
    return torch.from_numpy(np.asarray(mask, dtype=bool)).to(frames.device)


def spec_augment_feature_mask(config: Any, batch: int, features: int, device: torch.device) -> Tensor:
    """SpecAugment's random feature spans: (batch, feature) bool."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    mask = _compute_mask_indices(
        (batch, features),
        mask_prob=config.mask_feature_prob,
        mask_length=config.mask_feature_length,
        min_masks=config.mask_feature_min_masks,
    )
    return torch.from_numpy(np.asarray(mask, dtype=bool)).to(device)


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------
class SkillkdPreTrainedModel(PreTrainedModel):
    config_class = SkillkdConfig
    base_model_prefix = "skillkd"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False  # the losses are transformers' (CTC sum / mean, cross-entropy), not per token

    def _init_weights(self, module: nn.Module) -> None:
        # Only for weights absent from a checkpoint (an export holds the encoder's; a task head's are new).
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, AMSoftmaxLoss):
            nn.init.normal_(module.weight)
        if isinstance(module, SkillkdModel):
            nn.init.uniform_(module.masked_spec_embed)
        layer_weights = getattr(module, "layer_weights", None)
        if isinstance(layer_weights, nn.Parameter):
            nn.init.constant_(layer_weights, 1.0 / layer_weights.numel())

    def _get_feat_extract_output_lengths(self, input_lengths: Tensor | int) -> Tensor | int:
        """Valid frames for `input_lengths` valid samples (the conv strides' arithmetic), as transformers'
        models of the family compute them."""
        if isinstance(input_lengths, Tensor):
            return self._frames(input_lengths)
        lengths = input_lengths
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = (lengths - kernel) // stride + 1
        return lengths

    def _frames(self, sample_lengths: Tensor) -> Tensor:
        lengths = sample_lengths
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def _get_feature_vector_attention_mask(self, num_frames: int, attention_mask: Tensor) -> Tensor:
        """(batch, sample) attention mask -> (batch, frame) bool mask of valid frames."""
        frames = self._frames(attention_mask.sum(-1).long())
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < frames[:, None]


def _return(output: Any, return_dict: bool | None, config: Any) -> Any:
    use_dict = return_dict if return_dict is not None else getattr(config, "return_dict", True)
    return output if use_dict else output.to_tuple()


class SkillkdModel(SkillkdPreTrainedModel):
    """input_values (batch, time) [+ attention_mask (batch, time)] -> BaseModelOutput."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        self.feature_extractor = FeatureExtractor(config)
        self.feature_projection = FeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Encoder(config)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients to the conv feature encoder (its parameters keep their values in training)."""
        self.feature_extractor._freeze_parameters()

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Valid frames for `sample_lengths` valid samples (the conv strides' arithmetic)."""
        return self._frames(sample_lengths).clamp(min=0)

    def _mask_hidden_states(self, x: Tensor, frames: Tensor, mask_time_indices: Tensor | None) -> Tensor:
        """SpecAugment: given or (training only) random time spans take `masked_spec_embed`; random feature
        spans (training only) are zeroed. Does nothing when `config.apply_spec_augment` is off."""
        config = self.config
        if not getattr(config, "apply_spec_augment", True):
            if mask_time_indices is not None:
                raise ValueError("mask_time_indices was given but config.apply_spec_augment is False")
            return x
        batch, num_frames, hidden = x.shape
        if mask_time_indices is None and config.mask_time_prob > 0 and self.training:
            mask_time_indices = spec_augment_time_mask(config, frames, num_frames)
        if mask_time_indices is not None:
            if tuple(mask_time_indices.shape) != (batch, num_frames):
                raise ValueError(
                    f"mask_time_indices has shape {tuple(mask_time_indices.shape)}; "
                    f"expected (batch, frames) = {(batch, num_frames)}"
                )
            embed = self.masked_spec_embed.to(x.dtype)
            x = torch.where(mask_time_indices.to(x.device, torch.bool)[..., None], embed, x)
        if config.mask_feature_prob > 0 and self.training:
            features = spec_augment_feature_mask(config, batch, hidden, x.device)
            x = x.masked_fill(features[:, None, :], 0.0)
        return x

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ):
        if input_values.ndim != 2:
            raise ValueError(
                f"expected input_values of shape (batch, time), found {tuple(input_values.shape)}"
            )
        unknown = sorted(k for k, v in kwargs.items() if v is not None)
        if unknown:
            raise TypeError(f"SkillkdModel.forward() got unexpected arguments: {', '.join(unknown)}")
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        if output_attentions is None:
            output_attentions = bool(getattr(self.config, "output_attentions", False))
        x = self.feature_projection(self.feature_extractor(input_values))  # (batch, frame, hidden)
        batch, num_frames = x.shape[:2]
        if attention_mask is not None:
            frames = self.frame_lengths(attention_mask.sum(-1).long())
        else:
            frames = torch.full((batch,), num_frames, dtype=torch.long, device=x.device)
        x = self._mask_hidden_states(x, frames, mask_time_indices)
        key_mask = None
        if attention_mask is not None:
            valid = torch.arange(num_frames, device=x.device)[None, :] < frames[:, None]  # (batch, frame)
            x = x * valid[..., None].to(x.dtype)
            key_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            key_mask = key_mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        hidden_states, last, attentions = self.encoder(x, key_mask, output_attentions)
        output = BaseModelOutput(
            last_hidden_state=last,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        return _return(output, return_dict, self.config)


# ------------------------------------------------------------------------------------------------------------
# Task models: the heads, inputs, outputs and losses of transformers' Wav2Vec2For* classes
# ------------------------------------------------------------------------------------------------------------
def _num_labels(config: Any) -> int:
    if config.num_labels is None:
        raise ValueError("a classification head needs config.num_labels (from_pretrained(..., num_labels=N))")
    return int(config.num_labels)


class _TaskModel(SkillkdPreTrainedModel):
    """A student with a task head; the encoder is `self.skillkd`, so a base export loads into it."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        self.skillkd = SkillkdModel(config)

    def _add_layer_weights(self, config: SkillkdConfig) -> None:
        """`use_weighted_layer_sum`: a learned softmax weight per hidden state (L+1), equal at first."""
        if config.use_weighted_layer_sum:
            layers = config.num_hidden_layers + 1
            self.layer_weights = nn.Parameter(torch.ones(layers) / layers)

    def freeze_feature_encoder(self) -> None:
        """Stop gradients to the conv feature encoder."""
        self.skillkd.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Stop gradients to the whole encoder: only the head trains."""
        for param in self.skillkd.parameters():
            param.requires_grad = False

    def _encode(
        self, input_values, attention_mask, mask_time_indices, output_attentions, output_hidden_states
    ):
        """The encoder's output and the features the head reads: the last hidden state, or the
        softmax-weighted sum of all L+1 hidden states (`use_weighted_layer_sum`)."""
        weighted = bool(getattr(self.config, "use_weighted_layer_sum", False)) and hasattr(
            self, "layer_weights"
        )
        outputs = self.skillkd(
            input_values,
            attention_mask=attention_mask,
            mask_time_indices=mask_time_indices,
            output_attentions=output_attentions,
            output_hidden_states=True if weighted else output_hidden_states,
            return_dict=True,
        )
        if weighted:
            stacked = torch.stack(outputs.hidden_states, dim=1)  # (batch, layer, frame, hidden)
            weights = torch.softmax(self.layer_weights, dim=-1)
            features = (stacked * weights.view(-1, 1, 1)).sum(dim=1)
        else:
            features = outputs.last_hidden_state
        return outputs, features


class SkillkdForCTC(_TaskModel):
    """A linear CTC head over the last hidden state (transformers' Wav2Vec2ForCTC): logits (batch, frame,
    vocab_size); with `labels` (batch, label) padded with -100, the CTC loss with blank = `pad_token_id`,
    reduced by `ctc_loss_reduction`."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            raise ValueError(
                "the CTC head needs config.vocab_size: load with from_pretrained(directory, vocab_size=N, "
                "trust_remote_code=True)"
            )
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, int(config.vocab_size))
        self.post_init()

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ):
        if labels is not None and labels.max() >= self.config.vocab_size:
            raise ValueError(f"label values must be < vocab_size ({self.config.vocab_size})")
        outputs, features = self._encode(
            input_values, attention_mask, mask_time_indices, output_attentions, output_hidden_states
        )
        logits = self.lm_head(self.dropout(features))
        loss = None
        if labels is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_values, dtype=torch.long)
            input_lengths = self._frames(attention_mask.sum(-1)).to(torch.long)
            labels = labels.to(logits.device)
            blank = self.config.pad_token_id
            label_mask = (labels >= 0) & (labels != blank)
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
            with torch.backends.cudnn.flags(enabled=False):
                loss = F.ctc_loss(
                    log_probs,
                    labels.masked_select(label_mask),
                    input_lengths,
                    label_mask.sum(-1),
                    blank=blank,
                    reduction=self.config.ctc_loss_reduction,
                    zero_infinity=self.config.ctc_zero_infinity,
                )
        output = CausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return _return(output, return_dict, self.config)


class SkillkdForSequenceClassification(_TaskModel):
    """Projector -> mean over valid frames -> classifier (transformers' Wav2Vec2ForSequenceClassification):
    logits (batch, num_labels); with `labels` (batch,), the cross-entropy loss."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        self._add_layer_weights(config)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, _num_labels(config))
        self.post_init()

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ):
        outputs, features = self._encode(
            input_values, attention_mask, mask_time_indices, output_attentions, output_hidden_states
        )
        hidden = self.projector(features)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            valid = self._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)
            hidden = hidden * valid[..., None].to(hidden.dtype)
            pooled = hidden.sum(dim=1) / valid.sum(dim=1, keepdim=True).to(hidden.dtype)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return _return(output, return_dict, self.config)


class SkillkdForAudioFrameClassification(_TaskModel):
    """A linear classifier on every frame (transformers' Wav2Vec2ForAudioFrameClassification, e.g. speaker
    diarization): logits (batch, frame, num_labels); with one-hot / multi-hot `labels` (batch, frame,
    num_labels), transformers' loss (cross-entropy against each frame's argmax label)."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        self._add_layer_weights(config)
        self.num_labels = _num_labels(config)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ):
        outputs, features = self._encode(
            input_values, attention_mask, mask_time_indices, output_attentions, output_hidden_states
        )
        logits = self.classifier(features)
        loss = None
        if labels is not None:
            targets = torch.argmax(labels.view(-1, self.num_labels), dim=1)
            loss = F.cross_entropy(logits.view(-1, self.num_labels), targets)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return _return(output, return_dict, self.config)


class AMSoftmaxLoss(nn.Module):
    """Additive-margin softmax over cosine similarities (transformers' x-vector objective)."""

    def __init__(self, input_dim: int, num_labels: int, scale: float = 30.0, margin: float = 0.4) -> None:
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.num_labels = num_labels
        self.weight = nn.Parameter(torch.randn(input_dim, num_labels))

    def forward(self, hidden_states: Tensor, labels: Tensor) -> Tensor:
        labels = labels.flatten()
        cos_theta = F.normalize(hidden_states, dim=1) @ F.normalize(self.weight, dim=0)
        onehot = F.one_hot(labels, self.num_labels).bool()
        logits = self.scale * torch.where(onehot, cos_theta - self.margin, cos_theta)
        return F.cross_entropy(logits, labels)


class TDNNLayer(nn.Module):
    """A dilated 1-D convolution over frames + ReLU, its weight stored as transformers' `kernel` Linear."""

    def __init__(self, config: SkillkdConfig, layer: int) -> None:
        super().__init__()
        self.in_dim = config.tdnn_dim[layer - 1] if layer > 0 else config.tdnn_dim[0]
        self.out_dim = config.tdnn_dim[layer]
        self.kernel_size = config.tdnn_kernel[layer]
        self.dilation = config.tdnn_dilation[layer]
        self.kernel = nn.Linear(self.in_dim * self.kernel_size, self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, feature) -> (batch, frame', feature')"""
        weight = self.kernel.weight.view(self.out_dim, self.kernel_size, self.in_dim).transpose(1, 2)
        y = F.conv1d(x.transpose(1, 2), weight, self.kernel.bias, dilation=self.dilation)
        return F.relu(y.transpose(1, 2))


def masked_mean_std(hidden: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation over each row's first `lengths` frames of (batch, frame,
    feature), as `hidden[i, :n].mean(0)` and `.std(0)` give them (0 instead of NaN for one frame)."""
    valid = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    count = lengths.to(hidden.dtype)[:, None]
    mean = (hidden * valid[..., None]).sum(dim=1) / count
    spread = ((hidden - mean[:, None]) * valid[..., None]) ** 2
    return mean, (spread.sum(dim=1) / (count - 1).clamp(min=1)).sqrt()


class SkillkdForXVector(_TaskModel):
    """Projector -> TDNN layers -> mean and standard deviation over valid frames -> embedding -> classifier
    (transformers' Wav2Vec2ForXVector): `embeddings` (batch, xvector_output_dim) for speaker verification,
    `logits`; with `labels` (batch,), the additive-margin softmax loss."""

    def __init__(self, config: SkillkdConfig) -> None:
        super().__init__(config)
        self._add_layer_weights(config)
        self.projector = nn.Linear(config.hidden_size, config.tdnn_dim[0])
        self.tdnn = nn.ModuleList([TDNNLayer(config, i) for i in range(len(config.tdnn_dim))])
        self.feature_extractor = nn.Linear(config.tdnn_dim[-1] * 2, config.xvector_output_dim)
        self.classifier = nn.Linear(config.xvector_output_dim, config.xvector_output_dim)
        self.objective = AMSoftmaxLoss(config.xvector_output_dim, _num_labels(config))
        self.post_init()

    def _get_tdnn_output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid TDNN output frames: each layer loses dilation * (kernel - 1) frames. (transformers' own
        x-vector counts kernel - 1, so its statistics of a padded utterance take in frames computed from
        padding; here a padded utterance gets the statistics it has alone.)"""
        for kernel, dilation in zip(self.config.tdnn_kernel, self.config.tdnn_dilation):
            lengths = lengths - dilation * (kernel - 1)
        return lengths

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ):
        outputs, features = self._encode(
            input_values, attention_mask, mask_time_indices, output_attentions, output_hidden_states
        )
        hidden = self.projector(features)
        for layer in self.tdnn:
            hidden = layer(hidden)
        if attention_mask is None:
            mean, std = hidden.mean(dim=1), hidden.std(dim=1)
        else:  # masked statistics in tensor operations: an ONNX export keeps any batch and lengths
            frames = self._frames(attention_mask.sum(dim=1).long())
            lengths = self._get_tdnn_output_lengths(frames).clamp(min=1)
            mean, std = masked_mean_std(hidden, lengths)
        embeddings = self.feature_extractor(torch.cat([mean, std], dim=-1))
        logits = self.classifier(embeddings)
        loss = self.objective(logits, labels) if labels is not None else None
        output = XVectorOutput(
            loss=loss,
            logits=logits,
            embeddings=embeddings,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return _return(output, return_dict, self.config)


__all__ = [
    "SkillkdForAudioFrameClassification",
    "SkillkdForCTC",
    "SkillkdForSequenceClassification",
    "SkillkdForXVector",
    "SkillkdModel",
    "SkillkdPreTrainedModel",
]
