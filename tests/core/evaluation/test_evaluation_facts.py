"""Model facts: MAC counts against hand counts, real-time factor, CKA between cluster means."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.evaluation.facts import MacCounter, cluster_cka, count_macs, count_parameters, real_time_factor
from core.evaluation.features import FeatureSet
from tests.utils.evaluation import make_tiny_model


class ConvLinear(nn.Module):
    """A representation model whose MACs are easy to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, kernel_size=400, stride=320)
        self.grouped = nn.Conv1d(8, 8, kernel_size=3, padding=1, groups=4)
        self.linear = nn.Linear(8, 12)
        self.config = {"sample_rate": 16000}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.grouped(self.conv(waveforms[:, None, :]))  # (batch, channel, frame)
        out = self.linear(x.transpose(1, 2))  # (batch, frame, feature)
        return [out], torch.div(lengths - 400, 320, rounding_mode="floor") + 1


def test_macs_match_a_hand_count() -> None:
    model = ConvLinear()
    frames = (16000 - 400) // 320 + 1  # 49
    conv = frames * 8 * 1 * 400
    grouped = frames * 8 * (8 // 4) * 3
    linear = frames * 8 * 12
    report = count_macs(model, seconds=1.0)
    assert report.by_kind == {"conv": conv + grouped, "matmul": linear}
    assert report.macs_per_second == conv + grouped + linear
    assert count_macs(model, seconds=2.0).macs_per_second == pytest.approx(
        ((32000 - 400) // 320 + 1) / 2 * (8 * 400 + 8 * 2 * 3 + 8 * 12), abs=1
    )


@pytest.mark.parametrize(("lk", "dv"), [(50, 16), (40, 8)])
def test_fused_and_explicit_attention_count_the_same(lk: int, dv: int) -> None:
    """Whether torch runs the fused kernel (equal head dims) or decomposes it, the count is Q Kᵀ plus A V."""
    q = torch.randn(2, 3, 50, 16)
    k = torch.randn(2, 3, lk, 16)
    v = torch.randn(2, 3, lk, dv)
    with MacCounter() as fused:
        nn.functional.scaled_dot_product_attention(q, k, v)
    with MacCounter() as explicit:
        torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    assert fused.total == explicit.total == 2 * 3 * 50 * lk * (16 + dv)


def test_the_fused_cpu_kernel_is_recognised() -> None:
    q = torch.randn(1, 2, 64, 16)
    with MacCounter() as counter:
        nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.by_kind == {"attention": 2 * 64 * 64 * 32}


def test_hf_attention_implementations_agree() -> None:
    eager = count_macs(make_tiny_model(attn_implementation="eager"))
    sdpa = count_macs(make_tiny_model(attn_implementation="sdpa"))
    assert eager.macs_per_second == sdpa.macs_per_second > 0


def test_parameters_and_real_time_factor() -> None:
    model = ConvLinear()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.train()
    report = real_time_factor(model, seconds=1.0, runs=3, warmup=1)
    assert report.rtf > 0 and len(report.times_s) == 3 and report.device == "cpu"
    assert report.threads == torch.get_num_threads()
    assert model.training  # the mode is restored


def _features(name: str, stacks: dict[str, torch.Tensor]) -> FeatureSet:
    first = next(iter(stacks.values()))
    return FeatureSet(name, {k: v.half() for k, v in stacks.items()}, first.shape[0], first.shape[2])


def test_cluster_cka_compares_cluster_means() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = {f"u{i}": torch.randn(4, 30, 8, generator=generator) for i in range(5)}
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    # The student's cluster means are rotations of the teacher's (layer by layer, so means rotate too),
    # plus an extra frame the teacher lacks on one utterance (trimmed).
    student = {k: 2.0 * v @ rotation for k, v in teacher.items()}
    student["u0"] = torch.cat([student["u0"], torch.randn(4, 1, 8, generator=generator)], dim=1)
    t, s = _features("t", teacher), _features("s", student)
    values = cluster_cka(t, s, [[0, 1], [2], [3]], list(teacher))
    assert values == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    noise = _features(
        "n", {k: torch.randn(4, v.shape[1], 8, generator=generator) for k, v in teacher.items()}
    )
    assert cluster_cka(t, noise, [[0, 1, 2, 3]], list(teacher))[0] < 0.3
    with pytest.raises(ValueError, match="representations the models lack"):
        cluster_cka(t, s, [[4]], list(teacher))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_speed_and_fused_attention_counts() -> None:
    model = make_tiny_model()
    report = real_time_factor(model, device="cuda", seconds=2.0, runs=3)
    assert report.device == "cuda" and report.rtf > 0
    assert next(model.parameters()).device.type == "cpu"  # moved back
    q = torch.randn(1, 2, 64, 16, device="cuda", dtype=torch.float16)
    with MacCounter() as counter:
        nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.total == 2 * 64 * 64 * 32
