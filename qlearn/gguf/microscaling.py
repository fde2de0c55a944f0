"""GGUF's microscaling types: MXFP4 (blocks of 32, one E8M0 scale) and NVFP4 (blocks of 64, four
UE4M3 scales), with llama.cpp's own rounding.

Both store E2M1 codes two to a byte, as ggml-common.h's ``block_mxfp4`` (1 + 16 = 17 bytes per
32 weights, 4.25 bits) and ``block_nvfp4`` (4 + 32 = 36 bytes per 64, 4.5 bits). ggml keeps the
E2M1 values doubled (``kvalues_mxfp4`` = 0, 1, 2, 3, 4, 6, 8, 12 and their negatives) and halves
the scale to match. Its quantizers (``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref`` in
``ggml/src/ggml-quants.c``), which these reproduce byte for byte (tests/test_gguf_microscaling.py,
golden bytes from the C source):

- **MXFP4**: e = ⌊log₂ max|x|⌋ − 2 + 127 (the OCP MX v1.0 shared exponent, see
  :mod:`qlearn.mx`) with ``log2f`` rounded to float32; d = 2^(e − 128); each code is the index
  of the doubled value v minimising |v·d − x|, the *first* such index on a tie — so a value
  halfway between two levels goes to the smaller magnitude (OCP rounds ties to even: 1.25 → 1,
  1.75 → 2; ggml gives 1 and 1.5). Where ⌊log₂ max|x|⌋ < −125 the C code converts a negative
  float to ``uint8_t``, which C leaves undefined; qlearn stores e = 0 there (the scale 2⁻¹²⁸),
  what the spec's clamp to E8M0 gives.
- **NVFP4**: per sub-block of 16, the scale ue = UE4M3(max|x| / 6), ggml's own conversion
  (``ggml_fp32_to_ue4m3``: the mantissa rounded half up; subnormals as ⌊x · 512 + 0.5⌋, capped
  at 7 · 2⁻⁹, so a value just below 2⁻⁶ does not round up to it; everything that reaches
  exponent 15 — from 248 on, where E4M3 has 256 … 448 — saturating to 448, the code 0x7E) and
  d = ue / 2; the codes as MXFP4's.
  There is no per-tensor scale in ggml's NVFP4: the E4M3 scale alone must cover the range,
  from 2⁻⁹ · 6 to 448 · 6 (NVIDIA's NVFP4, :func:`qlearn.mx.nvfp4_quantize`, adds an FP32 scale
  per tensor for that).

Dequantization equals gguf-py's ``gguf/quants.py`` (``MXFP4``, ``NVFP4``). Taught in
notebooks/12_shared_scales.ipynb.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from qlearn.gguf.formats import BlockFormat, Field, Fields

__all__ = ["E2M1_DOUBLED", "MXFP4", "NVFP4", "e8m0_to_fp32_half", "fp32_to_ue4m3", "ue4m3_to_fp32"]

f32 = np.float32
E2M1_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
"""ggml's ``kvalues_mxfp4``: the 16 E2M1 values times two, indexed by their 4-bit code."""


def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """2^(e − 128), float32 (``ggml_e8m0_to_fp32_half``: e = 0 and 1 are the subnormals 2⁻¹²⁸,
    2⁻¹²⁷)."""
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23))
    return bits.astype(np.uint32).view(f32)


def ue4m3_to_fp32(ue: np.ndarray) -> np.ndarray:
    """Half the value of an unsigned E4M3 code, float32 (``ggml_ue4m3_to_fp32``): 4 exponent bits
    (bias 7) and 3 mantissa bits; the codes 0 and 0x7F give 0."""
    ue = np.asarray(ue, dtype=np.uint8)
    exponent = ((ue >> 3) & 0xF).astype(np.int32)
    mantissa = (ue & 0x7).astype(f32)
    normal = np.ldexp(f32(1) + mantissa / f32(8), exponent - 7).astype(f32)
    raw = np.where(exponent == 0, np.ldexp(mantissa, -9).astype(f32), normal)
    return np.where((ue == 0) | (ue == 0x7F), f32(0), raw * f32(0.5)).astype(f32)


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """``ggml_fp32_to_ue4m3``: non-positive → 0; below 2⁻⁶ the subnormal ⌊x · 512 + 0.5⌋ (at most
    7); otherwise the float32 mantissa's top three bits rounded half up by the fourth, and
    0x7E (448) once the exponent reaches 15 (every x from 248 on)."""
    x = np.minimum(np.asarray(x, dtype=f32), f32(448))
    bits = x.view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.int32) - 127 + 7  # before rounding: it decides
    mantissa = ((bits >> 20) & 0x7).astype(np.int32) + ((bits >> 19) & 1).astype(np.int32)
    carried = mantissa > 7  # rounding carried into the exponent
    rounded_exponent = np.where(carried, exponent + 1, exponent)
    normal = np.where(rounded_exponent >= 15, 0x7E, (rounded_exponent << 3) | (mantissa & 7))
    with np.errstate(invalid="ignore"):
        sub = np.minimum((x * f32(512) + f32(0.5)).astype(np.int32), 7)
    out = np.where(exponent <= 0, np.maximum(sub, 0), normal)
    return np.where(x > 0, out, 0).astype(np.uint8)


