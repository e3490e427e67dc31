"""The README's "Use the student elsewhere" code runs as written: the transformers lines and the onnxruntime
lines, on a tiny pruned student's Hugging Face export, and they give what load_student gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from core.export.for_users import export_for_users
from core.export.hf import hidden_states_from_reps, save_hf_export
from core.models import load_huggingface, make_student
from core.models.heads import load_task_head
from tests.utils.models import save_tiny_task_teacher, save_tiny_teacher
from tests.utils.paths import REPO


def _section_code() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use the student elsewhere", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_transformers_and_onnxruntime_lines_run(tmp_path: Path, monkeypatch) -> None:
    from transformers import Wav2Vec2CTCTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = save_tiny_teacher(tmp_path / "t", "hubert", False)
    (teacher / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "sampling_rate": 16000})
    )
    student = make_student(load_huggingface(teacher))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.copy_(torch.randn(hc.n, generator=g) * 3)
    student.eval().prune()
    directory = tmp_path / "hf"
    export_for_users(student, tmp_path / "student", directory, ["fp32", "int8"], measure_per=False)
    transformers_code, finetune_code, onnx_code, task_code = _section_code()
    assert len(transformers_code.strip().splitlines()) == 3
    wave = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    with torch.no_grad():
        reps, _ = student(torch.from_numpy(wave)[None])
        expected = [h[0].numpy() for h in hidden_states_from_reps(student, reps)]

    scope: dict = {"directory": str(directory), "waveforms": [wave, wave[:2500]]}
    exec(transformers_code, scope)  # noqa: S102 - the README's own lines
    hidden = scope["hidden_states"]
    assert len(hidden) == student.num_layers + 1
    for got, want in zip(hidden, expected, strict=True):
        assert np.abs(got[0].detach().numpy() - want).max() < 1e-4

    class Tokenizer:  # what the fine-tuning lines read of a CTC tokenizer
        pad_token_id = 0

        def __len__(self) -> int:
            return 12

    scope = {"directory": str(directory), "tokenizer": Tokenizer()}
    exec(finetune_code, scope)  # noqa: S102
    model = scope["model"]
    assert type(model).__name__ == "SkillkdForCTC" and model.lm_head.out_features == 12
    assert not any(p.requires_grad for p in model.skillkd.feature_extractor.parameters())

    # a fine-tuned teacher's student: the ASR pipeline line runs on its task export
    task_teacher = save_tiny_task_teacher(tmp_path / "ctc", "ctc", vocab_size=5)
    (task_teacher / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "a": 2, "b": 3, "|": 4}))
    Wav2Vec2CTCTokenizer(str(task_teacher / "vocab.json")).save_pretrained(task_teacher)
    head = load_task_head(task_teacher)
    task_dir = save_hf_export(
        load_huggingface(task_teacher), tmp_path / "task", head=head, processor_dir=task_teacher
    )
    scope = {"directory": str(task_dir)}
    exec(task_code, scope)  # noqa: S102
    assert isinstance(scope["asr"](wave)["text"], str)

    scope = {"directory": str(directory), "wave": wave}
    exec(onnx_code, scope)  # noqa: S102
    stacked = scope["hidden_states"]
    assert stacked.shape[:2] == (student.num_layers + 1, 1)
    for got, want in zip(stacked[:, 0], expected, strict=True):  # int8: close, not equal
        cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
        assert cos.mean() > 0.99
