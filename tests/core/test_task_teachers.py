"""Issue 23: a fine-tuned teacher (transformers task model) gives a student of the same task, end to end on
tiny random-init teachers: the head is kept and distilled, the exports are the task model (the HF export
loads with its Auto class and computes what our student and head compute), `drop_head` is said, never silent,
and the heads the engine does not keep are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import AudioError, SpecError, TeacherError
from core.models import load_student
from core.models.heads import HeadSpec, TaskHead
from core.pipeline import run
from core.spec import CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.evaluation import write_dataset
from tests.utils.models import save_tiny_task_teacher, save_tiny_teacher, write_phone_tokenizer
from tests.utils.pipeline import SPEC


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "audio")


def write_tokenizer(directory: Path, vocab_size: int = 12) -> None:
    """A CTC tokenizer of `vocab_size` tokens beside a tiny CTC teacher (as a fine-tuned recogniser has)."""
    from transformers import Wav2Vec2CTCTokenizer

    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{chr(ord("a") + i): 3 + i for i in range(vocab_size - 3)}}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2CTCTokenizer(str(directory / "vocab.json")).save_pretrained(directory)


def student_head(export: Path) -> TaskHead:
    config = json.loads((export / "config.json").read_text())
    spec = HeadSpec.from_dict(config["task_head"])
    head = TaskHead(spec, config["model"]["hidden_size"], len(config["model"]["layers"]))
    head.load_state_dict(load_file(str(export / "task_head.safetensors")))
    return head.eval()


def assert_same_outputs(model, student, head: TaskHead, waves: torch.Tensor) -> None:
    """The transformers task model computes what our student and its head compute."""
    with torch.no_grad():
        reps, _ = student(waves)
        want = head.on_encoder(student, reps)
        got = model(waves).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_a_ctc_teacher_gives_a_ctc_student_that_transformers_loads_as_one(
    tmp_path: Path, audio_dir: Path
) -> None:
    from transformers import AutoModelForCTC, Wav2Vec2Processor, pipeline

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", "hubert")
    write_tokenizer(teacher)
    spec = CompressionSpec(**SPEC, task_temperature=2.0, task_input_weight=0.5)
    result = run(spec, teacher, audio_dir, tmp_path / "w")
    report = result.report
    assert report["task_head"] == {
        "kept": True,
        "task": "ctc",
        "teacher_class": "HubertForCTC",
        "description": "HubertForCTC: a CTC head over 12 tokens",
        "weight": 1.0,
        "temperature": 2.0,
        "input_weight": 0.5,
        "supervised_weight": 0.0,
        "supervised_by_default": False,
    }
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    # the task terms are trained in both stages, and logged
    assert all("task" in row and "task_input" in row for row in log)
    assert {row["stage"] for row in log} == {"distill_prune", "final_distill"}

    student = load_student(result.export_dir)
    head = student_head(result.export_dir)
    hf = result.artifacts["hf"]
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["SkillkdForCTC"] and config["vocab_size"] == 12
    model = AutoModelForCTC.from_pretrained(hf, trust_remote_code=True).eval()
    waves = torch.randn(2, 8000)
    assert_same_outputs(model, student, head, waves)
    # the teacher's processor travels with the student: transformers' ASR pipeline runs on the export
    processor = Wav2Vec2Processor.from_pretrained(hf)
    assert (
        processor.tokenizer.get_vocab()["<pad>"] == 0 and processor.feature_extractor.sampling_rate == 16000
    )
    asr = pipeline("automatic-speech-recognition", model=str(hf), trust_remote_code=True)
    assert isinstance(asr(waves[0].numpy())["text"], str)
    # the export's encoder is what the student's is: load_student reads the task export too
    again = load_student(hf)
    assert again.num_params() == student.num_params()
    # both exports are scored on the task with the student's own head, identically
    from core.evaluation.dataset import load_probe_data
    from core.evaluation.task import load_task_model, task_scores

    data = load_probe_data(write_dataset(tmp_path / "labelled"), tasks=("pr",))
    scores = [task_scores(load_task_model(path), data) for path in (result.export_dir, hf)]  # type: ignore[arg-type]
    assert scores[0] == scores[1] and scores[0]["task"] == "ctc" and scores[0]["utterances"] == len(data.test)


def test_a_weighted_classifier_teacher_gives_a_classifier_student(tmp_path: Path, audio_dir: Path) -> None:
    from transformers import AutoModelForAudioClassification

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "sequence", "wavlm", weighted=True)
    result = run(CompressionSpec(**SPEC), teacher, audio_dir, tmp_path / "w")
    assert result.report["task_head"]["task"] == "sequence"
    hf = result.artifacts["hf"]
    model = AutoModelForAudioClassification.from_pretrained(hf, trust_remote_code=True).eval()
    assert model.config.id2label == {0: "calm", 1: "happy", 2: "sad"}
    student, head = load_student(result.export_dir), student_head(result.export_dir)
    assert_same_outputs(model, student, head, torch.randn(2, 8000))


def test_drop_head_is_said_and_a_headless_teacher_says_nothing(tmp_path: Path, audio_dir: Path) -> None:
    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", "hubert")
    result = run(CompressionSpec(**SPEC, drop_head=True), teacher, audio_dir, tmp_path / "w")
    assert result.report["task_head"] == {
        "kept": False,
        "dropped": "HubertForCTC: a CTC head over 12 tokens",
    }
    assert not (result.export_dir / "task_head.safetensors").exists()
    assert json.loads((result.artifacts["hf"] / "config.json").read_text())["architectures"] == [
        "SkillkdModel"
    ]
    plain = run(CompressionSpec(**SPEC), save_tiny_teacher(tmp_path / "plain"), audio_dir, tmp_path / "p")
    assert plain.report["task_head"] is None


def test_heads_the_engine_cannot_keep_are_refused_before_any_stage(tmp_path: Path, audio_dir: Path) -> None:
    teacher = save_tiny_task_teacher(tmp_path / "teacher", "sequence", "hubert", weighted=True)
    with pytest.raises(SpecError, match="prune_layers: the teacher's head"):
        run(CompressionSpec(**SPEC, prune_layers=True), teacher, audio_dir, tmp_path / "w1")
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(
        json.dumps({**config, "architectures": ["HubertForSpeechTranslation"]})
    )
    with pytest.raises(TeacherError, match="a head skillkd does not know"):
        run(CompressionSpec(**SPEC), teacher, audio_dir, tmp_path / "w2")
    for workdir in (tmp_path / "w1", tmp_path / "w2"):  # the job's record only: no stage ran
        assert [p.name for p in workdir.iterdir()] == ["job.json"]
    # dropping the head it cannot keep is what the user may ask for
    result = run(CompressionSpec(**SPEC, drop_head=True), teacher, audio_dir, tmp_path / "w3")
    assert result.report["task_head"] == {"kept": False, "dropped": "HubertForSpeechTranslation (its head)"}


def test_an_xvector_teacher_gives_a_speaker_embedding_student(tmp_path: Path, audio_dir: Path) -> None:
    """A WavLMForXVector teacher: the student keeps the TDNN head, learns the teacher's embeddings, exports
    as SkillkdForXVector (AutoModelForAudioXVector: the embeddings of our student and head), its ONNX file
    outputs the embeddings, and `skillkd evaluate` scores it by speaker verification (EER)."""
    import numpy as np
    from transformers import AutoModelForAudioXVector

    from core.evaluation.dataset import load_probe_data
    from core.evaluation.task import load_task_model, task_scores
    from core.export.onnx import model_inputs, onnx_session

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "xvector", "wavlm", weighted=True)
    result = run(CompressionSpec(**SPEC, export_onnx=["fp32"]), teacher, audio_dir, tmp_path / "w")
    head_facts = result.report["task_head"]
    assert head_facts["kept"] and head_facts["task"] == "xvector", head_facts
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    assert all(row["task"] >= 0.0 for row in log)  # the embedding term (0 at the teacher) is trained
    student, head = load_student(result.export_dir), student_head(result.export_dir)
    hf = result.artifacts["hf"]
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["SkillkdForXVector"]
    model = AutoModelForAudioXVector.from_pretrained(hf, trust_remote_code=True).eval()
    waves = torch.randn(2, 8000)
    with torch.no_grad():
        reps, _ = student(waves)
        want = head.on_encoder(student, reps)
        got = model(waves).embeddings
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert result.report["onnx"]["fp32_check"]["outputs"] == [
        "hidden_states",
        "last_hidden_state",
        "embeddings",
    ]
    fp32 = result.report["onnx"]["variants"]["fp32"]
    assert fp32["status"] == "ok" and fp32["task"]["embedding_min_cosine"] > 0.9999
    rng = np.random.default_rng(3)
    waves_np = [
        rng.standard_normal(n).astype(np.float32) for n in (9000, 5000, 7000)
    ]  # any batch, any lengths
    session = onnx_session(result.export_dir / "model.onnx")
    embeddings = session.run(["embeddings"], model_inputs(student, waves_np))[0]
    assert embeddings.shape[0] == 3
    for row, wave in enumerate(waves_np):
        with torch.no_grad():
            reps, _ = student(torch.from_numpy(wave)[None])
            assert np.abs(embeddings[row] - head.on_encoder(student, reps).numpy()[0]).max() < 1e-4
    data = load_probe_data(write_dataset(tmp_path / "labelled"), tasks=("sid",))
    scores = [task_scores(load_task_model(path), data) for path in (result.export_dir, hf)]  # type: ignore[arg-type]
    assert scores[0] == scores[1]
    assert scores[0]["task"] == "xvector" and 0.0 <= scores[0]["eer"] <= 1.0
    assert scores[0]["speakers"] == 3 and scores[0]["trials"] == 15 and scores[0]["target_trials"] == 3


def test_the_dry_run_says_what_the_teacher_head_is_and_what_the_student_keeps(
    tmp_path: Path, audio_dir: Path
) -> None:
    from click.testing import CliRunner

    from cli import skillkd

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", "hubert")
    args = ["compress", str(teacher), str(audio_dir), "--out", str(tmp_path / "o"), "--dry-run"]
    shown = CliRunner().invoke(skillkd, [*args, "--stage1-steps", "8", "--stage2-steps", "2"])
    assert shown.exit_code == 0, shown.output
    assert "head:     HubertForCTC: a CTC head over 12 tokens; the student keeps it" in shown.output
    dropped = CliRunner().invoke(skillkd, [*args, "--drop-head", "--json"])
    assert dropped.exit_code == 0, dropped.output
    assert json.loads(dropped.output)["task_head"] == {
        "kept": False,
        "dropped": "HubertForCTC: a CTC head over 12 tokens",
    }
    assert not (tmp_path / "o").exists()
    # the supervised term of a CTC head: said in the dry run; refused (exit 2) on audio without transcripts
    write_phone_tokenizer(teacher)
    data = write_dataset(tmp_path / "data", per_speaker={"train": 2})
    supervised = [
        "compress", str(teacher), str(data), "--out", str(tmp_path / "o"), "--dry-run",
        "--task-supervised-weight", "0.5",
    ]  # fmt: skip
    shown = CliRunner().invoke(skillkd, supervised)
    assert shown.exit_code == 0, shown.output
    assert "on the manifest's labels, weight 0.5)" in shown.output
    by_default = CliRunner().invoke(skillkd, supervised[:-2])  # the term left to the audio: it has phones
    assert by_default.exit_code == 0, by_default.output
    assert "labels, weight 1 (by default: the manifest has transcripts))" in by_default.output
    refused = CliRunner().invoke(skillkd, [*args, "--task-supervised-weight", "0.5"])
    assert refused.exit_code == 2 and "whose transcript (manifest fields arpabet" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "o").exists()


def test_the_onnx_variants_of_a_task_student_output_its_logits_gated_on_its_decisions(
    tmp_path: Path, audio_dir: Path
) -> None:
    import numpy as np

    from core.export.onnx import model_inputs, onnx_session

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", "wav2vec2", large=True)
    result = run(CompressionSpec(**SPEC, export_onnx=["fp32", "int8"]), teacher, audio_dir, tmp_path / "w")
    onnx = result.report["onnx"]
    assert onnx["fp32_check"]["outputs"] == ["hidden_states", "last_hidden_state", "logits"]
    for variant in ("fp32", "int8"):
        task = onnx["variants"][variant]["task"]
        assert 0.0 <= task["decision_agreement"] <= 1.0 and task["logits_max_abs_diff"] >= 0.0
    assert (
        onnx["variants"]["fp32"]["status"] == "ok"
        and onnx["variants"]["fp32"]["task"]["decision_agreement"] == 1.0
    )
    student, head = load_student(result.export_dir), student_head(result.export_dir)
    wave = np.random.default_rng(3).standard_normal(6000).astype(np.float32)
    hidden, last, logits = onnx_session(result.export_dir / "model.onnx").run(
        None, model_inputs(student, [wave])
    )
    with torch.no_grad():
        reps, _ = student(torch.from_numpy(wave)[None])
        want = head.on_encoder(student, reps).numpy()
        want_last = student.encoder.final_norm(reps[-1]).numpy()
    assert np.abs(logits - want).max() < 1e-4 and np.abs(last - want_last).max() < 1e-4
    assert hidden.shape[0] == student.num_layers + 1


def test_the_supervised_term_trains_an_utterance_classifier_on_the_manifest_labels(tmp_path: Path) -> None:
    from core.errors import AudioError

    labels = {0: "spk0", 1: "spk1", 2: "spk2"}
    teacher = save_tiny_task_teacher(
        tmp_path / "teacher", "sequence", id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    data = write_dataset(tmp_path / "data", per_speaker={"train": 3})
    spec = CompressionSpec(**SPEC, task_supervised_weight=0.5)
    result = run(spec, teacher, data, tmp_path / "w")
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    assert all(row["task_supervised"] > 0 for row in log), log[0]  # every batch has labelled utterances
    # no utterance carries one of the head's labels in the field asked for: refused before any stage
    with pytest.raises(AudioError, match="its field 'emotion' hold none of them"):
        run(spec.model_copy(update={"task_label_field": "emotion"}), teacher, data, tmp_path / "w2")
    # a frame classifier's head cannot be supervised (no frame-label format)
    frame = save_tiny_task_teacher(tmp_path / "frame", "frame", "wav2vec2")
    with pytest.raises(SpecError, match="only an utterance classifier's labels or a CTC head's"):
        run(spec, frame, data, tmp_path / "w3")
    # a classifier's term is asked for: by default it is off, labels or not (a CTC head's is on: below)
    default = run(CompressionSpec(**SPEC), teacher, data, tmp_path / "w4")
    assert "task_supervised" not in json.loads(default.artifacts["train_log"].read_text().splitlines()[0])
    facts = default.report["task_head"]
    assert facts["supervised_weight"] == 0.0 and facts["supervised_by_default"] is False, facts


def test_label_values_list_each_fields_values_until_too_many() -> None:
    """What the service keeps of a dataset to check a classifier's labels at job creation (issue 23)."""
    from core.data.catalog import AudioCatalog, AudioItem

    def item(i: int, **extra) -> AudioItem:
        return AudioItem(f"u{i}", Path(f"u{i}.wav"), 1.0, 16000, 1, speaker=f"s{i % 2}", extra=extra)

    items = [item(i, emotion=["calm", "sad"][i % 2], text=f"words {i}", score=0.5, n=i % 3) for i in range(6)]
    values = AudioCatalog(items, [], Path(".")).label_values(limit=4)
    assert values == {"emotion": ["calm", "sad"], "n": ["0", "1", "2"], "speaker": ["s0", "s1"], "text": None}


