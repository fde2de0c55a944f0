"""Checks for the chapters' exercises: the learner's answer against qlearn's, on fresh inputs.

Every chapter ends with 3–5 exercises of rising difficulty. Each asks for a function (or a class)
and comes with a check, ``check_<name>(answer)``, that runs the answer on random inputs it has
not seen, compares every result with what qlearn's own implementation of the chapter returns,
and then either prints one line starting with ✓ or raises :class:`ExerciseFailed` with the input
that went wrong, what was expected and what came back. A stub that still raises
``NotImplementedError`` (what a lab copy hands out: ``make labs``) is reported as "not
implemented yet". The inputs are drawn from generators seeded by ``seed``, so a check prints
the same thing every time (the stored notebooks hold its output); pass another ``seed`` to try
your answer on other inputs.

:data:`EXERCISES` lists every check with its chapter and title, in course order. The exercises
themselves (a prompt, a cell tagged ``solution``, a cell calling the check) are in the
notebooks: notebooks/01_float_formats.ipynb to notebooks/09_capstone.ipynb.
"""

from __future__ import annotations

import math
import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from qlearn import affine, awq, bitnet, calibration, floats, gguf, gptq, int8, nf4, qat
from qlearn._checks import check_int

__all__ = [
    "EXERCISES",
    "Exercise",
    "ExerciseFailed",
    "check_absmax_codes",
    "check_absmean_ternary",
    "check_awq_scales",
    "check_best_alpha",
    "check_best_clip",
    "check_best_under_budget",
    "check_bits_from_bytes",
    "check_bits_per_weight",
    "check_clipped_absmax",
    "check_decode_fp16",
    "check_dequantize",
    "check_dequantize_q8_0",
    "check_fake_quantize_ste",
    "check_format_limits",
    "check_gptq_layer",
    "check_gptq_step",
    "check_group_absmax",
    "check_int8_matmul",
    "check_layer_error",
    "check_layer_hessian",
    "check_llm_int8_matmul",
    "check_memory_gb",
    "check_nf4_bits_per_weight",
    "check_nf4_codes",
    "check_outlier_columns",
    "check_pack_trits",
    "check_pareto_front",
    "check_quantize_q4_0",
    "check_quantize_q4_1",
    "check_quantize_q8_0",
    "check_range_observer",
    "check_round_to_bf16",
    "check_ternary_matmul",
    "check_vectorwise_quantize",
    "check_zeropoint_quantize",
    "exercises_of",
]


class ExerciseFailed(AssertionError):  # noqa: N818 (the name the course uses)
    """An exercise check found a wrong answer, or none yet. The message says on which input,
    what was expected and what came back; it is an AssertionError, so pytest reports it too."""

    def _render_traceback_(self) -> list[str]:
        """What Jupyter shows (IPython's protocol): the message, not a traceback through the
        checker; when the answer itself raised, first the frames of the answer's own code."""
        lines = []
        cause = self.__cause__
        if cause is not None:
            frames = traceback.extract_tb(cause.__traceback__)
            frames = [f for f in frames if Path(f.filename).resolve() != Path(__file__).resolve()]
            lines += traceback.format_list(frames) + traceback.format_exception_only(cause)
        lines.append(f"{type(self).__name__}: {self}")
        return "".join(lines).splitlines()


@dataclass(frozen=True)
class Exercise:
    """One exercise: the name of the answer it checks, its chapter, its title and its check."""

    name: str
    chapter: int
    title: str
    check: Callable[..., None]


# --------------------------------------------------------------------------------------------
# Chapter 01: float bit layouts (notebooks/01_float_formats.ipynb)
# --------------------------------------------------------------------------------------------


def check_memory_gb(answer: Callable[[int, int], float], *, seed: int = 0) -> None:
    """Chapter 01, exercise 1: ``memory_gb(n_params, bits)`` → gigabytes (10⁹ bytes) to store
    ``n_params`` numbers of ``bits`` bits each.

    Reference: ``qlearn.floats.memory_bytes(n_params, bits) / 1e9`` (memory = parameters ×
    bytes per parameter), within 10⁻⁹ relative. Inputs: 70B and 7B parameters and random sizes
    up to 10¹¹ at 2 to 32 bits.
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    cases = [_Case((70_000_000_000, 32), ("n_params", "bits"))]
    cases += [_Case((7_000_000_000, bits), ("n_params", "bits")) for bits in (16, 8, 4)]
    for _ in range(12):
        n_params = rng.randrange(8, 100_000_000_000, 8)  # whole bytes at any width
        cases.append(
            _Case((n_params, rng.choice((2, 3, 4, 5, 6, 8, 16, 32))), ("n_params", "bits"))
        )
    _run(
        "memory_gb",
        answer,
        cases,
        reference=lambda n_params, bits: floats.memory_bytes(n_params, bits) / 1e9,
        compare=lambda got, expected, case: _compare_number(got, expected, rel=1e-9),
        hint="bytes = parameters × bits / 8, and 1 GB is 10^9 bytes (not 2^30).",
    )
    _passed("memory_gb", f"agrees with qlearn.floats.memory_bytes on {len(cases)} model sizes")


def check_decode_fp16(answer: Callable[[int], float], *, seed: int = 0) -> None:
    """Chapter 01, exercise 2: ``decode_fp16(code)`` → the value of a 16-bit FP16 code, from
    its sign, exponent and mantissa fields.

    Reference: ``qlearn.floats.decode(code, "fp16").value`` (IEEE 754-2019 §3.4), exactly,
    sign of zero included; NaN must come back as a NaN. Inputs: zeros, subnormals, 1, the
    largest finite value, ±inf, NaN, and random codes.
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    specials = [0x0000, 0x8000, 0x3C00, 0xC500, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00]
    codes = specials + [0x7E00] + [rng.randrange(1 << 16) for _ in range(30)]
    cases = [_Case((code,), ("code",), shown={"code": f"0x{code:04x}"}) for code in codes]
    _run(
        "decode_fp16",
        answer,
        cases,
        reference=lambda code: floats.decode(code, "fp16").value,
        compare=lambda got, expected, case: _compare_number(got, expected, signed_zero=True),
        hint=(
            "sign = code >> 15, exponent = (code >> 10) & 0x1F, mantissa = code & 0x3FF; "
            "exponent 0 is subnormal (no implicit 1, exponent 1 - 15), exponent 31 is inf or NaN."
        ),
    )
    _passed(
        "decode_fp16",
        f"agrees with qlearn.floats.decode on {len(cases)} codes "
        "(zeros, subnormals, normals, inf and NaN)",
    )


def check_format_limits(
    answer: Callable[[int, int], tuple[float, float]], *, seed: int = 0
) -> None:
    """Chapter 01, exercise 3: ``format_limits(exponent_bits, mantissa_bits)`` → (largest finite
    value, smallest positive subnormal) of an IEEE-style float format with those fields.

    IEEE-style: bias 2^(E−1) − 1 and the all-ones exponent reserved for inf and NaN. Reference:
    ``qlearn.floats.FloatFormat(..., specials="ieee")``'s ``max`` and ``2^(min_exponent − M)``,
    exactly. Inputs: FP32, FP16, BF16, FP8 E5M2 and random (E, M).
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    fields = [(8, 23), (5, 10), (8, 7), (5, 2)]
    fields += [(rng.randint(2, 8), rng.randint(1, 12)) for _ in range(12)]
    cases = [_Case(f, ("exponent_bits", "mantissa_bits")) for f in fields]

    def reference(exponent_bits: int, mantissa_bits: int) -> tuple[float, float]:
        bias = 2 ** (exponent_bits - 1) - 1
        f = floats.FloatFormat("ieee-style", exponent_bits, mantissa_bits, bias, "ieee", None)
        return float(f.max), math.ldexp(1.0, f.min_exponent - f.mantissa_bits)

    _run(
        "format_limits",
        answer,
        cases,
        reference=reference,
        compare=lambda got, expected, case: _compare_parts(
            got, expected, ("largest", "smallest subnormal"), _compare_number
        ),
        hint=(
            "the largest exponent field of a finite number is 2^E − 2 (2^E − 1 is inf/NaN) and "
            "its mantissa is all ones: (2 − 2^−M) · 2^bias; the smallest subnormal is "
            "2^(1 − bias − M)."
        ),
    )
    _passed("format_limits", f"agrees with qlearn.floats.FloatFormat on {len(cases)} formats")


def check_round_to_bf16(answer: Callable[[torch.Tensor], torch.Tensor], *, seed: int = 0) -> None:
    """Chapter 01, exercise 4: ``round_to_bf16(x)`` → float32 ``x`` rounded to the nearest BF16
    value (ties to even), returned as float32.

    Reference: ``qlearn.floats.round_to_format(x, "bf16")`` (IEEE 754-2019 §4.3.1), bit for
    bit. Inputs: random float32 bit patterns (every binade, subnormals included), exact ties
    between two BF16 numbers, and FP32's largest value (which rounds up to inf).
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for size in (8, 64, 512):
        bits = torch.randint(-(2**31), 2**31, (size,), generator=g, dtype=torch.int64)
        bits = bits.to(torch.int32)
        exponent = (bits >> 23) & 0xFF
        bits = torch.where(exponent == 0xFF, bits & ~(0x80 << 23), bits)  # no inf or NaN
        cases.append(_Case((bits.view(torch.float32),), ("x",)))
    ties = torch.tensor(
        [0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x00008000, 0x00018000], dtype=torch.int64
    ).to(torch.int32)
    cases.append(_Case((ties.view(torch.float32),), ("x",), note="exact ties between two BF16"))
    biggest = torch.tensor([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF], dtype=torch.int64)
    cases.append(_Case((biggest.to(torch.int32).view(torch.float32),), ("x",), note="near max"))
    _run(
        "round_to_bf16",
        answer,
        cases,
        reference=lambda x: floats.round_to_format(x, "bf16"),
        compare=lambda got, expected, case: _compare_tensor(
            got, expected, exact=True, inputs=case.args[0], show_bits=True
        ),
        hint=(
            "BF16 is the top 16 bits of FP32. On x.view(torch.int32): add 0x7FFF plus the lowest "
            "kept bit ((bits >> 16) & 1), then clear the low 16 bits (& ~0xFFFF)."
        ),
    )
    _passed(
        "round_to_bf16",
        "agrees with qlearn.floats.round_to_format bit for bit (ties to even, subnormals, "
        "overflow to inf)",
    )


# --------------------------------------------------------------------------------------------
# Chapter 02: absmax and zero-point (notebooks/02_absmax_zeropoint.ipynb)
# --------------------------------------------------------------------------------------------


