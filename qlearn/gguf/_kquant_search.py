"""The sub-block searches of llama.cpp's k-quants (Q2_K … Q6_K), byte for byte, vectorised.

A super-block holds 256 weights, cut into sub-blocks of 16 or 32. Each sub-block gets its own
scale (and min) by a small least-squares search, here; the super-block then quantizes those
scales (and mins) to 4, 6 or 8 bits under one fp16 ``d`` (and ``dmin``): that step, and the
bytes, belong to each format's class in :mod:`qlearn.gguf.kquants`. Kawrakow, "k-quants",
llama.cpp pull request #1684 (2023); the code is ``ggml/src/ggml-quants.c``:
``make_qkx2_quants``, ``make_q3_quants``, ``make_qx_quants`` (the path ``llama-quantize``
takes without an importance matrix). Private: ``qlearn.gguf`` is the entry point.
Taught in notebooks/06_gguf.ipynb.

Reproducing C's bytes exactly takes float32 arithmetic in C's order of operations:

- every intermediate is numpy float32; ``a*b*c`` is ``(a*b)*c`` as in C;
- sums over a sub-block run left to right (:func:`sequential_sum`), never pairwise;
- ``nearest_int`` is C's bit trick (add 1.5·2^23, read the mantissa): round half to even, and
  the same wrap-around as C for values beyond 2^22 (:func:`nearest_int`);
- integers stored in uint8/int8 wrap modulo 256 as C's implicit conversions do;
- ``if (a > b) b = a`` loops stay loops over the 8 or 16 sub-blocks (NaN and −0 behave as in C).

Arrays here put the element index of a sub-block first, ``x[i]`` being the i-th element of every
sub-block at once: a loop over the 16 or 32 elements is a loop of whole-array operations
(:func:`by_element`). The names without an underscore are shared with :mod:`.kquants`.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32
QK_K = 256
GROUP_MAX_EPS = f32(1e-15)
_MAGIC = f32(12582912.0)  # 1.5 * 2**23


# ---------------------------------------------------------------------------------------------
# The sub-block searches of ggml-quants.c, over all sub-blocks at once ([n, S] arrays)
# ---------------------------------------------------------------------------------------------


def make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    *,
    use_mad: bool,
    flat_if_max_at_most_min: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants``: codes 0..nmax, scale and min of each sub-block (columns of x).

    Start from the min/max grid, then try ``nstep + 1`` grids of nmax + rmin + rdelta·is steps
    over the range; for each, the weighted least-squares (scale, min) of its codes; keep the
    one with the least weighted error (squared, or absolute with ``use_mad``). A grid that wins
    also moves the min from which the next grids start. Returns (L [n, S] int32, scale [S],
    the_min [S]) with x ≈ scale·L − the_min.
    """
    nmax_f = f32(nmax)
    data_min = first_min(x)  # C's running min: which zero, −0 or +0, is C's (Q4_1's m shows it)
    xmin = np.where(data_min > 0, f32(0), data_min)  # C: if (min > 0) min = 0;
    xmax = x.max(axis=0)
    sum_w = sequential_sum(weights)
    sum_x = sequential_sum(weights * x)
    constant = xmax <= xmin if flat_if_max_at_most_min else xmax == xmin
    work = np.empty_like(x)

    def codes(shift: np.ndarray, iscale: np.ndarray) -> np.ndarray:
        return _clamped_codes(x, shift, iscale, 0, nmax, data_min, xmax, out=work)

    def error(lf: np.ndarray, scale: np.ndarray, the_min: np.ndarray) -> np.ndarray:
        diff = np.multiply(lf, scale, out=lf)  # C: scale * L[i] + min - x[i]
        diff += the_min
        diff -= x
        np.abs(diff, out=diff) if use_mad else np.multiply(diff, diff, out=diff)
        diff *= weights
        return sequential_sum(diff)

    with np.errstate(all="ignore"):
        iscale = nmax_f / (xmax - xmin)
        scale = f32(1) / iscale
        best_error = error(codes(xmin, iscale), scale, xmin)
        best_iscale, best_shift = iscale, xmin  # the grid of the best codes so far
        cur_min = xmin
        wl, wl2 = np.empty_like(x), np.empty_like(x)
        for step in range(nstep + 1):
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + nmax_f) / (xmax - cur_min)
            lf = codes(cur_min, iscale)
            np.multiply(weights, lf, out=wl)
            sum_l = sequential_sum(wl)
            sum_l2 = sequential_sum(np.multiply(wl, lf, out=wl2))
            sum_xl = sequential_sum(np.multiply(wl, x, out=wl))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0
            this_min = np.where(positive, f32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            cur_error = error(lf, this_scale, this_min)
            better = (D > 0) & (cur_error < best_error)
            best_error = np.where(better, cur_error, best_error)
            best_iscale = np.where(better, iscale, best_iscale)
            best_shift = np.where(better, cur_min, best_shift)
            scale = np.where(better, this_scale, scale)
            cur_min = np.where(better, this_min, cur_min)
        L = codes(best_shift, best_iscale).astype(np.int32)
    L[:, constant] = 0
    return L, np.where(constant, f32(0), scale), np.where(constant, -xmin, -cur_min)


def make_qkx3_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx3_quants`` with weights (the importance path of Q4_K and Q5_K): the search of
    :func:`make_qkx2_quants` to the operation, but a sub-block whose max is at or below its
    min (all values negative, or all zero) gets codes 0 and scale 0."""
    return make_qkx2_quants(
        x, weights, nmax, rmin, rdelta, nstep, use_mad=False, flat_if_max_at_most_min=True
    )


def make_qp_quants(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``make_qp_quants``: the non-negative values x (columns of [n, S], a super-block's
    sub-block scales or mins) as codes 0..nmax times one scale, weighted by w (their
    sub-blocks' total importance). The scale nmax/max and 8 others ((nmax ± 0.1k)/max), the
    best by weighted squared error; then up to 5 rounds that move one code at a time to
    nearest_int(x·Σwl²/Σwxl) when that raises (Σwxl)²/Σwl². Returns (L [n, S] uint8 as C
    stores them: a negative code wraps modulo 256, scale [S]); all-small columns (max below
    1e-15) give 0."""
    n = x.shape[0]
    top = np.zeros(x.shape[1], dtype=f32)
    for i in range(n):  # C: max = MAX(max, x[i])
        top = np.where(top > x[i], top, x[i])
    zero = top < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        top = np.where(zero, f32(1), top)
        iscale = f32(nmax) / top
        scale = f32(1) / iscale
        wrapped = (nearest_int(iscale * x) & 0xFF).astype(f32)
        diff = x - scale * wrapped
        best = sequential_sum(w * diff * diff)
        for k in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_k = (f32(0.1) * f32(k) + f32(nmax)) / top
            scale_k = f32(1) / iscale_k
            lk = np.minimum(nmax, nearest_int(iscale_k * x)).astype(f32)
            diff = x - scale_k * lk
            mse = sequential_sum(w * diff * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, iscale_k, iscale)
        lint = np.minimum(nmax, nearest_int(iscale * x))
        L = (lint & 0xFF).astype(np.int32)
        sumlx = sequential_sum(w * x * lint.astype(f32))
        suml2 = sequential_sum(w * lint.astype(f32) * lint.astype(f32))
        active = ~zero
        for _ in range(5):
            changed = np.zeros_like(active)
            for i in range(n):
                li = L[i].astype(f32)
                slx = sumlx - w[i] * x[i] * li
                sl2 = suml2 - w[i] * li * li
                tried = active & (slx > 0) & (sl2 > 0)
                new = np.minimum(nmax, nearest_int(x[i] * sl2 / np.where(tried, slx, f32(1))))
                newf = new.astype(f32)
                slx = slx + w[i] * x[i] * newf
                sl2 = sl2 + w[i] * newf * newf
                accept = tried & (new != L[i]) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                L[i] = np.where(accept, new & 0xFF, L[i])
                sumlx = np.where(accept, slx, sumlx)
                suml2 = np.where(accept, sl2, suml2)
                changed |= accept
            active &= changed
        result = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, f32(1)), f32(0))
    L[:, zero] = 0
    return L.astype(np.uint8), np.where(zero, f32(0), result).astype(f32)


