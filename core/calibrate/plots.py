"""The calibration figure: CKA heatmap with the clusters boxed, and the dendrogram that produced them.

Figures are built on `matplotlib.figure.Figure` and rendered by the Agg canvas directly, never through
pyplot: no display is needed and no global pyplot state is shared between worker threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.cluster.hierarchy import dendrogram

from core.calibrate.clustering import Clustering

__all__ = ["plot_cka"]

_LINK_GREY = "#999999"


def _runs(cluster: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices: [0, 1, 2, 5, 6] -> [(0, 2), (5, 6)]."""
    runs: list[tuple[int, int]] = []
    for index in sorted(cluster):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def plot_cka(
    cka: np.ndarray,
    clustering: Clustering,
    path: str | Path,
    title: str = "Layer similarity (linear CKA)",
) -> Path:
    """Write one PNG: the (R, R) CKA heatmap (r0..rL, layer order, each cluster's runs boxed in its colour)
    and, beside it, the dendrogram with each final cluster's links in the same colour.

    The heatmap keeps layer order even for non-contiguous clusters, because depth is what a reader looks
    for; such a cluster is then drawn as several boxes of one colour.

    Args:
        cka: (R, R) CKA matrix.
        clustering: the clustering of those R representations.
        path: output file (.png); parent directories are created.
    Returns:
        The path written.
    """
    matrix = np.asarray(cka, dtype=np.float64)
    r = matrix.shape[0]
    if matrix.shape != (r, r) or clustering.linkage.shape != (max(r - 1, 0), 4):
        raise ValueError(
            f"cka must be (R, R) and the linkage (R - 1, 4): found {matrix.shape} and "
            f"{clustering.linkage.shape}"
        )
    labels = [f"r{i}" for i in range(r)]
    colours = [to_hex(f"C{c % 10}") for c in range(len(clustering.clusters))]
    cluster_of = {i: c for c, members in enumerate(clustering.clusters) for i in members}

    fig = Figure(figsize=(11, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    heat_ax, tree_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})

    image = heat_ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=heat_ax, shrink=0.8, label="CKA")
    heat_ax.set_xticks(range(r), labels, rotation=90)
    heat_ax.set_yticks(range(r), labels)
    heat_ax.set_title(title)
    for c, members in enumerate(clustering.clusters):
        for start, stop in _runs(members):
            size = stop - start + 1
            heat_ax.add_patch(
                Rectangle(
                    (start - 0.5, start - 0.5), size, size, fill=False, edgecolor=colours[c], linewidth=2.5
                )
            )

    if r > 1:
        # Colour a link by its cluster when all its leaves lie in one final cluster.
        leaves: dict[int, list[int]] = {i: [i] for i in range(r)}
        for step, row in enumerate(clustering.linkage):
            leaves[r + step] = leaves[int(row[0])] + leaves[int(row[1])]

        def link_colour(node: int) -> str:
            owners = {cluster_of.get(i, -1) for i in leaves[node]}
            owner = owners.pop() if len(owners) == 1 else -1
            return colours[owner] if owner >= 0 else _LINK_GREY

        dendrogram(
            clustering.linkage,
            ax=tree_ax,
            orientation="right",
            labels=labels,
            link_color_func=link_colour,
        )
        tree_ax.invert_yaxis()  # first leaf on top, like the heatmap's first row
        tree_ax.set_xlabel("merge distance (1 - CKA)")
    else:
        tree_ax.axis("off")
    kind = "contiguous" if clustering.contiguous else "free"
    tree_ax.set_title(f"{clustering.method} linkage, {kind}, k={clustering.k}")

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out
