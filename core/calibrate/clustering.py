"""Group teacher representations into clusters of similar layers (algorithm.md §1.3-1.4).

SKILL distils one target per cluster (the mean of its layers) instead of DPHuBERT's hand-picked layers.
Clusters come from agglomerative clustering on the distance 1 - CKA. By default (ours) each cluster is a
run of adjacent layers: a chain connectivity constraint lets only neighbouring clusters merge, so a target
never averages, say, layer 2 with layer 11. scipy has no connectivity-constrained linkage, so the
constrained agglomeration is written here; its output is a scipy-format linkage matrix so scipy's
dendrogram can draw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform

from core.rules import dphubert_clusters, validate_clusters

__all__ = [
    "Clustering",
    "Method",
    "cluster_layers",
    "validate_clusters",
    "dphubert_clusters",
    "cka_distance",
    "auto_k",
]

Method = Literal["average", "single", "complete", "ward"]
METHODS: tuple[str, ...] = ("average", "single", "complete", "ward")
AUTO_K_RANGE = (2, 6)


@dataclass
class Clustering:
    """The outcome of clustering R representations.

    Attributes:
        clusters: k lists of representation indices, each ascending, sorted by their first index.
        linkage: (R - 1, 4) scipy-format linkage matrix [child_a, child_b, height, size]; for contiguous
            clustering the height column is the running maximum of the merge distances so it is monotone
            (scipy's dendrogram needs that); the clusters were cut on the real distances.
        method: "average", "single", "complete" or "ward".
        k: the number of clusters (the chosen one when k="auto" was asked).
        contiguous: whether merges were restricted to adjacent runs of layers.
    """

    clusters: list[list[int]]
    linkage: np.ndarray
    method: str
    k: int
    contiguous: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored with the calibration results and in report.json."""
        return {
            "clusters": [list(c) for c in self.clusters],
            "linkage": np.asarray(self.linkage, dtype=np.float64).tolist(),
            "method": self.method,
            "k": self.k,
            "contiguous": self.contiguous,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clustering:
        """Inverse of `to_dict`; checks the linkage shape and the clusters against it."""
        z = np.asarray(data["linkage"], dtype=np.float64).reshape(-1, 4)
        num_reps = z.shape[0] + 1
        clusters = validate_clusters(data["clusters"], num_reps)
        if len(clusters) != int(data["k"]):
            raise ValueError(f"k={data['k']} but {len(clusters)} clusters are stored")
        return cls(
            clusters=clusters,
            linkage=z,
            method=str(data["method"]),
            k=int(data["k"]),
            contiguous=bool(data["contiguous"]),
        )


def cka_distance(cka: np.ndarray) -> np.ndarray:
    """1 - CKA as a proper distance matrix.

    Args:
        cka: (R, R) similarity.
    Returns:
        (R, R) float64: symmetrised (streaming estimates can differ in the last bits), clipped at 0
        (rounding can push CKA a hair above 1), zero diagonal.
    """
    matrix = np.asarray(cka, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"cka: expected a square (R, R) matrix, found shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("cka: the matrix holds NaN or inf (a representation constant over all frames?)")
    distance = 1.0 - (matrix + matrix.T) / 2.0
    distance = np.clip(distance, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    return distance


def _lance_williams(
    method: str, d_ki: float, d_kj: float, d_ij: float, n_i: int, n_j: int, n_k: int
) -> float:
    """Distance from cluster k to the union of clusters i and j (Lance & Williams 1967).

    Exact for average (mean pairwise distance), single (min) and complete (max); for ward it is the
    recurrence scipy also uses on the raw distances, so unconstrained results match scipy's.
    """
    if method == "average":
        return (n_i * d_ki + n_j * d_kj) / (n_i + n_j)
    if method == "single":
        return min(d_ki, d_kj)
    if method == "complete":
        return max(d_ki, d_kj)
    total = n_i + n_j + n_k
    squared = ((n_i + n_k) * d_ki**2 + (n_j + n_k) * d_kj**2 - n_k * d_ij**2) / total
    return float(np.sqrt(max(squared, 0.0)))


def _contiguous_linkage(distance: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerate under a chain constraint: only adjacent runs of layers may merge.

    At each step the adjacent pair with the smallest linkage distance merges (ties: the lowest layers).
    O(R³), fine for R <= ~50.

    Args:
        distance: (R, R) distance matrix.
    Returns:
        z: (R - 1, 4) scipy-format linkage with the running-max height, the left run as the first child
            (so the dendrogram's leaves read 0..R-1); heights: (R - 1,) the real merge distances.
    """
    r = distance.shape[0]
    # Between-cluster distances indexed by scipy cluster id: 0..R-1 singletons, R + s for merge s.
    between = np.zeros((2 * r - 1, 2 * r - 1))
    between[:r, :r] = distance
    chain = list(range(r))  # cluster ids in layer order
    sizes = {i: 1 for i in range(r)}
    z = np.zeros((max(r - 1, 0), 4))
    heights = np.zeros(max(r - 1, 0))
    running = 0.0
    for step in range(r - 1):
        pos = min(range(len(chain) - 1), key=lambda p: (between[chain[p], chain[p + 1]], p))
        i, j = chain[pos], chain[pos + 1]
        height = float(between[i, j])
        new = r + step
        for k in chain:
            if k not in (i, j):
                value = _lance_williams(
                    method, between[k, i], between[k, j], height, sizes[i], sizes[j], sizes[k]
                )
                between[k, new] = between[new, k] = value
        sizes[new] = sizes.pop(i) + sizes.pop(j)
        chain[pos : pos + 2] = [new]
        running = max(running, height)
        z[step] = (i, j, running, sizes[new])
        heights[step] = height
    return z, heights


def _cut(z: np.ndarray, num_reps: int, k: int) -> list[list[int]]:
    """Replay the first R - k merges of a linkage matrix: exactly k clusters, even with tied heights
    (where scipy's fcluster(maxclust) may return fewer)."""
    members: dict[int, list[int]] = {i: [i] for i in range(num_reps)}
    for step in range(num_reps - k):
        a, b = int(z[step, 0]), int(z[step, 1])
        members[num_reps + step] = members.pop(a) + members.pop(b)
    return sorted((sorted(c) for c in members.values()), key=lambda c: c[0])


def auto_k(
    heights: Sequence[float] | np.ndarray, num_reps: int, k_range: tuple[int, int] = AUTO_K_RANGE
) -> int:
    """Choose k at the largest jump in merge distance.

    Keeping k clusters means performing the first R - k merges; the next merge would join clusters that are
    `heights[R - k] - heights[R - k - 1]` further apart than the last one made. A large jump means the
    k clusters are well separated, so we take the k in `k_range` (bounded by R) with the largest jump;
    ties go to the smaller k (fewer targets). For k = R the "last merge" height is 0.

    Args:
        heights: (R - 1,) real merge distances in merge order.
        num_reps: R.
    """
    low, high = min(k_range[0], num_reps), min(k_range[1], num_reps)
    if num_reps <= 1:
        return num_reps
    h = np.concatenate([[0.0], np.asarray(heights, dtype=np.float64)])  # h[s] = distance of merge s (1-based)
    best_k, best_gap = low, -np.inf
    for k in range(low, high + 1):
        gap = h[num_reps - k + 1] - h[num_reps - k]
        if gap > best_gap:
            best_k, best_gap = k, gap
    return best_k


def cluster_layers(
    cka: np.ndarray,
    k: int | Literal["auto"] = 4,
    method: Method = "average",
    contiguous: bool = True,
) -> Clustering:
    """Cluster R representations by linear CKA.

    Args:
        cka: (R, R) CKA matrix, e.g. from `core.calibrate.cka.StreamingCKA.compute()`.
        k: number of clusters in [1, R], or "auto" (see `auto_k`).
        method: linkage between clusters.
        contiguous: each cluster a run of adjacent layers (chain constraint) when True; free merges
            (scipy's linkage) when False.
    Returns:
        A `Clustering`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, found {method!r}")
    distance = cka_distance(cka)
    r = distance.shape[0]
    if r < 1:
        raise ValueError("cka: expected at least one representation, found an empty matrix")
    if k != "auto" and (isinstance(k, bool) or not isinstance(k, (int, np.integer))):
        raise ValueError(f'k must be an integer or "auto", found {k!r}')
    if k != "auto" and not 1 <= int(k) <= r:
        raise ValueError(f"k must lie in [1, {r}] for {r} representations, found k={k}")

    if r == 1:
        z, heights = np.zeros((0, 4)), np.zeros(0)
    elif contiguous:
        z, heights = _contiguous_linkage(distance, method)
    else:
        z = scipy_linkage(squareform(distance, checks=False), method=method)
        heights = z[:, 2].copy()
    chosen = auto_k(heights, r) if k == "auto" else int(k)
    return Clustering(clusters=_cut(z, r, chosen), linkage=z, method=method, k=chosen, contiguous=contiguous)
