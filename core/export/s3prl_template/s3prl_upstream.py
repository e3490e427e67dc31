"""An s3prl upstream for this skillkd student, so that s3prl's SUPERB runner evaluates it by its path.

s3prl's own `hf_hubert_custom` / `hf_wav2vec2_custom` upstreams cannot load a pruned student: its layers keep
different numbers of attention heads ("embed_dim must be divisible by num_heads"). This file loads the
student with `AutoModel.from_pretrained(directory, trust_remote_code=True)` and follows s3prl's upstream
contract (s3prl/upstream/example/expert.py): built from `ckpt` (the student's directory, `-k`), it takes a
list of 1-D waveforms at 16 kHz and returns `hidden_states`, the L+1 hidden states (batch, frame, feature),
and `get_downsample_rates` gives the samples per frame (the product of the conv strides: 320 for the
standard conv stack). It needs torch and transformers; s3prl only when run as a script.

Run s3prl's runner on a student (from the `s3prl/` folder of an s3prl checkout, as s3prl's docs run
run_downstream.py), with any of its arguments:

    python3 STUDENT_DIR/s3prl_upstream.py -m train -u skillkd_local -k STUDENT_DIR -d asr -n NAME

Run as a script, this file registers its entries in `s3prl.hub` and hands its arguments to
s3prl's `run_downstream.py` unchanged; nothing in s3prl is edited (`runner_compatibility` says what the
launcher adds so that s3prl 0.4.18's runner runs beside torch 2.6+ and huggingface_hub 1.0+). s3prl's
documented alternative, registering it inside an s3prl checkout: copy this file to
`s3prl/upstream/skillkd/expert.py`, write `from .expert import skillkd_local` in
`s3prl/upstream/skillkd/hubconf.py`, and add `from s3prl.upstream.skillkd.hubconf import *` to
`s3prl/hub.py`; then run `run_downstream.py` itself.

Batches are padded as s3prl's own wav2vec 2.0 / HuBERT / WavLM upstreams pad them: right padding with zeros
and an attention mask. In the Base layout the first conv layer's GroupNorm normalises over the padded length,
so a padded utterance's features differ from its features alone, as with s3prl's own Base upstreams; in the
Large layout (LayerNorm) they are the same on valid frames. The entry `skillkd_local_per_utterance` runs
each utterance alone instead (exact in both layouts, one forward pass per utterance). Waveforms are
normalised per utterance (zero mean, unit variance over their own samples, as Wav2Vec2FeatureExtractor does)
when the export's preprocessor_config.json says `do_normalize`. LayerDrop and SpecAugment are turned off, as
s3prl turns them off for its own upstreams (a weighted sum needs every layer, and SUPERB's upstreams never
mask), so fine-tuning with `-f` keeps all L+1 hidden states.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

SAMPLE_RATE = 16000  # s3prl's waveforms are 16 kHz
NORMALIZE_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
OFF_FOR_S3PRL = {"layerdrop": 0.0, "apply_spec_augment": False}


class UpstreamExpert(nn.Module):
    """A skillkd student as an s3prl upstream: list of waveforms -> {"hidden_states": L+1 tensors}."""

    def __init__(
        self,
        ckpt: str,
        model_config: str | None = None,
        refresh: bool = False,
        *,
        per_utterance: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if ckpt is None:
            raise ValueError("give the student's directory as the checkpoint (run_downstream.py -k DIR)")
        if model_config is not None:
            raise ValueError(f"a student's directory holds its own config; -g {model_config} is not used")
        directory = Path(ckpt)
        if not (directory / "config.json").is_file():
            raise ValueError(f"{directory} is not a student's Hugging Face export (no config.json)")
        preprocessor_path = directory / "preprocessor_config.json"
        if not preprocessor_path.is_file():
            raise ValueError(f"{directory} has no preprocessor_config.json: cannot tell whether to normalise")
        preprocessor = json.loads(preprocessor_path.read_text())
        if int(preprocessor.get("sampling_rate", SAMPLE_RATE)) != SAMPLE_RATE:
            raise ValueError(
                f"s3prl feeds {SAMPLE_RATE} Hz audio; this model expects {preprocessor['sampling_rate']} Hz"
            )
        self.do_normalize = bool(preprocessor.get("do_normalize", False))
        config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
        for field, value in OFF_FOR_S3PRL.items():
            if hasattr(config, field):
                setattr(config, field, value)
        self.model = AutoModel.from_pretrained(directory, config=config, trust_remote_code=True)
        self.downsample_rate = math.prod(int(s) for s in config.conv_stride)
        self.per_utterance = per_utterance

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Waveform samples per frame, the same for every feature key."""
        return self.downsample_rate

    def forward(self, wavs: list[Tensor]) -> dict[str, Any]:
        """wavs: list of (time,) at 16 kHz -> hidden_states: list of L+1 (batch, frame, feature), with padded
        frames past each utterance's length (zeros when per utterance); last_hidden_state: (batch, frame,
        feature), as transformers defines it."""
        for i, wav in enumerate(wavs):
            if wav.dim() != 1:
                raise ValueError(f"expected waveform {i} of shape (time,), found {tuple(wav.shape)}")
        wavs = [wav.float() for wav in wavs]
        if self.do_normalize:
            wavs = [(w - w.mean()) / torch.sqrt(w.var(correction=0) + NORMALIZE_EPS) for w in wavs]
        if not self.per_utterance:
            hidden, last = self._encode(wavs)
        else:
            alone = [self._encode([w]) for w in wavs]
            hidden = [
                pad_sequence([h[i][0] for h, _ in alone], batch_first=True) for i in range(len(alone[0][0]))
            ]
            last = pad_sequence([a[0] for _, a in alone], batch_first=True)
        return {"hidden_states": hidden, "last_hidden_state": last}

    def _encode(self, wavs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """One padded batch through the model -> (L+1 hidden states, last_hidden_state), each (batch, frame,
        feature)."""
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        input_values = pad_sequence(wavs, batch_first=True)  # (batch, time)
        positions = torch.arange(input_values.shape[1], device=input_values.device)
        attention_mask = (positions[None, :] < lengths[:, None]).long()  # (batch, time)
        out = self.model(input_values, attention_mask=attention_mask, output_hidden_states=True)
        return list(out.hidden_states), out.last_hidden_state


def skillkd_local(ckpt: str, *args: Any, **kwargs: Any) -> UpstreamExpert:
    """The s3prl hub entry `-u skillkd_local -k STUDENT_DIR`: padded batches, as s3prl's own upstreams."""
    return UpstreamExpert(ckpt, *args, **kwargs)


def skillkd_local_per_utterance(ckpt: str, *args: Any, **kwargs: Any) -> UpstreamExpert:
    """The s3prl hub entry `-u skillkd_local_per_utterance -k STUDENT_DIR`: each utterance alone."""
    return UpstreamExpert(ckpt, *args, per_utterance=True, **kwargs)


ENTRIES = {"skillkd_local": skillkd_local, "skillkd_local_per_utterance": skillkd_local_per_utterance}


def runner_compatibility() -> None:
    """What s3prl 0.4.18's runner needs of packages newer than it, and nothing else:

    - torch 2.6 made `torch.load` weights-only by default, and s3prl's checkpoints (`-e`, `-i`) hold the
      run's arguments as an argparse.Namespace: that one class is allowed (loading stays weights-only).
    - huggingface_hub 1.0 (transformers 5 needs 2.4 or newer) removed `HfFolder` and `Repository`, which the
      runner imports for `--push_to_hf_hub` only: placeholders stand in that refuse to be used.
    """
    import huggingface_hub

    if hasattr(torch.serialization, "add_safe_globals"):  # torch 2.4 and newer
        torch.serialization.add_safe_globals([argparse.Namespace])
    for name in ("HfFolder", "Repository"):
        if not hasattr(huggingface_hub, name):
            setattr(huggingface_hub, name, _removed_from_huggingface_hub(name))


def _removed_from_huggingface_hub(name: str) -> type:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"huggingface_hub.{name} no longer exists (huggingface_hub 1.0): --push_to_hf_hub cannot run"
        )

    return type(name, (), {"__init__": refuse, "get_token": staticmethod(refuse)})


def main() -> None:
    """Register the entries in s3prl's hub, then run s3prl's run_downstream.py with this command's
    arguments."""
    runner_compatibility()
    from s3prl import hub, run_downstream

    for name, entry in ENTRIES.items():
        setattr(hub, name, entry)
    run_downstream.main()


if __name__ == "__main__":
    main()
