"""bench/finetune_probe.py on a tiny teacher and a tiny dataset with the held-out view's split names: the
frozen probe and fine-tuning per seed, and the table."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import HubertModel

from bench import finetune_probe
from tests.utils.evaluation import tiny_hubert_config, write_dataset


def test_frozen_and_fine_tuned_per_seed_in_a_table(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = tmp_path / "tiny-teacher"
    HubertModel(tiny_hubert_config()).save_pretrained(teacher)
    view = write_dataset(tmp_path / "view", per_speaker={"probe_train": 4, "probe_test": 2})
    out = tmp_path / "out"
    result = finetune_probe.main([str(view), str(teacher), "--seeds", "2", "--steps", "3", "--out", str(out)])

    assert json.loads((out / "finetune_probe.json").read_text()) == result
    (row,) = result["rows"]
    assert row["model"] == "tiny-teacher" and row["seeds"] == [0, 1]
    assert len(row["frozen"]) == len(row["finetuned"]) == 2 and all(v >= 0 for v in row["finetuned"])
    assert [run["seed"] for run in row["runs"]] == [0, 1] and all(run["steps"] == 3 for run in row["runs"])
    assert len(row["load_before"]) == 3 and row["wall_seconds"] > 0
    assert result["train_split"] == "probe_train" and result["finetune"]["steps"] == 3
    table = (out / "finetune_probe.md").read_text()
    assert "| tiny-teacher |" in table and "frozen PER % ↓" in table and "load before → after" in table


def test_paired_students_make_one_row_with_seed_i_for_model_i(tmp_path: Path) -> None:
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(tmp_path / f"tiny-seed{seed}")
        HubertModel(tiny_hubert_config()).save_pretrained(models[-1])
    view = write_dataset(tmp_path / "view", per_speaker={"probe_train": 4, "probe_test": 2})
    out = tmp_path / "out"
    args = [str(view), *map(str, models), "--paired", "--steps", "2", "--out", str(out)]
    result = finetune_probe.main(args)

    (row,) = result["rows"]
    assert result["paired"] and row["model"] == "tiny-seed0 (compression seeds 0–1)"
    assert row["seeds"] == [0, 1] and [run["seed"] for run in row["runs"]] == [0, 1]
    assert [run["model"] for run in row["runs"]] == ["tiny-seed0", "tiny-seed1"]
    assert len(row["frozen"]) == len(row["finetuned"]) == 2
