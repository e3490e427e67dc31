"""The s3prl upstream of a student export (`s3prl_upstream.py`) against s3prl 0.4.18's own code: the
Featurizer its SUPERB runner builds, S3PRLUpstream and Featurizer of `s3prl.nn`, and the runner itself
(`run_downstream.py`, downstream `example`, through the file's launcher). s3prl is installed without its
dependencies (.ci/run); where it imports torchaudio, the stub of tests/utils/s3prl_stubs stands in (what
it stubs is written there). Outside CI the tests skip when s3prl is missing; in CI (CI=true) that fails."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from core.export.hf import save_hf_export
from core.export.s3prl_template import UPSTREAM_FILE
from core.models import load_huggingface
from tests.utils.models import pruned_student, save_tiny_teacher
from tests.utils.paths import REPO
from tests.utils.s3prl_stubs import torchaudio_stub

# The standard wav2vec 2.0 conv stack (320 samples per frame, 50 Hz) at 16 channels; 2 layers, 32 wide.
CONV = {"conv_dim": (16,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}
LAYOUTS = {"hubert-base": ("hubert", False), "wavlm-large": ("wavlm", True)}
TOL = 1e-5

if importlib.util.find_spec("s3prl") is None:
    reason = "s3prl is not installed: python3 -m pip install --no-deps s3prl==0.4.18 omegaconf tensorboardX"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the s3prl tests must run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _export(directory: Path, arch: str, large: bool) -> Path:
    """A tiny pruned student as the product exports it, with the upstream file beside its model files."""
    teacher = save_tiny_teacher(directory / "teacher", arch, large, **CONV)
    (teacher / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                    "feature_size": 1, "padding_side": "right", "padding_value": 0.0,
                    "return_attention_mask": True, "sampling_rate": 16000})
    )  # fmt: skip
    student = pruned_student(load_huggingface(teacher), seed=1)
    heads = [lc.num_heads for lc in student.config.layers]
    assert len(set(heads)) > 1, heads  # the case s3prl's hf_* upstreams refuse: layers differ in head count
    export = save_hf_export(student, directory / "student")
    # the file every hf export is to carry; save_hf_export writes it once core/export/hf.py copies it
    assert (export / UPSTREAM_FILE.name).read_bytes() == UPSTREAM_FILE.read_bytes()  # every export carries it
    return export


@pytest.fixture(scope="module", params=list(LAYOUTS))
def export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch, large = LAYOUTS[request.param]
    return _export(tmp_path_factory.mktemp(request.param), arch, large)


def _upstream_module(export: Path) -> ModuleType:
    """The export's own copy of the file, loaded by path as the launcher runs it."""
    spec = importlib.util.spec_from_file_location(
        f"s3prl_upstream_{export.parent.name}", export / UPSTREAM_FILE.name
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _upstream(export: Path, entry: str = "skillkd_local") -> Any:
    """Built as s3prl's runner builds an upstream (downstream/runner.py, Runner._get_upstream)."""
    build = _upstream_module(export).ENTRIES[entry]
    return build(ckpt=str(export), model_config=None, refresh=False).eval()


def _config(export: Path) -> dict[str, Any]:
    return json.loads((export / "config.json").read_text())


def _frames(config: dict[str, Any], samples: int) -> int:
    """Valid frames for `samples` samples: the conv stack's arithmetic."""
    for kernel, stride in zip(config["conv_kernel"], config["conv_stride"], strict=True):
        samples = (samples - kernel) // stride + 1
    return samples


def _waves(seed: int = 0, lengths: tuple[int, ...] = (16000, 10080)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.1 + 0.01 for n in lengths]


def test_featurizer_of_the_superb_runner(export: Path) -> None:
    """s3prl.upstream.interfaces.Featurizer, with the arguments downstream/runner.py gives it."""
    from s3prl.upstream.interfaces import Featurizer

    upstream = _upstream(export)
    assert callable(upstream.get_downsample_rates)  # the runner's required interface
    config = _config(export)
    featurizer = Featurizer(
        upstream=upstream,
        feature_selection="hidden_states",
        layer_selection=None,
        upstream_device="cpu",
        normalize=False,
    )
    num_layers = len(config["layer_num_heads"])
    assert featurizer.layer_num == num_layers + 1
    assert featurizer.output_dim == config["hidden_size"] == 32
    assert featurizer.downsample_rate == math.prod(config["conv_stride"]) == 320
    waves = _waves()
    with torch.no_grad():
        features = upstream(waves)
    assert len(features["hidden_states"]) == num_layers + 1
    assert all(h.shape == (2, _frames(config, 16000), 32) for h in features["hidden_states"])
    assert features["last_hidden_state"].shape == (2, 49, 32)
    per_utterance = featurizer(waves, features)  # weighted sum of the L+1 layers, trimmed per utterance
    assert [tuple(f.shape) for f in per_utterance] == [(49, 32), (32, 32)]  # round(16000/320)=50 -> 49 exist
    sum(f.sum() for f in per_utterance).backward()
    assert featurizer.weights.grad is not None and featurizer.weights.grad.shape == (num_layers + 1,)


def test_s3prl_upstream_and_featurizer_of_s3prl_nn(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s3prl.nn.S3PRLUpstream (by hub entry name and path) and s3prl.nn.Featurizer."""
    module = _upstream_module(export)
    with torchaudio_stub():
        from s3prl import hub
        from s3prl.nn import Featurizer, S3PRLUpstream

    monkeypatch.setattr(hub, "skillkd_local", module.skillkd_local, raising=False)  # what the launcher does
    upstream = S3PRLUpstream("skillkd_local", path_or_url=str(export)).eval()
    num_layers = len(_config(export)["layer_num_heads"])
    assert upstream.num_layers == num_layers + 1
    assert upstream.hidden_sizes == [32] * (num_layers + 1)
    assert upstream.downsample_rates == [320] * (num_layers + 1)
    waves = _waves()
    wavs = torch.zeros(2, 16000)
    wavs[0], wavs[1, :10080] = waves
    wavs_len = torch.tensor([16000, 10080])
    with torch.no_grad():
        all_hs, all_lens = upstream(wavs, wavs_len)
    assert len(all_hs) == len(all_lens) == num_layers + 1
    assert all(h.shape == (2, 50, 32) for h in all_hs)  # s3prl pads to ceil(16000/320) = 50 frames
    assert all(lens.tolist() == [50, 32] for lens in all_lens)  # (samples - 1) // 320 + 1
    featurizer = Featurizer(upstream)
    hs, hs_len = featurizer(all_hs, all_lens)
    assert featurizer.output_size == 32 and featurizer.downsample_rate == 320
    assert hs.shape == (2, 50, 32) and hs_len.tolist() == [50, 32]


def test_same_features_as_the_feature_extractor_and_automodel(export: Path) -> None:
    """The upstream's normalisation and padding are those of the export's Wav2Vec2FeatureExtractor and
    AutoModel: the same hidden states on a padded batch."""
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    waves = _waves(1)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(export)
    assert extractor.do_normalize
    model = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
    inputs = extractor([w.numpy() for w in waves], sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True)
        got = _upstream(export)(waves)
    for i, (a, b) in enumerate(zip(got["hidden_states"], expected.hidden_states, strict=True)):
        assert (a - b).abs().max() < TOL, (i, (a - b).abs().max())
    assert (got["last_hidden_state"] - expected.last_hidden_state).abs().max() < TOL


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_padded_batch_and_utterances_alone(tmp_path: Path, layout: str) -> None:
    """`skillkd_local`: on valid frames a padded batch gives each utterance's features alone, exactly in the
    Large layout (LayerNorm in the conv stack). In the Base layout the first conv layer's GroupNorm
    normalises over the whole padded length, so a padded utterance differs from itself alone, as with
    s3prl's own HuBERT / wav2vec 2.0 Base upstreams; the longest utterance of a batch, which has no padding,
    does not. `skillkd_local_per_utterance`: exact in both layouts, zeros past each utterance's frames."""
    export = _export(tmp_path, *LAYOUTS[layout])
    config = _config(export)
    upstream, per_utterance = _upstream(export), _upstream(export, "skillkd_local_per_utterance")
    waves = _waves(2, (16000, 10080, 4000))
    with torch.no_grad():
        batch = upstream(waves)["hidden_states"]
        exact = per_utterance(waves)
        alone = [upstream([w])["hidden_states"] for w in waves]
    assert [tuple(h.shape) for h in exact["hidden_states"]] == [tuple(h.shape) for h in batch]
    worst, worst_exact = [], []
    for row, wave in enumerate(waves):
        n = _frames(config, len(wave))
        assert alone[row][0].shape[1] == n
        pairs = list(zip(batch, exact["hidden_states"], alone[row], strict=True))
        worst.append(max(float((b[row, :n] - a[0]).abs().max()) for b, _, a in pairs))
        worst_exact.append(max(float((e[row, :n] - a[0]).abs().max()) for _, e, a in pairs))
        assert all(not e[row, n:].any() for _, e, _ in pairs)
    assert worst[0] < TOL, worst  # unpadded
    assert max(worst_exact) < TOL, worst_exact
    if layout == "wavlm-large":
        assert max(worst) < TOL, worst
    else:
        assert min(worst[1:]) > 1e-3, worst  # GroupNorm over padding: see the docstring and docs/superb.md


def test_refusals(export: Path, tmp_path: Path) -> None:
    module = _upstream_module(export)
    with pytest.raises(ValueError, match="-g"):
        module.skillkd_local(ckpt=str(export), model_config="model.yaml", refresh=False)
    with pytest.raises(ValueError, match="no config.json"):
        module.skillkd_local(ckpt=str(tmp_path), model_config=None, refresh=False)
    with pytest.raises(ValueError, match=r"expected waveform 0 of shape \(time,\), found \(1, 16000\)"):
        _upstream(export)([torch.zeros(1, 16000)])


CONFIG = """\
runner:
  total_steps: 2
  gradient_clipping: 1
  gradient_accumulate_steps: 1
  log_step: 1
  eval_step: 2
  save_step: 2
  max_keep: 1
  eval_dataloaders: [dev]
  evaluate_ratio: 0.02
optimizer: {name: AdamW, lr: 1.0e-4}
downstream_expert:
  datarc: {num_workers: 0, train_batch_size: 2, eval_batch_size: 2}
  modelrc: {input_dim: 16}
"""


def _run_downstream(args: list[str]) -> str:
    """s3prl's run_downstream.py through the export's launcher, under the torchaudio stub, in a subprocess."""
    command = [sys.executable, "-m", "tests.utils.s3prl_stubs", *args, "--device", "cpu"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_superb_runner_trains_and_evaluates_a_student_by_path(tmp_path: Path) -> None:
    """`run_downstream.py -m train` (2 steps and a dev evaluation) then `-m evaluate -e` of s3prl's downstream
    `example` (random audio and labels: no torchaudio, no dataset), the upstream frozen as in SUPERB."""
    export = _export(tmp_path, "hubert", False)
    (tmp_path / "config.yaml").write_text(CONFIG)
    launcher = str(export / UPSTREAM_FILE.name)
    exp = tmp_path / "exp"
    log = _run_downstream(
        [launcher, "-m", "train", "-u", "skillkd_local", "-k", str(export), "-d", "example",
         "-c", str(tmp_path / "config.yaml"), "-p", str(exp)]
    )  # fmt: skip
    assert "Take a list of 3 features and weighted sum them" in log
    assert "The selected feature hidden_states's downsample rate is 320" in log
    states = torch.load(exp / "states-2.ckpt", map_location="cpu", weights_only=False)
    assert states["Step"] == 2 and states["Args"].upstream == "skillkd_local"
    assert "Upstream" not in states  # frozen: not trained, not saved
    assert states["Featurizer"]["weights"].shape == (3,)
    # s3prl 0.4.18 reads its checkpoint back with torch.load's defaults (weights-only since torch 2.6); the
    # launcher allows the argparse.Namespace inside it
    log = _run_downstream([launcher, "-m", "evaluate", "-e", str(exp / "states-2.ckpt"), "-t", "dev"])
    assert "Loading Featurizer weights from the previous experiment" in log
    assert "Loading Downstream weights from the previous experiment" in log
    assert np.isfinite(states["Featurizer"]["weights"].numpy()).all()
