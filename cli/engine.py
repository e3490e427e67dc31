"""Engine commands of `skillkd`: compress, analyze, inspect, export. They need no service.

The spec options of `compress` are generated from `CompressionSpec` (cli/spec_options.py), the same for
`skillkd submit`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import core
from cli.errors import fail
from cli.progress import ProgressBars
from cli.spec_options import build_spec, parse_clusters, spec_options
from core.errors import SkillkdError, StopRequested, TeacherError
from core.spec import target_words

ASSETS = Path(core.__file__).resolve().parent / "assets"
DEMO_TEACHER = ASSETS / "demo-teacher"
DEMO_AUDIO = ASSETS / "demo-audio"


def _stop_on_sigint() -> Callable[[], bool]:
    """First Ctrl-C asks the engine to stop cleanly (it saves a checkpoint); a second one aborts."""
    state = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        click.echo("\nstopping after the current step (Ctrl-C again to abort)…", err=True)

    signal.signal(signal.SIGINT, handler)
    return lambda: state["stop"]


def check_teacher_path(teacher: Path) -> None:
    """A file given as the teacher is named as one (exit 2): the engine's loader would only say that no
    teacher directory of that name exists."""
    if teacher.is_file():
        fail(
            TeacherError(
                f"teacher {teacher} is a file, not a directory: give the directory of a Hugging Face model "
                "(config.json with model.safetensors or pytorch_model.bin) or of a skillkd student"
            )
        )


@click.command()
@click.argument("teacher", required=False, type=click.Path(path_type=Path))
@click.argument("audio", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (default runs/<teacher>-<method>-<time>).",
)
@click.option("--demo", is_flag=True, help="Use the bundled demo teacher (hubert-mini) and demo audio.")
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option(
    "--calibration-audio",
    type=click.Path(path_type=Path),
    default=None,
    help="Separate audio for CKA calibration (default: AUDIO).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout; events as JSON lines."
)
@click.option("--quiet", is_flag=True)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the inputs as a real run would, then print the teacher's and the target student's "
    "size, the work and an estimated time from a few timed steps; write nothing.",
)
@spec_options
def compress(
    teacher: Path | None,
    audio: Path | None,
    out: Path | None,
    demo: bool,
    resume: bool,
    calibration_audio: Path | None,
    as_json: bool,
    quiet: bool,
    dry_run: bool,
    **spec_kw: Any,
) -> None:
    """Compress TEACHER (a Hugging Face directory) using the audio in AUDIO (a directory or manifest)."""
    if demo:
        teacher = teacher or DEMO_TEACHER
        audio = audio or DEMO_AUDIO
    if teacher is None or audio is None:
        raise click.UsageError("give TEACHER and AUDIO, or --demo")
    check_teacher_path(teacher)
    spec = build_spec(spec_kw)
    if dry_run:
        _dry_run(spec, teacher, audio, calibration_audio, as_json, quiet)
        return
    launched = _join_launched_group()
    if launched is not None:
        rank, world, device = launched
        if rank != 0:  # this rank trains what rank 0 sends it; rank 0 writes everything
            _follow(rank, world, device)
            return
        if spec.gpus not in (1, world):
            raise click.UsageError(f"--gpus {spec.gpus} but the launcher started {world} processes")
        spec = spec.model_copy(update={"gpus": world})
        if out is not None and _restarted_launch(out):
            resume = True  # the launcher restarted the group after a rank died: continue from the checkpoint
            click.echo(f"the launcher restarted the group: resuming the run in {out}", err=True)
    if out is None:
        if resume:
            raise click.UsageError("--resume needs --out (the run directory to continue)")
        out = Path("runs") / f"{teacher.resolve().name}-{spec.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    elif out.exists() and any(out.iterdir()) and not resume:
        raise click.UsageError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    from core.pipeline import run

    if launched is not None:
        _mark_launch(out)
    bars = ProgressBars(json_lines=as_json, quiet=quiet)
    should_stop = _stop_on_sigint()
    started = time.monotonic()
    try:
        result = run(
            spec,
            teacher,
            audio,
            out,
            calibration_audio=calibration_audio,
            on_event=bars,
            should_stop=should_stop,
        )
    except StopRequested as exc:
        bars.close()
        click.echo(
            f"{exc.message}\nresume with: skillkd compress {teacher} {audio} --out {out} --resume "
            "(and the same options)",
            err=True,
        )
        sys.exit(130)
    except SkillkdError as exc:
        bars.close()
        fail(exc)
    finally:
        if launched is not None:
            _release_followers()
    bars.close()
    report = result.report
    summary = {
        "student": str(result.export_dir),
        "report": str(result.export_dir / "report.json"),
        "teacher_params": report["teacher"]["num_params"],
        "student_params": report["student"]["num_params"],
        "achieved_sparsity": round(report["achieved_sparsity"], 4),
        "clusters": report["clusters"],
        "seconds": round(time.monotonic() - started, 1),
    }
    speed = report.get("speed") or {}
    if speed:
        summary["macs_ratio"] = round(speed["macs_ratio"], 3)
        if "cpu_1_thread" in speed:
            summary["speedup_cpu_1_thread"] = round(speed["cpu_1_thread"]["speedup"], 3)
    latency = report.get("latency")
    if latency:
        landing = latency.get("landing")
        at_landing = landing.get("measured_speedup") if isinstance(landing, dict) else None
        summary["latency"] = {
            "target": latency["target"],
            "threads": latency["threads"],
            "target_speedup": latency["target_speedup"],
            "predicted_speedup": latency["predicted_speedup"],
            "landing_measured_speedup": at_landing,
            "measured_speedup": latency["measured_speedup"],
        }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        t, s = summary["teacher_params"], summary["student_params"]
        click.echo(
            f"\nstudent: {summary['student']}\nreport:  {summary['report']}\n"
            f"params:  {s:,} of {t:,} ({100 * s / t:.1f}% of the teacher, sparsity "
            f"{summary['achieved_sparsity']:.3f})\nclusters: {summary['clusters']}\n"
            f"time:    {summary['seconds']} s"
        )
        if speed:
            # formatted from the unrounded figures: rounding twice (3 places, then 2) can differ from the
            # report
            faster = (
                f", {speed['cpu_1_thread']['speedup']:.2f}x faster on one CPU thread (measured, "
                f"{speed['protocol']['utterance_seconds']:g} s utterance)"
                if "cpu_1_thread" in speed
                else ""
            )
            click.echo(f"speed:   {speed['macs_ratio']:.2f}x fewer MACs than the teacher{faster}")
        if latency:
            click.echo(latency_line(summary["latency"]))


def latency_line(latency: dict[str, Any]) -> str:
    """A latency budget's outcome in one line: asked, predicted, timed at landing, timed in the report."""
    figures = [f"{latency['predicted_speedup']:.2f}x predicted"]
    if latency["landing_measured_speedup"] is not None:
        figures.append(f"{latency['landing_measured_speedup']:.2f}x measured at landing")
    if latency["measured_speedup"] is not None:
        figures.append(f"{latency['measured_speedup']:.2f}x measured in the report")
    where = target_words(latency["target"], latency["threads"])
    return f"latency: {latency['target_speedup']:g}x asked on {where}: " + ", ".join(figures)


