"""Chapter 02's exercises: absmax and zero-point quantization.
Taught in notebooks/02_absmax_zeropoint.ipynb."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from qlearn import affine
from qlearn.exercises import _course
from qlearn.exercises._compare import (
    codes_then,
    compare_codes,
    compare_number,
    compare_tensor,
    show,
)
from qlearn.exercises._runner import Case, Draw, Spec, tensors

_number = partial(compare_number, rel=1e-6)


def _zeropoint_codes(draw: Draw) -> list[Case]:
    """The codes of ``qlearn.affine.zeropoint_quantize`` at 8 and 4 bits, per tensor and per
    output channel (scale and zero point of shape [rows, 1])."""
    cases = []
    for shape, bits, axis in [
        ((16,), 8, None),
        ((4, 8), 8, 0),
        ((6, 32), 4, None),
        ((8, 64), 8, 0),
    ]:
        x = torch.randn(shape, generator=draw.torch) * 2 + 0.5
        q = affine.zeropoint_quantize(x, bits, axis=axis)
        note = f"{bits}-bit, {'per tensor' if axis is None else 'per channel'}"
        cases.append(Case((q.codes, q.scale, q.zero_point), note, context={"quantized": q}))
    return cases


def _weights(draw: Draw) -> list[Case]:
    """Weights of shape [rows, columns] with rows of very different scales."""
    cases = []
    for rows, columns, bits, group_size in [
        (2, 8, 8, 4),
        (4, 64, 4, 16),
        (8, 128, 4, 32),
        (3, 96, 3, 48),
    ]:
        w = torch.randn(rows, columns, generator=draw.torch) * torch.logspace(-2, 0, rows)[:, None]
        cases.append(Case((w, bits, group_size)))
    return cases


def _compare_groups(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    w, bits, group_size = case.args
    groups = w.reshape(w.shape[0], -1, group_size)
    step = (groups.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)).expand_as(groups)
    step = step.reshape(w.shape)
    return compare_tensor(got, expected, rtol=1e-6, ties=(w / step, step))


def _real_layers(draw: Draw) -> list[Case]:
    """Eight decoder weights of the course's model (SmolLM2-135M-Instruct, whose weights are a
    Q4_1 reconstruction) drawn by the seed, at 8 bits; eight others at 4 bits."""
    cases = []
    for bits in (8, 4):
        names = _course.drawn_names(draw, 8)
        weights = {name: _course.weight(name) for name in names}
        shown = {"weights": f"{{name: weight}} of {len(names)} layers: {', '.join(names)}"}
        cases.append(Case((weights, bits), f"{bits}-bit", shown=shown))
    return cases


def _relative_error(w: torch.Tensor, bits: int, axis: int | None = None) -> float:
    """‖W − Ŵ‖ / ‖W‖ of absmax at ``bits`` (per tensor, or along ``axis``), in float64."""
    w_hat = affine.fake_quantize(w, "absmax", bits=bits, axis=axis)
    return float((w.double() - w_hat.double()).norm() / w.double().norm())


def _worst_layer(weights: dict[str, torch.Tensor], bits: int) -> str:
    return max(weights, key=lambda name: _relative_error(weights[name], bits))


def _compare_worst(got: Any, expected: str, case: Case) -> str | None:
    weights, bits = case.args
    if not isinstance(got, str) or got not in weights:
        return f"expected one of the names in weights, got {show(got)}"
    if got == expected:
        return None
    ours, theirs = _relative_error(weights[got], bits), _relative_error(weights[expected], bits)
    if ours >= theirs * (1 - 1e-6):
        return None
    return f"{got!r} has relative error {ours:.4g}; {expected!r} has {theirs:.4g}"


def _one_scale_per_row(got: Any, expected: str, case: Case) -> bool:
    weights, bits = case.args
    per_row = {n: _relative_error(w, bits, axis=0) for n, w in weights.items()}
    return got == max(per_row, key=per_row.__getitem__)


SPECS = [
    Spec(
        signature="dequantize(codes, scale, zero_point)",
        title="Zero-point dequantization",
        doc="""→ scale · (codes − zero point), a float tensor of the codes' shape. Reference:
        ``qlearn.affine.QuantizedTensor.dequantize`` (Jacob et al. 2018, eq. 1), within 10⁻⁶
        relative.""",
        inputs=_zeropoint_codes,
        reference=lambda codes, scale, zero_point, *, quantized: quantized.dequantize(),
        rtol=1e-6,
        hint="""codes and zero_point are int8: codes - zero_point overflows past 127 (200 - 256
        ...). Convert to float first: (codes.float() - zero_point.float()) * scale.""",
        passed="agrees with qlearn.affine's QuantizedTensor.dequantize on {n} tensors",
    ),
    Spec(
        signature="absmax_codes(x, bits)",
        title="Absmax codes",
        doc="""→ the integer codes of symmetric (absmax) quantization with one scale for the
        whole tensor: scale = max|x| / (2^(b−1) − 1), codes = round(x / scale). Reference:
        ``qlearn.affine.absmax_quantize(x, bits).codes`` (Dettmers et al. 2022, §2), exactly;
        one off only where x / scale is within 10⁻⁴ of a tie (x.5).""",
        inputs=tensors(
            "Normal, uniform and outlier-laden tensors at 2 to 8 bits.",
            *[((12,), "normal", 8), ((4, 16), "uniform", 4), ((256,), "outlier", 8)],
            *[((8, 32), "normal", 2), ((3, 100), "outlier", 6)],
        ),
        reference=lambda x, bits: affine.absmax_quantize(x, bits).codes,
        compare=lambda got, expected, case: compare_codes(
            got,
            expected,
            case.args[0].double() * (2 ** (case.args[1] - 1) - 1) / case.args[0].abs().max(),
        ),
        hint="scale = x.abs().max() / (2**(bits - 1) - 1); codes = torch.round(x / scale).",
        passed="agrees with qlearn.affine.absmax_quantize on {n} tensors",
    ),
    Spec(
        signature="zeropoint_quantize(x, bits)",
        title="Zero-point quantization",
        doc="""→ (codes, scale, zero_point) of asymmetric quantization with one scale for the
        whole tensor over [min(x, 0), max(x, 0)]: scale = range / (2^b − 1), zero_point =
        −2^(b−1) − round(min / scale), codes = clamp(round(x / scale) + zero_point, −2^(b−1),
        2^(b−1) − 1). Reference: ``qlearn.affine.zeropoint_quantize(x, bits)`` (Jacob et al.
        2018, eq. 1–2): scale within 10⁻⁶ relative, zero point exact, codes but for ties.""",
        inputs=tensors(
            "Mixed-sign, all-positive and all-negative tensors at 2 to 8 bits.",
            *[((10,), "normal", 8), ((4, 16), "positive", 8), ((64,), "skewed", 4)],
            *[((5, 20), "negative", 3), ((256,), "outlier", 8)],
        ),
        reference=lambda x, bits: (
            (q := affine.zeropoint_quantize(x, bits)).codes,
            float(q.scale),
            int(q.zero_point),
        ),
        compare=codes_then(
            ("codes", "scale", "zero_point"), lambda x, e: x / e[1] + e[2], _number, _number
        ),
        hint="""lo = min(x.min(), 0), hi = max(x.max(), 0): the range must hold 0 even when every
        value is positive; scale = (hi - lo) / (2**bits - 1).""",
        passed="""agrees with qlearn.affine.zeropoint_quantize on {n} tensors (codes, scale, zero
        point)""",
    ),
    Spec(
        signature="group_absmax(w, bits, group_size)",
        title="Per-group absmax",
        doc="""→ ``w`` quantized with one absmax scale per group of ``group_size`` consecutive
        values along each row, and dequantized. Reference: ``qlearn.affine.fake_quantize(w,
        "absmax", bits=bits, group_size=group_size)`` (Nagel et al. 2021, §2.3), within 10⁻⁶
        relative; one step off only at a tie.""",
        inputs=_weights,
        reference=lambda w, bits, group_size: affine.fake_quantize(
            w, "absmax", bits=bits, group_size=group_size
        ),
        compare=_compare_groups,
        hint="""view w as [rows, columns // group_size, group_size], take the absmax over the last
        dimension (keepdim=True), quantize and dequantize, then reshape back.""",
        passed="agrees with qlearn.affine.fake_quantize on {n} weights",
    ),
    Spec(
        signature="worst_layer(weights, bits)",
        title="The layer one scale serves worst",
        doc="""→ the name of the layer of ``weights`` ({name: weight}) whose weight loses most
        under per-tensor absmax at ``bits``: the largest relative error ‖W − Ŵ‖ / ‖W‖, Ŵ the
        weight quantized with one scale max|W| / (2^(b−1) − 1) and dequantized. Reference:
        ``qlearn.affine.fake_quantize(W, "absmax", bits=bits)`` for each layer (Dettmers et al.
        2022, §2); any layer within 10⁻⁶ relative of the largest error is right.""",
        inputs=_real_layers,
        reference=_worst_layer,
        compare=_compare_worst,
        mistakes=[
            (
                _one_scale_per_row,
                "that is the worst layer with one scale per row; per tensor, one scale serves all",
            )
        ],
        hint="""for each name: w_hat = torch.round(w / scale) * scale with scale = w.abs().max() /
        (2**(bits - 1) - 1); error = (w - w_hat).norm() / w.norm(); return the name with the
        largest error (max(weights, key=...)).""",
        passed="""finds the layer per-tensor absmax serves worst in {n} sets of the course model's
        layers""",
    ),
]
