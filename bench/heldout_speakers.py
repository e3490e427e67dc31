"""Speakers no compression heard (issue 13): a held-out-speakers view of tts-dev, and probing models on it.

    python -m bench.heldout_speakers split ../shared/data/tts-dev --out runs/tts-dev-heldout
    python -m bench.heldout_speakers probe runs/tts-dev-heldout ../shared/teachers/hubert-mini fbank \\
        --seeds 3 --out runs/heldout-hubert-mini

`split` writes a dataset view: a directory with its own manifest.jsonl (every field of the source rows kept,
`split` replaced by the role, the source split kept as `source_split`) and the audio hard-linked under the
same relative paths (copied only across file systems; the audio scan refuses absolute paths and symlinks that
leave the dataset, so a view cannot point at the source). Roles:

- `compress`: the speakers of side A, all their utterances: the only audio a compression may see.
- `probe_train` / `probe_test`: the utterances of side B, split per speaker (every B speaker on both sides, so
  speaker ID is a closed-set task over B); a fixed hash of the utterance id decides, so the split is the same
  on every machine and does not depend on the manifest's order.

The rule (tts-dev's voices are eSpeak accent x variant, and MBROLA diphone voices): a speaker is new only if
neither its accent nor its timbre was heard. In eSpeak the variant (f1, f2, m1, m3, klatt) is the timbre and
the same variant is spoken in every accent, so held-out accents alone would leave every timbre in A. Side B
is the held-out accents (the British ones: en-gb, en-gb-scotland, en-gb-x-rp) x the held-out variants (f2,
m3), plus the MBROLA voice of those accents (each MBROLA voice is its own recorded speaker). Side A is the
other accents (en-us, en-029) x the other variants (f1, m1, klatt), plus their MBROLA voices. Speakers that
share an accent with one side and a timbre with the other are left out of the view. The British side is held
out because its three close accents make speaker ID hard enough to measure a loss: with American and Caribbean
held out instead, FBANK alone identified 100% of the held-out speakers (bench/results/heldout_speakers.md).
`heldout.json` in the view records the rule, the speakers of each side, those left out, and the counts.
`compress/` inside the view holds the `compress` rows alone, for `skillkd compress` (which reads every row).

`labelled` writes a task student's compression audio (issue 23): the `compress` rows without their label
fields and the `probe_train` rows with theirs, the labelled data a task teacher was fine-tuned on.

`table` summarises students: each row is a list of `probe` outputs, one per compression seed (a student's
mean over its probe seeds), against the teacher's row of a baseline `probe` output (paired by probe seed) and,
optionally, against a reference row (paired by compression seed):

    python -m bench.heldout_speakers table --baseline bench/results/heldout-speakers/baselines.json \\
        --teacher hubert-mini --reference SKILL \\
        'SKILL=runs/h13/hubert-skill-s{0,1,2}-probes/probes.json' ...   (a row: NAME=FILE,FILE,FILE)

`similarity` compares students with their teacher on side B's utterances: linear CKA of each student layer
with the teacher's same layer, over frames (every `--frame-stride`-th) and over utterances (each utterance's
mean over frames: the utterance-level structure where speaker identity lives; the unbiased estimator, as there
are fewer utterances than features), and the teacher layer each student layer is most similar to; it writes
`similarity.json` and `similarity.md`:

    python -m bench.heldout_speakers similarity runs/tts-dev-heldout ../shared/teachers/hubert-mini \\
        runs/h13/hubert-skill-s0/student --out runs/h13/similarity

`probe` extracts each model's features once (a teacher or exported student directory, or `fbank`) and runs the
SUPERB probes (PR and SID) and the per-layer SID probes with seeds 0..N-1 on probe_train -> probe_test; it
writes `probes.json` (every run) and `probes.md` (mean ± sample standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from core.data import MANIFEST_NAME
from core.errors import AudioError

HELD_OUT_ACCENTS = ("en-gb", "en-gb-scotland", "en-gb-x-rp")
HELD_OUT_VARIANTS = ("f2", "m3")
ROLES = ("compress", "probe_train", "probe_test")
PROBE_TEST_FRACTION = 0.5
SALT = "skillkd-heldout-v1"


def side_of(
    row: dict[str, Any],
    accents: tuple[str, ...] = HELD_OUT_ACCENTS,
    variants: tuple[str, ...] = HELD_OUT_VARIANTS,
) -> str | None:
    """'A' (heard by compression), 'B' (held out) or None (left out: shares its accent with one side and its
    timbre with the other). An eSpeak speaker 'accent+variant' has the variant as timbre; a speaker of any
    other engine (MBROLA) is its own timbre, new exactly when its accent is."""
    accent_out = row.get("accent") in accents
    speaker = str(row.get("speaker", ""))
    timbre_out = speaker.partition("+")[2] in variants if row.get("engine") == "espeak" else accent_out
    if accent_out and timbre_out:
        return "B"
    if not accent_out and not timbre_out:
        return "A"
    return None


def _hash(utterance_id: str) -> str:
    return hashlib.sha256(f"{SALT}:{utterance_id}".encode()).hexdigest()


def probe_test_ids(ids: list[str], fraction: float) -> set[str]:
    """The `fraction` of one speaker's utterances (at least 1, at most all but 1) with the smallest hashes."""
    count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(sorted(ids, key=_hash)[:count])


