"""qlearn.floats against ml_dtypes, numpy and torch: decode, encode, format_info, spacing.

The references: ``ml_dtypes`` (bfloat16, float8_e4m3fn, float8_e5m2, float4_e2m1fn,
float6_e2m3fn, float6_e3m2fn), numpy
(float16, float32) and torch's float16 / bfloat16 / float8 dtypes.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.floats import (
    FORMATS,
    all_values,
    decode,
    encode,
    format_info,
    memory_bytes,
    representable_values,
    round_to_format,
    spacing,
)

NUMPY_DTYPE = {
    "fp32": np.float32,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
}
TORCH_DTYPE = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
SMALL = [f for f in FORMATS if FORMATS[f].bits <= 16]


def _codes_of(values: np.ndarray) -> list[int]:
    """The bit patterns of a numpy / ml_dtypes array, as Python ints."""
    return values.view(UINT[values.itemsize]).astype(np.int64).tolist()


def _as_numpy(codes: np.ndarray, fmt: str) -> np.ndarray:
    """Reinterpret integer codes as the reference dtype, then widen to float64."""
    dtype = np.dtype(NUMPY_DTYPE[fmt])
    with np.errstate(invalid="ignore"):  # signalling NaN codes
        return codes.astype(UINT[dtype.itemsize]).view(dtype).astype(np.float64)


def _assert_same_floats(ours, ref) -> None:
    """Equal values, equal signs of zero, NaN where the reference has NaN."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    keep = ~np.isnan(ref)
    np.testing.assert_array_equal(ours[keep], ref[keep])
    np.testing.assert_array_equal(np.signbit(ours[keep]), np.signbit(ref[keep]))


def _probe_values(fmt: str, n: int, seed: int = 0) -> np.ndarray:
    """float32 values that stress a format: ties, neighbours of ties, subnormals, near-overflow,
    overflow, random bit patterns, zeros, inf and NaN (no NaN for fp4, which has none)."""
    rng = np.random.default_rng(seed)
    info = format_info(fmt)
    mid = np.zeros(0)
    if fmt != "fp32":  # (fp32's ties need float64 inputs: see the float64 test)
        grid = representable_values(fmt).numpy().astype(np.float64)
        mid = (grid[1:] + grid[:-1]) / 2  # exact in float32: at most 12 significant bits
    pick = np.concatenate([mid[:16], mid[-16:], rng.choice(mid, size=min(n, len(mid)))])
    ties = np.concatenate([pick, -pick]).astype(np.float32)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, -np.inf)])
    top = info.max + 2.0**info.max_exponent * info.epsilon / 2  # halfway from max to the next
    edges = np.array([0.0, info.max, top, 2 * info.max, info.min_subnormal / 2, np.inf])
    edges = np.concatenate([edges, -edges, [-0.0] + ([np.nan] if info.has_nan else [])])
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[~np.isnan(bits)]
    spread = rng.uniform(-1.2 * info.max, 1.2 * info.max, size=n)
    small = rng.uniform(-4, 4, size=n) * info.min_normal
    with np.errstate(over="ignore"):  # bf16's and fp32's 1.2 × max are inf in float32
        values = [ties, near, edges, bits, spread, small]
        return np.concatenate([v.astype(np.float32) for v in values])


