"""Float bit layouts: decode and encode FP32, FP16, BF16, FP8 (E4M3, E5M2) and FP4 (E2M1) by hand.

IEEE 754-2019, "IEEE Standard for Floating-Point Arithmetic" (binary32, binary16; bfloat16 is
binary32 with the mantissa cut to 7 bits). Micikevicius et al., "FP8 Formats for Deep Learning",
2022 (E4M3 and E5M2). Open Compute Project, "OCP Microscaling Formats (MX) Specification" v1.0,
2023, sections 5.3.2 (FP6 E2M3 and E3M2) and 5.3.3 (FP4 E2M1), the element types of
:mod:`qlearn.mx`. Taught in notebooks/01_float_formats.ipynb.

A value is ``(-1)^sign × 2^(exponent - bias) × (1 + mantissa / 2^M)`` (normal) or
``(-1)^sign × 2^(1 - bias) × (0 + mantissa / 2^M)`` (subnormal and zero, exponent field 0).
Each format is described once, in :data:`FORMATS`; everything below derives from those fields.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch

from qlearn._checks import check_bits, check_bool, check_choice, check_float_tensor, check_int

__all__ = [
    "FORMATS",
    "DecodedFloat",
    "FloatFormat",
    "FormatInfo",
    "all_values",
    "decode",
    "encode",
    "format_info",
    "memory_bytes",
    "representable_values",
    "round_to_format",
    "spacing",
]


@dataclass(frozen=True)
class FloatFormat:
    """One binary float format: its fields and how it spends the all-ones exponent.

    ``specials`` says what the codes with an all-ones exponent field mean:

    - ``"ieee"``: IEEE 754. Mantissa 0 is ±inf, any other mantissa is NaN (fp32, fp16, bf16,
      fp8_e5m2).
    - ``"fn"``: finite, with one NaN. The all-ones exponent holds normal numbers, except
      ``S.1…1.1…1``, which is NaN; there is no inf (fp8_e4m3, "E4M3FN").
    - ``"none"``: every code is a finite number (fp4_e2m1, fp6_e2m3, fp6_e3m2).

    ``torch_dtype`` names the torch dtype that stores the format, if torch has one.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    specials: Literal["ieee", "fn", "none"]
    torch_dtype: str | None

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.specials != "none"

    @property
    def exponent_mask(self) -> int:
        return (1 << self.exponent_bits) - 1

    @property
    def mantissa_mask(self) -> int:
        return (1 << self.mantissa_bits) - 1

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number (and of every subnormal)."""
        return 1 - self.bias

    @property
    def max_exponent_field(self) -> int:
        return self.exponent_mask - (self.specials == "ieee")

    @property
    def max_mantissa_field(self) -> int:
        """Mantissa field of the largest finite number (``S.1…1.1…1`` is NaN in "fn")."""
        return self.mantissa_mask - (self.specials == "fn")

    @property
    def max_code(self) -> int:
        return (self.max_exponent_field << self.mantissa_bits) | self.max_mantissa_field

    @property
    def max(self) -> Fraction:
        """Largest finite value, exactly."""
        e = self.max_exponent_field - self.bias - self.mantissa_bits
        return Fraction(2) ** e * ((1 << self.mantissa_bits) + self.max_mantissa_field)

    def special_code(self, sign: int, kind: Literal["inf", "nan"]) -> int:
        """The code of ±inf, or of the quiet NaN that numpy and ml_dtypes produce."""
        if kind == "inf":
            mantissa = 0
        elif self.specials == "ieee":
            mantissa = 1 << (self.mantissa_bits - 1)  # quiet bit: 0x7fc00000 in fp32
        else:
            mantissa = self.mantissa_mask
        return (sign << (self.bits - 1)) | (self.exponent_mask << self.mantissa_bits) | mantissa

    def is_inf(self, exponent: int | torch.Tensor, mantissa: int | torch.Tensor):
        """``exponent`` and ``mantissa`` fields (ints or int tensors) -> inf mask."""
        return (exponent == self.exponent_mask) & (mantissa == 0) & self.has_inf

    def is_nan(self, exponent: int | torch.Tensor, mantissa: int | torch.Tensor):
        """``exponent`` and ``mantissa`` fields (ints or int tensors) -> NaN mask."""
        all_ones = exponent == self.exponent_mask
        if self.specials == "ieee":
            return all_ones & (mantissa != 0)
        return all_ones & (mantissa == self.mantissa_mask) & self.has_nan


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in [
        FloatFormat("fp32", 8, 23, 127, "ieee", "float32"),
        FloatFormat("fp16", 5, 10, 15, "ieee", "float16"),
        FloatFormat("bf16", 8, 7, 127, "ieee", "bfloat16"),
        FloatFormat("fp8_e4m3", 4, 3, 7, "fn", "float8_e4m3fn"),
        FloatFormat("fp8_e5m2", 5, 2, 15, "ieee", "float8_e5m2"),
        FloatFormat("fp4_e2m1", 2, 1, 1, "none", None),
        FloatFormat("fp6_e2m3", 2, 3, 1, "none", None),
        FloatFormat("fp6_e3m2", 3, 2, 3, "none", None),
    ]
}


@dataclass(frozen=True)
class DecodedFloat:
    """One code of a format taken apart: its three fields, its kind and its value."""

    fmt: str
    code: int
    sign: int
    exponent: int
    mantissa: int
    kind: Literal["zero", "subnormal", "normal", "inf", "nan"]
    value: float

    @property
    def bits(self) -> str:
        """The code in binary, fields split by spaces: ``"0 01111 0000000000"`` for 1.0 in fp16."""
        f = FORMATS[self.fmt]
        return (
            f"{self.sign} {self.exponent:0{f.exponent_bits}b} {self.mantissa:0{f.mantissa_bits}b}"
        )

    @property
    def formula(self) -> str:
        """How the fields give the value: ``"(-1)^0 × 2^(15-15) × (1 + 0/1024) = 1.0"``."""
        f = FORMATS[self.fmt]
        e_bits, m_bits = self.bits.split()[1:]
        if self.kind == "nan":
            return f"exponent {e_bits} and mantissa {m_bits}: not a number = nan"
        if self.kind == "inf":
            return f"exponent {e_bits} and mantissa {m_bits}: infinity = {self.value}"
        lead, e = (1, self.exponent) if self.kind == "normal" else (0, 1)
        return (
            f"(-1)^{self.sign} × 2^({e}-{f.bias}) × ({lead} + {self.mantissa}/"
            f"{1 << f.mantissa_bits}) = {self.value!r}"
        )


@dataclass(frozen=True)
class FormatInfo:
    """The numbers that describe a format's range and precision (compare ``ml_dtypes.finfo``).

    ``epsilon`` is the gap between 1 and the next number; ``decimal_digits`` is
    ``(mantissa_bits + 1) × log10(2)``, the significant decimal digits the format holds.
    """

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max: float
    min_normal: float
    min_subnormal: float
    epsilon: float
    min_exponent: int
    max_exponent: int
    has_inf: bool
    has_nan: bool
    decimal_digits: float


def decode(code: int, fmt: str) -> DecodedFloat:
    """Take a code apart into sign, exponent and mantissa, and compute its value from them.

    Chapter 01 (notebooks/01_float_formats.ipynb); IEEE 754-2019 section 3.4 (binary
    interchange formats), FP8 paper table 1, OCP MX v1.0 section 5.3.3. The value is computed
    from the fields, not by reinterpreting memory: normal
    ``(-1)^s × 2^(e - bias) × (1 + m / 2^M)``, subnormal ``(-1)^s × 2^(1 - bias) × (m / 2^M)``.
    """
    f = _lookup(fmt)
    code = check_int(code, "code")
    if not 0 <= code < 1 << f.bits:
        raise ValueError(
            f"code: expected an integer from 0 to {(1 << f.bits) - 1} for {fmt}, got {code}"
        )
    sign = code >> (f.bits - 1)
    exponent = (code >> f.mantissa_bits) & f.exponent_mask
    mantissa = code & f.mantissa_mask
    if f.is_nan(exponent, mantissa):
        kind, value = "nan", math.nan
    elif f.is_inf(exponent, mantissa):
        kind, value = "inf", math.inf
    elif exponent == 0:
        kind = "zero" if mantissa == 0 else "subnormal"
        value = math.ldexp(mantissa, f.min_exponent - f.mantissa_bits)
    else:
        kind = "normal"
        value = math.ldexp(mantissa + (1 << f.mantissa_bits), exponent - f.bias - f.mantissa_bits)
    if sign and kind != "nan":
        value = -value
    return DecodedFloat(fmt, code, sign, exponent, mantissa, kind, value)


def encode(value: float, fmt: str, *, saturate: bool = False) -> int:
    """The code of the format nearest to ``value``: round to nearest, ties to even.

    Chapter 01 (notebooks/01_float_formats.ipynb); IEEE 754-2019 section 4.3.1
    (roundTiesToEven) and 7.4 (overflow). Exact: ``value`` (an int, float or Fraction) is
    rounded once, in integer arithmetic on ``|value| = p / q``, so there is no double rounding,
    even for fp32.
    Subnormals are produced; a result that underflows to zero keeps the sign of ``value``.

    Overflow (the rounded magnitude is above the largest finite number, or ``value`` is ±inf):

    - ``saturate=False`` (the default, what ``ml_dtypes`` does): ±inf in the formats that have
      inf (fp32, fp16, bf16, fp8_e5m2); NaN in fp8_e4m3, keeping the sign bit; ±6 (±max) in
      fp4_e2m1, which has neither inf nor NaN (``ml_dtypes.float4_e2m1fn`` saturates too).
      For fp8_e4m3, 464 (halfway between 448 and the NaN slot 480) rounds to the even 448.
    - ``saturate=True``: every format clamps to ±max finite, ±inf included. torch 2.13 does
      this in its fp8_e4m3 cast (``torch.tensor(1e6).to(torch.float8_e4m3fn)`` is 448, and so
      is inf) but *not* in its fp8_e5m2, fp16 and bf16 casts, which overflow to ±inf.

    NaN gives the format's quiet NaN code with the sign of ``value`` (the code ml_dtypes
    gives); fp4_e2m1 has no NaN, so NaN raises ``ValueError``.
    """
    f = _lookup(fmt)
    v = _exact_real(value, "value")
    saturate = check_bool(saturate, "saturate")
    negative = math.copysign(1.0, v) < 0 if isinstance(v, float) else v < 0
    sign = int(negative)
    if isinstance(v, float) and math.isnan(v):
        if not f.has_nan:
            raise ValueError(f"value: {fmt} has no NaN code, got nan")
        return f.special_code(sign, "nan")
    if isinstance(v, float) and math.isinf(v):
        return _overflow_code(f, sign, saturate)
    p, q = abs(v).as_integer_ratio()  # |value| = p / q exactly
    if p == 0:
        return sign << (f.bits - 1)
    e = max(_floor_log2(p, q), f.min_exponent)  # the binade of |value|; subnormals: the lowest
    shift = f.mantissa_bits - e  # n = |value| / 2^(e - M), rounded to an integer
    n = _round_half_even(p << shift, q) if shift >= 0 else _round_half_even(p, q << -shift)
    if n == 2 << f.mantissa_bits:  # rounded up into the next binade
        n, e = n >> 1, e + 1
    e_max = f.max_exponent_field - f.bias
    if e > e_max or (e == e_max and n > (1 << f.mantissa_bits) + f.max_mantissa_field):
        return _overflow_code(f, sign, saturate)
    if n < 1 << f.mantissa_bits:  # subnormal (or zero): exponent field 0, no implicit 1
        exponent_field, mantissa = 0, n
    else:
        exponent_field, mantissa = e + f.bias, n - (1 << f.mantissa_bits)
    return (sign << (f.bits - 1)) | (exponent_field << f.mantissa_bits) | mantissa


def format_info(fmt: str) -> FormatInfo:
    """Range and precision of a format: max, smallest normal and subnormal, epsilon.

    Chapter 01 (notebooks/01_float_formats.ipynb); IEEE 754-2019 section 3.3 (emax, emin,
    precision), FP8 paper table 1, OCP MX v1.0 table 5. Agrees with ``ml_dtypes.finfo``
    and ``torch.finfo`` (``max``, ``smallest_normal``, ``smallest_subnormal``, ``eps``).
    """
    f = _lookup(fmt)
    return FormatInfo(
        name=f.name,
        bits=f.bits,
        exponent_bits=f.exponent_bits,
        mantissa_bits=f.mantissa_bits,
        bias=f.bias,
        max=float(f.max),
        min_normal=math.ldexp(1.0, f.min_exponent),
        min_subnormal=math.ldexp(1.0, f.min_exponent - f.mantissa_bits),
        epsilon=math.ldexp(1.0, -f.mantissa_bits),
        min_exponent=f.min_exponent,
        max_exponent=f.max_exponent_field - f.bias,
        has_inf=f.has_inf,
        has_nan=f.has_nan,
        decimal_digits=(f.mantissa_bits + 1) * math.log10(2),
    )


def spacing(x: float, fmt: str) -> float:
    """The gap from ``x`` (rounded to the format) to the next number of larger magnitude.

    Chapter 01 (notebooks/01_float_formats.ipynb); IEEE 754-2019 section 3.3 (the quantum
    ``2^(e - M)``). Always positive: ``2^(max(e, 1 - bias) - M)`` where ``e`` is the exponent
    of the rounded ``x``, so ``spacing(0, fmt)`` is the smallest subnormal. Equals
    ``numpy.spacing`` for positive finite fp16 and fp32 values below the max; at ±max it gives
    the gap the grid would have next (numpy gives inf). ``|x|`` above the max, inf or NaN
    raises ``ValueError``.
    """
    f = _lookup(fmt)
    v = _exact_real(x, "x")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"x: expected a finite number, got {v}")
    if abs(Fraction(v)) > f.max:
        raise ValueError(f"x: expected |x| <= {float(f.max)} (the max of {fmt}), got {float(v)}")
    r = abs(decode(encode(v, fmt), fmt).value)
    e = f.min_exponent if r == 0 else max(_floor_log2(*r.as_integer_ratio()), f.min_exponent)
    return math.ldexp(1.0, e - f.mantissa_bits)


def all_values(fmt: str) -> torch.Tensor:
    """The value of every code of a format of at most 16 bits: ``all_values(fmt)[code]``.

    Chapter 01 (notebooks/01_float_formats.ipynb), for plots of where the representable
    numbers lie; IEEE 754-2019 section 3.4. A float32 tensor of length ``2^bits`` (every value
    of these formats is exact in float32), with NaN and ±inf where the codes mean them. The
    same field arithmetic as :func:`decode`, vectorised.
    """
    f = _lookup(fmt)
    if f.bits > 16:
        raise ValueError(
            f"fmt: expected a format of at most 16 bits (all_values lists every code), "
            f"got {fmt!r} ({f.bits} bits)"
        )
    code = torch.arange(1 << f.bits, dtype=torch.int64)
    sign = code >> (f.bits - 1)
    exponent = (code >> f.mantissa_bits) & f.exponent_mask
    mantissa = code & f.mantissa_mask
    normal = exponent != 0
    significand = (mantissa + torch.where(normal, 1 << f.mantissa_bits, 0)).double()
    scale = torch.clamp(exponent, min=1) - f.bias - f.mantissa_bits
    value = torch.ldexp(significand, scale.double())
    value = torch.where(f.is_inf(exponent, mantissa), math.inf, value)
    value = torch.where(sign == 1, -value, value)
    value = torch.where(f.is_nan(exponent, mantissa), math.nan, value)
    return value.float()


def representable_values(fmt: str, lo: float = -math.inf, hi: float = math.inf) -> torch.Tensor:
    """The distinct finite values of a format (at most 16 bits) in ``[lo, hi]``, ascending.

    Chapter 01 (notebooks/01_float_formats.ipynb): "where are the representable numbers?";
    IEEE 754-2019 section 3.4. A float32 tensor; +0 and -0 count as one value.
    """
    values = all_values(fmt)
    lo, hi = float(_exact_real(lo, "lo")), float(_exact_real(hi, "hi"))
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"lo, hi: expected lo <= hi, got lo={lo}, hi={hi}")
    keep = torch.isfinite(values) & (values >= lo) & (values <= hi)
    return torch.unique(values[keep], sorted=True)


def round_to_format(x: torch.Tensor, fmt: str, *, saturate: bool = False) -> torch.Tensor:
    """Cast every element of ``x`` to the format and back: a new float32 tensor.

    Chapter 01 (notebooks/01_float_formats.ipynb), to measure the error of storing weights in
    a format; IEEE 754-2019 section 4.3.1 (roundTiesToEven). Element for element the same as
    ``decode(encode(v, fmt, saturate=saturate), fmt).value`` (overflow rules included), but
    vectorised: torch's own casts for fp16, bf16 and fp8, field arithmetic for fp4 and for
    float64 input (torch 2.13 casts float64 to fp16, bf16 and fp8 through float32, rounding
    twice). Input of any float dtype; NaN stays NaN (fp4_e2m1 has none: ``ValueError``).
    """
    f = _lookup(fmt)
    check_float_tensor(x, "x", allow_empty=True, finite=False)
    saturate = check_bool(saturate, "saturate")
    if not f.has_nan and bool(torch.isnan(x).any()):
        raise ValueError(f"x: {fmt} has no NaN code, got {int(torch.isnan(x).sum())} NaN")
    xf = x if x.dtype == torch.float64 else x.float()
    if f.torch_dtype is None or xf.dtype == torch.float64:
        y = _round_fields(xf, f)  # torch casts float64 to fp16, bf16, fp8 through float32: twice
    else:
        y = xf.to(getattr(torch, f.torch_dtype)).to(xf.dtype)
    # Overflow, one rule for every format: |x| from halfway between max and the next step up
    # (the tie itself only when max's mantissa is odd: ties go to the even neighbour). Every
    # limit is exact in float32, except fp32's own, which only inf reaches from float32.
    limit = float(f.max + Fraction(2) ** (f.max_exponent_field - f.bias - f.mantissa_bits - 1))
    over = xf.abs() >= limit if f.max_mantissa_field % 2 else xf.abs() > limit
    if over.any():
        big = decode(_overflow_code(f, 0, saturate), fmt).value  # the rule encode follows
        y = torch.where(over, torch.copysign(torch.full_like(y, big), xf), y)
    return y.clone() if y is x else y.float()  # fp32 from float32: a copy, not x itself


def memory_bytes(n_params: int, fmt_or_bits: str | int) -> int:
    """Bytes to store ``n_params`` numbers of a format (or of ``bits`` bits each), rounded up.

    Chapter 01 (notebooks/01_float_formats.ipynb): memory = parameters × bytes per parameter;
    the bit widths are those of IEEE 754-2019, the FP8 paper and OCP MX v1.0.
    ``memory_bytes(70_000_000_000, "fp32")`` is 280e9 (280 GB); 7B parameters take 28, 14, 7
    and 3.5 GB at 32, 16, 8 and 4 bits. ``n_params`` may be a whole float such as ``7e9``.
    """
    if isinstance(n_params, float) and n_params.is_integer():
        n_params = int(n_params)
    n_params = check_int(n_params, "n_params")
    if n_params < 0:
        raise ValueError(f"n_params: expected a non-negative integer, got {n_params}")
    if isinstance(fmt_or_bits, str):
        bits = _lookup(fmt_or_bits, "fmt_or_bits").bits
    else:
        bits = check_bits(fmt_or_bits, low=1, high=64, name="fmt_or_bits")
    return -(-n_params * bits // 8)


def _lookup(fmt: str, name: str = "fmt") -> FloatFormat:
    return FORMATS[check_choice(fmt, name, FORMATS)]


def _exact_real(value: object, name: str) -> Fraction | float:
    """Raise unless ``value`` is a real number; return it exactly (Fraction) or as a float.

    Not ``_checks.check_real``: here ±inf and NaN are values to encode, and an int must stay
    exact (2^70 is not a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name}: expected a real number (int or float), got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, numbers.Rational):
        return Fraction(value)
    return float(value)


def _floor_log2(p: int, q: int) -> int:
    """``floor(log2(p / q))`` for positive integers, exactly."""
    e = p.bit_length() - q.bit_length()
    return e - 1 if (p << max(-e, 0)) < (q << max(e, 0)) else e


def _round_half_even(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest integer, ties to the even one (IEEE 754 4.3.1)."""
    n, r = divmod(num, den)
    return n + (2 * r > den or (2 * r == den and n % 2 == 1))


def _overflow_code(f: FloatFormat, sign: int, saturate: bool) -> int:
    if saturate or not f.has_nan:
        return (sign << (f.bits - 1)) | f.max_code
    return f.special_code(sign, "inf" if f.has_inf else "nan")


def _round_fields(x: torch.Tensor, f: FloatFormat) -> torch.Tensor:
    """Round to the format's grid, ties to even, ignoring overflow: ``encode`` vectorised."""
    _, e = torch.frexp(x)  # |x| = m × 2^e with 0.5 <= m < 1, so x's binade is e - 1
    gap = torch.ldexp(torch.ones_like(x), torch.clamp(e - 1, min=f.min_exponent) - f.mantissa_bits)
    return torch.round(x / gap) * gap  # torch.round: half to even; keeps the sign of -0.0