def test_the_real_engines_scan_keeps_the_label_values(tmp_path: Path) -> None:
    from service.engine import CoreEngine

    audio = write_audio(tmp_path / "audio", n=3)
    rows = [{"path": f"u{i}.wav", "speaker": "s1", "emotion": ["calm", "sad", "calm"][i]} for i in range(3)]
    (audio / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = CoreEngine().scan_audio(audio)
    assert summary["label_values"]["emotion"] == ["calm", "sad"]
    assert summary["label_values"]["speaker"] == ["s1"]


@pytest.mark.parametrize("weighted", [False, True])
def test_the_head_input_term_pulls_what_the_students_head_reads_to_the_teachers(
    tmp_path: Path, weighted: bool
) -> None:
    """`task_input_weight`: the student's head input (its last hidden state, or a weighted head's layer sum)
    is trained towards the teacher's. The same fixed student trained with and without the term on the same
    batches: with it, the two heads' inputs end closer on audio it never saw; without it the term is not
    computed (not logged)."""
    from core.distill.targets import ClusterTargets, TaskDistill, distill_loss
    from core.distill.train import DistillStep
    from core.models import load_huggingface
    from core.models.heads import load_task_head
    from core.spec import PRESETS, TrainRecipe
    from tests.utils.models import pruned_student

    task = "sequence" if weighted else "ctc"
    directory = save_tiny_task_teacher(tmp_path / "teacher", task, weighted=weighted)
    teacher, head = load_huggingface(directory).eval(), load_task_head(directory)
    assert head is not None
    recipe = TrainRecipe(**{**PRESETS["quick"][2], "warmup_steps": 0})
    unseen = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    gaps = {}
    for input_weight in (0.0, 5.0):
        torch.manual_seed(0)
        student = pruned_student(teacher)
        targets = ClusterTargets([[0], [1, 2]], teacher.config.hidden_size)
        targets.add_task(TaskDistill(head, weight=1.0, temperature=1.0, input_weight=input_weight))
        step = DistillStep(student, teacher, targets, recipe, torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        for i in range(30):
            values, _, _ = step(i, torch.randn(2, 8000, generator=g))
            assert ("task_input" in values) == bool(input_weight)
        assert targets.task is not None
        with torch.no_grad():
            student_in = targets.task.student_head.input_of(student.eval(), student(unseen)[0])
            teacher_in = targets.task.teacher_head.input_of(teacher, teacher(unseen)[0])
        gaps[input_weight] = float(distill_loss([student_in], [teacher_in])[0])
    assert gaps[5.0] < 0.75 * gaps[0.0], gaps  # without the term both runs are the same run


def test_the_supervised_term_trains_a_ctc_head_on_whole_transcribed_utterances(tmp_path: Path) -> None:
    """A CTC teacher's supervised term: each step also trains on one whole utterance of the manifest's phones
    (the crops would cut a transcript), tokenized by the teacher's vocab.json; logged in both stages."""
    from core.data import scan_audio
    from core.inputs import task_head, task_labels

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", vocab_size=8)
    vocab = write_phone_tokenizer(teacher)
    data = write_dataset(tmp_path / "data", per_speaker={"train": 2, "test": 1})
    spec = CompressionSpec(**SPEC, task_supervised_weight=1.0)
    catalog = scan_audio(data)
    labels = task_labels(task_head(teacher, spec), catalog, spec, teacher)
    assert labels is not None and len(labels) == len(catalog.items)  # every utterance has phones
    first = catalog.items[0]
    assert labels[first.id] == [vocab[p] for p in first.extra["arpabet"].split()]

    events: list = []
    result = run(spec, teacher, data, tmp_path / "w", on_event=events.append)
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    assert all(row["task_supervised"] > 0 for row in log), log[0]
    assert {row["stage"] for row in log} == {"distill_prune", "final_distill"}
    said = f"the supervised term trains on {len(labels)} transcribed utterances of {len(catalog.items)}"
    assert any(e.message == said for e in events)
    assert result.report["task_head"]["supervised_weight"] == 1.0

    # left to the audio (the default), the term is on with these transcripts, and the run says why
    default = CompressionSpec(**SPEC)
    assert task_labels(task_head(teacher, default), catalog, default, teacher) == labels
    events.clear()
    result = run(default, teacher, data, tmp_path / "w1", on_event=events.append)
    assert any(e.message == said + " (on by default with labels in the manifest; task_supervised_weight "
               "0 turns it off)" for e in events), [e.message for e in events]  # fmt: skip
    assert result.report["task_head"]["supervised_by_default"] is True

    # transcripts the vocabulary cannot spell: refused before any stage, saying why
    (teacher / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "X": 2}))
    with pytest.raises(AudioError, match="transcripts use tokens the vocabulary lacks"):
        run(spec, teacher, data, tmp_path / "w2")
    # ... where by default the term is off, as for audio without transcripts
    assert task_labels(task_head(teacher, default), catalog, default, teacher) is None
    # no tokenizer: nothing to turn transcripts into tokens
    (teacher / "vocab.json").unlink()
    with pytest.raises(SpecError, match="no tokenizer"):
        run(spec, teacher, data, tmp_path / "w3")
    assert task_labels(task_head(teacher, default), catalog, default, teacher) is None


