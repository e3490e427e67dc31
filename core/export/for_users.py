"""The ways out besides our own format: the Hugging Face export and the verified ONNX variants, checked on a
job's own audio (held-out utterances, int8 calibration, a PER probe when the audio has phone labels)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.data import load_waveform, scan_audio
from core.errors import AudioError, CheckpointError
from core.export.hf import is_hf_export_dir, save_hf_export
from core.export.onnx import DEFAULT_INT8_MODE, ONNX_FILES, export_onnx_variants, parse_onnx_variants
from core.export.student import world_readable
from core.models import SpeechEncoder
from core.models.heads import TaskHead


def held_out_audio(
    catalog: Any, sample_rate: int, *, seed: int = 0, max_items: int = 8, max_seconds: float = 10.0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(held-out check waveforms, int8 calibration waveforms) from a job's audio: the check utterances come
    from the `test` split when the data has one (never trained on), else from a seeded subset; calibration
    utterances are drawn from the rest. Each is cut to `max_seconds`."""
    items = list(catalog.items)
    test = [item for item in items if item.split == "test"]
    pool = replace(catalog, items=test) if test else catalog
    check = pool.subset(max_items=max_items, seed=seed).items
    check_ids = {item.id for item in check}
    rest = replace(
        catalog, items=[item for item in items if item.id not in check_ids and item.split != "test"]
    )
    calib = rest.subset(max_items=2 * max_items, seed=seed + 1).items if rest.items else []
    limit = int(max_seconds * sample_rate)

    def load(chosen: list[Any]) -> list[np.ndarray]:
        return [load_waveform(item, sample_rate)[:limit].astype(np.float32) for item in chosen]

    return load(check), load(calib)


def export_for_users(
    model: SpeechEncoder,
    export_dir: Path,
    hf_dir: Path | None,
    variants: Sequence[str],
    *,
    audio: Path | None = None,
    seed: int = 0,
    int8_mode: str = DEFAULT_INT8_MODE,
    metadata: dict[str, Any] | None = None,
    measure_per: bool = True,
    head: TaskHead | None = None,
    processor_dir: Path | None = None,
) -> dict[str, Any]:
    """The ways out besides our own format: the Hugging Face export in `hf_dir` (when given) and the verified
    ONNX variants in `export_dir` (copied into `hf_dir/onnx/` under the same Hub names). `audio`: a directory
    of audio for the checks (held-out utterances, int8 calibration, and the PER probe when it has phone
    labels); without it the checks run on noise. Returns the report's "hf" and "onnx" entries."""
    out: dict[str, Any] = {}
    if hf_dir is not None:
        if hf_dir.exists() and any(hf_dir.iterdir()):
            if not is_hf_export_dir(hf_dir):  # never delete a directory we did not write
                raise CheckpointError(
                    f"{hf_dir.name} exists and is not a Hugging Face export of skillkd: "
                    "choose a new or empty output directory"
                )
            shutil.rmtree(hf_dir)
        save_hf_export(model, hf_dir, metadata=metadata, head=head, processor_dir=processor_dir)
        out["hf"] = {"directory": hf_dir.name, "files": sorted(p.name for p in hf_dir.iterdir())}
    chosen = parse_onnx_variants(variants)
    if not chosen:
        return out
    held: list[np.ndarray] = []
    calib: list[np.ndarray] = []
    probe_data = None
    notes = []
    if audio is not None:
        held, calib = held_out_audio(scan_audio(audio), model.config.sample_rate, seed=seed)
        if measure_per:
            from core.evaluation.dataset import load_probe_data

            try:
                probe_data = load_probe_data(audio, tasks=("pr",))
            except AudioError as exc:
                # the note is published in report.json: the audio folder by its name, not its path
                notes.append(f"no PER check: {exc.message.replace(str(audio), audio.name)}")
    else:
        notes.append("no audio given: checked on noise; no PER check")
    report = export_onnx_variants(
        model,
        export_dir,
        chosen,
        held_out=held,
        calibration=calib,
        probe_data=probe_data,
        int8_mode=int8_mode,
        seed=seed,
        head=head,
    )
    report["notes"] = notes
    report["max_abs_diff"] = report["fp32_check"]["max_abs_diff"]
    report["files"] = {}
    for variant, figures in report["variants"].items():
        if figures["status"] != "ok":
            continue
        path = export_dir / ONNX_FILES[variant]
        report["files"][variant] = path.name  # names, not paths: the report is published with the model
        if hf_dir is not None:
            (hf_dir / "onnx").mkdir(exist_ok=True)
            shutil.copyfile(path, hf_dir / "onnx" / ONNX_FILES[variant])
    out["onnx"] = report
    world_readable(export_dir)
    if hf_dir is not None:
        world_readable(hf_dir)
    return out


def verified_onnx(student_dir: Path) -> dict[str, str]:
    """The ONNX variants a run exported and verified next to its student: {variant: file name} for each whose
    report.json entry passed its gate and whose file is there."""
    try:
        variants = json.loads((student_dir / "report.json").read_text())["onnx"]["variants"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        variant: ONNX_FILES[variant]
        for variant, figures in variants.items()
        if variant in ONNX_FILES
        and isinstance(figures, dict)
        and figures.get("status") == "ok"
        and (student_dir / ONNX_FILES[variant]).is_file()
    }


def carry_verified_onnx(student_dir: Path, hf_dir: Path) -> dict[str, str]:
    """Copy the run's verified ONNX variants (`verified_onnx`) into `hf_dir/onnx/` under the same Hub names;
    returns {variant: file name}."""
    carried = verified_onnx(student_dir)
    if carried:
        (hf_dir / "onnx").mkdir(exist_ok=True)
        for name in carried.values():
            shutil.copyfile(student_dir / name, hf_dir / "onnx" / name)
        world_readable(hf_dir)
    return carried