# decode


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp6_e2m3", "fp6_e3m2"])
def test_decode_equals_ml_dtypes_on_all_fp8_fp6_and_fp4_codes(fmt):
    codes = np.arange(1 << FORMATS[fmt].bits)
    _assert_same_floats([decode(int(c), fmt).value for c in codes], _as_numpy(codes, fmt))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_decode_equals_torch_float8_views_on_all_codes(fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(TORCH_DTYPE[fmt]).double().numpy()
    _assert_same_floats([decode(c, fmt).value for c in range(256)], ref)


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_decode_equals_numpy_float16_and_ml_dtypes_bfloat16_on_all_codes(fmt):
    codes = np.arange(1 << 16)
    _assert_same_floats([decode(int(c), fmt).value for c in codes], _as_numpy(codes, fmt))


def test_decode_equals_numpy_float32_on_random_codes():
    special = [0, 1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x7F7FFFFF, 0x7F800000, 0x7F800001]
    special += [0x7FC00000, 0x7FFFFFFF]
    special += [c | 0x80000000 for c in special]
    rng = np.random.default_rng(1)
    codes = np.concatenate([special, rng.integers(0, 2**32, size=5000)]).astype(np.int64)
    _assert_same_floats([decode(int(c), "fp32").value for c in codes], _as_numpy(codes, "fp32"))


@pytest.mark.parametrize("fmt", SMALL)
def test_all_values_equals_the_numpy_and_ml_dtypes_views(fmt):
    codes = np.arange(1 << FORMATS[fmt].bits)
    ours = all_values(fmt)
    assert ours.dtype == torch.float32
    _assert_same_floats(ours.numpy(), _as_numpy(codes, fmt))


def test_decode_fields_and_formula_follow_ieee_754_binary16():
    one = decode(0x3C00, "fp16")
    assert (one.sign, one.exponent, one.mantissa, one.kind) == (0, 15, 0, "normal")
    assert one.bits == "0 01111 0000000000"
    assert one.formula == "(-1)^0 × 2^(15-15) × (1 + 0/1024) = 1.0"
    tiny = decode(0x0001, "fp16")
    assert tiny.kind == "subnormal" and tiny.value == 2.0**-24
    assert tiny.formula == f"(-1)^0 × 2^(1-15) × (0 + 1/1024) = {2.0**-24!r}"
    assert (
        decode(0x8000, "fp16").kind == "zero" and math.copysign(1, decode(0x8000, "fp16").value) < 0
    )
    assert decode(0xFC00, "fp16").value == -math.inf
    assert decode(0x7F, "fp8_e4m3").kind == "nan" and decode(0x7E, "fp8_e4m3").value == 448
    assert decode(0x7, "fp4_e2m1").bits == "0 11 1"


# encode


@pytest.mark.parametrize("fmt", SMALL)
def test_encode_equals_ml_dtypes_on_float32_values(fmt):
    """saturate=False is ml_dtypes' astype: inf (fp16, bf16, e5m2), NaN (e4m3), ±6 (fp4)."""
    values = _probe_values(fmt, 600)
    with np.errstate(over="ignore"):
        ref = _codes_of(values.astype(NUMPY_DTYPE[fmt]))
    assert [encode(float(v), fmt) for v in values] == ref


@pytest.mark.parametrize("fmt", ["fp32", "fp16"])
def test_encode_equals_numpy_on_float64_values_without_double_rounding(fmt):
    rng = np.random.default_rng(2)
    info = format_info(fmt)
    top = info.max + 2.0**info.max_exponent * info.epsilon / 2  # halfway from max to the next
    grid = np.float64(info.min_subnormal) * rng.integers(1, 2**12, size=500)  # subnormals
    values = np.concatenate(
        [
            rng.uniform(-1.1 * info.max, 1.1 * info.max, size=500),
            rng.standard_normal(500) * 2.0 ** rng.integers(-160, 130, size=500),
            grid + grid * 2.0**-30,  # just off the ties of the subnormal grid
            [top, np.nextafter(top, 0), np.nextafter(top, np.inf)],
        ]
    )
    with np.errstate(over="ignore"):
        ref = _codes_of(values.astype(NUMPY_DTYPE[fmt]))
    assert [encode(float(v), fmt) for v in values] == ref


@pytest.mark.parametrize("fmt", ["fp32", "fp16"])
def test_encode_of_a_fraction_equals_numpy_rounding_of_the_quotient(fmt):
    """p / q with q odd is never near a tie, so numpy's float64 -> fmt cast is safe to compare."""
    rng = np.random.default_rng(6)
    p = rng.integers(1, 10**6, size=500).tolist()
    q = (2 * rng.integers(1, 500, size=500) + 1).tolist()
    info = format_info(fmt)
    k = rng.integers(info.min_exponent - 30, info.max_exponent - 15, size=500).tolist()
    values = [Fraction(a, b) * Fraction(2) ** e for a, b, e in zip(p, q, k, strict=True)]
    with np.errstate(over="ignore"):
        ref = _codes_of(np.array([float(v) for v in values]).astype(NUMPY_DTYPE[fmt]))
    assert [encode(v, fmt) for v in values] == ref


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e5m2"])
def test_encode_equals_torch_cast_on_float32_values(fmt):
    """torch's fp16, bf16 and fp8_e5m2 casts overflow to ±inf, as saturate=False does."""
    values = _probe_values(fmt, 600)
    values = values[~np.isnan(values)]  # torch's NaN bit patterns differ from ml_dtypes'
    ref = torch.from_numpy(values).to(TORCH_DTYPE[fmt])
    ref = ref.view(torch.uint8 if ref.element_size() == 1 else torch.int16).numpy()
    ref = ref.astype(UINT[ref.itemsize]).astype(np.int64).tolist()
    assert [encode(float(v), fmt) for v in values] == ref


def test_encode_saturate_equals_torch_float8_e4m3fn_cast():
    """torch's E4M3FN cast saturates (1e6 and inf give 448); ml_dtypes gives NaN instead."""
    values = _probe_values("fp8_e4m3", 600)
    values = values[~np.isnan(values)]
    ref = torch.from_numpy(values).to(torch.float8_e4m3fn).view(torch.uint8).tolist()
    assert [encode(float(v), "fp8_e4m3", saturate=True) for v in values] == ref
    assert torch.tensor([1e6, math.inf]).to(torch.float8_e4m3fn).float().tolist() == [448, 448]
    assert np.isnan(np.float32(1e6).astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


def test_encode_overflow_follows_ieee_754_and_ml_dtypes():
    assert decode(encode(464.0, "fp8_e4m3"), "fp8_e4m3").value == 448  # tie to the even 448
    assert decode(encode(465.0, "fp8_e4m3"), "fp8_e4m3").kind == "nan"
    assert encode(-1e6, "fp8_e4m3") == 0xFF  # NaN that keeps the sign, as ml_dtypes
    assert decode(encode(61440.0, "fp8_e5m2"), "fp8_e5m2").value == math.inf
    assert decode(encode(1e9, "fp4_e2m1"), "fp4_e2m1").value == 6
    for fmt in FORMATS:
        top = format_info(fmt).max
        for v in (2 * top, math.inf):
            assert decode(encode(-v, fmt, saturate=True), fmt).value == -top
    assert encode(10**400, "fp32") == 0x7F800000  # an int beyond every float: exact


def test_encode_nan_negative_zero_and_fp4_nan_follow_ml_dtypes():
    for fmt in FORMATS:
        if FORMATS[fmt].has_nan:
            assert decode(encode(math.nan, fmt), fmt).kind == "nan"
        assert encode(-0.0, fmt) == 1 << (FORMATS[fmt].bits - 1)
        assert encode(-1e-300, fmt) == 1 << (FORMATS[fmt].bits - 1)
    with pytest.raises(ValueError, match="value: fp4_e2m1 has no NaN"):
        encode(math.nan, "fp4_e2m1")


# format_info and spacing


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_info_equals_ml_dtypes_finfo_and_torch_finfo(fmt):
    info, ref = format_info(fmt), ml_dtypes.finfo(NUMPY_DTYPE[fmt])
    assert info.max == float(ref.max)
    assert info.min_normal == float(ref.smallest_normal)
    assert info.min_subnormal == float(ref.smallest_subnormal)
    assert info.epsilon == float(ref.eps)
    assert (info.exponent_bits, info.mantissa_bits) == (ref.nexp, ref.nmant)
    assert (info.min_exponent, info.max_exponent + 1) == (ref.minexp, ref.maxexp)
    assert info.bits == ref.bits
    if fmt in TORCH_DTYPE:
        tref = torch.finfo(TORCH_DTYPE[fmt])
        assert (info.max, info.min_normal, info.epsilon) == (tref.max, tref.tiny, tref.eps)
    assert info.decimal_digits == pytest.approx((info.mantissa_bits + 1) * math.log10(2))


def test_spacing_equals_numpy_spacing_on_every_positive_fp16_below_max():
    values = all_values("fp16").numpy()[:0x7BFF].astype(np.float16)  # codes 0 .. max - 1
    ours = [spacing(float(v), "fp16") for v in values]
    np.testing.assert_array_equal(ours, np.spacing(values).astype(np.float64))


def test_spacing_equals_numpy_spacing_on_fp32_values():
    rng = np.random.default_rng(3)
    values = np.abs(rng.standard_normal(2000) * 2.0 ** rng.integers(-150, 127, size=2000))
    values = values.astype(np.float32)
    values = values[values < format_info("fp32").max]
    ours = [spacing(float(v), "fp32") for v in values]
    np.testing.assert_array_equal(ours, np.spacing(values).astype(np.float64))
    assert spacing(0.0, "fp16") == 2.0**-24 and spacing(-1.0, "fp16") == 2.0**-10


# properties (hypothesis)

SETTINGS = settings(max_examples=300, deadline=None)


def _any_value(fmt: str):
    top = format_info(fmt).max
    return st.floats(min_value=-top, max_value=top, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("fmt", SMALL)
def test_encode_inverts_decode_on_every_non_nan_code(fmt):
    for code in range(1 << FORMATS[fmt].bits):
        d = decode(code, fmt)
        if d.kind != "nan":
            assert encode(d.value, fmt) == code


@SETTINGS
@given(code=st.integers(0, 2**32 - 1))
def test_encode_inverts_decode_on_random_fp32_codes(code):
    d = decode(code, "fp32")
    if d.kind != "nan":
        assert encode(d.value, "fp32") == code


@SETTINGS
@given(fmt=st.sampled_from(list(FORMATS)), data=st.data())
def test_encode_is_monotone(fmt, data):
    a, b = sorted([data.draw(st.floats(allow_nan=False)), data.draw(st.floats(allow_nan=False))])
    ra = decode(encode(a, fmt, saturate=True), fmt).value
    rb = decode(encode(b, fmt, saturate=True), fmt).value
    assert ra <= rb


@SETTINGS
@given(fmt=st.sampled_from(list(FORMATS)), data=st.data())
def test_rounding_error_is_at_most_half_the_spacing(fmt, data):
    x = data.draw(_any_value(fmt))
    r = decode(encode(x, fmt), fmt).value
    assert abs(Fraction(x) - Fraction(r)) <= Fraction(spacing(x, fmt)) / 2


# round_to_format


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_to_format_equals_encode_then_decode(fmt, saturate):
    values = _probe_values(fmt, 300, seed=4)
    ours = round_to_format(torch.from_numpy(values), fmt, saturate=saturate)
    ref = [decode(encode(float(v), fmt, saturate=saturate), fmt).value for v in values]
    assert ours.dtype == torch.float32
    _assert_same_floats(ours.numpy(), ref)


@pytest.mark.parametrize("fmt", SMALL)
def test_round_to_format_of_float64_equals_encode_then_decode_without_double_rounding(fmt):
    """Just off every tie by 2^-40: float32 would turn these into ties (torch's float64 casts)."""
    grid = representable_values(fmt).double()
    mid = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([mid * (1 + 2.0**-40), mid * (1 - 2.0**-40), mid])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(7))[:3000]]
    ref = [decode(encode(float(v), fmt), fmt).value for v in x]
    _assert_same_floats(round_to_format(x, fmt).numpy(), ref)


def test_round_to_format_of_float64_to_fp32_equals_numpy_astype():
    rng = np.random.default_rng(8)
    x = rng.standard_normal(3000) * 2.0 ** rng.integers(-155, 130, size=3000)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float32)
    _assert_same_floats(round_to_format(torch.from_numpy(x), "fp32").numpy(), ref)


