"""Hard Concrete gates (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0
Regularization", https://arxiv.org/abs/1712.01312), as used for structured pruning by DPHuBERT
(Peng et al. 2023, https://arxiv.org/abs/2305.17651).

A gate vector z in [0, 1]^n multiplies n prunable units (conv channels, heads, FFN units). In training it is a
reparameterised sample, so gradients reach `log_alpha`; the expected number of non-zero gates (the L0 norm) is
differentiable and is what the sparsity constraint acts on. In eval it is deterministic: the round(L0)
largest gates are kept with a soft value and the rest are exactly zero, which is what the physical pruning
removes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HardConcrete(nn.Module):
    """n Hard Concrete gates with temperature `beta` and stretch interval (`l`, `r`).

    Args:
        n: number of gates.
        init_prob: initial probability of a gate being *dropped*; log_alpha starts at log((1-p)/p) + N(0,
        0.01). beta, l, r: the distribution's temperature and stretch (paper values 2/3, -0.1, 1.1).
    """

    def __init__(
        self,
        n: int,
        init_prob: float = 0.01,
        beta: float = 2.0 / 3.0,
        l: float = -0.1,  # noqa: E741
        r: float = 1.1,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if n <= 0:
            raise ValueError(f"HardConcrete needs at least one gate, got n={n}")
        self.n = n
        self.beta = beta
        self.l = l
        self.r = r
        self.eps = eps
        self.log_alpha = nn.Parameter(torch.empty(n))
        self.init_prob = init_prob
        # Exact landing (core/finalize/landing.py) may overrule which units the eval gate keeps: a bool (n,)
        # or None.
        self.keep_override: Tensor | None = None
        # ... and may ask what one unit more or less costs: a leaf tensor that `count()` returns instead.
        self.count_override: Tensor | None = None
        self.reset_parameters()
        # log(-l/r): the shift that turns log_alpha into the log-odds of a non-zero gate.
        self._bias = -beta * math.log(-l / r)

    def reset_parameters(self) -> None:
        mean = math.log(1.0 - self.init_prob) - math.log(self.init_prob)
        nn.init.normal_(self.log_alpha, mean, 1e-2)

    def extra_repr(self) -> str:
        return f"n={self.n}, beta={self.beta:.3f}, l={self.l}, r={self.r}"

    def l0_norm(self) -> Tensor:
        """Expected number of non-zero gates (differentiable), a 0-dim tensor."""
        return torch.sigmoid(self.log_alpha + self._bias).sum()

    def count(self) -> Tensor:
        """Units kept, a 0-dim tensor: the expected L0 norm in training (differentiable), the exact number of
        non-zero deterministic gates in eval (what `prune()` keeps)."""
        if self.count_override is not None:
            return self.count_override
        if self.training:
            return self.l0_norm()
        return (self.deterministic() != 0).sum().to(self.log_alpha.dtype)

    def forward(self) -> Tensor:
        """A gate vector (n,): a fresh sample in training mode, the deterministic gate in eval mode."""
        if self.training:
            u = torch.empty_like(self.log_alpha).uniform_(self.eps, 1.0 - self.eps)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
            return torch.clamp(s * (self.r - self.l) + self.l, 0.0, 1.0)
        return self.deterministic()

    @torch.no_grad()
    def deterministic(self) -> Tensor:
        """Keep the round(L0) largest gates with value sigmoid(log_alpha / beta * 0.8); zero the rest.
        With `keep_override` set, keep exactly the units it marks (same soft values)."""
        soft = torch.sigmoid(self.log_alpha / self.beta * 0.8)
        if self.keep_override is not None:
            return soft * self.keep_override.to(soft.dtype)
        keep = int(round(float(self.l0_norm())))
        gate = torch.zeros_like(soft)
        if keep > 0:
            idx = torch.topk(soft, k=min(keep, self.n)).indices
            gate[idx] = soft[idx]
        return gate