def make_qx_quants(
    x: np.ndarray, nmax: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` (Q6_K): symmetric codes in
    [−nmax, nmax − 1] stored + nmax; the scale with the least weighted error among the absmax
    grid and 18 grids of nmax ± 0.1·is steps, weighted by x² or, with an importance matrix, by
    ``weights`` (its values as they are: Q6_K's importance path does not multiply them by
    √(σ² + x²)). Returns (L [n, S], scale [S])."""
    nmax_f = f32(nmax)
    amax, vmax = first_max_abs(x, return_amax=True)
    zero = amax < GROUP_MAX_EPS
    data_min, data_max = x.min(axis=0), x.max(axis=0)
    w = x * x if weights is None else weights
    wx = w * x
    work, tmp = np.empty_like(x), np.empty_like(x)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lf = _clamped_codes(x, None, iscale, -nmax, nmax - 1, data_min, data_max, out=work)
        sumlx = sequential_sum(np.multiply(wx, lf, out=tmp))
        np.multiply(w, lf, out=tmp)
        return sumlx, sequential_sum(np.multiply(tmp, lf, out=tmp))

    with np.errstate(all="ignore"):
        iscale = -nmax_f / vmax
        sumlx, suml2 = sums(iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
        best = scale * sumlx
        best_iscale = iscale
        for step in (*range(-9, 0), *range(1, 10)):
            iscale = -(nmax_f + f32(0.1) * f32(step)) / vmax
            sumlx, suml2 = sums(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = np.where(better, iscale, best_iscale)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
        lf = _clamped_codes(x, None, best_iscale, -nmax, nmax - 1, data_min, data_max, out=work)
    L = lf.astype(np.int32) + nmax
    L[:, zero] = 0
    return L, np.where(zero, f32(0), scale)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` (Q3_K): codes from the absmax grid,
    then up to five passes of coordinate descent, element by element, on the x²-weighted
    error. Returns (L [n, S] with + nmax, scale [S]).

    A pass that changes nothing leaves the state as it was, so later passes change nothing
    either: C's early exit is the same as dropping such sub-blocks. And until a sub-block's
    first change in a pass its sums are those of the pass's start, so one vectorised test over
    all elements finds the sub-blocks that change at all; only those run element by element.
    """
    amax, vmax = first_max_abs(x, return_amax=True)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    with np.errstate(all="ignore"):
        iscale = f32(-nmax) / vmax
        Lf = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(f32)
        sumlx = sequential_sum(wx * Lf)
        suml2 = sequential_sum((w * Lf) * Lf)
        active = np.flatnonzero(~zero)
        for _ in range(5):
            # all columns move in the first pass: slices there, no gathering copies
            cols = (slice(None), slice(None) if active.size == x.shape[1] else active)
            moving = _q3_step(x[cols], w[cols], wx[cols], Lf[cols], sumlx[cols[1]],
                              suml2[cols[1]], nmax)[0].any(axis=0)  # fmt: skip
            active = active[moving]
            if active.size == 0:
                break
            cols = (slice(None), active)
            xa, wa, wxa, La = x[cols], w[cols], wx[cols], Lf[cols]
            sx, s2 = sumlx[active], suml2[active]
            for i in range(x.shape[0]):
                take, new_l, slx, sl2 = _q3_step(xa[i], wa[i], wxa[i], La[i], sx, s2, nmax)
                La[i] = np.where(take, new_l, La[i])
                sx = np.where(take, slx, sx)
                s2 = np.where(take, sl2, s2)
            Lf[cols], sumlx[active], suml2[active] = La, sx, s2
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    L = Lf.astype(np.int32) + nmax
    L[:, zero] = 0
    return L, np.where(zero, f32(0), scale)


def _q3_step(x, w, wx, L, sumlx, suml2, nmax):
    """One element of make_q3_quants' descent: may L move to nearest_int(x·Σ'l²/Σ'xl)
    (sums without this element) and lower the error? Returns (take, new L, new sums)."""
    slx = sumlx - wx * L
    sl2 = suml2 - (w * L) * L
    new_l = np.clip(nearest_int((x * sl2) / slx), -nmax, nmax - 1).astype(f32)
    take = (slx > 0) & (new_l != L)
    slx = slx + wx * new_l
    sl2 = sl2 + (w * new_l) * new_l
    take &= (sl2 > 0) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
    return take, new_l, slx, sl2


# Helpers shared with the super-block quantizers of qlearn.gguf.kquants


def by_element(blocks: np.ndarray, n: int) -> np.ndarray:
    """[nb, 256] super-blocks → [n, nb·256/n]: column s is sub-block s, row i its element i."""
    return np.ascontiguousarray(blocks.reshape(-1, n).T)


def _clamped_codes(
    x: np.ndarray,
    shift: np.ndarray | None,
    iscale: np.ndarray,
    lo: int,
    hi: int,
    data_min: np.ndarray,
    data_max: np.ndarray,
    *,
    out: np.ndarray,
) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(iscale * (x - shift))))`` as float32, into ``out``.

    When every product of a call is finite and below 2^22 in magnitude, nearest_int is
    ``np.rint`` (both round half to even) and the clamp can be done in float: 4 passes instead
    of 8. The products' extremes come from each column's min and max (float multiplication and
    subtraction are monotonic), so the check costs only per-sub-block work. Otherwise C's bit
    trick, with its wrap-around, is reproduced exactly.
    """
    if shift is None:
        t = np.multiply(x, iscale, out=out)
    else:
        t = np.subtract(x, shift, out=out)
        t *= iscale
    ends = (data_min if shift is None else data_min - shift) * iscale
    ends2 = (data_max if shift is None else data_max - shift) * iscale
    if np.all(np.abs(ends) < 2**22) and np.all(np.abs(ends2) < 2**22):
        np.rint(t, out=t)
        return np.clip(t, lo, hi, out=t)
    t[...] = np.clip(nearest_int(t), lo, hi)
    return t


def nearest_int(v: np.ndarray) -> np.ndarray:
    """C's ``nearest_int``: float32 + 1.5·2^23, keep the low 23 bits, subtract 2^22.

    Round half to even for |v| < 2^22; beyond that (and for NaN/Inf) the same wrapped value as
    C (whose assert, compiled out in release builds, would stop there).
    """
    bits = (v.astype(f32, copy=False) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def sequential_sum(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over axis 0 of [n, S], as C's ``for`` loop adds.

    numpy reduces a leading axis element by element in order (out += a[i]) when the other
    axis has more than one column; with a single column it would switch to pairwise
    summation, so that case is summed explicitly.
    """
    if a.shape[1] > 1:
        return np.add.reduce(a, axis=0)
    total = a[0].copy()
    for row in a[1:]:
        total += row
    return total


def first_min(x: np.ndarray) -> np.ndarray:
    """C's ``min = x[0]; for i: if (x[i] < min) min = x[i];`` over axis 0 of [n, S]: the first
    of the smallest values, so that of −0 and +0 the one that comes first."""
    m = x[0].copy()
    for i in range(1, x.shape[0]):
        m = np.where(x[i] < m, x[i], m)
    return m


def first_max_abs(x: np.ndarray, *, return_amax: bool = False):
    """C's ``amax = 0; for i: if (|x[i]| > amax) { amax = |x[i]|; max = x[i]; }`` over axis 0
    of [n, S]: the signed value of the first largest magnitude (0 when all are 0)."""
    amax = np.zeros(x.shape[1], dtype=f32)
    vmax = np.zeros(x.shape[1], dtype=f32)
    for i in range(x.shape[0]):
        ax = np.abs(x[i])
        bigger = ax > amax
        amax = np.where(bigger, ax, amax)
        vmax = np.where(bigger, x[i], vmax)
    return (amax, vmax) if return_amax else vmax
