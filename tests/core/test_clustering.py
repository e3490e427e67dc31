"""Layer clustering: block recovery, the contiguity constraint, the linkage matrix, user clusters, the
plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.cluster.hierarchy import dendrogram, is_valid_linkage, linkage
from scipy.spatial.distance import squareform

from core.calibrate.clustering import (
    Clustering,
    auto_k,
    cluster_layers,
    dphubert_clusters,
    validate_clusters,
)
from core.calibrate.plots import plot_cka

METHODS = ["average", "single", "complete", "ward"]


def _block_cka(
    groups: list[list[int]], seed: int = 0, within: float = 0.9, between: float = 0.2
) -> np.ndarray:
    """A CKA-like matrix: high within each group of layers, low across, small symmetric noise."""
    r = sum(len(g) for g in groups)
    rng = np.random.default_rng(seed)
    cka = np.full((r, r), between)
    for group in groups:
        cka[np.ix_(group, group)] = within
    noise = rng.uniform(-0.03, 0.03, size=(r, r))
    cka = cka + (noise + noise.T) / 2
    np.fill_diagonal(cka, 1.0)
    return cka


def _line_cka(seed: int, r: int = 10) -> np.ndarray:
    """Layers as points on a line: every unconstrained merge is between neighbours."""
    points = np.sort(np.random.default_rng(seed).uniform(0, 1, size=r))
    return 1.0 - np.abs(points[:, None] - points[None, :])


def _is_runs(clusters: list[list[int]]) -> bool:
    return all(c == list(range(c[0], c[-1] + 1)) for c in clusters)


def _merge_sets(z: np.ndarray, r: int) -> list[tuple[list[int], list[int]]]:
    members = {i: [i] for i in range(r)}
    out = []
    for step, row in enumerate(z):
        a, b = members[int(row[0])], members[int(row[1])]
        out.append((a, b))
        members[r + step] = a + b
    return out


BLOCKS = [[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12]]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_finds_blocks(method: str, contiguous: bool) -> None:
    cka = _block_cka(BLOCKS)
    result = cluster_layers(cka, k=3, method=method, contiguous=contiguous)
    assert result.clusters == BLOCKS
    assert (result.k, result.method, result.contiguous) == (3, method, contiguous)
    assert cluster_layers(cka, k="auto", method=method, contiguous=contiguous).clusters == BLOCKS


def test_auto_k_picks_largest_gap() -> None:
    # R = 8; 3 clusters = first 5 merges (up to 0.2), the next costs 0.9: the largest jump.
    heights = [0.1, 0.1, 0.1, 0.1, 0.2, 0.9, 0.95]
    assert auto_k(heights, 8) == 3
    assert auto_k([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.6], 8) == 2
    assert auto_k([0.5, 0.6], 3) == 3  # k = R: the gap is the first merge's height
    assert auto_k([], 1) == 1
    # k = 3 and k = 2 both jump by 0.4: the tie goes to fewer clusters.
    assert auto_k([0.1, 0.1, 0.5, 0.9], 5) == 2


def test_contiguity_holds_where_free_clustering_would_interleave() -> None:
    # Layers 0, 1, 4, 5 are alike, and 2, 3 are alike: free clustering joins {0, 1, 4, 5}.
    groups = [[0, 1, 4, 5], [2, 3]]
    cka = _block_cka(groups, seed=1)
    free = cluster_layers(cka, k=2, contiguous=False)
    assert free.clusters == [[0, 1, 4, 5], [2, 3]]
    for method in METHODS:
        for k in (2, 3, 4):
            chained = cluster_layers(cka, k=k, method=method, contiguous=True)
            assert len(chained.clusters) == k
            assert _is_runs(chained.clusters), (method, k, chained.clusters)
            assert sorted(i for c in chained.clusters for i in c) == list(range(6))
            # Every merge along the way joined two neighbouring runs.
            for a, b in _merge_sets(chained.linkage, 6):
                assert max(a) + 1 == min(b)


@pytest.mark.parametrize("seed", range(5))
def test_contiguous_on_random_matrices_gives_k_runs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, size=(11, 11))
    cka = (a + a.T) / 2
    np.fill_diagonal(cka, 1.0)
    for method in METHODS:
        for k in range(1, 12):
            result = cluster_layers(cka, k=k, method=method)
            assert len(result.clusters) == k and _is_runs(result.clusters)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contiguous_heights_match_scipy_when_scipy_merges_neighbours(method: str, seed: int) -> None:
    cka = _line_cka(seed)
    distance = 1.0 - cka
    reference = linkage(squareform(distance, checks=False), method=method)
    # Precondition: scipy's own merges are all between neighbouring runs, so the constraint is inactive.
    assert all(max(a) + 1 == min(b) or max(b) + 1 == min(a) for a, b in _merge_sets(reference, 10))
    ours = cluster_layers(cka, k=3, method=method)
    np.testing.assert_allclose(ours.linkage[:, 2], reference[:, 2], atol=1e-12)
    np.testing.assert_array_equal(ours.linkage[:, 3], reference[:, 3])


def test_contiguous_average_linkage_is_mean_pairwise_distance() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, size=(9, 9))
    cka = (a + a.T) / 2
    np.fill_diagonal(cka, 1.0)
    distance = 1.0 - cka
    result = cluster_layers(cka, k=2, method="average")
    running = 0.0
    for (a_members, b_members), row in zip(_merge_sets(result.linkage, 9), result.linkage, strict=True):
        running = max(running, distance[np.ix_(a_members, b_members)].mean())
        assert row[2] == pytest.approx(running, abs=1e-12)


def test_linkage_is_valid_monotone_and_dendrogram_reads_in_layer_order() -> None:
    # d(0,1)=0.5, d(1,2)=0.6, d(0,2)=0: after {0,1} merges at 0.5, {0,1}-2 is 0.3 (an inversion).
    distance = np.array([[0.0, 0.5, 0.0], [0.5, 0.0, 0.6], [0.0, 0.6, 0.0]])
    result = cluster_layers(1.0 - distance, k=1)
    assert result.linkage[:, 2].tolist() == [0.5, 0.5]  # running max, not 0.3
    for cka in (1.0 - distance, _block_cka(BLOCKS), _line_cka(4)):
        z = cluster_layers(cka, k=2).linkage
        assert is_valid_linkage(z)
        assert np.all(np.diff(z[:, 2]) >= 0)
        assert dendrogram(z, no_plot=True)["leaves"] == list(range(cka.shape[0]))


def test_k_is_cut_on_real_heights_not_running_max() -> None:
    # A random matrix (seed found by search) where contiguous average linkage has inversions, and the
    # largest jump differs between the real heights and the running max kept in the linkage matrix.
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, size=(8, 8))
    cka = (a + a.T) / 2
    np.fill_diagonal(cka, 1.0)
    distance = 1.0 - cka
    result = cluster_layers(cka, k="auto")
    real = [distance[np.ix_(x, y)].mean() for x, y in _merge_sets(result.linkage, 8)]
    assert auto_k(real, 8) != auto_k(result.linkage[:, 2], 8)  # the case discriminates
    assert result.k == auto_k(real, 8)
    assert result.clusters == cluster_layers(cka, k=result.k).clusters


def test_invalid_arguments() -> None:
    cka = _block_cka(BLOCKS)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 13\].*k=14"):
        cluster_layers(cka, k=14)
    with pytest.raises(ValueError, match="k must lie"):
        cluster_layers(cka, k=0)
    with pytest.raises(ValueError, match="method"):
        cluster_layers(cka, method="centroid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        cluster_layers(cka[:, :-1])
    broken = cka.copy()
    broken[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cluster_layers(broken)


@pytest.mark.parametrize("contiguous", [True, False])
def test_similarity_rounded_above_one_gives_zero_distance(contiguous: bool) -> None:
    cka = _block_cka(BLOCKS)
    cka[0, 1] = cka[1, 0] = 1.0 + 1e-9  # streaming float64 rounding can do this
    result = cluster_layers(cka, k=3, contiguous=contiguous)
    assert result.linkage[0, 2] == 0.0
    assert is_valid_linkage(result.linkage)
    assert result.clusters == BLOCKS


def test_single_representation() -> None:
    result = cluster_layers(np.ones((1, 1)), k="auto")
    assert result.clusters == [[0]] and result.k == 1 and result.linkage.shape == (0, 4)


def test_to_dict_round_trip() -> None:
    result = cluster_layers(_block_cka(BLOCKS), k="auto", method="ward", contiguous=False)
    restored = Clustering.from_dict(json.loads(json.dumps(result.to_dict())))
    assert restored.clusters == result.clusters
    assert (restored.method, restored.k, restored.contiguous) == ("ward", 3, False)
    np.testing.assert_array_equal(restored.linkage, result.linkage)
    data = result.to_dict()
    data["k"] = 4
    with pytest.raises(ValueError, match="k=4"):
        Clustering.from_dict(data)


def test_validate_clusters_sorts() -> None:
    assert validate_clusters([[12], [8, 4], [np.int64(0)]], 13) == [[0], [4, 8], [12]]


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ([[0], [13]], r"index 13 out of range \[0, 13\)"),
        ([[-1]], "out of range"),
        ([[0, 4], [4]], r"representation 4 appears in both clusters\[0\] and clusters\[1\]"),
        ([[2, 2]], r"representation 2 appears twice in clusters\[0\]"),
        ([[0], []], r"clusters\[1\] is empty"),
        ([], "at least one cluster"),
        ([[0.5]], "integers"),
        ([[True]], "integers"),
        ([3], "list of layer indices"),
    ],
)
def test_validate_clusters_errors(clusters: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_clusters(clusters, 13)


def test_dphubert_clusters() -> None:
    assert dphubert_clusters(12) == [[0], [4], [8], [12]]
    assert dphubert_clusters(24) == [[0], [8], [16], [24]]
    assert dphubert_clusters(4) == [[0], [1], [2], [4]]
    assert dphubert_clusters(2) == [[0], [1], [2]]
    assert validate_clusters(dphubert_clusters(12), 13) == [[0], [4], [8], [12]]


@pytest.mark.parametrize("contiguous", [True, False])
def test_plot_writes_png(tmp_path: Path, contiguous: bool) -> None:
    cka = _block_cka([[0, 1, 5], [2, 3, 4]], seed=2)
    result = cluster_layers(cka, k=2, contiguous=contiguous)
    path = plot_cka(cka, result, tmp_path / "calibration" / "cka.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
