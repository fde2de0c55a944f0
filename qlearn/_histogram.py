"""The machinery behind ``qlearn.calibration``'s ranges: TensorRT's histogram of |x|, a fine
log-spaced histogram of x, percentiles from either, entropy (KL) calibration and the exact-MSE
range search.

Private to qlearn: learners call ``qlearn.calibration.choose_range`` and the observers, whose
docstrings summarize each method; this module holds the details.

- **percentile** (Wu et al., "Integer Quantization for Deep Learning Inference: Principles and
  Empirical Evaluation", 2020, §3.4): symmetric, the ``percentile``-th percentile of |x| (TensorRT's
  convention) from :class:`AbsHistogram`; asymmetric, the (100 − p)-th and p-th percentiles of x
  from :class:`LogHistogram`. Both follow ``numpy.percentile`` (rank q·(n − 1), linear between
  the two order statistics around it, each placed evenly within its bin), so they are within one
  bin of it. ``modelopt`` returns the lower edge of the bin where its floating-point CDF reaches
  q: up to two bins below ours where the tail is dense, and in a sparse tail, when the CDF sum
  rounds below q (0.99989999… < 0.9999), the edge of the next occupied bin, 20 bins beyond numpy
  on 10^5 normal values at 99.99.
- **mse** (Wu et al. §3.4; Nagel et al., "A White Paper on Neural Network Quantization", 2021,
  §3.1): the range whose quantization error Σ(x − x̂)² is smallest. Each value of a histogram bin
  is taken as spread uniformly over the bin, and the error is integrated exactly: inside the
  range, rounding to a step s leaves a sawtooth r(v) whose square integrates to
  ∫_0^x r² = k·s³/12 + u³/3 (k = round(x/s), u = x − k·s); beyond the end code c a value v costs
  (v − c)². The range is searched on a geometric grid, then refined. The histogram is not
  TensorRT's linear one: with an outlier 10^4× the bulk, 2048 linear bins put the whole bulk in
  the first bin and the error model breaks. It is a *log-spaced* histogram indexed by the float32
  bits of x themselves (chapter 01): sign, exponent and the first 6 mantissa bits, i.e. 64 bins
  per octave (each 0.8–1.6 % of its values wide) over every float32 magnitude, with fixed edges,
  so it never re-bins, keeps its resolution at any dynamic range and merges batches exactly; it
  holds the signs too, for asymmetric ranges. Its range lands within 0.05 % of the smallest error
  that a fine grid search over ranges finds (the tests ask for 1 %), on normal, Student-t (2
  degrees of freedom) and outlier-laden activations, at 8 and 4 bits. On a plain tensor,
  :func:`mse_range_on_data` then checks the answer on the data: of the histogram's range, four
  ranges 1–2 % around it and the minmax range, the one whose actual error on ``x`` is smallest,
  so the "mse" range is never worse than minmax, even on a handful of values where a histogram
  says little. NVIDIA's ``modelopt`` "mse" (bin centres only, rounding of the centres) picks
  ranges far from that optimum on heavy-tailed data: not used.
- **kl** (entropy calibration: Migacz, "8-bit Inference with TensorRT", GTC 2017; Wu et al.
  §3.4): from a 2048-bin histogram of |x|, try every threshold bin i ≥ 128; P is the first i
  bins with the outliers added to the last one, Q the same bins merged into 2^(b−1) levels and
  spread back over their non-empty bins; keep the i that minimizes KL(P‖Q). The same threshold
  as ``modelopt``'s ``HistogramCalibrator(...).compute_amax("entropy")``, from the same
  histogram (built as modelopt builds it, growing by bins of the same width), with its choices
  where the slides leave them open: bin 0 replaced by bin 1 (so that a spike of zeros does not
  dominate), bin j to level ⌊j·2^(b−1)/i⌋, the last minimum, the threshold at the upper edge of
  bin i − 1. modelopt builds P and Q for each i (O(i) each: 2 s for 2048 bins, minutes once the
  histogram has grown); here every KL(P‖Q) comes at once from prefix sums (O(2^(b−1)) each,
  ~10 ms), equal to modelopt's to ~1e−12 and giving the same threshold. Symmetric only: it is
  defined on |x|.

Taught in notebooks/03_granularity_calibration.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

from qlearn.affine import (
    ABSMAX,
    MIN_SCALE,
    ZEROPOINT,
    QuantizedTensor,
    code_range,
    quantize_in_range,
)

_KL_START_BIN: Final = 128  # TensorRT and modelopt try thresholds from bin 128 on
_GROWTH: Final = 64  # the histogram of |x| grows to 64 × num_bins bins, then merges bins
_MANTISSA_BITS: Final = 6  # the fine histogram: 2^6 = 64 bins per octave of |x|
_GRID_PER_OCTAVE: Final = 32  # MSE search: coarse candidates per octave of the range
_REFINE_POINTS: Final = 64  # MSE search: candidates between the best coarse one's neighbours
_DYNAMIC_RANGE: Final = 2.0**-40  # MSE search: the smallest range tried, relative to the largest
_CHUNK: Final = 1 << 24  # torch.histc counts in float32: exact up to 2^24 per call


# --------------------------------------------------------------------------------------------
# Codes from a range (qlearn.affine's formulas, with the range given)
# --------------------------------------------------------------------------------------------


def quantize_over(
    x: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool
) -> QuantizedTensor:
    """qlearn.affine's codes over the given range: absmax for (−a, a), else zero-point."""
    return quantize_in_range(x, lo, hi, ABSMAX if symmetric else ZEROPOINT, bits=bits)


