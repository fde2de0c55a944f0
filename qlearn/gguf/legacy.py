"""GGUF's legacy formats, blocks of 32 weights: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

A block holds an fp16 scale ``d`` (Q4_1, Q5_1: and an fp16 min ``m``) and one code per weight:
8 bits signed (Q8_0), 4 bits (Q4_0, Q4_1) or 5 bits whose fifth bits sit together in ``qh``
(Q5_0, Q5_1). The ``_0`` types are symmetric, x ≈ d·(q − offset), their scale set by the
block's largest magnitude; the ``_1`` types are affine, x ≈ d·q + m, from the block's min and
max. Each type is one :class:`qlearn.gguf.BlockFormat` subclass; the two families share their
code through two bases (absmax and min-max) that differ only in the number of levels.

- Formats: Gerganov et al., ggml and llama.cpp (2023), ``ggml/src/ggml-common.h``
  (``block_q8_0`` … ``block_q5_1``).
- Quantizers: gguf-py's ``gguf/quants.py`` (``Q8_0``, ``Q4_0``, ... ``quantize_blocks``),
  whose bytes and floats these reproduce exactly, in its order of float32 operations. Their
  k-quant successors (llama.cpp pull request #1684): :mod:`qlearn.gguf.kquants`.

Taught in notebooks/06_gguf.ipynb.
"""

# The classes carry GGUF's type names (Q4_0), as gguf-py's quants.py does.
# ruff: noqa: N801

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from qlearn.gguf import _kquant_search as kq
from qlearn.gguf._packing import concat, fp16
from qlearn.gguf.formats import BlockFormat, Field, Fields

__all__ = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]

f32, f16 = np.float32, np.float16
_BELOW_HALF = float(np.nextafter(f32(0.5), f32(0)))
"""0.5 − 2⁻²⁵: trunc(v + sign(v)·this) is C's roundf for every float32 v (with 0.5 itself,
0.49999997 + 0.5 would round up to 1 in float32)."""

_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_BYTE_LSBS = np.uint64(0x0101010101010101)
_GATHER_LSBS = np.uint64(0x0102040810204080)
"""(word of eight 0/1 bytes) · this >> 56: bit k of the result is byte k's bit (the eight
partial products land on distinct bits, so nothing carries)."""


class Q8_0(BlockFormat):
    """d = max|x| / 127, q = round-half-away(x / d) with the float32 d, then d stored fp16;
    x ≈ d·q."""

    block_size = 32
    layout = (("d", 2), ("qs", 32))
    field_specs = (Field("d"), Field("q", (32,), np.int8, -128, 127))
    chunk = 1 << 15

    @classmethod
    def quantize(cls, blocks: np.ndarray) -> Fields:
        t = torch.from_numpy(blocks)
        d = t.abs().amax(dim=1) / 127
        inv = torch.where(d == 0, 0.0, 1.0 / d)
        v = t * inv[:, None]
        v.add_(torch.sign(v), alpha=_BELOW_HALF)  # BELOW_HALF·sign is exact: one rounding
        q = v.to(torch.int32).to(torch.int8)  # conversion truncates: roundf (via int32: faster)
        return {"d": d.numpy().astype(f16), "q": q.numpy()}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        return concat(fields["d"], fields["q"].view(np.uint8))

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        return {"d": fp16(raw[:, :2]), "q": raw[:, 2:].view(np.int8)}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        return fields["q"].astype(f32) * fields["d"].astype(f32)[:, None]


class _Blocks32(BlockFormat, register=False):
    """Q4_0, Q4_1, Q5_0, Q5_1: d, [m], [qh: bit j of a little-endian uint32 = fifth bit of code
    j], qs[16] (byte j: code j in the low nibble, code j + 16 in the high one)."""

    block_size = 32
    levels: ClassVar[int]  # 16 or 32 codes
    chunk = 1 << 15  # each piece costs ~0.1 ms of fixed overhead: few, large pieces

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        # Eight codes per uint64 word (little-endian): words 0-1 hold codes 0-15, words 2-3
        # codes 16-31, so one word-wide shift and OR packs 16 nibbles at once.
        w = np.ascontiguousarray(fields["q"], dtype=np.uint8).view(np.uint64)
        parts = [fields["d"]] + ([fields["m"]] if "m" in fields else [])
        if cls.levels == 32:  # bit 4 of each code, gathered into a byte per word
            bits = (w >> np.uint64(4)) & _BYTE_LSBS
            parts.append(((bits * _GATHER_LSBS) >> np.uint64(56)).astype(np.uint8))
        low = torch.from_numpy(w.view(np.int64)) & int(_LOW_NIBBLES)  # torch: faster on [nb, 2]
        qs = (low[:, :2] | (low[:, 2:] << 4)).numpy()
        parts.append(qs.view(np.uint8))
        return concat(*parts)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        fields = {"d": fp16(raw[:, 0:2])}
        start = 2
        if "m" in cls.fields:
            fields["m"], start = fp16(raw[:, 2:4]), 4
        high_bits = cls.levels == 32
        qs = raw[:, start + 4 * high_bits :]
        q = np.concatenate([qs & 15, qs >> 4], axis=1)
        if high_bits:
            qh = np.unpackbits(raw[:, start : start + 4], axis=1, bitorder="little")
            q |= qh << 4
        fields["q"] = q
        return fields


