"""The task models of the Hugging Face export against transformers' own (issue 21, item 3).

    python -m bench.hf_task_parity --out bench/results/hf_task_parity.md

For each architecture (HuBERT, WavLM, wav2vec 2.0; tiny random-init Base-layout configs, random norms) and
each task class transformers defines for it (CTC, sequence classification, x-vector, frame classification): a
transformers task model is built, its encoder saved as a teacher, imported and exported unpruned through
skillkd's own path (`load_huggingface` -> `save_hf_export`), loaded back with the matching Auto class and
`trust_remote_code=True` (the head added at load time from the config), and given the transformers model's
head weights. Both then run the same batch:

- eval: a right-padded batch with its attention mask (x-vector: an unpadded batch; skillkd's x-vector counts
  the TDNN's dilated frames where transformers' does not, so their statistics differ on padded rows only);
- train, SpecAugment: train mode (dropouts and LayerDrop off, so the two are deterministic) with the same
  `mask_time_indices` and the same `masked_spec_embed`.

Printed: the largest |difference| of logits (and x-vector embeddings), and both losses with `labels`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.export.hf import save_hf_export
from core.models import load_huggingface

ARCHS = ("hubert", "wavlm", "wav2vec2")
TASKS = ("ctc", "sequence", "xvector", "frame")
_PREFIX = {"hubert": "Hubert", "wavlm": "WavLM", "wav2vec2": "Wav2Vec2"}
_CLASS = {
    "ctc": "ForCTC",
    "sequence": "ForSequenceClassification",
    "xvector": "ForXVector",
    "frame": "ForAudioFrameClassification",
}
_AUTO = {
    "ctc": "AutoModelForCTC",
    "sequence": "AutoModelForAudioClassification",
    "xvector": "AutoModelForAudioXVector",
    "frame": "AutoModelForAudioFrameClassification",
}
# the config fields a task reads, passed to skillkd's from_pretrained as a recipe would
HEAD_FIELDS = (
    "vocab_size",
    "pad_token_id",
    "ctc_loss_reduction",
    "ctc_zero_infinity",
    "num_labels",
    "use_weighted_layer_sum",
    "classifier_proj_size",
    "tdnn_dim",
    "tdnn_kernel",
    "tdnn_dilation",
    "xvector_output_dim",
    "mask_time_prob",
    "mask_time_length",
    "mask_feature_prob",
)
OFF = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
)
SAMPLES = (4000, 2500)


def transformers_class(arch: str, task: str) -> Any | None:
    import transformers

    return getattr(transformers, _PREFIX[arch] + _CLASS[task], None)


def pairs() -> list[tuple[str, str]]:
    """(architecture, task) for every task class transformers defines (it has no HuBERT x-vector or frame
    classifier)."""
    return [(arch, task) for arch in ARCHS for task in TASKS if transformers_class(arch, task) is not None]


def tiny_config(arch: str, task: str) -> Any:
    import transformers

    cls = getattr(transformers, _PREFIX[arch] + "Config")
    kwargs: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 2),
        conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        apply_spec_augment=True,
        mask_time_prob=0.5,
        mask_time_length=2,
        mask_feature_prob=0.0,
        vocab_size=12,
        num_labels=5,
        ctc_loss_reduction="mean",
        use_weighted_layer_sum=task in ("sequence", "xvector"),
        classifier_proj_size=24,
        tdnn_dim=(16, 16, 24),
        tdnn_kernel=(3, 3, 1),
        tdnn_dilation=(1, 2, 1),
        xvector_output_dim=8,
        **OFF,
    )
    if arch == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=64)
    return cls(**kwargs)


def _batch(task: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    waves = torch.randn(len(SAMPLES), max(SAMPLES), generator=generator)
    mask = torch.ones_like(waves, dtype=torch.long)
    if task != "xvector":
        for row, n in enumerate(SAMPLES):
            waves[row, n:] = 0.0
            mask[row, n:] = 0
    return waves, mask


def _labels(task: str, config: Any, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if task == "ctc":
        labels = torch.randint(1, config.vocab_size, (len(SAMPLES), 4), generator=generator)
        labels[1, 2:] = -100
        return labels
    if task == "frame":
        index = torch.randint(0, config.num_labels, (len(SAMPLES), frames), generator=generator)
        return torch.nn.functional.one_hot(index, config.num_labels).float()
    return torch.randint(0, config.num_labels, (len(SAMPLES),), generator=generator)


def _randomise_norms(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def parity(arch: str, task: str, workdir: Path, seed: int = 0) -> dict[str, Any] | None:
    """One row of the table; None when transformers has no such class for the architecture."""
    import transformers

    cls = transformers_class(arch, task)
    if cls is None:
        return None
    torch.manual_seed(seed)
    config = tiny_config(arch, task)
    ref = cls(config).eval()
    _randomise_norms(ref)
    base = getattr(ref, ref.base_model_prefix)
    teacher_dir = workdir / f"{arch}-{task}-teacher"
    base.save_pretrained(teacher_dir)
    export_dir = save_hf_export(load_huggingface(teacher_dir), workdir / f"{arch}-{task}-hf")
    auto = getattr(transformers, _AUTO[task])
    fields = {name: getattr(config, name) for name in HEAD_FIELDS}
    ours = auto.from_pretrained(export_dir, trust_remote_code=True, **fields, **OFF).eval()
    head = {k: v for k, v in ref.state_dict().items() if not k.startswith(ref.base_model_prefix + ".")}
    missing, unexpected = ours.load_state_dict(head, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("skillkd.") for k in missing), missing
    with torch.no_grad():
        ours.skillkd.masked_spec_embed.copy_(base.masked_spec_embed)
    waves, mask = _batch(task, seed)
    row: dict[str, Any] = {"arch": arch, "task": task, "class": cls.__name__, "ours": type(ours).__name__}
    frames = int(base._get_feat_extract_output_lengths(torch.tensor(waves.shape[1])))
    labels = _labels(task, config, frames, seed)
    for mode in ("eval", "train"):
        ref.train(mode == "train")
        ours.train(mode == "train")
        kwargs: dict[str, Any] = {"attention_mask": mask, "labels": labels}
        if mode == "train":
            time_mask = torch.zeros(len(SAMPLES), frames, dtype=torch.bool)
            time_mask[:, 2:5] = True
            time_mask[0, 9:11] = True
            kwargs["mask_time_indices"] = time_mask
        with torch.no_grad():
            a = ref(waves, **kwargs)
            b = ours(waves, **kwargs)
        delta = (a.logits - b.logits).abs().max().item()
        if task == "xvector":
            delta = max(delta, (a.embeddings - b.embeddings).abs().max().item())
        row[mode] = {"max_abs_diff": delta, "loss_transformers": a.loss.item(), "loss_skillkd": b.loss.item()}
    return row


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| architecture | transformers class | skillkd class | eval max abs Δ "
        "| eval loss (transformers / skillkd) | SpecAugment train max abs Δ "
        "| train loss (transformers / skillkd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, t = r["eval"], r["train"]
        lines.append(
            f"| {r['arch']} | {r['class']} | {r['ours']} | {e['max_abs_diff']:.2e} | "
            f"{e['loss_transformers']:.6f} / {e['loss_skillkd']:.6f} | {t['max_abs_diff']:.2e} | "
            f"{t['loss_transformers']:.6f} / {t['loss_skillkd']:.6f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, task in pairs():
            row = parity(arch, task, Path(tmp))
            assert row is not None
            rows.append(row)
    table = render(rows)
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    return rows


if __name__ == "__main__":
    main()