def _nearest_codes(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``best_index_mxfp4`` for every value: the first code minimising |v·d − x| (float32)."""
    levels = E2M1_DOUBLED.astype(f32)
    errors = np.abs(levels * d[..., None, None] - blocks[..., None])  # [..., n, 16]
    return errors.argmin(axis=-1).astype(np.uint8)  # argmin: the first of equal minima


def _pack_halves(q: np.ndarray) -> np.ndarray:
    """A run of n codes → n/2 bytes: code j in the low nibble, code j + n/2 in the high one."""
    half = q.shape[-1] // 2
    return q[..., :half] | (q[..., half:] << 4)


def _unpack_halves(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


class MXFP4(BlockFormat):
    """e (E8M0, 1 byte), qs[16] (codes j and j + 16 in byte j); x ≈ d · kvalues[q] with
    d = 2^(e − 128)."""

    block_size = 32
    layout = (("e", 1), ("qs", 16))
    field_specs = (Field("e", (), np.uint8, 0, 255), Field("q", (32,), np.uint8, 0, 15))
    chunk = 1 << 12  # 32 × 16 float32 errors per block

    @classmethod
    def quantize(cls, blocks: np.ndarray) -> Fields:
        amax = np.abs(blocks).max(axis=1)
        with np.errstate(divide="ignore"):  # log2f, correctly rounded to float32, then floorf
            log2 = np.log2(amax.astype(np.float64)).astype(f32)
        exponent = np.floor(log2.astype(np.float64)) - 2 + 127
        e = np.where(amax > 0, np.clip(exponent, 0, 255), 0).astype(np.uint8)
        return {"e": e, "q": _nearest_codes(blocks, e8m0_to_fp32_half(e))}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        return np.concatenate([fields["e"][:, None], _pack_halves(fields["q"])], axis=1)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        return {"e": raw[:, 0].copy(), "q": _unpack_halves(raw[:, 1:])}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        d = e8m0_to_fp32_half(fields["e"])
        return E2M1_DOUBLED[fields["q"]].astype(f32) * d[:, None]


class NVFP4(BlockFormat):
    """d[4] (UE4M3, one per sub-block of 16), qs[32] (per sub-block s, byte 8s + j holds codes
    j and j + 8 of it); x ≈ (ue4m3(d[s]) / 2) · kvalues[q]."""

    block_size = 64
    sub_block: ClassVar[int] = 16
    layout = (("d", 4), ("qs", 32))
    field_specs = (Field("d", (4,), np.uint8, 0, 255), Field("q", (64,), np.uint8, 0, 15))
    chunk = 1 << 11

    @classmethod
    def quantize(cls, blocks: np.ndarray) -> Fields:
        subs = blocks.reshape(len(blocks), 4, cls.sub_block)
        ue = fp32_to_ue4m3(np.abs(subs).max(axis=2) / f32(6))
        q = _nearest_codes(subs, ue4m3_to_fp32(ue))
        return {"d": ue, "q": q.reshape(len(blocks), cls.block_size)}

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        q = fields["q"].reshape(-1, 4, cls.sub_block)
        return np.concatenate([fields["d"], _pack_halves(q).reshape(len(q), 32)], axis=1)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        q = _unpack_halves(raw[:, 4:].reshape(len(raw), 4, 8)).reshape(len(raw), 64)
        return {"d": raw[:, :4].copy(), "q": q}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        d = ue4m3_to_fp32(fields["d"])  # [nb, 4]
        values = E2M1_DOUBLED[fields["q"]].astype(f32).reshape(-1, 4, cls.sub_block)
        return (values * d[..., None]).reshape(-1, cls.block_size)