class _Weighted32(_Blocks32, register=False):
    """The importance path of the legacy types (``quantize_row_q4_0_impl`` … ``_q5_1_impl``):
    weights imatrix · √(σ² + x²) with σ² the mean x² of the whole row (not of the block)."""

    takes_importance = True

    @classmethod
    def importance_weights(cls, rows: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
        flat = rows.reshape(-1, rows.shape[-1])
        with np.errstate(over="ignore", invalid="ignore"):  # |x| ≳ 1.8e19: inf/NaN, as in C
            sigma2 = kq.sequential_sum(np.ascontiguousarray((flat * flat).T)) / f32(rows.shape[-1])
            weights = imatrix * np.sqrt(sigma2[:, None] + flat * flat)
        return weights.reshape(rows.shape).astype(f32)


class _Absmax32(_Weighted32, register=False):
    """Q4_0 (16 levels), Q5_0 (32): m = the first value of largest |x|, d = m / −(levels/2),
    q = min(levels − 1, trunc(x / d + levels/2 + 0.5)); x ≈ d·(q − levels/2)."""

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        if importance is not None:  # make_qx_quants(32, levels / 2, …, weights): codes as found
            x, w = kq.by_element(blocks, 32), kq.by_element(importance, 32)
            L, scale = kq.make_qx_quants(x, cls.levels // 2, w)
            return {"d": scale.astype(f16), "q": L.T.astype(np.uint8)}
        levels = cls.levels
        t = torch.from_numpy(blocks)
        m = _first_largest_magnitude(blocks, t)
        d = m / -(levels // 2)
        inv = torch.where(d == 0, 0.0, 1.0 / d)
        v = t * inv[:, None]
        q = v.add_(levels // 2 + 0.5).to(torch.int32).to(torch.uint8)  # ≥ 0: truncation
        return {"d": d.numpy().astype(f16), "q": q.clamp_(max=levels - 1).numpy()}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        offset = np.int8(cls.levels // 2)
        q = (fields["q"].astype(np.int8) - offset).astype(f32)
        return fields["d"].astype(f32)[:, None] * q


class _MinMax32(_Weighted32, register=False):
    """Q4_1 (16 levels), Q5_1 (32): d = (max − min) / (levels − 1), m = min,
    q = min(levels − 1, trunc((x − min) / d + 0.5)); x ≈ d·q + m."""

    @classmethod
    def quantize(cls, blocks: np.ndarray, importance: np.ndarray | None = None) -> Fields:
        if importance is not None:  # make_qkx3_quants(32, levels − 1, …, −0.9, 0.05, 36)
            x, w = kq.by_element(blocks, 32), kq.by_element(importance, 32)
            L, scale, the_min = kq.make_qkx3_quants(x, w, cls.levels - 1, -0.9, 0.05, 36)
            q = L.T.astype(np.uint8)
            return {"d": scale.astype(f16), "m": (-the_min).astype(f16), "q": q}
        levels = cls.levels
        t = torch.from_numpy(blocks)
        lo, hi = _row_extreme(blocks, t, "min"), _row_extreme(blocks, t, "max")
        d = (hi - lo) / (levels - 1)
        inv = torch.where(d == 0, 0.0, 1.0 / d)
        v = t - lo[:, None]
        q = v.mul_(inv[:, None]).add_(0.5).to(torch.int32).to(torch.uint8).clamp_(max=levels - 1)
        return {"d": d.numpy().astype(f16), "m": lo.numpy().astype(f16), "q": q.numpy()}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        d, m = fields["d"].astype(f32)[:, None], fields["m"].astype(f32)[:, None]
        return d * fields["q"].astype(f32) + m


class Q4_0(_Absmax32):
    levels = 16
    layout = (("d", 2), ("qs", 16))
    field_specs = (Field("d"), Field("q", (32,), np.uint8, 0, 15))


class Q4_1(_MinMax32):
    levels = 16
    layout = (("d", 2), ("m", 2), ("qs", 16))
    field_specs = (Field("d"), Field("m"), Field("q", (32,), np.uint8, 0, 15))


class Q5_0(_Absmax32):
    levels = 32
    layout = (("d", 2), ("qh", 4), ("qs", 16))
    field_specs = (Field("d"), Field("q", (32,), np.uint8, 0, 31))


class Q5_1(_MinMax32):
    levels = 32
    layout = (("d", 2), ("m", 2), ("qh", 4), ("qs", 16))
    field_specs = (Field("d"), Field("m"), Field("q", (32,), np.uint8, 0, 31))


def _row_extreme(x: np.ndarray, t: torch.Tensor, which: str) -> torch.Tensor:
    """Each block's min or max (torch reduces rows of 32 ~10× faster than numpy). Which zero,
    −0 or +0, numpy's reduction returns shows in the fp16 bytes: such rows ask numpy."""
    out = t.amin(dim=1) if which == "min" else t.amax(dim=1)
    zero = (out == 0).numpy()
    if zero.any():
        rows = x[zero]
        out[torch.from_numpy(zero)] = torch.from_numpy(
            rows.min(axis=1) if which == "min" else rows.max(axis=1)
        )
    return out


def _first_largest_magnitude(x: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """The signed value of each block's first largest |x| (gguf-py: abs().argmax()): the max
    when max > −min, the min when −min > max. Blocks where the two tie (+a and −a both there,
    or only zeros) need the position: numpy's argmax finds it there."""
    hi, lo = t.amax(dim=1), t.amin(dim=1)
    m = torch.where(hi > -lo, hi, lo)
    unsure = (hi == -lo).numpy()
    if unsure.any():
        rows = x[unsure]
        first = np.take_along_axis(rows, np.abs(rows).argmax(axis=1)[:, None], axis=1)[:, 0]
        m[torch.from_numpy(unsure)] = torch.from_numpy(first)
    return m
