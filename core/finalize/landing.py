"""Exact landing: make the pruned student's size hit its targets before the pruning becomes physical.

Stage 1 steers the *expected* size of the Hard Concrete masks to the target, but the deterministic eval gates
keep round(L0) units per group, and the Lagrangian oscillates around its target at the end of a short run: the
architecture that `prune()` would produce misses the target by a few percent (0.729-0.757 sparsity for a 0.75
target over quick runs). Landing moves single units, guided by the masks' own scores (`log_alpha`), until
every size is within `tolerance` of its target:

- while sizes are only above their bands: drop the weakest kept unit (over all masks) whose removal pushes no
  size below its band;
- while sizes are only below their bands: restore the strongest dropped unit whose return pushes no size
  above its band;
- when one size is above and another below (a params target and a MACs target pulling apart), or when no
  unit fits in the band: take the move that brings the sizes closest to their targets (squared relative
  miss beyond the band), e.g. drop FFN units (many parameters, few MACs) and restore conv channels; when no
  single unit helps, the best trade of one dropped unit for one restored unit of another mask.

Sizes are the exact counts of what `prune()` would keep (`SpeechEncoder.expected_num_params` and
`expected_macs` in eval mode, and a latency budget's predicted seconds, `CostModel.predict`, linear in the
same counts). All are multilinear in the number of units each mask keeps (every term is a
product of different masks' counts), so one backward pass through them with the counts as leaves gives the
exact change that one unit more or less in each mask makes. The choices are written into the masks'
`keep_override`, which `HardConcrete.deterministic()` and therefore `prune()` honour.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.models import HardConcrete, SpeechEncoder
from core.models.components import ConvLayerBlock
from core.models.latency import CostModel
from core.spec import Budget

TOLERANCE = 0.005  # relative to each target


def _totals(student: SpeechEncoder, seconds: float, cost_model: CostModel | None) -> dict[str, Any]:
    totals = {"params": student.expected_num_params(), "macs": student.expected_macs(seconds)}
    if cost_model is not None:
        totals["latency"] = cost_model.predict(student)
    return totals


def measure(student: SpeechEncoder, seconds: float, cost_model: CostModel | None = None) -> dict[str, float]:
    """Exact parameters and MACs per audio second of the architecture `prune()` would produce now, and with a
    `cost_model` its predicted latency in seconds."""
    was_training = student.training
    student.eval()
    with torch.no_grad():
        sizes = {k: float(v) for k, v in _totals(student, seconds, cost_model).items()}
    student.train(was_training)
    return sizes


def _sizes_and_unit_costs(
    student: SpeechEncoder,
    masks: list[HardConcrete],
    kinds: list[Any],
    seconds: float,
    cost_model: CostModel | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Sizes now, and per mask the exact change of each size when the mask keeps one unit more."""
    leaves = []
    for hc in masks:
        assert hc.keep_override is not None
        leaf = hc.keep_override.sum().to(hc.log_alpha.dtype).detach().requires_grad_(True)
        hc.count_override = leaf
        leaves.append(leaf)
    try:
        with torch.enable_grad():
            totals = _totals(student, seconds, cost_model)
            sizes = {k: float(v.detach()) for k, v in totals.items()}
            costs = {}
            for kind in kinds:
                grads = torch.autograd.grad(totals[kind], leaves, allow_unused=True, retain_graph=True)
                costs[kind] = np.array([0.0 if g is None else float(g) for g in grads])
    finally:
        for hc in masks:
            hc.count_override = None
    return sizes, costs


TRADE = 64  # most units of one mask moved against one unit of another when single moves are stuck


def _best_trade(
    options: list[Any],
    now: np.ndarray,
    unit_cost: np.ndarray,
    kept: list[np.ndarray],
    orders: list[np.ndarray],
    floor: np.ndarray,
    badness: Any,
) -> list[Any]:
    """The move (one option, then n units of another mask in either direction) that brings the sizes closest
    to their targets, or [] when none is closer than now. Costs are per-unit and linear, exact for masks that
    do not multiply each other; the next measurement corrects the rest."""
    best: tuple[float, list[Any]] = (float(badness(now)), [])
    for first in options:
        start = first[4]
        for m in range(len(kept)):
            if m == first[0]:
                continue
            order = orders[m]
            for keep in (False, True):
                available = int(kept[m].sum() - floor[m]) if not keep else int((~kept[m]).sum())
                n = min(TRADE, available)
                if n <= 0:
                    continue
                counts = np.arange(1, n + 1)[:, None]
                after = start + (1 if keep else -1) * counts * unit_cost[m]  # (n, budget)
                values = badness(after)
                i = int(np.argmin(values))
                if values[i] < best[0]:
                    in_order = order[kept[m][order]] if not keep else order[::-1][~kept[m][order[::-1]]]
                    units = [(m, int(u), keep, 0.0, after[i]) for u in in_order[: i + 1]]
                    best = (float(values[i]), [first, *units])
    return best[1]


