"""Progress of the engine on stderr, for every `skillkd` command that waits on it: one renderer, whether the
engine runs in this process (compress, analyze, evaluate, compare) or in the service (submit --wait, demo).

    bars = ProgressBars()        json_lines=True: each event as one JSON line instead; quiet=True: nothing
    bars(event)                  an engine event (a core.events.OnEvent)
    bars.job(job)                a job polled from the service: its `progress` is the engine's latest event
    bars.close()

One tqdm bar per phase: a stage, or a named part of one (the evaluation's "extract hubert-mini"). A bar is
(re)made when the phase changes or when its total becomes known, so a stage whose first poll saw no total (the
stage_started row) still gets a bar that counts to its total; a phase without a known total shows its elapsed
time, not an open-ended `0step`. Stage starts, clusters and log lines are printed as lines above the bar.

A bar ends at its total when its phase finished: on the engine's stage_finished (or the next stage's start),
and for a polled job when a later phase shows up or the job succeeded. Progress rows are throttled (and polls
sample them), so the last step seen is often short of the total (2/4, 9/10); a phase that did not finish (the
job failed, was cancelled or paused) keeps the step it reached.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import click

from core.events import Event


def compact_count(value: Any) -> str:
    """12345678 -> '12.3M'."""
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def postfix(stage: str | None, metrics: dict[str, Any]) -> dict[str, str]:
    """What a compression user watches on a stage's bar: in stage 1 the achieved vs target sparsity, the
    expected parameters (and MACs when the engine reports them) and the multiplier λ; the loss elsewhere."""
    out: dict[str, str] = {}
    loss = metrics.get("distill", metrics.get("loss"))
    if loss is not None:
        out["loss"] = f"{float(loss):.4g}"
    if stage == "distill_prune":
        if "sparsity" in metrics:
            target = metrics.get("target_sparsity")
            out["sparsity"] = f"{float(metrics['sparsity']):.3f}" + (
                f"→{float(target):.3f}" if target is not None else ""
            )
        if "expected_params" in metrics:
            out["params"] = compact_count(metrics["expected_params"])
        if "expected_macs" in metrics:
            out["MACs/s"] = compact_count(metrics["expected_macs"])
        if "macs_sparsity" in metrics:
            target = metrics.get("target_macs_sparsity")
            out["MACs sparsity"] = f"{float(metrics['macs_sparsity']):.3f}" + (
                f"→{float(target):.3f}" if target is not None else ""
            )
        if "expected_latency" in metrics:
            out["latency"] = f"{1000 * float(metrics['expected_latency']):.0f} ms"
        if "latency_sparsity" in metrics:
            target = metrics.get("target_latency_sparsity")
            out["latency sparsity"] = f"{float(metrics['latency_sparsity']):.3f}" + (
                f"→{float(target):.3f}" if target is not None else ""
            )
        if "lambda1" in metrics:
            out["λ"] = f"{float(metrics['lambda1']):.3g}"
    return out


class ProgressBars:
    """Engine events, or polled jobs, as tqdm bars on stderr (or `file`); see the module's docstring.

    `leave`: whether a finished phase's bar stays on the screen (the evaluation's many short phases do not);
    `unit`: what a bar counts."""

    def __init__(
        self,
        *,
        json_lines: bool = False,
        quiet: bool = False,
        leave: bool = True,
        unit: str = "step",
        file: TextIO | None = None,
    ) -> None:
        self.json_lines = json_lines
        self.quiet = quiet
        self.leave = leave
        self.unit = unit
        self.file = file
        self.bar: Any = None
        self.phase: tuple[str | None, str] | None = None
        self.total: int | None = None

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if self.json_lines:
            self._echo(json.dumps({"event": event.to_dict()}, default=str))
        elif event.kind == "progress":
            self._show(
                (event.stage, event.message),
                event.message or event.stage,
                event.step,
                event.total or None,
                event.metrics,
            )
        elif event.kind == "stage_started":
            self.close(finished=True)
            self._echo(f"» {event.stage}")
        elif event.kind == "clusters":
            self._echo(f"  clusters: {event.metrics.get('clusters')}")
        elif event.kind in ("log", "skipped_audio"):
            self._echo(f"  {event.message}")
        elif event.kind == "stage_finished":
            self.close(finished=True)

    def job(self, job: dict[str, Any]) -> None:
        """Show a job as the service returned it (GET /v1/jobs/{id})."""
        if self.quiet:
            return
        progress = job.get("progress") or {}
        stage = progress.get("stage") or job.get("stage")
        self._show(
            (stage, ""),
            stage or job["status"],
            int(progress.get("step") or 0),
            int(progress.get("total_steps") or 0) or None,
            progress.get("metrics") or {},
        )
        if job.get("status") == "succeeded":
            self.close(finished=True)

    def close(self, *, finished: bool = False) -> None:
        """Close the open bar; `finished`: its phase is done, so it ends at its total."""
        if self.bar is not None:
            if finished and self.total is not None and self.bar.n < self.total:
                self.bar.n = self.total
                self.bar.refresh()
            self.bar.close()
            self.bar = None

    def _show(
        self, phase: tuple[str | None, str], desc: str, step: int, total: int | None, metrics: dict[str, Any]
    ) -> None:
        from tqdm import tqdm

        if self.bar is None or phase != self.phase or (total is not None and total != self.total):
            same_phase = self.bar is not None and phase == self.phase
            if same_phase:  # same phase, total now known: replace the bar
                self.bar.leave = False
            self.close(finished=not same_phase)  # a later phase: the previous one finished
            self.phase, self.total = phase, total
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=self.unit,
                file=self._file(),
                leave=self.leave,
                dynamic_ncols=True,
                bar_format=None if total is not None else "{desc}: {elapsed}",
            )
        self.bar.n = step
        self.bar.set_postfix(postfix(phase[0], metrics), refresh=False)
        self.bar.refresh()

    def _file(self) -> TextIO:
        return self.file if self.file is not None else sys.stderr

    def _echo(self, line: str) -> None:
        if self.bar is not None:  # above the open bar, which is drawn again below the line
            from tqdm import tqdm

            tqdm.write(line, file=self._file())
        else:
            click.echo(line, file=self.file, err=self.file is None)


__all__ = ["ProgressBars", "compact_count", "postfix"]
