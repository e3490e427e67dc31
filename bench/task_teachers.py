"""Fine-tuned task teachers (issue 23): a pretrained teacher (HubertModel or WavLMModel directory) fine-tuned
into a phone recogniser or a speaker classifier with plain transformers, saved as a normal transformers model
directory, and scored on a test split.

    python -m bench.task_teachers ../shared/teachers/hubert-mini ../shared/data/tts-dev --task ctc \\
        --train-split train --test-split test --steps 400 --seed 0 --out runs/task-teachers/hubert-mini-ctc
    python -m bench.task_teachers ../shared/teachers/wavlm-mini runs/tts-dev-heldout --task speaker \\
        --train-split probe_train --test-split probe_test --out runs/task-teachers/wavlm-mini-speaker

`--task ctc`: `HubertForCTC` / `WavLMForCTC` (by the teacher's `model_type`) from the teacher's weights,
with a new linear CTC head over the phones of the train split's `arpabet` field (`--phone-field`) plus
"<pad>" (id 0, the CTC blank and `pad_token_id`) and "<unk>" (id 1: test phones the train split lacks). The
tokenizer is `Wav2Vec2PhonemeCTCTokenizer` with `do_phonemize=False` (phones in, phones out, space-separated;
needs no phonemizer): `Wav2Vec2CTCTokenizer` splits text into characters and joins decoded tokens without
spaces, so it cannot give multi-letter phones back space-separated. It is saved with the feature extractor as
a `Wav2Vec2Processor`, so `pipeline("automatic-speech-recognition", model=OUT)` returns phones
("DH AH K AE T"). Scored by PER: greedy CTC decoding, corpus edit distance over phones
(`core.evaluation.per`); test phones unknown to the vocabulary count as errors.

`--task speaker`: `HubertForSequenceClassification` / `WavLMForSequenceClassification` (transformers' head: a
`classifier_proj_size` projection, mean over valid frames, a linear layer) over the train split's speakers
(sorted; `id2label` = speaker names), saved with the feature extractor (`pipeline("audio-classification",
model=OUT)`). Training audio is cropped to a random `--crop-seconds` (3) window, test audio never. Scored by
accuracy over the test utterances whose speaker is among the labels; the others are counted and skipped.

Recipe (both tasks): the teacher's feature extractor (`preprocessor_config.json`; transformers' defaults,
16 kHz with per-utterance normalisation, where the teacher has none), batches of `--batch-size` (8) random
utterances, right-padded with an attention mask; conv feature encoder frozen; SpecAugment at transformers'
defaults (`mask_time_prob` 0.05, spans of 10 frames, no feature masking); LayerDrop off (a few hundred steps
gain nothing from it); AdamW, encoder at `--lr` (1e-4), the new head at `--head-lr` (1e-3), linear warm-up
over the first 10% of the steps and linear decay to zero, gradient norm clipped to 1; `--steps` (400) steps of
transformers' `Trainer`, seeded by `--seed` (head initialisation, batch order, masks, dropout). float32, CPU
unless `--device cuda`. Nothing is downloaded.

Writes OUT/ (config.json, model.safetensors, preprocessor_config.json; for ctc also vocab.json and
tokenizer_config.json) and OUT/task_teacher.json (task, teacher, dataset, splits, steps, seed, metric and
value, the counts behind it, losses, train seconds, versions, and the 1, 5 and 15 minute load averages before
and after: on a shared 2-core machine other processes can double the training time), and prints one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

TASKS = ("ctc", "speaker")
METRICS = {"ctc": "per", "speaker": "accuracy"}
PAD, UNK = "<pad>", "<unk>"
ARCHITECTURES = {  # model_type -> (CTC class, sequence classification class), names in transformers
    "hubert": ("HubertForCTC", "HubertForSequenceClassification"),
    "wavlm": ("WavLMForCTC", "WavLMForSequenceClassification"),
    # a skillkd student's transformers export (`skillkd export --format hf`): its own task classes, through
    # the Auto classes with trust_remote_code (the two-step route of issue 23: a student fine-tuned as a
    # teacher is)
    "skillkd": ("AutoModelForCTC", "AutoModelForAudioClassification"),
}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages (`uptime`)."""
    return [round(value, 2) for value in os.getloadavg()]


