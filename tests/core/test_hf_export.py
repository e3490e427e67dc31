"""The Hugging Face export: parity with load_student and with transformers, padding, round trips, and a
fresh environment without skillkd."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from core.export.hf import hidden_states_from_reps, is_hf_export_dir, save_hf_export
from core.models import load_huggingface, load_model, load_student, make_student
from tests.utils.models import pruned_student, save_tiny_teacher
from tests.utils.venv import fresh_python, run_fresh

ARCHS = [(a, large) for a in ("wav2vec2", "hubert", "wavlm") for large in (False, True)]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _teacher(tmp_path: Path, arch: str, large: bool, normalize: bool = True) -> Path:
    directory = save_tiny_teacher(tmp_path / f"t-{arch}-{large}", arch, large)
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": normalize,
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "feature_size": 1,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": True,
                "sampling_rate": 16000,
            }
        )
    )
    return directory


def _waves(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(4000).astype(np.float32), rng.standard_normal(2500).astype(np.float32)]


def _hf_outputs(directory: Path, waves: list[np.ndarray]):
    """What a transformers user runs: the export's feature extractor, then AutoModel."""
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True), inputs["attention_mask"]


def _ours(student, waves: list[np.ndarray]):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        reps, frames = student(batch, lengths)
        hidden = hidden_states_from_reps(student, reps)
        last = student.encoder.final_norm(reps[-1])
    return hidden, last, frames


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_pruned_student_export_matches_load_student_with_padding(
    tmp_path: Path, arch: str, large: bool
) -> None:
    student = pruned_student(load_huggingface(_teacher(tmp_path, arch, large)))
    directory = save_hf_export(student, tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "skillkd" and set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCTC",
        "AutoModelForAudioClassification",
        "AutoModelForAudioXVector",
        "AutoModelForAudioFrameClassification",
    }
    assert config["layer_num_heads"] == [lc.num_heads for lc in student.config.layers]
    reloaded = load_student(directory)  # our loader reads the hf export too
    assert reloaded.config == student.config
    waves = _waves()
    out, mask = _hf_outputs(directory, waves)
    hidden, last, frames = _ours(reloaded, waves)
    assert int(frames[1]) < out.last_hidden_state.shape[1]  # the second utterance really is padded
    assert len(out.hidden_states) == student.num_layers + 1

    # the padded utterance is compared on its frames: its padding frames are masked out of everything, and the
    # layer norms of those near-constant frames magnify rounding (the positional conv's FFT) past TOL
    def valid(x: torch.Tensor) -> list[torch.Tensor]:
        return [x[b, : int(n)] for b, n in enumerate(frames)]

    for i, (theirs, ours) in enumerate(zip(out.hidden_states, hidden, strict=True)):
        for b, (t_b, o_b) in enumerate(zip(valid(theirs), valid(ours))):
            assert (t_b - o_b).abs().max() < TOL, (i, b, (t_b - o_b).abs().max())
    for t_b, o_b in zip(valid(out.last_hidden_state), valid(last)):
        assert (t_b - o_b).abs().max() < TOL
    # r0 (ours, before the positional conv) is not hidden_states[0]: the mapping matters
    with torch.no_grad():
        r0 = reloaded(torch.zeros(1, 4000) + torch.from_numpy(waves[0]), None)[0][0]
    assert (r0 - hidden[0][:1]).abs().max() > 1e-2


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_unpruned_export_matches_transformers_own_model(tmp_path: Path, arch: str, large: bool) -> None:
    from transformers import AutoModel

    teacher_dir = _teacher(tmp_path, arch, large, normalize=False)
    directory = save_hf_export(load_huggingface(teacher_dir), tmp_path / "hf")
    original = AutoModel.from_pretrained(teacher_dir).eval()
    waves = _waves(1)
    out, mask = _hf_outputs(directory, waves)
    with torch.no_grad():
        ref = original(
            torch.from_numpy(np.stack([waves[0], np.pad(waves[1], (0, 1500))])),
            attention_mask=mask,
            output_hidden_states=True,
        )
    frames = load_huggingface(teacher_dir).frame_lengths(mask.sum(-1))
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for row, n in enumerate(frames.tolist()):
        for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
            assert (a[row, :n] - b[row, :n]).abs().max() < TOL, (
                arch,
                large,
                i,
                (a[row, :n] - b[row, :n]).abs().max(),
            )
        assert (out.last_hidden_state[row, :n] - ref.last_hidden_state[row, :n]).abs().max() < TOL
    if large:  # transformers 5: hidden_states[L] is the last layer's raw output, last_hidden_state is normed
        assert (out.last_hidden_state - out.hidden_states[-1]).abs().max() > 1e-2


