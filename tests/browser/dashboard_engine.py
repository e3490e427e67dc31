"""A fake engine for the dashboard tests: no torch, seconds per job, and events and a report.json of the
same shape as the real engine's (core/pipeline.py), so the page has curves, a CKA matrix with clusters and a
pruned architecture to draw.

Steered by the job spec (stage1_steps, stage2_steps, evaluate) and by SKILLKD_UI_FAKE_STEP_S (seconds per
step, default 0.1). The numbers are made up but deterministic (seeded by the spec's seed); nothing here is a
measurement. Used as `SKILLKD_ENGINE=dashboard_engine:DashboardFakeEngine` with tests/browser on PYTHONPATH.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import AudioError, SpecError, StopRequested, TeacherError
from core.events import Event

_AUDIO = {".wav", ".flac", ".ogg", ".mp3"}


def _layers(config: dict[str, Any]) -> tuple[list[dict[str, int]], list[int]]:
    n = int(config.get("num_hidden_layers", 12))
    heads = int(config.get("num_attention_heads", 12))
    ffn = int(config.get("intermediate_size", 3072))
    conv = [int(c) for c in config.get("conv_dim", [512] * 7)]
    return [{"heads": heads, "ffn": ffn} for _ in range(n)], conv


def _params(config: dict[str, Any]) -> int:
    """A Base-layout parameter count from the config (the weights file of a test teacher is a stub)."""
    d = int(config.get("hidden_size", 768))
    layers, conv = _layers(config)
    kernels = config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])
    total = sum(k * cin * cout for k, cin, cout in zip(kernels, [1, *conv[:-1]], conv)) + conv[-1] * d
    for layer in layers:
        total += 4 * d * d + 4 * d + 2 * d * layer["ffn"] + layer["ffn"] + d + 4 * d
    return total + 128 * d * d // 16


def _macs(params: int) -> float:
    return 50.0 * params  # 50 frames per second of audio, one multiply-accumulate per weight per frame


class DashboardFakeEngine:
    def __init__(self) -> None:
        self.step_s = float(os.environ.get("SKILLKD_UI_FAKE_STEP_S", "0.1"))

    def inspect_teacher(self, path: Path) -> dict[str, Any]:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise TeacherError("config.json not found or not JSON at the teacher's root") from exc
        if config.get("model_type") not in ("wav2vec2", "hubert", "wavlm"):
            raise TeacherError(
                f"unsupported model_type {config.get('model_type')!r}; expected wav2vec2, hubert or wavlm"
            )
        if not (path / "model.safetensors").is_file():
            raise TeacherError("no model.safetensors next to config.json")
        return {
            "architecture": config["model_type"],
            "layout": "base",
            "num_layers": int(config.get("num_hidden_layers", 12)),
            "hidden_size": int(config.get("hidden_size", 768)),
            "num_params": _params(config),
            "sample_rate": 16000,
        }

    def teacher_macs(self, path: Path, seconds: float) -> float:
        """MACs per audio second of the stand-in teacher (the Engine protocol's, for MACs targets)."""
        return _macs(self.inspect_teacher(path)["num_params"])

    def smallest_student(self, path: Path, seconds: float) -> dict[str, float]:
        """A stand-in floor: 1% of the teacher's parameters and MACs."""
        params = self.inspect_teacher(path)["num_params"]
        return {"params": 0.01 * params, "macs": 0.01 * _macs(params)}

    def task_head(self, path: Path, spec: Any, label_values: Any = None) -> dict[str, Any] | None:
        """The real engine's answer: a fine-tuned teacher's head read from its config and weights."""
        from core.inputs import head_facts

        return head_facts(path, spec, label_values)

    def scan_audio(self, source: Path) -> dict[str, Any]:
        import soundfile

        files, seconds, skipped, examples = 0, 0.0, {}, []
        for p in sorted(source.rglob("*")):
            if not p.is_file():
                continue
            reason = None
            if p.suffix.lower() not in _AUDIO:
                reason = "not_audio"
            else:
                try:
                    info = soundfile.info(str(p))
                    if info.duration < 0.5:
                        reason = "too_short"
                    else:
                        files += 1
                        seconds += info.duration
                except Exception:
                    reason = "unreadable"
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                examples.append({"path": str(p.relative_to(source)), "reason": reason})
        if not files:
            raise AudioError(f"no usable audio in the dataset (skipped: {skipped or 'no files'})")
        return {
            "files": files,
            "hours": seconds / 3600,
            "sample_rates": [16000],
            "skipped": skipped,
            "skipped_examples": examples[:20],
        }

    def run(self, spec, teacher, audio, workdir, *, calibration_audio=None, on_event=None, should_stop=None):
        emit = on_event or (lambda e: None)
        stop = should_stop or (lambda: False)
        if spec.device.startswith("cuda"):  # as the real engine answers on a machine without CUDA
            raise SpecError(f"device {spec.device!r} was asked for but CUDA is not available on this machine")
        workdir.mkdir(parents=True, exist_ok=True)
        config = json.loads((teacher / "config.json").read_text())
        rng = random.Random(spec.seed)
        teacher_layers, teacher_conv = _layers(config)
        n = len(teacher_layers)
        teacher_params = _params(config)
        target = spec.target_sparsity(teacher_params)
        steps1, steps2 = spec.stage1_steps or 30, spec.stage2_steps if spec.stage2_steps is not None else 10

        def check(where: str) -> None:
            if stop():
                raise StopRequested(f"stopped during {where}")

        # calibrate: a CKA matrix that decays with layer distance, and contiguous clusters
        emit(Event("stage_started", "calibrate"))
        cka = [
            [
                round(math.exp(-abs(i - j) / 5.0) * (1 - 0.02 * rng.random()) if i != j else 1.0, 4)
                for j in range(n + 1)
            ]
            for i in range(n + 1)
        ]
        for i in range(n + 1):
            for j in range(i):
                cka[i][j] = cka[j][i]
        if isinstance(spec.clusters, list):
            clusters = spec.clusters
        elif spec.method == "dphubert":  # DPHuBERT's fixed layers, as core.rules.dphubert_clusters
            clusters = [[i] for i in sorted({0, n // 3, 2 * n // 3, n})]
        else:
            k = spec.clusters if isinstance(spec.clusters, int) else 4
            bounds = [round(i * (n + 1) / k) for i in range(k + 1)]
            clusters = [list(range(bounds[i], bounds[i + 1])) for i in range(k)]
        for step in range(1, 4):
            check("calibrate")
            time.sleep(self.step_s)
            emit(Event("progress", "calibrate", step, 3))
        emit(Event("clusters", "calibrate", metrics={"clusters": clusters, "k": len(clusters)}))
        emit(Event("stage_finished", "calibrate"))

        # stage 1: the expected size follows the target's ramp from below and ends short of it, as a short
        # real run does (the dashboard's demo: 38% expected for a 75% target); finalize then lands on the
        # target
        emit(Event("stage_started", "distill_prune"))
        ramp = max(1, steps1 // 2)
        final1: dict[str, float] = {}
        started = time.monotonic()
        for step in range(1, steps1 + 1):
            check("distill_prune")
            time.sleep(self.step_s)
            t_now = target * min(1.0, step / ramp)
            sparsity = max(0.0, t_now * (0.5 + 0.1 * step / steps1) + 0.005 * rng.uniform(-1, 1))
            distill = -0.55 - 0.25 * (1 - math.exp(-step / 8)) + 0.01 * rng.uniform(-1, 1)
            lam1 = 0.5 * math.sin(step / 4) * math.exp(-step / 20)
            final1 = {
                "loss": distill + 0.2 * lam1 * (sparsity - t_now),
                "distill": distill,
                "sparsity": sparsity,
                "target_sparsity": t_now,
                "expected_params": teacher_params * (1 - sparsity),
                "expected_macs": _macs(teacher_params) * (1 - 0.9 * sparsity),
                "macs_sparsity": 0.9 * sparsity,
                "lambda1": lam1,
                "lambda2": abs(lam1) * 0.6,
                "lr": 5e-4,
                "audio_s_per_s": 3.2,
            }
            rate = step / max(time.monotonic() - started, 1e-6)
            emit(Event("progress", "distill_prune", step, steps1, (steps1 - step) / rate, dict(final1)))
        emit(Event("stage_finished", "distill_prune", metrics=final1))

        # finalize: heads and FFN units kept per layer, lower layers pruned less
        emit(Event("stage_started", "finalize"))
        keep = 1.0 - target
        student_layers = []
        for i, layer in enumerate(teacher_layers):
            f = min(1.0, max(0.0, keep * (1.6 - 1.2 * i / max(1, n - 1)) + 0.05 * rng.uniform(-1, 1)))
            student_layers.append(
                {"heads": max(0, round(layer["heads"] * min(1.0, f * 1.5))), "ffn": round(layer["ffn"] * f)}
            )
        student_conv = [round(c * (0.6 + 0.3 * rng.random())) for c in teacher_conv]
        student_params = round(teacher_params * (1 - target * (1 + 0.004 * rng.uniform(-1, 1))))
        check("finalize")
        emit(Event("stage_finished", "finalize", metrics={"num_params": student_params}))

        # stage 2
        emit(Event("stage_started", "final_distill"))
        final2: dict[str, float] = {}
        for step in range(1, steps2 + 1):
            check("final_distill")
            time.sleep(self.step_s)
            distill = final1["distill"] - 0.05 * (1 - math.exp(-step / 4)) + 0.005 * rng.uniform(-1, 1)
            final2 = {"loss": distill, "distill": distill, "lr": 3e-4, "audio_s_per_s": 3.5}
            emit(
                Event("progress", "final_distill", step, steps2, (steps2 - step) * self.step_s, dict(final2))
            )
        emit(Event("stage_finished", "final_distill", metrics=final2))

        # export
        emit(Event("stage_started", "export"))
        export = workdir / "student"
        export.mkdir(exist_ok=True)
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        (export / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(range(16)))
        (export / "config.json").write_text(json.dumps({"format": "skillkd-student", "fake": True}))
        # a smaller student is faster, less than in proportion (time no pruning removes), as real ones are
        rtf = round(0.21 * (0.1 + 0.9 * student_params / teacher_params), 4)
        speed = {"threads": 1, "teacher_rtf": 0.21, "student_rtf": rtf, "speedup": round(0.21 / rtf, 3)}
        report: dict[str, Any] = {
            "skillkd_version": "fake",
            "method": spec.method,
            "spec": spec.model_dump(mode="json"),
            "teacher": {
                "architecture": config["model_type"],
                "layout": "base",
                "num_layers": n,
                "num_params": teacher_params,
                "macs_per_second": _macs(teacher_params),
                "layers": teacher_layers,
                "conv_channels": teacher_conv,
            },
            "student": {
                "num_params": student_params,
                "macs_per_second": _macs(student_params),
                "layers": student_layers,
                "conv_channels": student_conv,
            },
            "task_head": self.task_head(teacher, spec),
            "target_sparsity": target,
            "achieved_sparsity": 1 - student_params / teacher_params,
            "clusters": clusters,
            "cka": cka,
            "stage1": {"steps": steps1, "final": final1},
            "stage2": {"steps": steps2, "final": final2},
            "finalize": {"num_params": student_params, "max_abs_diff_masked_vs_pruned": 2.9e-6},
            "speed": {"cpu_1_thread": speed},
            "fake": True,
        }
        if spec.evaluate:
            # a smaller student does worse, plus seed noise
            kept = student_params / teacher_params
            per, acc = 0.2 + 0.12 * (1 - kept) + 0.01 * rng.random(), 0.6 + 0.1 * kept + 0.02 * rng.random()
            report["evaluation"] = {
                "models": [
                    {
                        "name": "student",
                        "params": student_params,
                        "macs_per_second": _macs(student_params),
                        "pr": {"per": per},
                        "sid": {"accuracy": acc},
                        "speed": {"cpu": {"rtf": 0.08}},
                    }
                ]
            }
            report["evaluation_headline"] = {"eval_per": per, "eval_sid_accuracy": acc}
        (export / "report.json").write_text(json.dumps(report, indent=2))
        with open(export / "train_log.jsonl", "w") as log:
            log.write(json.dumps({"stage": "distill_prune", "step": steps1, **final1}) + "\n")
        emit(Event("stage_finished", "export"))
        if spec.evaluate:
            emit(Event("stage_started", "evaluate"))
            time.sleep(self.step_s)
            emit(Event("progress", "evaluate", 1, 1, 0.0, report["evaluation_headline"]))
            emit(Event("stage_finished", "evaluate", metrics=report["evaluation_headline"]))

        artifacts = {
            "model": export,
            "report.json": export / "report.json",
            "train_log": export / "train_log.jsonl",
            "onnx": export / "model.onnx",
        }
        (export / "model.onnx").write_bytes(b"not a real onnx graph: the dashboard only downloads it")
        return Result(export_dir=export, report=report, artifacts=artifacts)


@dataclass
class Result:
    """What the worker reads from an engine's run (the fields of the service's EngineResult)."""

    export_dir: Path
    report: dict[str, Any]
    artifacts: dict[str, Path]
