"""`skillkd submit --wait` / `skillkd demo` progress: the stage-2 bar counts to its total (it stayed at `0it`
when its first poll saw the stage_started row, which has no total), and the stage-1 bar shows what a
compression user watches: sparsity against its target, expected parameters (and MACs), λ."""

from __future__ import annotations

import io

from cli.progress import ProgressBars, postfix


def job(stage: str, step: int, total: int, **metrics) -> dict:
    return {
        "status": "running",
        "stage": stage,
        "progress": {"stage": stage, "step": step, "total_steps": total, "metrics": metrics},
    }


def test_stage_two_bar_counts_to_its_total_after_a_first_poll_without_one():
    out = io.StringIO()
    view = ProgressBars(file=out)
    view.job(job("final_distill", 0, 0))  # stage_started: no total yet
    view.job(job("final_distill", 40, 80, loss=0.5))
    assert view.bar.total == 80 and view.bar.n == 40
    view.close()
    assert "40/80" in out.getvalue()


def test_a_stage_without_steps_shows_its_elapsed_time_not_zero_steps():
    out = io.StringIO()
    view = ProgressBars(file=out)
    view.job(job("export", 0, 0))
    view.close()
    assert "export: 00:00" in out.getvalue() and "0step" not in out.getvalue()


def test_stage_one_postfix_shows_sparsity_params_macs_and_lambda():
    shown = postfix(
        "distill_prune",
        {
            "distill": 0.25,
            "sparsity": 0.61,
            "target_sparsity": 0.7,
            "expected_params": 4_321_000,
            "expected_macs": 2.5e9,
            "macs_sparsity": 0.4,
            "lambda1": 0.125,
        },
    )
    assert shown == {
        "loss": "0.25",
        "sparsity": "0.610→0.700",
        "params": "4.32M",
        "MACs/s": "2.5G",
        "MACs sparsity": "0.400",
        "λ": "0.125",
    }
    assert postfix("final_distill", {"distill": 0.5, "sparsity": 0.7}) == {"loss": "0.5"}
