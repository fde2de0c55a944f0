"""Codebooks: weights replaced by the nearest of 2^bits values learned from the weights (k-means).

Han, Mao and Dally, "Deep Compression", ICLR 2016, §3 (weight sharing: k-means on each layer's
weights, a code book of 2^bits centroids, the codes stored in ``bits`` each); Lloyd, "Least
squares quantization in PCM", 1982 (the iteration: assign each value to its nearest centroid,
move each centroid to the mean of its values) and Max, 1960: on a known distribution the same
two conditions give the optimal non-uniform quantizer, which for a Gaussian puts the levels
close to NF4's quantiles (chapter 08). Arthur and Vassilvitskii, "k-means++", 2007 (seeding,
with scikit-learn's greedy variant: 2 + ⌊ln k⌋ candidates per centre, the one that lowers the
potential most). Importance weights (SqueezeLLM, Kim et al. 2024, §3.1: a weighted k-means with
per-weight sensitivities; llama.cpp's importance matrix, chapter 12) make some values count more.

:func:`kmeans` runs k-means on many 1-D sets at once, each a row of a ``[groups, n]`` tensor, as
scikit-learn's ``KMeans(algorithm="lloyd", n_init=1)`` does one set: data centred on its mean,
k-means++ from ``numpy.random.RandomState(seed)`` in scikit-learn's order of draws (for one set,
the same centres; tests/test_codebook.py), ``tol`` scaled by the data's variance, a stop on
unchanged labels or on a total squared centre shift within ``tol``, an empty cluster given the
value furthest from its centre, a last assignment after a stop on ``tol``, and a value's nearest
centre decided as scikit-learn decides it (the smallest c² − 2·x·c, the first centre on a tie:
on data full of exact ties, values on a grid, that is what keeps the two on the same path).
:func:`codebook_quantize` cuts a weight into groups — the whole tensor, each output
row, or runs of ``group_size`` along a row — and stores per group a code book of 2^bits float16
centroids and one code per weight. Taught in notebooks/12_shared_scales.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

from qlearn._checks import check_bits, check_choice, check_float_tensor, check_int, check_positive
from qlearn._quantized import bits_per_weight

__all__ = [
    "GRANULARITIES",
    "CodebookQuantized",
    "KMeansResult",
    "codebook_quantize",
    "kmeans",
    "kmeans_plusplus",
]

GRANULARITIES: Final = ("tensor", "channel", "group")


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """k-means on ``groups`` sets at once: ``centroids`` [groups, k] (scikit-learn's order, not
    sorted), ``labels`` [groups, n] (int64), ``inertia`` [groups] (Σ w · (x − c)²) and
    ``n_iter`` [groups], all float64 / int64 tensors."""

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor


def kmeans_plusplus(
    values: torch.Tensor, k: int, *, weights: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """k-means++ seeds for each row of ``values`` ([groups, n] or [n]): [groups, k] float64.

    Greedy k-means++ as scikit-learn's ``_kmeans_plusplus``: the first centre drawn with
    probability ∝ w, each next one the best of 2 + ⌊ln k⌋ candidates drawn ∝ w · D² (D: the
    distance to the nearest centre so far, computed as −2·c·x + c² + x²), on the data as given
    (:func:`kmeans` centres it first, as scikit-learn does). One ``RandomState(seed)`` draws for
    all rows, row after row within each step. Arthur and Vassilvitskii 2007.
    Taught in notebooks/12_shared_scales.ipynb.
    """
    x, w = _sets(values, weights, k)
    return torch.from_numpy(_plusplus(x.numpy(), w.numpy(), k, check_int(seed, "seed", minimum=0)))


def kmeans(
    values: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    init: str | torch.Tensor = "k-means++",
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> KMeansResult:
    """Lloyd's k-means on each row of ``values`` ([groups, n] or [n]), weighted by ``weights``.

    ``init``: ``"k-means++"`` (:func:`kmeans_plusplus`, drawn from ``seed``) or the starting
    centroids, [groups, k] or [k]. Each row needs at least ``k`` distinct values of nonzero
    weight. Follows scikit-learn's ``KMeans(algorithm="lloyd", n_init=1)`` step for step (see the
    module's docstring); Lloyd 1982. Taught in notebooks/12_shared_scales.ipynb.
    """
    x, w = _sets(values, weights, k)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    tol = check_positive(tol, "tol", strict=False)
    xn, wn = x.numpy(), w.numpy()
    tol_scaled = xn.var(axis=1) * tol  # scikit-learn's _tolerance, per set
    mean = xn.mean(axis=1, keepdims=True)
    centred = xn - mean
    if isinstance(init, str):
        check_choice(init, "init", ["k-means++"])
        centres = _plusplus(centred, wn, k, check_int(seed, "seed", minimum=0))
    else:
        centres = _initial_centres(init, x.shape[0], k) - mean
    centres, labels, n_iter = _lloyd(centred, wn, centres, max_iter, tol_scaled)
    inertia = (wn * (centred - np.take_along_axis(centres, labels, axis=1)) ** 2).sum(axis=1)
    return KMeansResult(
        torch.from_numpy(centres + mean),
        torch.from_numpy(labels),
        torch.from_numpy(inertia),
        torch.from_numpy(n_iter),
    )


@dataclass(frozen=True, eq=False)
class CodebookQuantized:
    """A weight as codes into per-group code books: ``codes`` (uint8, the weight's shape),
    ``codebooks`` (float16, [groups, 2^bits]), the ``granularity`` and ``group_size`` that cut
    the weight into groups. Deep Compression §3. Taught in notebooks/12_shared_scales.ipynb."""

    codes: torch.Tensor
    codebooks: torch.Tensor
    bits: int
    granularity: str
    group_size: int
    shape: torch.Size

    def dequantize(self) -> torch.Tensor:
        """Each weight's centroid, float32, in the weight's shape."""
        grouped = _grouped(self.codes, self.granularity, self.group_size).long()
        values = torch.gather(self.codebooks.float(), 1, grouped)
        return values.reshape(self.shape)  # every grouping is a reshape of the row-major weight

    def nbytes(self) -> float:
        """``bits`` per code, packed, plus 2 bytes per centroid of every code book."""
        return self.codes.numel() * self.bits / 8 + self.codebooks.numel() * 2

    def bits_per_weight(self) -> float:
        return bits_per_weight(self.nbytes(), math.prod(self.shape))


def codebook_quantize(
    weight: torch.Tensor,
    bits: int,
    *,
    granularity: str = "channel",
    group_size: int = 128,
    importance: torch.Tensor | None = None,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> CodebookQuantized:
    """k-means code books of 2^bits float16 centroids for a 2-D ``weight`` [out, in].

    ``granularity``: one code book for the whole ``"tensor"``, one per output ``"channel"``
    (row), or one per ``"group"`` of ``group_size`` consecutive inputs of a row (which must
    divide the row). ``importance`` weights each value's squared error: a tensor of the
    weight's shape, or of ``[in]`` (one weight per input column, as an importance matrix gives).
    The centroids are rounded to float16 after k-means and every weight takes the nearest of
    them. Deep Compression §3; weighted as SqueezeLLM §3.1.
    Taught in notebooks/12_shared_scales.ipynb.
    """
    check_float_tensor(weight, "weight", ndim=2)
    bits = check_bits(bits, low=1, high=8)
    granularity = check_choice(granularity, "granularity", GRANULARITIES)
    if granularity == "group":
        group_size = check_int(group_size, "group_size", minimum=2)
        if weight.shape[1] % group_size:
            raise ValueError(
                f"group_size: rows of {weight.shape[1]} inputs are not a multiple of {group_size}"
            )
    w = None if importance is None else _importance(importance, weight)
    values = _grouped(weight.detach().double(), granularity, group_size)
    wg = None if w is None else _grouped(w, granularity, group_size)
    result = kmeans(values, 1 << bits, weights=wg, seed=seed, max_iter=max_iter, tol=tol)
    books = torch.sort(result.centroids, dim=1).values.to(torch.float16)
    codes = _nearest(values, books.double()).to(torch.uint8)
    shaped = codes.reshape(weight.shape)
    return CodebookQuantized(shaped, books, bits, granularity, group_size, torch.Size(weight.shape))


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _sets(values: object, weights: object, k: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of values and weights, float64 [groups, n], checked; k against each row."""
    check_float_tensor(values, "values")
    assert isinstance(values, torch.Tensor)
    if values.ndim not in (1, 2):
        raise ValueError(f"values: expected [n] or [groups, n], got shape {tuple(values.shape)}")
    x = values.detach().double().reshape(-1, values.shape[-1])
    k = check_int(k, "k", minimum=1)
    if weights is None:
        w = torch.ones_like(x)
    else:
        check_float_tensor(weights, "weights")
        assert isinstance(weights, torch.Tensor)
        if weights.shape != values.shape:
            raise ValueError(
                f"weights: expected the shape of values {tuple(values.shape)}, "
                f"got {tuple(weights.shape)}"
            )
        w = weights.detach().double().reshape(x.shape)
        if bool((w < 0).any()) or bool((w.sum(dim=1) == 0).any()):
            raise ValueError("weights: expected non-negative weights, not all zero in any row")
    distinct = _distinct_per_row(torch.where(w > 0, x, torch.nan))
    if int(distinct.min()) < k:
        row = int(distinct.argmin())
        raise ValueError(
            f"k: {k} clusters need at least {k} distinct values of nonzero weight, but row {row} "
            f"has {int(distinct[row])}; use fewer bits or larger groups"
        )
    return x, w


def _distinct_per_row(x: torch.Tensor) -> torch.Tensor:
    s = torch.sort(x, dim=1).values
    fresh = torch.ones_like(s, dtype=torch.bool)
    fresh[:, 1:] = s[:, 1:] != s[:, :-1]
    return (fresh & ~torch.isnan(s)).sum(dim=1)


def _plusplus(x: np.ndarray, w: np.ndarray, k: int, seed: int) -> np.ndarray:
    """scikit-learn's greedy k-means++ on every row, one RandomState for all rows."""
    rng = np.random.RandomState(seed)
    groups, n = x.shape
    trials = 2 + int(np.log(k))
    rows = np.arange(groups)
    x_sq = x * x
    centres = np.empty((groups, k))
    p = w / w.sum(axis=1, keepdims=True)  # RandomState.choice(n, p=p): its cdf and one draw
    cdf = p.cumsum(axis=1)
    cdf /= cdf[:, -1:]
    first = _searchsorted(cdf, rng.random_sample(groups)[:, None], right=True)[:, 0]
    centres[:, 0] = x[rows, first]
    closest = np.maximum(-2 * (centres[:, :1] * x) + centres[:, :1] ** 2 + x_sq, 0)
    potential = np.einsum("gn,gn->g", closest, w)
    for c in range(1, k):
        draws = rng.random_sample((groups, trials)) * potential[:, None]
        ids = _searchsorted(np.cumsum(w * closest, axis=1), draws, right=False)
        ids = np.minimum(ids, n - 1)
        candidates = x[rows[:, None], ids]  # [groups, trials]
        dist = -2 * (candidates[..., None] * x[:, None, :]) + candidates[..., None] ** 2
        dist = np.maximum(dist + x_sq[:, None, :], 0)
        np.minimum(closest[:, None, :], dist, out=dist)
        pots = np.einsum("gtn,gn->gt", dist, w)
        best = pots.argmin(axis=1)
        potential = pots[rows, best]
        closest = dist[rows, best]
        centres[:, c] = candidates[rows, best]
    return centres


def _lloyd(
    x: np.ndarray, w: np.ndarray, centres: np.ndarray, max_iter: int, tol: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd's iterations on every row until each stops (labels unchanged, or shift² ≤ tol)."""
    groups = centres.shape[0]
    centres = centres.copy()
    labels = np.full(x.shape, -1, dtype=np.int64)
    n_iter = np.zeros(groups, dtype=np.int64)
    active = np.ones(groups, dtype=bool)
    strict = np.zeros(groups, dtype=bool)
    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        xa, wa, ca = x[rows], w[rows], centres[rows]
        new_labels = _labels(xa, ca)
        new_centres = _means(xa, wa, new_labels, ca)
        shift = ((new_centres - ca) ** 2).sum(axis=1)
        unchanged = (new_labels == labels[rows]).all(axis=1)
        centres[rows], labels[rows] = new_centres, new_labels
        n_iter[rows] += 1
        strict[rows] = unchanged
        active[rows] = ~(unchanged | (shift <= tol[rows]))
    loose = np.flatnonzero(~strict)
    if loose.size:  # stopped on tol or max_iter: labels for the final centres
        labels[loose] = _labels(x[loose], centres[loose])
    return centres, labels, n_iter


def _labels(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre of every value, as scikit-learn decides it: the smallest c² − 2·x·c
    (its distance without the x² term), the first centre on a tie. In one dimension only the
    two centres around a value can be nearest, so those (found between sorted midpoints) and
    one more on each side are compared, not all k: 3 products per value."""
    order = np.argsort(centres, axis=1, kind="stable")
    s = np.take_along_axis(centres, order, axis=1)
    rank = _searchsorted((s[:, 1:] + s[:, :-1]) / 2, x, right=False)
    k = centres.shape[1]
    near = np.clip(rank[..., None] + np.arange(-1, 2), 0, k - 1)  # [groups, n, 3] sorted ranks
    index = np.take_along_axis(order[:, None, :], near, axis=2)  # the centres' own indices
    c = np.take_along_axis(centres[:, None, :], index, axis=2)
    d = c**2 + (-2.0) * (x[..., None] * c)
    best = np.where(d == d.min(axis=2, keepdims=True), index, k)  # ties: the first centre
    return best.min(axis=2)


def _means(x: np.ndarray, w: np.ndarray, labels: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Weighted means per cluster; an empty cluster takes the value furthest from its centre
    (scikit-learn's ``_relocate_empty_clusters_dense``)."""
    groups, k = old.shape
    flat = (labels + k * np.arange(groups)[:, None]).ravel()
    sums = np.bincount(flat, weights=(w * x).ravel(), minlength=groups * k).reshape(groups, k)
    mass = np.bincount(flat, weights=w.ravel(), minlength=groups * k).reshape(groups, k)
    for g in np.flatnonzero((mass == 0).any(axis=1)):
        empty = np.flatnonzero(mass[g] == 0)
        far = np.argsort(-((x[g] - old[g][labels[g]]) ** 2), kind="stable")[: empty.size]
        for i, c in zip(far, empty, strict=True):
            sums[g, labels[g, i]] -= w[g, i] * x[g, i]
            mass[g, labels[g, i]] -= w[g, i]
            sums[g, c], mass[g, c] = w[g, i] * x[g, i], w[g, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, sums / mass, old)


def _searchsorted(sorted_rows: np.ndarray, values: np.ndarray, *, right: bool) -> np.ndarray:
    """numpy.searchsorted row by row (``torch.searchsorted`` does all rows at once)."""
    out = torch.searchsorted(
        torch.from_numpy(np.ascontiguousarray(sorted_rows)),
        torch.from_numpy(np.ascontiguousarray(values)),
        right=right,
    )
    return out.numpy()


def _nearest(values: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each row's sorted code book (ties: the lower entry)."""
    mid = (books[:, 1:] + books[:, :-1]) / 2
    return torch.searchsorted(mid.contiguous(), values.contiguous())


def _initial_centres(init: object, groups: int, k: int) -> np.ndarray:
    check_float_tensor(init, "init")
    assert isinstance(init, torch.Tensor)
    centres = init.detach().double().reshape(-1, init.shape[-1])
    if centres.shape[1] != k or centres.shape[0] not in (1, groups):
        raise ValueError(
            f"init: expected {k} centroids per set ([{k}] or [{groups}, {k}]), "
            f"got shape {tuple(init.shape)}"
        )
    return np.broadcast_to(centres.numpy(), (groups, k)).copy()


def _importance(importance: object, weight: torch.Tensor) -> torch.Tensor:
    check_float_tensor(importance, "importance")
    assert isinstance(importance, torch.Tensor)
    if importance.shape == weight.shape[1:]:
        importance = importance.expand_as(weight)
    if importance.shape != weight.shape:
        raise ValueError(
            f"importance: expected the weight's shape {tuple(weight.shape)} or one value per input "
            f"column [{weight.shape[1]}], got {tuple(importance.shape)}"
        )
    if bool((importance < 0).any()):
        raise ValueError("importance: expected non-negative values")
    return importance.detach().double()


def _grouped(t: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    if granularity == "tensor":
        return t.reshape(1, -1)
    if granularity == "channel":
        return t.reshape(t.shape[0], -1)
    return t.reshape(-1, group_size)
