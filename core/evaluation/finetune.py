"""What a model is worth after fine-tuning: the whole encoder trained briefly on a task with transformers'
task classes and `Trainer`, scored on the same data, splits and metrics as the frozen probes.

    finetune(model, data, "ctc")      -> FinetuneResult   phone recognition, PER on the test split
    finetune(model, data, "speaker")  -> FinetuneResult   speaker classification, accuracy on the test split

The frozen probes (core.evaluation.probes) say what an encoder's representations hold; users fine-tune, and a
pruned student may lose less (or more) once its weights can move. The model, a teacher or a student loaded by
`core.models.load_model`, goes through `core.export.hf.hf_task_module`: the same `SkillkdForCTC` /
`SkillkdForSequenceClassification` a user gets from `AutoModelForCTC` / `AutoModelForAudioClassification` on
the export, with transformers' contract (input_values + attention_mask, loss from `labels`). Teachers and
students take the same path, so the two numbers are comparable. The caller's model is not modified (the task
model holds a copy of its weights).

Recipe (wav2vec 2.0's fine-tuning recipe as fairseq and transformers' examples run it, shortened to minutes):

- labels: CTC over the phone inventory of the train split (`PhoneVocabulary`, blank = 0 = `pad_token_id`), as
  the PR probe; speaker classes are the train split's speakers, as the SID probe.
- model: a new head on the whole encoder: for CTC a linear layer over the last hidden state
  (`ctc_loss_reduction="mean"`, `ctc_zero_infinity` as the probe), for speakers transformers' defaults (a
  256-wide projection of the last hidden state, mean over valid frames, a linear classifier). The conv feature
  encoder stays frozen (`freeze_feature_encoder()`); SpecAugment on (`mask_time_prob` 0.05, spans of 10
  frames: transformers' defaults); dropouts at the config's defaults (0.1); LayerDrop off (0.0): a run of a
  few hundred steps has no time to profit from it, and it would add noise to a comparison of models.
- schedule: the head alone for the first half of the steps, then the whole model (fairseq's
  `freeze_finetune_updates`, which its recipes for 10 minutes to 10 hours of labels use: a new head first
  learns to read the pretrained features, so its first large gradients do not disturb them; a head-only step
  also skips the encoder's backward pass, about half a step's cost). AdamW, the head at 5e-3 and the encoder
  at 2e-4, linear warm-up over the first 10% of steps and linear decay to zero, gradient norm clipped to 1;
  batches of 8 utterances of similar length (random pools of 4 batches, sorted by duration, shuffled); a
  fixed number of steps (no early stopping, so models are compared after the same training). Speaker
  training audio is cropped to a random 3 s window (transformers' audio-classification example crops too);
  test audio never is.
- input: raw waveforms at the model's rate, normalised per utterance when the model's config says
  `normalize_waveform` (the function `SpeechEncoder` applies, so the frozen probes and this see the same
  input); right padding with an attention mask.
- scoring: greedy CTC decoding (arg-max per frame, repeats collapsed, blanks dropped) and corpus PER by edit
  distance (core.evaluation.per), test phones unknown to the train inventory counted as errors; speaker
  accuracy with test utterances of speakers absent from training counted as errors.

Deterministic given the seed on a given machine (head initialisation, batch order, SpecAugment masks,
dropout); the caller's global RNG states (python, numpy, torch) are restored afterwards, since `Trainer`
reseeds them all.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import numpy as np
import torch

from core.data import AudioItem, WaveformCache
from core.errors import AudioError, TrainingError
from core.evaluation.dataset import ProbeData
from core.evaluation.per import ctc_greedy_decode, error_rate
from core.evaluation.probes import PhoneVocabulary
from core.events import Event, OnEvent, ignore_event

FINETUNE_TASKS = ("ctc", "speaker")
METRICS = {"ctc": "per", "speaker": "accuracy"}
STAGE = "evaluate"
# Measured (docs/evaluation.md): hubert-mini on the held-out view's probe_train (82 utterances, 6.7 min of
# audio) takes 275 s for 100 steps on this project's idle 2-core CPU (its quick student 124 s) and reaches
# only about the frozen probe's PER, its student a worse one (42.71 vs 36.26 frozen); at 200 steps both go
# well below their frozen probes (3 seeds: bench/results/finetune_probe.md), so 200 is the default.
DEFAULT_STEPS = 200


@dataclass(frozen=True)
class FinetuneConfig:
    """The recipe of the module docstring; `steps` is the one knob most users change (`--finetune-steps`)."""

    steps: int = DEFAULT_STEPS
    batch_size: int = 8
    learning_rate: float = 2e-4  # the encoder's
    head_learning_rate: float = 5e-3  # the new head's
    head_only_fraction: float = 0.5  # the first steps train the head alone, then the whole model trains
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    layerdrop: float = 0.0
    freeze_feature_encoder: bool = True
    speaker_crop_seconds: float = 3.0
    length_pool: int = 4  # batches per pool of utterances sorted by duration
    log_every: int = 25  # steps between logged losses (and progress lines)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1 or self.length_pool < 1:
            raise ValueError(
                "steps, batch_size, log_every and length_pool must be >= 1, found "
                f"{self.steps}, {self.batch_size}, {self.log_every}, {self.length_pool}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.head_only_fraction < 1.0:
            raise ValueError(
                "warmup_fraction and head_only_fraction must be in [0, 1), found "
                f"{self.warmup_fraction} and {self.head_only_fraction}"
            )

    @property
    def head_only_steps(self) -> int:
        """Steps before the encoder joins the training."""
        return int(self.head_only_fraction * self.steps)


@dataclass
class FinetuneResult:
    """One fine-tuning run. `per` (ctc) or `accuracy` (speaker) is the figure; `losses` are the training
    losses every `log_every` steps and at the last, [step, mean loss of the steps since the previous entry];
    `first_train_loss` and `final_train_loss` are the first and last of them."""

    task: str
    metric: str
    per: float | None
    accuracy: float | None
    seed: int
    steps: int
    epochs: float
    train_seconds: float
    test_seconds: float
    first_train_loss: float
    final_train_loss: float
    losses: list[list[float]]
    train_utterances: int
    test_utterances: int
    num_labels: int  # phones without the blank (ctc) or train speakers (speaker)
    unknown_test_phones: int | None  # ctc
    unseen_test_utterances: int | None  # speaker
    params: int  # of the task model, head included
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    module: Any = field(default=None, repr=False, compare=False)  # the trained task model (not reported)

    @property
    def value(self) -> float:
        figure = self.per if self.task == "ctc" else self.accuracy
        assert figure is not None
        return figure

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "module"}


# ------------------------------------------------------------------------------------------------------------
# Labels


def require_labels(data: ProbeData, task: str) -> None:
    """Raise AudioError (a clear message, the CLI's exit 2) when `data` lacks the labels `task` trains on."""
    if task not in FINETUNE_TASKS:
        raise ValueError(f"unknown fine-tuning task {task!r}: expected one of {', '.join(FINETUNE_TASKS)}")
    items = data.train + data.test
    if task == "ctc":
        lacking = [item.id for item in items if not data.phones.get(item.id)]
        if lacking:
            raise AudioError(
                "fine-tuning with CTC (--finetune ctc) needs phone labels on every train and test row "
                f"(the manifest's phone field, --phone-field); {len(lacking)} rows have none, e.g. "
                f"{lacking[0]!r}"
            )
        return
    train = data.speaker_pairs(data.train)
    test = data.speaker_pairs(data.test)
    if not train or not test:
        raise AudioError(
            "fine-tuning speaker classification (--finetune speaker) needs `speaker` on the train and test "
            f"rows of the manifest; found {len(train)} train and {len(test)} test rows with one"
        )


def require_model(model: Any) -> None:
    """Raise ValueError unless `model` is a skillkd `SpeechEncoder` (the task models are built on one)."""
    from core.models import SpeechEncoder

    if not isinstance(model, SpeechEncoder):
        raise ValueError(
            "fine-tuning needs a skillkd SpeechEncoder (a teacher or student loaded by "
            f"core.models.load_model), found {type(model).__name__}"
        )


# ------------------------------------------------------------------------------------------------------------
# Data: utterances in, padded batches out (transformers' input_values / attention_mask / labels)


class _Utterances(torch.utils.data.Dataset[dict[str, Any]]):
    """Waveforms (decoded once, kept in a cache) with their label; speaker audio optionally cropped to a
    random window (seeded by `generator`) for training."""

    def __init__(
        self,
        items: Sequence[AudioItem],
        labels: Sequence[Any],
        *,
        sample_rate: int,
        crop_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.items = list(items)
        self.labels = list(labels)
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples
        self.generator = generator
        self.cache = WaveformCache()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        waveform = torch.from_numpy(self.cache.get(self.items[index], self.sample_rate).copy())  # (time,)
        if self.crop_samples is not None and waveform.shape[0] > self.crop_samples:
            start = int(
                torch.randint(waveform.shape[0] - self.crop_samples + 1, (1,), generator=self.generator)
            )
            waveform = waveform[start : start + self.crop_samples]
        return {"waveform": waveform, "label": self.labels[index]}

    def seconds(self) -> list[float]:
        """Duration of each utterance as served (cropped)."""
        crop = math.inf if self.crop_samples is None else self.crop_samples / self.sample_rate
        return [min(item.duration_s, crop) for item in self.items]


class Collator:
    """Right-pads waveforms (normalised per utterance when `normalize`, as `SpeechEncoder` does) and labels:
    {"input_values" (batch, time), "attention_mask" (batch, time), "labels" (batch, label) padded with -100
    for CTC, (batch,) for classes}; rows without a "label" give no "labels" (prediction)."""

    def __init__(self, *, normalize: bool, sequence_labels: bool) -> None:
        self.normalize = normalize
        self.sequence_labels = sequence_labels

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from core.models.encoder import normalize_waveforms

        lengths = torch.tensor([row["waveform"].shape[0] for row in rows], dtype=torch.int64)  # (batch,)
        waveforms = torch.zeros(len(rows), int(lengths.max()))  # (batch, time)
        for i, row in enumerate(rows):
            waveforms[i, : lengths[i]] = row["waveform"]
        if self.normalize:
            waveforms = normalize_waveforms(waveforms, lengths)
        mask = (torch.arange(waveforms.shape[1])[None, :] < lengths[:, None]).long()  # (batch, time)
        batch = {"input_values": waveforms, "attention_mask": mask}
        if "label" not in rows[0]:
            return batch
        if self.sequence_labels:
            width = max(len(row["label"]) for row in rows)
            labels = torch.full((len(rows), width), -100, dtype=torch.int64)  # (batch, label)
            for i, row in enumerate(rows):
                labels[i, : len(row["label"])] = torch.tensor(row["label"], dtype=torch.int64)
            batch["labels"] = labels
        else:
            batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.int64)  # (batch,)
        return batch


class LengthBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of utterances of similar duration, so little of a padded batch is padding: every epoch the
    rows are shuffled, cut into pools of `pool` batches, sorted by duration within a pool and split into
    batches, whose order is shuffled. Seeded; a new order each epoch."""

    def __init__(self, seconds: Sequence[float], batch_size: int, *, pool: int, seed: int) -> None:
        self.seconds = list(seconds)
        self.batch_size = batch_size
        self.pool = pool
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        span = self.batch_size * self.pool
        full, rest = divmod(len(self.seconds), span)
        return full * self.pool + math.ceil(rest / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.seconds), generator=self.generator).tolist()
        span = self.batch_size * self.pool
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda row: self.seconds[row])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


# ------------------------------------------------------------------------------------------------------------
# Training


@contextmanager
def _rng_preserved() -> Iterator[None]:
    """Trainer seeds python's, numpy's and torch's global generators; give the caller theirs back."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _trainer_class() -> Any:
    """transformers' Trainer, its training batches drawn by `LengthBatches` (the documented way to change
    them: override `get_train_dataloader`). Imported on use: transformers' trainer takes seconds to load."""
    from transformers import Trainer

    class LengthGroupedTrainer(Trainer):  # type: ignore[misc]
        def __init__(self, *args: Any, batch_sampler: LengthBatches, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.batch_sampler = batch_sampler

        def get_train_dataloader(self) -> torch.utils.data.DataLoader[Any]:
            dataset = cast(torch.utils.data.Dataset[Any], self.train_dataset)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator
            )
            return self.accelerator.prepare(loader)  # type: ignore[no-any-return]

    return LengthGroupedTrainer


def _progress_callback(
    emit: OnEvent,
    message: str,
    total: int,
    every: int,
    losses: list[list[float]],
    started: Callable[[], float],
) -> Any:
    """A TrainerCallback reading the loss the Trainer logs at every step: a `progress` event per step (the
    CLI's bar), and every `every` steps (and at the last) the mean loss since the previous entry appended to
    `losses` and said in a `log` line. A non-finite loss stops training with a TrainingError."""
    from transformers import TrainerCallback

    window: list[float] = []

    class Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            step, loss = state.global_step, float(logs["loss"])
            if not math.isfinite(loss):
                raise TrainingError(f"{message}: the training loss became {loss} at step {step}")
            window.append(loss)
            emit(Event("progress", STAGE, step=step, total=total, message=message, metrics={"loss": loss}))
            if step % every == 0 or step == total:
                losses.append([float(step), sum(window) / len(window)])
                window.clear()
                line = f"{message}: step {step}/{total} loss {losses[-1][1]:.4g} ({started():.0f} s)"
                emit(Event("log", STAGE, message=line))

    return Progress()


def _optimizer(module: Any, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over what trains: the new head at `head_learning_rate`, the encoder (all but the frozen conv
    feature encoder) at `learning_rate`."""
    head = [p for n, p in module.named_parameters() if p.requires_grad and not n.startswith("skillkd.")]
    encoder = [p for n, p in module.named_parameters() if p.requires_grad and n.startswith("skillkd.")]
    groups = [
        {"params": head, "lr": config.head_learning_rate},
        {"params": encoder, "lr": config.learning_rate},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


def _head_only(module: Any, steps: int) -> Any:
    """A TrainerCallback that keeps the encoder out of training for the first `steps` steps (its
    parameters get no gradient, so AdamW leaves them and the backward pass stops at the head)."""
    from transformers import TrainerCallback

    encoder = [p for n, p in module.named_parameters() if p.requires_grad and n.startswith("skillkd.")]

    class HeadOnly(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for p in encoder:
                p.requires_grad_(state.global_step >= steps)

    return HeadOnly()


def _task_module(model: Any, task: str, num_labels: int, config: FinetuneConfig, seed: int) -> Any:
    """The transformers task model on a copy of `model`'s weights, its new head drawn from `seed`."""
    from core.export.hf import hf_task_module

    settings: dict[str, Any] = {
        "mask_time_prob": config.mask_time_prob,
        "mask_time_length": config.mask_time_length,
        "layerdrop": config.layerdrop,
    }
    if task == "ctc":
        settings |= {
            "vocab_size": num_labels,
            "pad_token_id": 0,
            "ctc_loss_reduction": "mean",
            "ctc_zero_infinity": True,
        }
        kind = "ctc"
    else:
        settings |= {"num_labels": num_labels}
        kind = "sequence"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = hf_task_module(model, kind, **settings)
    if config.freeze_feature_encoder:
        module.freeze_feature_encoder()
    return module


def _train(
    module: Any,
    dataset: _Utterances,
    collator: Collator,
    *,
    config: FinetuneConfig,
    seed: int,
    device: torch.device,
    emit: OnEvent,
    message: str,
) -> tuple[list[list[float]], float]:
    """`config.steps` Trainer steps on `dataset`; returns the logged losses and the training seconds."""
    from transformers import PrinterCallback, TrainingArguments

    losses: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="skillkd-finetune-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=config.steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=int(config.warmup_fraction * config.steps),
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            logging_steps=1,  # every step's loss to the progress callback, which averages them
            logging_nan_inf_filter=False,  # a non-finite loss is an error, not a value to skip
            save_strategy="no",
            report_to=[],
            use_cpu=device.type != "cuda",
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        batches = LengthBatches(dataset.seconds(), config.batch_size, pool=config.length_pool, seed=seed)
        start = time.perf_counter()
        trainer = _trainer_class()(
            model=module,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            batch_sampler=batches,
            optimizers=(_optimizer(module, config), None),  # None: Trainer's warm-up + linear decay on it
            callbacks=[
                _head_only(module, config.head_only_steps),
                _progress_callback(
                    emit, message, config.steps, config.log_every, losses, lambda: time.perf_counter() - start
                ),
            ],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout, which carries results
        trainer.train()
        seconds = time.perf_counter() - start
    if not losses:
        raise TrainingError(f"{message}: no training loss was logged")
    return losses, seconds


def _test_batches(items: Sequence[AudioItem], batch_size: int) -> list[list[int]]:
    """Test rows in batches of similar duration (order does not matter for scoring)."""
    order = sorted(range(len(items)), key=lambda row: items[row].duration_s)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _predict(
    module: Any, dataset: _Utterances, collator: Collator, batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(rows, logits, valid frames per row) per test batch, in eval mode (no SpecAugment, no dropout)."""
    module.eval().to(device)
    with torch.no_grad():
        for rows in _test_batches(dataset.items, batch_size):
            batch = collator([{"waveform": dataset[row]["waveform"]} for row in rows])
            inputs = {k: v.to(device) for k, v in batch.items()}
            logits = module(**inputs).logits
            frames = module.skillkd.frame_lengths(batch["attention_mask"].sum(-1))  # (batch,)
            yield rows, logits, frames


@dataclass
class _TaskData:
    """What one task trains and scores on: labelled train and test utterances and the head's outputs."""

    train: _Utterances
    test: _Utterances
    num_labels: int  # the head's outputs: blank + phones, or train speakers
    vocabulary: PhoneVocabulary | None  # ctc


def _task_data(data: ProbeData, task: str, sample_rate: int, config: FinetuneConfig, seed: int) -> _TaskData:
    """CTC: phone ids of the train inventory for training, the phone symbols for scoring. Speaker: the class
    of each train speaker (sorted names) and -1 for a test speaker absent from training; utterances without
    a speaker are left out, as the SID probe leaves them out."""
    if task == "ctc":
        vocabulary = PhoneVocabulary.from_sequences([data.phones[item.id] for item in data.train])
        train_labels = [vocabulary.encode(data.phones[item.id]) for item in data.train]
        return _TaskData(
            train=_Utterances(data.train, train_labels, sample_rate=sample_rate),
            test=_Utterances(
                data.test, [data.phones[item.id] for item in data.test], sample_rate=sample_rate
            ),
            num_labels=len(vocabulary),
            vocabulary=vocabulary,
        )
    classes = {s: i for i, s in enumerate(sorted({s for _, s in data.speaker_pairs(data.train)}))}
    train_items = [item for item in data.train if item.id in data.speakers]
    test_items = [item for item in data.test if item.id in data.speakers]
    crop = round(config.speaker_crop_seconds * sample_rate) if config.speaker_crop_seconds > 0 else None
    train = _Utterances(
        train_items,
        [classes[data.speakers[item.id]] for item in train_items],
        sample_rate=sample_rate,
        crop_samples=crop,
        generator=torch.Generator().manual_seed(seed),
    )
    test_labels = [classes.get(data.speakers[item.id], -1) for item in test_items]
    test = _Utterances(test_items, test_labels, sample_rate=sample_rate)
    return _TaskData(train=train, test=test, num_labels=len(classes), vocabulary=None)


def _score(
    module: Any, task: _TaskData, collator: Collator, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """PER of greedy CTC paths (test phones unknown to the vocabulary stay in the references: errors) or
    speaker accuracy (unseen speakers: errors), with the counts that explain them."""
    if task.vocabulary is not None:
        vocabulary = task.vocabulary
        references: list[list[str]] = []
        hypotheses: list[list[str]] = []
        for rows, logits, frames in _predict(module, task.test, collator, batch_size, device):
            for row, ids in zip(rows, ctc_greedy_decode(logits, frames, blank=0), strict=True):
                references.append(list(task.test.labels[row]))
                hypotheses.append(vocabulary.decode(ids))
        unknown = sum(1 for phones in references for token in phones if token not in vocabulary)
        return {"per": error_rate(references, hypotheses), "unknown_test_phones": unknown}
    correct = 0
    for rows, logits, _ in _predict(module, task.test, collator, batch_size, device):
        truth = torch.tensor([task.test.labels[row] for row in rows])  # (batch,)
        correct += int((logits.argmax(dim=-1).cpu() == truth).sum())
    unseen = sum(1 for label in task.test.labels if label < 0)
    return {"accuracy": correct / len(task.test), "unseen_test_utterances": unseen}


def finetune(
    model: Any,
    data: ProbeData,
    task: str,
    *,
    config: FinetuneConfig = FinetuneConfig(),
    seed: int = 0,
    device: str | torch.device = "cpu",
    name: str = "model",
    on_event: OnEvent = ignore_event,
) -> FinetuneResult:
    """Fine-tune `model` (a `SpeechEncoder`: a teacher or student from `core.models.load_model`) on
    `data.train` for `task` ("ctc": phones, "speaker": speakers) with the recipe of the module docstring;
    score on `data.test` (PER or accuracy). Raises AudioError when `data` lacks the task's labels,
    TrainingError when the loss is not finite."""
    require_labels(data, task)
    require_model(model)
    device = torch.device(device)
    message = f"finetune {task} {name} seed {seed}"
    labelled = _task_data(data, task, model.config.sample_rate, config, seed)
    collator = Collator(normalize=model.config.normalize_waveform, sequence_labels=task == "ctc")

    with _rng_preserved():
        module = _task_module(model, task, labelled.num_labels, config, seed)
        losses, train_seconds = _train(
            module,
            labelled.train,
            collator,
            config=config,
            seed=seed,
            device=device,
            emit=on_event,
            message=message,
        )
    start = time.perf_counter()
    scores = _score(module, labelled, collator, config.batch_size, device)
    test_seconds = time.perf_counter() - start
    result = FinetuneResult(
        task=task,
        metric=METRICS[task],
        per=scores.get("per"),
        accuracy=scores.get("accuracy"),
        seed=seed,
        steps=config.steps,
        epochs=config.steps * config.batch_size / len(labelled.train),
        train_seconds=train_seconds,
        test_seconds=test_seconds,
        first_train_loss=losses[0][1],
        final_train_loss=losses[-1][1],
        losses=losses,
        train_utterances=len(labelled.train),
        test_utterances=len(labelled.test),
        num_labels=labelled.num_labels - 1 if task == "ctc" else labelled.num_labels,
        unknown_test_phones=scores.get("unknown_test_phones"),
        unseen_test_utterances=scores.get("unseen_test_utterances"),
        params=sum(p.numel() for p in module.parameters()),
        device=str(device),
        config=asdict(config),
        module=module.cpu(),
    )
    on_event(Event("log", STAGE, message=f"{message}: {summary(result)}"))
    return result


def summary(result: FinetuneResult) -> str:
    """One line: 'PER 27.41% after 200 steps (19.5 epochs, 1029 s), train loss 8.14 -> 0.88'."""
    figure = (
        f"PER {100 * result.value:.2f}%" if result.task == "ctc" else f"accuracy {100 * result.value:.2f}%"
    )
    return (
        f"{figure} after {result.steps} steps ({result.epochs:.1f} epochs, {result.train_seconds:.0f} s), "
        f"train loss {result.first_train_loss:.3g} -> {result.final_train_loss:.3g}"
    )


__all__ = [
    "DEFAULT_STEPS",
    "FINETUNE_TASKS",
    "METRICS",
    "Collator",
    "FinetuneConfig",
    "FinetuneResult",
    "LengthBatches",
    "finetune",
    "require_labels",
    "require_model",
    "summary",
]