def test_save_pretrained_round_trip_and_recompression(tmp_path: Path) -> None:
    from transformers import AutoModel

    student = pruned_student(load_huggingface(_teacher(tmp_path, "wavlm", False)))
    directory = save_hf_export(student, tmp_path / "hf")
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    model.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again", trust_remote_code=True).eval()
    x = torch.randn(2, 3000)
    with torch.no_grad():
        a = model(x, output_hidden_states=True).hidden_states
        b = again(x, output_hidden_states=True).hidden_states
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert again.config.layer_head_indices == [lc.head_indices for lc in student.config.layers]
    # re-compression: the export loads as a teacher and takes masks again
    teacher = load_model(directory)
    assert teacher.num_params() == student.num_params()
    masked = make_student(teacher)
    with torch.no_grad():
        reps, _ = masked.eval()(x)
    assert len(reps) == student.num_layers + 1


def test_cli_export_hf_and_inspect(tmp_path: Path) -> None:
    from cli import skillkd as cli
    from core.export.student import save_student

    student = pruned_student(load_huggingface(_teacher(tmp_path, "hubert", True)))
    ours = save_student(student, tmp_path / "student")
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(ours), "--format", "hf", "--out", str(tmp_path / "hf"), "--json"])
    assert res.exit_code == 0, res.output
    assert is_hf_export_dir(tmp_path / "hf")
    assert set(json.loads(res.stdout)["hf"]["files"]) >= {
        "config.json",
        "configuration_skillkd.py",
        "modeling_skillkd.py",
        "model.safetensors",
        "preprocessor_config.json",
    }
    res = runner.invoke(cli, ["inspect", str(tmp_path / "hf"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["kind"] == "student" and info["num_params"] == student.num_params()
    # a non-empty directory that is not an export is never overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = runner.invoke(cli, ["export", str(ours), "--format", "hf", "--out", str(tmp_path / "mine")])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (tmp_path / "mine" / "notes.txt").exists()
    res = runner.invoke(cli, ["export", str(ours), "--format", "hf"])
    assert res.exit_code == 2 and "--out" in res.output


FRESH_SCRIPT = textwrap.dedent("""
    import sys
    try:
        import core  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("skillkd is importable here: the test would prove nothing")
    import numpy as np
    import torch
    from transformers import AutoModel, Wav2Vec2FeatureExtractor
    directory = sys.argv[1]
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    waves = [np.load(sys.argv[2]), np.load(sys.argv[3])]
    inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    np.save(sys.argv[4], torch.stack(out.hidden_states).numpy())
    ours = ("core", "skillkd", "api", "worker")
    print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ours))
""")


def test_export_loads_in_a_fresh_environment_without_skillkd(tmp_path: Path) -> None:
    """A venv with torch and transformers (the system site-packages as a plain path, so skillkd's editable
    finder is not run) and a cwd outside the repository: the export must load and match."""
    student = pruned_student(load_huggingface(_teacher(tmp_path, "wavlm", True)))
    directory = save_hf_export(student, tmp_path / "hf")
    python = fresh_python(tmp_path)
    waves = _waves(2)
    for i, w in enumerate(waves):
        np.save(tmp_path / f"w{i}.npy", w)
    args = [str(directory), *(str(tmp_path / f"w{i}.npy") for i in range(2)), str(tmp_path / "out.npy")]
    res = run_fresh(python, FRESH_SCRIPT, args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "modules: []" in res.stdout
    theirs = np.load(tmp_path / "out.npy")
    hidden, _, _ = _ours(student, waves)
    assert np.abs(theirs - torch.stack(hidden).numpy()).max() < TOL
