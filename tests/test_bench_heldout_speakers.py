"""bench/heldout_speakers.py: the held-out-speakers view (who lands on which side, the probe split, hard
links, determinism) on a small tts-dev-like dataset, and the multi-seed probe on it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench import heldout_speakers

SPEAKERS = [  # (engine, accent, speaker): eSpeak accent x variant, and one MBROLA voice per accent
    ("espeak", "en-us", "en-us+f1"),
    ("espeak", "en-us", "en-us+f2"),
    ("espeak", "en-gb", "en-gb+f1"),
    ("espeak", "en-gb", "en-gb+f2"),
    ("mbrola", "en-us", "mb-us1"),
    ("mbrola", "en-gb", "mb-en1"),
]


def write_source(root: Path, per_speaker: int = 5, shuffle: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    rows = []
    for s, (engine, accent, speaker) in enumerate(SPEAKERS):
        for k in range(per_speaker):
            uid = f"u{s}{k:02d}"
            t = np.arange(int(0.8 * 16000)) / 16000
            audio = 0.2 * np.sin(2 * np.pi * (120 + 40 * s) * t) + 0.01 * rng.standard_normal(t.shape[0])
            sf.write(root / "audio" / f"{uid}.flac", audio.astype(np.float32), 16000)
            rows.append(
                {
                    "id": uid,
                    "path": f"audio/{uid}.flac",
                    "split": "test" if k == 0 else "train",
                    "speaker": speaker,
                    "engine": engine,
                    "accent": accent,
                    "duration_s": 0.8,
                    "arpabet": "AA B K",
                }
            )
    if shuffle is not None:
        random.Random(shuffle).shuffle(rows)
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_side_rule_needs_both_accent_and_timbre_new() -> None:
    side = heldout_speakers.side_of
    assert side({"engine": "espeak", "accent": "en-gb", "speaker": "en-gb+m3"}) == "B"
    assert side({"engine": "espeak", "accent": "en-gb-x-rp", "speaker": "en-gb-x-rp+f2"}) == "B"
    assert side({"engine": "espeak", "accent": "en-us", "speaker": "en-us+klatt"}) == "A"
    assert side({"engine": "espeak", "accent": "en-gb", "speaker": "en-gb+f1"}) is None  # timbre heard in A
    assert side({"engine": "espeak", "accent": "en-029", "speaker": "en-029+m3"}) is None  # accent heard in A
    assert side({"engine": "mbrola", "accent": "en-gb", "speaker": "mb-en1"}) == "B"
    assert side({"engine": "mbrola", "accent": "en-us", "speaker": "mb-us2"}) == "A"
    other = ("en-us", "en-029")  # the other orientation, by option
    assert side({"engine": "espeak", "accent": "en-029", "speaker": "en-029+m3"}, other) == "B"
    assert side({"engine": "mbrola", "accent": "en-gb", "speaker": "mb-en1"}, other) == "A"


def test_split_writes_a_hard_linked_deterministic_view(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")
    view = tmp_path / "view"
    summary = heldout_speakers.write_heldout_view(source, view, accents=("en-us",), variants=("f2",))
    rows = read_rows(view / "manifest.jsonl")
    by_role: dict[str, set[str]] = {}
    for row in rows:
        by_role.setdefault(row["split"], set()).add(row["speaker"])
    assert by_role == {
        "compress": {"en-gb+f1", "mb-en1"},
        "probe_train": {"en-us+f2", "mb-us1"},
        "probe_test": {"en-us+f2", "mb-us1"},
    }
    assert summary["left_out"] == {"en-gb+f2": 5, "en-us+f1": 5}
    assert summary["counts"]["probe_test"] == {
        "speakers": 2,
        "utterances": 4,
        "minutes": round(4 * 0.8 / 60, 2),
    }
    assert summary["counts"]["compress"]["utterances"] == 10
    assert json.loads((view / "heldout.json").read_text()) == summary
    for row in rows:  # fields kept, source split recorded, audio the same file (a hard link, not a copy)
        assert row["source_split"] in ("train", "test") and row["engine"] and row["arpabet"] == "AA B K"
        assert (view / row["path"]).stat().st_ino == (source / row["path"]).stat().st_ino
    compress = read_rows(view / "compress" / "manifest.jsonl")
    assert compress == [row for row in rows if row["split"] == "compress"]

    # The same source in another order assigns every utterance the same role.
    other = heldout_speakers.write_heldout_view(
        write_source(tmp_path / "src2", shuffle=1), tmp_path / "view2", accents=("en-us",), variants=("f2",)
    )
    roles = {row["id"]: row["split"] for row in rows}
    assert {row["id"]: row["split"] for row in read_rows(tmp_path / "view2" / "manifest.jsonl")} == roles
    assert other["counts"] == summary["counts"]
    again = heldout_speakers.write_heldout_view(source, view, accents=("en-us",), variants=("f2",))
    assert again == summary and read_rows(view / "manifest.jsonl") == rows
    with pytest.raises(ValueError, match="fraction"):
        heldout_speakers.write_heldout_view(source, tmp_path / "bad", fraction=1.0)


def test_probe_runs_every_seed_with_layers(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    source = write_source(tmp_path / "src", per_speaker=6)
    view = tmp_path / "view"
    heldout_speakers.main(
        ["split", str(source), "--out", str(view), "--accents", "en-us", "--variants", "f2"]
    )
    out = tmp_path / "probes"
    result = heldout_speakers.main(
        ["probe", str(view), str(tiny_teacher_dir), "fbank", "--seeds", "2", "--out", str(out)]
    )
    assert [row["model"] for row in result["rows"]] == ["teacher", "fbank"]
    teacher, fbank = result["rows"]
    assert teacher["seeds"] == [0, 1] and len(teacher["per"]) == 2 and len(teacher["sid"]) == 2
    assert len(teacher["sid_per_layer_mean"]) == 3 and len(fbank["sid_per_layer_mean"]) == 1
    runs = [run for run in result["runs"] if run["model"] == "teacher"]
    assert teacher["sid_per_layer_mean"] == pytest.approx(
        [(a + b) / 2 for a, b in zip(*(run["sid_per_layer"]["accuracy"] for run in runs), strict=True)]
    )
    assert result["train_utterances"] == 6 and result["test_utterances"] == 6  # 2 B speakers x (3 + 3)
    table = (out / "probes.md").read_text()
    assert "| teacher |" in table and "±" in table and "| model | r0 | r1 | r2 |" in table
    assert json.loads((out / "probes.json").read_text())["rows"] == result["rows"]


def test_similarity_of_a_model_with_itself_is_one_on_every_layer(
    tmp_path: Path, tiny_teacher_dir: Path
) -> None:
    source = write_source(tmp_path / "src", per_speaker=6)
    view = tmp_path / "view"
    heldout_speakers.main(
        ["split", str(source), "--out", str(view), "--accents", "en-us", "--variants", "f2"]
    )
    out = tmp_path / "similarity"
    import torch
    from transformers import HubertModel

    changed = HubertModel.from_pretrained(tiny_teacher_dir)
    with torch.no_grad():  # the last layer only: r0 and r1 stay the teacher's, r2 does not
        for p in changed.encoder.layers[-1].parameters():
            p.add_(torch.randn_like(p))
    changed.save_pretrained(tmp_path / "changed")
    result = heldout_speakers.main(
        [
            "similarity",
            str(view),
            str(tiny_teacher_dir),
            str(tiny_teacher_dir),
            str(tmp_path / "changed"),
            "--out",
            str(out),
            "--frame-stride",
            "2",
        ]
    )
    same, other = result["rows"]
    assert result["utterances"] == 12 and len(same["frame_cka"]) == 3
    assert same["frame_cka"] == pytest.approx([1.0] * 3) and same["utterance_cka"] == pytest.approx([1.0] * 3)
    assert same["most_similar_teacher_layer_frames"] == [0, 1, 2]
    assert [same["model"], other["model"]] == [tiny_teacher_dir.name, "changed"]  # rows named by directory
    assert other["frame_cka"][:2] == pytest.approx([1.0] * 2) and other["frame_cka"][2] < 0.99
    assert "Over utterances" in (out / "similarity.md").read_text()


def test_table_pairs_students_with_the_teacher_and_the_reference(tmp_path: Path) -> None:
    def probes(name: str, per: list[float], sid: list[float], layers: list[float]) -> dict:
        return {
            "rows": [
                {
                    "model": name,
                    "params": 2_000_000,
                    "seeds": [0, 1],
                    "per": per,
                    "sid": sid,
                    "sid_per_layer_mean": layers,
                }
            ]
        }

    baseline = tmp_path / "baselines.json"
    baseline.write_text(
        json.dumps({"rows": [probes("t", [0.30, 0.32], [0.80, 0.82], [0.7, 0.8])["rows"][0]]})
    )
    files = {}
    for name, per, sid in (
        ("a0", [0.34, 0.36], [0.70, 0.72]),
        ("a1", [0.35, 0.35], [0.74, 0.74]),
        ("b0", [0.33, 0.35], [0.76, 0.78]),
        ("b1", [0.36, 0.36], [0.74, 0.76]),
    ):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(probes(name, per, sid, [0.6, 0.7])))
    text = heldout_speakers.table(
        baseline, "t", [("A", [files["a0"], files["a1"]]), ("B", [files["b0"], files["b1"]])], reference="A"
    )
    a_row = next(line for line in text.splitlines() if line.startswith("| A |"))
    b_row = next(line for line in text.splitlines() if line.startswith("| B |"))
    # A: PER 35, 35 -> 35.00 ± 0.00; paired with the teacher by probe seed: PER +4, +4 (a0), +5, +3 (a1)
    assert "| 35.00 ± 0.00 |" in a_row and "| +4.00 |" in a_row and "| -8.50 |" in a_row  # SID -10, -7
    # B against A by compression seed: PER 34-35 = -1, 36-35 = +1; SID 77-71 = +6, 75-74 = +1
    assert "+0.00 (-1.00, +1.00)" in b_row and "+3.50 (+6.00, +1.00)" in b_row
    assert "| A | 60.0 | 70.0 |" in text
