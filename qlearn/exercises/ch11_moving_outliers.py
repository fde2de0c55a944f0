"""Chapter 11's exercises: moving the outliers (SmoothQuant's scale, a Hadamard matrix, folding a
norm into a linear, KIVI's keys per channel). Taught in notebooks/11_moving_outliers.ipynb."""

from __future__ import annotations

from typing import Any

import torch

from qlearn import kvcache, rotation, smoothquant
from qlearn.exercises._compare import compare_tensor
from qlearn.exercises._runner import Case, Draw, Spec


def _smoothing_inputs(draw: Draw) -> list[Case]:
    """Activation maxima with one outlier channel and a dead one, the weight of one layer or
    of three sharing the input (q, k, v), α from 0 to 1."""
    cases = []
    for channels, layers, alpha, note in [
        (8, 1, 0.5, ""),
        (16, 3, 0.5, "three layers share the input"),
        (32, 2, 0.85, "α = 0.85"),
        (12, 1, 0.0, "α = 0"),
        (12, 1, 1.0, "α = 1"),
    ]:
        act = torch.rand(channels, generator=draw.torch) * 5
        act[draw.py.randrange(channels)] *= 50
        if note == "α = 1":
            act[0] = 0.0  # a channel that never fired: the 1e-5 clamp on s
        weights = [torch.randn(6, channels, generator=draw.torch) * 0.05 for _ in range(layers)]
        cases.append(Case((act, weights if layers > 1 else weights[0], alpha), note))
    return cases


def _smoothing(act: torch.Tensor, weight: Any, alpha: float) -> torch.Tensor:
    return smoothquant.smoothing_scales(act, weight, alpha=alpha)


def _swapped_exponents(got: Any, expected: torch.Tensor, case: Case) -> bool:
    act, weight, alpha = case.args
    if alpha == 0.5:
        return False
    swapped = smoothquant.smoothing_scales(act, weight, alpha=1 - alpha)
    return isinstance(got, torch.Tensor) and compare_tensor(got, swapped, rtol=1e-3) is None


def _one_weight_only(got: Any, expected: torch.Tensor, case: Case) -> bool:
    act, weight, alpha = case.args
    if isinstance(weight, torch.Tensor):
        return False
    first = smoothquant.smoothing_scales(act, weight[0], alpha=alpha)
    return isinstance(got, torch.Tensor) and compare_tensor(got, first, rtol=1e-5) is None


def _orders(draw: Draw) -> list[Case]:
    """Order 1, then five powers of two drawn from 2 to 256."""
    drawn = sorted(draw.py.sample([2, 4, 8, 16, 32, 64, 128, 256], 5))
    return [Case((n,)) for n in (1, *drawn)]


def _hadamard(n: int) -> torch.Tensor:
    return rotation.hadamard(n)


def _compare_hadamard(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=0, atol=1e-6)


def _not_normalized(got: Any, expected: torch.Tensor, case: Case) -> bool:
    (n,) = case.args
    scaled = expected * n**0.5
    return (
        isinstance(got, torch.Tensor) and n > 1 and compare_tensor(got, scaled, atol=1e-6) is None
    )


def _fold_inputs(draw: Draw) -> list[Case]:
    """An RMSNorm weight γ [in] and the weight [out, in] of a linear after it; square and not."""
    cases = []
    for out, inputs, note in [(4, 4, "square"), (6, 3, ""), (5, 16, "wider than tall")]:
        gamma = torch.rand(inputs, generator=draw.torch) * 2 + 0.1
        weight = torch.randn(out, inputs, generator=draw.torch)
        cases.append(Case((gamma, weight), note))
    return cases