# ------------------------------------------------------------------------------------------------------------
# Inputs


def teacher_type(teacher: Path) -> str:
    """The teacher's `model_type` ("hubert" or "wavlm"); SystemExit when it is not such a directory."""
    config = teacher / "config.json"
    if not config.is_file():
        raise SystemExit(f"error: {teacher} is not a transformers model directory (no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in ARCHITECTURES:
        raise SystemExit(
            f"error: {teacher}: model_type {model_type!r} is not supported; expected one of "
            f"{sorted(ARCHITECTURES)} (a HubertModel or WavLMModel directory, or a skillkd student's "
            "transformers export)"
        )
    return str(model_type)


def feature_extractor(teacher: Path, notes: list[str]) -> Any:
    """The teacher's Wav2Vec2FeatureExtractor, or transformers' defaults (16 kHz, normalised) without one."""
    from transformers import Wav2Vec2FeatureExtractor

    if (teacher / "preprocessor_config.json").is_file():
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(teacher))
    else:
        extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
        notes.append(
            "the teacher has no preprocessor_config.json: transformers' defaults (16 kHz, normalised)"
        )
    if extractor.sampling_rate != 16000:
        raise SystemExit(f"error: {teacher}: sampling rate {extractor.sampling_rate}, expected 16000")
    return extractor


def phones_of(items: Sequence[Any], field: str, split: str, dataset: Path) -> list[list[str]]:
    """Each item's phones (space-separated string or list of strings in `field`); SystemExit naming the
    field and a row when one lacks them."""
    out = []
    for item in items:
        value = item.extra.get(field)
        if isinstance(value, str):
            out.append(value.split())
        elif isinstance(value, list) and all(isinstance(token, str) for token in value):
            out.append(list(value))
        else:
            lacking = sum(1 for i in items if not isinstance(i.extra.get(field), str | list))
            raise SystemExit(
                f"error: {dataset}: --task ctc needs the manifest field {field!r} (space-separated phones) "
                f"on every {split!r} row; {lacking} rows lack it, e.g. {item.id!r} (choose the field with "
                "--phone-field)"
            )
    return out


def build_vocabulary(phone_lists: Sequence[Sequence[str]]) -> dict[str, int]:
    """{"<pad>": 0 (blank), "<unk>": 1, phones sorted: 2..}."""
    phones = sorted({p for phones in phone_lists for p in phones} - {PAD, UNK})
    if not phones:
        raise SystemExit("error: the training split has no phones")
    return {PAD: 0, UNK: 1, **{p: i + 2 for i, p in enumerate(phones)}}


def phone_tokenizer(vocabulary: dict[str, int], directory: Path) -> Any:
    """A phone tokenizer over `vocabulary` (written as directory/vocab.json): "AA B" <-> [id(AA), id(B)]."""
    from transformers import Wav2Vec2PhonemeCTCTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.json"
    vocab_file.write_text(json.dumps(vocabulary, indent=1) + "\n")
    return Wav2Vec2PhonemeCTCTokenizer(
        str(vocab_file),
        unk_token=UNK,
        pad_token=PAD,
        bos_token=None,
        eos_token=None,
        word_delimiter_token=None,
        phone_delimiter_token=" ",
        do_phonemize=False,
    )


