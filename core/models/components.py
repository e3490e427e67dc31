"""The prunable wav2vec 2.0 / HuBERT / WavLM encoder, one class per box of the paper's figure.

Every prunable block has the same three things: `forward`, `num_params()` (differentiable expected count
while masks are present, exact otherwise) and an in-place `prune()` that removes the units whose eval gate is
zero, folds the kept soft gate values into the following weights and drops the masks. After `prune()` the
block computes exactly what the masked block computed in eval mode.

Shapes use the words `batch`, `frame`, `feature` (and `channel`, `time` inside the conv extractor).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models.hardconcrete import HardConcrete

Count = Tensor | float


def _as_tensor(x: Count, like: Tensor) -> Tensor:
    # torch.full launches a fill on the device; torch.tensor(x, device=cuda) would copy from pageable host
    # memory, which synchronises the stream: one stall per counted module per step.
    return x if isinstance(x, Tensor) else torch.full((), float(x), dtype=torch.float32, device=like.device)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear; without its random init when it holds no weights (a layer pruned to zero heads or units),
    which torch would warn about on every build ("Initializing zero-element tensors is a no-op"). The bias
    then starts at zero, which is what nn.Linear's own init gives it when in_features is 0."""
    if in_features > 0 and out_features > 0:
        return nn.Linear(in_features, out_features)
    linear = nn.Linear(1, 1)
    linear.weight = nn.Parameter(torch.empty(out_features, in_features))
    linear.bias = nn.Parameter(torch.zeros(out_features))
    linear.in_features, linear.out_features = in_features, out_features
    return linear


def _keep_indices(gate: Tensor) -> Tensor:
    """Indices with a non-zero eval gate; at least one (its gate may be 0, which keeps pruning exact)."""
    keep = torch.nonzero(gate, as_tuple=False).flatten()
    if keep.numel() == 0:
        keep = torch.argmax(gate).reshape(1)
    return keep


# ------------------------------------------------------------------------------------------------------------
# Feature extractor
# ------------------------------------------------------------------------------------------------------------
class ConvLayerBlock(nn.Module):
    """Conv1d -> (GroupNorm | LayerNorm | nothing) -> GELU -> channel gate -> fixed channel scale."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        bias: bool,
        norm: str | None,
        prune: bool,
        has_output_scale: bool = False,
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
        self.hard_concrete = HardConcrete(out_channels, init_prob=0.01) if prune else None
        self.output_scale: Tensor | None
        self.register_buffer("output_scale", torch.ones(out_channels) if has_output_scale else None)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(
        self, x: Tensor, lengths: Tensor | None, in_gate: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x: (batch, channel, time) -> (batch, channel', time'), lengths in frames of the output.

        The channel gate of this layer is *not* applied here: the caller samples it (`gate()`) and passes it
        to the next layer as `in_gate`, which scales that conv's input weights instead of the activations.
        conv(W, z * h) == conv(W * z, h) exactly, and scaling a (out, in, kernel) weight is far cheaper than
        a (batch, channel, time) activation at 1.6 kHz frame rates, forward and backward.
        """
        if in_gate is None:
            x = self.conv(x)
        else:
            x = F.conv1d(x, self.conv.weight * in_gate[None, :, None], self.conv.bias, stride=self.stride)
        if self.norm_kind == "group":
            x = self.norm(x)  # type: ignore[misc]
        elif self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # type: ignore[misc]
        x = F.gelu(x)
        if self.output_scale is not None:
            x = x * self.output_scale[None, :, None]
        if lengths is not None:
            lengths = torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1
            lengths = torch.clamp(lengths, min=0)
        return x, lengths

    def gate(self) -> Tensor | None:
        """This layer's channel gate for one forward pass (a sample in training), or None if unmasked."""
        return self.hard_concrete() if self.hard_concrete is not None else None

    def expected_out(self) -> Count:
        if self.hard_concrete is None:
            return float(self.out_channels)
        n = self.hard_concrete.count()
        # in eval, prune_outputs keeps at least one channel (see _keep_indices)
        return n if self.hard_concrete.training else n.clamp(min=1.0)

    def num_macs(self, in_channels: Count, out_frames: int) -> Tensor:
        """Multiply-accumulates over `out_frames` output frames: each costs in x out channels x kernel."""
        return _as_tensor(in_channels, self.conv.weight) * self.expected_out() * (self.kernel * out_frames)

    def num_params(self, in_channels: Count) -> Tensor:
        out = self.expected_out()
        ref = self.conv.weight
        n = _as_tensor(in_channels, ref) * out * self.kernel
        if self.conv.bias is not None:
            n = n + out
        if self.norm is not None:
            n = n + 2 * out
        return _as_tensor(n, ref)

    @torch.no_grad()
    def prune_inputs(self, keep: Tensor, scale: Tensor) -> None:
        """Keep input channels `keep` and fold their gate values `scale` into this conv's weights."""
        w = self.conv.weight.data[:, keep] * scale[None, :, None].to(self.conv.weight.dtype)
        self.conv.weight = nn.Parameter(w.contiguous())
        self.conv.in_channels = int(keep.numel())

    @torch.no_grad()
    def prune_outputs(self) -> tuple[Tensor, Tensor] | None:
        """Remove channels whose eval gate is zero; returns (kept indices, their gate values) or None."""
        if self.hard_concrete is None:
            return None
        self.hard_concrete.eval()
        gate = self.hard_concrete.deterministic()
        keep = _keep_indices(gate)
        self.conv.weight = nn.Parameter(self.conv.weight.data[keep].contiguous())
        if self.conv.bias is not None:
            self.conv.bias = nn.Parameter(self.conv.bias.data[keep].contiguous())
        self.conv.out_channels = int(keep.numel())
        if isinstance(self.norm, nn.GroupNorm):
            n = int(keep.numel())
            new = nn.GroupNorm(n, n, affine=True)
            new.weight.data.copy_(self.norm.weight.data[keep])
            new.bias.data.copy_(self.norm.bias.data[keep])
            new.eps = self.norm.eps
            self.norm = new.to(self.conv.weight.device)
        elif self.norm is not None:  # LayerNorm couples channels: never masked (ModelConfig.with_masks)
            raise RuntimeError("conv channels under a LayerNorm cannot be pruned exactly")
        self.hard_concrete = None
        return keep, gate[keep]

    @torch.no_grad()
    def set_output_scale(self, scale: Tensor) -> None:
        self.register_buffer("output_scale", scale.detach().clone().to(self.conv.weight.dtype))


