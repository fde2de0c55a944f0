"""GGUF's k-quants, super-blocks of 256 weights: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

A super-block holds 16 sub-blocks of 16 weights (Q2_K, Q3_K, Q6_K) or 8 of 32 (Q4_K, Q5_K).
Each sub-block gets its own float scale (and min) from a small least-squares search
(:mod:`qlearn.gguf._kquant_search`); the super-block then quantizes those scales (and mins) to
4, 6 or 8 bits under one fp16 ``d`` (and ``dmin``), and the codes are recomputed from the
rounded scales. That two-level scale is how Q4_K spends 4.5 bits per weight where Q4_1 spends 5.
Each type is one :class:`qlearn.gguf.BlockFormat` subclass: its ``search``, that second level
(``quantize``), its bytes (``pack``/``unpack``) and gguf-py's ``dequantize``.

- Kawrakow, "k-quants", llama.cpp pull request #1684 (2023): ``quantize_row_q*_K_ref`` of
  ``ggml/src/ggml-quants.c``, the path ``llama-quantize`` takes without an importance matrix;
  these give its bytes exactly.
- Formats: Gerganov et al., ggml and llama.cpp (2023), ``ggml/src/ggml-common.h``
  (``block_q2_K`` … ``block_q6_K``); dequantization as gguf-py's ``gguf/quants.py``.
- A row that is no multiple of 256 falls back to a 32-block type of :mod:`qlearn.gguf.legacy`
  (``fallback``).

Taught in notebooks/06_gguf.ipynb.
"""

# The classes carry GGUF's type names (Q4_K), as gguf-py's quants.py does.
# ruff: noqa: N801

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from qlearn.gguf import _kquant_search as kq
from qlearn.gguf._packing import concat, fp16, pack_bits, split, unpack_bits
from qlearn.gguf.formats import BlockFormat, Field, Fields
from qlearn.gguf.legacy import Q4_0, Q5_0, Q5_1, Q8_0  # fallbacks; registered before these

__all__ = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

f32, f16 = np.float32, np.float16
QK_K = kq.QK_K