def _join_launched_group() -> tuple[int, int, Any] | None:
    """Under a launcher (torchrun, srun with torchrun, a PyTorchJob: WORLD_SIZE > 1), join its process group:
    (rank, world size, device); else None."""

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from core.distill.parallel import join_launched_group

    try:
        return join_launched_group()
    except SkillkdError as exc:
        fail(exc)


LAUNCH_FILE = "launch.json"  # which launch (torchrun's run id) started the run in a directory


def _mark_launch(out: Path) -> None:
    """Rank 0 of a launched group: record the launch in the run directory, so that a restart of the same
    launch (a rank died; torchrun --max-restarts) resumes it and nothing else does."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
    }
    (out / LAUNCH_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _restarted_launch(out: Path) -> bool:
    """Whether this process belongs to the launch that started the run in `out` (its run directory's
    `launch.json` names the launch's TORCHELASTIC_RUN_ID): the launcher restarted the group, after a rank died
    or for a new membership, and the run resumes. Whatever this node's restart count says: node agents count
    restarts differently (one whose ranks did not fail restarts them without counting). A first attempt that
    failed before the run started (e.g. `out` held another run) left no record of this launch, and its
    restart fails the same way; a new launch has another run id (torchrun --standalone makes one; with
    several nodes, give --rdzv-id)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id:
        return False
    try:
        record = json.loads((out / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(record.get("run_id") == run_id)


def _follow(rank: int, world: int, device: Any) -> None:
    from core.distill.parallel import follow_stages

    try:
        follow_stages(rank, world, device)
    except SkillkdError as exc:
        fail(exc)


def _release_followers() -> None:
    from core.distill.parallel import release_followers

    release_followers()


def _dry_run(
    spec: Any, teacher: Path, audio: Path, calibration_audio: Path | None, as_json: bool, quiet: bool
) -> None:
    from core.estimate import estimate, render

    bars = ProgressBars(json_lines=as_json, quiet=quiet)
    try:
        result = estimate(spec, teacher, audio, calibration_audio=calibration_audio, on_event=bars)
    except SkillkdError as exc:
        bars.close()
        fail(exc)
    click.echo(json.dumps(result, indent=2) if as_json else render(result))


@click.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("audio", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--clusters", default="4", show_default=True, help="k, 'auto', or explicit groups.")
@click.option("--linkage", type=click.Choice(["average", "single", "complete", "ward"]), default="average")
@click.option("--non-contiguous", is_flag=True)
@click.option("--calibration-utterances", type=int, default=200, show_default=True)
@click.option("--calibration-seconds", type=float, default=1800.0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def analyze(
    teacher: Path,
    audio: Path,
    out: Path,
    clusters: str,
    linkage: str,
    non_contiguous: bool,
    calibration_utterances: int,
    calibration_seconds: float,
    device: str,
    as_json: bool,
) -> None:
    """Measure linear CKA between all of TEACHER's layers on AUDIO and cluster them (plots +
    clusters.json)."""
    from pydantic import ValidationError

    from core.calibrate.stage import calibrate
    from core.data import scan_audio
    from core.inputs import select_device
    from core.models import load_model
    from core.spec import CompressionSpec

    try:
        spec = CompressionSpec(
            clusters=parse_clusters(clusters),  # type: ignore[arg-type]
            linkage=linkage,  # type: ignore[arg-type]
            contiguous=not non_contiguous,
            calibration_utterances=calibration_utterances,
            calibration_seconds=calibration_seconds,
            device=device,
        )
    except (ValidationError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    check_teacher_path(teacher)
    bars = ProgressBars(json_lines=as_json)
    try:
        dev = select_device(spec.device)
        model = load_model(teacher).to(dev)
        catalog = scan_audio(audio)
        info = calibrate(spec, model, catalog, out, dev, bars, _stop_on_sigint())
    except SkillkdError as exc:
        bars.close()
        fail(exc)
    bars.close()
    result = {
        "clusters": info["clusters"],
        "cka_png": str(out / "cka.png"),
        "clusters_json": str(out / "clusters.json"),
        "utterances": info["utterances"],
        "audio_seconds": round(info["audio_seconds"], 1),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"clusters: {result['clusters']}\nplot:     {result['cka_png']}\n"
            f"data:     {result['clusters_json']} ({result['utterances']} utterances, "
            f"{result['audio_seconds']} s of audio)"
        )


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True, max=600),
    default=10.0,
    show_default=True,
    help="Utterance length the MACs are counted for (attention grows with its square).",
)
@click.option("--json", "as_json", is_flag=True)
def inspect(path: Path, seconds: float, as_json: bool) -> None:
    """Print the architecture of a teacher or an exported student, per layer, with parameter counts and
    multiply-accumulates per second of audio (for a SECONDS-long utterance: attention grows with its
    square)."""
    from core.evaluation.run import format_count
    from core.models import is_student_dir, load_model

    try:
        model = load_model(path)
        macs = model.macs_by_part(seconds)
    except SkillkdError as exc:
        fail(exc)
    except ValueError as exc:  # an utterance shorter than one frame
        raise click.BadParameter(str(exc), param_hint="--seconds") from None
    cfg = model.config
    layers = []
    for i, (layer, layer_macs) in enumerate(zip(model.layers(), macs["layers"])):
        att = sum(p.numel() for p in layer.attention.parameters())
        ffn = sum(p.numel() for p in layer.feed_forward.parameters())
        layers.append(
            {
                "layer": i + 1,
                "heads": layer.attention.num_heads,
                "ffn": layer.feed_forward.ffn_dim,
                "attention_params": att,
                "ffn_params": ffn,
                "attention_macs_per_second": layer_macs["attention"],
                "ffn_macs_per_second": layer_macs["ffn"],
            }
        )
    conv = [
        {"layer": i, "channels": c.out_channels, "kernel": c.kernel, "stride": c.stride, "macs_per_second": m}
        for i, (c, m) in enumerate(zip(cfg.conv, macs["conv"]))
    ]
    by_part = {
        "conv": sum(macs["conv"]),
        "feature_projection": macs["feature_projection"],
        "positional_conv": macs["positional_conv"],
        "attention": sum(row["attention_macs_per_second"] for row in layers),
        "ffn": sum(row["ffn_macs_per_second"] for row in layers),
    }
    info = {
        "path": str(path),
        "kind": "student" if is_student_dir(path) else "teacher",
        "architecture": cfg.architecture,
        "layout": "large" if cfg.layer_norm_first else "base",
        "hidden_size": cfg.hidden_size,
        "num_params": model.num_params(),
        "feature_extractor_params": sum(p.numel() for p in model.feature_extractor.parameters()),
        "macs": {"utterance_seconds": seconds, "per_second": macs["total"], "by_part": by_part},
        "conv": conv,
        "layers": layers,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    total = macs["total"]
    click.echo(
        f"{info['kind']} {cfg.architecture} ({info['layout']} layout), hidden {cfg.hidden_size}, "
        f"{info['num_params']:,} parameters, {format_count(total)} MACs per second of audio "
        f"({seconds:g} s utterance)"
    )
    labels = {
        "conv": "conv",
        "feature_projection": "feature projection",
        "positional_conv": "positional conv",
        "attention": "attention",
        "ffn": "FFN",
    }
    click.echo(
        "MACs by part: "
        + ", ".join(
            f"{labels[name]} {format_count(value)} ({100 * value / max(total, 1e-9):.1f}%)"
            for name, value in by_part.items()
        )
    )
    click.echo(f"conv extractor ({info['feature_extractor_params']:,} params):")
    click.echo(f"{'conv':>5} {'channels':>8} {'kernel':>6} {'stride':>6} {'MACs/s':>9}")
    for c in conv:
        click.echo(
            f"{c['layer']:>5} {c['channels']:>8} {c['kernel']:>6} {c['stride']:>6} "
            f"{format_count(c['macs_per_second']):>9}"
        )
    click.echo(
        f"{'layer':>5} {'heads':>5} {'ffn':>6} {'attn params':>12} {'ffn params':>12} "
        f"{'attn MACs/s':>12} "
        f"{'ffn MACs/s':>11}"
    )
    for row in layers:
        click.echo(
            f"{row['layer']:>5} {row['heads']:>5} {row['ffn']:>6} {row['attention_params']:>12,} "
            f"{row['ffn_params']:>12,} {format_count(row['attention_macs_per_second']):>12} "
            f"{format_count(row['ffn_macs_per_second']):>11}"
        )


@click.command("export")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf"]),
    default=None,
    help="hf: a transformers model directory (AutoModel with trust_remote_code=True) in --out.",
)
@click.option(
    "--onnx",
    "onnx_variants",
    type=str,
    default=None,
    is_flag=False,
    flag_value="fp32",
    help="ONNX variants, e.g. fp32,fp16,int8 (alone: fp32), each verified against PyTorch fp32 and "
    "written only if it passes its gate. Files go to --out (with --format hf: --out/onnx/), "
    "else PATH. Without it, --format hf copies the variants the run already verified next to the student.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output directory (required with --format hf).",
)
@click.option(
    "--audio",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Audio for the ONNX checks (held-out utterances, int8 calibration, PER when it has phone "
    "labels); default: the bundled demo audio.",
)
@click.option(
    "--int8-mode",
    type=click.Choice(["dynamic", "static", "static_conv"]),
    default=None,
    help="int8 quantisation: dynamic, static (MatMul, calibrated on --audio) or static_conv (the conv front "
    "end too: faster, less faithful; kept only if it passes the int8 gate) [default: static_conv for a "
    "student trained --int8-aware, else dynamic].",
)
@click.option("--json", "as_json", is_flag=True)
def export_cmd(
    path: Path,
    fmt: str | None,
    onnx_variants: str | None,
    out: Path | None,
    audio: Path | None,
    int8_mode: str | None,
    as_json: bool,
) -> None:
    """Export a student (or teacher) as a transformers model directory and/or verified ONNX files."""
    from core.export.for_users import carry_verified_onnx, export_for_users
    from core.export.hf import is_hf_export_dir
    from core.export.onnx import parse_onnx_variants, student_int8_mode
    from core.models import load_model

    if fmt is None and onnx_variants is None:
        raise click.UsageError("nothing to export: pass --format hf --out DIR and/or --onnx [fp32,fp16,int8]")
    if fmt == "hf" and out is None:
        raise click.UsageError("--format hf needs --out DIR")
    try:
        variants = parse_onnx_variants(onnx_variants)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--onnx") from None
    hf_dir = out if fmt == "hf" else None
    onnx_dir = out if out is not None and hf_dir is None else path
    if hf_dir is not None and (hf_dir.resolve() == path.resolve()):
        raise click.UsageError("--out must differ from the student directory")
    if hf_dir is not None and hf_dir.is_dir() and any(hf_dir.iterdir()) and not is_hf_export_dir(hf_dir):
        raise click.UsageError(
            f"--out {hf_dir.name} is not empty and is not a skillkd Hugging Face export: "
            "choose a new or empty directory"
        )
    audio = audio if audio is not None else DEMO_AUDIO
    try:
        model = load_model(path)
        if hf_dir is not None and variants:  # the ONNX files go inside the hf export, under their Hub names
            onnx_dir = hf_dir / "onnx.tmp"
        info = export_for_users(
            model, onnx_dir, hf_dir, variants, audio=audio, int8_mode=int8_mode or student_int8_mode(path)
        )
        if hf_dir is not None and variants:
            shutil.rmtree(onnx_dir, ignore_errors=True)
            onnx_dir = hf_dir / "onnx"
        elif hf_dir is not None:  # no new variants asked for: carry those the run verified
            info["carried_onnx"] = {
                v: str(hf_dir / "onnx" / name) for v, name in carry_verified_onnx(path, hf_dir).items()
            }
    except SkillkdError as exc:
        fail(exc)
    if "hf" in info:
        info["hf"]["path"] = str(hf_dir)
    if "onnx" in info:
        info["onnx"]["files"] = {v: str(onnx_dir / name) for v, name in info["onnx"]["files"].items()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if "hf" in info:
        click.echo(
            f"wrote {info['hf']['path']} (transformers: AutoModel.from_pretrained(DIR, "
            "trust_remote_code=True))"
        )
    for variant, figures in info.get("onnx", {}).get("variants", {}).items():
        line = (
            f"{variant:>4}: {figures['file']:<22} {figures['size_bytes'] / 1e6:7.2f} MB  min CKA "
            f"{figures['min_cka']:.5f}  min cosine {figures['min_cosine']:.5f}"
        )
        if "per" in figures:
            line += f"  PER {figures['per']:.4f}"
        if "rtf_cpu_1_thread" in figures:
            line += f"  RTF 1 thread {figures['rtf_cpu_1_thread']:.4f}"
        click.echo(line + ("  ok" if figures["status"] == "ok" else f"  NOT WRITTEN: {figures['reason']}"))
    for note in info.get("onnx", {}).get("notes", []):
        click.echo(f"note: {note}")
    for variant, carried in info.get("carried_onnx", {}).items():
        click.echo(f"{variant:>4}: {carried} (verified when the student was exported; copied)")


COMMANDS = (compress, analyze, inspect, export_cmd)

__all__ = ["COMMANDS", "DEMO_AUDIO", "DEMO_TEACHER", "compress", "analyze", "inspect", "export_cmd"]