class FeatureExtractor(nn.Module):
    """Waveform (batch, time) -> features (batch, frame, channel), 20 ms frames for the standard strides."""

    def __init__(self, conv_layers: nn.ModuleList) -> None:
        super().__init__()
        self.conv_layers = conv_layers

    def forward(self, waveforms: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if waveforms.ndim != 2:
            raise ValueError(f"expected waveforms of shape (batch, time), found {tuple(waveforms.shape)}")
        x = waveforms.unsqueeze(1)  # (batch, channel=1, time)
        gate: Tensor | None = None
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths, in_gate=gate)  # (batch, channel, frame)
            gate = layer.gate()
        x = x.transpose(1, 2)  # (batch, frame, channel)
        if gate is not None:  # the last layer's gate has no following conv: apply it to the features
            x = x * gate
        return x, lengths

    def num_params(self) -> tuple[Tensor, Count]:
        total: Tensor | None = None
        in_ch: Count = 1.0
        for layer in self.conv_layers:
            n = layer.num_params(in_ch)
            total = n if total is None else total + n
            in_ch = layer.expected_out()
        assert total is not None
        return total, in_ch

    @torch.no_grad()
    def prune(self) -> tuple[Tensor, Tensor] | None:
        """Prune every conv layer; returns the last layer's (kept, gate values) for the projection."""
        last: tuple[Tensor, Tensor] | None = None
        for i, layer in enumerate(self.conv_layers):
            result = layer.prune_outputs()
            if result is None:
                last = None
                continue
            if i + 1 < len(self.conv_layers):
                self.conv_layers[i + 1].prune_inputs(*result)
            last = result
        return last