def _fold(gamma: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * gamma[None, :]


def _rows_scaled(got: Any, expected: torch.Tensor, case: Case) -> bool:
    gamma, weight = case.args
    if weight.shape[0] != weight.shape[1]:
        return False
    return isinstance(got, torch.Tensor) and compare_tensor(got, weight * gamma[:, None]) is None


def _key_blocks(draw: Draw) -> list[Case]:
    """Keys [batch, heads, tokens, head_dim] with two outlier channels, at 2, 3, 4 and 8 bits;
    one block with a constant channel (its scale is 0)."""
    cases = []
    for bits, note in [(2, ""), (3, ""), (4, "a constant channel"), (8, "")]:
        keys = torch.randn(1, 2, 16, 8, generator=draw.torch)
        keys[..., [1, 6]] *= 20
        if note:
            keys[..., 3] = 0.5
        cases.append(Case((keys, bits), note))
    return cases


def _per_channel(keys: torch.Tensor, bits: int) -> torch.Tensor:
    return kvcache.quantize_per_channel(keys, bits=bits).dequantize()


def _compare_keys(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=1e-3, atol=1e-3)


def _per_token(got: Any, expected: torch.Tensor, case: Case) -> bool:
    keys, bits = case.args
    wrong = kvcache.quantize_per_token(keys, bits=bits).dequantize()
    return (
        isinstance(got, torch.Tensor) and compare_tensor(got, wrong, rtol=1e-3, atol=1e-3) is None
    )


SPECS = [
    Spec(
        signature="smoothing_scales(act_absmax, weight, alpha)",
        title="SmoothQuant's scale",
        doc="""→ s [in], one per input channel j: s_j = max|X_j|^α / max|W_j|^(1−α), with
        ``act_absmax`` [in] the activations' maxima and max|W_j| the largest |w| of column j over
        every row of ``weight`` ([out, in], or a list of such weights that share the input:
        take the maximum over all their rows); clamp max|W_j| and s below at 1e-5, as the
        authors do. Reference: ``qlearn.smoothquant.smoothing_scales`` (Xiao et al. 2023,
        eq. 4), within 10⁻⁵ relative.""",
        inputs=_smoothing_inputs,
        reference=_smoothing,
        rtol=1e-5,
        mistakes=[
            (
                _swapped_exponents,
                "the exponents are swapped: α goes on the activations, 1 − α on the weights",
            ),
            (_one_weight_only, "only the first weight counts: take max|W_j| over every layer"),
        ],
        hint="""if not isinstance(weight, torch.Tensor): weight = torch.cat(list(weight));
        w_max = weight.abs().amax(dim=0).clamp(min=1e-5); return (act_absmax ** alpha /
        w_max ** (1 - alpha)).clamp(min=1e-5).""",
        passed="agrees with qlearn.smoothquant.smoothing_scales on {n} layers",
    ),
    Spec(
        signature="hadamard_matrix(n)",
        title="A Hadamard matrix and its inverse",
        doc="""→ Sylvester's Hadamard matrix of order n (a power of two), normalized so that it is
        orthogonal: H₁ = [1], H₂ₖ = [[Hₖ, Hₖ], [Hₖ, −Hₖ]] / √2 (so H Hᵀ = I and its inverse is
        its transpose). Reference: ``qlearn.rotation.hadamard`` (Sylvester 1867), within
        10⁻⁶.""",
        inputs=_orders,
        reference=_hadamard,
        compare=_compare_hadamard,
        mistakes=[(_not_normalized, "entries ±1: divide by √n to make it orthogonal")],
        hint="""h = torch.ones(1, 1, dtype=torch.float64); while h.shape[0] < n: h =
        torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)]) / 2 ** 0.5; return h.""",
        passed="agrees with qlearn.rotation.hadamard on {n} orders",
    ),
    Spec(
        signature="fold_norm(gamma, weight)",
        title="Folding a norm into the next linear",
        doc="""→ the weight W' [out, in] of a linear that, fed RMSNorm's output *without* its
        weight γ, computes what ``weight`` computed fed the output with it: y = (x̂ ⊙ γ) Wᵀ =
        x̂ (W diag(γ))ᵀ. Reference: QuaRot's ``fuse_layer_norms`` as ``qlearn.rotation.
        fold_norms_`` does it (Ashkboos et al. 2024, §4), within 10⁻⁶ relative.""",
        inputs=_fold_inputs,
        reference=_fold,
        rtol=1e-6,
        mistakes=[(_rows_scaled, "γ scales the rows: it belongs to the input columns")],
        hint="""return weight * gamma[None, :]  (column j of W times γ_j).""",
        passed="folds {n} norms as qlearn.rotation.fold_norms_ does",
    ),
    Spec(
        signature="quantize_keys_per_channel(keys, bits)",
        title="KIVI's keys, per channel",
        doc="""→ the dequantized keys, the shape of ``keys`` [batch, heads, tokens, head_dim]:
        each channel over the block's tokens gets its own minimum m and scale s = (max − m) /
        (2ᵇ − 1), both rounded to float16; codes q = round((k − m) / s) clamped to [0, 2ᵇ − 1]
        (a constant channel, s = 0, gets codes 0); k ≈ m + s · q. Reference:
        ``qlearn.kvcache.quantize_per_channel`` (Liu et al. 2024, §3.2), within 10⁻³.""",
        inputs=_key_blocks,
        reference=_per_channel,
        compare=_compare_keys,
        mistakes=[(_per_token, "per token: the minimum and scale run over the tokens (dim −2)")],
        hint="""lo, hi = keys.amin(-2, keepdim=True), keys.amax(-2, keepdim=True); m = lo.half().
        float(); s = ((hi - m) / (2**bits - 1)).half().float(); q = torch.round((keys - m) /
        torch.where(s > 0, s, 1)).clamp(0, 2**bits - 1); return m + s * q.""",
        passed="agrees with qlearn.kvcache.quantize_per_channel on {n} blocks",
    ),
]
