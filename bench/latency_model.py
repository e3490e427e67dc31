"""Does the latency cost model (`core.models.latency.CostModel`, what `--target-speedup` lands on) predict
real speed, and better than MACs or parameters? Held-out pruned shapes of a teacher, timed against it.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 python -m bench.latency_model \\
        ../shared/teachers/hubert-mini ../shared/teachers/wavlm-mini \\
        --json bench/results/latency_model.json --markdown bench/results/latency_model.md

For each teacher directory (one or more; each in turn, everything below per teacher):

1. fit: the cost model fitted as a `--target-speedup` run fits it (`core.calibrate.latency.fit_cost_model`:
   the teacher and `--shapes` random pruned shapes of it, seed 0, timed in interleaved rounds on one 10 s
   utterance with `--threads` threads, NNLS), fresh (the run's cache is neither read nor written);
2. validation: `--holdout` *other* random pruned shapes (`random_shapes`, seed 1000: none was fitted on) and
   the teacher, timed the same way (`interleaved_times`, the protocol of `cpu_timer`: one untimed pass of
   each, then `--rounds` timed passes, the order reversed every round; the median per model);
3. per held-out shape: the measured speed-up over the teacher (teacher median / shape median) and three
   predictions of it: the cost model's (predicted teacher seconds / predicted shape seconds), MACs' (teacher
   MACs / shape MACs, `SpeechEncoder.expected_macs` in eval mode, the 10 s utterance) and parameters'; each
   prediction's relative error (predicted / measured - 1). Summary per predictor: mean and max |relative
   error| and the Spearman rank correlation with the measured speed-up over the held-out shapes. The cost
   model's absolute seconds are compared with the measured ones too (that error includes any drift of the
   machine's speed between the fit and the validation, which speed-ups cancel).

The fit's own record is kept: coefficients, in-sample errors and the teacher's predicted time split by
feature (`teacher_by_feature_s`), i.e. where the teacher's time goes per the model (conv front end, attention,
FFN, the fixed rest). The 1-minute load average is recorded before and after each teacher: measure on an idle
machine (a busy one slows the models unevenly, whatever the interleaving).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.output import write_outputs
from core.calibrate.latency import cpu_model, default_rounds, default_shapes, fit_cost_model, random_shapes
from core.evaluation.speed import available_cores, interleaved_times, torch_threads
from core.export.onnx import LATENCY_TIMERS
from core.models import SpeechEncoder, load_model
from core.models.latency import ATTENTION, FFN, INTERCEPT
from core.spec import SPEED_TARGETS

SECONDS = 10.0
FIT_SEED = 0
HOLDOUT_SEED = 1000
PREDICTORS = ("cost_model", "macs", "params")


def macs(model: SpeechEncoder, seconds: float = SECONDS) -> float:
    """MACs per second of audio of `model` for one `seconds`-long utterance, eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(model.expected_macs(seconds))
    finally:
        model.train(was_training)


def feature_part(name: str) -> str:
    """Where a cost-model feature's time goes: conv front end, attention, FFN or the fixed rest."""
    if name == INTERCEPT:
        return "fixed (intercept: positional conv, norms, residuals, overhead)"
    if name == ATTENTION:
        return "attention"
    if name == FFN:
        return "ffn"
    return "conv front end (with the feature projection)"


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


