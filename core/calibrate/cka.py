"""Linear CKA between teacher representations (algorithm.md §1.2).

SKILL groups the teacher's layers by how alike they are; "alike" is linear Centered Kernel Alignment
(Kornblith et al. 2019), with each (non-padded) frame one example:

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)      X, Y column-centred (frames, feature)

Three ways to get it, all in float64 because the numerator and denominator are sums of squares over
hundreds of thousands of frames and float32 loses the digits that separate similar layers:

- `linear_cka` / `linear_cka_gram`: one-shot pure functions, the feature-space and the Gram-space form.
  They are algebraically equal; a test checks one against the other.
- `StreamingCKA`: the exact value over a whole calibration set in one pass with memory independent of
  its size (the engine's default).
- `MinibatchCKA`: the minibatch unbiased-HSIC estimator of Nguyen et al. (2021), a cheaper approximation
  offered as an option.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

Array = np.ndarray | torch.Tensor

__all__ = [
    "center_columns",
    "center_gram",
    "linear_cka",
    "linear_cka_gram",
    "cka_matrix",
    "unbiased_hsic",
    "minibatch_cka",
    "StreamingCKA",
    "MinibatchCKA",
]


# ----------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------


def _to_float64(x: Array, name: str) -> np.ndarray:
    """(frame, feature) numpy or torch -> (frame, feature) float64 numpy; rejects other ranks."""
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (frame, feature) array, found shape {tuple(array.shape)}")
    return array


def _check_same_frames(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same frames: found {x.shape[0]} frames in x and {y.shape[0]} in y"
        )


def center_columns(x: Array) -> np.ndarray:
    """Subtract each feature's mean over frames.

    Args:
        x: (frame, feature).
    Returns:
        (frame, feature) float64 with zero column means. CKA is only invariant to a constant offset of a
        representation once it is centred, and a transformer's hidden states carry large offsets.
    """
    array = _to_float64(x, "x")
    return array - array.mean(axis=0, keepdims=True)


def center_gram(gram: Array) -> np.ndarray:
    """Double-centre a Gram matrix: H K H with H = I - 11ᵀ/n.

    Args:
        gram: (frame, frame).
    Returns:
        (frame, frame) float64; equal to the Gram of the column-centred features.
    """
    k = _to_float64(gram, "gram")
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"gram: expected a square (frame, frame) matrix, found shape {k.shape}")
    k = k - k.mean(axis=0, keepdims=True)
    return k - k.mean(axis=1, keepdims=True)


def linear_cka(x: Array, y: Array) -> float:
    """Linear CKA in feature space: ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F).

    Cost is O(frame · feature²), so this is the form to use on real data (frames ≫ features).
    Inputs are centred here (centring is idempotent, so already-centred input is fine).

    Args:
        x: (frame, feature_x), numpy or torch.
        y: (frame, feature_y), the same frames.
    Returns:
        CKA in [0, 1]; NaN when either representation is constant over frames (0/0, undefined).
    """
    xc, yc = center_columns(x), center_columns(y)
    _check_same_frames(xc, yc)
    cross = np.linalg.norm(yc.T @ xc) ** 2  # (feature_y, feature_x)
    denominator = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    return float(cross / denominator) if denominator > 0 else math.nan


def linear_cka_gram(x: Array, y: Array) -> float:
    """Linear CKA in Gram space: tr(K_c L_c) / (||K_c||_F ||L_c||_F), K = X Xᵀ, L = Y Yᵀ.

    O(frame²) memory: kept as an independent formulation to check `linear_cka` on small data.

    Args:
        x: (frame, feature_x).
        y: (frame, feature_y), the same frames.
    Returns:
        CKA in [0, 1]; NaN when either representation is constant over frames.
    """
    xa, ya = _to_float64(x, "x"), _to_float64(y, "y")
    _check_same_frames(xa, ya)
    k, l_ = center_gram(xa @ xa.T), center_gram(ya @ ya.T)  # (frame, frame) each
    denominator = np.linalg.norm(k) * np.linalg.norm(l_)
    # tr(K L) = sum(K ∘ L) for symmetric K, L, without forming the product.
    return float(np.sum(k * l_) / denominator) if denominator > 0 else math.nan


def cka_matrix(reps: Sequence[Array]) -> np.ndarray:
    """Linear CKA between every pair of representations of the same frames.

    Args:
        reps: R arrays (frame, feature_i).
    Returns:
        (R, R) float64, symmetric. One-shot reference for `StreamingCKA`.
    """
    r = len(reps)
    out = np.ones((r, r), dtype=np.float64)
    for i in range(r):
        for j in range(i + 1, r):
            out[i, j] = out[j, i] = linear_cka(reps[i], reps[j])
    return out


def unbiased_hsic(k: Array, l_: Array) -> float:
    """Unbiased HSIC estimator (Song et al. 2012), as used for minibatch CKA by Nguyen et al. (2021).

        HSIC₁(K, L) = [tr(K̃ L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃ L̃ 1] / (n (n-3))

    with K̃, L̃ the Gram matrices with their diagonals set to zero. Its expectation does not depend on the
    batch size, so averaging it over minibatches converges to the population value, which averaging the
    biased (plug-in) HSIC does not.

    Args:
        k: (n, n) Gram matrix (uncentred; the estimator centres implicitly).
        l_: (n, n) Gram matrix of the same n examples.
    Returns:
        The estimate (can be slightly negative for independent representations).
    """
    ka, la = _to_float64(k, "k"), _to_float64(l_, "l_")
    if ka.shape != la.shape or ka.shape[0] != ka.shape[1]:
        raise ValueError(f"k and l_ must be square and the same shape, found {ka.shape} and {la.shape}")
    n = ka.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 examples, found {n}")
    ka, la = ka.copy(), la.copy()
    np.fill_diagonal(ka, 0.0)
    np.fill_diagonal(la, 0.0)
    trace = np.sum(ka * la)  # tr(K̃ L̃), both symmetric
    sums = ka.sum() * la.sum() / ((n - 1) * (n - 2))
    rows = 2.0 / (n - 2) * float(ka.sum(axis=0) @ la.sum(axis=1))
    return float((trace + sums - rows) / (n * (n - 3)))


def minibatch_cka(batches: Iterable[tuple[Array, Array]]) -> float:
    """Minibatch linear CKA (Nguyen et al. 2021): Σ_b HSIC₁(K_b, L_b) / sqrt(Σ_b HSIC₁(K_b, K_b) Σ_b
    HSIC₁(L_b, L_b)).

    Args:
        batches: pairs (x_b, y_b), each (frame_b, feature), frame_b >= 4, the same frames in x_b and y_b.
    Returns:
        The estimate; close to `linear_cka` on the concatenated frames when batches are large.
    """
    kl = kk = ll = 0.0
    for x, y in batches:
        xa, ya = _to_float64(x, "x"), _to_float64(y, "y")
        _check_same_frames(xa, ya)
        k, l_ = xa @ xa.T, ya @ ya.T
        kl += unbiased_hsic(k, l_)
        kk += unbiased_hsic(k, k)
        ll += unbiased_hsic(l_, l_)
    denominator = math.sqrt(kk * ll) if kk > 0 and ll > 0 else 0.0
    return kl / denominator if denominator > 0 else math.nan


# ----------------------------------------------------------------------------------------------------------
# Accumulators over batches of padded teacher outputs
# ----------------------------------------------------------------------------------------------------------


def _normalise_dims(num_reps: int, dim: int | Sequence[int]) -> list[int]:
    dims = [int(dim)] * num_reps if isinstance(dim, int) else [int(d) for d in dim]
    if num_reps < 1:
        raise ValueError(f"num_reps must be >= 1, found {num_reps}")
    if len(dims) != num_reps:
        raise ValueError(f"expected {num_reps} feature sizes, found {len(dims)}: {dims}")
    if any(d < 1 for d in dims):
        raise ValueError(f"feature sizes must be >= 1, found {dims}")
    return dims


def _valid_frames(
    reps: Sequence[torch.Tensor], frame_lengths: torch.Tensor | None, dims: Sequence[int]
) -> torch.Tensor:
    """Check a batch and return its non-padded frames with all representations side by side.

    Args:
        reps: R tensors (batch, frame, feature_i).
        frame_lengths: (batch,) valid frames per utterance, or None when nothing is padded.
    Returns:
        (valid_frame, sum_i feature_i), on the inputs' device and in their dtype.
    """
    if len(reps) != len(dims):
        raise ValueError(f"expected {len(dims)} representations, found {len(reps)}")
    if reps[0].dim() != 3:
        raise ValueError(f"reps[0]: expected shape (batch, frame, feature), found {tuple(reps[0].shape)}")
    batch, frame = int(reps[0].shape[0]), int(reps[0].shape[1])
    for i, (rep, d) in enumerate(zip(reps, dims, strict=True)):
        if rep.shape != (batch, frame, d):
            raise ValueError(
                f"reps[{i}]: expected shape (batch={batch}, frame={frame}, feature={d}), "
                f"found {tuple(rep.shape)}"
            )
    features = torch.cat(list(reps), dim=-1)  # (batch, frame, sum feature)
    if frame_lengths is None:
        return features.reshape(-1, features.shape[-1])  # (batch * frame, sum feature)
    if frame_lengths.shape != (batch,):
        raise ValueError(f"frame_lengths: expected shape ({batch},), found {tuple(frame_lengths.shape)}")
    lengths = frame_lengths.to(features.device)
    if bool((lengths < 0).any()) or bool((lengths > frame).any()):
        raise ValueError(f"frame_lengths must lie in [0, {frame}], found {lengths.tolist()}")
    valid = torch.arange(frame, device=features.device)[None, :] < lengths[:, None]  # (batch, frame)
    return features[valid]  # (valid_frame, sum feature)


class StreamingCKA:
    """Exact linear CKA between R representations over any number of batches, in one pass.

    Centred cross-products are recoverable from raw ones: Σ (x - x̄)(y - ȳ)ᵀ = Σ x yᵀ - (Σx)(Σy)ᵀ / n.
    So we keep, in float64, the frame count n, the feature sums s and the Gram S = Fᵀ F of the
    representations concatenated along features (F: (frames, Σ D_i)); one matmul per batch fills every
    pair's block at once. Memory is O((Σ D_i)²) (≈ 0.8 GB for 13 × 768) whatever the calibration size.

    To keep the subtraction above well-conditioned when features carry large offsets, every frame is first
    shifted by a fixed reference (the mean of the first batch); covariances do not change under a shift.

    Accumulators live on `device`: a float64 matmul of this size is seconds on a GPU, minutes on a CPU.
    """

    def __init__(self, num_reps: int, dim: int | Sequence[int], device: torch.device | str = "cpu") -> None:
        """Args:
        num_reps: R, e.g. L + 1 for a teacher with L layers.
        dim: the feature size D shared by all representations, or R sizes.
        device: where the float64 accumulators live.
        """
        self.dims = _normalise_dims(num_reps, dim)
        self.device = torch.device(device)
        total = sum(self.dims)
        self.offsets = np.concatenate([[0], np.cumsum(self.dims)]).tolist()
        self.count = 0
        self.shift = torch.zeros(total, dtype=torch.float64, device=self.device)  # (Σ D_i,)
        self.sum = torch.zeros(total, dtype=torch.float64, device=self.device)  # (Σ D_i,)
        self.gram = torch.zeros(total, total, dtype=torch.float64, device=self.device)  # (Σ D_i, Σ D_i)

    @property
    def num_reps(self) -> int:
        return len(self.dims)

    @torch.no_grad()
    def update(self, reps: Sequence[torch.Tensor], frame_lengths: torch.Tensor | None = None) -> None:
        """Add one batch.

        Args:
            reps: R tensors (batch, frame, feature_i), e.g. the teacher's r[0..L].
            frame_lengths: (batch,) number of valid frames per utterance; frames at index >= length are
                padding and are excluded. None: every frame is valid.
        """
        frames = _valid_frames(reps, frame_lengths, self.dims)  # (valid_frame, Σ D_i)
        if frames.shape[0] == 0:
            return
        frames = frames.to(device=self.device, dtype=torch.float64)
        if self.count == 0:
            self.shift = frames.mean(dim=0)
        frames = frames - self.shift  # (valid_frame, Σ D_i)
        self.count += frames.shape[0]
        self.sum += frames.sum(dim=0)
        self.gram.addmm_(frames.T, frames)

    def merge(self, other: StreamingCKA) -> None:
        """Add another accumulator's frames to this one (e.g. after gathering from other processes).

        The other's statistics are re-expressed around this one's shift: with d = a - b,
        Σ(x-b)(x-b)ᵀ = Σ(x-a)(x-a)ᵀ + s_a dᵀ + d s_aᵀ + n d dᵀ and Σ(x-b) = s_a + n d.
        """
        if other.dims != self.dims:
            raise ValueError(f"cannot merge: feature sizes differ ({self.dims} vs {other.dims})")
        if other.count == 0:
            return
        shift = other.shift.to(self.device)
        s = other.sum.to(self.device)
        gram = other.gram.to(self.device)
        if self.count == 0:
            self.shift, self.sum, self.gram, self.count = shift.clone(), s.clone(), gram.clone(), other.count
            return
        d = shift - self.shift
        n = other.count
        self.gram += gram + torch.outer(s, d) + torch.outer(d, s) + n * torch.outer(d, d)
        self.sum += s + n * d
        self.count += n

    def compute(self) -> np.ndarray:
        """Centre and normalise.

        Returns:
            (R, R) float64 CKA matrix, symmetric, ones on the diagonal. An entry involving a representation
            that is constant over all frames is NaN (0/0).
        """
        if self.count == 0:
            raise ValueError("StreamingCKA.compute: no frames were accumulated")
        r, o, n = self.num_reps, self.offsets, self.count
        # Work block by block so no second (Σ D_i)² matrix is ever allocated.
        squared = torch.zeros(r, r, dtype=torch.float64)
        for i in range(r):
            for j in range(i, r):
                block = self.gram[o[i] : o[i + 1], o[j] : o[j + 1]]  # (D_i, D_j)
                centred = block - torch.outer(self.sum[o[i] : o[i + 1]], self.sum[o[j] : o[j + 1]]) / n
                squared[i, j] = squared[j, i] = centred.square().sum().cpu()
        norms = squared.diagonal().sqrt()  # ||C_ii||_F
        denominator = torch.outer(norms, norms)
        cka = torch.where(denominator > 0, squared / denominator, torch.full_like(squared, math.nan))
        # The diagonal is 1 by definition; writing it avoids reporting 0.9999999999 for a layer vs itself.
        diagonal = torch.where(norms > 0, torch.ones_like(norms), torch.full_like(norms, math.nan))
        cka[range(r), range(r)] = diagonal
        return cka.numpy()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume accumulation (tensors on CPU, so it loads on any machine)."""
        return {
            "dims": list(self.dims),
            "count": self.count,
            "shift": self.shift.cpu(),
            "sum": self.sum.cpu(),
            "gram": self.gram.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; refuses a state for other feature sizes."""
        dims = [int(d) for d in state["dims"]]
        if dims != self.dims:
            raise ValueError(f"state is for feature sizes {dims}, this accumulator has {self.dims}")
        total = sum(dims)
        for key, shape in (("shift", (total,)), ("sum", (total,)), ("gram", (total, total))):
            if tuple(state[key].shape) != shape:
                raise ValueError(f"state[{key!r}]: expected shape {shape}, found {tuple(state[key].shape)}")
        self.count = int(state["count"])
        self.shift = state["shift"].to(device=self.device, dtype=torch.float64).clone()
        self.sum = state["sum"].to(device=self.device, dtype=torch.float64).clone()
        self.gram = state["gram"].to(device=self.device, dtype=torch.float64).clone()


class MinibatchCKA:
    """Minibatch CKA from unbiased HSIC (Nguyen et al. 2021) between R representations.

    Per batch, the valid frames are subsampled to at most `max_frames` (the Gram matrices are
    frames × frames), the unbiased HSIC of every pair is added to a running (R, R) sum, and
    CKA_ij = H_ij / sqrt(H_ii H_jj) at the end. Memory is O(R · max_frames²), independent of D; the
    result is an estimate, unlike `StreamingCKA`. Batches with fewer than 4 valid frames are skipped
    (the estimator is undefined there) and counted in `skipped`.
    """

    def __init__(
        self,
        num_reps: int,
        max_frames: int = 2048,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_reps < 1:
            raise ValueError(f"num_reps must be >= 1, found {num_reps}")
        if max_frames < 4:
            raise ValueError(f"max_frames must be >= 4 (unbiased HSIC needs 4 examples), found {max_frames}")
        self.num_reps = num_reps
        self.max_frames = max_frames
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: its state is portable
        self.hsic = torch.zeros(num_reps, num_reps, dtype=torch.float64)
        self.batches = 0
        self.skipped = 0

    @torch.no_grad()
    def update(self, reps: Sequence[torch.Tensor], frame_lengths: torch.Tensor | None = None) -> None:
        """Add one batch.

        Args:
            reps: R tensors (batch, frame, feature_i).
            frame_lengths: (batch,) valid frames per utterance, or None when nothing is padded.
        """
        dims = [int(rep.shape[-1]) for rep in reps] if len(reps) == self.num_reps else [0] * self.num_reps
        frames = _valid_frames(reps, frame_lengths, dims)  # (valid_frame, Σ D_i)
        m = frames.shape[0]
        if m < 4:
            self.skipped += 1
            return
        if m > self.max_frames:
            keep = torch.randperm(m, generator=self.generator)[: self.max_frames]
            frames = frames[keep.to(frames.device)]
            m = self.max_frames
        frames = frames.to(device=self.device, dtype=torch.float64)
        grams = torch.stack([part @ part.T for part in torch.split(frames, dims, dim=1)])  # (R, m, m)
        grams[:, range(m), range(m)] = 0.0  # K̃: zero diagonals
        flat = grams.reshape(self.num_reps, -1)  # (R, m * m)
        trace = flat @ flat.T  # (R, R): tr(K̃_i K̃_j)
        rows = grams.sum(dim=2)  # (R, m): K̃_i 1
        totals = rows.sum(dim=1)  # (R,): 1ᵀ K̃_i 1
        hsic = (
            trace + torch.outer(totals, totals) / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * (rows @ rows.T)
        ) / (m * (m - 3))
        self.hsic += hsic.cpu()
        self.batches += 1

    def merge(self, other: MinibatchCKA) -> None:
        """Add another accumulator's batches (the estimator is a sum over batches)."""
        if other.num_reps != self.num_reps:
            raise ValueError(f"cannot merge: {other.num_reps} representations vs {self.num_reps}")
        self.hsic += other.hsic
        self.batches += other.batches
        self.skipped += other.skipped

    def compute(self) -> np.ndarray:
        """Returns: (R, R) float64 CKA estimate, symmetric, ones on the diagonal (NaN for a constant rep)."""
        if self.batches == 0:
            raise ValueError("MinibatchCKA.compute: no batch with at least 4 valid frames was accumulated")
        diagonal = self.hsic.diagonal().clamp(min=0.0).sqrt()
        denominator = torch.outer(diagonal, diagonal)
        cka = torch.where(denominator > 0, self.hsic / denominator, torch.full_like(self.hsic, math.nan))
        ones = torch.where(diagonal > 0, torch.ones_like(diagonal), torch.full_like(diagonal, math.nan))
        cka[range(self.num_reps), range(self.num_reps)] = ones
        return cka.numpy()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, the subsampling RNG included so a resumed run draws the same
        frames."""
        return {
            "num_reps": self.num_reps,
            "max_frames": self.max_frames,
            "hsic": self.hsic.clone(),
            "batches": self.batches,
            "skipped": self.skipped,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; refuses a state for another number of representations."""
        if int(state["num_reps"]) != self.num_reps:
            raise ValueError(f"state is for {state['num_reps']} representations, this has {self.num_reps}")
        self.max_frames = int(state["max_frames"])
        self.hsic = state["hsic"].to(torch.float64).clone()
        self.batches = int(state["batches"])
        self.skipped = int(state["skipped"])
        self.generator.set_state(state["generator"])