def write_heldout_view(
    dataset: Path,
    dest: Path,
    *,
    accents: tuple[str, ...] = HELD_OUT_ACCENTS,
    variants: tuple[str, ...] = HELD_OUT_VARIANTS,
    fraction: float = PROBE_TEST_FRACTION,
) -> dict[str, Any]:
    """Write the view at `dest` (manifest.jsonl, hard-linked audio, heldout.json, compress/); returns the
    summary that heldout.json holds. Deterministic: the same source gives the same view, byte for byte."""
    from core.evaluation.compare import link_or_copy, write_split_view

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the probe_test fraction must be in (0, 1), found {fraction}")
    manifest = dataset / MANIFEST_NAME
    try:
        rows = [
            json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except (OSError, json.JSONDecodeError) as exc:
        raise AudioError(f"cannot read {manifest}: {exc}") from exc
    sides: list[str | None] = []  # per row: "A", "B" or None (left out)
    for row in rows:
        relative = Path(str(row.get("path", "")))
        unusable = relative.is_absolute() or ".." in relative.parts or not row.get("speaker")
        sides.append(None if unusable else side_of(row, accents, variants))
    b_ids: dict[str, list[str]] = defaultdict(list)
    for row, side in zip(rows, sides, strict=True):
        if side == "B":
            b_ids[row["speaker"]].append(row["id"])
    too_few = {speaker for speaker, ids in b_ids.items() if len(ids) < 2}  # cannot be on both probe sides
    test_ids: set[str] = set()
    for speaker, ids in b_ids.items():
        if speaker not in too_few:
            test_ids |= probe_test_ids(ids, fraction)

    kept: list[dict[str, Any]] = []
    left_out: Counter[str] = Counter()
    for row, side in zip(rows, sides, strict=True):  # source order
        if side is None or (side == "B" and row["speaker"] in too_few):
            left_out[str(row.get("speaker"))] += 1
            continue
        role = "compress" if side == "A" else ("probe_test" if row["id"] in test_ids else "probe_train")
        link_or_copy(dataset / row["path"], dest / row["path"])
        kept.append({**row, "split": role, "source_split": row.get("split")})
    if not any(r["split"] == "compress" for r in kept) or not any(r["split"] == "probe_test" for r in kept):
        raise AudioError(
            f"{manifest}: the rule leaves no speaker on one side; check the accents and variants"
        )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8"
    )
    write_split_view(dest, "compress", dest / "compress")

    def role_rows(role: str) -> list[dict[str, Any]]:
        return [r for r in kept if r["split"] == role]

    counts = {
        role: {
            "speakers": len({r["speaker"] for r in role_rows(role)}),
            "utterances": len(role_rows(role)),
            "minutes": round(sum(float(r.get("duration_s", 0.0)) for r in role_rows(role)) / 60.0, 2),
        }
        for role in ROLES
    }
    summary = {
        "source": str(dataset),
        "rule": {
            "held_out_accents": list(accents),
            "held_out_espeak_variants": list(variants),
            "probe_test_fraction": fraction,
            "hash": f"sha256('{SALT}:' + id), smallest first",
        },
        "side_a": sorted({r["speaker"] for r in role_rows("compress")}),
        "side_b": sorted({r["speaker"] for r in kept if r["split"] != "compress"}),
        "left_out": dict(sorted(left_out.items())),
        "counts": counts,
    }
    (dest / "heldout.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ------------------------------------------------------------------------------------------------------------
# probe


LABEL_FIELDS_OF_ROWS = ("arpabet", "phonemes", "text", "label", "emotion")


def write_labelled_view(view: Path, dest: Path, labelled_split: str = "probe_train") -> dict[str, Any]:
    """The compression audio of a task student that may use labels (issue 23's supervised term): the view's
    `compress` rows with their label fields removed (arpabet, phonemes, text, label, emotion; the speaker
    stays: it names the voice, not a class the head knows) plus the `labelled_split` rows as they are (the
    labelled data the task teacher was fine-tuned on, which the two-step route fine-tunes on too)."""
    from core.evaluation.compare import link_or_copy

    rows = [json.loads(line) for line in (view / MANIFEST_NAME).read_text().splitlines() if line.strip()]
    kept = []
    for row in rows:
        if row["split"] == "compress":
            row = {k: v for k, v in row.items() if k not in LABEL_FIELDS_OF_ROWS}
        elif row["split"] != labelled_split:
            continue
        link_or_copy(view / row["path"], dest / row["path"])
        kept.append(json.dumps(row, ensure_ascii=False))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).write_text("\n".join(kept) + "\n", encoding="utf-8")
    splits = [json.loads(line)["split"] for line in kept]
    labelled = splits.count(labelled_split)
    return {"rows": len(kept), "unlabelled": splits.count("compress"), "labelled": labelled}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


