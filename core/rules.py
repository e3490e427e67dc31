"""What a spec must satisfy against a teacher's shape (its layers, parameters and MACs), written once.

The pipeline checks these before a run (`core.inputs.prepare_inputs`) and the service when a job is created
(`api/job_checks.py`), so a job the API accepts is never refused later by its worker for one of them. Only
the standard library: the API process calls these without loading torch or numpy. Each rule raises
`SpecError` naming the spec field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral

from core.errors import SpecError
from core.spec import CompressionSpec

__all__ = [
    "validate_clusters",
    "dphubert_clusters",
    "fixed_clusters",
    "check_target_weights",
    "check_reachable",
    "check_against_teacher",
]


def validate_clusters(clusters: Sequence[Sequence[int]], num_reps: int) -> list[list[int]]:
    """Check user-given clusters (which bypass clustering) and put them in canonical order.

    Args:
        clusters: lists of representation indices, e.g. [[0], [4], [8], [12]].
        num_reps: R = L + 1.
    Returns:
        Each cluster ascending, clusters sorted by their first index: the order of the distillation targets.
    """
    if len(clusters) == 0:
        raise ValueError("clusters: expected at least one cluster, found none")
    seen: dict[int, int] = {}
    out: list[list[int]] = []
    for c, cluster in enumerate(clusters):
        if isinstance(cluster, (str, bytes)) or not isinstance(cluster, Sequence):
            raise ValueError(f"clusters[{c}]: expected a list of layer indices, found {cluster!r}")
        if len(cluster) == 0:
            raise ValueError(f"clusters[{c}] is empty")
        members: list[int] = []
        for index in cluster:
            if isinstance(index, bool) or not isinstance(index, Integral):
                raise ValueError(f"clusters[{c}]: layer indices must be integers, found {index!r}")
            index = int(index)
            if not 0 <= index < num_reps:
                raise ValueError(
                    f"clusters[{c}]: index {index} out of range [0, {num_reps}) for {num_reps} "
                    "representations"
                )
            if index in seen:
                where = "twice in" if seen[index] == c else f"in both clusters[{seen[index]}] and"
                raise ValueError(f"representation {index} appears {where} clusters[{c}]")
            seen[index] = c
            members.append(index)
        out.append(sorted(members))
    return sorted(out, key=lambda m: m[0])


def dphubert_clusters(num_layers: int) -> list[list[int]]:
    """DPHuBERT's fixed targets as singleton clusters: r[0], r[L/3], r[2L/3], r[L] ([[0],[4],[8],[12]] for
    L=12).

    Indices are floored and duplicates (tiny L) removed.
    """
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, found {num_layers}")
    indices = sorted({0, num_layers // 3, 2 * num_layers // 3, num_layers})
    return [[i] for i in indices]


def fixed_clusters(spec: CompressionSpec, num_reps: int) -> list[list[int]] | None:
    """The spec's explicit clusters checked against the teacher's `num_reps` representations (None when the
    clusters come from CKA or DPHuBERT's fixed layers); a k above `num_reps` given explicitly is an error."""
    if isinstance(spec.clusters, list):
        try:
            return validate_clusters(spec.clusters, num_reps)
        except ValueError as exc:
            raise SpecError(f"clusters: {exc}", field="clusters") from None
    if isinstance(spec.clusters, int) and spec.clusters > num_reps and "clusters" in spec.model_fields_set:
        raise SpecError(
            f"clusters={spec.clusters} but the teacher has only {num_reps} representations", field="clusters"
        )
    return None


def check_target_weights(spec: CompressionSpec, fixed: list[list[int]] | None, num_layers: int) -> None:
    """Refuse target weights whose count cannot match the clusters, before calibration, where the count is
    known in advance (explicit clusters, k, DPHuBERT's fixed layers); with 'auto' the targets check after
    clustering."""
    if spec.target_weights is None:
        return
    if spec.method == "dphubert":
        k: int | None = len(dphubert_clusters(num_layers))
    elif fixed is not None:
        k = len(fixed)
    else:
        k = spec.clusters if isinstance(spec.clusters, int) else None
    if k is not None and len(spec.target_weights) != k:
        raise SpecError(
            f"target_weights has {len(spec.target_weights)} weights but there will be {k} clusters; "
            "give one weight per cluster",
            field="target_weights",
        )


def check_reachable(
    spec: CompressionSpec, *, num_params: int, macs: float | None, smallest: Mapping[str, float]
) -> None:
    """Refuse a size target below the smallest student of the teacher's layout, `smallest` = {"params",
    "macs"} of the student that keeps one channel of each conv layer and no attention head or FFN unit: the
    floor of finalize's landing and the dry run's uniform student, so no run could meet such a target. The
    MACs target is checked when the teacher's `macs` are known."""
    wanted: dict[str, tuple[float | None, float, str, str, str]] = {
        "params": (spec.target_sparsity(num_params), num_params, "target_params", "sparsity", "parameters"),
    }
    if macs is not None:
        wanted["macs"] = (
            spec.target_macs_sparsity(macs),
            macs,
            "target_macs",
            "macs_sparsity",
            "MACs per audio second",
        )
    for kind, (sparsity, teacher, absolute, relative, unit) in wanted.items():
        if sparsity is None or kind not in smallest:
            continue
        target, floor = teacher * (1.0 - sparsity), smallest[kind]
        if target < floor:
            field = absolute if getattr(spec, absolute) is not None else relative
            raise SpecError(
                f"{field}: the target, {target:.4g} {unit}, is below the smallest student of this teacher "
                f"({floor:.4g}: one channel per conv layer, no attention head or FFN unit left)",
                field=field,
            )


def check_against_teacher(
    spec: CompressionSpec,
    *,
    num_layers: int,
    num_params: int,
    macs: float | None = None,
    smallest: Mapping[str, float] | None = None,
) -> list[list[int]] | None:
    """Every rule that needs only the teacher's shape: the size targets (the MACs target when the teacher's
    `macs` per audio second are known; each target above the `smallest` student when its sizes are known),
    the explicit clusters and the target weights. Returns the explicit clusters in canonical order (None when
    clustering or DPHuBERT's layers will choose them)."""
    try:
        spec.target_sparsity(num_params)
    except ValueError as exc:
        raise SpecError(str(exc), field="target_params") from None
    if macs is not None:
        try:
            spec.target_macs_sparsity(macs)
        except ValueError as exc:
            raise SpecError(str(exc), field="target_macs") from None
    if smallest is not None:
        check_reachable(spec, num_params=num_params, macs=macs, smallest=smallest)
    fixed = fixed_clusters(spec, num_layers + 1)
    check_target_weights(spec, fixed, num_layers)
    return fixed