def as_range(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    """(−a, a) or a range holding 0; never empty (all zeros: the step is affine's guard)."""
    qmin, qmax = code_range(ABSMAX if symmetric else ZEROPOINT, bits)
    if symmetric:
        a = max(-lo, hi, 0.0)
        a = a if a > 0 else qmax * MIN_SCALE
        return -a, a
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    return (lo, hi) if lo < hi else (0.0, (qmax - qmin) * MIN_SCALE)


def minmax_range(xmin: float, xmax: float, bits: int, symmetric: bool) -> tuple[float, float]:
    return as_range(xmin, xmax, bits, symmetric)


# --------------------------------------------------------------------------------------------
# Helpers: TensorRT's histogram of |x| (as modelopt's HistogramCalibrator), percentile and KL
# --------------------------------------------------------------------------------------------


class AbsHistogram:
    """modelopt ``HistogramCalibrator.collect`` (torch_hist=True), with exact float64 counts and
    a bound on growth: a tensor that would need more than ``_GROWTH`` × ``num_bins`` bins first
    merges neighbouring bins by an integer factor (exact: the edges stay aligned). modelopt
    allocates them all (10^13 bins for a max 10^13× the first one's)."""

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.max_bins = _GROWTH * num_bins
        self.counts = torch.zeros(0, dtype=torch.float64)
        self._edges = torch.zeros(0)  # as modelopt stores them (rarely one edge too many)

    @property
    def edges(self) -> torch.Tensor:
        return self._edges[: self.counts.numel() + 1]

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.float().abs().reshape(-1)
        x_max = x.max()
        if not self.counts.numel() or self._edges[1] == 0:  # first tensor (or all ~0 so far)
            earlier = float(self.counts.sum())
            self._edges = torch.linspace(0, x_max, self.num_bins + 1)
            if self._edges[1] == 0:  # all zeros, or a width below float32's smallest value
                self.counts = torch.zeros(self.num_bins, dtype=torch.float64)
                self.counts[0] = earlier + x.numel()
                return
            self.counts = _histc(x, self.num_bins, x_max)
            self.counts[0] += earlier
            return
        if x_max > self._edges[-1]:  # grow: more bins of the same width
            width = self._edges[1] - self._edges[0]
            needed = math.ceil(float(x_max) / float(width))
            if needed > self.max_bins:  # merge `factor` neighbouring bins first
                factor = math.ceil(needed / self.max_bins)
                merged = torch.arange(self.counts.numel()) // min(factor, self.counts.numel())
                self.counts = torch.zeros(int(merged[-1]) + 1, dtype=torch.float64).index_add_(
                    0, merged, self.counts
                )
                width = torch.tensor(float(width) * factor, dtype=torch.float32)
            self.num_bins = int((x_max / width).ceil().item())
            if torch.isfinite(x_max + width):
                self._edges = torch.arange(0, x_max + width, width)
            else:  # within a bin of float32's largest value
                top = torch.finfo(torch.float32).max
                edges = torch.arange(self.num_bins + 1, dtype=torch.float64) * float(width)
                self._edges = edges.clamp(max=top).float()
        counts = _histc(x, self.num_bins, self._edges[-1])
        counts[: self.counts.numel()] += self.counts
        self.counts = counts


def _histc(x: torch.Tensor, bins: int, top: torch.Tensor) -> torch.Tensor:
    """torch.histc over [0, top] (float32 binning, as modelopt), counts summed in float64."""
    counts = torch.zeros(bins, dtype=torch.float64)
    for chunk in x.split(_CHUNK):
        counts += torch.histc(chunk, bins=bins, min=0, max=float(top))
    return counts


def percentile_range_abs(
    histogram: AbsHistogram, percentile: float, extremes: tuple[float, float], bits: int
) -> tuple[float, float]:
    """The ``percentile``-th percentile of |x| from TensorRT's histogram (see :func:`_quantile`)."""
    if percentile == 100:
        return minmax_range(*extremes, bits, True)
    edges = histogram.edges.double()
    amax = _quantile(edges[:-1], edges[1:], histogram.counts, percentile / 100)
    return as_range(-amax, min(amax, max(-extremes[0], extremes[1])), bits, True)


def _quantile(lo: torch.Tensor, hi: torch.Tensor, counts: torch.Tensor, q: float) -> float:
    """``numpy.percentile``'s quantile (rank q·(n − 1), linear between the two order statistics
    around it) of a histogram with bins [lo, hi) in increasing order, each order statistic
    placed evenly within its bin: within one bin of numpy's. (modelopt returns the lower edge of
    the first bin whose CDF, summed in floating point, reaches q: up to a bin below numpy's, and
    in a sparse tail, where the CDF sum rounds below q, far beyond it.)"""
    cumulative = counts.cumsum(0)  # exact integers in float64
    rank = q * (float(cumulative[-1]) - 1)
    k = math.floor(rank)

    def order_statistic(k: int) -> float:
        b = int(
            torch.searchsorted(cumulative, torch.tensor(float(k), dtype=torch.float64), right=True)
        )
        b = min(b, counts.numel() - 1)
        before = float(cumulative[b] - counts[b])
        inside = (k - before + 0.5) / float(counts[b])
        return float(lo[b] + inside * (hi[b] - lo[b]))

    low = order_statistic(k)
    return low if rank == k else low + (rank - k) * (order_statistic(k + 1) - low)


def kl_range(histogram: AbsHistogram, bits: int) -> tuple[float, float]:
    """TensorRT's entropy calibration (Migacz 2017, "entropy calibration") as modelopt's
    ``_compute_amax_entropy`` computes it: the threshold at the upper edge of bin i − 1, for the
    last i ≥ 128 that minimizes KL(P‖Q)."""
    bins = histogram.counts.numpy().copy()
    if bins.size > 1:
        bins[0] = bins[1]  # modelopt: keep a spike of exact zeros from dominating P
    start = min(_KL_START_BIN, bins.size)
    divergence = _kl_divergences(bins, 1 << (bits - 1), start)  # 128 levels of |x| at 8 bits
    i = start + divergence.size - 1 - int(np.argmin(divergence[::-1]))  # the last minimum
    amax = float(histogram.edges[i])
    return as_range(-amax, amax, bits, True)


def _kl_divergences(bins: np.ndarray, n_levels: int, start: int) -> np.ndarray:
    """KL(P‖Q) for every threshold i = start … len(bins), all at once.

    For a threshold i, P is bins[:i] with the outliers Σ bins[i:] added to bin i − 1; Q merges
    bins[:i] into ``n_levels`` levels (bin j → level ⌊j·n/i⌋, modelopt's ``np.digitize``) and
    spreads each level's count evenly over its non-empty bins. With prefix sums over the bins,
    each i costs O(n_levels) instead of O(i):

        KL = Σ_j p_j log(p_j / q_j)
           = (Σ_j P_j log P_j − Σ_k m_k log(m_k / u_k) − t·log(m_K / u_K)) / T − log T + log S_i

    with T the total count, S_i = Σ bins[:i], t = T − S_i the outliers, m_k and u_k the count and
    the number of non-empty bins of level k, K the level of bin i − 1. A candidate whose P has
    mass where Q has none (bin i − 1 empty, outliers beyond) gets +inf, as in scipy's
    ``entropy``; so does one whose first i bins are all empty (modelopt: NaN).
    """
    total = bins.sum()
    S = np.concatenate([[0.0], np.cumsum(bins)])
    Z = np.concatenate([[0], np.cumsum(bins != 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        H = np.concatenate([[0.0], np.cumsum(np.where(bins > 0, bins * np.log(bins), 0.0))])
    thresholds = np.arange(start, bins.size + 1)
    rows = max(1, (1 << 20) // n_levels)
    parts = []
    for i in np.split(thresholds, range(rows, thresholds.size, rows)):
        parts.append(_kl_of_thresholds(i, bins, n_levels, total, S, Z, H))
    return np.concatenate(parts)


def _kl_of_thresholds(
    i: np.ndarray,
    bins: np.ndarray,
    n_levels: int,
    total: float,
    S: np.ndarray,
    Z: np.ndarray,
    H: np.ndarray,
) -> np.ndarray:
    k = np.arange(n_levels)
    first = (k * i[:, None] + n_levels - 1) // n_levels  # level k: bins first … next − 1
    after = ((k + 1) * i[:, None] + n_levels - 1) // n_levels
    mass, used = S[after] - S[first], Z[after] - Z[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        level_terms = np.where(mass > 0, mass * np.log(mass / used), 0.0).sum(1)
        last_level = (i - 1) * n_levels // i
        rows = np.arange(i.size)
        q_last = mass[rows, last_level] / used[rows, last_level]
        outliers = total - S[i]
        p_last = bins[i - 1] + outliers
        p_log_p = H[i - 1] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
        t_log_q = np.where(outliers > 0, outliers * np.log(q_last), 0.0)
        divergence = (p_log_p - level_terms - t_log_q) / total - np.log(total) + np.log(S[i])
    empty = (S[i] == 0) | ((bins[i - 1] == 0) & (outliers > 0))
    return np.where(empty, np.inf, divergence)


# --------------------------------------------------------------------------------------------
# Helpers: the fine log-spaced histogram, asymmetric percentile, MSE
# --------------------------------------------------------------------------------------------


class LogHistogram:
    """Counts of x in log-spaced bins with fixed edges, indexed by the float32 bits themselves.

    The 8 exponent bits and the first 6 mantissa bits of |x| (chapter 01's layout) number 64
    equal bins per octave [2^e, 2^(e+1)), each 0.8–1.6 % of its values wide, over every float32
    magnitude: the edges never move, so batches merge exactly. A bin is a signed index: +k for
    positive values in magnitude bin k, −k for negative ones, 0 for zeros (and |x| < 2^−132,
    whose error is negligible). Only the span of indices seen so far is stored.
    """

    def __init__(self) -> None:
        self.offset = 0  # the signed index of counts[0]
        self.counts = torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        bits = x.float().reshape(-1).view(torch.int32)
        magnitude = (bits & 0x7FFFFFFF) >> (23 - _MANTISSA_BITS)  # exponent, 6 mantissa bits
        index = torch.where(bits < 0, -magnitude, magnitude)
        low, high = int(index.min()), int(index.max())
        counts = torch.bincount(index - low, minlength=high - low + 1).double()
        if not self.counts.numel():
            self.offset, self.counts = low, counts
            return
        start, stop = min(low, self.offset), max(high + 1, self.offset + self.counts.numel())
        merged = torch.zeros(stop - start, dtype=torch.float64)
        merged[self.offset - start : self.offset - start + self.counts.numel()] += self.counts
        merged[low - start : low - start + counts.numel()] += counts
        self.offset, self.counts = start, merged

    def side(self, sign: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lower edges, upper edges, counts) of the non-empty bins of |x| for the values of one
        sign (+1, −1) or both (0), in increasing order of |x|; float64."""
        index = torch.arange(self.offset, self.offset + self.counts.numel())
        keep = (index != 0) & (self.counts > 0)
        if sign:
            keep &= torch.sign(index) == sign
        k, counts = index[keep].abs(), self.counts[keep]
        k, inverse = torch.unique(k, return_inverse=True)  # sorted; merges the signs if sign=0
        counts = torch.zeros(k.numel(), dtype=torch.float64).index_add_(0, inverse, counts)
        exponent = k >> _MANTISSA_BITS  # the biased exponent field, 0 for subnormals
        j = (k & (2**_MANTISSA_BITS - 1)).double() / 2**_MANTISSA_BITS
        normal = exponent > 0
        lead = normal.double()  # the implicit 1 of normal numbers
        power = torch.where(normal, exponent - 127, torch.full_like(exponent, -126))
        lo = torch.ldexp(lead + j, power)
        hi = torch.ldexp(lead + j + 2.0**-_MANTISSA_BITS, power)
        return lo, hi, counts

    @property
    def zeros(self) -> float:
        """The count of zeros (signed index 0)."""
        i = -self.offset
        return float(self.counts[i]) if 0 <= i < self.counts.numel() else 0.0


def percentile_range_signed(
    fine: LogHistogram, percentile: float, extremes: tuple[float, float], bits: int
) -> tuple[float, float]:
    """The (100 − p)-th and p-th percentiles of x, from the fine histogram (:func:`_quantile`)."""
    if percentile == 100:
        return minmax_range(*extremes, bits, False)
    neg_lo, neg_hi, neg_counts = fine.side(-1)
    pos_lo, pos_hi, pos_counts = fine.side(+1)
    zero = torch.zeros(1, dtype=torch.float64)
    lo = torch.cat([-neg_hi.flip(0), zero, pos_lo])  # every bin in increasing order of x
    hi = torch.cat([-neg_lo.flip(0), zero, pos_hi])
    counts = torch.cat([neg_counts.flip(0), zero + fine.zeros, pos_counts])
    keep = counts > 0
    lo, hi, counts = lo[keep], hi[keep], counts[keep]
    low = max(_quantile(lo, hi, counts, 1 - percentile / 100), extremes[0])
    high = min(_quantile(lo, hi, counts, percentile / 100), extremes[1])
    return as_range(low, high, bits, False)


# The MSE search runs in numpy (float64, one thread): its arrays are small ([256, ~2000]), and
# torch's two threads on a shared 2-core machine made it 10–40× slower.


def _sawtooth_integral(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """∫_0^x (v − s·round(v/s))² dv = k·s³/12 + u³/3, k = round(x/s), u = x − k·s."""
    k = np.round(x / s)
    u = x - k * s
    return (k / 12) * (s * s * s) + (u * u * u) / 3


@dataclass
class _Side:
    """The bins of |x| on one side of 0, with what the error integral needs precomputed."""

    lo: np.ndarray
    hi: np.ndarray
    density: np.ndarray  # count / width: values spread uniformly over the bin
    tail: np.ndarray  # [3, B + 1]: Σ over bins b ≥ i of n, n(a+b)/2, n(a²+ab+b²)/3
    edges: np.ndarray  # every distinct bin edge, and where lo and hi sit among them
    lo_at: np.ndarray
    hi_at: np.ndarray

    @classmethod
    def of(cls, lo: torch.Tensor, hi: torch.Tensor, counts: torch.Tensor) -> _Side:
        lo, hi, counts = lo.numpy(), hi.numpy(), counts.numpy()
        moments = np.stack(
            [counts, counts * (lo + hi) / 2, counts * (lo * lo + lo * hi + hi * hi) / 3]
        )
        tail = np.concatenate([np.cumsum(moments[:, ::-1], 1)[:, ::-1], np.zeros((3, 1))], 1)
        edges, at = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        return cls(lo, hi, counts / (hi - lo), tail, edges, at[: lo.size], at[lo.size :])


def _one_sided_error(side: _Side, s: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Σ (v − v̂)² over the values v ≥ 0 of ``side``, for a grid of step s[i] whose last code is
    K[i, j]·s[i]: rounding inside, clipping beyond. ``s``: [S]; ``K``: [S, M]; returns [S, M]."""
    n_bins = side.lo.size
    if n_bins == 0:
        return np.zeros(K.shape)
    s_col = s[:, None]
    F = _sawtooth_integral(side.edges, s_col)  # adjacent bins share an edge: once per edge
    rounding = side.density * (F[:, side.hi_at] - F[:, side.lo_at])
    below = np.concatenate([np.zeros((s.size, 1)), np.cumsum(rounding, 1)], 1)
    t = K * s_col  # the clipping point
    p = np.searchsorted(side.hi, t, side="right")  # bins wholly below t
    q = np.searchsorted(side.lo, t)  # bins starting below t; q = p + 1: bin p holds t
    error = np.take_along_axis(below, p, 1)
    b = np.minimum(p, n_bins - 1)
    lo, hi, density = side.lo[b], side.hi[b], side.density[b]
    inside = _sawtooth_integral(t, s_col) - _sawtooth_integral(lo, s_col) + (hi - t) ** 3 / 3
    error += np.where(q > p, density * inside, 0.0)
    n, m1, m2 = side.tail[0][q], side.tail[1][q], side.tail[2][q]
    return error + (m2 - 2 * t * m1 + t * t * n)  # Σ ∫ (v − t)² over the bins beyond t


def mse_range(
    fine: LogHistogram, extremes: tuple[float, float], bits: int, symmetric: bool
) -> tuple[float, float]:
    """The range minimizing the histogram's quantization error: a geometric grid, then a finer
    linear one between the best point's neighbours."""
    xmin, xmax = extremes
    qmin, qmax = code_range(ABSMAX if symmetric else ZEROPOINT, bits)
    if symmetric:
        side = _Side.of(*fine.side(0))
        amax = max(-xmin, xmax)
        if side.lo.size == 0 or amax == 0:  # all |x| < 2^−132 (the zero bin)
            return minmax_range(xmin, xmax, bits, True)
        smallest = max(float(side.lo[0]), amax * _DYNAMIC_RANGE)

        def errors(c: np.ndarray) -> np.ndarray:
            s = c / qmax
            return _chunked(
                lambda s: _one_sided_error(side, s, np.full((s.size, 1), qmax))[:, 0], s
            )

        c = _search(errors, smallest, amax)
        return as_range(-c, c, bits, True)
    L = qmax - qmin
    neg, pos = _Side.of(*fine.side(-1)), _Side.of(*fine.side(+1))
    span = max(xmax, 0.0) - min(xmin, 0.0)
    nonzero = [float(side.lo[0]) for side in (neg, pos) if side.lo.size]
    if span == 0 or not nonzero:  # all |x| < 2^−132 (the zero bin): nothing to search
        return minmax_range(xmin, xmax, bits, False)
    smallest = max(min(nonzero), span * _DYNAMIC_RANGE)
    K = np.arange(L + 1, dtype=np.float64)
    best_m: dict[float, int] = {}

    def errors(step: np.ndarray) -> np.ndarray:
        # codes −m … L − m below and above 0 (kmin = −m): error G−(s, m) + G+(s, L − m)
        def per_step(s: np.ndarray) -> np.ndarray:
            Ks = np.broadcast_to(K, (s.size, L + 1))
            total = _one_sided_error(neg, s, Ks) + _one_sided_error(pos, s, Ks)[:, ::-1]
            m = np.argmin(total, 1)
            best_m.update(zip(s.tolist(), m.tolist(), strict=True))
            return total[np.arange(s.size), m]

        return _chunked(per_step, step, rows=max(1, (1 << 18) // (L + 1)))

    step = _search(errors, smallest / L, span / L)
    m = best_m[step]
    return as_range(-m * step, (L - m) * step, bits, False)


def _search(errors: Callable[[np.ndarray], np.ndarray], low: float, high: float) -> float:
    """Minimize ``errors`` over [low, high]: a geometric grid, then a linear one around the best."""
    n = max(2, math.ceil(math.log2(high / low) * _GRID_PER_OCTAVE) + 1) if high > low else 1
    grid = np.geomspace(low, high, n)
    grid[-1] = high  # exactly the minmax range
    best = int(np.argmin(errors(grid)))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, n - 1)]
    fine = np.append(np.linspace(left, right, _REFINE_POINTS), grid[best])
    return float(fine[int(np.argmin(errors(fine)))])


def _chunked(
    fn: Callable[[np.ndarray], np.ndarray], values: np.ndarray, rows: int = 256
) -> np.ndarray:
    return np.concatenate([fn(values[i : i + rows]) for i in range(0, values.size, rows)])


def _data_mse(x: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    """The actual mean (x − x̂)² of :func:`clip_quantize`, as ``affine.quantization_error``."""
    x_hat = quantize_over(x, lo, hi, bits, symmetric).dequantize()
    return float((x.double() - x_hat.double()).square().mean())


def mse_range_on_data(
    x: torch.Tensor,
    candidate: tuple[float, float],
    extremes: tuple[float, float],
    bits: int,
    symmetric: bool,
) -> tuple[float, float]:
    """Of the histogram's range, a few ranges around it and the minmax range, the one whose
    actual error on ``x`` is smallest (the histogram spreads each value over its bin)."""
    lo, hi = candidate
    candidates = [minmax_range(*extremes, bits, symmetric), (lo, hi)]
    for factor in (0.98, 0.99, 1.01, 1.02):
        candidates.append(as_range(lo * factor, hi * factor, bits, symmetric))
    errors = [_data_mse(x, *pair, bits, symmetric) for pair in candidates]
    return candidates[int(np.argmin(errors))]