def test_torch_casts_float64_to_float8_through_float32():
    """Why round_to_format does not use torch's cast for float64 input: it rounds twice."""
    x = torch.tensor([400.0 * (1 + 2.0**-40)], dtype=torch.float64)
    assert x.to(torch.float8_e4m3fn).item() == 384  # the true nearest is 416
    assert decode(encode(x.item(), "fp8_e4m3"), "fp8_e4m3").value == 416
    assert round_to_format(x, "fp8_e4m3").item() == 416


def test_round_to_format_fp4_equals_ml_dtypes_astype():
    values = _probe_values("fp4_e2m1", 2000, seed=5)
    ref = values.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    _assert_same_floats(round_to_format(torch.from_numpy(values), "fp4_e2m1").numpy(), ref)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_to_format_returns_a_new_tensor_and_leaves_its_input_alone(fmt):
    x = torch.tensor([0.1, 1e6, -3.3])
    before = x.clone()
    y = round_to_format(x, fmt)
    y[0] = 42.0
    assert torch.equal(x, before)
    assert round_to_format(x.double(), fmt).dtype == torch.float32


# memory


def test_memory_bytes_gives_the_chapter_01_figures():
    assert memory_bytes(70_000_000_000, "fp32") == 280 * 10**9
    assert memory_bytes(70e9, "fp16") == 140 * 10**9
    gb = [memory_bytes(7e9, bits) / 1e9 for bits in (32, 16, 8, 4)]
    assert gb == [28, 14, 7, 3.5]
    assert memory_bytes(3, "fp4_e2m1") == 2  # rounded up to whole bytes


