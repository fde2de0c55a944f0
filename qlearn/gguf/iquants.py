"""GGUF's 4-bit i-quants: IQ4_NL (blocks of 32) and IQ4_XS (super-blocks of 256), a fixed
non-uniform grid of 16 levels and a scale searched per block, with or without an importance
matrix.

Kawrakow, "IQ4_NL: 4-bit non-linear quants with blocks of 32" and "IQ4_XS", llama.cpp pull
requests #5590 and #5747 (2024); ``quantize_iq4_nl`` / ``quantize_iq4_xs`` and
``quantize_row_iq4_nl_impl`` in ``ggml/src/ggml-quants.c``, which these reproduce byte for byte
(tests/test_gguf_iquants.py, golden bytes from the C source, with and without importance).

The grid (``kvalues_iq4nl``: −127 … 113, denser near zero, like NF4's but of integers) is the
same for every block; what is searched is the block's scale d, to minimise Σ wⱼ (xⱼ − d·q(xⱼ))²:

1. the weights wⱼ: xⱼ² without an importance matrix; with one, imatrixⱼ · √(σ² + xⱼ²), where
   σ² = 2 · mean(x²) over the (super-)block — the importance of the input column times the
   weight's own magnitude;
2. a first scale −max/127 (max: the first value of largest magnitude, so that it lands on the
   grid's end, −127), every x rounded to its nearest level (ties to the upper one), and the
   least-squares d = Σ w q x / Σ w q² for those levels;
3. 15 more tries, the scale that puts max on (t − 127) for t = −7 … 7: each one kept if its
   least-squares fit explains more of Σ w x² (compared as (Σwqx)² / Σwq²).

IQ4_NL stores d in fp16 and 16 bytes of codes (4.5 bits per weight). IQ4_XS stores the eight
blocks' scales as 6-bit integers l ∈ [−32, 31] under one fp16 d = −max_scale / 32 (8 + 2 bytes
per 256 weights of scales, 4.25 bits per weight) and rounds each block again to the quantized
scale. Dequantization equals gguf-py's. Taught in notebooks/12_shared_scales.ipynb.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from qlearn.gguf import _kquant_search as kq
from qlearn.gguf._packing import concat, fp16
from qlearn.gguf.formats import BlockFormat, Field, Fields

__all__ = ["IQ4_NL", "IQ4_XS", "KVALUES_IQ4NL"]

f32, f16 = np.float32, np.float16
KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8
)
"""ggml's ``kvalues_iq4nl``: the 16 levels of IQ4_NL and IQ4_XS, indexed by their code."""
_LEVELS = KVALUES_IQ4NL.astype(f32)
# Two neighbouring levels' midpoint is a multiple of ½ (−115.5, −93.5, …, 101), so whether x
# lies at or above it is decided by ⌊2x⌋ alone: each ⌊2x⌋ in [−256, 255] maps to its level's index.
_HALF_STEPS = np.arange(-256, 256, dtype=f32)
_INDEX_BY_HALF_STEP = (_HALF_STEPS[:, None] >= _LEVELS[:-1] + _LEVELS[1:]).sum(axis=1)
_INDEX_BY_HALF_STEP = _INDEX_BY_HALF_STEP.astype(np.uint8)
_LEVEL_BY_HALF_STEP = _LEVELS[_INDEX_BY_HALF_STEP]
_NTRY = 7  # llama-quantize's: quantize_iq4_nl / quantize_iq4_xs pass 7
_GROUP_MAX_EPS = f32(1e-15)


def _half_steps(x: np.ndarray) -> np.ndarray:
    """⌊2x⌋ clamped to [−256, 255], shifted to [0, 511]: the row of x in the tables above."""
    t = np.fmin(np.floor(x + x), f32(255))  # fmin: a NaN (0 · inf) becomes 255, level 15, as C
    np.maximum(t, f32(-256), out=t)
    return t.astype(np.int32) + 256


def _best_index(x: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, kvalues_iq4nl, x)``: the nearest level, the upper one on a tie.

    C compares x − L[k] < L[k+1] − x. Close to a midpoint m both differences are exact in
    float32 (the levels are integers, and every |m| ≥ 4.5 exceeds half the gap it splits, so x
    has no bits the differences lose), and far from it rounding cannot swap them: the test is
    x < m, that is ⌊2x⌋ < 2m, one table look-up (tests/test_gguf_iquants.py checks it against
    the binary search on ties, the floats either side of every midpoint and level, and NaN)."""
    return _INDEX_BY_HALF_STEP[_half_steps(x)]


def _fit(x: np.ndarray, w: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ w·q·x and Σ w·q² (left to right over the 32 values, float32, as C adds them) for the
    levels of inverse·x: [32, S] → [S]."""
    q = _LEVEL_BY_HALF_STEP[_half_steps(inverse * x)]
    wq = w * q
    return kq.sequential_sum(wq * x), kq.sequential_sum(wq * q)


