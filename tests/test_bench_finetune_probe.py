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
