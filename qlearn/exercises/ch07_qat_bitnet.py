"""Chapter 07's exercises: QAT and BitNet b1.58. Taught in notebooks/07_qat_bitnet.ipynb."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from qlearn import bitnet, qat
from qlearn.exercises import _course
from qlearn.exercises._compare import (
    as_tensor,
    codes_then,
    compare_number,
    compare_numbers,
    compare_tensor,
    scalar,
    show,
)
from qlearn.exercises._runner import Case, Draw, Spec, tensors


def _clipping_scales(draw: Draw) -> list[Case]:
    """Float32 tensors at 2, 4 and 8 bits, with scales that clip some values."""
    cases = []
    for shape, bits, clip in [
        ((12,), 4, 0.6),
        ((4, 16), 2, 0.8),
        ((256,), 8, 0.5),
        ((8, 8), 4, 1.0),
    ]:
        x = torch.randn(shape, generator=draw.torch) * 2
        cases.append(Case((x, bits, round(float(x.abs().max()) * clip / (2 ** (bits - 1) - 1), 6))))
    return cases


def _forward_backward(answer: Callable[..., Any], x: torch.Tensor, bits: int, scale: float) -> Any:
    """(values, x.grad) after ``answer(x, bits, scale).sum().backward()``."""
    x = x.detach().clone().requires_grad_(True)
    y = answer(x, bits, scale)
    if not isinstance(y, torch.Tensor) or not y.requires_grad:
        return y if not isinstance(y, torch.Tensor) else (y.detach(), None)
    y.sum().backward()
    return y.detach(), x.grad


def _compare_ste(got: Any, expected: tuple, case: Case) -> str | None:
    x, _, scale = case.args
    if isinstance(got, torch.Tensor) or not isinstance(got, tuple):
        return f"expected a tensor, got {show(got)}"
    ties = (x / scale, torch.full_like(x, scale))
    if problem := compare_tensor(got[0], expected[0], rtol=1e-6, atol=1e-7 * scale, ties=ties):
        return f"values: {problem}"
    if got[1] is None:
        return (
            "no gradient reaches x (is the result detached, or computed without autograd?): "
            "x + (x_hat - x).detach() lets it through"
        )
    problem = compare_tensor(got[1], expected[1], rtol=0)
    return f"gradient: {problem}" if problem else None


def _wrong_gradient(got: Any, expected: tuple, value: float) -> bool:  # ``value`` everywhere
    return bool((got[1] == value).all()) and not torch.equal(got[1], expected[1])


def _trits(draw: Draw) -> list[Case]:
    """Random codes, lengths a multiple of 5 and not."""
    trits = [
        torch.randint(-1, 2, (n,), generator=draw.torch, dtype=torch.int8)
        for n in (5, 10, 12, 64, 257)
    ]
    return [Case((t,), f"n = {len(t)}") for t in trits]


def _compare_packed(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    got_t = as_tensor(got)
    if isinstance(got_t, torch.Tensor) and got_t.numel() and int(got_t.min()) < 0:
        return "expected bytes (0 to 242), got negative values: store the digits code + 1"
    return compare_tensor(got, expected, rtol=0)


def _ternary_products(draw: Draw) -> list[Case]:
    """int8 activation codes [tokens, in] from ``qlearn.bitnet.activation_quant_int8`` and
    ternary weight codes [out, in] from ``qlearn.bitnet.weight_quant_ternary``."""
    g, cases = draw.torch, []
    for tokens, features, out in [(1, 5, 2), (4, 16, 8), (8, 64, 32), (3, 256, 16)]:
        x = bitnet.activation_quant_int8(torch.randn(tokens, features, generator=g)).codes
        w = bitnet.weight_quant_ternary(torch.randn(out, features, generator=g)).codes
        cases.append(Case((x, w)))
    return cases


def _real_weights(draw: Draw) -> list[Case]:
    """Four decoder weights of the course's model (SmolLM2-135M-Instruct, its weights a Q4_1
    reconstruction), drawn by the seed."""
    return [
        Case((w,), name, shown={"w": shown}) for name, w, shown in _course.drawn_weights(draw, 4)
    ]


def _ternary_stats(w: torch.Tensor) -> tuple[float, float]:
    ternary = bitnet.weight_quant_ternary(w)
    w_hat = ternary.dequantize().double()
    zeros = float((ternary.codes == 0).double().mean())
    return zeros, float((w.double() - w_hat).norm() / w.double().norm())


def _absmax_zeros(got: Any, expected: tuple[float, float], case: Case) -> bool:
    (w,) = case.args
    share = float(((w / w.abs().max()).round() == 0).double().mean())
    return abs(float(got[0]) - share) < 1e-6


SPECS = [
    Spec(
        signature="fake_quantize_ste(x, bits, scale)",
        title="Fake quantization with an STE",
        doc="""→ x rounded to the grid scale · q, q = clamp(round(x / scale), −2^(b−1), 2^(b−1) −
        1), with the straight-through estimator as its gradient: 1 where round(x / scale) is
        inside the code range, 0 where it was clipped. The check calls ``fake_quantize_ste(x,
        bits, scale).sum().backward()`` and compares the values and ``x.grad``. Reference:
        ``qlearn.qat.fake_quantize`` and ``qlearn.qat.straight_through_mask`` (Bengio et al.
        2013; Nagel et al. 2021, §4.1): values within 10⁻⁶ relative, the gradient exactly.""",
        inputs=_clipping_scales,
        reference=lambda x, bits, scale: (
            qat.fake_quantize(x, bits=bits, scale=scale),
            qat.straight_through_mask(x, bits=bits, scale=scale),
        ),
        call=_forward_backward,
        compare=_compare_ste,
        mistakes=[
            (
                lambda got, expected, case: _wrong_gradient(got, expected, 0),
                "the gradient of torch.round is 0 everywhere: the STE is missing",
            ),
            (
                lambda got, expected, case: _wrong_gradient(got, expected, 1),
                "the gradient is 1 everywhere: clipped values must get 0",
            ),
        ],
        hint="""q = torch.round(x.detach() / scale); inside = (q >= qmin) & (q <= qmax); x_hat =
        q.clamp(qmin, qmax) * scale; return torch.where(inside, x + (x_hat - x).detach(), x_hat)
        — the gradient flows only through the first branch.""",
        passed="agrees with qlearn.qat.fake_quantize, values and gradients, on {n} tensors",
    ),
    Spec(
        signature="absmean_ternary(w)",
        title="Absmean ternary weights",
        doc="""→ (codes, gamma): BitNet b1.58's ternary codes clamp(round(w / γ), −1, 1) with γ =
        mean|w| over the whole tensor. Reference: ``qlearn.bitnet.weight_quant_ternary(w)`` (Ma
        et al. 2024, eq. 1–3): codes exactly (one off only where w / γ is within 10⁻⁴ of ±0.5),
        γ = its ``scale`` within 10⁻⁵ relative.""",
        inputs=tensors(
            "Normal, uniform and outlier-laden weights.",
            *[((10,), "normal"), ((8, 16), "uniform"), ((16, 64), "outlier"), ((32, 8), "normal")],
            scale=0.05,
        ),
        reference=lambda w: ((q := bitnet.weight_quant_ternary(w)).codes, float(q.scale)),
        compare=codes_then(
            ("codes", "gamma"), lambda x, e: x / e[1], partial(compare_number, rel=1e-5)
        ),
        mistakes=[
            (
                lambda got, expected, case: scalar(got[1]) == float(case.args[0].abs().max()),
                "gamma is max|w| (absmax): BitNet b1.58 takes the mean of |w|",
            )
        ],
        hint="gamma = w.abs().mean(); codes = torch.clamp(torch.round(w / gamma), -1, 1).",
        passed="agrees with qlearn.bitnet.weight_quant_ternary on {n} weights",
    ),
    Spec(
        signature="pack_trits(codes)",
        title="Five trits in a byte",
        doc="""→ ternary codes (1-D, n values in {−1, 0, 1}) packed five to a byte: uint8 [m],
        m = ⌈n / 5⌉, byte j = Σₖ dₖ · 3ᵏ over k = 0…4, dₖ = codes[j + k·m] + 1 (0 where j + k·m
        ≥ n). Reference: ``qlearn.bitnet.pack_ternary(codes)`` (five planes of m codes, the
        layout of section 6; 3⁵ = 243 ≤ 256, Ma et al. 2024), byte for byte.""",
        inputs=_trits,
        reference=lambda codes: bitnet.pack_ternary(codes),
        compare=_compare_packed,
        mistakes=[
            (
                lambda got, expected, case: int(as_tensor(got).max()) > 242,
                "a byte above 242 cannot hold five base-3 digits",
            )
        ],
        hint="""m = math.ceil(n / 5); digits = torch.zeros(5 * m); digits[:n] = codes + 1; planes =
        digits.reshape(5, m); byte = sum(planes[k] * 3**k for k in range(5)).""",
        passed="gives qlearn.bitnet.pack_ternary's bytes on {n} inputs",
    ),
    Spec(
        signature="ternary_matmul(x_codes, w_codes)",
        title="A matmul without multiplications",
        doc="""→ x_codes @ w_codesᵀ with additions and subtractions only: for each output, the sum
        of the inputs where w = +1 minus the sum of those where w = −1. Reference:
        ``qlearn.bitnet.ternary_matmul`` (Ma et al. 2024, Fig. 1), exactly (integers).""",
        inputs=_ternary_products,
        reference=lambda x, w: bitnet.ternary_matmul(x, w),
        mistakes=[
            (
                lambda got, expected, case: torch.equal(
                    as_tensor(got).long(), case.args[0].long() @ case.args[1].abs().long().T
                ),
                "the weights −1 were added, not subtracted",
            ),
            (
                lambda got, expected, case: (
                    as_tensor(got).shape == expected.shape and as_tensor(got).dtype == torch.int8
                ),
                "int8 sums overflow: accumulate in int32",
            ),
        ],
        hint="""x = x_codes.int()[:, None, :] is [tokens, 1, in]; torch.where(w_codes == 1, x,
        0).sum(-1) adds, torch.where(w_codes == -1, x, 0).sum(-1) is what to subtract.""",
        passed="agrees with qlearn.bitnet.ternary_matmul on {n} products",
    ),
    Spec(
        signature="ternary_stats(w)",
        title="Ternary weights of the real model",
        doc="""→ (the share of ``w``'s weights that BitNet b1.58's absmean quantization sets to
        0, the relative error ‖W − Ŵ‖ / ‖W‖ of the ternary weights Ŵ = γ · codes) for one
        scale γ = mean|W| over the tensor (exercise 2's rule, on a real layer). Reference:
        ``qlearn.bitnet.weight_quant_ternary`` (Ma et al. 2024, eq. 1–3), within 10⁻⁴
        relative (a float32 norm over a million weights differs in its sixth digit).""",
        inputs=_real_weights,
        reference=_ternary_stats,
        compare=compare_numbers(("share of zeros", "relative error"), rel=1e-4),
        mistakes=[
            (
                _absmax_zeros,
                "that is absmax's share of zeros (γ = max|W|); BitNet b1.58 scales by mean|W|",
            )
        ],
        hint="""gamma = w.abs().mean(); codes = torch.clamp(torch.round(w / gamma), -1, 1);
        zeros = (codes == 0).float().mean(); error = (w - gamma * codes).norm() / w.norm().""",
        passed="""agrees with qlearn.bitnet.weight_quant_ternary on {n} of the course model's
        weights""",
    ),
]
