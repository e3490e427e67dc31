"""Data-parallel training on CPU with the gloo backend: 2 processes with half the batch each follow the same
loss trajectory as one process with the whole batch."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.data import Batch
from core.distill.parallel import end_group
from core.distill.targets import ClusterTargets
from core.distill.train import StageContext, train_stage
from core.models import load_huggingface, make_student
from core.spec import CompressionSpec
from tests.utils.models import save_tiny_teacher

STEPS = 6
GLOBAL_BATCH = 4


class FixedBatches:
    """The same global batches every run; a rank takes its contiguous share of each (the stream interface
    `core.data.loader.BatchLoader` reads)."""

    def __init__(self, rank: int = 0, world_size: int = 1, seed: int = 0, accumulation: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.batches = [torch.randn(GLOBAL_BATCH, 6000, generator=g) for _ in range(STEPS)]
        self.rank, self.world_size, self.accumulation, self.position = rank, world_size, accumulation, 0

    @property
    def consumed(self) -> int:
        return self.position

    def seek(self, consumed: int) -> None:
        self.position = consumed

    def serve(self, index: int) -> Batch:
        """Micro-batch `index` of this rank: part r + k * world_size of step index // accumulation's global
        batch, k = index % accumulation (as `core.data.TrainBatches` splits a step)."""
        step, k = divmod(index, self.accumulation)
        full = self.batches[step % len(self.batches)]
        share = GLOBAL_BATCH // (self.world_size * self.accumulation)
        part = self.rank + k * self.world_size
        rows = full[part * share : (part + 1) * share]
        return Batch(rows, torch.full((rows.shape[0],), rows.shape[1]), [])

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def _train(teacher_dir: Path, workdir: Path, rank: int, world_size: int, accumulation: int = 1) -> None:
    torch.set_num_threads(1)
    teacher = load_huggingface(teacher_dir)
    torch.manual_seed(0)
    student = make_student(teacher)
    targets = ClusterTargets([[0], [1, 2]], teacher.config.hidden_size)
    recipe = CompressionSpec(stage1_steps=STEPS, checkpoint_every=100).recipe(1)
    ctx = StageContext(
        workdir,
        recipe,
        torch.device("cpu"),
        "distill_prune",
        0.5,
        teacher.num_params(),
        seed=0,
        rank=rank,
        world_size=world_size,
        accumulation=accumulation,
    )
    batches = FixedBatches(rank, world_size, accumulation=accumulation)
    train_stage(student, teacher, targets, batches, ctx)  # type: ignore[arg-type]


def _worker(rank: int, world_size: int, port: int, teacher_dir: str, workdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        _train(Path(teacher_dir), Path(workdir), rank, world_size)
    finally:
        end_group()  # as the product's ranks end (a bare destroy sometimes aborts at exit)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    teacher_dir = save_tiny_teacher(tmp_path / "teacher")
    _train(teacher_dir, tmp_path / "single", 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), str(teacher_dir), str(tmp_path / "ddp")), nprocs=2, join=True)
    single, ddp = _log(tmp_path / "single"), _log(tmp_path / "ddp")
    assert len(single) == len(ddp) == STEPS
    for a, b in zip(single, ddp):
        for key in ("distill", "sparsity", "lambda1", "grad_norm"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    # and the two runs really trained: the loss moved
    assert single[0]["distill"] != single[-1]["distill"]


def test_one_process_accumulating_two_batches_matches_two_processes(tmp_path: Path) -> None:
    """The issue's exactness check: the same global batch and seed, 1 process x 2 accumulated batches and 2
    processes x 1 give the same weights, masks and Lagrange multipliers after the steps (float tolerance)."""
    from core.distill.train import CHECKPOINT, load_checkpoint

    teacher_dir = save_tiny_teacher(tmp_path / "teacher")
    _train(teacher_dir, tmp_path / "accumulated", 0, 1, accumulation=2)
    mp.spawn(_worker, args=(2, _free_port(), str(teacher_dir), str(tmp_path / "ddp")), nprocs=2, join=True)
    one = load_checkpoint(tmp_path / "accumulated" / CHECKPOINT)
    two = load_checkpoint(tmp_path / "ddp" / CHECKPOINT)
    assert one["step"] == two["step"] == STEPS
    for part in ("student", "targets", "lagrangians"):
        assert one[part].keys() == two[part].keys()
        for name, value in one[part].items():
            torch.testing.assert_close(value, two[part][name], rtol=1e-4, atol=1e-5, msg=f"{part}.{name}")
    torch.manual_seed(0)
    untrained = make_student(load_huggingface(teacher_dir)).state_dict()
    moved = {n for n, v in one["student"].items() if not torch.equal(v, untrained[n])}
    assert any("log_alpha" in n for n in moved) and any("log_alpha" not in n for n in moved)  # both trained
    for a, b in zip(_log(tmp_path / "accumulated"), _log(tmp_path / "ddp")):
        for key in ("distill", "sparsity", "lambda1", "grad_norm"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])


def test_pipeline_with_two_processes_produces_a_student(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from core.models import load_student
    from core.pipeline import run

    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(audio / f"u{i}.wav", (0.3 * rng.standard_normal(16000)).astype(np.float32), 16000)
    teacher_dir = save_tiny_teacher(tmp_path / "teacher")
    spec = CompressionSpec(stage1_steps=4, stage2_steps=2, batch_seconds=2.0, gpus=2, device="cpu")
    events = []
    result = run(spec, teacher_dir, audio, tmp_path / "w", on_event=events.append)
    assert load_student(result.export_dir).num_params() == result.report["student"]["num_params"]
    steps = [e.step for e in events if e.kind == "progress" and e.stage == "distill_prune"]
    assert steps == [1, 2, 3, 4]  # rank 0's events reach the caller once each


def test_a_ctc_heads_supervised_term_trains_on_two_processes(tmp_path: Path) -> None:
    """Each rank trains on its own whole transcribed utterance per step beside its crops (kept local until
    the step's last micro-batch reduces the gradients): the run ends with the term logged in both stages."""
    import json

    from core.pipeline import run
    from tests.utils.evaluation import write_dataset
    from tests.utils.models import save_tiny_task_teacher, write_phone_tokenizer

    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", vocab_size=8)
    write_phone_tokenizer(teacher)
    data = write_dataset(tmp_path / "data", per_speaker={"train": 2})
    spec = CompressionSpec(
        stage1_steps=3, stage2_steps=2, batch_seconds=2.0, gpus=2, device="cpu", task_supervised_weight=1.0
    )
    result = run(spec, teacher, data, tmp_path / "w")
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 1, 2]
    assert all(row["task_supervised"] > 0 for row in log), log