class Utterances(torch.utils.data.Dataset[dict[str, Any]]):
    """Waveforms at 16 kHz (decoded once) with their labels; optionally a random `crop` window per draw."""

    def __init__(
        self,
        items: Sequence[Any],
        labels: Sequence[Any],
        *,
        crop: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        from core.data import WaveformCache

        self.items, self.labels = list(items), list(labels)
        self.crop, self.generator = crop, generator
        self.cache = WaveformCache()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        waveform = self.cache.get(self.items[index], 16000)  # (time,)
        if self.crop is not None and waveform.shape[0] > self.crop:
            start = int(torch.randint(waveform.shape[0] - self.crop + 1, (1,), generator=self.generator))
            waveform = waveform[start : start + self.crop]
        return {"waveform": np.asarray(waveform, dtype=np.float32), "label": self.labels[index]}


class Collator:
    """The feature extractor on a batch (normalised per utterance over its valid samples when it says so,
    right-padded, attention mask) plus "labels": phone ids padded with -100 (ctc) or class ids."""

    def __init__(self, extractor: Any, *, sequence_labels: bool) -> None:
        self.extractor = extractor
        self.sequence_labels = sequence_labels

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.extractor(
            [row["waveform"] for row in rows],
            sampling_rate=16000,
            padding=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        out = {"input_values": batch["input_values"], "attention_mask": batch["attention_mask"]}
        if "label" not in rows[0]:
            return out
        if self.sequence_labels:
            labels = torch.full((len(rows), max(len(r["label"]) for r in rows)), -100, dtype=torch.int64)
            for i, row in enumerate(rows):
                labels[i, : len(row["label"])] = torch.tensor(row["label"], dtype=torch.int64)
            out["labels"] = labels  # (batch, label)
        else:
            out["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.int64)  # (batch,)
        return out


# ------------------------------------------------------------------------------------------------------------
# Model and training


def task_model(teacher: Path, model_type: str, task: str, seed: int, **settings: Any) -> Any:
    """The task class of the teacher's architecture from its weights, the new head drawn from `seed`."""
    import transformers

    name = ARCHITECTURES[model_type][0 if task == "ctc" else 1]
    common: dict[str, Any] = {
        "apply_spec_augment": True,  # transformers' defaults, whatever the teacher's config says
        "mask_time_prob": 0.05,
        "mask_time_length": 10,
        "mask_feature_prob": 0.0,
        "layerdrop": 0.0,
    }
    if model_type == "skillkd":
        common["trust_remote_code"] = True
    torch.manual_seed(seed)
    model = getattr(transformers, name).from_pretrained(
        str(teacher), dtype=torch.float32, **common, **settings
    )  # float32: the shared teachers' configs say float16, which transformers would load them in
    model.freeze_feature_encoder()
    return model


def _is_head(name: str) -> bool:
    return name.split(".")[0] in ("lm_head", "projector", "classifier")


def train(
    model: Any,
    dataset: Utterances,
    collator: Collator,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    head_lr: float,
    seed: int,
    device: str,
) -> tuple[list[list[float]], float]:
    """`steps` Trainer steps; returns [[step, loss], ...] and the training seconds."""
    import tempfile

    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in trained if _is_head(n)], "lr": head_lr},
            {"params": [p for n, p in trained if not _is_head(n)], "lr": lr},
        ],
        lr=lr,
        weight_decay=0.0,
    )
    losses: list[list[float]] = []
    every = max(1, steps // 10)
    start = time.perf_counter()

    class Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise SystemExit(f"error: the training loss became {loss} at step {state.global_step}")
            losses.append([float(state.global_step), loss])
            if state.global_step % every == 0 or state.global_step == steps:
                _say(
                    f"step {state.global_step}/{steps} loss {loss:.4g} ({time.perf_counter() - start:.0f} s)"
                )

    with tempfile.TemporaryDirectory(prefix="task-teacher-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="linear",
            warmup_steps=int(0.1 * steps),
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to=[],
            use_cpu=device != "cuda",
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            optimizers=(optimizer, None),  # None: Trainer's warm-up + linear decay on it
            callbacks=[Progress()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout
        trainer.train()
    return losses, time.perf_counter() - start


def predict(
    model: Any, dataset: Utterances, collator: Collator, batch_size: int, device: str, *, ctc: bool
) -> list[Any]:
    """Per test row (in dataset order): CTC greedy phone ids, or the predicted class id (eval mode)."""
    from core.evaluation.per import ctc_greedy_decode

    model.eval().to(device)
    order = sorted(range(len(dataset)), key=lambda row: dataset.items[row].duration_s)
    out: list[Any] = [None] * len(dataset)
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            batch = collator([{"waveform": dataset[row]["waveform"]} for row in rows])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            if ctc:
                frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))  # (batch,)
                predictions: list[Any] = ctc_greedy_decode(logits, frames.to(torch.int64), blank=0)
            else:
                predictions = logits.argmax(dim=-1).cpu().tolist()
            for row, prediction in zip(rows, predictions, strict=True):
                out[row] = prediction
    return out


# ------------------------------------------------------------------------------------------------------------
# The run


def run(
    teacher: Path,
    dataset: Path,
    *,
    task: str,
    out: Path,
    train_split: str = "train",
    test_split: str = "test",
    steps: int = 400,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    crop_seconds: float = 3.0,
    phone_field: str = "arpabet",
    device: str = "cpu",
) -> dict[str, Any]:
    """Fine-tune `teacher` for `task` on `train_split`, score on `test_split`, save the model and processor
    to `out` with task_teacher.json; return that JSON's content. SystemExit on unusable inputs."""
    import transformers

    from core.errors import AudioError
    from core.evaluation.dataset import load_probe_data
    from core.evaluation.per import error_rate

    if task not in TASKS:
        raise SystemExit(f"error: --task must be one of {TASKS}, found {task!r}")
    if steps < 1 or batch_size < 1:
        raise SystemExit(f"error: --steps and --batch-size must be >= 1, found {steps} and {batch_size}")
    model_type = teacher_type(teacher)
    notes: list[str] = []
    try:
        data = load_probe_data(dataset, tasks=("sid",), train_split=train_split, test_split=test_split)
    except AudioError as error:
        raise SystemExit(f"error: {error}") from None
    notes += [n for n in data.notes if task == "speaker" or not n.startswith("speaker identification")]
    extractor = feature_extractor(teacher, notes)
    load_before = _load()
    counts: dict[str, Any]

    if task == "ctc":
        train_phones = phones_of(data.train, phone_field, train_split, dataset)
        test_phones = phones_of(data.test, phone_field, test_split, dataset)
        vocabulary = build_vocabulary(train_phones)
        tokenizer = phone_tokenizer(vocabulary, out)
        train_set = Utterances(data.train, [[vocabulary[p] for p in phones] for phones in train_phones])
        test_set = Utterances(data.test, test_phones)
        model = task_model(
            teacher,
            model_type,
            task,
            seed,
            vocab_size=len(vocabulary),
            pad_token_id=vocabulary[PAD],
            ctc_loss_reduction="mean",
            ctc_zero_infinity=True,  # a label longer than its frames gives no infinite loss
        )
        collator = Collator(extractor, sequence_labels=True)
    else:
        if not data.speakers:
            raise SystemExit(f"error: {dataset}: --task speaker needs `speaker` on the {train_split!r} rows")
        train_items = [item for item in data.train if item.id in data.speakers]
        labels = sorted({data.speakers[item.id] for item in train_items})
        label2id = {name: i for i, name in enumerate(labels)}
        test_items = [item for item in data.test if data.speakers.get(item.id) in label2id]
        skipped = len(data.test) - len(test_items)
        if not test_items:
            raise SystemExit(
                f"error: {dataset}: no {test_split!r} utterance has a speaker of the {train_split!r} split"
            )
        crop = round(crop_seconds * 16000) if crop_seconds > 0 else None
        generator = torch.Generator().manual_seed(seed)
        train_set = Utterances(
            train_items, [label2id[data.speakers[i.id]] for i in train_items], crop=crop, generator=generator
        )
        test_set = Utterances(test_items, [label2id[data.speakers[i.id]] for i in test_items])
        model = task_model(
            teacher,
            model_type,
            task,
            seed,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=label2id,
        )
        collator = Collator(extractor, sequence_labels=False)
        if skipped:
            notes.append(
                f"{skipped} {test_split} utterances skipped: no speaker, or a speaker not in training"
            )

    _say(f"{task} {teacher.name}: {len(train_set)} train / {len(test_set)} test utterances, {steps} steps")
    losses, train_seconds = train(
        model,
        train_set,
        collator,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        seed=seed,
        device=device,
    )
    started = time.perf_counter()
    predictions = predict(model, test_set, collator, batch_size, device, ctc=task == "ctc")
    test_seconds = time.perf_counter() - started
    if task == "ctc":
        phone_of = {i: p for p, i in vocabulary.items()}
        hypotheses = [[phone_of[i] for i in ids] for ids in predictions]
        value = error_rate(test_set.labels, hypotheses)
        counts = {
            "phones": len(vocabulary) - 2,
            "vocab_size": len(vocabulary),
            "unknown_test_phones": sum(1 for ps in test_phones for p in ps if p not in vocabulary),
        }
    else:
        value = sum(int(p == t) for p, t in zip(predictions, test_set.labels, strict=True)) / len(test_set)
        counts = {"num_labels": len(labels), "scored_test_utterances": len(test_set), "skipped": skipped}

    model.cpu().save_pretrained(str(out))
    if task == "ctc":
        processor = transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)
        processor.save_pretrained(str(out))
    # transformers 5 keeps a processor's feature extractor in processor_config.json; preprocessor_config.json
    # is the file AutoFeatureExtractor (and transformers 4) reads
    extractor.save_pretrained(str(out))
    result = {
        "format": "skillkd-task-teacher",
        "task": task,
        "teacher": str(teacher),
        "architecture": model.config.architectures[0],
        "dataset": str(dataset),
        "train_split": train_split,
        "test_split": test_split,
        "train_utterances": len(train_set),
        "test_utterances": len(data.test),
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "head_lr": head_lr,
        "crop_seconds": crop_seconds if task == "speaker" else None,
        "metric": METRICS[task],
        "value": value,
        **counts,
        "first_train_loss": losses[0][1] if losses else None,
        "final_train_loss": losses[-1][1] if losses else None,
        "losses": losses,
        "train_seconds": train_seconds,
        "test_seconds": test_seconds,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": _load(),
        "notes": notes,
    }
    (out / "task_teacher.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(result: dict[str, Any], out: Path) -> str:
    name = "PER" if result["task"] == "ctc" else "accuracy"
    figure = f"{name} {100 * result['value']:.2f}%"
    skipped = f", {result['skipped']} skipped" if result.get("skipped") else ""
    return (
        f"{result['task']} {Path(result['teacher']).name}: {figure} on {result['test_split']} "
        f"({result.get('scored_test_utterances', result['test_utterances'])} utterances{skipped}) after "
        f"{result['steps']} steps ({result['train_seconds']:.0f} s, load {result['load_before'][0]} -> "
        f"{result['load_after'][0]}) -> {out}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("teacher", type=Path, help="a HubertModel or WavLMModel directory")
    parser.add_argument("dataset", type=Path, help="a dataset directory with manifest.jsonl")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the task teacher's directory")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="the encoder's learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="the new head's learning rate")
    parser.add_argument("--crop-seconds", type=float, default=3.0, help="speaker: training crop (0: none)")
    parser.add_argument("--phone-field", default="arpabet", help="ctc: the manifest field with the phones")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = run(
        args.teacher,
        args.dataset,
        task=args.task,
        out=args.out,
        train_split=args.train_split,
        test_split=args.test_split,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        crop_seconds=args.crop_seconds,
        phone_field=args.phone_field,
        device=args.device,
    )
    print(summary(result, args.out))
    return result


if __name__ == "__main__":
    main()
