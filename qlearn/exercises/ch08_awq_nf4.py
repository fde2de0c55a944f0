"""Chapter 08's exercises: NF4 and AWQ. Taught in notebooks/08_awq_nf4.ipynb."""

from __future__ import annotations

from typing import Any

import torch

from qlearn import awq, nf4
from qlearn.exercises import _course
from qlearn.exercises._compare import (
    as_tensor,
    compare_choice,
    compare_numbers,
    compare_tensor,
)
from qlearn.exercises._runner import Case, Draw, Spec, settings, tensors


def _compare_nf4_codes(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    got = as_tensor(got)
    if isinstance(got, str):
        return got
    if got.is_floating_point() and not bool((got == got.round()).all()):
        return "expected integer codes (indices into NF4_LEVELS), got fractions"
    problem = compare_tensor(
        got if got.is_floating_point() else got.long(), expected.long(), rtol=0
    )
    if not problem or got.shape != expected.shape:
        return problem
    levels = nf4.NF4_LEVELS.double()
    midpoints = (levels[:-1] + levels[1:]) / 2
    scaled = case.args[0].double() / case.args[0].abs().max()
    near = (scaled[:, None] - midpoints[None, :]).abs().min(dim=1).values < 1e-6
    diff = (got.double() - expected.double()).abs()
    return None if bool(((diff == 0) | (near & (diff == 1))).all()) else problem  # either neighbour


def _nf4_bits(n: int, blocksize: int, double_quant: bool) -> float:
    w = torch.randn(n, generator=torch.Generator().manual_seed(0))
    return nf4.nf4_quantize(w, blocksize=blocksize, double_quant=double_quant).bits_per_weight()


def _channel_means(draw: Draw) -> list[Case]:
    """Activation magnitudes with a few salient channels, one with a channel that never fires
    (s_X = 0), α from 0 to 1."""
    g, cases = draw.torch, []
    for size, alpha in [(8, 0.5), (64, 0.0), (64, 0.25), (128, 0.9), (16, 1.0)]:
        x_mean = torch.rand(size, generator=g) * 0.5 + 0.05
        x_mean[torch.randperm(size, generator=g)[: max(1, size // 16)]] *= 30
        if alpha == 0.9:
            x_mean[3] = 0.0
        cases.append(Case((x_mean, alpha), f"alpha = {alpha}"))
    return cases


def _salient_layers(draw: Draw) -> list[Case]:
    """Layers [out, in] fed activations with a few salient channels (10–50× larger), 4 and 3
    bits, groups of 32 or 64."""
    g, cases = draw.torch, []
    settings = [(8, 32, 16, 4, 32), (16, 64, 32, 4, 32), (16, 128, 24, 3, 64), (32, 64, 64, 3, 32)]
    for out, features, tokens, bits, group_size in settings:
        W = torch.randn(out, features, generator=g) * 0.05
        X = torch.randn(tokens, features, generator=g)
        salient = torch.randperm(features, generator=g)[: max(1, features // 32)]
        X[:, salient] *= torch.rand(len(salient), generator=g) * 40 + 10
        alphas = [i / 10 for i in range(10)]
        cases.append(Case((W, X, alphas, bits, group_size), f"{bits}-bit, groups of {group_size}"))
    return cases


def _search(
    W: torch.Tensor, X: torch.Tensor, alphas: list[float], bits: int, group_size: int
) -> Any:
    linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(W)
    return awq.search_scale(linear, [linear], X, bits=bits, group_size=group_size, alphas=alphas)


KEEP = 6  # of 576 input channels: the 1 % of AWQ's Table 1


def _real_layers(draw: Draw) -> list[Case]:
    """Two q_proj / gate_proj / up_proj weights (576 input channels) of the course's model
    (SmolLM2-135M-Instruct, its weights a Q4_1 reconstruction) drawn by the seed, with what
    they receive on 2 windows of 128 tokens of *Emma* drawn by the seed (X [256, 576])."""
    names = [
        *_course.layer_names("self_attn.q_proj"),
        *_course.layer_names("mlp.gate_proj"),
        *_course.layer_names("mlp.up_proj"),
    ]
    return [
        Case((W, X, KEEP), name, shown=shown)
        for name, W, X, shown in _course.drawn_layers_and_inputs(draw, names, 2, 2, 128)
    ]


def _output_mse(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    return float((X.double() @ (W.double() - W_hat.double()).T).pow(2).mean())


def _kept(W: torch.Tensor, channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rtn = awq.pseudo_quantize(W, bits=4, group_size=128)
    kept = rtn.clone()
    kept[:, channels] = W[:, channels]
    return rtn, kept


def _salient_errors(W: torch.Tensor, X: torch.Tensor, keep: int) -> tuple[float, float]:
    channels = X.abs().mean(dim=0).topk(keep).indices
    rtn, kept = _kept(W, channels)
    return _output_mse(W, rtn, X), _output_mse(W, kept, X)


def _by_weight(got: Any, expected: tuple[float, float], case: Case) -> bool:
    W, X, keep = case.args
    _, kept = _kept(W, W.abs().mean(dim=0).topk(keep).indices)
    return abs(float(got[1]) / _output_mse(W, kept, X) - 1) < 1e-3


SPECS = [
    Spec(
        signature="nf4_codes(x)",
        title="NF4 codes of a block",
        doc="""→ the NF4 codes of one block: for each value, the index (0–15) of the level of
        ``nf4.NF4_LEVELS`` nearest to x / max|x|. Reference: ``qlearn.nf4.nf4_quantize(x,
        blocksize=len(x)).codes`` (Dettmers et al. 2023, §3, eq. 4; bitsandbytes' codes),
        exactly; either neighbour where x / max|x| is within 10⁻⁶ of a midpoint of two levels.""",
        inputs=tensors(
            "Normal, uniform and outlier-laden blocks of 16 to 256 values.",
            *[((16,), "normal"), ((64,), "normal"), ((64,), "uniform"), ((256,), "outlier")],
            ((128,), "negative"),
            scale=0.02,
        ),
        reference=lambda x: nf4.nf4_quantize(x, blocksize=x.numel()).codes,
        compare=_compare_nf4_codes,
        mistakes=[
            (
                lambda got, expected, case: torch.equal(
                    as_tensor(got).double(),
                    torch.round((case.args[0] / case.args[0].abs().max() + 1) * 7.5).double(),
                ),
                "these are the codes of a uniform grid: NF4's levels are the normal's quantiles",
            )
        ],
        hint="""scaled = x / x.abs().max(); codes = (scaled[:, None] - nf4.NF4_LEVELS[None,
        :]).abs().argmin(dim=1): the nearest level, not a uniform grid.""",
        passed="agrees with qlearn.nf4.nf4_quantize on {n} blocks",
    ),
    Spec(
        signature="nf4_bits_per_weight(n, blocksize, double_quant)",
        title="What NF4 costs",
        doc="""→ the storage of ``n`` weights in NF4, in bits per weight, counted from the bytes:
        4 bits per code; one float32 absmax per block; with double quantization instead one byte
        per block, one float32 absmax per 256 of those (⌈blocks / 256⌉) and one float32 offset.
        Reference: ``qlearn.nf4.nf4_quantize(w, blocksize=..., double_quant=...)
        .bits_per_weight()`` of a real tensor (Dettmers et al. 2023, §3), within 10⁻⁹
        relative.""",
        inputs=settings(
            "The sizes of the default model's matrices and random ones.",
            [(576 * 576, 64, False), (576 * 576, 64, True), (576 * 1536, 64, True)],
            lambda rng: (
                (size := rng.choice((32, 64, 128, 256))) * rng.randint(1, 700),
                size,
                rng.random() < 0.6,
            ),
            5,
        ),
        reference=_nf4_bits,
        rtol=1e-9,
        hint="""count bytes: n / 2 for the codes; blocks = n // blocksize; 4 * blocks for float32
        absmax, or with double quantization blocks + 4 * ceil(blocks / 256) + 4; then 8 * bytes
        / n.""",
        passed="agrees with Quantized4bit.bits_per_weight on {n} settings",
    ),
    Spec(
        signature="awq_scales(x_mean, alpha)",
        title="AWQ's scales",
        doc="""→ AWQ's per-channel scales s = s_X^α, clamped at 10⁻⁴ from below, divided by √(max
        s · min s); ``x_mean`` is s_X, the mean |x| of each input channel. Reference:
        ``qlearn.awq.awq_scales`` (Lin et al. 2024, §3.2, eq. 5, and the authors'
        normalisation), within 10⁻⁵ relative.""",
        inputs=_channel_means,
        reference=lambda x_mean, alpha: awq.awq_scales(x_mean, alpha),
        rtol=1e-5,
        mistakes=[
            (
                lambda got, expected, case: not bool(torch.isfinite(as_tensor(got)).all()),
                "a channel that never fires gives 0 or inf: clamp s at 1e-4 before normalising",
            )
        ],
        hint="""s = x_mean.pow(alpha).clamp(min=1e-4) (a dead channel must not give 0 or inf);
        return s / (s.max() * s.min()).sqrt().""",
        passed="agrees with qlearn.awq.awq_scales on {n} inputs",
    ),
    Spec(
        signature="best_alpha(W, X, alphas, bits, group_size)",
        title="The best alpha",
        doc="""→ the α of ``alphas`` whose scales s = awq_scales(mean |X| per channel, α) give the
        smallest output error mean((X Ŵᵀ − X Wᵀ)²) with Ŵ = Q(W · s) / s, Q =
        ``awq.pseudo_quantize``. Reference: ``qlearn.awq.search_scale`` on an ``nn.Linear``
        holding W (Lin et al. 2024, §3.2, eq. 4); an α within 10⁻⁵ relative of the smallest
        error is right too.""",
        inputs=_salient_layers,
        reference=lambda *args: _search(*args).alpha,
        compare=compare_choice(
            lambda *args: _search(*args).errors,
            ("alpha", "alphas", "an output error"),
            rel=1e-5,
            match=(1e-6, 0.0),
        ),
        hint="""s = awq_scales(X.abs().mean(dim=0), alpha); W_hat = awq.pseudo_quantize(W * s,
        bits=bits, group_size=group_size) / s; error = ((X @ W_hat.T - X @ W.T) ** 2).mean():
        the error of the *output*, not of the weights.""",
        passed="finds the smallest-error alpha of qlearn.awq.search_scale on {n} layers",
    ),
    Spec(
        signature="salient_errors(W, X, keep)",
        title="Keep 1 % of the channels, chosen by the activations",
        doc="""→ (the output MSE of ``W`` rounded to nearest at 4 bits in groups of 128, the
        output MSE when the ``keep`` input channels with the largest mean |x| over ``X`` keep
        their FP32 weights and the rest is rounded as before), each mean((X Wᵀ − X Ŵᵀ)²) over
        tokens and outputs. Reference: ``qlearn.awq.pseudo_quantize(W, bits=4,
        group_size=128)`` and s_X = mean|x| (Lin et al. 2024, §3.1 and Table 1), within 10⁻⁴
        relative.""",
        inputs=_real_layers,
        reference=_salient_errors,
        compare=compare_numbers(
            ("RTN's output MSE", "output MSE with the salient channels kept"), rel=1e-4
        ),
        mistakes=[
            (
                _by_weight,
                "the channels were chosen by the weights' size; AWQ chooses by the activations' "
                "mean |x|",
            )
        ],
        hint="""rtn = awq.pseudo_quantize(W, bits=4, group_size=128); salient =
        X.abs().mean(dim=0).topk(keep).indices; kept = rtn.clone(); kept[:, salient] = W[:,
        salient]; MSE = ((X @ (W - Ŵ).T) ** 2).mean() for Ŵ = rtn and Ŵ = kept.""",
        passed="agrees with qlearn.awq.pseudo_quantize on {n} of the course model's layers",
    ),
]