def test_int8_aware_consistency_trains_on_two_processes(tmp_path: Path) -> None:
    """The int8-aware consistency term's rounded pass runs through DDP beside the step's (its gradients kept
    local until the step's last backward reduces them): stage 2 logs it on two ranks."""
    import json

    from core.pipeline import run
    from tests.utils.audio import write_audio

    spec = CompressionSpec(
        stage1_steps=2,
        stage2_steps=3,
        batch_seconds=2.0,
        gpus=2,
        device="cpu",
        int8_aware=True,
        int8_aware_consistency=1.0,
    )
    result = run(spec, save_tiny_teacher(tmp_path / "teacher"), write_audio(tmp_path / "a"), tmp_path / "w")
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    assert [row["int8_consistency"] for row in log if row["stage"] == "final_distill"] != []
    assert all("int8_consistency" in row for row in log if row["stage"] == "final_distill")
    assert result.report["stage2"]["int8_aware"]["consistency"] == 1.0


def _check_inputs(rank: int, port: int, teachers: list[str], audio: str, out: str) -> None:
    from core.data import scan_audio
    from core.distill.parallel import StageJob, same_inputs_everywhere
    from core.errors import SkillkdError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:  # rank 1 sees other teacher files at "the same path" (as a machine without the shared copy would)
        job = StageJob("distill_prune", "{}", teachers[rank], audio, out, [[0]])
        same_inputs_everywhere(job, scan_audio(audio))
        message = "same"
    except SkillkdError as exc:
        message = exc.message
    finally:
        end_group()  # as the product's ranks end (a bare destroy sometimes aborts at exit)
    Path(out, f"rank{rank}.txt").write_text(message)


def test_a_rank_that_sees_another_teacher_is_refused_on_every_rank(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        sf.write(audio / f"u{i}.wav", np.zeros(16000, dtype=np.float32) + 0.1 * i, 16000)
    one, other = save_tiny_teacher(tmp_path / "t0", seed=0), save_tiny_teacher(tmp_path / "t1", seed=1)
    for teachers, expected in (([one, one], "same"), ([one, other], "the teacher on ranks [1] differ")):
        mp.spawn(
            _check_inputs,
            args=(_free_port(), [str(t) for t in teachers], str(audio), str(tmp_path)),
            nprocs=2,
            join=True,
        )
        said = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
        assert all(message.startswith(expected) for message in said), said


def test_every_rank_of_a_restarted_group_gets_one_fresh_store_prefix() -> None:
    """Node agents count restarts differently, so the group's store prefix comes from a handshake: each rank
    counts its own starts, rank 0 answers the hello of each rank's current start. Here rank 1 started twice
    before (one start died after its hello, never acknowledged) and rank 2 once; every rank of this start gets
    the same prefix, unlike the one of an earlier start."""
    import threading

    from core.distill.parallel import group_prefix

    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, 4, is_master=True, wait_for_workers=False)

    def client() -> dist.TCPStore:  # one connection per rank, as each rank's process has
        return dist.TCPStore("127.0.0.1", port, 4, is_master=False, timeout=timedelta(seconds=20))

    store.add("skillkd/joins/1", 2)  # rank 1's two earlier starts; the second said hello and died
    store.set("skillkd/hello/1/2", "1")
    store.add("skillkd/joins/2", 1)
    store.set("skillkd/hello/2/1", "1")
    store.set("skillkd/ack/2/1", "1")
    got: dict[int, str] = {}

    def join(rank: int, delay: float) -> None:
        import time

        time.sleep(delay)
        got[rank] = group_prefix(client(), rank, 4, poll_s=0.01)

    threads = [
        threading.Thread(target=join, args=(r, d)) for r, d in ((0, 0.0), (1, 0.3), (2, 0.1), (3, 0.2))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == [0, 1, 2, 3] and len(set(got.values())) == 1, got
    assert store.get("skillkd/go/1/2").decode() == got[0]  # the dead start's hello was answered, in vain
    again: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda r=r: again.__setitem__(r, group_prefix(client(), r, 4, poll_s=0.01)))
        for r in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(set(again.values())) == 1 and again[0] != got[0]