def _batch_in_one_direction(
    dropping: bool,
    now: np.ndarray,
    unit_cost: np.ndarray,
    kept: list[np.ndarray],
    orders: list[np.ndarray],
    floor: np.ndarray,
    scores: list[np.ndarray],
    misses: Any,
    aim: float,
) -> list[Any]:
    """While every missed size is on one side of its band: the moves of one re-measurement, in score order.

    Dropping takes the weakest kept units over all masks (restoring, the strongest dropped ones), skipping a
    unit whose predicted move would push some size past the far side of its band, exactly as one unit per
    measurement would; but it keeps going until the predicted excess beyond the band has halved. Unit costs
    change as other masks' counts change (a conv layer's MACs depend on its neighbours' channels), so the next
    measurement corrects the prediction; halving keeps a run that starts far from its target (a short stage 1)
    at a few dozen measurements instead of one per unit, and the last units still move one at a time.
    """

    def excess(values: np.ndarray) -> float:
        m = misses(values)
        return float(np.maximum(m - aim, 0.0).sum() if dropping else np.maximum(-m - aim, 0.0).sum())

    candidates: list[
        tuple[float, int, int]
    ] = []  # (score, mask, unit): kept units above each mask's floor when dropping, dropped ones else
    for m, order in enumerate(orders):
        in_order = order[kept[m][order]] if dropping else order[~kept[m][order]]
        if dropping:
            in_order = in_order[: max(0, len(in_order) - int(floor[m]))]
        candidates.extend((float(scores[m][u]), m, int(u)) for u in in_order)
    candidates.sort(key=lambda c: c[0], reverse=not dropping)
    start, predicted = excess(now), now.copy()
    step: list[Any] = []
    blocked: set[int] = set()  # masks whose next unit does not fit: their other units cost the same
    for score, m, unit in candidates:
        if m in blocked:
            continue
        after = predicted - unit_cost[m] if dropping else predicted + unit_cost[m]
        if (misses(after) < -aim if dropping else misses(after) > aim).any():
            blocked.add(m)
            continue
        step.append((m, unit, not dropping, score, after))
        predicted = after
        if excess(predicted) <= start / 2:
            break
    return step


def _single_unit_options(
    now: np.ndarray,
    unit_cost: np.ndarray,
    kept: list[np.ndarray],
    orders: list[np.ndarray],
    floor: np.ndarray,
    scores: list[np.ndarray],
) -> list[tuple[int, int, bool, float, np.ndarray]]:
    """One candidate per mask and direction: its weakest kept unit, its strongest dropped unit, each as
    (mask, unit, keep?, score, sizes after)."""
    options: list[tuple[int, int, bool, float, np.ndarray]] = []
    for m, order in enumerate(orders):
        kept_in_order = kept[m][order]
        if kept[m].sum() > floor[m]:
            unit = int(order[np.argmax(kept_in_order)])
            options.append((m, unit, False, scores[m][unit], now - unit_cost[m]))
        if not kept_in_order.all():
            unit = int(order[len(order) - 1 - np.argmax(~kept_in_order[::-1])])
            options.append((m, unit, True, scores[m][unit], now + unit_cost[m]))
    return options