class _KQuant(BlockFormat, register=False):
    """A k-quant: :meth:`search` finds each sub-block's float scale (and min), then
    :meth:`quantize` quantizes those under the fp16 super-scale and recomputes the codes."""

    block_size = QK_K
    chunk = 512

    @classmethod
    def search(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """(x by element [n, S], codes [n, S], float scales [nb, n_sub], float mins [nb, n_sub]
        or None), the scales as ``make_*_quants`` return them."""
        raise NotImplementedError


class Q2_K(_KQuant):
    """``quantize_row_q2_K_ref``: 16 sub-blocks of 16, codes 0..3, x ≈ d·scale·q − dmin·min,
    with 4-bit scales and mins under fp16 d = max scale / 15 and dmin = max min / 15.

    84 bytes: scales[16] (scale | min << 4), qs[64], d, dmin. Byte l of each half (h) of qs
    holds the codes of elements 128h + l, +32, +64, +96 in bits 0-1, 2-3, 4-5, 6-7.
    """

    layout = (("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2))
    field_specs = (
        Field("d"),
        Field("dmin"),
        Field("scales", (16,), np.uint8, 0, 15),
        Field("mins", (16,), np.uint8, 0, 15),
        Field("q", (256,), np.uint8, 0, 3),
    )
    fallback = Q4_0.name
    search_limit = 1.8e19  # x² terms overflow float32 beyond

    @classmethod
    def search(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        x = kq.by_element(blocks, 16)  # weights |x|, least absolute deviation
        L, scales, mins = kq.make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
        nb = blocks.shape[0]
        return x, L, scales.reshape(nb, -1), mins.reshape(nb, -1)

    takes_importance = True

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        if importance is not None:
            return cls._quantize_with_importance(blocks, importance)
        nb = blocks.shape[0]
        x, L, scales, mins = cls.search(blocks)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        q4scale = f32(15)
        has_scale, has_min = max_scale > 0, max_min > 0
        iscale = np.where(has_scale, q4scale / _nonzero(max_scale), f32(0))
        imin = np.where(has_min, q4scale / _nonzero(max_min), f32(0))
        sc = np.where(has_scale[:, None], kq.nearest_int(iscale[:, None] * scales), 0)
        lm = kq.nearest_int(imin[:, None] * mins)
        sc = np.where(has_min[:, None], sc | (lm << 4), sc) & 0xFF  # a uint8 byte, as in C
        d = np.where(has_scale, max_scale / q4scale, f32(0)).astype(f16)
        dmin = np.where(has_min, max_min / q4scale, f32(0)).astype(f16)
        d_sub = d.astype(f32)[:, None] * (sc & 0xF).astype(f32)
        dm_sub = dmin.astype(f32)[:, None] * (sc >> 4).astype(f32)
        L = _requantize(x, L, d_sub, dm_sub, 0, 3)
        return {"d": d, "dmin": dmin, "scales": (sc & 0xF).astype(np.uint8),
                "mins": (sc >> 4).astype(np.uint8), "q": _by_block(L, nb, 16)}  # fmt: skip

    @classmethod
    def _quantize_with_importance(cls, blocks: np.ndarray, importance: np.ndarray) -> Fields:
        """``quantize_row_q2_K_impl``: weights imatrix · √(σ² + x²) (σ² = mean x² of the
        super-block), ``make_qkx3_quants`` per sub-block of 16, the 4-bit scales and mins by
        ``make_qp_quants`` weighted by each sub-block's total weight."""
        nb = blocks.shape[0]
        sigma2 = kq.sequential_sum(np.ascontiguousarray((blocks * blocks).T)) / f32(QK_K)
        x = kq.by_element(blocks, 16)
        weights = kq.by_element(importance, 16) * np.sqrt(np.repeat(sigma2, 16)[None, :] + x * x)
        sub_weight = np.ascontiguousarray(kq.sequential_sum(weights).reshape(nb, 16).T)
        L, scales, mins = kq.make_qkx3_quants(x, weights, 3, -0.9, 0.05, 36)
        ls, d = kq.make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 15, sub_weight)
        lm, dmin = kq.make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 16).T), 15, sub_weight)
        byte = ls.T | (lm.T << 4)  # uint8: C's scales[j] = Ls[j] | (Lm[j] << 4)
        d, dmin = d.astype(f16), dmin.astype(f16)
        d_sub = d.astype(f32)[:, None] * (byte & 0xF).astype(f32)
        dm_sub = dmin.astype(f32)[:, None] * (byte >> 4).astype(f32)
        L = _requantize(x, L, d_sub, dm_sub, 0, 3)
        return {"d": d, "dmin": dmin, "scales": (byte & 0xF).astype(np.uint8),
                "mins": (byte >> 4).astype(np.uint8), "q": _by_block(L, nb, 16)}  # fmt: skip

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        nb = fields["q"].shape[0]
        qs = pack_bits(fields["q"].reshape(nb, 2, 4, 32), 2)
        return concat(fields["scales"] | (fields["mins"] << 4), qs, fields["d"], fields["dmin"])

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        scales, qs, d, dmin = split(raw, cls.layout)
        return {"d": fp16(d), "dmin": fp16(dmin), "scales": scales & 0xF, "mins": scales >> 4,
                "q": unpack_bits(qs.reshape(-1, 2, 32), 2)}  # fmt: skip

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        dl = fields["d"].astype(f32)[:, None] * fields["scales"].astype(f32)
        ml = fields["dmin"].astype(f32)[:, None] * fields["mins"].astype(f32)
        q = fields["q"].reshape(-1, 16, 16).astype(f32)
        return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)


