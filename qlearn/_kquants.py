"""The k-quant quantizers of llama.cpp (Q2_K … Q6_K), byte for byte, vectorised over blocks.

A super-block holds 256 weights, cut into sub-blocks of 16 or 32. Each sub-block gets its own
scale (and min) by a small least-squares search; the super-block then quantizes those scales
(and mins) to 4, 6 or 8 bits under one fp16 ``d`` (and ``dmin``). Codes are recomputed from the
fp16-rounded scales. Kawrakow, "k-quants", llama.cpp pull request #1684 (2023); the code is
``ggml/src/ggml-quants.c``: ``make_qkx2_quants``, ``make_q3_quants``, ``make_qx_quants`` and
``quantize_row_q{2,3,4,5,6}_K_ref`` (the path ``llama-quantize`` takes without an importance
matrix). Private: ``qlearn.gguf`` is the entry point. Taught in notebooks/06_gguf.ipynb.

Reproducing C's bytes exactly takes float32 arithmetic in C's order of operations:

- every intermediate is numpy float32; ``a*b*c`` is ``(a*b)*c`` as in C;
- sums over a sub-block run left to right (:func:`_sequential_sum`), never pairwise;
- ``nearest_int`` is C's bit trick (add 1.5·2^23, read the mantissa): round half to even, and
  the same wrap-around as C for values beyond 2^22 (:func:`_nearest_int`);
- integers stored in uint8/int8 wrap modulo 256 as C's implicit conversions do;
- ``if (a > b) b = a`` loops stay loops over the 8 or 16 sub-blocks (NaN and −0 behave as in C).

Arrays here put the element index of a sub-block first, ``x[i]`` being the i-th element of every
sub-block at once: a loop over the 16 or 32 elements is a loop of whole-array operations.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32
QK_K = 256
GROUP_MAX_EPS = f32(1e-15)
_MAGIC = f32(12582912.0)  # 1.5 * 2**23


# Each type: quantize_* (float32 [nb, 256] → fields), pack_* (fields → bytes [nb, type_size]),
# unpack_* (the reverse) and values_* (fields → float32, in gguf-py's order of operations).
# Fields are arrays with one row per super-block: fp16 ``d``/``dmin`` [nb], per-sub-block
# ``scales``/``mins`` [nb, 8 or 16] and the codes ``q`` [nb, 256] in element order.


def quantize_q2_k(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """``quantize_row_q2_K_ref``: 16 sub-blocks of 16, codes 0..3, x ≈ d·scale·q − dmin·min,
    with 4-bit scales and mins under fp16 d = max scale / 15 and dmin = max min / 15."""
    nb = blocks.shape[0]
    x, L, scales, mins = search(blocks, "Q2_K")
    max_scale, max_min = _running_max(scales), _running_max(mins)
    q4scale = f32(15)
    has_scale, has_min = max_scale > 0, max_min > 0
    iscale = np.where(has_scale, q4scale / _nonzero(max_scale), f32(0))
    imin = np.where(has_min, q4scale / _nonzero(max_min), f32(0))
    sc = np.where(has_scale[:, None], _nearest_int(iscale[:, None] * scales), 0)
    lm = _nearest_int(imin[:, None] * mins)
    sc = np.where(has_min[:, None], sc | (lm << 4), sc) & 0xFF  # a uint8 byte, as in C
    d = np.where(has_scale, max_scale / q4scale, f32(0)).astype(np.float16)
    dmin = np.where(has_min, max_min / q4scale, f32(0)).astype(np.float16)
    d_sub = d.astype(f32)[:, None] * (sc & 0xF).astype(f32)
    dm_sub = dmin.astype(f32)[:, None] * (sc >> 4).astype(f32)
    L = _requantize(x, L, d_sub, dm_sub, 0, 3)
    return {"d": d, "dmin": dmin, "scales": (sc & 0xF).astype(np.uint8),
            "mins": (sc >> 4).astype(np.uint8), "q": _by_block(L, nb, 16)}  # fmt: skip


def pack_q2_k(f: dict[str, np.ndarray]) -> np.ndarray:
    """84 bytes: scales[16] (scale | min << 4), qs[64], d, dmin. Byte l of each half (h) of qs
    holds the codes of elements 128h + l, +32, +64, +96 in bits 0-1, 2-3, 4-5, 6-7."""
    nb = f["q"].shape[0]
    qs = _pack_bits(f["q"].reshape(nb, 2, 4, 32), 2)
    return _concat(f["scales"] | (f["mins"] << 4), qs, f["d"], f["dmin"])


def unpack_q2_k(raw: np.ndarray) -> dict[str, np.ndarray]:
    scales, qs, d, dmin = _split(raw, 16, 64, 2, 2)
    return {"d": _fp16(d), "dmin": _fp16(dmin), "scales": scales & 0xF, "mins": scales >> 4,
            "q": _unpack_bits(qs.reshape(-1, 2, 32), 2)}  # fmt: skip


def values_q2_k(f: dict[str, np.ndarray]) -> np.ndarray:
    dl = f["d"].astype(f32)[:, None] * f["scales"].astype(f32)
    ml = f["dmin"].astype(f32)[:, None] * f["mins"].astype(f32)
    q = f["q"].reshape(-1, 16, 16).astype(f32)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)


def quantize_q3_k(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """``quantize_row_q3_K_ref``: 16 sub-blocks of 16, codes −4..3, x ≈ d·scale·q with
    signed 6-bit scales (−32..31) under fp16 d = −max scale / 32."""
    nb = blocks.shape[0]
    x, L, scales, _ = search(blocks, "Q3_K")
    max_scale = _first_max_abs(scales.T)
    has_scale = max_scale != 0  # C: `if (max_scale)`, true for NaN too
    iscale = f32(-32) / _nonzero(max_scale)
    ls = _to_int8(_nearest_int(iscale[:, None] * scales))
    ls = np.where(has_scale[:, None], np.clip(ls, -32, 31), -32)  # 6 bits stored as ls + 32
    d = np.where(has_scale, f32(1) / iscale, f32(0)).astype(np.float16)
    d_sub = d.astype(f32)[:, None] * ls.astype(f32)
    L = _requantize(x, L, d_sub, None, -4, 3, offset=4)
    q = _by_block(L, nb, 16).astype(np.int8) - np.int8(4)
    return {"d": d, "scales": ls.astype(np.int8), "q": q}


def pack_q3_k(f: dict[str, np.ndarray]) -> np.ndarray:
    """110 bytes: hmask[32] (bit j of byte l: is code 32j + l ≥ 0), qs[64] (low two bits of
    code + 4, laid out as Q2_K's), scales[12] (16 × 6 bits: low nibbles in bytes 0-7, high
    pairs in 8-11), d."""
    nb = f["q"].shape[0]
    L = (f["q"].astype(np.int16) + 4).astype(np.uint8)
    hmask = np.packbits((L > 3).reshape(nb, 8, 32), axis=1, bitorder="little").reshape(nb, 32)
    qs = _pack_bits((L & 3).reshape(nb, 2, 4, 32), 2)
    ls = (f["scales"].astype(np.int16) + 32).astype(np.uint8)
    low = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    high = _pack_bits((ls >> 4).reshape(nb, 1, 4, 4), 2)  # scale 4g + r → bits 2g of byte r
    return _concat(hmask, qs, low, high, f["d"])


def unpack_q3_k(raw: np.ndarray) -> dict[str, np.ndarray]:
    hmask, qs, sc, d = _split(raw, 32, 64, 12, 2)
    nb = raw.shape[0]
    high = np.unpackbits(hmask.reshape(nb, 1, 32), axis=1, bitorder="little").reshape(nb, 256)
    q = (_unpack_bits(qs.reshape(nb, 2, 32), 2) | (high << 2)).astype(np.int8) - np.int8(4)
    low = np.concatenate([sc[:, :8] & 0xF, sc[:, :8] >> 4], axis=1)
    ls = low | (_unpack_bits(sc[:, 8:].reshape(nb, 1, 4), 2) << 4)
    return {"d": _fp16(d), "scales": ls.astype(np.int8) - np.int8(32), "q": q}


def values_q3_k(f: dict[str, np.ndarray]) -> np.ndarray:
    dl = f["d"].astype(f32)[:, None] * f["scales"].astype(f32)
    return (dl[:, :, None] * f["q"].reshape(-1, 16, 16).astype(f32)).reshape(-1, QK_K)


def quantize_q4_k(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """``quantize_row_q4_K_ref``: 8 sub-blocks of 32, codes 0..15, x ≈ d·scale·q − dmin·min
    with 6-bit scales and mins under fp16 d = max scale / 63 and dmin = max min / 63; the
    sub-block search is weighted by rms(x) + |x|."""
    return _quantize_sub32(blocks, "Q4_K")


def pack_q4_k(f: dict[str, np.ndarray]) -> np.ndarray:
    """144 bytes: d, dmin, scales[12] (see :func:`_pack_scales_k4`), qs[128] (byte l of each
    32: code of element 64k + l in the low nibble, of 64k + 32 + l in the high one)."""
    nb = f["q"].shape[0]
    qs = _pack_bits(f["q"].reshape(nb, 4, 2, 32), 4)
    return _concat(f["d"], f["dmin"], _pack_scales_k4(f["scales"], f["mins"]), qs)


def unpack_q4_k(raw: np.ndarray) -> dict[str, np.ndarray]:
    d, dmin, sc, qs = _split(raw, 2, 2, 12, 128)
    scales, mins = _unpack_scales_k4(sc)
    q = _unpack_bits(qs.reshape(-1, 4, 32), 4)
    return {"d": _fp16(d), "dmin": _fp16(dmin), "scales": scales, "mins": mins, "q": q}


def values_q4_k(f: dict[str, np.ndarray]) -> np.ndarray:
    d = (f["d"].astype(f32)[:, None] * f["scales"].astype(f32))[:, :, None]
    dm = (f["dmin"].astype(f32)[:, None] * f["mins"].astype(f32))[:, :, None]
    return (d * f["q"].reshape(-1, 8, 32).astype(f32) - dm).reshape(-1, QK_K)


def quantize_q5_k(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """``quantize_row_q5_K_ref``: as Q4_K with codes 0..31 (search: rmin −0.5, 16 grids)."""
    return _quantize_sub32(blocks, "Q5_K")


def pack_q5_k(f: dict[str, np.ndarray]) -> np.ndarray:
    """176 bytes: d, dmin, scales[12], qh[32] (bit j of byte l: fifth bit of the code of
    element 32j + l), qs[128] (low nibbles, laid out as Q4_K's)."""
    nb = f["q"].shape[0]
    q = f["q"]
    qh = np.packbits((q > 15).reshape(nb, 8, 32), axis=1, bitorder="little").reshape(nb, 32)
    qs = _pack_bits((q & 15).reshape(nb, 4, 2, 32), 4)
    return _concat(f["d"], f["dmin"], _pack_scales_k4(f["scales"], f["mins"]), qh, qs)


def unpack_q5_k(raw: np.ndarray) -> dict[str, np.ndarray]:
    d, dmin, sc, qh, qs = _split(raw, 2, 2, 12, 32, 128)
    nb = raw.shape[0]
    scales, mins = _unpack_scales_k4(sc)
    high = np.unpackbits(qh.reshape(nb, 1, 32), axis=1, bitorder="little").reshape(nb, 256)
    q = _unpack_bits(qs.reshape(nb, 4, 32), 4) | (high << 4)
    return {"d": _fp16(d), "dmin": _fp16(dmin), "scales": scales, "mins": mins, "q": q}


values_q5_k = values_q4_k


def quantize_q6_k(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """``quantize_row_q6_K_ref``: 16 sub-blocks of 16, codes −32..31, x ≈ d·scale·q with int8
    scales under fp16 d = −max scale / 128 (a block whose scales are all ~0 is all zeros)."""
    nb = blocks.shape[0]
    x, L, scales, _ = search(blocks, "Q6_K")
    max_scale = _first_max_abs(scales.T)
    empty = np.abs(max_scale) < GROUP_MAX_EPS  # C: memset(block, 0)
    iscale = f32(-128) / _nonzero(max_scale)
    d = np.where(empty, f32(0), f32(1) / iscale).astype(np.float16)
    sc = _to_int8(np.minimum(127, _nearest_int(iscale[:, None] * scales)))
    sc = np.where(empty[:, None], 0, sc)
    d_sub = d.astype(f32)[:, None] * sc.astype(f32)
    L = _requantize(x, L, d_sub, None, -32, 31, offset=32)
    q = _by_block(L, nb, 16).astype(np.int8) - np.int8(32)
    q[empty] = -32
    return {"d": d, "scales": sc.astype(np.int8), "q": q}


def pack_q6_k(f: dict[str, np.ndarray]) -> np.ndarray:
    """210 bytes: ql[128] (low nibbles of code + 32: byte l of each 64 holds elements
    128h + l and 128h + 64 + l, or 128h + 32 + l and 128h + 96 + l), qh[64] (the high two
    bits, four codes per byte as Q2_K's), scales[16] (int8), d."""
    nb = f["q"].shape[0]
    L = (f["q"].astype(np.int16) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = _pack_bits((L & 15).reshape(nb, 2, 2, 2, 32).transpose(0, 1, 3, 2, 4), 4)
    qh = _pack_bits(L >> 4, 2)
    return _concat(ql, qh, f["scales"].view(np.uint8), f["d"])


def unpack_q6_k(raw: np.ndarray) -> dict[str, np.ndarray]:
    ql, qh, sc, d = _split(raw, 128, 64, 16, 2)
    nb = raw.shape[0]
    low = _unpack_bits(ql.reshape(nb, 2, 2, 32), 4).reshape(nb, 2, 2, 2, 32)
    low = low.transpose(0, 1, 3, 2, 4).reshape(nb, 256)
    q = (low | (_unpack_bits(qh.reshape(nb, 2, 32), 2) << 4)).astype(np.int8) - np.int8(32)
    return {"d": _fp16(d), "scales": sc.view(np.int8), "q": q}


def values_q6_k(f: dict[str, np.ndarray]) -> np.ndarray:
    d = (f["d"].astype(f32)[:, None] * f["scales"].astype(f32))[:, :, None]
    return (d * f["q"].reshape(-1, 16, 16).astype(f32)).reshape(-1, QK_K)


def search(blocks: np.ndarray, qtype: str) -> tuple[np.ndarray, ...]:
    """Each k-quant's sub-block search, before the super-block quantizes its results.

    Returns (x by element [n, S], codes [n, S], float scales [nb, n_sub], float mins
    [nb, n_sub] or None), the scales as ``make_*_quants`` return them (Q3_K and Q6_K: signed,
    codes symmetric; the others: x ≈ scale·L − min).
    """
    nb = blocks.shape[0]
    n = 32 if qtype in ("Q4_K", "Q5_K") else 16
    x = _by_element(blocks, n)
    mins = None
    if qtype == "Q2_K":  # weights |x|, least absolute deviation
        L, scales, mins = _make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    elif qtype == "Q3_K":
        L, scales = _make_q3_quants(x, 4)
    elif qtype == "Q6_K":
        L, scales = _make_qx_quants(x, 32)
    else:  # Q4_K, Q5_K: weights rms(x) + |x| of each sub-block of 32
        weights = np.sqrt(_sequential_sum(x * x) / f32(32)) + np.abs(x)
        nmax, rmin, nstep = (15, -1.0, 20) if qtype == "Q4_K" else (31, -0.5, 15)
        L, scales, mins = _make_qkx2_quants(x, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    scales = scales.reshape(nb, -1)
    return x, L, scales, None if mins is None else mins.reshape(nb, -1)


# ---------------------------------------------------------------------------------------------
# The sub-block searches of ggml-quants.c, over all sub-blocks at once ([n, S] arrays)
# ---------------------------------------------------------------------------------------------


def _make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    *,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants``: codes 0..nmax, scale and min of each sub-block (columns of x).

    Start from the min/max grid, then try ``nstep + 1`` grids of nmax + rmin + rdelta·is steps
    over the range; for each, the weighted least-squares (scale, min) of its codes; keep the
    one with the least weighted error (squared, or absolute with ``use_mad``). A grid that wins
    also moves the min from which the next grids start. Returns (L [n, S] int32, scale [S],
    the_min [S]) with x ≈ scale·L − the_min.
    """
    nmax_f = f32(nmax)
    data_min = x.min(axis=0)
    xmin = np.minimum(data_min, f32(0))
    xmax = x.max(axis=0)
    sum_w = _sequential_sum(weights)
    sum_x = _sequential_sum(weights * x)
    constant = xmax == xmin
    work = np.empty_like(x)

    def codes(shift: np.ndarray, iscale: np.ndarray) -> np.ndarray:
        return _clamped_codes(x, shift, iscale, 0, nmax, data_min, xmax, out=work)

    def error(lf: np.ndarray, scale: np.ndarray, the_min: np.ndarray) -> np.ndarray:
        diff = np.multiply(lf, scale, out=lf)  # C: scale * L[i] + min - x[i]
        diff += the_min
        diff -= x
        np.abs(diff, out=diff) if use_mad else np.multiply(diff, diff, out=diff)
        diff *= weights
        return _sequential_sum(diff)

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
            sum_l = _sequential_sum(wl)
            sum_l2 = _sequential_sum(np.multiply(wl, lf, out=wl2))
            sum_xl = _sequential_sum(np.multiply(wl, x, out=wl))
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


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)`` (Q6_K): symmetric codes in
    [−nmax, nmax − 1] stored + nmax; the scale with the least x²-weighted error among the
    absmax grid and 18 grids of nmax ± 0.1·is steps. Returns (L [n, S], scale [S])."""
    nmax_f = f32(nmax)
    amax, vmax = _first_max_abs(x, return_amax=True)
    zero = amax < GROUP_MAX_EPS
    data_min, data_max = x.min(axis=0), x.max(axis=0)
    w = x * x
    wx = w * x
    work, tmp = np.empty_like(x), np.empty_like(x)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lf = _clamped_codes(x, None, iscale, -nmax, nmax - 1, data_min, data_max, out=work)
        sumlx = _sequential_sum(np.multiply(wx, lf, out=tmp))
        np.multiply(w, lf, out=tmp)
        return sumlx, _sequential_sum(np.multiply(tmp, lf, out=tmp))

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


def _make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` (Q3_K): codes from the absmax grid,
    then up to five passes of coordinate descent, element by element, on the x²-weighted
    error. Returns (L [n, S] with + nmax, scale [S]).

    A pass that changes nothing leaves the state as it was, so later passes change nothing
    either: C's early exit is the same as dropping such sub-blocks. And until a sub-block's
    first change in a pass its sums are those of the pass's start, so one vectorised test over
    all elements finds the sub-blocks that change at all; only those run element by element.
    """
    amax, vmax = _first_max_abs(x, return_amax=True)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    with np.errstate(all="ignore"):
        iscale = f32(-nmax) / vmax
        Lf = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1).astype(f32)
        sumlx = _sequential_sum(wx * Lf)
        suml2 = _sequential_sum((w * Lf) * Lf)
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
    new_l = np.clip(_nearest_int((x * sl2) / slx), -nmax, nmax - 1).astype(f32)
    take = (slx > 0) & (new_l != L)
    slx = slx + wx * new_l
    sl2 = sl2 + (w * new_l) * new_l
    take &= (sl2 > 0) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
    return take, new_l, slx, sl2


# ---------------------------------------------------------------------------------------------
# Shared steps of the super-block quantizers
# ---------------------------------------------------------------------------------------------


def _quantize_sub32(blocks: np.ndarray, qtype: str) -> dict[str, np.ndarray]:
    """Q4_K and Q5_K: the sub-block search, then 6-bit scales and mins under fp16
    d = max scale / 63 and dmin = max min / 63, then the codes again."""
    nb = blocks.shape[0]
    nmax = 15 if qtype == "Q4_K" else 31
    x, L, scales, mins = search(blocks, qtype)
    max_scale, max_min = _running_max(scales), _running_max(mins)
    inv_scale = np.where(max_scale > 0, f32(63) / _nonzero(max_scale), f32(0))
    inv_min = np.where(max_min > 0, f32(63) / _nonzero(max_min), f32(0))
    ls = np.minimum(63, _nearest_int(inv_scale[:, None] * scales) & 0xFF)  # uint8, then MIN
    lm = np.minimum(63, _nearest_int(inv_min[:, None] * mins) & 0xFF)
    d = (max_scale / f32(63)).astype(np.float16)
    dmin = (max_min / f32(63)).astype(np.float16)
    d_sub = d.astype(f32)[:, None] * ls.astype(f32)
    dm_sub = dmin.astype(f32)[:, None] * lm.astype(f32)
    L = _requantize(x, L, d_sub, dm_sub, 0, nmax)
    return {"d": d, "dmin": dmin, "scales": ls.astype(np.uint8), "mins": lm.astype(np.uint8),
            "q": _by_block(L, nb, 32)}  # fmt: skip


def _pack_scales_k4(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 12 bytes of 8 six-bit scales and mins (C: the writer of
    ``get_scale_min_k4``): bytes 0-3 scales 0-3, bytes 4-7 mins 0-3, bytes 8-11 the low
    nibbles of scale and min 4-7; their top two bits fill bits 6-7 of bytes 0-7."""
    packed = np.empty((scales.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (scales[:, 4:] & 0xF) | ((mins[:, 4:] & 0xF) << 4)
    return packed


def _unpack_scales_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scales = np.concatenate(
        [packed[:, 0:4] & 63, (packed[:, 8:12] & 0xF) | ((packed[:, 0:4] >> 6) << 4)], axis=1
    )
    mins = np.concatenate(
        [packed[:, 4:8] & 63, (packed[:, 8:12] >> 4) | ((packed[:, 4:8] >> 6) << 4)], axis=1
    )
    return scales, mins


def _pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """[..., k, m] small codes → [nb, -1] bytes: code j of each group in bits ``bits·j``."""
    packed = np.zeros(q.shape[:-2] + q.shape[-1:], dtype=np.uint8)
    for j in range(q.shape[-2]):
        packed |= (q[..., j, :] << (bits * j)).astype(np.uint8)
    return packed.reshape(q.shape[0], -1)


def _unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: [..., m] bytes → [nb, -1] codes, 8 / bits per byte."""
    shifts = (np.arange(8 // bits, dtype=np.uint8) * bits)[:, None]
    codes = (packed[..., None, :] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)


def _split(raw: np.ndarray, *sizes: int) -> list[np.ndarray]:
    """Cut [nb, type_size] bytes into consecutive fields of the given widths."""
    return np.split(raw, np.cumsum(sizes)[:-1], axis=1)


def _fp16(two_bytes: np.ndarray) -> np.ndarray:
    """[nb, 2] little-endian bytes → [nb] float16."""
    return np.ascontiguousarray(two_bytes).view(np.float16)[:, 0]


def _requantize(
    x: np.ndarray,
    L: np.ndarray,
    d_sub: np.ndarray,
    dm_sub: np.ndarray | None,
    lo: int,
    hi: int,
    offset: int = 0,
) -> np.ndarray:
    """The last pass of every k-quant: codes from the fp16-rounded sub-block scales,
    nearest_int((x + dm) / d) (or x / d), clamped; sub-blocks whose scale is 0 keep the
    search's codes (C: ``if (!d) continue;``). ``d_sub`` and ``dm_sub`` are [nb, n_sub]."""
    d = d_sub.reshape(1, -1)
    with np.errstate(all="ignore"):
        num = x if dm_sub is None else x + dm_sub.reshape(1, -1)
        new = np.clip(_nearest_int(num / d), lo, hi) + offset
    return np.where(d == 0, L, new)


def _by_element(blocks: np.ndarray, n: int) -> np.ndarray:
    """[nb, 256] super-blocks → [n, nb·256/n]: column s is sub-block s, row i its element i."""
    return np.ascontiguousarray(blocks.reshape(-1, n).T)


def _by_block(L: np.ndarray, nb: int, n: int) -> np.ndarray:
    """Inverse of :func:`_by_element` for codes: [n, S] → [nb, 256] uint8 (C's ``L[QK_K]``)."""
    return L.T.reshape(nb, QK_K).astype(np.uint8)


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
    t[...] = np.clip(_nearest_int(t), lo, hi)
    return t


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """C's ``nearest_int``: float32 + 1.5·2^23, keep the low 23 bits, subtract 2^22.

    Round half to even for |v| < 2^22; beyond that (and for NaN/Inf) the same wrapped value as
    C (whose assert, compiled out in release builds, would stop there).
    """
    bits = (v.astype(f32, copy=False) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _sequential_sum(a: np.ndarray) -> np.ndarray:
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


def _running_max(values: np.ndarray) -> np.ndarray:
    """C's ``m = 0; for j: if (v[j] > m) m = v[j];`` along axis 1 of [nb, k]."""
    m = np.zeros(values.shape[0], dtype=f32)
    for j in range(values.shape[1]):
        m = np.where(values[:, j] > m, values[:, j], m)
    return m


def _first_max_abs(x: np.ndarray, *, return_amax: bool = False):
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


def _nonzero(v: np.ndarray) -> np.ndarray:
    """``v`` with zeros replaced by 1: a divisor for lanes whose result is discarded."""
    return np.where(v == 0, f32(1), v)


def _to_int8(v: np.ndarray) -> np.ndarray:
    """An int stored into int8_t: wraps modulo 256, as C's implicit conversion."""
    return v.astype(np.int8).astype(np.int32)


def _concat(*fields: np.ndarray) -> np.ndarray:
    """Per-block fields → [nb, bytes], fp16 fields as their two little-endian bytes (joined by
    torch.cat, which copies rows of a few bytes faster than np.concatenate)."""
    import torch

    parts = [
        f.view(np.uint8).reshape(f.shape[0], -1) if f.dtype == np.float16 else f for f in fields
    ]
    tensors = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.uint8)) for p in parts]
    return torch.cat(tensors, dim=1).numpy()
