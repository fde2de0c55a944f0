"""Chapter 01's exercises: float bit layouts. Taught in notebooks/01_float_formats.ipynb."""

from __future__ import annotations

import math

import torch

from qlearn import floats
from qlearn.exercises import _course
from qlearn.exercises._compare import compare_fields, compare_number, compare_tensor
from qlearn.exercises._runner import Case, Draw, Spec, settings

_CAST_FORMATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")


def _fp16_codes(draw: Draw) -> list[Case]:
    """Zeros, subnormals, 1, the largest finite value, ±inf, NaN, and random codes."""
    specials = [0x0000, 0x8000, 0x3C00, 0xC500, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00]
    codes = [*specials, 0x7E00] + [draw.py.randrange(1 << 16) for _ in range(30)]
    return [Case((code,), shown={"code": f"0x{code:04x}"}) for code in codes]


def _ieee_limits(exponent_bits: int, mantissa_bits: int) -> tuple[float, float]:
    bias = 2 ** (exponent_bits - 1) - 1
    f = floats.FloatFormat("ieee-style", exponent_bits, mantissa_bits, bias, "ieee", None)
    return float(f.max), math.ldexp(1.0, f.min_exponent - f.mantissa_bits)


def _float32_patterns(draw: Draw) -> list[Case]:
    """Random float32 bit patterns (every binade, subnormals included), exact ties between two
    BF16 numbers, and FP32's largest value (which rounds up to inf)."""
    cases = []
    for size in (8, 64, 512):
        bits = torch.randint(-(2**31), 2**31, (size,), generator=draw.torch, dtype=torch.int64)
        bits = bits.to(torch.int32)
        bits = torch.where((bits >> 23) & 0xFF == 0xFF, bits & ~(0x80 << 23), bits)  # no inf, NaN
        cases.append(Case((bits.view(torch.float32),)))
    ties = [0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x00008000, 0x00018000]
    biggest = [0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF]
    for patterns, note in ((ties, "exact ties between two BF16"), (biggest, "near max")):
        x = torch.tensor(patterns, dtype=torch.int64).to(torch.int32).view(torch.float32)
        cases.append(Case((x,), note))
    return cases


def _real_weights(draw: Draw) -> list[Case]:
    """Two decoder weights of the course's model (SmolLM2-135M-Instruct, whose weights are a
    Q4_1 reconstruction), drawn by the seed, each in FP16, BF16, FP8 E4M3 and FP8 E5M2."""
    return [
        Case((w, fmt), f"{name}, {fmt}", shown={"w": shown})
        for name, w, shown in _course.drawn_weights(draw, 2)
        for fmt in _CAST_FORMATS
    ]


def _flushed(w: torch.Tensor, fmt: str) -> float:
    nonzero = w != 0
    back = floats.round_to_format(w, fmt)
    return int(((back == 0) & nonzero).sum()) / int(nonzero.sum())


def _changed(got: object, expected: float, case: Case) -> bool:
    w, fmt = case.args
    share = int((floats.round_to_format(w, fmt) != w).sum()) / w.numel()
    return abs(float(got) - share) <= 1e-6 * share