class Q3_K(_KQuant):
    """``quantize_row_q3_K_ref``: 16 sub-blocks of 16, codes −4..3, x ≈ d·scale·q with
    signed 6-bit scales (−32..31) under fp16 d = −max scale / 32.

    110 bytes: hmask[32] (bit j of byte l: is code 32j + l ≥ 0), qs[64] (low two bits of
    code + 4, laid out as Q2_K's), scales[12] (16 × 6 bits: low nibbles in bytes 0-7, high
    pairs in 8-11), d.
    """

    layout = (("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2))
    field_specs = (
        Field("d"),
        Field("scales", (16,), np.int8, -32, 31),
        Field("q", (256,), np.int8, -4, 3),
    )
    fallback = Q4_0.name
    search_limit = 6.9e12  # x³ terms overflow float32 beyond
    chunk = 1024

    @classmethod
    def search(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        x = kq.by_element(blocks, 16)
        L, scales = kq.make_q3_quants(x, 4)
        return x, L, scales.reshape(blocks.shape[0], -1), None

    takes_importance = True

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        if importance is not None:
            return cls._quantize_with_importance(blocks, importance)
        nb = blocks.shape[0]
        x, L, scales, _ = cls.search(blocks)
        max_scale = kq.first_max_abs(scales.T)
        has_scale = max_scale != 0  # C: `if (max_scale)`, true for NaN too
        iscale = f32(-32) / _nonzero(max_scale)
        ls = _to_int8(kq.nearest_int(iscale[:, None] * scales))
        ls = np.where(has_scale[:, None], np.clip(ls, -32, 31), -32)  # 6 bits stored as ls + 32
        d = np.where(has_scale, f32(1) / iscale, f32(0)).astype(f16)
        d_sub = d.astype(f32)[:, None] * ls.astype(f32)
        L = _requantize(x, L, d_sub, None, -4, 3, offset=4)
        q = _by_block(L, nb, 16).astype(np.int8) - np.int8(4)
        return {"d": d, "scales": ls.astype(np.int8), "q": q}

    @classmethod
    def _quantize_with_importance(cls, blocks: np.ndarray, importance: np.ndarray) -> Fields:
        """``quantize_row_q3_K_impl``: weights imatrix · √(σ² + x²) (σ² = 2 · mean x² of the
        super-block), ``make_qx_quants`` per sub-block of 16, and the 16 scales themselves
        by ``make_qx_quants`` (32 levels each side) weighted by each sub-block's total weight,
        not by −max / 32."""
        nb = blocks.shape[0]
        sum_x2 = kq.sequential_sum(np.ascontiguousarray((blocks * blocks).T))
        sigma2 = f32(2) * sum_x2 / f32(QK_K)
        x = kq.by_element(blocks, 16)
        weights = kq.by_element(importance, 16) * np.sqrt(np.repeat(sigma2, 16)[None, :] + x * x)
        sub_weight = np.ascontiguousarray(kq.sequential_sum(weights).reshape(nb, 16).T)
        L, scales = kq.make_qx_quants(x, 4, weights)
        ls, d = kq.make_qx_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, sub_weight)
        ls = (ls.T & 63).astype(np.int8) - np.int8(32)  # stored as 6 bits: ls + 32
        d = d.astype(f16)
        d_sub = d.astype(f32)[:, None] * ls.astype(f32)
        L = _requantize(x, L, d_sub, None, -4, 3, offset=4)
        q = _by_block(L, nb, 16).astype(np.int8) - np.int8(4)
        return {"d": d, "scales": ls, "q": q}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        nb = fields["q"].shape[0]
        L = (fields["q"].astype(np.int16) + 4).astype(np.uint8)
        hmask = np.packbits((L > 3).reshape(nb, 8, 32), axis=1, bitorder="little").reshape(nb, 32)
        qs = pack_bits((L & 3).reshape(nb, 2, 4, 32), 2)
        ls = (fields["scales"].astype(np.int16) + 32).astype(np.uint8)
        low = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
        high = pack_bits((ls >> 4).reshape(nb, 1, 4, 4), 2)  # scale 4g + r → bits 2g of byte r
        return concat(hmask, qs, low, high, fields["d"])

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        hmask, qs, sc, d = split(raw, cls.layout)
        nb = raw.shape[0]
        high = np.unpackbits(hmask.reshape(nb, 1, 32), axis=1, bitorder="little").reshape(nb, 256)
        q = (unpack_bits(qs.reshape(nb, 2, 32), 2) | (high << 2)).astype(np.int8) - np.int8(4)
        low = np.concatenate([sc[:, :8] & 0xF, sc[:, :8] >> 4], axis=1)
        ls = low | (unpack_bits(sc[:, 8:].reshape(nb, 1, 4), 2) << 4)
        return {"d": fp16(d), "scales": ls.astype(np.int8) - np.int8(32), "q": q}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        dl = fields["d"].astype(f32)[:, None] * fields["scales"].astype(f32)
        return (dl[:, :, None] * fields["q"].reshape(-1, 16, 16).astype(f32)).reshape(-1, QK_K)


def _sub32_fields(nmax: int) -> tuple[Field, ...]:
    """The fields of Q4_K and Q5_K: fp16 d and dmin, 8 six-bit scales and mins, 256 codes."""
    return (
        Field("d"),
        Field("dmin"),
        Field("scales", (8,), np.uint8, 0, 63),
        Field("mins", (8,), np.uint8, 0, 63),
        Field("q", (256,), np.uint8, 0, nmax),
    )


class _Sub32KQuant(_KQuant, register=False):
    """Q4_K and Q5_K: 8 sub-blocks of 32, codes 0..nmax, x ≈ d·scale·q − dmin·min with 6-bit
    scales and mins under fp16 d = max scale / 63 and dmin = max min / 63; the sub-block search
    is weighted by rms(x) + |x| (``make_qkx2_quants`` with nmax, rmin, 0.1, nstep).

    Their 12 bytes of scales (C: the writer of ``get_scale_min_k4``): bytes 0-3 scales 0-3,
    bytes 4-7 mins 0-3, bytes 8-11 the low nibbles of scale and min 4-7; their top two bits
    fill bits 6-7 of bytes 0-7.
    """

    nmax: ClassVar[int]
    rmin: ClassVar[float]
    nstep: ClassVar[int]
    search_limit = 1.8e19  # x² terms overflow float32 beyond

    @classmethod
    def search(cls, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        x = kq.by_element(blocks, 32)  # weights rms(x) + |x| of each sub-block of 32
        weights = np.sqrt(kq.sequential_sum(x * x) / f32(32)) + np.abs(x)
        L, scales, mins = kq.make_qkx2_quants(
            x, weights, cls.nmax, cls.rmin, 0.1, cls.nstep, use_mad=False
        )
        nb = blocks.shape[0]
        return x, L, scales.reshape(nb, -1), mins.reshape(nb, -1)

    takes_importance = True

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        if importance is not None:
            return cls._quantize_with_importance(blocks, importance)
        nb = blocks.shape[0]
        x, L, scales, mins = cls.search(blocks)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        inv_scale = np.where(max_scale > 0, f32(63) / _nonzero(max_scale), f32(0))
        inv_min = np.where(max_min > 0, f32(63) / _nonzero(max_min), f32(0))
        ls = np.minimum(63, kq.nearest_int(inv_scale[:, None] * scales) & 0xFF)  # uint8, then MIN
        lm = np.minimum(63, kq.nearest_int(inv_min[:, None] * mins) & 0xFF)
        d = (max_scale / f32(63)).astype(f16)
        dmin = (max_min / f32(63)).astype(f16)
        d_sub = d.astype(f32)[:, None] * ls.astype(f32)
        dm_sub = dmin.astype(f32)[:, None] * lm.astype(f32)
        L = _requantize(x, L, d_sub, dm_sub, 0, cls.nmax)
        return {"d": d, "dmin": dmin, "scales": ls.astype(np.uint8),
                "mins": lm.astype(np.uint8), "q": _by_block(L, nb, 32)}  # fmt: skip

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        d = (fields["d"].astype(f32)[:, None] * fields["scales"].astype(f32))[:, :, None]
        dm = (fields["dmin"].astype(f32)[:, None] * fields["mins"].astype(f32))[:, :, None]
        return (d * fields["q"].reshape(-1, 8, 32).astype(f32) - dm).reshape(-1, QK_K)

    @classmethod
    def _quantize_with_importance(cls, blocks: np.ndarray, importance: np.ndarray) -> Fields:
        """``quantize_row_q4_K_impl`` / ``quantize_row_q5_K_impl`` with ``quant_weights``:
        weights imatrix · √(σ² + x²) (σ² = 2 · mean x² of the super-block), the sub-block
        search ``make_qkx3_quants`` (rmin −0.9, 37 grids), and the 6-bit scales and mins by
        ``make_qp_quants`` weighted by each sub-block's total weight, not by max / 63."""
        nb = blocks.shape[0]
        sum_x2 = kq.sequential_sum(np.ascontiguousarray((blocks * blocks).T))
        sigma2 = f32(2) * sum_x2 / f32(QK_K)  # C: 2*sum_x2/QK_K
        x = kq.by_element(blocks, 32)
        weights = kq.by_element(importance, 32) * np.sqrt(np.repeat(sigma2, 8)[None, :] + x * x)
        sub_weight = kq.sequential_sum(weights).reshape(nb, 8)
        L, scales, mins = kq.make_qkx3_quants(x, weights, cls.nmax, -0.9, 0.05, 36)
        ls, d = kq.make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 8).T), 63, sub_weight.T)
        lm, dmin = kq.make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 8).T), 63, sub_weight.T)
        ls, lm = ls.T, lm.T
        if cls.nmax == 31:  # quantize_row_q5_K_impl clamps them; Q4_K's stores them as they are
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        sc, m = cls._unpack_scales(cls._pack_scales(ls, lm))  # C reads back what it wrote
        d, dmin = d.astype(f16), dmin.astype(f16)
        d_sub = d.astype(f32)[:, None] * sc.astype(f32)
        dm_sub = dmin.astype(f32)[:, None] * m.astype(f32)
        L = _requantize(x, L, d_sub, dm_sub, 0, cls.nmax)
        return {"d": d, "dmin": dmin, "scales": sc, "mins": m, "q": _by_block(L, nb, 32)}

    @staticmethod
    def _pack_scales(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
        packed = np.empty((scales.shape[0], 12), dtype=np.uint8)
        packed[:, 0:4] = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
        packed[:, 4:8] = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
        packed[:, 8:12] = (scales[:, 4:] & 0xF) | ((mins[:, 4:] & 0xF) << 4)
        return packed

    @staticmethod
    def _unpack_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scales = np.concatenate(
            [packed[:, 0:4] & 63, (packed[:, 8:12] & 0xF) | ((packed[:, 0:4] >> 6) << 4)], axis=1
        )
        mins = np.concatenate(
            [packed[:, 4:8] & 63, (packed[:, 8:12] >> 4) | ((packed[:, 4:8] >> 6) << 4)], axis=1
        )
        return scales, mins


class Q4_K(_Sub32KQuant):
    """``quantize_row_q4_K_ref``: codes 0..15 (search: rmin −1, 21 grids).

    144 bytes: d, dmin, scales[12], qs[128] (byte l of each 32: code of element 64k + l in the
    low nibble, of 64k + 32 + l in the high one).
    """

    nmax, rmin, nstep = 15, -1.0, 20
    layout = (("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128))
    field_specs = _sub32_fields(nmax=15)
    fallback = Q5_0.name

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        nb = fields["q"].shape[0]
        qs = pack_bits(fields["q"].reshape(nb, 4, 2, 32), 4)
        scales = cls._pack_scales(fields["scales"], fields["mins"])
        return concat(fields["d"], fields["dmin"], scales, qs)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        d, dmin, sc, qs = split(raw, cls.layout)
        scales, mins = cls._unpack_scales(sc)
        q = unpack_bits(qs.reshape(-1, 4, 32), 4)
        return {"d": fp16(d), "dmin": fp16(dmin), "scales": scales, "mins": mins, "q": q}


class Q5_K(_Sub32KQuant):
    """``quantize_row_q5_K_ref``: as Q4_K with codes 0..31 (search: rmin −0.5, 16 grids).

    176 bytes: d, dmin, scales[12], qh[32] (bit j of byte l: fifth bit of the code of
    element 32j + l), qs[128] (low nibbles, laid out as Q4_K's).
    """

    nmax, rmin, nstep = 31, -0.5, 15
    layout = (("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128))
    field_specs = _sub32_fields(nmax=31)
    fallback = Q5_1.name

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        nb = fields["q"].shape[0]
        q = fields["q"]
        qh = np.packbits((q > 15).reshape(nb, 8, 32), axis=1, bitorder="little").reshape(nb, 32)
        qs = pack_bits((q & 15).reshape(nb, 4, 2, 32), 4)
        scales = cls._pack_scales(fields["scales"], fields["mins"])
        return concat(fields["d"], fields["dmin"], scales, qh, qs)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        d, dmin, sc, qh, qs = split(raw, cls.layout)
        nb = raw.shape[0]
        scales, mins = cls._unpack_scales(sc)
        high = np.unpackbits(qh.reshape(nb, 1, 32), axis=1, bitorder="little").reshape(nb, 256)
        q = unpack_bits(qs.reshape(nb, 4, 32), 4) | (high << 4)
        return {"d": fp16(d), "dmin": fp16(dmin), "scales": scales, "mins": mins, "q": q}


class Q6_K(_KQuant):
    """``quantize_row_q6_K_ref``: 16 sub-blocks of 16, codes −32..31, x ≈ d·scale·q with int8
    scales under fp16 d = −max scale / 128 (a block whose scales are all ~0 is all zeros).

    210 bytes: ql[128] (low nibbles of code + 32: byte l of each 64 holds elements
    128h + l and 128h + 64 + l, or 128h + 32 + l and 128h + 96 + l), qh[64] (the high two
    bits, four codes per byte as Q2_K's), scales[16] (int8), d.
    """

    layout = (("ql", 128), ("qh", 64), ("scales", 16), ("d", 2))
    field_specs = (
        Field("d"),
        Field("scales", (16,), np.int8, -128, 127),
        Field("q", (256,), np.int8, -32, 31),
    )
    fallback = Q8_0.name
    search_limit = 6.9e12  # x³ terms overflow float32 beyond

    takes_importance = True

    @classmethod
    def search(
        cls, blocks: np.ndarray, importance: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        x = kq.by_element(blocks, 16)
        weights = None if importance is None else kq.by_element(importance, 16)
        L, scales = kq.make_qx_quants(x, 32, weights)
        return x, L, scales.reshape(blocks.shape[0], -1), None

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        """``quantize_row_q6_K_ref``, or with ``importance`` ``quantize_row_q6_K_impl``: the
        same steps with the sub-block search weighted by the importance matrix itself."""
        nb = blocks.shape[0]
        x, L, scales, _ = cls.search(blocks, importance)
        max_scale = kq.first_max_abs(scales.T)
        empty = np.abs(max_scale) < kq.GROUP_MAX_EPS  # C: memset(block, 0)
        iscale = f32(-128) / _nonzero(max_scale)
        d = np.where(empty, f32(0), f32(1) / iscale).astype(f16)
        sc = _to_int8(np.minimum(127, kq.nearest_int(iscale[:, None] * scales)))
        sc = np.where(empty[:, None], 0, sc)
        d_sub = d.astype(f32)[:, None] * sc.astype(f32)
        L = _requantize(x, L, d_sub, None, -32, 31, offset=32)
        q = _by_block(L, nb, 16).astype(np.int8) - np.int8(32)
        q[empty] = -32
        return {"d": d, "scales": sc.astype(np.int8), "q": q}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        nb = fields["q"].shape[0]
        L = (fields["q"].astype(np.int16) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)
        ql = pack_bits((L & 15).reshape(nb, 2, 2, 2, 32).transpose(0, 1, 3, 2, 4), 4)
        qh = pack_bits(L >> 4, 2)
        return concat(ql, qh, fields["scales"].view(np.uint8), fields["d"])

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        ql, qh, sc, d = split(raw, cls.layout)
        nb = raw.shape[0]
        low = unpack_bits(ql.reshape(nb, 2, 2, 32), 4).reshape(nb, 2, 2, 2, 32)
        low = low.transpose(0, 1, 3, 2, 4).reshape(nb, 256)
        q = (low | (unpack_bits(qh.reshape(nb, 2, 32), 2) << 4)).astype(np.int8) - np.int8(32)
        return {"d": fp16(d), "scales": sc.view(np.int8), "q": q}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        d = (fields["d"].astype(f32)[:, None] * fields["scales"].astype(f32))[:, :, None]
        return (d * fields["q"].reshape(-1, 16, 16).astype(f32)).reshape(-1, QK_K)


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
        new = np.clip(kq.nearest_int(num / d), lo, hi) + offset
    return np.where(d == 0, L, new)


def _by_block(L: np.ndarray, nb: int, n: int) -> np.ndarray:
    """Inverse of :func:`._kquant_search.by_element` for codes: [n, S] → [nb, 256] uint8 (C's
    ``L[QK_K]``)."""
    return L.T.reshape(nb, QK_K).astype(np.uint8)


def _running_max(values: np.ndarray) -> np.ndarray:
    """C's ``m = 0; for j: if (v[j] > m) m = v[j];`` along axis 1 of [nb, k]."""
    m = np.zeros(values.shape[0], dtype=f32)
    for j in range(values.shape[1]):
        m = np.where(values[:, j] > m, values[:, j], m)
    return m


def _nonzero(v: np.ndarray) -> np.ndarray:
    """``v`` with zeros replaced by 1: a divisor for lanes whose result is discarded."""
    return np.where(v == 0, f32(1), v)


def _to_int8(v: np.ndarray) -> np.ndarray:
    """An int stored into int8_t: wraps modulo 256, as C's implicit conversion."""
    return v.astype(np.int8).astype(np.int32)