def spearman(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Spearman's rank correlation, None where it is undefined (under 2 shapes, or a constant series)."""
    if len(predicted) < 2 or len(set(predicted)) < 2 or len(set(measured)) < 2:
        return None
    return _finite(float(spearmanr(predicted, measured)[0]))


def bench_teacher(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    teacher = load_model(directory).eval()
    make_timer = LATENCY_TIMERS.get(args.target)
    cost_model, fit = fit_cost_model(
        teacher,
        target=args.target,
        make_timer=make_timer,
        threads=args.threads,
        seconds=SECONDS,
        shapes=args.shapes,
        rounds=args.fit_rounds,
        seed=FIT_SEED,
    )
    fitted = {json.dumps({k: row[k] for k in ("layers", "conv_channels")}) for row in fit["shapes"]}
    shapes = random_shapes(teacher, args.holdout, seed=HOLDOUT_SEED)
    models = {"teacher": copy.deepcopy(teacher).cpu(), **{f"holdout{i + 1}": m for i, m in enumerate(shapes)}}
    if make_timer is not None:  # another runtime: the fit's own timer, `rounds` passes each
        medians = make_timer(SECONDS, args.threads, args.rounds)(list(models.values()))
        median = dict(zip(models, medians))
        times: dict[str, list[float]] = {}  # the timer gives medians only
    else:
        with torch_threads(args.threads):
            times = interleaved_times(models, device="cpu", seconds=SECONDS, runs=args.rounds, warmup=1)
        median = {name: statistics.median(values) for name, values in times.items()}

    base = models["teacher"]
    base_predicted = cost_model.predict_seconds(base)
    base_macs, base_params = macs(base), base.num_params()
    rows = []
    for name, model in models.items():
        predicted_s = cost_model.predict_seconds(model)
        measured = median["teacher"] / median[name]
        predicted = {
            "cost_model": base_predicted / predicted_s,
            "macs": base_macs / macs(model),
            "params": base_params / model.num_params(),
        }
        units = model.config.unit_counts()
        rows.append(
            {
                "model": name,
                **units,
                "in_fit": json.dumps(units) in fitted,
                "params": model.num_params(),
                "macs_per_s": macs(model),
                "measured_s": median[name],
                "times_s": [round(t, 6) for t in times[name]] if name in times else None,
                "cost_model_s": predicted_s,
                "cost_model_s_relative_error": predicted_s / median[name] - 1.0,
                "measured_speedup": measured,
                "predicted_speedup": predicted,
                "relative_error": {k: v / measured - 1.0 for k, v in predicted.items()},
            }
        )
    held = [r for r in rows if r["model"] != "teacher"]
    measured_speedups = [r["measured_speedup"] for r in held]
    summary: dict[str, Any] = {}
    for predictor in PREDICTORS:
        errors = [abs(r["relative_error"][predictor]) for r in held]
        summary[predictor] = {
            "mean_abs_relative_error": float(np.mean(errors)) if errors else None,
            "max_abs_relative_error": float(np.max(errors)) if errors else None,
            "spearman": spearman([r["predicted_speedup"][predictor] for r in held], measured_speedups),
        }
    seconds_errors = [abs(r["cost_model_s_relative_error"]) for r in rows]
    summary["cost_model_seconds"] = {
        "mean_abs_relative_error": float(np.mean(seconds_errors)),
        "max_abs_relative_error": float(np.max(seconds_errors)),
    }
    by_part: dict[str, float] = {}
    for feature, value in fit["teacher_by_feature_s"].items():
        by_part[feature_part(feature)] = by_part.get(feature_part(feature), 0.0) + value
    return {
        "teacher": str(directory),
        "architecture": {
            "layers": teacher.num_layers,
            "hidden_size": teacher.config.hidden_size,
            "conv_layers": len(teacher.config.conv),
            "params": teacher.num_params(),
            "macs_per_s": base_macs,
        },
        "fit": {
            "cost_model": cost_model.to_dict(),
            "fitted_shapes": len(fit["shapes"]) - 1,
            **fit,
            "teacher_by_part_s": by_part,
        },
        "validation": {
            "holdout": len(shapes),
            "seed": HOLDOUT_SEED,
            "rounds": args.rounds,
            "warmup": 1,
            "held_out_in_fit": sum(r["in_fit"] for r in held),
            "rows": rows,
            "summary": summary,
        },
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.monotonic() - start, 1),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _abs_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _rho(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_teacher(result: dict[str, Any]) -> list[str]:
    fit, val = result["fit"], result["validation"]
    teacher_row = fit["shapes"][0]
    arch = result["architecture"]
    load = result["loadavg_1min_before_after"]
    lines = [
        f"## {Path(result['teacher']).name}",
        "",
        f"`{result['teacher']}`: {arch['layers']} layers, hidden {arch['hidden_size']}, "
        f"{arch['params'] / 1e6:.2f} M parameters, {arch['macs_per_s'] / 1e9:.2f} GMACs per audio second. "
        f"Fit: the teacher and {fit['fitted_shapes']} shapes (seed {fit['seed']}), {fit['rounds']} timed "
        f"round(s), {fit['fit_seconds']:.0f} s; validation: the teacher and {val['holdout']} other shapes "
        f"(seed {val['seed']}; {val['held_out_in_fit']} of them also in the fit), {val['rounds']} timed "
        f"round(s) after {val['warmup']} warm-up. Load average (1 min) before/after: {load[0]:.2f} / "
        f"{load[1]:.2f}; {result['seconds']:.0f} s in all.",
        "",
        "Predicting held-out speed-ups over the teacher (relative error = predicted / measured - 1):",
        "",
        "| predictor | mean abs. rel. error | max abs. rel. error | Spearman vs measured |",
        "|---|---|---|---|",
    ]
    labels = {"cost_model": "cost model", "macs": "MACs", "params": "parameters"}
    for predictor in PREDICTORS:
        s = val["summary"][predictor]
        lines.append(
            f"| {labels[predictor]} | {_abs_pct(s['mean_abs_relative_error'])} | "
            f"{_abs_pct(s['max_abs_relative_error'])} | {_rho(s['spearman'])} |"
        )
    seconds = val["summary"]["cost_model_seconds"]
    lines += [
        "",
        f"The cost model's absolute seconds against the measured ones (the teacher included): mean abs. "
        f"relative error {_abs_pct(seconds['mean_abs_relative_error'])}, max "
        f"{_abs_pct(seconds['max_abs_relative_error'])}; in-sample on its own fit "
        f"{_abs_pct(fit['mean_abs_relative_error'])} mean, {_abs_pct(fit['max_abs_relative_error'])} max.",
        "",
        "| model | heads | FFN units | conv channels | measured ms | cost model ms | measured speed-up | "
        "cost model | MACs | params |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in val["rows"]:
        p, e = r["predicted_speedup"], r["relative_error"]
        heads, ffn = sum(x["heads"] for x in r["layers"]), sum(x["ffn"] for x in r["layers"])
        lines.append(
            f"| {r['model']} | {heads} | {ffn} | "
            f"{sum(r['conv_channels'])} | {1000 * r['measured_s']:.1f} | {1000 * r['cost_model_s']:.1f} | "
            f"{r['measured_speedup']:.2f}x | {p['cost_model']:.2f}x ({_pct(e['cost_model'])}) | "
            f"{p['macs']:.2f}x ({_pct(e['macs'])}) | {p['params']:.2f}x ({_pct(e['params'])}) |"
        )
    total = sum(fit["teacher_by_feature_s"].values())
    lines += [
        "",
        f"Where the teacher's time goes per the cost model (predicted {1000 * total:.1f} ms; measured in the "
        f"fit {1000 * teacher_row['measured_s']:.1f} ms):",
        "",
        "| feature | coefficient | teacher ms | share |",
        "|---|---|---|---|",
    ]
    coefficients = fit["cost_model"]["coefficients"]
    for feature, value in fit["teacher_by_feature_s"].items():
        share = value / total if total > 0 else 0.0
        lines.append(f"| {feature} | {coefficients[feature]:.4g} | {1000 * value:.1f} | {100 * share:.1f}% |")
    for part, value in fit["teacher_by_part_s"].items():
        share = value / total if total > 0 else 0.0
        lines.append(f"| **{part}** | | **{1000 * value:.1f}** | **{100 * share:.1f}%** |")
    return [*lines, ""]


def format_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Latency cost model vs MACs vs parameters: predicting held-out speed-ups",
        "",
        f"`{report['command']}`",
        "",
        f"One {report['seconds']:g} s utterance, batch 1, "
        f"{'int8 (static_conv files)' if report.get('target') == 'onnx-int8' else 'fp32'}, "
        f"{'onnxruntime' if report.get('target', 'cpu') != 'cpu' else 'PyTorch'} on the CPU with "
        f"{report['threads']} thread(s) (target {report.get('target', 'cpu')}); CPU {m['cpu']} "
        f"({m['cpus']} CPUs, {m['available_cores']} available); torch "
        f"{m['torch']}; OMP_NUM_THREADS={m['omp_num_threads']}; load average (1 min) before/after: "
        f"{report['loadavg_1min_before_after'][0]:.2f} / {report['loadavg_1min_before_after'][1]:.2f}.",
        "",
    ]
    for result in report["teachers"]:
        lines += format_teacher(result)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teachers", type=Path, nargs="+", help="teacher directories (Hugging Face), each in turn")
    p.add_argument(
        "--shapes", type=int, default=None, help="fitted shapes (default: what --target-speedup fits)"
    )
    p.add_argument(
        "--fit-rounds", type=int, default=None, help="timed rounds of the fit (default: --target-speedup's)"
    )
    p.add_argument("--holdout", type=int, default=12, help="held-out shapes")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of the validation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", choices=SPEED_TARGETS, default="cpu", help="the speed target (speed_target)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    args.shapes = default_shapes() if args.shapes is None else args.shapes
    args.fit_rounds = default_rounds() if args.fit_rounds is None else args.fit_rounds
    if min(args.shapes, args.fit_rounds, args.holdout, args.rounds, args.threads) < 1:
        p.error("--shapes, --fit-rounds, --holdout, --rounds and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    results = []
    for teacher in args.teachers:
        results.append(bench_teacher(teacher, args))
        s = results[-1]["validation"]["summary"]
        print(
            f"{teacher}: mean |rel. error| of the speed-up: "
            + ", ".join(f"{k} {_abs_pct(s[k]['mean_abs_relative_error'])}" for k in PREDICTORS),
            flush=True,
        )
    report = {
        "command": "python -m bench.latency_model " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": SECONDS,
        "target": args.target,
        "threads": args.threads,
        "shapes": args.shapes,
        "fit_rounds": args.fit_rounds,
        "holdout": args.holdout,
        "rounds": args.rounds,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "available_cores": available_cores(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "teachers": results,
    }
    write_outputs(report, format_markdown(report), args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()