# bad input


def test_bad_input_raises_errors_that_name_the_argument():
    with pytest.raises(ValueError, match=r"fmt: expected one of 'fp32', .*got 'fp12'"):
        decode(0, "fp12")
    with pytest.raises(ValueError, match="code: expected an integer from 0 to 255 for fp8_e4m3"):
        decode(300, "fp8_e4m3")
    with pytest.raises(ValueError, match="code"):
        decode(-1, "fp16")
    with pytest.raises(TypeError, match="code"):
        decode(1.0, "fp16")
    with pytest.raises(TypeError, match="value"):
        encode("1.0", "fp16")
    with pytest.raises(TypeError, match="value"):
        encode(1j, "fp16")
    with pytest.raises(TypeError, match="saturate"):
        encode(1.0, "fp16", saturate=1)
    with pytest.raises(ValueError, match="fmt"):
        format_info("int8")
    with pytest.raises(ValueError, match=r"x: expected \|x\| <= 448"):
        spacing(500.0, "fp8_e4m3")
    with pytest.raises(ValueError, match="x: expected a finite"):
        spacing(math.inf, "fp16")
    with pytest.raises(ValueError, match="fmt: expected a format of at most 16 bits"):
        all_values("fp32")
    with pytest.raises(TypeError, match="x"):
        round_to_format([1.0], "fp16")
    with pytest.raises(TypeError, match="x"):
        round_to_format(torch.tensor([1, 2]), "fp16")
    with pytest.raises(ValueError, match="x: fp4_e2m1 has no NaN"):
        round_to_format(torch.tensor([math.nan]), "fp4_e2m1")
    with pytest.raises(ValueError, match="fmt_or_bits"):
        memory_bytes(10, "fp12")
    with pytest.raises(ValueError, match="n_params"):
        memory_bytes(-1, 8)
    with pytest.raises(ValueError, match="lo, hi"):
        representable_values("fp16", 1.0, 0.0)