SPECS = [
    Spec(
        signature="memory_gb(n_params, bits)",
        title="Memory of a model",
        doc="""→ gigabytes (10⁹ bytes) to store ``n_params`` numbers of ``bits`` bits each.
        Reference: ``qlearn.floats.memory_bytes(n_params, bits) / 1e9`` (memory = parameters ×
        bytes per parameter), within 10⁻⁹ relative.""",
        inputs=settings(
            "70B and 7B parameters and random sizes up to 10¹¹ at 2 to 32 bits.",
            [(70_000_000_000, 32)] + [(7_000_000_000, b) for b in (16, 8, 4)],
            lambda rng: (rng.randrange(8, 10**11, 8), rng.choice((2, 3, 4, 5, 6, 8, 16, 32))),
            12,
        ),
        reference=lambda n_params, bits: floats.memory_bytes(n_params, bits) / 1e9,
        rtol=1e-9,
        hint="bytes = parameters × bits / 8, and 1 GB is 10^9 bytes (not 2^30).",
        passed="agrees with qlearn.floats.memory_bytes on {n} model sizes",
    ),
    Spec(
        signature="decode_fp16(code)",
        title="Decode FP16 by hand",
        doc="""→ the value of a 16-bit FP16 code, from its sign, exponent and mantissa fields.
        Reference: ``qlearn.floats.decode(code, "fp16").value`` (IEEE 754-2019 §3.4), exactly,
        sign of zero included; NaN must come back as a NaN.""",
        inputs=_fp16_codes,
        reference=lambda code: floats.decode(code, "fp16").value,
        compare=lambda got, expected, case: compare_number(got, expected, signed_zero=True),
        hint="""sign = code >> 15, exponent = (code >> 10) & 0x1F, mantissa = code & 0x3FF;
        exponent 0 is subnormal (no implicit 1, exponent 1 - 15), exponent 31 is inf or NaN.""",
        passed="""agrees with qlearn.floats.decode on {n} codes (zeros, subnormals, normals, inf
        and NaN)""",
    ),
    Spec(
        signature="format_limits(exponent_bits, mantissa_bits)",
        title="Largest and smallest",
        doc="""→ (largest finite value, smallest positive subnormal) of an IEEE-style float
        format with those fields: bias 2^(E−1) − 1, the all-ones exponent reserved for inf and
        NaN. Reference: ``qlearn.floats.FloatFormat(..., specials="ieee")``'s ``max`` and
        ``2^(min_exponent − M)``, exactly.""",
        inputs=settings(
            "FP32, FP16, BF16, FP8 E5M2 and random (E, M).",
            [(8, 23), (5, 10), (8, 7), (5, 2)],
            lambda rng: (rng.randint(2, 8), rng.randint(1, 12)),
            12,
        ),
        reference=_ieee_limits,
        compare=lambda got, expected, case: compare_fields(
            got, expected, ("largest", "smallest subnormal")
        ),
        hint="""the largest exponent field of a finite number is 2^E − 2 (2^E − 1 is inf/NaN) and
        its mantissa is all ones: (2 − 2^−M) · 2^bias; the smallest subnormal is
        2^(1 − bias − M).""",
        passed="agrees with qlearn.floats.FloatFormat on {n} formats",
    ),
    Spec(
        signature="round_to_bf16(x)",
        title="Round to BF16 with integer arithmetic",
        doc="""→ float32 ``x`` rounded to the nearest BF16 value (ties to even), as float32.
        Reference: ``qlearn.floats.round_to_format(x, "bf16")`` (IEEE 754-2019 §4.3.1), bit for
        bit.""",
        inputs=_float32_patterns,
        reference=lambda x: floats.round_to_format(x, "bf16"),
        compare=lambda got, expected, case: compare_tensor(
            got, expected, rtol=0, bits_of=case.args[0]
        ),
        hint="""BF16 is the top 16 bits of FP32. On x.view(torch.int32): add 0x7FFF plus the lowest
        kept bit ((bits >> 16) & 1), then clear the low 16 bits (& ~0xFFFF).""",
        passed="""agrees with qlearn.floats.round_to_format bit for bit (ties to even, subnormals,
        overflow to inf)""",
    ),
    Spec(
        signature="flushed_to_zero(w, fmt)",
        title="Which weights a format flushes to zero",
        doc="""→ the share of the nonzero values of ``w`` that become 0 when cast to ``fmt``
        ("fp16", "bf16", "fp8_e4m3" or "fp8_e5m2") as they are, without a scale: the ones
        below half the format's smallest subnormal. Reference: ``qlearn.floats.round_to_format(w,
        fmt)`` counted (IEEE 754-2019 §4.3.1; Micikevicius et al. 2022 for FP8), within 10⁻⁶
        relative.""",
        inputs=_real_weights,
        reference=_flushed,
        compare=lambda got, expected, case: compare_number(got, expected, rel=1e-6),
        mistakes=[
            (
                _changed,
                "that is the share of weights the cast changed; count only those that became 0",
            )
        ],
        hint="""back = floats.round_to_format(w, fmt) (or w.to(torch.float8_e4m3fn).float() and
        the like); count where back == 0 while w != 0, and divide by the number of w != 0.""",
        passed="""agrees with qlearn.floats.round_to_format on {n} casts of the course model's
        weights""",
    ),
]