def test_transcripts_become_the_ctc_heads_tokens_as_transformers_tokenizer_makes_them(tmp_path: Path) -> None:
    from transformers import Wav2Vec2CTCTokenizer

    from core.models.heads import transcript_ids

    vocab = {
        "<pad>": 0,
        "<unk>": 1,
        "|": 2,
        **{c: 3 + i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")},
    }
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    for text in ("HELLO WORLD", "it's a test"):
        assert transcript_ids(text, vocab) == tokenizer(text.upper()).input_ids
    # runs of spaces are one word boundary (the tokenizer would emit "| |", two delimiters to align)
    assert transcript_ids("it's a  test", vocab) == transcript_ids("it's a test", vocab)
    assert transcript_ids("naïve", vocab) is None and transcript_ids("  ", vocab) is None
    phones = {"<pad>": 0, "AA": 1, "B": 2}
    assert transcript_ids("AA B AA", phones) == [1, 2, 1] and transcript_ids("AA ZH", phones) is None


def test_the_ctc_loss_is_transformers_ctc_loss_with_mean_reduction() -> None:
    """core.models.heads.ctc_loss against transformers' HubertForCTC computing its own loss from labels."""
    from transformers import HubertConfig, HubertForCTC

    from core.models.heads import ctc_loss

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, vocab_size=7, pad_token_id=0, ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )  # fmt: skip
    model = HubertForCTC(config).eval()
    waves = torch.randn(2, 4000)
    labels = [[1, 2, 3, 2], [4, 5, 6]]
    padded = torch.tensor([labels[0], labels[1] + [-100]])
    with torch.no_grad():
        out = model(waves, labels=padded)
    ours = ctc_loss(out.logits, labels, blank=0)
    assert torch.allclose(ours, out.loss, atol=1e-5), (ours, out.loss)


def test_whole_utterances_visit_every_labelled_utterance_once_per_pass_and_resume_alike(
    tmp_path: Path,
) -> None:
    from core.data import WholeUtterances, scan_audio

    catalog = scan_audio(write_dataset(tmp_path / "data", per_speaker={"train": 2, "test": 1}))
    ids = [item.id for item in catalog.items][:5]
    whole = WholeUtterances(catalog, ids, 16000, seed=3)
    served = [whole.serve(step).ids[0] for step in range(10)]
    assert sorted(served[:5]) == sorted(ids) and sorted(served[5:]) == sorted(ids)
    assert served != served[:5] * 2 or len(ids) == 1  # a fresh order each pass
    assert [WholeUtterances(catalog, ids, 16000, seed=3).serve(s).ids[0] for s in (7, 2)] == [
        served[7],
        served[2],
    ]
    batch = whole.serve(0)
    item = next(i for i in catalog.items if i.id == batch.ids[0])
    assert batch.waveforms.shape == (1, round(item.duration_s * 16000)) and batch.lengths.tolist() == [
        batch.waveforms.shape[1]
    ]
    # two ranks draw different utterances at the same step
    ranks = [WholeUtterances(catalog, ids, 16000, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].index(0) != ranks[1].index(0)
