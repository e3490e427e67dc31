"""A latency cost model: the predicted seconds of one forward pass over a `seconds`-long utterance, as a
linear function of counts that the masks decide.

    time = intercept + sum over features of coefficient x feature

Features (each built from the same expected counts as `SpeechEncoder.macs_parts`, so the prediction is
differentiable in the masks in training, exact for what `prune()` keeps in eval mode, and multilinear in the
number of units each mask keeps, which keeps exact landing's autograd unit costs exact):

- per group of conv layers: their MACs, and their element-wise work (out channels x out frames: the norm,
  GELU and channel scale over 1600-3200 frames per second cost far more time per MAC than the conv itself).
  The feature projection's MACs (last conv channels x hidden size x frames) are a fixed multiple of the last
  conv layer's element count (its frames are the projection's), so they are not a feature of their own: two
  proportional columns would leave the fit free to split their cost arbitrarily. The last conv layer is
  always a group of its own, and its element coefficient holds the projection's cost too. The same holds for
  the first conv layer, which reads one channel: its MACs are a multiple of its elements, so it has only the
  element feature;
- attention, all layers together: MACs including the T² products (at a fixed utterance length every
  per-head cost, softmax included, is proportional to the heads kept, so one feature holds them all);
- FFN, all layers together: MACs (proportional to the units kept, GELU included).

What no mask changes (positional conv, LayerNorms, residuals over the hidden size) is in the intercept.

Conv layers share coefficients when they have the same kernel, stride and norm and neither is the first
(whose single input channel makes it a different kernel) or the last (which carries the projection): a Base
front end has four groups (layer 0, layers 1-4, layer 5, layer 6). One coefficient pair per conv layer
would need more shapes than the few seconds of fitting allow (an under-determined fit predicts the shapes it
saw and nothing else); same-shaped layers cost about the same per MAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.models.encoder import SpeechEncoder

INTERCEPT = "intercept"
ATTENTION = "attention.macs"
FFN = "ffn.macs"


def conv_groups(model: SpeechEncoder) -> list[str]:
    """The cost-model group of each conv layer, named by its layers: e.g. ["conv0", "conv1-4", "conv1-4",
    "conv1-4", "conv1-4", "conv5", "conv6"]."""
    blocks = model.conv_blocks()
    keys = [
        (i == 0, i == len(blocks) - 1, block.kernel, block.stride, block.norm_kind)
        for i, block in enumerate(blocks)
    ]
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)

    def name(layers: list[int]) -> str:
        if len(layers) == 1:
            return f"conv{layers[0]}"
        if layers == list(range(layers[0], layers[-1] + 1)):
            return f"conv{layers[0]}-{layers[-1]}"
        return "conv" + ",".join(str(i) for i in layers)

    return [name(members[key]) for key in keys]


def feature_names(groups: list[str]) -> list[str]:
    """The features of a model whose conv layers are in `groups`, in a fixed order (intercept first)."""
    names = [INTERCEPT]
    for group in dict.fromkeys(groups):
        # the first conv layer reads one channel: its MACs are a fixed multiple of its elements
        names += [f"{group}.elements"] if group == groups[0] else [f"{group}.macs", f"{group}.elements"]
    return [*names, ATTENTION, FFN]


def latency_features(model: SpeechEncoder, seconds: float, groups: list[str]) -> dict[str, Tensor]:
    """The cost model's features of `model` for one `seconds`-long utterance (whole utterance, not per
    second), as 0-dim tensors differentiable in the masks."""
    if len(groups) != len(model.config.conv):
        raise ValueError(f"the cost model has {len(groups)} conv layers, the model {len(model.config.conv)}")
    parts = model.macs_parts(seconds)
    frames = model.conv_frames(int(round(seconds * model.config.sample_rate)))
    ref = model.feature_projection.projection.weight
    zero = torch.zeros((), dtype=torch.float32, device=ref.device)
    out: dict[str, Tensor] = {name: zero for name in feature_names(groups)}
    out[INTERCEPT] = torch.ones((), dtype=torch.float32, device=ref.device)
    for group, block, macs, out_frames in zip(groups, model.conv_blocks(), parts["conv"], frames):
        if group != groups[0]:
            out[f"{group}.macs"] = out[f"{group}.macs"] + macs
        out[f"{group}.elements"] = out[f"{group}.elements"] + block.expected_out() * float(out_frames)
    for layer in parts["layers"]:
        out[ATTENTION] = out[ATTENTION] + layer["attention"]
        out[FFN] = out[FFN] + layer["ffn"]
    return out


@dataclass
class CostModel:
    """Fitted coefficients (seconds per unit of each feature) of one target (`speed_target`, `threads`) for
    one utterance length."""

    target: str
    threads: int
    seconds: float
    groups: list[str]  # conv_groups of the teacher it was fitted on
    coefficients: dict[str, float] = field(default_factory=dict)

    def predict(self, model: SpeechEncoder) -> Tensor:
        """Predicted seconds of one forward pass of `model` over the utterance; differentiable in the masks
        (expected counts in training, exact counts of what `prune()` keeps in eval mode)."""
        features = latency_features(model, self.seconds, self.groups)
        total = features[INTERCEPT] * self.coefficients.get(INTERCEPT, 0.0)
        for name, value in features.items():
            if name != INTERCEPT:
                total = total + value * self.coefficients.get(name, 0.0)
        return total

    def predict_seconds(self, model: SpeechEncoder) -> float:
        """`predict` as a float, in eval mode (the architecture `prune()` would produce)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(self.predict(model))
        finally:
            model.train(was_training)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "threads": self.threads,
            "seconds": self.seconds,
            "groups": list(self.groups),
            "coefficients": dict(self.coefficients),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel:
        return cls(
            str(data["target"]),
            int(data["threads"]),
            float(data["seconds"]),
            [str(g) for g in data["groups"]],
            {str(k): float(v) for k, v in data["coefficients"].items()},
        )


def feature_vector(model: SpeechEncoder, seconds: float, groups: list[str]) -> list[float]:
    """`latency_features` of `model` in eval mode as floats, in `feature_names(groups)` order."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = latency_features(model, seconds, groups)
    finally:
        model.train(was_training)
    return [float(features[name]) for name in feature_names(groups)]


__all__ = [
    "ATTENTION",
    "CostModel",
    "FFN",
    "INTERCEPT",
    "conv_groups",
    "feature_names",
    "feature_vector",
    "latency_features",
]