def _block_scales(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The searched scale of each block of 32 (columns of x, [32, S]); 0 for a block below 1e-15."""
    amax, vmax = kq.first_max_abs(x, return_amax=True)
    empty = amax < _GROUP_MAX_EPS
    vmax = np.where(empty, f32(1), vmax)  # those blocks are discarded: keep their lanes finite
    d = -vmax / _LEVELS[0]
    sumqx, sumq2 = _fit(x, w, f32(1) / d)
    d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, f32(1)), f32(0))
    best = d * sumqx
    for t in range(-_NTRY, _NTRY + 1):
        sumqx, sumq2 = _fit(x, w, f32(t + int(KVALUES_IQ4NL[0])) / vmax)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / np.where(sumq2 > 0, sumq2, f32(1)), d)
        best = np.where(better, d * sumqx, best)
    return np.where(empty, f32(0), d)


def _weights(x: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """wⱼ for [n, S] (a (super-)block per column): x² without importance, else
    importance · √(σ² + x²) with σ² = (2 / n) · Σ x² over the column."""
    if importance is None:
        return x * x
    sigma2 = kq.sequential_sum(x * x) * f32(2 / x.shape[0])
    return importance * np.sqrt(sigma2 + x * x)


def _pack_codes(q: np.ndarray) -> np.ndarray:
    """[nb, n] codes → [nb, n/2] bytes: per run of 32, code j | code j + 16 << 4."""
    runs = q.reshape(len(q), -1, 2, 16)
    return (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(len(q), -1)


def _unpack_codes(qs: np.ndarray) -> np.ndarray:
    runs = qs.reshape(len(qs), -1, 16)
    return np.concatenate([runs & 0x0F, runs >> 4], axis=2).reshape(len(qs), -1)


class IQ4_NL(BlockFormat):  # noqa: N801  (GGUF's type names, as gguf-py's)
    """d (fp16), qs[16] (code j | code j + 16 << 4); x ≈ d · kvalues_iq4nl[q]."""

    block_size = 32
    layout = (("d", 2), ("qs", 16))
    field_specs = (Field("d"), Field("q", (32,), np.uint8, 0, 15))
    takes_importance: ClassVar[bool] = True
    chunk = 1 << 14

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        x = np.ascontiguousarray(blocks.T)
        w = _weights(x, None if importance is None else np.ascontiguousarray(importance.T))
        scale = _block_scales(x, w)
        inverse = np.where(scale != 0, f32(1) / np.where(scale != 0, scale, f32(1)), f32(0))
        return {"d": scale.astype(f16), "q": _best_index(inverse * x).T}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        return concat(fields["d"], _pack_codes(fields["q"]))

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        return {"d": fp16(raw[:, :2]), "q": _unpack_codes(raw[:, 2:])}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        return fields["d"].astype(f32)[:, None] * KVALUES_IQ4NL[fields["q"]].astype(f32)


class IQ4_XS(BlockFormat):  # noqa: N801
    """d (fp16), scales_h (uint16: bits 2i, 2i+1 = high bits of block i's scale), scales_l[4]
    (low nibbles, block 2i then 2i+1), qs[128]; x ≈ d · (ls − 32) · kvalues_iq4nl[q]."""

    block_size = 256
    layout = (("d", 2), ("scales_h", 2), ("scales_l", 4), ("qs", 128))
    field_specs = (
        Field("d"),
        Field("scales", (8,), np.uint8, 0, 63),
        Field("q", (256,), np.uint8, 0, 15),
    )
    takes_importance: ClassVar[bool] = True
    fallback = "IQ4_NL"  # llama.cpp's, for rows that are no multiple of 256
    chunk = 1 << 11

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        x = np.ascontiguousarray(blocks.T)  # [256, S]
        imp = None if importance is None else np.ascontiguousarray(importance.T)
        w = _weights(x, imp)  # σ² over the whole super-block
        scales = np.stack(
            [_block_scales(x[32 * i : 32 * i + 32], w[32 * i : 32 * i + 32]) for i in range(8)]
        )
        _, max_scale = kq.first_max_abs(scales, return_amax=True)
        d = -max_scale / f32(32)
        inverse = np.where(d != 0, f32(1) / np.where(d != 0, d, f32(1)), f32(0))
        levels = np.clip(kq.nearest_int(inverse * scales), -32, 31)  # [8, S]
        dl = d * levels.astype(f32)
        idl = np.where(dl != 0, f32(1) / np.where(dl != 0, dl, f32(1)), f32(0))
        q = np.concatenate([_best_index(idl[i] * x[32 * i : 32 * i + 32]) for i in range(8)])
        return {"d": d.astype(f16), "scales": (levels + 32).T.astype(np.uint8), "q": q.T}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        ls = fields["scales"].astype(np.uint16)  # [nb, 8]
        high = ((ls >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=1).astype(np.uint16)
        low = (ls[:, 0::2] & 15) | ((ls[:, 1::2] & 15) << 4)
        return concat(
            fields["d"],
            high[:, None].view(np.uint8),
            low.astype(np.uint8),
            _pack_codes(fields["q"]),
        )

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        high = raw[:, 2:4].copy().view(np.uint16)  # [nb, 1]
        low = raw[:, 4:8]
        low_nibbles = np.stack([low & 15, low >> 4], axis=2).reshape(len(raw), 8)
        high_bits = (high >> (2 * np.arange(8, dtype=np.uint16))) & 3
        scales = (low_nibbles | (high_bits.astype(np.uint8) << 4)).astype(np.uint8)
        return {"d": fp16(raw[:, :2]), "scales": scales, "q": _unpack_codes(raw[:, 8:])}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        dl = fields["d"].astype(f32)[:, None] * (
            fields["scales"].astype(np.int8) - np.int8(32)
        ).astype(f32)
        values = KVALUES_IQ4NL[fields["q"]].astype(f32).reshape(-1, 8, 32)
        return (dl[..., None] * values).reshape(-1, 256)
