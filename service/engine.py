"""The boundary between the service and the compression engine.

`Engine` is what the API (upload validation) and the worker (jobs) need from `core`. `CoreEngine` calls the
real engine (imported lazily: torch is loaded only in the process that runs a job or checks an upload);
`FakeEngine` is a tiny in-process stand-in for tests, with the same resumable-workdir, event, stop and error
behaviour and no torch. `load_engine(path)` picks one from the `SKILLKD_ENGINE` setting.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.errors import AudioError, SkillkdError, StopRequested, TeacherError
from core.events import STAGES, Event
from core.spec import CompressionSpec
from service.settings import Settings


@dataclass
class EngineResult:
    export_dir: Path
    report: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)


class Engine(Protocol):
    def inspect_teacher(self, path: Path) -> dict[str, Any]:
        """architecture, layout, num_layers, hidden_size, num_params, sample_rate; raises TeacherError."""
        ...

    def teacher_macs(self, path: Path, seconds: float) -> float:
        """The teacher's multiply-accumulates per second of audio for one `seconds`-long utterance (what a
        `target_macs` is compared with); raises TeacherError."""
        ...

    def smallest_student(self, path: Path, seconds: float) -> dict[str, float]:
        """{"params", "macs"} (per audio second, for one `seconds`-long utterance) of the smallest student the
        teacher's layout allows: one channel per conv layer, no attention head or FFN unit (no size target
        below these can be met); raises TeacherError."""
        ...

    def task_head(
        self, path: Path, spec: CompressionSpec, label_values: dict[str, list[str] | None] | None = None
    ) -> dict[str, Any] | None:
        """What becomes of the teacher's task head under `spec` (core.inputs.JobInputs.head_facts: kept,
        dropped, or None without one); raises TeacherError for a head the engine cannot keep, SpecError for a
        spec that cannot keep it (a weighted head with prune_layers), or whose supervised term finds none of
        the head's labels in the dataset's `label_values` (its scan's, when known)."""
        ...

    def scan_audio(self, source: Path) -> dict[str, Any]:
        """AudioCatalog.summary(): files, hours, sample_rates (list), skipped (by reason), skipped_examples
        ([{path, reason}]), and optionally phone_labelled (items with phone labels); raises AudioError if
        nothing usable."""
        ...

    def run(
        self,
        spec: CompressionSpec,
        teacher: Path,
        audio: Path,
        workdir: Path,
        *,
        calibration_audio: Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> EngineResult:
        """Resumable in `workdir`; raises StopRequested or another SkillkdError."""
        ...

    def estimate(
        self, spec: CompressionSpec, teacher: Path, audio: Path, *, calibration_audio: Path | None = None
    ) -> dict[str, Any]:
        """A dry run (`core.estimate`): the job's inputs checked as a run checks them, the teacher's and the
        target student's sizes, the work and an estimated time; writes nothing; raises SkillkdError."""
        ...


class CoreEngine:
    """The real engine (`core.pipeline`, `core.models`, `core.data`)."""

    def warm(self) -> None:
        """Import what the API's job checks use (torch, transformers), so the first job creation does not."""
        import core.estimate  # noqa: F401
        import core.inputs  # noqa: F401
        import core.models  # noqa: F401

    def inspect_teacher(self, path: Path) -> dict[str, Any]:
        from core.models import inspect_teacher

        return dict(inspect_teacher(path))

    def teacher_macs(self, path: Path, seconds: float) -> float:
        from core.models import macs_per_second

        return macs_per_second(path, seconds)

    def task_head(
        self, path: Path, spec: CompressionSpec, label_values: dict[str, list[str] | None] | None = None
    ) -> dict[str, Any] | None:
        from core.inputs import head_facts

        return head_facts(path, spec, label_values)

    def smallest_student(self, path: Path, seconds: float) -> dict[str, float]:
        import torch

        from core.estimate import keep_fraction
        from core.models import build_model, is_student_dir, load_model
        from core.models.import_huggingface import config_from_hf, read_json

        if is_student_dir(path):
            config = load_model(path).config
        else:  # from the architecture alone, as teacher_macs counts (no weights read)
            pre = path / "preprocessor_config.json"
            config = config_from_hf(read_json(path / "config.json"), read_json(pre) if pre.exists() else None)
        with torch.device("meta"):
            student = build_model(config.with_masks(conv=True, heads=True, ffn=True))
        student = student.to_empty(device="cpu")  # only the shapes and the masks are used
        keep_fraction(student, 0.0)  # the dry run's uniform student at its floor (core.estimate)
        student.eval()
        with torch.no_grad():
            return {
                "params": float(student.expected_num_params()),
                "macs": float(student.expected_macs(seconds)),
            }

    def scan_audio(self, source: Path) -> dict[str, Any]:
        from core.data import scan_audio

        catalog = scan_audio(source)
        # whether a job with evaluate=true can run on it (the engine needs phone labels): checked at POST
        # /v1/jobs
        labelled = sum(1 for item in catalog.items if item.extra.get("arpabet"))
        # and whether its labels fit a classifier teacher's, when the job asks for the supervised term
        return {**catalog.summary(), "phone_labelled": labelled, "label_values": catalog.label_values()}

    def run(self, spec, teacher, audio, workdir, *, calibration_audio=None, on_event=None, should_stop=None):
        from core.pipeline import run

        result = run(
            spec,
            teacher,
            audio,
            workdir,
            calibration_audio=calibration_audio,
            on_event=on_event,
            should_stop=should_stop,
        )
        return EngineResult(
            export_dir=result.export_dir, report=dict(result.report), artifacts=dict(result.artifacts)
        )

    def estimate(self, spec, teacher, audio, *, calibration_audio=None):
        import torch

        from core.estimate import estimate

        note = None
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            # the API host may have no GPU while the workers do: check and time on this CPU instead
            note = f"timed on this host's CPU: the job's device {spec.device!r} is not available here"
            spec = spec.model_copy(update={"device": "cpu"})
        result = estimate(spec, teacher, audio, calibration_audio=calibration_audio)
        if note:
            result["note"] = note
        return result


_ARCHITECTURES = {"wav2vec2": "wav2vec2", "hubert": "hubert", "wavlm": "wavlm"}
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


class FakeEngine:
    """A stand-in engine for tests: checks teachers and audio cheaply, 'trains' a counter in the workdir.

    Behaviour knobs (constructor, or `Settings.fake_*` = SKILLKD_FAKE_* so a worker subprocess can be
    steered): `steps` per training stage, `step_s` sleep per step, `kill_at` SIGKILL the own process at that
    distill step, every attempt, `fail_code` raise that error, `ledger` a file that gets one line per
    completed run (to prove no job completes twice).
    """

    def __init__(
        self,
        *,
        steps: int = 8,
        step_s: float = 0.0,
        kill_at: int | None = None,
        fail_code: str | None = None,
        ledger: Path | None = None,
    ) -> None:
        self.steps, self.step_s, self.kill_at = steps, step_s, kill_at
        self.fail_code, self.ledger = fail_code or None, ledger
        self.runs = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> FakeEngine:
        return cls(
            steps=settings.fake_steps,
            step_s=settings.fake_step_s,
            kill_at=settings.fake_kill_at,
            fail_code=settings.fake_fail,
            ledger=settings.fake_ledger,
        )

    # -- validation ------------------------------------------------------------------------------------
    def inspect_teacher(self, path: Path) -> dict[str, Any]:
        config_path = path / "config.json"
        if not config_path.is_file():
            raise TeacherError("config.json not found at the teacher's root")
        try:
            config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise TeacherError(f"config.json is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise TeacherError("config.json is not a JSON object")
        arch = _ARCHITECTURES.get(str(config.get("model_type", "")))
        if arch is None:
            raise TeacherError(
                f"unsupported model_type {config.get('model_type')!r}; expected wav2vec2, hubert or wavlm"
            )
        weights = path / "model.safetensors"
        if not weights.is_file():
            if (path / "pytorch_model.bin").is_file():
                raise TeacherError("pytorch_model.bin: the fake engine reads safetensors only")
            raise TeacherError("no model.safetensors or pytorch_model.bin next to config.json")
        num_params = _safetensors_numel(weights)
        hidden = int(config.get("hidden_size", 768))
        return {
            "architecture": arch,
            "layout": "large" if hidden >= 1024 else "base",
            "num_layers": int(config.get("num_hidden_layers", 12)),
            "hidden_size": hidden,
            "num_params": num_params,
            "sample_rate": 16000,
        }

    def teacher_macs(self, path: Path, seconds: float) -> float:
        """A stand-in: 100 MACs per parameter per second of audio."""
        return 100.0 * _safetensors_numel(path / "model.safetensors")

    def task_head(
        self, path: Path, spec: CompressionSpec, label_values: dict[str, list[str] | None] | None = None
    ) -> dict[str, Any] | None:
        """The real engine's answer: it reads the head's config and weights alone (no encoder)."""
        from core.inputs import head_facts

        return head_facts(path, spec, label_values)

    def smallest_student(self, path: Path, seconds: float) -> dict[str, float]:
        """A stand-in: 1% of the teacher's parameters and of its MACs."""
        numel = _safetensors_numel(path / "model.safetensors")
        return {"params": 0.01 * numel, "macs": 0.01 * self.teacher_macs(path, seconds)}

    def scan_audio(self, source: Path) -> dict[str, Any]:
        import soundfile

        files, seconds = 0, 0.0
        rates: set[int] = set()
        skipped: dict[str, int] = {}
        examples: list[dict[str, str]] = []

        def skip(reason: str, p: Path) -> None:
            skipped[reason] = skipped.get(reason, 0) + 1
            if len(examples) < 20:
                examples.append({"path": str(p.relative_to(source)), "reason": reason})

        for p in sorted(source.rglob("*")):
            if not p.is_file() or p.name == "manifest.jsonl":
                continue
            if p.suffix.lower() not in _AUDIO_SUFFIXES:
                skip("not_audio", p)
                continue
            try:
                info = soundfile.info(str(p))
            except Exception:
                skip("unreadable", p)
                continue
            if info.duration < 0.5:
                skip("too_short", p)
                continue
            files += 1
            seconds += info.duration
            rates.add(int(info.samplerate))
        if files == 0:
            raise AudioError(f"no usable audio in the dataset (skipped: {skipped or 'no files'})")
        return {
            "files": files,
            "hours": seconds / 3600,
            "sample_rates": sorted(rates),
            "skipped": skipped,
            "skipped_examples": examples,
        }

    def estimate(self, spec, teacher, audio, *, calibration_audio=None):
        """The dry run's shape, from the cheap checks: a fake step takes `step_s`."""
        info = self.inspect_teacher(teacher)
        summary = self.scan_audio(audio)
        steps = {"stage1_steps": self.steps, "stage2_steps": 0 if spec.stage2_steps == 0 else self.steps}
        return {
            "dry_run": True,
            "engine": "fake",
            "teacher": info,
            "audio": summary,
            "work": steps,
            "estimated_seconds": {"total": (steps["stage1_steps"] + steps["stage2_steps"]) * self.step_s},
        }

    # -- the job ---------------------------------------------------------------------------------------
    def run(self, spec, teacher, audio, workdir, *, calibration_audio=None, on_event=None, should_stop=None):
        emit = on_event or (lambda e: None)
        stop = should_stop or (lambda: False)
        workdir.mkdir(parents=True, exist_ok=True)
        state_path = workdir / "fake_state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {"done": [], "step": {}}
        self.runs += 1

        def save() -> None:
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(state_path)

        stages = [s for s in STAGES if s != "evaluate"]
        for stage in stages:
            if stage in state["done"]:
                continue
            emit(Event("stage_started", stage))
            if stage == "calibrate":
                clusters = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
                (workdir / "clusters.json").write_text(json.dumps({"clusters": clusters}))
                emit(Event("clusters", stage, metrics={"clusters": clusters}))
            if stage in ("distill_prune", "final_distill"):
                total = self.steps
                for step in range(int(state["step"].get(stage, 0)) + 1, total + 1):
                    if stop():
                        raise StopRequested(f"stopped at {stage} step {step - 1}")
                    if self.fail_code == "training_diverged" and step == 2:
                        from core.errors import TrainingError

                        raise TrainingError(f"loss is nan at {stage} step {step}")
                    if self.fail_code == "internal" and step == 2:
                        raise RuntimeError("fake engine bug")
                    if stage == "distill_prune" and self.kill_at is not None and step == self.kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(self.step_s)
                    state["step"][stage] = step  # the checkpoint
                    save()
                    with open(workdir / "train_log.jsonl", "a") as log:
                        log.write(json.dumps({"stage": stage, "step": step, "loss": 1.0 / step}) + "\n")
                    emit(
                        Event(
                            "progress",
                            stage,
                            step=step,
                            total=total,
                            eta_s=(total - step) * self.step_s,
                            metrics={"loss": 1.0 / step, "sparsity": 0.75 * step / total},
                        )
                    )
            if stage == "export":
                export = workdir / "export"
                export.mkdir(exist_ok=True)
                (export / "config.json").write_text(json.dumps({"model_type": "hubert", "fake": True}))
                (export / "model.safetensors").write_bytes(_tiny_safetensors())
                report = {"teacher": str(teacher.name), "sparsity": spec.target_sparsity(1000), "fake": True}
                (export / "report.json").write_text(json.dumps(report))
                (workdir / "report.json").write_text(json.dumps(report))
                (workdir / "cka.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
            emit(Event("stage_finished", stage))
            state["done"].append(stage)
            save()
        if self.ledger is not None:
            with open(self.ledger, "a") as f:
                f.write(f"{workdir}\n")
        artifacts = {
            "model": workdir / "export",
            "report.json": workdir / "report.json",
            "cka.png": workdir / "cka.png",
            "clusters.json": workdir / "clusters.json",
            "train_log": workdir / "train_log.jsonl",
        }
        return EngineResult(
            export_dir=workdir / "export",
            report=json.loads((workdir / "report.json").read_text()),
            artifacts=artifacts,
        )


def _safetensors_numel(path: Path) -> int:
    """Parameter count from a safetensors header; a truncated or corrupt file is a TeacherError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TeacherError("model.safetensors is truncated (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise TeacherError("model.safetensors header is corrupt or truncated")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TeacherError(f"model.safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TeacherError("model.safetensors header is not an object")
    end, numel = 0, 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(meta["data_offsets"][1]))
            count = 1
            for d in meta["shape"]:
                count *= int(d)
            numel += count
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TeacherError(f"model.safetensors entry {name!r} is malformed") from exc
    if 8 + n + end != size:
        raise TeacherError(f"model.safetensors is truncated: {size} bytes, header promises {8 + n + end}")
    if numel == 0:
        raise TeacherError("model.safetensors holds no tensors")
    return numel


def _tiny_safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * 8


def load_engine(settings: Settings) -> Engine:
    """`settings.engine` (`module:Class`) -> an instance: `Class.from_settings(settings)` where the class has
    it, else `Class()`."""
    module_name, _, attr = settings.engine.partition(":")
    cls = getattr(importlib.import_module(module_name), attr or "CoreEngine")
    factory = getattr(cls, "from_settings", None)
    return factory(settings) if factory is not None else cls()


__all__ = ["Engine", "EngineResult", "CoreEngine", "FakeEngine", "load_engine", "SkillkdError"]
