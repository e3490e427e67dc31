"""Linear CKA: the pure formulas against each other and the accumulators against the pure formulas."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from core.calibrate.cka import (
    MinibatchCKA,
    StreamingCKA,
    cka_matrix,
    linear_cka,
    linear_cka_gram,
    minibatch_cka,
    unbiased_hsic,
)


def _pair(seed: int, frames: int = 40, dx: int = 6, dy: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations: y is a noisy linear map of x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(frames, dx))
    y = x @ rng.normal(size=(dx, dy)) + 0.5 * rng.normal(size=(frames, dy))
    return x, y


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# ---------------------------------------------------------------- pure functions


def test_hand_computed_value() -> None:
    # Xc = [-1, 0, 1], Yc = [2/3, -1/3, -1/3]: (Ycᵀ Xc)² = 1, Xcᵀ Xc = 2, Ycᵀ Yc = 2/3 -> 1 / (4/3).
    x = np.array([[1.0], [2.0], [3.0]])
    y = np.array([[1.0], [0.0], [0.0]])
    assert linear_cka(x, y) == pytest.approx(0.75, abs=1e-12)
    assert linear_cka_gram(x, y) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_self_similarity_is_one(seed: int) -> None:
    x, _ = _pair(seed)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(torch.from_numpy(x).float(), torch.from_numpy(x).float()) == pytest.approx(
        1.0, abs=1e-12
    )
    assert linear_cka_gram(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariant_to_rotation_scaling_and_offset(seed: int) -> None:
    x, y = _pair(seed)
    reference = linear_cka(x, y)
    assert reference < 0.99  # otherwise invariance would be trivial
    transformed = 7.5 * x @ _orthogonal(x.shape[1], seed + 100) + 3.0
    assert linear_cka(transformed, y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, -0.01 * y @ _orthogonal(y.shape[1], seed + 200)) == pytest.approx(
        reference, abs=1e-12
    )


def test_not_invariant_to_anisotropic_scaling() -> None:
    # The invariances above are specific: stretching one axis does change CKA.
    x, y = _pair(3)
    stretched = x * np.array([10.0, 1, 1, 1, 1, 1])
    assert abs(linear_cka(stretched, y) - linear_cka(x, y)) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_feature_form_equals_gram_form(seed: int) -> None:
    x, y = _pair(seed, frames=25, dx=9, dy=3)
    y = y + 2.0  # uncentred input: each form must centre on its own
    assert linear_cka(x, y) == pytest.approx(linear_cka_gram(x, y), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_symmetric(seed: int) -> None:
    x, y = _pair(seed)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-14)
    assert linear_cka_gram(x, y) == pytest.approx(linear_cka_gram(y, x), abs=1e-14)


def test_constant_representation_is_nan_and_bad_shapes_raise() -> None:
    x, _ = _pair(0)
    assert math.isnan(linear_cka(x, np.ones((x.shape[0], 3))))
    with pytest.raises(ValueError, match="same frames"):
        linear_cka(x, x[:-1])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[None], x[None])


# ---------------------------------------------------------------- streaming


def _padded_batches(
    seed: int, dims: list[int], num_batches: int = 4, offset: float = 0.0
) -> tuple[list[tuple[list[torch.Tensor], torch.Tensor]], list[np.ndarray]]:
    """Batches of R related representations with NaN in every padded frame (which must never be read),
    and the concatenation of their valid frames per representation."""
    rng = np.random.default_rng(seed)
    mixing = [rng.normal(size=(6, d)) for d in dims]
    batches, valid = [], [[] for _ in dims]
    for _ in range(num_batches):
        batch, frame = int(rng.integers(1, 4)), int(rng.integers(3, 9))
        lengths = rng.integers(0, frame + 1, size=batch)
        lengths[0] = frame  # at least one full utterance per batch
        latent = rng.normal(size=(batch, frame, 6))
        reps = []
        for i, m in enumerate(mixing):
            rep = latent @ m + rng.normal(size=(batch, frame, m.shape[1])) * (0.3 + 0.2 * i) + offset
            for b, n in enumerate(lengths):
                valid[i].append(rep[b, :n])
                rep[b, n:] = np.nan
            reps.append(torch.from_numpy(rep).float())
        batches.append((reps, torch.from_numpy(lengths)))
    # The float32 tensors are what the accumulator sees; compare against exactly those values.
    concatenated = [np.concatenate(v).astype(np.float32).astype(np.float64) for v in valid]
    return batches, concatenated


@pytest.mark.parametrize(("dims", "offset"), [([5, 5, 5, 5], 0.0), ([3, 7, 4], 0.0), ([5, 5, 5], 1000.0)])
def test_streaming_equals_one_shot_on_unpadded_frames(dims: list[int], offset: float) -> None:
    batches, frames = _padded_batches(0, dims, offset=offset)
    streaming = StreamingCKA(len(dims), dims if len(set(dims)) > 1 else dims[0])
    for reps, lengths in batches:
        streaming.update(reps, lengths)
    result = streaming.compute()
    expected = cka_matrix(frames)
    assert streaming.count == frames[0].shape[0]
    np.testing.assert_allclose(result, expected, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(result, result.T)
    assert (result.diagonal() == 1.0).all()


def test_streaming_without_lengths_uses_every_frame() -> None:
    rng = np.random.default_rng(4)
    reps = [torch.from_numpy(rng.normal(size=(2, 5, 3))) for _ in range(3)]
    streaming = StreamingCKA(3, 3)
    streaming.update(reps, None)
    flat = [r.reshape(-1, 3).numpy() for r in reps]
    np.testing.assert_allclose(streaming.compute(), cka_matrix(flat), atol=1e-12)


def test_streaming_rejects_bad_batches() -> None:
    streaming = StreamingCKA(2, 4)
    good = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="expected 2 representations"):
        streaming.update([good], None)
    with pytest.raises(ValueError, match=r"reps\[1\]: expected shape \(batch=2, frame=5, feature=4\)"):
        streaming.update([good, torch.zeros(2, 5, 3)], None)
    with pytest.raises(ValueError, match="frame_lengths"):
        streaming.update([good, good], torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="no frames"):
        streaming.compute()


def test_streaming_state_dict_round_trip() -> None:
    dims = [4, 4, 4]
    batches, frames = _padded_batches(1, dims, num_batches=6, offset=5.0)
    first = StreamingCKA(3, 4)
    for reps, lengths in batches[:3]:
        first.update(reps, lengths)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = StreamingCKA(3, 4)
    resumed.load_state_dict(torch.load(buffer))
    for reps, lengths in batches[3:]:
        resumed.update(reps, lengths)
    np.testing.assert_allclose(resumed.compute(), cka_matrix(frames), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="feature sizes"):
        StreamingCKA(3, 5).load_state_dict(first.state_dict())


def test_streaming_merge_of_halves_equals_whole() -> None:
    dims = [4, 6, 4]
    batches, frames = _padded_batches(2, dims, num_batches=6, offset=50.0)
    whole, left, right, empty = (StreamingCKA(3, dims) for _ in range(4))
    for index, (reps, lengths) in enumerate(batches):
        whole.update(reps, lengths)
        (left if index < 3 else right).update(reps, lengths)
    left.merge(right)  # different shifts: the merge must re-centre
    empty.merge(left)
    assert left.count == whole.count == empty.count
    np.testing.assert_allclose(left.compute(), whole.compute(), atol=1e-10, rtol=0)
    np.testing.assert_allclose(empty.compute(), cka_matrix(frames), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="cannot merge"):
        left.merge(StreamingCKA(2, 4))


# ---------------------------------------------------------------- minibatch (unbiased HSIC)


def test_unbiased_hsic_matches_u_statistic_definition() -> None:
    # HSIC₁ = 1/(n)₄ Σ over distinct (i, j, q, r) of K_ij L_ij + K_ij L_qr - 2 K_ij L_iq (Song et al. 2012).
    x, y = _pair(5, frames=7)
    k, l_ = x @ x.T, y @ y.T
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
    expected = total / (n * (n - 1) * (n - 2) * (n - 3))
    assert unbiased_hsic(k, l_) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="at least 4"):
        unbiased_hsic(k[:3, :3], l_[:3, :3])


def test_minibatch_accumulator_equals_pure_function() -> None:
    dims = [4, 4, 4]
    batches, _ = _padded_batches(6, dims, num_batches=5)
    accumulator = MinibatchCKA(3, max_frames=10_000)  # no subsampling
    pairs: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {(0, 1): [], (0, 2): [], (1, 2): []}
    for reps, lengths in batches:
        accumulator.update(reps, lengths)
        valid = torch.arange(reps[0].shape[1])[None] < lengths[:, None]
        frames = [r[valid].double().numpy() for r in reps]
        if frames[0].shape[0] >= 4:
            for i, j in pairs:
                pairs[(i, j)].append((frames[i], frames[j]))
    result = accumulator.compute()
    assert np.isfinite(result).all()  # padded NaN frames were never read
    for (i, j), batch_pairs in pairs.items():
        assert result[i, j] == pytest.approx(minibatch_cka(batch_pairs), abs=1e-10)
        assert result[j, i] == pytest.approx(result[i, j], abs=1e-12)


def test_minibatch_close_to_exact_on_large_sample() -> None:
    rng = np.random.default_rng(7)
    num_reps, dim = 5, 8
    mixing = [rng.normal(size=(6, dim)) for _ in range(num_reps)]
    exact, estimate = StreamingCKA(num_reps, dim), MinibatchCKA(num_reps, max_frames=512, seed=0)
    for _ in range(8):
        latent = rng.normal(size=(4, 300, 6))
        reps = [
            torch.from_numpy(latent @ m + rng.normal(size=(4, 300, dim)) * (0.5 + i))
            for i, m in enumerate(mixing)
        ]
        lengths = torch.tensor([300, 250, 200, 280])
        exact.update(reps, lengths)
        estimate.update(reps, lengths)  # 1030 valid frames, subsampled to 512
    truth, approx = exact.compute(), estimate.compute()
    assert truth.min() < 0.6  # a spread of values, so agreement is not trivial
    np.testing.assert_allclose(approx, truth, atol=0.05)


def test_minibatch_state_dict_resumes_same_draws() -> None:
    batches, _ = _padded_batches(8, [4, 4], num_batches=4)
    straight, first = MinibatchCKA(2, max_frames=5, seed=3), MinibatchCKA(2, max_frames=5, seed=3)
    for reps, lengths in batches:
        straight.update(reps, lengths)
    for reps, lengths in batches[:2]:
        first.update(reps, lengths)
    resumed = MinibatchCKA(2, max_frames=5, seed=99)
    resumed.load_state_dict(first.state_dict())
    for reps, lengths in batches[2:]:
        resumed.update(reps, lengths)
    np.testing.assert_array_equal(resumed.compute(), straight.compute())


def test_minibatch_subsample_draws_across_the_batch() -> None:
    # Frames are utterance-major after removing padding; a draw of the first `max_frames` would see only
    # the first utterance. Here that utterance is constant in rep 1, so such a draw gives NaN.
    rng = np.random.default_rng(9)
    reps = [torch.from_numpy(rng.normal(size=(4, 50, 3))) for _ in range(2)]
    reps[1][0] = 1.0
    lengths = torch.tensor([50, 50, 40, 30])
    estimates = []
    for seed in (0, 1):
        accumulator = MinibatchCKA(2, max_frames=50, seed=seed)
        accumulator.update(reps, lengths)
        estimates.append(accumulator.compute()[0, 1])
    assert np.isfinite(estimates).all()
    assert estimates[0] != estimates[1]  # the seed decides which frames are drawn