def _mask_state(
    student: SpeechEncoder, masks: list[HardConcrete]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per mask: the fewest units it must keep, its units' scores (log_alpha), their order weakest first,
    and which units its eval gate keeps now (also set as each mask's `keep_override`, which landing moves)."""
    # prune() keeps at least one channel of a conv layer: its last kept channel is never a candidate
    conv_masks = {
        id(block.hard_concrete)
        for block in student.modules()
        if isinstance(block, ConvLayerBlock) and block.hard_concrete is not None
    }
    floor = np.array([1 if id(hc) in conv_masks else 0 for hc in masks])
    scores = [hc.log_alpha.detach().cpu().numpy().astype(np.float64) for hc in masks]
    orders = [np.argsort(s, kind="stable") for s in scores]
    kept = []
    for hc in masks:
        hc.keep_override = hc.deterministic() != 0
        kept.append(hc.keep_override.cpu().numpy().copy())
    return floor, scores, orders, kept


def land(
    student: SpeechEncoder,
    budgets: list[Budget],
    *,
    seconds: float = 10.0,
    tolerance: float = TOLERANCE,
    max_moves: int | None = None,
    cost_model: CostModel | None = None,
) -> dict[str, Any]:
    """Adjust the student's eval gates until every budget is met within `tolerance`; returns a record with
    each target, the size before and after, the number of units moved and whether all landed. A latency
    budget needs the `cost_model` that predicts it."""
    if any(b.kind == "latency" for b in budgets) and cost_model is None:
        raise ValueError("a latency budget needs the cost model that predicts the student's latency")
    student.eval()
    masks = student.hard_concretes()
    floor, scores, orders, kept = _mask_state(student, masks)
    kinds = [b.kind for b in budgets]
    # moves aim at half the tolerance, so a student does not stop on the edge of its band; `landed` is judged
    # against the full tolerance
    aim = tolerance / 2
    targets = np.array([b.target for b in budgets])

    def misses(values: np.ndarray) -> np.ndarray:
        return values / targets - 1.0  # (..., budget)

    def badness(values: np.ndarray) -> np.ndarray:
        beyond = np.maximum(np.abs(misses(values)) - aim, 0.0)
        return (beyond**2).sum(-1) + 1e-6 * (misses(values) ** 2).sum(-1)

    before = measure(student, seconds, cost_model)
    moves = 0
    limit = sum(hc.n for hc in masks) if max_moves is None else max_moves
    history: list[tuple[float, list[np.ndarray]]] = []
    while budgets and moves < limit:
        sizes, costs = _sizes_and_unit_costs(student, masks, kinds, seconds, cost_model)
        now = np.array([sizes[k] for k in kinds])
        over, under = misses(now) > aim, misses(now) < -aim
        history.append((float(badness(now)), [k.copy() for k in kept]))
        if not over.any() and not under.any():
            break
        unit_cost = np.stack([costs[k] for k in kinds], axis=-1)  # (mask, budget)
        step: list[tuple[int, int, bool, float, np.ndarray]] = []
        if over.any() != under.any():  # one direction: follow the scores, staying inside the far side
            step = _batch_in_one_direction(
                bool(over.any()), now, unit_cost, kept, orders, floor, scores, misses, aim
            )
        if not step:
            options = _single_unit_options(now, unit_cost, kept, orders, floor, scores)
            if not options:
                break
            chosen = min(options, key=lambda o: (float(badness(o[4])), -o[3] if o[2] else o[3]))
            step = [chosen]
            if badness(chosen[4]) >= badness(now):
                # no single unit brings the sizes closer: trade one unit of a mask for up to TRADE units of
                # another (e.g. restore one head, which costs many MACs, and drop n FFN units)
                step = _best_trade(options, now, unit_cost, kept, orders, floor, badness)
                if not step:
                    break
        for m, unit, keep, _, _ in step:
            kept[m][unit] = keep
            override = masks[m].keep_override
            assert override is not None
            override[unit] = keep
        moves += len(step)
    best_badness, best_kept = min(history, key=lambda h: h[0]) if history else (0.0, kept)
    for hc, keep_mask in zip(masks, best_kept):  # the closest state seen (moves may oscillate at the end)
        hc.keep_override = torch.from_numpy(keep_mask).to(hc.log_alpha.device)
    after = measure(student, seconds, cost_model)
    final = np.array([after[k] for k in kinds]) if budgets else np.zeros(0)
    return {
        "tolerance": tolerance,
        "units_moved": moves,
        "landed": bool((np.abs(misses(final)) <= tolerance).all()) if budgets else True,
        "targets": {b.kind: _target_record(b, before, after) for b in budgets},
    }


def _target_record(budget: Budget, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    kind = budget.kind
    return {
        "target": budget.target,
        "teacher": budget.teacher,
        "target_sparsity": budget.sparsity,
        "before": before[kind],
        "after": after[kind],
        "achieved_sparsity": 1.0 - after[kind] / budget.teacher,
    }


__all__ = ["land", "measure", "TOLERANCE"]
