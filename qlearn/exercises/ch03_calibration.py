"""Chapter 03's exercises: granularity, clipping, calibration.
Taught in notebooks/03_granularity_calibration.ipynb."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qlearn import affine, calibration
from qlearn.exercises import _course
from qlearn.exercises._compare import (
    compare_choice,
    compare_fields,
    compare_number,
    compare_tensor,
    sample,
)
from qlearn.exercises._runner import Case, Draw, Spec, settings


def _bits_of_a_real_tensor(bits: int, group_size: int, zero_point: bool) -> float:
    w = torch.randn(2, 2 * group_size, generator=torch.Generator().manual_seed(0))
    quantize = affine.zeropoint_quantize if zero_point else affine.absmax_quantize
    return quantize(w, bits, group_size=group_size).bits_per_weight(scale_bits=16)


def _clipped(draw: Draw) -> list[Case]:
    """Normal values with outliers, clipped inside and outside their range, at 4 and 8 bits."""
    table = [(10, 1.5, 8), (200, 5.0, 8), (200, 3.0, 4), (64, 40.0, 8), (500, 0.5, 4)]
    return [Case((sample((n,), "outlier", draw.torch), c, b)) for n, c, b in table]


def _compare_clipped(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    x, clip, bits = case.args
    step = torch.full_like(x, clip / (2 ** (bits - 1) - 1))
    return compare_tensor(got, expected, rtol=1e-6, atol=1e-7 * clip, ties=(x / step, step))


def _calibration_runs(draw: Draw) -> list[Case]:
    """Sequences of 1, 3 and 6 batches of different shapes (a fresh observer for each)."""
    g, cases = draw.torch, []
    for n in (1, 3, 6):
        batches = [
            sample((int(torch.randint(1, 5, (1,), generator=g)), 8), "outlier", g) * (i + 1)
            for i in range(n)
        ]
        cases.append(Case((batches,), f"{n} batches"))
    return cases


def _observe(observer: Any, batches: list[torch.Tensor]) -> Any:
    observer = observer()  # a fresh one (the answer is a class), fed every batch
    for batch in batches:
        observer.observe(batch)
    return observer


def _candidates(draw: Draw) -> list[Case]:
    """Normal values with outliers, 20 to 60 candidates each."""
    cases = []
    for size, bits, n in [(100, 8, 20), (1000, 4, 40), (1000, 8, 60), (300, 3, 30)]:
        x = sample((size,), "outlier", draw.torch)
        top = float(x.abs().max())
        candidates = [round(c, 4) for c in torch.linspace(top / n, top, n).tolist()]
        cases.append(Case((x, bits, candidates)))
    return cases


def _clip_errors(x: torch.Tensor, bits: int, candidates: Sequence[float]) -> list[float]:
    quantized = [calibration.clip_quantize(x, -c, c, bits=bits).dequantize() for c in candidates]
    return [float((x.double() - x_hat).square().sum()) for x_hat in quantized]


def _best_clip(x: torch.Tensor, bits: int, candidates: Sequence[float]) -> float:
    errors = _clip_errors(x, bits, candidates)
    return candidates[min(range(len(errors)), key=errors.__getitem__)]


def _real_layers(draw: Draw) -> list[Case]:
    """Three decoder weights of the course's model (SmolLM2-135M-Instruct, whose weights are a
    Q4_1 reconstruction) drawn by the seed, each at 8 and at 4 bits."""
    return [
        Case((w, bits), f"{name}, {bits}-bit", shown={"w": shown})
        for name, w, shown in _course.drawn_weights(draw, 3)
        for bits in (8, 4)
    ]


def _mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w.double() - w_hat.double()).pow(2).mean())


def _channel_gain(w: torch.Tensor, bits: int) -> float:
    per_tensor = affine.fake_quantize(w, "absmax", bits=bits)
    per_channel = affine.fake_quantize(w, "absmax", bits=bits, axis=0)
    return _mse(w, per_tensor) / _mse(w, per_channel)


SPECS = [
    Spec(
        signature="bits_per_weight(bits, group_size, zero_point)",
        title="What the scales cost",
        doc="""→ storage bits per weight with one FP16 scale per group and, if ``zero_point``,
        one ``bits``-bit zero point. Reference: ``QuantizedTensor.bits_per_weight()`` of a
        tensor really quantized by ``qlearn.affine`` (Nagel et al. 2021, §2.3), within 10⁻⁹.""",
        inputs=settings(
            """4 bits in groups of 128 with and without a zero point, 8 bits in groups of 32, and
            random settings.""",
            [(4, 128, False), (4, 128, True), (8, 32, False)],
            lambda rng: (rng.randint(2, 8), rng.choice((16, 32, 64, 128, 256)), rng.random() < 0.5),
            9,
        ),
        reference=_bits_of_a_real_tensor,
        rtol=1e-9,
        hint="each group of group_size weights adds 16 bits of scale (and `bits` of zero point).",
        passed="agrees with QuantizedTensor.bits_per_weight on {n} settings",
    ),
    Spec(
        signature="clipped_absmax(x, clip, bits)",
        title="Clip, then quantize",
        doc="""→ ``x`` quantized with absmax codes over [−clip, clip] (values beyond it land on
        the end codes), dequantized. Reference: ``qlearn.calibration.clip_quantize(x, -clip,
        clip, bits=bits).dequantize()`` (Wu et al. 2020, §3.4), within 10⁻⁶ relative; one step
        off only at a tie.""",
        inputs=_clipped,
        reference=lambda x, c, bits: calibration.clip_quantize(x, -c, c, bits=bits).dequantize(),
        compare=_compare_clipped,
        hint="""scale = clip / (2**(bits - 1) - 1); clamp the *codes* round(x / scale) to
        [-(2**(bits - 1) - 1), 2**(bits - 1) - 1], then multiply back by scale.""",
        passed="agrees with qlearn.calibration.clip_quantize on {n} tensors",
    ),
    Spec(
        signature="RangeObserver",
        arg_names=("batches",),
        title="A calibration observer",
        doc=""", a class with ``observe(x)`` (called once per calibration batch) and ``range()``
        → (smallest, largest) value of everything observed. Reference:
        ``qlearn.calibration.MinMaxObserver`` fed the same batches (its ``min`` and ``max``;
        Nagel et al. 2021, §3.1), exactly.""",
        inputs=_calibration_runs,
        reference=lambda batches: ((o := _observe(calibration.MinMaxObserver, batches)).min, o.max),
        call=lambda answer, batches: _observe(answer, batches).range(),
        compare=lambda got, expected, case: compare_fields(got, expected, ("smallest", "largest")),
        hint="keep a running min and max across calls: start from +inf and -inf.",
        passed="agrees with qlearn.calibration.MinMaxObserver on {n} calibration runs",
    ),
    Spec(
        signature="best_clip(x, bits, candidates)",
        title="The best clip by MSE",
        doc="""→ the candidate clip c whose range [−c, c] gives the smallest total squared error
        Σ(x − x̂)². Reference: every candidate quantized with
        ``qlearn.calibration.clip_quantize``, its error summed in float64 (Wu et al. 2020,
        §3.4); a candidate within 10⁻⁹ relative of the smallest error is right too.""",
        inputs=_candidates,
        reference=_best_clip,
        compare=compare_choice(
            _clip_errors, ("clip", "candidates", "a squared error"), rel=1e-9, match=(0.0, 1e-6)
        ),
        mistakes=[
            (
                lambda got, expected, case: got == case.args[2][-1],
                "the largest candidate is max|x|: that does not clip at all",
            )
        ],
        hint="""for each candidate c, quantize over [-c, c] (exercise 2), sum (x - x_hat)**2, and
        return the c with the smallest sum.""",
        passed="finds the smallest-error clip on all {n} tensors",
    ),
    Spec(
        signature="channel_gain(w, bits)",
        title="What one scale per row buys on a real layer",
        doc="""→ MSE(per tensor) / MSE(per row): how many times smaller the mean squared error of
        absmax at ``bits`` gets when each output row of ``w`` [out, in] has its own scale
        instead of one for the whole tensor. Reference: ``qlearn.affine.fake_quantize(w,
        "absmax", bits=bits)`` and the same with ``axis=0`` (Nagel et al. 2021, §2.3), within
        10⁻⁴ relative.""",
        inputs=_real_layers,
        reference=_channel_gain,
        compare=lambda got, expected, case: compare_number(got, expected, rel=1e-4),
        mistakes=[
            (
                lambda got, expected, case: abs(float(got) * expected - 1) < 1e-3,
                "the ratio is upside down: per-tensor MSE over per-row MSE (a gain above 1)",
            ),
            (
                lambda got, expected, case: (
                    abs(float(got) - _channel_gain(case.args[0].T, case.args[1]))
                    < 1e-4 * abs(float(got))
                ),
                "one scale per column (input channel); a channel is a row of w [out, in]",
            ),
        ],
        hint="""per tensor: scale = w.abs().max() / (2**(bits - 1) - 1); per row: scale =
        w.abs().amax(dim=1, keepdim=True) / (2**(bits - 1) - 1); Ŵ = torch.round(w / scale) *
        scale; MSE = ((w - Ŵ) ** 2).mean().""",
        passed="agrees with qlearn.affine.fake_quantize on {n} of the course model's weights",
    ),
]
