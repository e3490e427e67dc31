"""CUDA checks of the engine (run by bench/gpu_check.sh): bf16 autocast against fp32, WavLM's additive
relative-position bias through scaled_dot_product_attention, and a few real stage-1 steps without NaN.

The whole module is skipped where CUDA is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.distill.targets import ClusterTargets
from core.distill.train import StageContext, train_stage
from core.models import ConvConfig, LayerConfig, ModelConfig, SpeechEncoder, build_model, make_student
from core.spec import TrainRecipe

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

DEVICE = torch.device("cuda")
KERNELS = (10, 3, 3, 3, 3, 2, 2)
STRIDES = (5, 2, 2, 2, 2, 2, 2)


def small_config(arch: str) -> ModelConfig:
    """4 layers, 128 wide, 4 heads of 32, FFN 256, 64-channel standard conv stack."""
    conv = [ConvConfig(64, k, s) for k, s in zip(KERNELS, STRIDES, strict=True)]
    return ModelConfig(
        architecture=arch,
        conv=conv,
        layers=[LayerConfig(4, 256) for _ in range(4)],  # type: ignore[arg-type]
        hidden_size=128,
        head_dim=32,
        pos_conv_kernel=16,
        pos_conv_groups=4,
    )


def small_teacher(arch: str, seed: int = 0) -> SpeechEncoder:
    torch.manual_seed(seed)
    return build_model(small_config(arch)).to(DEVICE).eval()


def waveforms(batch: int = 2, samples: int = 16_000, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(batch, samples, generator=generator)).to(DEVICE)  # (batch, time)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_student_forward_bf16_autocast_matches_fp32(arch: str) -> None:
    student = make_student(small_teacher(arch)).eval()  # eval: deterministic masks, same in both passes
    x = waveforms()
    with torch.no_grad():
        ref, _ = student(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low, _ = student(x)
    assert len(low) == len(ref) == 5
    for i, (a, b) in enumerate(zip(low, ref, strict=True)):
        assert torch.isfinite(a).all(), f"r[{i}] not finite under bf16"
        assert relative_error(a, b) < 0.05, f"r[{i}]: relative error {relative_error(a, b):.3g}"


def _wavlm_forward_backward(lengths: torch.Tensor) -> tuple[list[torch.Tensor], SpeechEncoder]:
    student = make_student(small_teacher("wavlm")).train()
    x = waveforms(samples=int(lengths.max()))
    x = x * (torch.arange(x.shape[1], device=DEVICE)[None, :] < lengths[:, None])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reps, frames = student(x, lengths)
    assert frames is not None
    loss = sum(r.float().pow(2).mean() for r in reps[1:])
    loss.backward()  # type: ignore[union-attr]
    return reps, student


@pytest.mark.gpu
def test_wavlm_sdpa_with_additive_position_bias_and_padding_runs() -> None:
    lengths = torch.tensor([16_000, 11_000], device=DEVICE)  # padding: key mask + bias summed
    reps, student = _wavlm_forward_backward(lengths)
    assert all(torch.isfinite(r).all() for r in reps)
    table = student.encoder.rel_attn_embed
    assert table is not None and table.weight.grad is not None
    assert torch.isfinite(table.weight.grad).all() and table.weight.grad.abs().sum() > 0
    gate = student.encoder.layers[0].attention.gru_rel_pos_linear.weight.grad
    assert gate is not None and torch.isfinite(gate).all()


@pytest.mark.gpu
def test_wavlm_bias_runs_in_a_fused_sdpa_kernel() -> None:
    """The additive bias must not force the unfused math path (DPHuBERT-speed WavLM depends on it)."""
    lengths = torch.tensor([16_000, 16_000], device=DEVICE)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        reps, _ = _wavlm_forward_backward(lengths)
    assert all(torch.isfinite(r).all() for r in reps)


class _Batches:
    """The few methods train_stage uses of TrainBatches: an endless stream of one fixed batch."""

    def __init__(self, batch: int, samples: int) -> None:
        from core.data import Batch

        generator = torch.Generator().manual_seed(1)
        self.batch = Batch(
            waveforms=0.1 * torch.randn(batch, samples, generator=generator),
            lengths=torch.full((batch,), samples, dtype=torch.int64),
            ids=["x"] * batch,
        )

    consumed = 0

    def seek(self, consumed: int) -> None:
        pass

    def serve(self, index: int):  # noqa: ANN201
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_stage1_steps_on_cuda_stay_finite(arch: str, tmp_path: Path) -> None:
    teacher = small_teacher(arch)
    student = make_student(teacher)
    targets = ClusterTargets([[0], [1, 2], [3, 4]], teacher.config.hidden_size).to(DEVICE)
    recipe = TrainRecipe(
        steps=6,
        warmup_steps=2,
        lr=5e-4,
        lr_masks=0.5,
        lr_lambda=0.1,
        sparsity_warmup_steps=3,
        batch_seconds=4.0,
        min_utterance_s=1.0,
        max_utterance_s=3.0,
        grad_clip=10.0,
        checkpoint_every=100,
    )
    ctx = StageContext(
        tmp_path, recipe, DEVICE, "distill_prune", target_sparsity=0.75, teacher_params=teacher.num_params()
    )
    summary = train_stage(student, teacher, targets, _Batches(4, 16_000), ctx)  # type: ignore[arg-type]
    assert summary["steps"] == 6
    final = summary["final"]
    for key in ("loss", "distill", "grad_norm", "sparsity", "lambda1", "lambda2"):
        assert math.isfinite(final[key]), (key, final[key])
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert all(torch.isfinite(p).all() for p in targets.parameters())
    assert next(student.parameters()).device.type == DEVICE.type


@pytest.mark.gpu
def test_loader_pins_batches_and_compiled_steps_run(tmp_path: Path) -> None:
    """Pinned batches from a worker process, and a few compiled stage-1 steps (no eager fallback)."""
    from core.data.loader import BatchLoader

    stream = _Batches(2, 16_000)
    loader = BatchLoader(stream, workers=1, pin_memory=True)  # type: ignore[arg-type]
    batch = next(iter(loader))
    loader.close()
    assert batch.waveforms.is_pinned()

    teacher = small_teacher("wavlm")
    student = make_student(teacher)
    targets = ClusterTargets([[0], [1, 2], [3, 4]], teacher.config.hidden_size).to(DEVICE)
    recipe = TrainRecipe(
        steps=3,
        warmup_steps=1,
        lr=2e-4,
        lr_masks=0.02,
        lr_lambda=0.02,
        sparsity_warmup_steps=2,
        batch_seconds=2.0,
        min_utterance_s=0.5,
        max_utterance_s=2.0,
        grad_clip=10.0,
        checkpoint_every=100,
    )
    events = []
    ctx = StageContext(
        tmp_path,
        recipe,
        DEVICE,
        "distill_prune",
        target_sparsity=0.75,
        teacher_params=teacher.num_params(),
        on_event=events.append,
        compile=True,
    )
    summary = train_stage(student, teacher, targets, _Batches(4, 16_000), ctx)  # type: ignore[arg-type]
    assert not [e for e in events if e.kind == "log" and "torch.compile failed" in (e.message or "")]
    assert math.isfinite(summary["final"]["loss"])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_training_step_never_synchronises_with_the_host(arch: str) -> None:
    """Issue #5: the step (sparsity terms included) queues work without waiting for the GPU; torch raises on
    any synchronising call while the debug mode is "error"."""
    from core.distill.train import DistillStep

    teacher = small_teacher(arch)
    student = make_student(teacher)
    targets = ClusterTargets([[0], [1, 2], [3, 4]], teacher.config.hidden_size).to(DEVICE)
    recipe = TrainRecipe(
        steps=10,
        warmup_steps=2,
        lr=2e-4,
        lr_masks=0.02,
        lr_lambda=0.02,
        sparsity_warmup_steps=5,
        batch_seconds=2.0,
        min_utterance_s=0.5,
        max_utterance_s=2.0,
        grad_clip=10.0,
        checkpoint_every=100,
    )
    step = DistillStep(
        student, teacher, targets, recipe, DEVICE, target_sparsity=0.75, teacher_params=teacher.num_params()
    )
    waveforms = 0.1 * torch.randn(2, 16_000, device=DEVICE)
    step(0, waveforms)  # first step: one-off allocations and lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            values, _, _ = step(i, waveforms)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(float(values["loss"]))