def check_dequantize(
    answer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 02, exercise 1: ``dequantize(codes, scale, zero_point)`` → scale · (codes − zero
    point), a float tensor of the codes' shape.

    Reference: ``qlearn.affine.QuantizedTensor.dequantize`` (Jacob et al. 2018, eq. 1), within
    10⁻⁶ relative. Inputs: the codes of ``qlearn.affine.zeropoint_quantize`` at 8 and 4 bits,
    per tensor and per output channel (scale and zero point of shape [rows, 1]).
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for shape, bits, axis in [
        ((16,), 8, None),
        ((4, 8), 8, 0),
        ((6, 32), 4, None),
        ((8, 64), 8, 0),
    ]:
        x = torch.randn(shape, generator=g) * 2 + 0.5
        q = affine.zeropoint_quantize(x, bits, axis=axis)
        cases.append(
            _Case(
                (q.codes, q.scale, q.zero_point),
                ("codes", "scale", "zero_point"),
                note=f"{bits}-bit, {'per tensor' if axis is None else 'per channel'}",
                extra=q,
            )
        )
    _run(
        "dequantize",
        answer,
        cases,
        reference=lambda codes, scale, zero_point: _quantized_of(cases, codes).dequantize(),
        compare=lambda got, expected, case: _compare_tensor(got, expected, rtol=1e-6),
        hint=(
            "codes and zero_point are int8: codes - zero_point overflows past 127 (200 - 256 ...)."
            " Convert to float first: (codes.float() - zero_point.float()) * scale."
        ),
    )
    _passed(
        "dequantize",
        f"agrees with qlearn.affine's QuantizedTensor.dequantize on {len(cases)} tensors",
    )


def check_absmax_codes(
    answer: Callable[[torch.Tensor, int], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 02, exercise 2: ``absmax_codes(x, bits)`` → the integer codes of symmetric
    (absmax) quantization with one scale for the whole tensor.

    scale = max|x| / (2^(b−1) − 1), codes = round(x / scale) in [−(2^(b−1) − 1), 2^(b−1) − 1].
    Reference: ``qlearn.affine.absmax_quantize(x, bits).codes`` (Dettmers et al. 2022, §2),
    exactly; a code may differ by one only where x / scale is within 10⁻⁴ of a tie (x.5), where
    float rounding decides. Inputs: normal, uniform and outlier-laden tensors at 2 to 8 bits.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for shape, bits, kind in [
        ((12,), 8, "normal"),
        ((4, 16), 4, "uniform"),
        ((256,), 8, "outlier"),
        ((8, 32), 2, "normal"),
        ((3, 100), 6, "outlier"),
    ]:
        cases.append(_Case((_sample(shape, kind, g), bits), ("x", "bits"), note=kind))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        x, bits = case.args
        return _compare_codes(got, expected, x.double() * (2 ** (bits - 1) - 1) / x.abs().max())

    _run(
        "absmax_codes",
        answer,
        cases,
        reference=lambda x, bits: affine.absmax_quantize(x, bits).codes,
        compare=compare,
        hint="scale = x.abs().max() / (2**(bits - 1) - 1); codes = torch.round(x / scale).",
    )
    _passed("absmax_codes", f"agrees with qlearn.affine.absmax_quantize on {len(cases)} tensors")


def check_zeropoint_quantize(
    answer: Callable[[torch.Tensor, int], tuple[torch.Tensor, Any, Any]], *, seed: int = 0
) -> None:
    """Chapter 02, exercise 3: ``zeropoint_quantize(x, bits)`` → (codes, scale, zero_point) of
    asymmetric quantization with one scale for the whole tensor.

    The range is [min(x, 0), max(x, 0)] (stretched to hold 0), scale = range / (2^b − 1),
    zero_point = −2^(b−1) − round(min / scale), codes = clamp(round(x / scale) + zero_point,
    −2^(b−1), 2^(b−1) − 1). Reference: ``qlearn.affine.zeropoint_quantize(x, bits)`` (Jacob et
    al. 2018, eq. 1–2): scale within 10⁻⁶ relative, zero point exact, codes exact but for
    ties. Inputs: mixed-sign, all-positive and all-negative tensors at 2 to 8 bits.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for shape, bits, kind in [
        ((10,), 8, "normal"),
        ((4, 16), 8, "positive"),
        ((64,), 4, "skewed"),
        ((5, 20), 3, "negative"),
        ((256,), 8, "outlier"),
    ]:
        cases.append(_Case((_sample(shape, kind, g), bits), ("x", "bits"), note=kind))

    def reference(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, float, int]:
        q = affine.zeropoint_quantize(x, bits)
        return q.codes, float(q.scale), int(q.zero_point)

    def compare(got: Any, expected: tuple, case: _Case) -> str | None:
        x, _ = case.args
        parts = _as_parts(got, 3, ("codes", "scale", "zero_point"))
        if isinstance(parts, str):
            return parts
        codes, scale, zero_point = parts
        for label, value, want in (
            ("scale", scale, expected[1]),
            ("zero_point", zero_point, expected[2]),
        ):
            problem = _compare_number(_scalar(value), want, rel=1e-6)
            if problem:
                return f"{label}: {problem}"
        real = x.double() / expected[1] + expected[2]
        problem = _compare_codes(codes, expected[0], real)
        return f"codes: {problem}" if problem else None

    _run(
        "zeropoint_quantize",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "lo = min(x.min(), 0), hi = max(x.max(), 0): the range must hold 0 even when every "
            "value is positive; scale = (hi - lo) / (2**bits - 1)."
        ),
    )
    _passed(
        "zeropoint_quantize",
        f"agrees with qlearn.affine.zeropoint_quantize on {len(cases)} tensors (codes, scale, "
        "zero point)",
    )


def check_group_absmax(
    answer: Callable[[torch.Tensor, int, int], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 02, exercise 4: ``group_absmax(w, bits, group_size)`` → ``w`` quantized with one
    absmax scale per group of ``group_size`` consecutive values along each row, and dequantized.

    Reference: ``qlearn.affine.fake_quantize(w, "absmax", bits=bits, group_size=group_size)``
    (granularity: Nagel et al. 2021, §2.3), within 10⁻⁶ relative; a value may be one step off
    only at a tie. Inputs: weights of shape [rows, columns] with rows of very different scales.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for rows, columns, bits, group_size in [
        (2, 8, 8, 4),
        (4, 64, 4, 16),
        (8, 128, 4, 32),
        (3, 96, 3, 48),
    ]:
        w = torch.randn(rows, columns, generator=g) * torch.logspace(-2, 0, rows).unsqueeze(1)
        cases.append(_Case((w, bits, group_size), ("w", "bits", "group_size")))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        w, bits, group_size = case.args
        groups = w.reshape(w.shape[0], -1, group_size)
        step = (groups.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)).expand_as(groups)
        return _compare_tensor(
            got, expected, rtol=1e-6, ties=(w / step.reshape(w.shape), step.reshape(w.shape))
        )

    _run(
        "group_absmax",
        answer,
        cases,
        reference=lambda w, bits, group_size: affine.fake_quantize(
            w, "absmax", bits=bits, group_size=group_size
        ),
        compare=compare,
        hint=(
            "view w as [rows, columns // group_size, group_size], take the absmax over the last "
            "dimension (keepdim=True), quantize and dequantize, then reshape back."
        ),
    )
    _passed("group_absmax", f"agrees with qlearn.affine.fake_quantize on {len(cases)} weights")


# --------------------------------------------------------------------------------------------
# Chapter 03: granularity, clipping, calibration (notebooks/03_granularity_calibration.ipynb)
# --------------------------------------------------------------------------------------------


def check_bits_per_weight(answer: Callable[[int, int, bool], float], *, seed: int = 0) -> None:
    """Chapter 03, exercise 1: ``bits_per_weight(bits, group_size, zero_point)`` → storage bits
    per weight with one FP16 scale per group and, if ``zero_point``, one ``bits``-bit zero point.

    Reference: ``QuantizedTensor.bits_per_weight()`` of a tensor really quantized by
    ``qlearn.affine`` at that group size (Nagel et al. 2021, §2.3), within 10⁻⁹.
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    settings = [(4, 128, False), (4, 128, True), (8, 32, False)]
    settings += [
        (rng.randint(2, 8), rng.choice((16, 32, 64, 128, 256)), rng.random() < 0.5)
        for _ in range(9)
    ]
    cases = [_Case(s, ("bits", "group_size", "zero_point")) for s in settings]

    def reference(bits: int, group_size: int, zero_point: bool) -> float:
        w = torch.randn(2, 2 * group_size, generator=_generator(seed))
        quantize = affine.zeropoint_quantize if zero_point else affine.absmax_quantize
        return quantize(w, bits, group_size=group_size).bits_per_weight(scale_bits=16)

    _run(
        "bits_per_weight",
        answer,
        cases,
        reference=reference,
        compare=lambda got, expected, case: _compare_number(got, expected, rel=1e-9),
        hint="each group of group_size weights adds 16 bits of scale (and `bits` of zero point).",
    )
    _passed(
        "bits_per_weight",
        f"agrees with QuantizedTensor.bits_per_weight on {len(cases)} settings",
    )


def check_clipped_absmax(
    answer: Callable[[torch.Tensor, float, int], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 03, exercise 2: ``clipped_absmax(x, clip, bits)`` → ``x`` quantized with absmax
    codes over the range [−clip, clip] (values beyond it land on the end codes), dequantized.

    Reference: ``qlearn.calibration.clip_quantize(x, -clip, clip, bits=bits).dequantize()``
    (Wu et al. 2020, §3.4), within 10⁻⁶ relative; one step off only at a tie. Inputs: normal
    values with outliers, clipped inside and outside their range, at 4 and 8 bits.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for size, clip, bits in [
        (10, 1.5, 8),
        (200, 5.0, 8),
        (200, 3.0, 4),
        (64, 40.0, 8),
        (500, 0.5, 4),
    ]:
        cases.append(_Case((_sample((size,), "outlier", g), clip, bits), ("x", "clip", "bits")))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        x, clip, bits = case.args
        step = torch.full_like(x, clip / (2 ** (bits - 1) - 1))
        return _compare_tensor(got, expected, rtol=1e-6, atol=1e-7 * clip, ties=(x / step, step))

    _run(
        "clipped_absmax",
        answer,
        cases,
        reference=lambda x, clip, bits: calibration.clip_quantize(
            x, -clip, clip, bits=bits
        ).dequantize(),
        compare=compare,
        hint=(
            "scale = clip / (2**(bits - 1) - 1); clamp the *codes* round(x / scale) to "
            "[-(2**(bits - 1) - 1), 2**(bits - 1) - 1], then multiply back by scale."
        ),
    )
    _passed(
        "clipped_absmax", f"agrees with qlearn.calibration.clip_quantize on {len(cases)} tensors"
    )


def check_range_observer(answer: type, *, seed: int = 0) -> None:
    """Chapter 03, exercise 3: ``RangeObserver``, a class with ``observe(x)`` (called once per
    calibration batch) and ``range()`` → (smallest, largest) value of everything observed.

    Reference: ``qlearn.calibration.MinMaxObserver`` fed the same batches (its ``min`` and
    ``max``; Nagel et al. 2021, §3.1), exactly. Each input is a sequence of batches of
    different shapes; a fresh observer is made for each.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for n_batches in (1, 3, 6):
        batches = [
            _sample((int(torch.randint(1, 5, (1,), generator=g)), 8), "outlier", g) * (i + 1)
            for i in range(n_batches)
        ]
        cases.append(_Case((batches,), ("batches",), note=f"{n_batches} batches"))

    def reference(batches: list[torch.Tensor]) -> tuple[float, float]:
        observer = calibration.MinMaxObserver()
        for batch in batches:
            observer.observe(batch)
        return observer.min, observer.max

    def run_observer(cls: type, batches: list[torch.Tensor]) -> Any:
        observer = cls()
        for batch in batches:
            observer.observe(batch)
        return observer.range()

    _run(
        "RangeObserver",
        answer,
        cases,
        reference=reference,
        compare=lambda got, expected, case: _compare_parts(
            got, expected, ("smallest", "largest"), _compare_number
        ),
        hint="keep a running min and max across calls: start from +inf and -inf.",
        call=run_observer,
    )
    _passed(
        "RangeObserver",
        f"agrees with qlearn.calibration.MinMaxObserver on {len(cases)} calibration runs",
    )


def check_best_clip(
    answer: Callable[[torch.Tensor, int, Sequence[float]], float], *, seed: int = 0
) -> None:
    """Chapter 03, exercise 4: ``best_clip(x, bits, candidates)`` → the candidate clip value c
    whose symmetric range [−c, c] gives the smallest total squared error Σ(x − x̂)².

    Reference: every candidate quantized with ``qlearn.calibration.clip_quantize`` and its
    error summed in float64 (the MSE criterion of Wu et al. 2020, §3.4); an answer whose error
    is within 10⁻⁹ relative of the smallest is right too. Inputs: normal values with outliers,
    20 to 60 candidates each.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for size, bits, n in [(100, 8, 20), (1000, 4, 40), (1000, 8, 60), (300, 3, 30)]:
        x = _sample((size,), "outlier", g)
        top = float(x.abs().max())
        candidates = [round(c, 4) for c in torch.linspace(top / n, top, n).tolist()]
        cases.append(_Case((x, bits, candidates), ("x", "bits", "candidates")))

    def errors(x: torch.Tensor, bits: int, candidates: Sequence[float]) -> list[float]:
        return [
            float(
                (x.double() - calibration.clip_quantize(x, -c, c, bits=bits).dequantize())
                .square()
                .sum()
            )
            for c in candidates
        ]

    def reference(x: torch.Tensor, bits: int, candidates: Sequence[float]) -> float:
        e = errors(x, bits, candidates)
        return candidates[min(range(len(e)), key=e.__getitem__)]

    def compare(got: Any, expected: float, case: _Case) -> str | None:
        x, bits, candidates = case.args
        value = _scalar(got)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected one of the candidates (a number), got {_show(got)}"
        index = min(range(len(candidates)), key=lambda i: abs(candidates[i] - value))
        if abs(candidates[index] - value) > 1e-6 * abs(candidates[index]):
            return f"expected one of the candidates (the best is {expected!r}), got {value!r}"
        e = errors(x, bits, candidates)
        best, mine, value = min(e), e[index], candidates[index]
        if mine > best * (1 + 1e-9):
            return (
                f"clip {value!r} gives a squared error of {mine:.6g}; clip {expected!r} gives "
                f"{best:.6g}"
            )
        return None

    _run(
        "best_clip",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "for each candidate c, quantize over [-c, c] (exercise 2), sum (x - x_hat)**2, and "
            "return the c with the smallest sum."
        ),
    )
    _passed("best_clip", f"finds the smallest-error clip on all {len(cases)} tensors")


# --------------------------------------------------------------------------------------------
# Chapter 04: outlier features and LLM.int8() (notebooks/04_llm_int8.ipynb)
# --------------------------------------------------------------------------------------------


def check_outlier_columns(
    answer: Callable[[torch.Tensor, float], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 04, exercise 1: ``outlier_columns(X, threshold)`` → the indices (ascending) of
    the columns of ``X`` [tokens, features] holding any value with |x| ≥ threshold.

    Reference: ``qlearn.int8.outlier_columns`` (Dettmers et al. 2022, §3.2); a boolean mask
    over the columns is accepted too. Inputs: activations with systematic outlier columns, an
    isolated outlier, negative outliers, none at all, and a value exactly at the threshold.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for tokens, features, threshold in [(4, 6, 6.0), (16, 64, 6.0), (8, 32, 3.0), (5, 10, 100.0)]:
        cases.append(_Case((_activations(tokens, features, g), threshold), ("X", "threshold")))
    at_threshold = torch.randn(6, 16, generator=g).clamp(-3, 3)
    at_threshold[2, 7] = -5.0
    cases.append(_Case((at_threshold, 5.0), ("X", "threshold"), note="|x| exactly at threshold"))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        X, _ = case.args
        got = _as_tensor(got)
        if isinstance(got, str):
            return got
        if got.dtype == torch.bool and got.shape == (X.shape[-1],):
            got = torch.argwhere(got).view(-1)
        if got.numel() == 0:  # an empty list has no integer dtype to show
            got = got.long()
        if got.is_floating_point() or got.dtype == torch.bool:
            return f"expected integer column indices, got {_show(got)}"
        if got.flatten().tolist() != expected.tolist():
            return f"expected columns {expected.tolist()}, got {got.flatten().tolist()}"
        return None

    _run(
        "outlier_columns",
        answer,
        cases,
        reference=lambda X, threshold: int8.outlier_columns(X, threshold=threshold),
        compare=compare,
        hint="(X.abs() >= threshold).any(dim=0) marks the columns; .nonzero() lists them.",
    )
    _passed("outlier_columns", f"agrees with qlearn.int8.outlier_columns on {len(cases)} inputs")


def check_vectorwise_quantize(
    answer: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], *, seed: int = 0
) -> None:
    """Chapter 04, exercise 2: ``vectorwise_quantize(X)`` → (codes, row_absmax): absmax int8
    per row, codes = round(x · 127 / max|row|).

    Reference: ``qlearn.int8.vectorwise_quantize(X)`` (Dettmers et al. 2022, eq. 1 and §3.1):
    row_absmax exactly, codes exactly but for ties. Inputs: activations with outliers, one
    with a row of zeros (its codes are 0).
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = [_Case((_activations(t, f, g),), ("X",)) for t, f in [(4, 8), (16, 64), (3, 128)]]
    zero_row = _activations(4, 16, g)
    zero_row[2] = 0
    cases.append(_Case((zero_row,), ("X",), note="row 2 is all zeros"))

    def reference(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = int8.vectorwise_quantize(X)
        return q.codes, q.row_absmax

    def compare(got: Any, expected: tuple, case: _Case) -> str | None:
        (X,) = case.args
        parts = _as_parts(got, 2, ("codes", "row_absmax"))
        if isinstance(parts, str):
            return parts
        codes, row_absmax = parts
        problem = _compare_tensor(_flat_rows(row_absmax), expected[1], rtol=0)
        if problem:
            return f"row_absmax: {problem}"
        real = X.double() * 127 / expected[1].double().clamp(min=1e-30).unsqueeze(-1)
        problem = _compare_codes(codes, expected[0], real)
        return f"codes: {problem}" if problem else None

    _run(
        "vectorwise_quantize",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "row_absmax = X.abs().amax(dim=1); codes = torch.round(X * 127 / row_absmax[:, None])"
            "; a row of zeros must give codes 0, not NaN."
        ),
    )
    _passed(
        "vectorwise_quantize",
        f"agrees with qlearn.int8.vectorwise_quantize on {len(cases)} inputs",
    )


def check_int8_matmul(
    answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 04, exercise 3: ``int8_matmul(X, W)`` → X Wᵀ computed in int8: X absmax per row
    (token), W absmax per row (output channel), an integer matmul of the codes, scaled back by
    c_x ⊗ c_w / 127².

    Reference: ``qlearn.int8.w8a8_matmul(X, W, granularity="vector")`` (Dettmers et al. 2022,
    eq. 6), within 10⁻⁴ of the largest output. Inputs: activations with outliers, weights
    N(0, 0.1²).
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for tokens, features, out in [(4, 8, 3), (16, 64, 32), (8, 256, 16)]:
        W = torch.randn(out, features, generator=g) * 0.1
        cases.append(_Case((_activations(tokens, features, g), W), ("X", "W")))
    _run(
        "int8_matmul",
        answer,
        cases,
        reference=lambda X, W: int8.w8a8_matmul(X, W, granularity="vector"),
        compare=_matmul_compare,
        hint=(
            "codes of X per row and of W per row (exercise 2), (Xq @ Wq.T) in integers "
            "(int32, or float64), then * c_x[:, None] * c_w[None, :] / 127**2."
        ),
    )
    _passed("int8_matmul", f"agrees with qlearn.int8.w8a8_matmul on {len(cases)} products")


def check_llm_int8_matmul(
    answer: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 04, exercise 4: ``llm_int8_matmul(X, W, threshold)`` → X Wᵀ by LLM.int8()'s
    mixed-precision decomposition, as section 3 of the chapter does it step by step.

    1. outlier columns O: any |x| ≥ threshold; 2. the outlier *values* of X set to 0, codes per
    row from what is left, codes of the columns O set to 0; W per row; int8 product scaled
    back; 3. X[:, O] times the dequantized int8 weight (codes · c_w / 127)[:, O], in float;
    4. the sum. Reference: ``qlearn.int8.llm_int8_matmul`` (Dettmers et al. 2022, eq. 6–7),
    within 10⁻⁴ of the largest output. Inputs: activations with and without outlier columns.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for tokens, features, out, threshold in [
        (4, 8, 3, 6.0),
        (16, 64, 32, 6.0),
        (8, 128, 16, 4.0),
        (6, 32, 8, 100.0),
    ]:
        W = torch.randn(out, features, generator=g) * 0.1
        cases.append(
            _Case((_activations(tokens, features, g), W, threshold), ("X", "W", "threshold"))
        )
    _run(
        "llm_int8_matmul",
        answer,
        cases,
        reference=lambda X, W, threshold: int8.llm_int8_matmul(X, W, threshold=threshold),
        compare=_matmul_compare,
        hint=(
            "follow section 3 of the chapter: zero the outlier values before the row absmax, "
            "set the codes of the outlier columns to 0, and multiply X[:, O] by the *dequantized* "
            "int8 weight of those columns."
        ),
    )
    _passed("llm_int8_matmul", f"agrees with qlearn.int8.llm_int8_matmul on {len(cases)} products")


# --------------------------------------------------------------------------------------------
# Chapter 05: GPTQ (notebooks/05_gptq.ipynb)
# --------------------------------------------------------------------------------------------


def check_layer_hessian(answer: Callable[[torch.Tensor], torch.Tensor], *, seed: int = 0) -> None:
    """Chapter 05, exercise 1: ``layer_hessian(X)`` → the layer Hessian H = 2/N · Σ x xᵀ of the
    inputs ``X`` [..., in_features] a linear layer receives (every leading index is a token).

    Reference: ``qlearn.gptq.HessianAccumulator`` fed ``X`` in one batch (Frantar et al. 2023,
    §3: H = 2XXᵀ, divided by the N tokens), in float64, within 10⁻⁵ of its largest entry.
    Inputs: [tokens, in] matrices and one [batch, sequence, in] tensor, float32.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for shape in [(4, 3), (32, 8), (64, 24), (2, 16, 12)]:
        X = torch.randn(shape, generator=g) * torch.logspace(-1, 0.5, shape[-1])
        cases.append(_Case((X,), ("X",)))

    def reference(X: torch.Tensor) -> torch.Tensor:
        accumulator = gptq.HessianAccumulator(X.shape[-1], dtype=torch.float64)
        accumulator.add_batch(X.double())
        return accumulator.hessian

    _run(
        "layer_hessian",
        answer,
        cases,
        reference=reference,
        compare=lambda got, expected, case: _compare_tensor(
            got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
        ),
        hint=(
            "flatten the tokens first: X2 = X.reshape(-1, X.shape[-1]) is [N, in]; then "
            "H = 2 / N * X2.T @ X2, which is [in, in]."
        ),
    )
    _passed(
        "layer_hessian",
        f"agrees with qlearn.gptq.HessianAccumulator on {len(cases)} batches of inputs",
    )


def check_layer_error(
    answer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float], *, seed: int = 0
) -> None:
    """Chapter 05, exercise 2: ``layer_error(W, W_hat, H)`` → ½ tr(Δ H Δᵀ) with Δ = W − Ŵ: the
    layer's output error per token, ‖WX − ŴX‖² / N, read from the Hessian alone.

    Reference: ``qlearn.gptq.layer_error`` (Frantar et al. 2023, eq. 1), within 10⁻⁵ relative.
    Inputs: random layers quantized by ``qlearn.gptq.rtn_quantize`` at 2 to 8 bits, with the
    Hessian of random inputs.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for rows, columns, bits in [(2, 3, 2), (8, 16, 4), (16, 32, 3), (4, 64, 8)]:
        W = torch.randn(rows, columns, generator=g)
        X = torch.randn(4 * columns, columns, generator=g) * torch.logspace(-1, 0.5, columns)
        H = 2 * X.T @ X / X.shape[0]
        W_hat = gptq.rtn_quantize(W, bits=bits).weight
        cases.append(_Case((W, W_hat, H), ("W", "W_hat", "H"), note=f"RTN {bits}-bit"))
    _run(
        "layer_error",
        answer,
        cases,
        reference=lambda W, W_hat, H: gptq.layer_error(W, W_hat, H),
        compare=lambda got, expected, case: _compare_number(got, expected, rel=1e-5),
        hint=(
            "delta = W - W_hat is [out, in]; each row r costs ½ δ_r H δ_rᵀ: "
            "0.5 * (delta @ H * delta).sum() — or 0.5 * torch.trace(delta @ H @ delta.T)."
        ),
    )
    _passed("layer_error", f"agrees with qlearn.gptq.layer_error on {len(cases)} layers")


def check_gptq_step(
    answer: Callable[..., torch.Tensor],
    *,
    seed: int = 0,
) -> None:
    """Chapter 05, exercise 3: ``gptq_step(W, Hinv, scale, zero, bits)`` → ``W`` after one GPTQ
    step: column 0 quantized on each row's grid, the other columns moved to cancel its error.

    Column 0: q = clamp(round(w / scale) + zero, 0, 2^bits − 1), ŵ = scale · (q − zero) (scale
    and zero: one per row, [rows]); then, with Hinv = H⁻¹ of the columns still to do,
    W[:, 1:] −= ((w − ŵ) / Hinv[0, 0]) ⊗ Hinv[0, 1:]. Reference: that optimal brain surgeon
    update (Frantar et al. 2023, eq. 2) with ``qlearn.gptq``'s quantizer, in float64, within
    10⁻⁹ relative. Inputs: float64 layers, scale and zero from ``qlearn.gptq.rtn_quantize``.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for rows, columns, bits in [(1, 3, 2), (4, 6, 3), (8, 16, 4), (16, 32, 2)]:
        W = torch.randn(rows, columns, generator=g, dtype=torch.float64)
        X = torch.randn(3 * columns, columns, generator=g, dtype=torch.float64)
        X[:, 1] = X[:, 0] + 0.3 * X[:, 1]  # inputs 0 and 1 move together: a large update
        Hinv = torch.linalg.inv(2 * X.T @ X / X.shape[0])
        rtn = gptq.rtn_quantize(W, bits=bits)
        scale, zero = rtn.scale.view(-1), rtn.zero.view(-1).double()
        cases.append(
            _Case(
                (W, Hinv, scale, zero, bits),
                ("W", "Hinv", "scale", "zero", "bits"),
                note=f"{bits}-bit",
            )
        )

    def reference(
        W: torch.Tensor, Hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
    ) -> torch.Tensor:
        out = W.clone()
        codes = gptq._codes(W[:, 0], scale, zero, 2**bits - 1)
        out[:, 0] = scale * (codes - zero)
        err = (W[:, 0] - out[:, 0]) / Hinv[0, 0]
        out[:, 1:] -= torch.outer(err, Hinv[0, 1:])
        return out

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        problem = _compare_tensor(got, expected, rtol=1e-9, atol=1e-12)
        if problem and isinstance(got, torch.Tensor) and got.shape == expected.shape:
            W = case.args[0]
            if torch.allclose(got[:, 1:].double(), W[:, 1:]):
                problem += " — the other columns did not move: the update is missing"
            elif not torch.allclose(got[:, 0].double(), expected[:, 0]):
                problem += " — column 0 is not on the row's grid point nearest to it"
        return problem

    _run(
        "gptq_step",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "w = W[:, 0]; w_hat = scale * (torch.clamp(torch.round(w / scale) + zero, 0, "
            "2**bits - 1) - zero); err = (w - w_hat) / Hinv[0, 0]; then "
            "W[:, 1:] -= torch.outer(err, Hinv[0, 1:]) on a copy of W, with W[:, 0] = w_hat."
        ),
    )
    _passed("gptq_step", f"agrees with the OBS update of GPTQ's eq. 2 on {len(cases)} layers")


def check_gptq_layer(
    answer: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 05, exercise 4: ``gptq_layer(W, H, bits)`` → Ŵ, the whole layer quantized by
    GPTQ column after column in their natural order, without damping.

    Each row's grid (scale, zero) is fitted on the original W, as ``qlearn.gptq.rtn_quantize``
    does; after each column, the update of exercise 3, then that column leaves H⁻¹ (eq. 3:
    Hinv ← Hinv[1:, 1:] − Hinv[1:, 0] ⊗ Hinv[0, 1:] / Hinv[0, 0]). Reference:
    ``qlearn.gptq.gptq_quantize(W, H, bits=bits, percdamp=0).weight`` (Frantar et al. 2023,
    Algorithm 1, which reads the same rows from a Cholesky factor), in float64, within 10⁻⁷
    of the largest weight. Inputs: float64 layers of up to 16 × 24 and the Hessians of random
    inputs, some of them strongly correlated.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for rows, columns, bits in [(1, 3, 2), (4, 8, 3), (8, 16, 4), (16, 24, 2)]:
        W = torch.randn(rows, columns, generator=g, dtype=torch.float64)
        X = torch.randn(4 * columns, columns, generator=g, dtype=torch.float64)
        X[:, 1::2] = X[:, 0::2][:, : X[:, 1::2].shape[1]] + 0.2 * X[:, 1::2]  # correlated pairs
        cases.append(_Case((W, 2 * X.T @ X / X.shape[0], bits), ("W", "H", "bits")))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        W, _, bits = case.args
        problem = _compare_tensor(got, expected, rtol=1e-7, atol=1e-7 * float(W.abs().max()))
        rtn = gptq.rtn_quantize(W, bits=bits).weight
        if problem and isinstance(got, torch.Tensor) and torch.allclose(got.double(), rtn):
            problem += " — this is round-to-nearest: the updates of the later columns are missing"
        return problem

    _run(
        "gptq_layer",
        answer,
        cases,
        reference=lambda W, H, bits: gptq.gptq_quantize(W, H, bits=bits, percdamp=0.0).weight,
        compare=compare,
        hint=(
            "q = gptq.rtn_quantize(W, bits=bits) gives scale and zero; Hinv = "
            "torch.linalg.inv(H); for each column j: W[:, j:] = gptq_step(W[:, j:], Hinv, ...), "
            "then Hinv = Hinv[1:, 1:] - torch.outer(Hinv[1:, 0], Hinv[0, 1:]) / Hinv[0, 0]."
        ),
    )
    _passed("gptq_layer", f"agrees with qlearn.gptq.gptq_quantize on {len(cases)} layers")


# --------------------------------------------------------------------------------------------
# Chapter 06: GGUF blocks (notebooks/06_gguf.ipynb)
# --------------------------------------------------------------------------------------------


def check_dequantize_q8_0(answer: Callable[[np.ndarray], Any], *, seed: int = 0) -> None:
    """Chapter 06, exercise 1: ``dequantize_q8_0(raw)`` → the 32 float32 values of one Q8_0
    block of 34 bytes (an fp16 scale d, then 32 int8 codes q; value = d · q).

    Reference: ``qlearn.gguf.dequantize(raw, "Q8_0")`` (gguf-py's, llama.cpp's
    ``block_q8_0``), exactly. Inputs: the bytes of random blocks of very different sizes, one
    of them all zeros. A numpy array or a torch tensor is accepted.
    """
    __tracebackhide__ = True
    rng = np.random.default_rng(_seed(seed))
    cases = []
    for spread in (1.0, 0.01, 300.0, 0.0):
        x = (rng.standard_normal(32) * spread).astype(np.float32)
        raw = gguf.quantize(x, "Q8_0")
        cases.append(_Case((raw,), ("raw",), shown={"raw": _show_bytes(raw)}))
    _run(
        "dequantize_q8_0",
        answer,
        cases,
        reference=lambda raw: torch.from_numpy(gguf.dequantize(raw, "Q8_0")),
        compare=lambda got, expected, case: _compare_tensor(got, expected, exact=True),
        hint=(
            "d = raw[:2].view(np.float16) as float32, q = raw[2:].view(np.int8) (the codes are "
            "signed: 0xff is -1, not 255); values = d * q."
        ),
    )
    _passed("dequantize_q8_0", f"agrees with qlearn.gguf.dequantize on {len(cases)} blocks")


def check_quantize_q8_0(answer: Callable[[np.ndarray], Any], *, seed: int = 0) -> None:
    """Chapter 06, exercise 2: ``quantize_q8_0(x)`` → the 34 bytes of the Q8_0 block of 32
    float32 values: d = max|x| / 127 as fp16, then q = roundf(x · (1/d)) as int8.

    d and 1/d are float32 (0 for a block of zeros); roundf rounds halves away from zero (C's
    ``roundf``, not numpy's half-to-even ``round``). Reference: ``qlearn.gguf.quantize(x,
    "Q8_0")`` (gguf-py's bytes, equal to llama.cpp's), byte for byte. Inputs: random blocks,
    one all zeros, one whose values are exact halves of its step.
    """
    __tracebackhide__ = True
    rng = np.random.default_rng(_seed(seed))
    blocks = [(rng.standard_normal(32) * s).astype(np.float32) for s in (1.0, 0.02, 50.0)]
    blocks.append(np.zeros(32, np.float32))
    halves = np.arange(32, dtype=np.float32) - 15.5  # d = 127 / 127 = 1: values k + 0.5
    halves[0] = 127.0
    blocks.append(halves)
    notes = ["", "", "", "all zeros", "exact halves of the step"]
    cases = [_Case((x,), ("x",), note=n) for x, n in zip(blocks, notes, strict=True)]
    _run(
        "quantize_q8_0",
        answer,
        cases,
        reference=lambda x: gguf.quantize(x, "Q8_0"),
        compare=lambda got, expected, case: _compare_bytes(got, expected, "Q8_0"),
        hint=(
            "d = np.abs(x).max() / 127 (float32); q = x * (1 / d) rounded half away from zero: "
            "np.sign(v) * np.floor(np.abs(v) + 0.5); bytes = d as np.float16 .view(np.uint8), "
            "then q.astype(np.int8).view(np.uint8)."
        ),
    )
    _passed("quantize_q8_0", f"gives qlearn.gguf.quantize's bytes on {len(cases)} blocks")


def check_quantize_q4_0(answer: Callable[[np.ndarray], Any], *, seed: int = 0) -> None:
    """Chapter 06, exercise 3: ``quantize_q4_0(x)`` → the 18 bytes of the Q4_0 block of 32
    float32 values.

    m = the value of largest magnitude (the first such, with its sign), d = m / −8 (float32),
    q = min(15, trunc(x · (1/d) + 8.5)); bytes: d as fp16, then 16 bytes, byte j holding q[j]
    in its low nibble and q[j + 16] in its high one. Reference: ``qlearn.gguf.quantize(x,
    "Q4_0")`` (gguf-py's bytes, llama.cpp's ``block_q4_0``), byte for byte. Inputs: random
    blocks whose largest magnitude is positive or negative, and one of zeros.
    """
    __tracebackhide__ = True
    rng = np.random.default_rng(_seed(seed))
    cases = []
    for spread, sign in [(1.0, 1), (0.05, -1), (20.0, 1), (1.0, -1), (0.0, 1)]:
        x = (rng.standard_normal(32) * spread).astype(np.float32)
        k = int(np.abs(x).argmax())
        x[k] = sign * abs(x[k]) * 1.5
        note = (
            "all zeros"
            if spread == 0
            else f"largest magnitude {'positive' if sign > 0 else 'negative'}"
        )
        cases.append(_Case((x,), ("x",), note=note))
    _run(
        "quantize_q4_0",
        answer,
        cases,
        reference=lambda x: gguf.quantize(x, "Q4_0"),
        compare=lambda got, expected, case: _compare_bytes(got, expected, "Q4_0"),
        hint=(
            "m = x[np.abs(x).argmax()] keeps its sign; d = m / -8; q = np.minimum(15, "
            "np.trunc(x * (1 / d) + 8.5)).astype(np.uint8); the codes are packed q[:16] | "
            "(q[16:] << 4) — the first half in the low nibbles, not neighbours in one byte."
        ),
    )
    _passed("quantize_q4_0", f"gives qlearn.gguf.quantize's bytes on {len(cases)} blocks")


def check_quantize_q4_1(answer: Callable[[np.ndarray], Any], *, seed: int = 0) -> None:
    """Chapter 06, exercise 4: ``quantize_q4_1(x)`` → the 20 bytes of the Q4_1 block of 32
    float32 values.

    d = (max − min) / 15, m = min (float32), q = min(15, trunc((x − m) · (1/d) + 0.5)) (1/d = 0
    for a constant block); bytes: d and m as fp16, then the codes packed as in Q4_0.
    Reference: ``qlearn.gguf.quantize(x, "Q4_1")`` (gguf-py's bytes, llama.cpp's
    ``block_q4_1``), byte for byte. Inputs: random blocks, an all-positive one, a constant one.
    """
    __tracebackhide__ = True
    rng = np.random.default_rng(_seed(seed))
    blocks = [(rng.standard_normal(32) * s).astype(np.float32) for s in (1.0, 0.03, 8.0)]
    blocks.append((rng.random(32) * 2 + 1).astype(np.float32))
    blocks.append(np.full(32, 0.75, np.float32))
    notes = ["", "", "", "all positive", "constant"]
    cases = [_Case((x,), ("x",), note=n) for x, n in zip(blocks, notes, strict=True)]
    _run(
        "quantize_q4_1",
        answer,
        cases,
        reference=lambda x: gguf.quantize(x, "Q4_1"),
        compare=lambda got, expected, case: _compare_bytes(got, expected, "Q4_1"),
        hint=(
            "lo, hi = x.min(), x.max(); d = (hi - lo) / 15; q = np.minimum(15, np.trunc((x - lo) "
            "* (1 / d) + 0.5)); bytes: d, then lo, as fp16, then q[:16] | (q[16:] << 4)."
        ),
    )
    _passed("quantize_q4_1", f"gives qlearn.gguf.quantize's bytes on {len(cases)} blocks")


# --------------------------------------------------------------------------------------------
# Chapter 07: QAT and BitNet b1.58 (notebooks/07_qat_bitnet.ipynb)
# --------------------------------------------------------------------------------------------


def check_fake_quantize_ste(
    answer: Callable[[torch.Tensor, int, float], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 07, exercise 1: ``fake_quantize_ste(x, bits, scale)`` → x rounded to the grid
    scale · q, q = clamp(round(x / scale), −2^(b−1), 2^(b−1) − 1), with the straight-through
    estimator as its gradient: 1 where round(x / scale) is inside the code range, 0 where it
    was clipped.

    The check calls ``fake_quantize_ste(x, bits, scale).sum().backward()`` on an ``x`` that
    requires grad, and compares the values and ``x.grad``. Reference: ``qlearn.qat.
    fake_quantize`` and ``qlearn.qat.straight_through_mask`` (Bengio et al. 2013; Nagel et al.
    2021, §4.1): values within 10⁻⁶ relative, the gradient exactly. Inputs: float32 tensors at
    2, 4 and 8 bits, with scales that clip some values.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for shape, bits, clip in [
        ((12,), 4, 0.6),
        ((4, 16), 2, 0.8),
        ((256,), 8, 0.5),
        ((8, 8), 4, 1.0),
    ]:
        x = torch.randn(shape, generator=g) * 2
        scale = round(float(x.abs().max()) * clip / (2 ** (bits - 1) - 1), 6)
        cases.append(_Case((x, bits, scale), ("x", "bits", "scale")))

    def reference(x: torch.Tensor, bits: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            qat.fake_quantize(x, bits=bits, scale=scale),
            qat.straight_through_mask(x, bits=bits, scale=scale),
        )

    def run(fn: Callable[..., Any], x: torch.Tensor, bits: int, scale: float) -> Any:
        x = x.detach().clone().requires_grad_(True)
        y = fn(x, bits, scale)
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            return y if not isinstance(y, torch.Tensor) else (y.detach(), None)
        y.sum().backward()
        return y.detach(), x.grad

    def compare(got: Any, expected: tuple, case: _Case) -> str | None:
        x, _, scale = case.args
        if isinstance(got, torch.Tensor) or not isinstance(got, tuple):
            return f"expected a tensor, got {_show(got)}"
        values, grad = got
        step = torch.full_like(x, scale)
        problem = _compare_tensor(
            values, expected[0], rtol=1e-6, atol=1e-7 * scale, ties=(x / scale, step)
        )
        if problem:
            return f"values: {problem}"
        if grad is None:
            return (
                "no gradient reaches x (is the result detached, or computed without "
                "autograd?): x + (x_hat - x).detach() lets it through"
            )
        problem = _compare_tensor(grad, expected[1], exact=True)
        if problem:
            if bool((grad == 0).all()):
                problem += " — the gradient of torch.round is 0 everywhere: the STE is missing"
            elif bool((grad == 1).all()):
                problem += " — the gradient is 1 everywhere: clipped values must get 0"
            return f"gradient: {problem}"
        return None

    _run(
        "fake_quantize_ste",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "q = torch.round(x.detach() / scale); inside = (q >= qmin) & (q <= qmax); x_hat = "
            "q.clamp(qmin, qmax) * scale; return torch.where(inside, x + (x_hat - x).detach(), "
            "x_hat) — the gradient flows only through the first branch."
        ),
        call=run,
    )
    _passed(
        "fake_quantize_ste",
        f"agrees with qlearn.qat.fake_quantize, values and gradients, on {len(cases)} tensors",
    )


def check_absmean_ternary(
    answer: Callable[[torch.Tensor], tuple[torch.Tensor, float]], *, seed: int = 0
) -> None:
    """Chapter 07, exercise 2: ``absmean_ternary(w)`` → (codes, gamma): BitNet b1.58's ternary
    codes clamp(round(w / γ), −1, 1) with γ = mean|w| over the whole tensor.

    Reference: ``qlearn.bitnet.weight_quant_ternary(w)`` (Ma et al. 2024, eq. 1–3): codes
    exactly (one off only where w / γ is within 10⁻⁴ of ±0.5), γ = its ``scale`` within 10⁻⁵
    relative. Inputs: normal, uniform and outlier-laden weights.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for shape, kind in [
        ((10,), "normal"),
        ((8, 16), "uniform"),
        ((16, 64), "outlier"),
        ((32, 8), "normal"),
    ]:
        cases.append(_Case((_sample(shape, kind, g) * 0.05,), ("w",), note=kind))

    def reference(w: torch.Tensor) -> tuple[torch.Tensor, float]:
        q = bitnet.weight_quant_ternary(w)
        return q.codes, float(q.scale)

    def compare(got: Any, expected: tuple, case: _Case) -> str | None:
        (w,) = case.args
        parts = _as_parts(got, 2, ("codes", "gamma"))
        if isinstance(parts, str):
            return parts
        problem = _compare_number(_scalar(parts[1]), expected[1], rel=1e-5)
        if problem:
            return f"gamma: {problem}"
        problem = _compare_codes(parts[0], expected[0], w.double() / expected[1])
        return f"codes: {problem}" if problem else None

    _run(
        "absmean_ternary",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint="gamma = w.abs().mean(); codes = torch.clamp(torch.round(w / gamma), -1, 1).",
    )
    _passed(
        "absmean_ternary",
        f"agrees with qlearn.bitnet.weight_quant_ternary on {len(cases)} weights",
    )


def check_pack_trits(answer: Callable[[torch.Tensor], torch.Tensor], *, seed: int = 0) -> None:
    """Chapter 07, exercise 3: ``pack_trits(codes)`` → ternary codes (1-D, n values in {−1, 0,
    1}) packed five to a byte: uint8 [m] with m = ⌈n / 5⌉, byte j = Σₖ dₖ · 3ᵏ over k = 0…4,
    dₖ = codes[j + k·m] + 1 (0 where j + k·m ≥ n).

    Reference: ``qlearn.bitnet.pack_ternary(codes)`` (five planes of m codes, the layout of
    section 6; 3⁵ = 243 ≤ 256, Ma et al. 2024), byte for byte. Inputs: random codes, lengths a
    multiple of 5 and not.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for n in (5, 10, 12, 64, 257):
        codes = torch.randint(-1, 2, (n,), generator=g, dtype=torch.int8)
        cases.append(_Case((codes,), ("codes",), note=f"n = {n}"))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        got_t = _as_tensor(got)
        if isinstance(got_t, torch.Tensor) and got_t.numel() and int(got_t.min()) < 0:
            return "expected bytes (0 to 242), got negative values: store the digits code + 1"
        problem = _compare_tensor(got, expected, exact=True)
        if problem and not isinstance(got_t, str) and got_t.numel() > 0 and int(got_t.max()) > 242:
            problem += " — a byte above 242 cannot hold five base-3 digits"
        return problem

    _run(
        "pack_trits",
        answer,
        cases,
        reference=lambda codes: bitnet.pack_ternary(codes),
        compare=compare,
        hint=(
            "m = math.ceil(n / 5); digits = torch.zeros(5 * m); digits[:n] = codes + 1; "
            "planes = digits.reshape(5, m); byte = sum(planes[k] * 3**k for k in range(5))."
        ),
    )
    _passed("pack_trits", f"gives qlearn.bitnet.pack_ternary's bytes on {len(cases)} inputs")


def check_ternary_matmul(
    answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 07, exercise 4: ``ternary_matmul(x_codes, w_codes)`` → x_codes @ w_codesᵀ with
    additions and subtractions only: for each output, the sum of the inputs where w = +1 minus
    the sum of those where w = −1.

    Reference: ``qlearn.bitnet.ternary_matmul`` (Ma et al. 2024, Fig. 1), exactly (integers).
    Inputs: int8 activation codes [tokens, in] from ``qlearn.bitnet.activation_quant_int8`` and
    ternary weight codes [out, in] from ``qlearn.bitnet.weight_quant_ternary``.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for tokens, features, out in [(1, 5, 2), (4, 16, 8), (8, 64, 32), (3, 256, 16)]:
        x = bitnet.activation_quant_int8(torch.randn(tokens, features, generator=g)).codes
        w = bitnet.weight_quant_ternary(torch.randn(out, features, generator=g)).codes
        cases.append(_Case((x, w), ("x_codes", "w_codes")))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        problem = _compare_tensor(got, expected, exact=True)
        got_t = _as_tensor(got)
        if problem and isinstance(got_t, torch.Tensor) and got_t.shape == expected.shape:
            x, w = case.args
            if torch.equal(got_t.long(), x.long() @ w.abs().long().T):
                problem += " — the weights −1 were added, not subtracted"
            elif got_t.dtype == torch.int8:
                problem += " — int8 sums overflow: accumulate in int32"
        return problem

    _run(
        "ternary_matmul",
        answer,
        cases,
        reference=lambda x, w: bitnet.ternary_matmul(x, w),
        compare=compare,
        hint=(
            "x = x_codes.int()[:, None, :] is [tokens, 1, in]; torch.where(w_codes == 1, x, 0)"
            ".sum(-1) adds, torch.where(w_codes == -1, x, 0).sum(-1) is what to subtract."
        ),
    )
    _passed("ternary_matmul", f"agrees with qlearn.bitnet.ternary_matmul on {len(cases)} products")


# --------------------------------------------------------------------------------------------
# Chapter 08: NF4 and AWQ (notebooks/08_awq_nf4.ipynb)
# --------------------------------------------------------------------------------------------


def check_nf4_codes(answer: Callable[[torch.Tensor], torch.Tensor], *, seed: int = 0) -> None:
    """Chapter 08, exercise 1: ``nf4_codes(x)`` → the NF4 codes of one block: for each value,
    the index (0–15) of the level of ``nf4.NF4_LEVELS`` nearest to x / max|x|.

    Reference: ``qlearn.nf4.nf4_quantize(x, blocksize=len(x)).codes`` (Dettmers et al. 2023,
    §3, eq. 4; bitsandbytes' codes), exactly; either neighbour is accepted where x / max|x| is
    within 10⁻⁶ of a midpoint between two levels. Inputs: normal, uniform and outlier-laden
    blocks of 16 to 256 values.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for size, kind in [
        (16, "normal"),
        (64, "normal"),
        (64, "uniform"),
        (256, "outlier"),
        (128, "negative"),
    ]:
        cases.append(_Case((_sample((size,), kind, g) * 0.02,), ("x",), note=kind))

    def compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
        (x,) = case.args
        got_t = _as_tensor(got)
        if isinstance(got_t, str):
            return got_t
        if got_t.is_floating_point() and not bool((got_t == got_t.round()).all()):
            return "expected integer codes (indices into NF4_LEVELS), got fractions"
        problem = _compare_tensor(
            got_t.long() if not got_t.is_floating_point() else got_t, expected.long(), exact=True
        )
        if not problem:
            return None
        if got_t.shape != expected.shape:
            return problem
        levels = nf4.NF4_LEVELS.double()
        midpoints = (levels[:-1] + levels[1:]) / 2
        scaled = x.double() / x.abs().max()
        near = (scaled[:, None] - midpoints[None, :]).abs().min(dim=1).values < 1e-6
        diff = (got_t.double() - expected.double()).abs()
        if bool(((diff == 0) | (near & (diff == 1))).all()):
            return None
        return problem

    _run(
        "nf4_codes",
        answer,
        cases,
        reference=lambda x: nf4.nf4_quantize(x, blocksize=x.numel()).codes,
        compare=compare,
        hint=(
            "scaled = x / x.abs().max(); codes = (scaled[:, None] - nf4.NF4_LEVELS[None, :])"
            ".abs().argmin(dim=1): the nearest level, not a uniform grid."
        ),
    )
    _passed("nf4_codes", f"agrees with qlearn.nf4.nf4_quantize on {len(cases)} blocks")


def check_nf4_bits_per_weight(answer: Callable[[int, int, bool], float], *, seed: int = 0) -> None:
    """Chapter 08, exercise 2: ``nf4_bits_per_weight(n, blocksize, double_quant)`` → the storage
    of ``n`` weights in NF4, in bits per weight, counted from the bytes.

    4 bits per code; one float32 absmax per block; with double quantization instead one byte per
    block, one float32 absmax per 256 of those (⌈blocks / 256⌉) and one float32 offset.
    Reference: ``qlearn.nf4.nf4_quantize(w, blocksize=..., double_quant=...).bits_per_weight()``
    of a real tensor of ``n`` weights (Dettmers et al. 2023, §3), within 10⁻⁹ relative.
    Inputs: the sizes of the default model's matrices and random ones.
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    settings = [(576 * 576, 64, False), (576 * 576, 64, True), (576 * 1536, 64, True)]
    for _ in range(5):
        blocksize = rng.choice((32, 64, 128, 256))
        settings.append((blocksize * rng.randint(1, 700), blocksize, rng.random() < 0.6))
    cases = [_Case(s, ("n", "blocksize", "double_quant")) for s in settings]

    def reference(n: int, blocksize: int, double_quant: bool) -> float:
        w = torch.randn(n, generator=_generator(seed))
        return nf4.nf4_quantize(w, blocksize=blocksize, double_quant=double_quant).bits_per_weight()

    _run(
        "nf4_bits_per_weight",
        answer,
        cases,
        reference=reference,
        compare=lambda got, expected, case: _compare_number(got, expected, rel=1e-9),
        hint=(
            "count bytes: n / 2 for the codes; blocks = n // blocksize; 4 * blocks for float32 "
            "absmax, or with double quantization blocks + 4 * ceil(blocks / 256) + 4; then "
            "8 * bytes / n."
        ),
    )
    _passed(
        "nf4_bits_per_weight",
        f"agrees with Quantized4bit.bits_per_weight on {len(cases)} settings",
    )


def check_awq_scales(
    answer: Callable[[torch.Tensor, float], torch.Tensor], *, seed: int = 0
) -> None:
    """Chapter 08, exercise 3: ``awq_scales(x_mean, alpha)`` → AWQ's per-channel scales
    s = s_X^α, clamped at 10⁻⁴ from below, divided by √(max s · min s).

    ``x_mean`` is s_X, the mean |x| of each input channel. Reference: ``qlearn.awq.awq_scales``
    (Lin et al. 2024, §3.2, eq. 5, and the authors' normalisation), within 10⁻⁵ relative.
    Inputs: activation magnitudes with a few salient channels, one with a channel that never
    fires (s_X = 0), α from 0 to 1.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for size, alpha in [(8, 0.5), (64, 0.0), (64, 0.25), (128, 0.9), (16, 1.0)]:
        x_mean = torch.rand(size, generator=g) * 0.5 + 0.05
        x_mean[torch.randperm(size, generator=g)[: max(1, size // 16)]] *= 30
        if alpha == 0.9:
            x_mean[3] = 0.0
        cases.append(_Case((x_mean, alpha), ("x_mean", "alpha"), note=f"alpha = {alpha}"))
    _run(
        "awq_scales",
        answer,
        cases,
        reference=lambda x_mean, alpha: awq.awq_scales(x_mean, alpha),
        compare=lambda got, expected, case: _compare_tensor(got, expected, rtol=1e-5),
        hint=(
            "s = x_mean.pow(alpha).clamp(min=1e-4) (a dead channel must not give 0 or inf); "
            "return s / (s.max() * s.min()).sqrt()."
        ),
    )
    _passed("awq_scales", f"agrees with qlearn.awq.awq_scales on {len(cases)} inputs")


def check_best_alpha(answer: Callable[..., float], *, seed: int = 0) -> None:
    """Chapter 08, exercise 4: ``best_alpha(W, X, alphas, bits, group_size)`` → the α of
    ``alphas`` whose scales s = awq_scales(mean |X| per channel, α) give the smallest output
    error mean((X Ŵᵀ − X Wᵀ)²) with Ŵ = Q(W · s) / s, Q = ``awq.pseudo_quantize``.

    Reference: ``qlearn.awq.search_scale`` on an ``nn.Linear`` holding W (Lin et al. 2024,
    §3.2, eq. 4); an α whose error is within 10⁻⁵ relative of the smallest is right too.
    Inputs: layers [out, in] fed activations with a few salient channels (10–50× larger), 4 and
    3 bits, groups of 32 or 64.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    cases = []
    for out, features, tokens, bits, group_size in [
        (8, 32, 16, 4, 32),
        (16, 64, 32, 4, 32),
        (16, 128, 24, 3, 64),
        (32, 64, 64, 3, 32),
    ]:
        W = torch.randn(out, features, generator=g) * 0.05
        X = torch.randn(tokens, features, generator=g)
        salient = torch.randperm(features, generator=g)[: max(1, features // 32)]
        X[:, salient] *= torch.rand(len(salient), generator=g) * 40 + 10
        alphas = [i / 10 for i in range(10)]
        cases.append(
            _Case(
                (W, X, alphas, bits, group_size),
                ("W", "X", "alphas", "bits", "group_size"),
                note=f"{bits}-bit, groups of {group_size}",
            )
        )

    def search(
        W: torch.Tensor, X: torch.Tensor, alphas: list[float], bits: int, group_size: int
    ) -> Any:
        linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(W)
        return awq.search_scale(
            linear, [linear], X, bits=bits, group_size=group_size, alphas=alphas
        )

    def compare(got: Any, expected: float, case: _Case) -> str | None:
        alphas = case.args[2]
        value = _scalar(got)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected one of the alphas (a number), got {_show(got)}"
        index = min(range(len(alphas)), key=lambda i: abs(alphas[i] - value))
        if abs(alphas[index] - value) > 1e-6:
            return f"expected one of the alphas (the best is {expected!r}), got {value!r}"
        if alphas[index] == expected:
            return None
        errors = search(*case.args).errors
        best, mine = float(errors.min()), float(errors[index])
        if mine > best * (1 + 1e-5):
            return (
                f"alpha {alphas[index]!r} gives an output error of {mine:.6g}; alpha {expected!r} "
                f"gives {best:.6g}"
            )
        return None

    _run(
        "best_alpha",
        answer,
        cases,
        reference=lambda *args: search(*args).alpha,
        compare=compare,
        hint=(
            "s = awq_scales(X.abs().mean(dim=0), alpha); W_hat = awq.pseudo_quantize(W * s, "
            "bits=bits, group_size=group_size) / s; error = ((X @ W_hat.T - X @ W.T) ** 2)"
            ".mean(): the error of the *output*, not of the weights."
        ),
    )
    _passed(
        "best_alpha",
        f"finds the smallest-error alpha of qlearn.awq.search_scale on {len(cases)} layers",
    )


# --------------------------------------------------------------------------------------------
# Chapter 09: the capstone, every method in one table (notebooks/09_capstone.ipynb)
# --------------------------------------------------------------------------------------------

_STORAGE_FORMATS: Final = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "NF4", "NF4+DQ")


def check_bits_from_bytes(answer: Callable[[torch.Tensor, str], float], *, seed: int = 0) -> None:
    """Chapter 09, exercise 1: ``bits_from_bytes(w, fmt)`` → the bits per weight of ``w`` stored
    in ``fmt``, measured from the bytes qlearn writes: a GGUF type ("F16", "Q8_0", "Q4_0",
    "Q4_K", "Q6_K": ``qlearn.gguf.quantize``), "NF4" or "NF4+DQ" (``qlearn.nf4.nf4_quantize``,
    blocks of 64, without and with double quantization).

    Reference: 8 · bytes / weights of those very calls (``Quantized4bit.bits_per_weight`` for
    NF4), within 10⁻⁹ relative. Inputs: weights [rows, 256 · k] in every format.
    """
    __tracebackhide__ = True
    g = _generator(seed)
    rng = random.Random(_seed(seed))
    cases = []
    for fmt in _STORAGE_FORMATS:
        w = torch.randn(rng.choice((1, 2, 4, 6)), 256 * rng.randint(1, 3), generator=g) * 0.02
        cases.append(_Case((w, fmt), ("w", "fmt"), note=fmt))

    def reference(w: torch.Tensor, fmt: str) -> float:
        if fmt.startswith("NF4"):
            q = nf4.nf4_quantize(w, blocksize=64, double_quant=fmt == "NF4+DQ")
            return q.bits_per_weight()
        return 8 * gguf.quantize(w.numpy(), fmt).nbytes / w.numel()

    _run(
        "bits_from_bytes",
        answer,
        cases,
        reference=reference,
        compare=lambda got, expected, case: _compare_number(got, expected, rel=1e-9),
        hint=(
            "measure, don't recall: 8 * gguf.quantize(w.numpy(), fmt).nbytes / w.numel() counts "
            "the scales too (Q4_K is 4.5, not 4); for NF4, nf4.nf4_quantize(w, blocksize=64, "
            "double_quant=...).bits_per_weight()."
        ),
    )
    _passed(
        "bits_from_bytes",
        f"agrees with the bytes of qlearn.gguf and qlearn.nf4 in {len(cases)} formats",
    )


def check_best_under_budget(
    answer: Callable[[dict[str, tuple[float, float]], float], str | None], *, seed: int = 0
) -> None:
    """Chapter 09, exercise 2: ``best_under_budget(results, max_bits)`` → the label of the
    method with the lowest perplexity among those that take at most ``max_bits`` bits per
    weight, or None if none fits. ``results`` maps a label to (bits per weight, perplexity).

    Reference: a plain search over the table (any label with the lowest perplexity is right).
    Inputs: random tables of a dozen methods, a budget met exactly by the best method, and a
    budget nothing fits.
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    cases = []
    for kind in ("random", "exact", "random", "none"):
        results = _results_table(rng, 12)
        if kind == "exact":
            best = min(results, key=lambda k: results[k][1] if results[k][0] < 16 else math.inf)
            budget = results[best][0]
        elif kind == "none":
            budget = round(min(b for b, _ in results.values()) - 0.5, 3)
        else:
            budget = round(rng.uniform(3.0, 9.0), 3)
        note = {"exact": "the best method takes exactly max_bits", "none": "nothing fits"}
        cases.append(
            _Case(
                (results, budget),
                ("results", "max_bits"),
                shown={"results": _show_results(results)},
                note=note.get(kind, ""),
            )
        )

    def reference(results: dict[str, tuple[float, float]], max_bits: float) -> str | None:
        fitting = [k for k, (b, _) in results.items() if b <= max_bits]
        return min(fitting, key=lambda k: results[k][1]) if fitting else None

    def compare(got: Any, expected: str | None, case: _Case) -> str | None:
        results, max_bits = case.args
        if expected is None:
            return None if got is None else f"nothing takes ≤ {max_bits} bits; expected None"
        if got is None:
            return f"{expected!r} takes {results[expected][0]} ≤ {max_bits} bits"
        if not isinstance(got, str) or got not in results:
            return f"expected one of the labels of results, got {_show(got)}"
        bits, ppl = results[got]
        if bits > max_bits:
            return f"{got!r} takes {bits} bits, more than max_bits = {max_bits}"
        if ppl > results[expected][1]:
            return f"{got!r} has perplexity {ppl}; {expected!r} has {results[expected][1]}"
        return None

    _run(
        "best_under_budget",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "keep the methods with bits <= max_bits (a method exactly at the budget fits), then "
            "take the one with the smallest perplexity; return None when none is left."
        ),
    )
    _passed("best_under_budget", f"finds the best method within budget in {len(cases)} tables")


def check_pareto_front(
    answer: Callable[[dict[str, tuple[float, float]]], list[str]], *, seed: int = 0
) -> None:
    """Chapter 09, exercise 3: ``pareto_front(results)`` → the labels of the methods that no
    other method beats on both counts, in order of increasing bits per weight. ``results`` maps
    a label to (bits per weight, perplexity); B beats A if B takes no more bits and has no
    higher perplexity, and is better in at least one of the two.

    Reference: every pair compared (Pareto optimality), exactly. Inputs: random tables of 6 to
    16 methods, one with two methods at the same bits per weight.
    """
    __tracebackhide__ = True
    rng = random.Random(_seed(seed))
    cases = []
    for n, tie in [(6, False), (12, True), (16, False), (10, True)]:
        results = _results_table(rng, n)
        if tie:  # a second method at the bits of the best 4-ish-bit one, with a worse perplexity
            label = min(results, key=lambda k: abs(results[k][0] - 4.5))
            bits, ppl = results[label]
            results[f"{label} (variant)"] = (bits, round(ppl * 1.1, 2))
        cases.append(
            _Case(
                (results,),
                ("results",),
                shown={"results": _show_results(results)},
                note="two methods at the same bits" if tie else "",
            )
        )

    def reference(results: dict[str, tuple[float, float]]) -> list[str]:
        def beaten(a: str) -> bool:
            ba, pa = results[a]
            return any(
                b <= ba and p <= pa and (b < ba or p < pa)
                for k, (b, p) in results.items()
                if k != a
            )

        front = [k for k in results if not beaten(k)]
        return sorted(front, key=lambda k: results[k])

    def compare(got: Any, expected: list[str], case: _Case) -> str | None:
        (results,) = case.args
        if isinstance(got, (str, dict)) or not isinstance(got, (list, tuple)):
            return f"expected a list of labels, got {_show(got)}"
        got = list(got)
        unknown = [k for k in got if k not in results]
        if unknown:
            return f"{unknown[0]!r} is not a label of results"
        missing = [k for k in expected if k not in got]
        if missing:
            return f"{missing[0]!r} {results[missing[0]]} is on the front: nothing beats it"
        extra = [k for k in got if k not in expected]
        if extra:
            a = extra[0]
            ba, pa = results[a]
            by = next(
                k
                for k, (b, p) in results.items()
                if k != a and b <= ba and p <= pa and (b < ba or p < pa)
            )
            return f"{a!r} {results[a]} is beaten by {by!r} {results[by]}"
        if len(got) != len(expected):
            return "a label appears twice"
        if [results[k][0] for k in got] != sorted(results[k][0] for k in got):
            return "the labels are not in order of increasing bits per weight"
        return None

    _run(
        "pareto_front",
        answer,
        cases,
        reference=reference,
        compare=compare,
        hint=(
            "sort the labels by (bits, perplexity); walk through them and keep a label when its "
            "perplexity is lower than every one kept so far."
        ),
    )
    _passed("pareto_front", f"finds the Pareto front of {len(cases)} tables")


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

EXERCISES: Final[dict[str, Exercise]] = {
    e.check.__name__.removeprefix("check_"): e
    for e in [
        Exercise("memory_gb", 1, "Memory of a model", check_memory_gb),
        Exercise("decode_fp16", 1, "Decode FP16 by hand", check_decode_fp16),
        Exercise("format_limits", 1, "Largest and smallest", check_format_limits),
        Exercise("round_to_bf16", 1, "Round to BF16 with integer arithmetic", check_round_to_bf16),
        Exercise("dequantize", 2, "Zero-point dequantization", check_dequantize),
        Exercise("absmax_codes", 2, "Absmax codes", check_absmax_codes),
        Exercise("zeropoint_quantize", 2, "Zero-point quantization", check_zeropoint_quantize),
        Exercise("group_absmax", 2, "Per-group absmax", check_group_absmax),
        Exercise("bits_per_weight", 3, "What the scales cost", check_bits_per_weight),
        Exercise("clipped_absmax", 3, "Clip, then quantize", check_clipped_absmax),
        Exercise("RangeObserver", 3, "A calibration observer", check_range_observer),
        Exercise("best_clip", 3, "The best clip by MSE", check_best_clip),
        Exercise("outlier_columns", 4, "Find the outlier columns", check_outlier_columns),
        Exercise("vectorwise_quantize", 4, "Vector-wise int8", check_vectorwise_quantize),
        Exercise("int8_matmul", 4, "An int8 matmul", check_int8_matmul),
        Exercise("llm_int8_matmul", 4, "LLM.int8() as one function", check_llm_int8_matmul),
        Exercise("layer_hessian", 5, "The layer Hessian", check_layer_hessian),
        Exercise("layer_error", 5, "The output error from H", check_layer_error),
        Exercise("gptq_step", 5, "One GPTQ step", check_gptq_step),
        Exercise("gptq_layer", 5, "GPTQ on a whole layer", check_gptq_layer),
        Exercise("dequantize_q8_0", 6, "Read a Q8_0 block", check_dequantize_q8_0),
        Exercise("quantize_q8_0", 6, "Write a Q8_0 block", check_quantize_q8_0),
        Exercise("quantize_q4_0", 6, "Pack a Q4_0 block", check_quantize_q4_0),
        Exercise("quantize_q4_1", 6, "Pack a Q4_1 block", check_quantize_q4_1),
        Exercise("fake_quantize_ste", 7, "Fake quantization with an STE", check_fake_quantize_ste),
        Exercise("absmean_ternary", 7, "Absmean ternary weights", check_absmean_ternary),
        Exercise("pack_trits", 7, "Five trits in a byte", check_pack_trits),
        Exercise("ternary_matmul", 7, "A matmul without multiplications", check_ternary_matmul),
        Exercise("nf4_codes", 8, "NF4 codes of a block", check_nf4_codes),
        Exercise("nf4_bits_per_weight", 8, "What NF4 costs", check_nf4_bits_per_weight),
        Exercise("awq_scales", 8, "AWQ's scales", check_awq_scales),
        Exercise("best_alpha", 8, "The best alpha", check_best_alpha),
        Exercise("bits_from_bytes", 9, "Bits per weight from the bytes", check_bits_from_bytes),
        Exercise(
            "best_under_budget", 9, "The best method within a budget", check_best_under_budget
        ),
        Exercise("pareto_front", 9, "The Pareto front", check_pareto_front),
    ]
}
"""Every exercise by the name of its check (``check_<key>``), in course order."""


def exercises_of(chapter: int) -> list[Exercise]:
    """The exercises of one chapter (1–9), in the order the notebook poses them."""
    chapter = check_int(chapter, "chapter")
    return [e for e in EXERCISES.values() if e.chapter == chapter]


# --------------------------------------------------------------------------------------------
# Helpers: running an answer, comparing, and saying what went wrong
# --------------------------------------------------------------------------------------------

_MAX_SHOWN: Final = 24  # a tensor with more values is shown by its shape, range and first values


@dataclass
class _Case:
    """One input: the arguments, their names, how to show them, a note, and anything the
    reference needs besides the arguments (``extra``)."""

    args: tuple
    names: tuple[str, ...]
    shown: dict[str, str] = field(default_factory=dict)
    note: str = ""
    extra: Any = None

    def describe(self) -> str:
        lines = [
            f"    {n} = {self.shown.get(n) or _show(a)}"
            for n, a in zip(self.names, self.args, strict=True)
        ]
        return "\n".join(lines)


def _run(
    name: str,
    answer: Any,
    cases: list[_Case],
    *,
    reference: Callable[..., Any],
    compare: Callable[[Any, Any, _Case], str | None],
    hint: str,
    call: Callable[..., Any] | None = None,
) -> None:
    """Run ``answer`` on every case and compare with ``reference``; raise on the first problem."""
    __tracebackhide__ = True
    if not callable(answer):
        raise ExerciseFailed(
            f"✗ {name}: expected a function (or class) to check, got {_show(answer)}.\n"
            f"  Pass the function itself: check_...({name}), without calling it."
        )
    for i, case in enumerate(cases):
        expected = reference(*case.args)
        args = tuple(_copy(a) for a in case.args)  # an answer that writes to its input harms no one
        try:
            got = call(answer, *args) if call else answer(*args)
        except NotImplementedError:
            raise ExerciseFailed(
                f"✗ {name} is not implemented yet: it still raises NotImplementedError.\n"
                f"  Write its body in the solution cell above, run that cell, then run this check "
                f"again."
            ) from None
        except Exception as error:
            raise ExerciseFailed(
                f"✗ {name} raised {type(error).__name__}: {error}\n"
                f"  on input {i + 1} of {len(cases)}{_note(case)}:\n{case.describe()}\n"
                f"  (the traceback above shows where)"
            ) from error
        problem = compare(got, expected, case)
        if problem:
            raise ExerciseFailed(
                f"✗ {name} gave a wrong answer on input {i + 1} of {len(cases)}{_note(case)}:\n"
                f"{case.describe()}\n"
                f"  expected: {_show(expected)}\n"
                f"  got:      {_show(got)}\n"
                f"  {problem}\n"
                f"  hint: {hint}"
            )


def _passed(name: str, what: str) -> None:
    print(f"✓ {name} {what}.")


def _note(case: _Case) -> str:
    return f" ({case.note})" if case.note else ""


def _seed(seed: Any) -> int:
    return check_int(seed, "seed", minimum=0)


def _generator(seed: Any) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed))


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _sample(shape: tuple[int, ...], kind: str, g: torch.Generator) -> torch.Tensor:
    """Random test data: "normal", "uniform" (in [−1, 1]), "positive", "negative", "skewed"
    (mostly positive) or "outlier" (normal with a few values 10–40× larger)."""
    x = torch.randn(shape, generator=g)
    if kind == "uniform":
        x = torch.rand(shape, generator=g) * 2 - 1
    elif kind == "positive":
        x = torch.rand(shape, generator=g) * 3 + 0.1
    elif kind == "negative":
        x = -torch.rand(shape, generator=g) * 2 - 0.5
    elif kind == "skewed":
        x = x.abs() * 2 - 0.3
    elif kind == "outlier":
        flat = x.view(-1)
        n = max(1, flat.numel() // 100)
        where = torch.randperm(flat.numel(), generator=g)[:n]
        flat[where] = (torch.rand(n, generator=g) * 30 + 10) * torch.sign(flat[where] + 1e-3)
    return x


def _activations(tokens: int, features: int, g: torch.Generator) -> torch.Tensor:
    """N(0, 1) activations with one systematic outlier column (×10 in every token) and one
    isolated large negative value, as Dettmers et al. 2022 §4 describes them."""
    X = torch.randn(tokens, features, generator=g)
    column = int(torch.randint(0, features, (1,), generator=g))
    X[:, column] *= 10
    X[int(torch.randint(0, tokens, (1,), generator=g)), (column + features // 2) % features] = -9.0
    return X


def _quantized_of(cases: list[_Case], codes: torch.Tensor) -> Any:
    """The QuantizedTensor a case of :func:`check_dequantize` was made from."""
    return next(c.extra for c in cases if c.args[0] is codes)


_METHODS: Final = {
    "FP32": 32.0,
    "FP16": 16.0,
    "INT8 absmax": 8.06,
    "INT8 zero-point": 8.1,
    "LLM.int8": 8.6,
    "GPTQ 4-bit": 4.2,
    "GPTQ 3-bit": 3.2,
    "AWQ 4-bit": 4.25,
    "NF4": 4.13,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q4_K_M": 4.9,
    "Q4_0": 4.5,
    "Q3_K": 3.44,
    "Q2_K": 2.63,
    "BitNet b1.58": 1.7,
}
"""Method labels and roughly what they cost in bits per weight, for made-up result tables."""


def _results_table(rng: random.Random, n: int) -> dict[str, tuple[float, float]]:
    """n of :data:`_METHODS` with made-up but plausible (bits per weight, perplexity): the bits
    near the method's own, the perplexity growing as the bits fall, with noise."""
    results = {}
    for label in rng.sample(list(_METHODS), n):
        bits = _METHODS[label]
        if bits < 16:
            bits = round(bits + rng.uniform(-0.1, 0.1), 3)
        noise = 1 + rng.uniform(0, 0.4) if bits < 16 else 1 + rng.uniform(0, 0.002)
        ppl = 20.3 * (1 + 40 * 2.0 ** (-1.4 * bits)) * noise
        results[label] = (bits, round(ppl, 2))
    return results


def _show_results(results: dict[str, tuple[float, float]]) -> str:
    return "{" + ", ".join(f"{k!r}: ({b}, {p})" for k, (b, p) in results.items()) + "}"


def _show_bytes(raw: Any) -> str:
    data = np.asarray(raw, dtype=np.uint8).reshape(-1)
    return f"{data.size} bytes: " + " ".join(f"{b:02x}" for b in data.tolist())


def _as_bytes(got: Any) -> np.ndarray | str:
    """uint8 numpy bytes from bytes, bytearray, a numpy array or a tensor of values 0–255."""
    if isinstance(got, (bytes, bytearray)):
        return np.frombuffer(bytes(got), dtype=np.uint8)
    if isinstance(got, torch.Tensor):
        got = got.detach().numpy()
    if isinstance(got, (list, tuple)):
        got = np.asarray(got)
    if not isinstance(got, np.ndarray):
        return f"expected bytes (a uint8 numpy array), got {_show(got)}"
    if got.dtype != np.uint8:
        if got.dtype.kind not in "iu" or (got.size and (got.min() < 0 or got.max() > 255)):
            return f"expected bytes (uint8, 0 to 255), got a {got.dtype} array"
        got = got.astype(np.uint8)
    return got.reshape(-1)


def _compare_bytes(got: Any, expected: np.ndarray, qtype: str) -> str | None:
    """Bytes of one GGUF block: equal, or which field of the block differs first."""
    data = _as_bytes(got)
    if isinstance(data, str):
        return data
    expected = expected.reshape(-1)
    if data.size != expected.size:
        return f"expected {expected.size} bytes (one {qtype} block), got {data.size}"
    differ = np.flatnonzero(data != expected)
    if not differ.size:
        return None
    first, start, name = int(differ[0]), 0, ""
    for field_name, size in gguf.LAYOUTS[qtype]:
        name = field_name
        if first < start + size:
            break
        start += size
    if name in ("d", "m"):
        want = float(expected[start : start + 2].view(np.float16)[0])
        have = float(data[start : start + 2].view(np.float16)[0])
        what = "scale d" if name == "d" else "min m"
        return (
            f"the {what} (bytes {start}–{start + 1}, fp16) differs: expected {want!r}, got {have!r}"
        )
    j = first - start
    text = (
        f"{differ.size} bytes differ; the first is byte {first} (byte {j} of the codes): "
        f"expected 0x{int(expected[first]):02x}, got 0x{int(data[first]):02x}"
    )
    if qtype == "Q8_0":
        return text + f" (code {j}: expected {int(expected[first : first + 1].view(np.int8)[0])})"
    return text + f" (low nibble: code {j}, high nibble: code {j + 16})"


def _show(value: Any) -> str:
    """A short, readable description of a value (tensors by their values or their summary)."""
    if isinstance(value, torch.Tensor):
        shape = "×".join(map(str, value.shape)) or "scalar"
        if value.numel() <= _MAX_SHOWN:
            values = value.tolist()
            if value.is_floating_point():
                values = _round_nested(values)
            return f"{values} ({value.dtype}, shape {shape})"
        flat = value.flatten()
        head = flat[:4].tolist()
        if value.is_floating_point():
            head = _round_nested(head)
            finite = flat[torch.isfinite(flat)]
            span = (
                f", from {float(finite.min()):.4g} to {float(finite.max()):.4g}"
                if finite.numel()
                else ""
            )
        else:
            span = f", from {int(flat.min())} to {int(flat.max())}"
        return f"{value.dtype} tensor of shape {shape}{span}, starting {head}"
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return _show_bytes(value)
        shown = _show(torch.from_numpy(np.ascontiguousarray(value)))
        return "numpy " + shown.replace("torch.", "").replace(" tensor ", " array ")
    if isinstance(value, (tuple, list)):
        if len(value) > 8 and all(isinstance(v, (int, float)) for v in value):
            return f"{len(value)} numbers, {_show(list(value[:3]))[:-1]}, ...]"
        inner = ", ".join(_show(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "None (did the function forget to return?)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _round_nested(values: Any) -> Any:
    if isinstance(values, list):
        return [_round_nested(v) for v in values]
    return float(f"{values:.5g}") if math.isfinite(values) else values


def _scalar(value: Any) -> Any:
    """A Python number from a number or a one-element tensor (anything else unchanged)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):  # numpy scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _compare_number(
    got: Any, expected: float, *, rel: float = 0.0, signed_zero: bool = False
) -> str | None:
    got = _scalar(got)
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {_show(got)}"
    got = float(got)
    if math.isnan(expected):
        return None if math.isnan(got) else f"expected NaN (not a number), got {got!r}"
    if math.isnan(got):
        return f"expected {expected!r}, got NaN"
    if got == expected:
        if signed_zero and got == 0 and math.copysign(1, got) != math.copysign(1, expected):
            return f"expected {expected!r}, got {got!r}: the sign of zero differs"
        return None
    if math.isinf(expected) or math.isinf(got) or abs(got - expected) > rel * abs(expected):
        return f"expected {expected!r}, got {got!r}" + (
            f" (off by {abs(got - expected) / abs(expected):.2g} relative)"
            if expected and math.isfinite(got) and math.isfinite(expected)
            else ""
        )
    return None


def _compare_parts(
    got: Any, expected: tuple, labels: tuple[str, ...], compare: Callable[[Any, Any], str | None]
) -> str | None:
    parts = _as_parts(got, len(expected), labels)
    if isinstance(parts, str):
        return parts
    for label, part, want in zip(labels, parts, expected, strict=True):
        problem = compare(part, want)
        if problem:
            return f"{label}: {problem}"
    return None


def _as_parts(got: Any, n: int, labels: tuple[str, ...]) -> tuple | str:
    if not isinstance(got, (tuple, list)) or len(got) != n:
        return f"expected a tuple of {n} values ({', '.join(labels)}), got {_show(got)}"
    return tuple(got)


def _as_tensor(got: Any) -> torch.Tensor | str:
    if isinstance(got, torch.Tensor):
        return got.detach()
    if isinstance(got, (list, tuple)) or hasattr(got, "__array__"):
        try:
            return torch.as_tensor(got)
        except (TypeError, ValueError, RuntimeError):
            pass
    return f"expected a torch tensor, got {_show(got)}"


def _flat_rows(value: Any) -> Any:
    """Row statistics given as [rows, 1] are accepted as [rows]."""
    if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[-1] == 1:
        return value.view(-1)
    return value


def _compare_tensor(
    got: Any,
    expected: torch.Tensor,
    *,
    exact: bool = False,
    rtol: float = 1e-6,
    atol: float = 0.0,
    inputs: torch.Tensor | None = None,
    show_bits: bool = False,
    ties: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> str | None:
    """Compare values; ``ties`` = (x / step, step): at a tie a value may be one step off."""
    got = _as_tensor(got)
    if isinstance(got, str):
        return got
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    if not (
        got.is_floating_point()
        or got.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        return f"expected numbers, got a {got.dtype} tensor"
    g, e = got.double(), expected.double()
    same = (g == e) | (torch.isnan(g) & torch.isnan(e))
    if not exact:
        scale = float(e.abs().max()) if e.numel() else 0.0
        same |= (g - e).abs() <= rtol * e.abs() + atol + rtol * 1e-3 * scale
    if ties is not None:
        real, step = ties
        frac = (real.double().abs() % 1 - 0.5).abs()
        same |= (frac < 1e-4) & ((g - e).abs() <= step.double() * 1.0001)
    if bool(same.all()):
        return None
    bad = torch.argwhere(~same)
    index = tuple(bad[0].tolist())
    where = f"[{', '.join(map(str, index))}]"
    text = f"{len(bad)} of {expected.numel()} values differ; the first at {where}: "
    if inputs is not None:
        x = inputs[index]
        bits = f" (bits 0x{int(x.view(torch.int32)) & 0xFFFFFFFF:08x})" if show_bits else ""
        text += f"input {float(x)!r}{bits}, "
    got_value = float(g[index])
    expected_value = float(e[index])
    return text + f"expected {expected_value!r}, got {got_value!r}"


def _compare_codes(got: Any, expected: torch.Tensor, real: torch.Tensor) -> str | None:
    """Integer codes: equal, except one off where ``real`` (the unrounded code) is a tie."""
    got = _as_tensor(got)
    if isinstance(got, str):
        return got
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    if got.dtype == torch.bool:
        return "expected integer codes, got a bool tensor"
    if got.is_floating_point():
        if not bool(torch.isfinite(got).all()):
            return "expected integer codes, got NaN or inf among them (a division by zero?)"
        if not bool((got == got.round()).all()):
            return "expected integer codes, got values with a fractional part (round them)"
    ties = ((real.abs() % 1) - 0.5).abs() < 1e-4
    diff = (got.double() - expected.double()).abs()
    ok = (diff == 0) | (ties & (diff == 1))
    if bool(ok.all()):
        return None
    bad = torch.argwhere(~ok)
    index = tuple(bad[0].tolist())
    return (
        f"{len(bad)} of {expected.numel()} codes differ; the first at "
        f"[{', '.join(map(str, index))}]: expected {int(expected[index])}, "
        f"got {float(got[index]):g} (unrounded {float(real[index]):.4f})"
    )


def _matmul_compare(got: Any, expected: torch.Tensor, case: _Case) -> str | None:
    X, W = case.args[:2]
    problem = _compare_tensor(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    if problem:
        exact = X.double() @ W.double().T
        got_t = _as_tensor(got)
        if (
            isinstance(got_t, torch.Tensor)
            and got_t.shape == exact.shape
            and torch.allclose(got_t.double(), exact, rtol=1e-5, atol=1e-6)
        ):
            problem += " — this is X @ W.T in float: the int8 rounding is missing"
    return problem