def probe_models(
    view: Path,
    models: list[str],
    *,
    seeds: int,
    out: Path,
    device: str = "cpu",
    train_split: str = "probe_train",
    test_split: str = "probe_test",
    phone_config: Any = None,
    speaker_config: Any = None,
) -> dict[str, Any]:
    """Probe each model (a directory, or 'fbank') with seeds 0..seeds-1; write probes.json and probes.md."""
    import torch

    from core.evaluation.dataset import load_probe_data
    from core.evaluation.fbank import Fbank
    from core.evaluation.probes import PhoneProbeConfig, SpeakerProbeConfig
    from core.evaluation.run import (
        describe_model,
        environment,
        extract,
        load_representation_model,
        run_probes,
    )

    phone_config = phone_config or PhoneProbeConfig()
    speaker_config = speaker_config or SpeakerProbeConfig()
    data = load_probe_data(view, train_split=train_split, test_split=test_split)
    runs: list[dict[str, Any]] = []
    for spec in models:
        if spec == "fbank":
            model: Any = Fbank()
            name, source, run_device = "fbank", "fbank", torch.device("cpu")
        else:
            model, name, source = load_representation_model(Path(spec))
            run_device = torch.device(device)
        features = extract(model, data, name=name, device=run_device, on_event=lambda event: None)
        facts = describe_model(model, measure_speed=False)
        for seed in range(seeds):
            runs.append(
                {
                    "model": name,
                    "source": source,
                    "seed": seed,
                    "params": facts["params"],
                    "macs_per_second": facts["macs_per_second"],
                    **run_probes(
                        features,
                        data,
                        seed=seed,
                        phone_config=phone_config,
                        speaker_config=speaker_config,
                        per_layer=True,
                    ),
                }
            )
            print(
                f"{name} seed {seed}: PER {100 * runs[-1]['pr']['per']:.2f} "
                f"SID {100 * runs[-1]['sid']['accuracy']:.2f}",
                file=sys.stderr,
                flush=True,
            )
        del model, features
    rows = []
    for name in dict.fromkeys(run["model"] for run in runs):
        mine = [run for run in runs if run["model"] == name]
        layers = [run["sid_per_layer"]["accuracy"] for run in mine]
        rows.append(
            {
                "model": name,
                "params": mine[0]["params"],
                "seeds": [run["seed"] for run in mine],
                "per": [run["pr"]["per"] for run in mine],
                "sid": [run["sid"]["accuracy"] for run in mine],
                "sid_per_layer_mean": [statistics.fmean(column) for column in zip(*layers, strict=True)],
            }
        )
    result = {
        "format": "skillkd-heldout-probes",
        "view": str(view),
        "train_split": train_split,
        "test_split": test_split,
        **data.summary(),
        "rows": rows,
        "runs": runs,
        "notes": data.notes,
        "environment": environment(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "probes.md").write_text(render(result))
    return result


def _pooled(
    features: Any, ids: list[str], layer: int, frame_stride: int, frames: dict[str, int]
) -> tuple[Any, Any]:
    """(frames of every utterance concatenated, every `frame_stride`-th; one mean per utterance) of
    `layer`."""
    import torch

    rows = [features[i][layer, : frames[i]].float() for i in ids]
    return torch.cat([r[::frame_stride] for r in rows]).numpy(), torch.stack(
        [r.mean(0) for r in rows]
    ).numpy()


def similarity(
    view: Path,
    teacher: str,
    students: list[str],
    *,
    out: Path,
    device: str = "cpu",
    frame_stride: int = 4,
    train_split: str = "probe_train",
    test_split: str = "probe_test",
) -> dict[str, Any]:
    """Linear CKA of each student layer with the teacher's (same layer; and the most similar teacher layer)
    over side B's frames and utterance means; writes similarity.json and similarity.md."""
    import torch

    from core.calibrate.cka import linear_cka, minibatch_cka
    from core.evaluation.dataset import load_probe_data
    from core.evaluation.run import extract, load_representation_model

    data = load_probe_data(view, train_split=train_split, test_split=test_split)
    ids = sorted(item.id for item in data.catalog.items)

    def features_of(path: str) -> tuple[str, Any]:
        model, name, _source = load_representation_model(Path(path))
        return name, extract(model, data, name=name, device=torch.device(device), on_event=lambda event: None)

    _, teacher_features = features_of(teacher)
    rows = []
    for path in students:
        _, feats = features_of(path)
        name = Path(path).parent.name if Path(path).name == "student" else Path(path).name
        if feats.num_reps != teacher_features.num_reps:
            raise SystemExit(
                f"{path}: {feats.num_reps} representations, the teacher has {teacher_features.num_reps}"
            )
        frames = {i: min(feats[i].shape[1], teacher_features[i].shape[1]) for i in ids}
        teacher_layers = [
            _pooled(teacher_features, ids, j, frame_stride, frames) for j in range(teacher_features.num_reps)
        ]
        frame_cka, utterance_cka, best_frame, best_utterance = [], [], [], []
        for i in range(feats.num_reps):
            frame_x, utt_x = _pooled(feats, ids, i, frame_stride, frames)
            by_frame = [linear_cka(frame_x, frame_y) for frame_y, _ in teacher_layers]
            # Fewer utterances than features: the plug-in estimate is biased up; the unbiased one is not.
            by_utt = [minibatch_cka([(utt_x, utt_y)]) for _, utt_y in teacher_layers]
            frame_cka.append(by_frame[i])
            utterance_cka.append(by_utt[i])
            best_frame.append(max(range(len(by_frame)), key=by_frame.__getitem__))
            best_utterance.append(max(range(len(by_utt)), key=by_utt.__getitem__))
        rows.append(
            {
                "model": name,
                "source": path,
                "frame_cka": frame_cka,
                "utterance_cka": utterance_cka,
                "most_similar_teacher_layer_frames": best_frame,
                "most_similar_teacher_layer_utterances": best_utterance,
            }
        )
        print(f"{name}: frame CKA {', '.join(f'{v:.2f}' for v in frame_cka)}", file=sys.stderr, flush=True)
    result = {
        "format": "skillkd-heldout-similarity",
        "view": str(view),
        "teacher": teacher,
        "utterances": len(ids),
        "frame_stride": frame_stride,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "similarity.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "similarity.md").write_text(render_similarity(result))
    return result


def render_similarity(result: dict[str, Any]) -> str:
    num = len(result["rows"][0]["frame_cka"]) if result["rows"] else 0
    head = ["| model | " + " | ".join(f"r{i}" for i in range(num)) + " |", "|---|" + "---|" * num]
    lines = [
        f"Linear CKA of each student layer with the teacher's same layer on `{result['view']}` "
        f"({result['utterances']} utterances of side B).",
        "",
        f"Over frames (every {result['frame_stride']}th):",
        "",
        *head,
    ]
    lines += [
        f"| {r['model']} | " + " | ".join(f"{v:.3f}" for v in r["frame_cka"]) + " |" for r in result["rows"]
    ]
    lines += ["", "Over utterances (each utterance's mean over frames; unbiased CKA):", "", *head]
    lines += [
        f"| {r['model']} | " + " | ".join(f"{v:.3f}" for v in r["utterance_cka"]) + " |"
        for r in result["rows"]
    ]
    lines += ["", "The teacher layer each student layer is most similar to (frames / utterances):", "", *head]
    lines += [
        f"| {r['model']} | "
        + " | ".join(
            f"{a}/{b}"
            for a, b in zip(
                r["most_similar_teacher_layer_frames"],
                r["most_similar_teacher_layer_utterances"],
                strict=True,
            )
        )
        + " |"
        for r in result["rows"]
    ]
    return "\n".join(lines) + "\n"


def render(result: dict[str, Any]) -> str:
    from core.evaluation.run import format_count, layer_table

    lines = [
        f"Probes on `{result['view']}`: trained on `{result['train_split']}` ({result['train_utterances']} "
        f"utterances), scored on `{result['test_split']}` ({result['test_utterances']}); mean ± sd over "
        "seeds.",
        "",
        "| model | params | PER % ↓ | SID acc % ↑ | seeds |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {format_count(row['params'])} | {_pm(row['per'])} | {_pm(row['sid'])} | "
            f"{len(row['seeds'])} |"
        )
    lines += [
        "",
        "SID accuracy % of each representation alone (its own linear probe), mean over seeds:",
        "",
        *layer_table([(row["model"], row["sid_per_layer_mean"]) for row in result["rows"]]),
    ]
    return "\n".join(lines) + "\n"


def _row_figures(files: list[Path]) -> list[dict[str, Any]]:
    """Per compression seed (one probes.json each, one student row): the mean over probe seeds of PER and SID,
    and the per-probe-seed values (for pairing with the teacher), the per-layer SID and the size."""
    seeds = []
    for file in files:
        row = json.loads(file.read_text())["rows"][0]
        seeds.append(
            {
                "params": row["params"],
                "per": row["per"],
                "sid": row["sid"],
                "mean_per": statistics.fmean(row["per"]),
                "mean_sid": statistics.fmean(row["sid"]),
                "layers": row["sid_per_layer_mean"],
            }
        )
    return seeds


def _joined(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.2f}" for v in values)


def table(
    baseline: Path, teacher: str, rows: list[tuple[str, list[Path]]], reference: str | None = None
) -> str:
    """The markdown table of `table` (see the module docstring)."""
    base = next(row for row in json.loads(baseline.read_text())["rows"] if row["model"] == teacher)
    figures = {name: _row_figures(files) for name, files in rows}
    lines = [
        "| model | params | PER % ↓ | SID % ↑ | ΔPER vs teacher | ΔSID vs teacher | per seed PER | per seed "
        "SID |" + (f" ΔPER vs {reference} | ΔSID vs {reference} |" if reference else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if reference else ""),
    ]
    lines.append(
        f"| {teacher} (teacher) | {base['params'] / 1e6:.2f}M | {_pm(base['per'])} | {_pm(base['sid'])} | "
        "| | (probe seeds) | |" + (" | |" if reference else "")
    )
    for name, _files in rows:
        seeds = figures[name]
        d_per = [statistics.fmean(a - b for a, b in zip(s["per"], base["per"], strict=True)) for s in seeds]
        d_sid = [statistics.fmean(a - b for a, b in zip(s["sid"], base["sid"], strict=True)) for s in seeds]
        line = (
            f"| {name} | {statistics.fmean(s['params'] for s in seeds) / 1e6:.2f}M | "
            f"{_pm([s['mean_per'] for s in seeds])} | {_pm([s['mean_sid'] for s in seeds])} | "
            f"{100 * statistics.fmean(d_per):+.2f} | {100 * statistics.fmean(d_sid):+.2f} | "
            f"{_joined([s['mean_per'] for s in seeds])} | {_joined([s['mean_sid'] for s in seeds])} |"
        )
        if reference:
            ref = figures[reference]
            if name == reference or len(ref) != len(seeds):
                line += " | |"
            else:
                dp = [100 * (a["mean_per"] - b["mean_per"]) for a, b in zip(seeds, ref, strict=True)]
                ds = [100 * (a["mean_sid"] - b["mean_sid"]) for a, b in zip(seeds, ref, strict=True)]
                line += (
                    f" {statistics.fmean(dp):+.2f} ({', '.join(f'{x:+.2f}' for x in dp)}) |"
                    f" {statistics.fmean(ds):+.2f} ({', '.join(f'{x:+.2f}' for x in ds)}) |"
                )
        lines.append(line)
    lines += [
        "",
        "Per-layer SID % (mean over compression and probe seeds):",
        "",
        "| model | " + " | ".join(f"r{i}" for i in range(len(base["sid_per_layer_mean"]))) + " |",
        "|---|" + "---|" * len(base["sid_per_layer_mean"]),
        f"| {teacher} (teacher) | " + " | ".join(f"{100 * v:.1f}" for v in base["sid_per_layer_mean"]) + " |",
    ]
    for name, _files in rows:
        layers = [
            statistics.fmean(column) for column in zip(*(s["layers"] for s in figures[name]), strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in layers) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="write the held-out-speakers view of a dataset")
    split.add_argument("dataset", type=Path)
    split.add_argument("--out", type=Path, required=True)
    split.add_argument(
        "--accents", default=",".join(HELD_OUT_ACCENTS), help="held-out accents, comma-separated"
    )
    split.add_argument(
        "--variants", default=",".join(HELD_OUT_VARIANTS), help="held-out eSpeak variants, comma-separated"
    )
    split.add_argument("--probe-test-fraction", type=float, default=PROBE_TEST_FRACTION)
    labelled = commands.add_parser(
        "labelled",
        help="a view's compress rows without labels plus one split's rows with theirs (task students' audio)",
    )
    labelled.add_argument("view", type=Path)
    labelled.add_argument("--out", type=Path, required=True)
    labelled.add_argument("--labelled-split", default="probe_train")
    probe = commands.add_parser("probe", help="probe models on a view with several seeds")
    probe.add_argument("view", type=Path)
    probe.add_argument("models", nargs="+", help="teacher or student directories, or 'fbank'")
    probe.add_argument("--seeds", type=int, default=3)
    probe.add_argument("--out", type=Path, required=True)
    probe.add_argument("--device", default="cpu")
    sim = commands.add_parser(
        "similarity", help="linear CKA of students' layers with their teacher's on side B"
    )
    sim.add_argument("view", type=Path)
    sim.add_argument("teacher")
    sim.add_argument("students", nargs="+")
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument("--device", default="cpu")
    sim.add_argument("--frame-stride", type=int, default=4)
    summary = commands.add_parser(
        "table",
        help="students (one probes.json per compression seed) against the "
        "teacher and a reference row, as markdown",
    )
    summary.add_argument(
        "rows", nargs="+", help="NAME=FILE,FILE,...: one row, a probes.json per compression seed"
    )
    summary.add_argument(
        "--baseline", type=Path, required=True, help="a probe output holding the teacher's row"
    )
    summary.add_argument("--teacher", required=True, help="the teacher's row name in --baseline")
    summary.add_argument("--reference", help="the row others are paired with (by compression seed)")
    args = parser.parse_args(argv)
    if args.command == "table":
        rows = [
            (spec.split("=", 1)[0], [Path(f) for f in spec.split("=", 1)[1].split(",")]) for spec in args.rows
        ]
        text = table(args.baseline, args.teacher, rows, reference=args.reference)
        print(text)
        return {"table": text}
    if args.command == "similarity":
        result = similarity(
            args.view,
            args.teacher,
            args.students,
            out=args.out,
            device=args.device,
            frame_stride=args.frame_stride,
        )
        print(render_similarity(result))
        return result
    if args.command == "labelled":
        summary = write_labelled_view(args.view, args.out, args.labelled_split)
        print(json.dumps(summary))
        return summary
    if args.command == "split":
        summary = write_heldout_view(
            args.dataset,
            args.out,
            accents=tuple(a.strip() for a in args.accents.split(",") if a.strip()),
            variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
            fraction=args.probe_test_fraction,
        )
        print(json.dumps(summary, indent=2))
        return summary
    result = probe_models(args.view, args.models, seeds=args.seeds, out=args.out, device=args.device)
    print(render(result))
    return result


if __name__ == "__main__":
    main()