class PhantomLayerNorm(nn.LayerNorm):
    """LayerNorm over `normalized_shape` kept features plus `phantom` removed features known to be zero.

    Pruning the last conv layer removes channels that the projection LayerNorm saw as zeros. Counting them
    here keeps the mean and variance as before; `forward` also returns the normalised value of a zero input,
    -mean/std per frame, which is what the removed channels contributed (see FeatureProjection).
    """

    def __init__(self, features: int, phantom: int = 0, eps: float = 1e-5) -> None:
        super().__init__(features, eps=eps)
        self.phantom = phantom

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.normalize(x)[0]

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(..., feature) -> (normalised (..., feature), normalised zero (..., 1) or None if no phantom)."""
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
    """(LayerNorm) -> Linear(channel -> feature). Its output is r[0].

    After the last conv layer is pruned, a removed channel c still reached the projection as
    LayerNorm(0)_c = z0 * w_c + b_c (z0 = -mean/std of the frame). Its bias part is folded into the
    projection bias and its z0 part into `phantom_direction` (feature,), so pruning stays exact.
    """

    def __init__(
        self, in_features: int, out_features: int, layer_norm: bool, phantom: int = 0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.layer_norm = PhantomLayerNorm(in_features, phantom, eps) if layer_norm else None
        self.projection = nn.Linear(in_features, out_features)
        self.phantom_direction: nn.Parameter | None = None
        if layer_norm and phantom > 0:
            self.phantom_direction = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, channel) -> (batch, frame, feature)"""
        if self.layer_norm is None:
            return self.projection(x)
        x, zero = self.layer_norm.normalize(x)
        out = self.projection(x)
        if zero is not None and self.phantom_direction is not None:
            out = out + zero * self.phantom_direction
        return out

    def num_macs(self, in_features: Count, frames: int) -> Tensor:
        return _as_tensor(in_features, self.projection.weight) * (self.projection.out_features * frames)

    def num_params(self, in_features: Count) -> Tensor:
        ref = self.projection.weight
        d = self.projection.out_features
        n = _as_tensor(in_features, ref) * (d + (2 if self.layer_norm is not None else 0)) + d
        if self.phantom_direction is not None:
            n = n + d
        return n

    @torch.no_grad()
    def prune_inputs(self, keep: Tensor, scale: Tensor) -> bool:
        """Keep input channels `keep`. Returns True if the gate values were folded in here (no LayerNorm)."""
        weight = self.projection.weight.data
        w = weight[:, keep]
        if self.layer_norm is None:
            self.projection.weight = nn.Parameter((w * scale[None, :].to(w.dtype)).contiguous())
            self.projection.in_features = int(keep.numel())
            return True
        old = self.layer_norm
        removed = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
        removed[keep] = False
        w_removed = weight[:, removed]
        direction = w_removed @ old.weight.data[removed]
        if self.phantom_direction is not None:
            direction = direction + self.phantom_direction.data
        self.projection.bias.data.add_(w_removed @ old.bias.data[removed])
        self.projection.weight = nn.Parameter(w.contiguous())
        self.projection.in_features = int(keep.numel())
        new = PhantomLayerNorm(int(keep.numel()), old.phantom + int(removed.sum()), old.eps)
        new.weight.data.copy_(old.weight.data[keep])
        new.bias.data.copy_(old.bias.data[keep])
        self.layer_norm = new.to(w.device)
        self.phantom_direction = nn.Parameter(direction.contiguous()) if new.phantom > 0 else None
        return False


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
    """Grouped conv over time added to the features (weight norm folded into a plain weight at import). In
    inference (`spectral_ok`) the conv is computed by overlap-save FFT: the same output, and the one large
    cost that pruning cannot reduce (bench/results/inference_profile.md) several times smaller."""

    def __init__(self, embed_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups)
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
        """(batch, frame, feature) -> (batch, frame, feature)"""
        x = x.transpose(1, 2)
        if spectral_ok(self, self.conv.weight):
            y = self._spectral(x)
        else:
            y = self.conv(x)  # (batch, feature, frame')
            if self.kernel % 2 == 0:
                y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)

    def num_params(self) -> float:
        return float(sum(p.numel() for p in self.parameters()))

    def num_macs(self, frames: int) -> float:
        """A grouped conv: each output element costs (feature / groups) x kernel. An even kernel with
        padding kernel // 2 computes one extra frame that forward() drops."""
        out_frames = frames + (1 if self.kernel % 2 == 0 else 0)
        conv = self.conv
        return float(out_frames * conv.out_channels * (conv.in_channels // conv.groups) * self.kernel)


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
    """Multi-head self-attention with a gate per head (before the output projection) and an optional gate
    on the whole block. WavLM: adds the gated relative position bias as an additive attention mask, so the
    fused scaled-dot-product kernel is used for all three architectures."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        prune_heads: bool,
        prune_layer: bool,
        wavlm: bool = False,
        gate_heads: int = 0,
        head_indices: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = _linear(embed_dim, inner)
        self.k_proj = _linear(embed_dim, inner)
        self.v_proj = _linear(embed_dim, inner)
        self.out_proj = _linear(inner, embed_dim)
        self.hard_concrete = (
            HardConcrete(num_heads, init_prob=0.01) if prune_heads and num_heads > 0 else None
        )
        self.layer_hard_concrete = HardConcrete(1, init_prob=0.01) if prune_layer and num_heads > 0 else None
        self.wavlm = wavlm
        if wavlm:
            self.gate_heads = gate_heads
            self.head_indices = list(range(num_heads)) if head_indices is None else list(head_indices)
            # all original heads in order: no gather (a copy of the activations and the bias) needed
            self._all_heads = self.head_indices == list(range(gate_heads))
            self.gru_rel_pos_linear = nn.Linear(embed_dim // gate_heads, 8)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(self, x: Tensor, key_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        """x: (batch, frame, feature); key_mask: (batch, 1, 1, frame) additive or None;
        position_bias: WavLM's (orig_head, frame, frame) ungated bias or None."""
        batch, frames, _ = x.shape
        if self.num_heads == 0:  # every head pruned: only the output bias remains
            return self.out_proj.bias.expand(batch, frames, self.embed_dim)
        shape = (batch, frames, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (batch, head, frame, head_dim)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        mask = key_mask
        if self.wavlm:
            if position_bias is None:
                raise ValueError("WavLM attention needs the relative position bias")
            idx = self.head_indices
            split = x.view(batch, frames, self.gate_heads, -1).transpose(1, 2)  # (batch, head, frame, d)
            table = position_bias
            if not self._all_heads:
                split, table = split[:, idx], position_bias[idx]
            proj = self.gru_rel_pos_linear(split).view(batch, len(idx), frames, 2, 4).sum(-1)
            gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)  # (batch, head, frame, 1) each
            gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
            bias = gate * table.unsqueeze(0)  # (batch, head, frame, frame)
            mask = bias if key_mask is None else bias + key_mask
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, head, frame, head_dim)
        if self.hard_concrete is not None:
            out = out * self.hard_concrete()[None, :, None, None]
        out = out.transpose(1, 2).reshape(batch, frames, self.num_heads * self.head_dim)
        out = self.out_proj(out)  # (batch, frame, feature)
        if self.layer_hard_concrete is not None:
            out = out * self.layer_hard_concrete()
        return out

    def expected_heads(self) -> Count:
        h: Count = self.hard_concrete.count() if self.hard_concrete is not None else float(self.num_heads)
        if self.layer_hard_concrete is not None:
            h = h * self.layer_hard_concrete.count()
        return h

    def num_macs(self, frames: int) -> Tensor:
        """q, k, v and output projections per frame, Q Kᵀ and the weighted sum of V per pair of frames
        (the T² term, hence MACs depend on the utterance length), and WavLM's gate (a Linear(D / heads, 8)
        on each kept head's slice of every frame)."""
        d, hd = self.embed_dim, self.head_dim
        h = _as_tensor(self.expected_heads(), self.out_proj.weight)
        n = h * (4 * d * hd * frames) + h * (2 * hd * frames * frames)
        if self.wavlm:
            n = n + h * (frames * self.gru_rel_pos_linear.in_features * self.gru_rel_pos_linear.out_features)
        return n

    def num_params(self) -> Tensor:
        ref = self.out_proj.weight
        d, hd = self.embed_dim, self.head_dim
        h = _as_tensor(self.expected_heads(), ref)
        n = (d + 1) * h * hd * 3 + (h * hd + 1) * d
        if self.wavlm:
            n = n + self.gru_rel_pos_linear.weight.numel() + self.gru_rel_pos_linear.bias.numel() + h
        return n

    @torch.no_grad()
    def prune(self) -> None:
        if self.hard_concrete is None and self.layer_hard_concrete is None:
            return
        scale = torch.ones(self.num_heads, device=self.out_proj.weight.device)
        keep = torch.arange(self.num_heads, device=scale.device)
        if self.hard_concrete is not None:
            self.hard_concrete.eval()
            gate = self.hard_concrete.deterministic()
            keep = torch.nonzero(gate, as_tuple=False).flatten()
            scale = gate
        layer_scale = 1.0
        if self.layer_hard_concrete is not None:
            self.layer_hard_concrete.eval()
            layer_scale = float(self.layer_hard_concrete.deterministic()[0])
            if layer_scale == 0.0:  # the whole block is gone: its output (bias included) was zero
                keep = keep[:0]
        rows = (keep[:, None] * self.head_dim + torch.arange(self.head_dim, device=keep.device)).flatten()
        for name in ("q_proj", "k_proj", "v_proj"):
            lin: nn.Linear = getattr(self, name)
            new = _linear(self.embed_dim, int(rows.numel())).to(lin.weight.device)
            new.weight.data.copy_(lin.weight.data[rows])
            new.bias.data.copy_(lin.bias.data[rows])
            setattr(self, name, new)
        col_scale = scale[keep].repeat_interleave(self.head_dim) * layer_scale
        out = _linear(int(rows.numel()), self.embed_dim).to(self.out_proj.weight.device)
        out.weight.data.copy_(self.out_proj.weight.data[:, rows] * col_scale[None, :])
        out.bias.data.copy_(self.out_proj.bias.data * layer_scale)
        self.out_proj = out
        if self.wavlm:
            self.head_indices = [self.head_indices[i] for i in keep.tolist()]
            self._all_heads = self.head_indices == list(range(self.gate_heads))
            self.gru_rel_pos_const = nn.Parameter(self.gru_rel_pos_const.data[:, keep].contiguous())
        self.num_heads = int(keep.numel())
        self.hard_concrete = None
        self.layer_hard_concrete = None


class FeedForward(nn.Module):
    """Linear -> GELU -> unit gate -> Linear, with an optional gate on the whole block."""

    def __init__(self, embed_dim: int, ffn_dim: int, prune_units: bool, prune_layer: bool) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.ffn_dim = ffn_dim
        self.intermediate_dense = _linear(embed_dim, ffn_dim)
        self.output_dense = _linear(ffn_dim, embed_dim)
        self.hard_concrete = HardConcrete(ffn_dim, init_prob=0.5) if prune_units and ffn_dim > 0 else None
        self.layer_hard_concrete = HardConcrete(1, init_prob=0.01) if prune_layer and ffn_dim > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frame, feature) -> (batch, frame, feature)"""
        if self.ffn_dim == 0:
            return self.output_dense.bias.expand(*x.shape[:-1], self.embed_dim)
        h = F.gelu(self.intermediate_dense(x))  # (batch, frame, ffn)
        if self.hard_concrete is not None:
            h = h * self.hard_concrete()
        out = self.output_dense(h)
        if self.layer_hard_concrete is not None:
            out = out * self.layer_hard_concrete()
        return out

    def expected_units(self) -> Count:
        n: Count = self.hard_concrete.count() if self.hard_concrete is not None else float(self.ffn_dim)
        if self.layer_hard_concrete is not None:
            n = n * self.layer_hard_concrete.count()
        return n

    def num_macs(self, frames: int) -> Tensor:
        return _as_tensor(self.expected_units(), self.output_dense.weight) * (2 * self.embed_dim * frames)

    def num_params(self) -> Tensor:
        d = self.embed_dim
        i = _as_tensor(self.expected_units(), self.output_dense.weight)
        return (d + 1) * i + (i + 1) * d

    @torch.no_grad()
    def prune(self) -> None:
        if self.hard_concrete is None and self.layer_hard_concrete is None:
            return
        scale = torch.ones(self.ffn_dim, device=self.output_dense.weight.device)
        keep = torch.arange(self.ffn_dim, device=scale.device)
        if self.hard_concrete is not None:
            self.hard_concrete.eval()
            scale = self.hard_concrete.deterministic()
            keep = torch.nonzero(scale, as_tuple=False).flatten()
        layer_scale = 1.0
        if self.layer_hard_concrete is not None:
            self.layer_hard_concrete.eval()
            layer_scale = float(self.layer_hard_concrete.deterministic()[0])
            if layer_scale == 0.0:
                keep = keep[:0]
        n = int(keep.numel())
        inter = _linear(self.embed_dim, n).to(scale.device)
        inter.weight.data.copy_(self.intermediate_dense.weight.data[keep])
        inter.bias.data.copy_(self.intermediate_dense.bias.data[keep])
        out = _linear(n, self.embed_dim).to(scale.device)
        out.weight.data.copy_(self.output_dense.weight.data[:, keep] * (scale[keep] * layer_scale)[None, :])
        out.bias.data.copy_(self.output_dense.bias.data * layer_scale)
        self.intermediate_dense, self.output_dense = inter, out
        self.ffn_dim = n
        self.hard_concrete = None
        self.layer_hard_concrete = None


class EncoderLayer(nn.Module):
    """Post-LN (Base) or pre-LN (Large, "stable layer norm") transformer layer."""

    def __init__(
        self,
        attention: SelfAttention,
        feed_forward: FeedForward,
        embed_dim: int,
        layer_norm_first: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.feed_forward = feed_forward
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.layer_norm_first = layer_norm_first

    def forward(self, x: Tensor, key_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        """(batch, frame, feature) -> (batch, frame, feature)"""
        if self.layer_norm_first:
            x = x + self.attention(self.layer_norm(x), key_mask, position_bias)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, key_mask, position_bias))
        return self.final_layer_norm(x + self.feed_forward(x))

    def num_params(self) -> Tensor:
        norms = sum(p.numel() for p in self.layer_norm.parameters()) + sum(
            p.numel() for p in self.final_layer_norm.parameters()
        )
        return self.attention.num_params() + self.feed_forward.num_params() + norms


class Transformer(nn.Module):
    """Positional conv + LayerNorm + layers. Returns the output of every layer, r[1..L].

    Pre-LN (Large) models apply `layer_norm` only to the encoder's final output, which is not one of the
    representations: r[L] is the raw output of the last layer, as in transformers' `hidden_states` and
    torchaudio's intermediate outputs. `final_norm()` gives the normalised last output when needed."""

    def __init__(
        self,
        pos_conv: ConvolutionalPositionalEmbedding,
        layers: nn.ModuleList,
        embed_dim: int,
        layer_norm_first: bool,
        eps: float,
        rel_attn_embed: nn.Embedding | None = None,
        num_buckets: int = 320,
        max_distance: int = 800,
    ) -> None:
        super().__init__()
        self.pos_conv = pos_conv
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.layers = layers
        self.layer_norm_first = layer_norm_first
        self.rel_attn_embed = rel_attn_embed
        self.num_buckets = num_buckets
        self.max_distance = max_distance

    def position_bias(self, frames: int, device: torch.device) -> Tensor | None:
        """WavLM: (orig_head, frame, frame) from the bucketed table, shared by all layers before gating."""
        if self.rel_attn_embed is None:
            return None
        buckets = relative_position_buckets(frames, self.num_buckets, self.max_distance, device)
        return self.rel_attn_embed(buckets).permute(2, 0, 1)

    def forward(self, x: Tensor, key_mask: Tensor | None, max_layer: int | None = None) -> list[Tensor]:
        """x: (batch, frame, feature) -> [r1, ..., r_max_layer] each (batch, frame, feature)"""
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        bias = self.position_bias(x.shape[1], x.device)
        outputs: list[Tensor] = []
        last = len(self.layers) if max_layer is None else max_layer
        for layer in self.layers[:last]:
            x = layer(x, key_mask, bias)
            outputs.append(x)
        return outputs

    def final_norm(self, last: Tensor) -> Tensor:
        return self.layer_norm(last) if self.layer_norm_first else last

    def num_params(self) -> Tensor:
        fixed = self.pos_conv.num_params() + sum(p.numel() for p in self.layer_norm.parameters())
        if self.rel_attn_embed is not None:
            fixed += self.rel_attn_embed.weight.numel()
        total = torch.full(
            (), float(fixed), device=self.layer_norm.weight.device
        )  # a fill, not a synchronising copy
        for layer in self.layers:
            n = layer.num_params()
            total = total.to(n.device) + n
        return total
