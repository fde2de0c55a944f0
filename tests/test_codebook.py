"""qlearn.codebook against scikit-learn's KMeans (seeds, labels, centroids, inertia, iterations),
Max's 1960 table of optimal Gaussian quantizers, and the properties of Lloyd's iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.cluster._kmeans import _kmeans_plusplus

from qlearn import Quantized, codebook


def _data(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal(n) * 0.05
    if kind == "grid":  # many exact duplicates and values exactly halfway between centroids
        return np.round(rng.standard_normal(n) * 6) / 16
    return rng.standard_t(2, n)  # heavy tails


@pytest.mark.parametrize("kind", ["gaussian", "grid", "heavy"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [2, 4, 16])
def test_kmeans_equals_scikit_learn(kind, weighted, k):
    """Same seed, same k-means++ draws, the same Lloyd path: labels and iterations equal,
    centroids and inertia to float64 rounding (scikit-learn sums in another order)."""
    rng = np.random.default_rng(k + 10 * weighted + len(kind))
    for seed in range(3):
        x = _data(kind, 1500, rng)
        w = rng.random(x.size) if weighted else None
        theirs = KMeans(
            n_clusters=k, init="k-means++", n_init=1, random_state=seed, algorithm="lloyd"
        ).fit(x[:, None], sample_weight=w)
        ours = codebook.kmeans(
            torch.from_numpy(x), k, weights=None if w is None else torch.from_numpy(w), seed=seed
        )
        assert np.array_equal(ours.labels[0].numpy(), theirs.labels_)
        assert int(ours.n_iter[0]) == theirs.n_iter_
        np.testing.assert_allclose(ours.centroids[0].numpy(), theirs.cluster_centers_[:, 0],
                                   rtol=1e-12, atol=1e-15 * np.abs(x).max())  # fmt: skip
        assert float(ours.inertia[0]) == pytest.approx(theirs.inertia_, rel=1e-11)


def test_kmeans_plusplus_seeds_equal_scikit_learn_exactly():
    rng = np.random.default_rng(0)
    for seed in range(5):
        x = _data("grid", 800, rng)
        w = rng.random(x.size)
        theirs, _ = _kmeans_plusplus(x[:, None], 8, x**2, w, np.random.RandomState(seed))
        ours = codebook.kmeans_plusplus(
            torch.from_numpy(x), 8, weights=torch.from_numpy(w), seed=seed
        )
        assert np.array_equal(ours[0].numpy(), theirs[:, 0])


def test_kmeans_from_given_centroids_equals_scikit_learn_and_rows_do_not_interact():
    rng = np.random.default_rng(3)
    x = np.stack([_data("gaussian", 600, rng), _data("grid", 600, rng), _data("heavy", 600, rng)])
    init = np.stack([np.sort(rng.choice(row, 8, replace=False)) for row in x])
    ours = codebook.kmeans(torch.from_numpy(x), 8, init=torch.from_numpy(init))
    for row, start, centroids in zip(x, init, ours.centroids, strict=True):
        theirs = KMeans(n_clusters=8, init=start[:, None], n_init=1, algorithm="lloyd").fit(
            row[:, None]
        )
        np.testing.assert_allclose(
            centroids.numpy(), theirs.cluster_centers_[:, 0], rtol=1e-12, atol=1e-15
        )


def test_two_levels_per_gaussian_side_are_maxs_optimum():
    """Lloyd–Max: k-means on many N(0, 1) draws converges to the optimal quantizer of the
    Gaussian, whose 4 levels are ±0.4528 and ±1.510 (Max 1960, Table I)."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(200_000))
    levels = torch.sort(codebook.kmeans(x, 4, seed=0, tol=1e-10).centroids[0]).values
    np.testing.assert_allclose(levels.numpy(), [-1.510, -0.4528, 0.4528, 1.510], atol=0.01)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 4, 8]))
def test_lloyd_never_worse_than_its_start(seed, k):
    """Each Lloyd step lowers (or keeps) the weighted squared error: starting from the uniform
    grid of min/max rounding (RTN's levels), k-means ends at or below RTN's error."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_t(3, 500))
    w = torch.from_numpy(rng.random(500))
    grid = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    rtn = (w * (x[:, None] - grid).abs().min(dim=1).values ** 2).sum()
    result = codebook.kmeans(x, k, weights=w, init=grid)
    assert float(result.inertia[0]) <= float(rtn) * (1 + 1e-12)


# ---------------------------------------------------------------------------------------------
# Code books for a weight
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granularity", "bits", "expected"),
    [
        ("tensor", 4, 4 + 16 * 16 / (64 * 256)),
        ("channel", 3, 3 + 8 * 16 / 256),
        ("group", 2, 2 + 4 * 16 / 64),
    ],
)
def test_codebook_bytes_count_the_codes_and_the_code_books(granularity, bits, expected):
    w = torch.randn(64, 256)
    q = codebook.codebook_quantize(w, bits, granularity=granularity, group_size=64)
    assert isinstance(q, Quantized)
    assert q.bits_per_weight() == pytest.approx(expected)
    groups = {"tensor": 1, "channel": 64, "group": 256}[granularity]
    assert q.codebooks.shape == (groups, 2**bits) and q.codebooks.dtype == torch.float16
    values = q.dequantize()
    rows = values.reshape(groups, -1)
    for row, book in zip(rows, q.codebooks.float(), strict=True):  # every value is its book's
        assert torch.isin(row, book).all()


def test_codebook_error_beats_a_uniform_grid_and_importance_moves_it():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 512, generator=g) * 0.02
    q = codebook.codebook_quantize(w, 3)
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    step = (hi - lo) / 7
    rtn = torch.round((w - lo) / step) * step + lo
    assert ((q.dequantize() - w) ** 2).sum() < ((rtn - w) ** 2).sum()
    importance = torch.ones(512)
    importance[:64] = 100.0  # the first 64 inputs matter 100 times more
    weighted = codebook.codebook_quantize(w, 3, importance=importance)
    err_first = lambda d: ((d - w)[:, :64] ** 2).sum()  # noqa: E731
    assert err_first(weighted.dequantize()) < err_first(q.dequantize())


def test_bad_input_is_named():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="k: 16 clusters need at least 16 distinct"):
        codebook.codebook_quantize(torch.ones(4, 64).round(), 4)
    with pytest.raises(ValueError, match="weights"):
        codebook.kmeans(torch.randn(100), 4, weights=-torch.ones(100))
    with pytest.raises(ValueError, match="finite"):
        codebook.kmeans(torch.randn(100), 4, weights=torch.full((100,), float("nan")))
    with pytest.raises(ValueError, match="importance"):
        codebook.codebook_quantize(w, 2, importance=torch.ones(8))
    with pytest.raises(ValueError, match="importance"):
        codebook.codebook_quantize(w, 2, importance=-torch.ones(64))
    with pytest.raises(ValueError, match="bits"):
        codebook.codebook_quantize(w, 9)
    with pytest.raises(ValueError, match="group_size"):
        codebook.codebook_quantize(w, 2, granularity="group", group_size=48)
    with pytest.raises(ValueError, match="granularity"):
        codebook.codebook_quantize(w, 2, granularity="row")
    with pytest.raises(ValueError, match="init"):
        codebook.kmeans(torch.randn(100), 4, init=torch.randn(3))
    with pytest.raises(TypeError, match="values"):
        codebook.kmeans([1.0, 2.0], 1)
