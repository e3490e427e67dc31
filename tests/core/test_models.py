"""Numerics of our encoder against transformers, mask counting, and exact physical pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.errors import TeacherError
from core.models import build_model, load_huggingface, make_student
from tests.utils.models import randomise_masks, save_tiny_teacher

ARCHS = [(a, large) for a in ("wav2vec2", "hubert", "wavlm") for large in (False, True)]


def _hf_model(directory: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(directory).eval()


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_parity_with_transformers(tmp_path: Path, arch: str, large: bool) -> None:
    directory = save_tiny_teacher(tmp_path / "t", arch, large)
    ours = load_huggingface(directory)
    theirs = _hf_model(directory)
    torch.manual_seed(1)
    waveforms = torch.randn(2, 4000)
    with torch.no_grad():
        reps, _ = ours(waveforms)
        hidden = theirs(waveforms, output_hidden_states=True).hidden_states
    assert len(reps) == len(hidden) == 3
    for i in range(1, len(reps)):
        assert torch.allclose(reps[i], hidden[i], atol=1e-4), (
            arch,
            large,
            i,
            (reps[i] - hidden[i]).abs().max(),
        )
    # we fold the positional conv's weight norm (g, v) into one weight: HF counts g's kernel entries extra
    hf_count = sum(p.numel() for n, p in theirs.named_parameters() if n != "masked_spec_embed")
    assert ours.num_params() == hf_count - ours.config.pos_conv_kernel


@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_parity_with_padding(tmp_path: Path, arch: str) -> None:
    """With an attention mask (lengths) the valid frames match transformers' masked run."""
    directory = save_tiny_teacher(tmp_path / "t", arch, False, feat_extract_norm="layer")
    ours = load_huggingface(directory)
    theirs = _hf_model(directory)
    waveforms = torch.randn(2, 4000)
    lengths = torch.tensor([4000, 2500])
    waveforms[1, 2500:] = 0
    attention = (torch.arange(4000)[None] < lengths[:, None]).long()
    with torch.no_grad():
        reps, frames = ours(waveforms, lengths)
        hidden = theirs(waveforms, attention_mask=attention, output_hidden_states=True).hidden_states
    n = int(frames[1])
    assert n < reps[0].shape[1]
    for i in range(1, len(reps)):
        assert torch.allclose(reps[i][1, :n], hidden[i][1, :n], atol=1e-4)
        assert torch.allclose(reps[i][0], hidden[i][0], atol=1e-4)


def test_r0_is_projection_output_before_positional_conv(tiny_teacher_dir: Path) -> None:
    ours = load_huggingface(tiny_teacher_dir)
    theirs = _hf_model(tiny_teacher_dir)
    x = torch.randn(1, 3000)
    with torch.no_grad():
        reps, _ = ours(x)
        feats = theirs.feature_extractor(x).transpose(1, 2)
        proj = theirs.feature_projection(feats)
        proj = proj[0] if isinstance(proj, tuple) else proj
    assert torch.allclose(reps[0], proj, atol=1e-5)


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_expected_params_with_open_masks_equals_real_count(tmp_path: Path, arch: str, large: bool) -> None:
    teacher = load_huggingface(save_tiny_teacher(tmp_path / "t", arch, large))
    student = make_student(teacher, layers=True)
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.fill_(100.0)
    assert (
        abs(float(student.expected_num_params()) - teacher.num_params()) < 1e-3 * teacher.num_params() / 1e4
    )
    assert student.num_params() == teacher.num_params()


def test_expected_params_is_differentiable(tiny_teacher_dir: Path) -> None:
    student = make_student(load_huggingface(tiny_teacher_dir))
    student.expected_num_params().backward()
    grads = [p.grad for p in student.mask_parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("arch", "large"), ARCHS)
@pytest.mark.parametrize("layers", [False, True])
def test_pruned_model_equals_masked_eval_model(tmp_path: Path, arch: str, large: bool, layers: bool) -> None:
    teacher = load_huggingface(save_tiny_teacher(tmp_path / "t", arch, large))
    student = make_student(teacher, layers=layers)
    randomise_masks(student)
    student.eval()
    x = torch.randn(2, 4000)
    with torch.no_grad():
        before, _ = student(x)
        expected = float(student.expected_num_params())
    config = student.prune()
    assert not student.hard_concretes()
    with torch.no_grad():
        after, _ = student(x)
    for a, b in zip(before, after):
        assert (a - b).abs().max() < 1e-4
    assert student.num_params() < teacher.num_params()
    # the expected count is close to what was kept (rounding of L0 per group is the only difference)
    assert abs(student.num_params() - expected) / teacher.num_params() < 0.1
    # and the pruned architecture rebuilds from its config alone
    rebuilt = build_model(config)
    rebuilt.load_state_dict(student.state_dict(), strict=True)
    with torch.no_grad():
        again, _ = rebuilt.eval()(x)
    assert torch.allclose(again[-1], after[-1])


def test_all_heads_and_units_pruned_keeps_exactness(tiny_wavlm_dir: Path) -> None:
    student = make_student(load_huggingface(tiny_wavlm_dir))
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.fill_(-100.0)
    student.eval()
    x = torch.randn(1, 4000)
    with torch.no_grad():
        before, _ = student(x)
    student.prune()
    assert all(layer.attention.num_heads == 0 for layer in student.encoder.layers)
    with torch.no_grad():
        after, _ = student(x)
    assert (before[-1] - after[-1]).abs().max() < 1e-4


def test_bad_teachers_fail_with_clear_messages(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    with pytest.raises(TeacherError, match="does not exist"):
        load_huggingface(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TeacherError, match="weights.bin is a file, not a directory"):
        load_huggingface(tmp_path / "weights.bin")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TeacherError, match="unsupported architecture"):
        load_huggingface(bad)
    (bad / "config.json").write_text((tiny_teacher_dir / "config.json").read_text())
    with pytest.raises(TeacherError, match="no model.safetensors"):
        load_huggingface(bad)
    data = (tiny_teacher_dir / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherError, match="cannot be read"):
        load_huggingface(bad)
    # a config that disagrees with the weights
    cfg = json.loads((tiny_teacher_dir / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes(data)
    with pytest.raises(TeacherError, match="shape of"):
        load_huggingface(bad)


def test_pickle_that_needs_more_than_weights_is_refused(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    import pickle

    d = tmp_path / "pkl"
    d.mkdir()
    (d / "config.json").write_text((tiny_teacher_dir / "config.json").read_text())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(TeacherError, match="refused"):
        load_huggingface(d)


def test_pytorch_bin_teacher_loads(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from safetensors.torch import load_file

    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tiny_teacher_dir / "config.json").read_text())
    torch.save(load_file(str(tiny_teacher_dir / "model.safetensors")), d / "pytorch_model.bin")
    a = load_huggingface(d)
    b = load_huggingface(tiny_teacher_dir)
    x = torch.randn(1, 3000)
    with torch.no_grad():
        assert torch.equal(a(x)[0][-1], b(x)[0][-1])


def test_bad_waveform_shape_names_shapes(tiny_teacher_dir: Path) -> None:
    model = load_huggingface(tiny_teacher_dir)
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.randn(1, 1, 3000))
