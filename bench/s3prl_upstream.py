"""A student's s3prl upstream on real speech, through the Featurizer that s3prl's SUPERB runner builds.

    python -m bench.s3prl_upstream runs/x/student-hf ../shared/data/tts-dev --utterances 4

Needs s3prl installed (`pip install --no-deps s3prl==0.4.18`); `s3prl.upstream.interfaces` imports without
torchaudio, so nothing is stubbed here. Loads the export's `s3prl_upstream.py` by path (an export written
before the file existed gets a temporary copy with it), builds the upstream as s3prl's runner does
(`skillkd_local(ckpt=DIR, model_config=None, refresh=False)`) and s3prl's Featurizer with the runner's
arguments, runs the first test-split utterances of a manifest dataset as one padded batch, and prints the
shapes, the downsample rate, the time, and per utterance its valid frames and how far its features in the
padded batch are from its features alone. Compresses and trains nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import soundfile as sf
import torch

from core.export.s3prl_template import UPSTREAM_FILE

SAMPLE_RATE = 16000


def with_upstream_file(export: Path, scratch: Path) -> Path:
    """`export` itself when it carries s3prl_upstream.py, else a copy of it in `scratch` that does."""
    if (export / UPSTREAM_FILE.name).is_file():
        return export
    copy = scratch / export.name
    shutil.copytree(export, copy)
    shutil.copyfile(UPSTREAM_FILE, copy / UPSTREAM_FILE.name)
    return copy


def load_upstream_file(export: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("s3prl_upstream", export / UPSTREAM_FILE.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_utterances(dataset: Path, count: int) -> list[tuple[str, torch.Tensor]]:
    """The first `count` test-split utterances of a manifest dataset, as (id, waveform (time,))."""
    found = []
    for line in (dataset / "manifest.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item.get("split") != "test":
            continue
        wave, rate = sf.read(dataset / item["path"], dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{item['path']}: {rate} Hz; this benchmark reads {SAMPLE_RATE} Hz audio only")
        found.append((item["id"], torch.from_numpy(wave.mean(axis=1))))
        if len(found) == count:
            break
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="a student's Hugging Face export directory")
    parser.add_argument(
        "dataset", type=Path, help="a dataset directory with manifest.jsonl (test split used)"
    )
    parser.add_argument("--utterances", type=int, default=4)
    args = parser.parse_args(argv)
    from s3prl.upstream.interfaces import Featurizer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        export = with_upstream_file(args.export, Path(scratch))
        module = load_upstream_file(export)
        config = json.loads((export / "config.json").read_text())
        start = time.perf_counter()
        upstream = module.skillkd_local(ckpt=str(export), model_config=None, refresh=False).eval()
        featurizer = Featurizer(
            upstream=upstream,
            feature_selection="hidden_states",
            layer_selection=None,
            upstream_device="cpu",
            normalize=False,
        )
        built = time.perf_counter() - start
        utterances = split_utterances(args.dataset, args.utterances)
        wavs = [wave for _, wave in utterances]
        start = time.perf_counter()
        with torch.no_grad():
            features = upstream(wavs)
            per_utterance = featurizer(wavs, features)
        ran = time.perf_counter() - start
        with torch.no_grad():
            alone = [upstream([wave])["hidden_states"] for wave in wavs]
    hidden = features["hidden_states"]
    seconds = sum(len(w) for w in wavs) / SAMPLE_RATE
    print(f"student: {args.export} ({config['skillkd']['num_params']:,} params)")
    print(f"heads per layer: {config['layer_num_heads']}; FFN units: {config['layer_intermediate_size']}")
    rate = upstream.get_downsample_rates("hidden_states")
    print(f"conv_stride {config['conv_stride']} -> get_downsample_rates: {rate}")
    print(f"Featurizer: layer_num {featurizer.layer_num}, output_dim {featurizer.output_dim}, "
          f"downsample_rate {featurizer.downsample_rate}")  # fmt: skip
    print(f"hidden_states: {len(hidden)} x {tuple(hidden[0].shape)} (batch, frame, feature), padded batch")
    print(f"last_hidden_state: {tuple(features['last_hidden_state'].shape)}")
    print("per utterance: samples -> Featurizer output; the padded batch vs the utterance alone on its")
    print("  valid frames: the worst layer's max |difference| and relative Frobenius difference")
    for row, ((name, wave), feature) in enumerate(zip(utterances, per_utterance, strict=True)):
        frames = alone[row][0].shape[1]
        pairs = [(batch[row, :frames], own[0]) for batch, own in zip(hidden, alone[row], strict=True)]
        worst = max(float((a - b).abs().max()) for a, b in pairs)
        relative = max(float((a - b).norm() / b.norm()) for a, b in pairs)
        seconds_here = len(wave) / SAMPLE_RATE
        print(
            f"  {name}: {len(wave)} samples ({seconds_here:.2f} s) -> {tuple(feature.shape)}; valid frames "
            f"{frames}, batch vs alone max {worst:.2e}, relative {relative:.2e}"
        )
    print(
        f"built in {built:.2f} s; {len(wavs)} utterances ({seconds:.1f} s of audio) in {ran:.2f} s, 1 thread"
    )


if __name__ == "__main__":
    main()
