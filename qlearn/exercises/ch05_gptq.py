"""Chapter 05's exercises: GPTQ. Taught in notebooks/05_gptq.ipynb."""

from __future__ import annotations

from typing import Any

import torch

from qlearn import gptq
from qlearn.exercises import _course
from qlearn.exercises._compare import compare_number, compare_tensor
from qlearn.exercises._runner import Case, Draw, Spec


def _token_inputs(draw: Draw) -> list[Case]:
    """[tokens, in] matrices and one [batch, sequence, in] tensor, float32."""
    shapes = [(4, 3), (32, 8), (64, 24), (2, 16, 12)]
    return [
        Case((torch.randn(s, generator=draw.torch) * torch.logspace(-1, 0.5, s[-1]),))
        for s in shapes
    ]


def _hessian(X: torch.Tensor) -> torch.Tensor:
    accumulator = gptq.HessianAccumulator(X.shape[-1], dtype=torch.float64)
    accumulator.add_batch(X.double())
    return accumulator.hessian


def _rtn_layers(draw: Draw) -> list[Case]:
    """Random layers quantized by ``qlearn.gptq.rtn_quantize`` at 2 to 8 bits, with the
    Hessian of random inputs."""
    g, cases = draw.torch, []
    for rows, columns, bits in [(2, 3, 2), (8, 16, 4), (16, 32, 3), (4, 64, 8)]:
        W = torch.randn(rows, columns, generator=g)
        X = torch.randn(4 * columns, columns, generator=g) * torch.logspace(-1, 0.5, columns)
        W_hat = gptq.rtn_quantize(W, bits=bits).weight
        cases.append(Case((W, W_hat, 2 * X.T @ X / X.shape[0]), f"RTN {bits}-bit"))
    return cases


def _first_steps(draw: Draw) -> list[Case]:
    """Float64 layers whose inputs 0 and 1 move together (a large update), scale and zero
    from ``qlearn.gptq.rtn_quantize``."""
    g, cases = draw.torch, []
    for rows, columns, bits in [(1, 3, 2), (4, 6, 3), (8, 16, 4), (16, 32, 2)]:
        W = torch.randn(rows, columns, generator=g, dtype=torch.float64)
        X = torch.randn(3 * columns, columns, generator=g, dtype=torch.float64)
        X[:, 1] = X[:, 0] + 0.3 * X[:, 1]
        rtn, Hinv = gptq.rtn_quantize(W, bits=bits), torch.linalg.inv(2 * X.T @ X / X.shape[0])
        args = (W, Hinv, rtn.scale.view(-1), rtn.zero.view(-1).double(), bits)
        cases.append(Case(args, f"{bits}-bit"))
    return cases


def _first_column(W: torch.Tensor, Hinv: torch.Tensor, scale: Any, zero: Any, bits: int) -> Any:
    W = W.clone()
    gptq.obs_step_(W, Hinv, 0, scale, zero, bits)
    return W


def _layers(draw: Draw) -> list[Case]:
    """Float64 layers of up to 16 × 24 and the Hessians of random inputs, some of them
    strongly correlated."""
    g, cases = draw.torch, []
    for rows, columns, bits in [(1, 3, 2), (4, 8, 3), (8, 16, 4), (16, 24, 2)]:
        W = torch.randn(rows, columns, generator=g, dtype=torch.float64)
        X = torch.randn(4 * columns, columns, generator=g, dtype=torch.float64)
        X[:, 1::2] = X[:, 0::2][:, : X[:, 1::2].shape[1]] + 0.2 * X[:, 1::2]  # correlated pairs
        cases.append(Case((W, 2 * X.T @ X / X.shape[0], bits)))
    return cases


def _same_shape(got: Any, expected: torch.Tensor) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == expected.shape


def _real_layers(draw: Draw) -> list[Case]:
    """Two k_proj / v_proj weights [192, 576] of the course's model (SmolLM2-135M-Instruct, its
    weights a Q4_1 reconstruction) drawn by the seed, with what they receive on 4 windows of
    128 tokens of *Emma* drawn by the seed (X [512, 576]); at 4 and 3 bits."""
    names = _course.layer_names("k_proj") + _course.layer_names("v_proj")
    return [
        Case((W, X, b), f"{name}, {b}-bit", shown=shown)
        for name, W, X, shown in _course.drawn_layers_and_inputs(draw, names, 2, 4, 128)
        for b in (4, 3)
    ]


def _gptq_gain(W: torch.Tensor, X: torch.Tensor, bits: int) -> float:
    H = _hessian(X)
    rtn = gptq.rtn_quantize(W.double(), bits=bits).weight
    ours = gptq.gptq_quantize(W.double(), H, bits=bits).weight  # 1 % damping, the default
    return gptq.layer_error(W, rtn, H) / gptq.layer_error(W, ours, H)


SPECS = [
    Spec(
        signature="layer_hessian(X)",
        title="The layer Hessian",
        doc="""→ the layer Hessian H = 2/N · Σ x xᵀ of the inputs ``X`` [..., in_features] a
        linear layer receives (every leading index is a token). Reference:
        ``qlearn.gptq.HessianAccumulator`` fed ``X`` in one batch (Frantar et al. 2023, §3),
        in float64, within 10⁻⁵ of its largest entry.""",
        inputs=_token_inputs,
        reference=_hessian,
        compare=lambda got, expected, case: compare_tensor(
            got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
        ),
        mistakes=[
            (
                lambda got, expected, case: torch.allclose(2 * got.double(), expected),
                "this is half of H: the factor 2 is missing",
            )
        ],
        hint="""flatten the tokens first: X2 = X.reshape(-1, X.shape[-1]) is [N, in]; then H = 2 /
        N * X2.T @ X2, which is [in, in].""",
        passed="agrees with qlearn.gptq.HessianAccumulator on {n} batches of inputs",
    ),
    Spec(
        signature="layer_error(W, W_hat, H)",
        title="The output error from H",
        doc="""→ ½ tr(Δ H Δᵀ) with Δ = W − Ŵ: the layer's output error per token, ‖WX − ŴX‖² /
        N, read from the Hessian alone. Reference: ``qlearn.gptq.layer_error`` (Frantar et al.
        2023, eq. 1), within 10⁻⁵ relative.""",
        inputs=_rtn_layers,
        reference=lambda W, W_hat, H: gptq.layer_error(W, W_hat, H),
        rtol=1e-5,
        mistakes=[
            (
                lambda got, expected, case: abs(float(got) / expected - 2) < 1e-5,
                "this is twice the error: the ½ is missing",
            )
        ],
        hint="""delta = W - W_hat is [out, in]; each row r costs ½ δ_r H δ_rᵀ: 0.5 * (delta @ H *
        delta).sum() — or 0.5 * torch.trace(delta @ H @ delta.T).""",
        passed="agrees with qlearn.gptq.layer_error on {n} layers",
    ),
    Spec(
        signature="gptq_step(W, Hinv, scale, zero, bits)",
        title="One GPTQ step",
        doc="""→ ``W`` after one GPTQ step: column 0 on each row's grid, q = clamp(round(w /
        scale) + zero, 0, 2^bits − 1), ŵ = scale · (q − zero) (scale, zero: [rows]); the
        other columns moved to cancel its error, W[:, 1:] −= ((w − ŵ) / Hinv[0, 0]) ⊗ Hinv[0,
        1:]. Reference: ``qlearn.gptq.obs_step_`` on column 0 of a copy of W (the optimal brain
        surgeon update, Frantar et al. 2023, eq. 2), in float64, within 10⁻⁹ relative.""",
        inputs=_first_steps,
        reference=_first_column,
        rtol=1e-9,
        atol=1e-12,
        mistakes=[
            (
                lambda got, expected, case: (
                    _same_shape(got, expected)
                    and torch.allclose(got[:, 1:].double(), case.args[0][:, 1:])
                ),
                "the other columns did not move: the update is missing",
            ),
            (
                lambda got, expected, case: (
                    _same_shape(got, expected)
                    and not torch.allclose(got[:, 0].double(), expected[:, 0])
                ),
                "column 0 is not on the row's grid point nearest to it",
            ),
        ],
        hint="""w = W[:, 0]; w_hat = scale * (torch.clamp(torch.round(w / scale) + zero, 0,
        2**bits - 1) - zero); err = (w - w_hat) / Hinv[0, 0]; then W[:, 1:] -= torch.outer(err,
        Hinv[0, 1:]) on a copy of W, with W[:, 0] = w_hat.""",
        passed="agrees with the OBS update of GPTQ's eq. 2 on {n} layers",
    ),
    Spec(
        signature="gptq_layer(W, H, bits)",
        title="GPTQ on a whole layer",
        doc="""→ Ŵ, the layer quantized by GPTQ column after column in their natural order,
        without damping: each row's grid fitted on the original W (as ``gptq.rtn_quantize``
        does); after each column the update of exercise 3, then that column leaves H⁻¹ (eq. 3:
        Hinv ← Hinv[1:, 1:] − Hinv[1:, 0] ⊗ Hinv[0, 1:] / Hinv[0, 0]). Reference:
        ``qlearn.gptq.gptq_quantize(W, H, bits=bits, percdamp=0).weight`` (Frantar et al. 2023,
        Algorithm 1), in float64, within 10⁻⁷ of the largest weight.""",
        inputs=_layers,
        reference=lambda W, H, bits: gptq.gptq_quantize(W, H, bits=bits, percdamp=0.0).weight,
        compare=lambda got, expected, case: compare_tensor(
            got, expected, rtol=1e-7, atol=1e-7 * float(case.args[0].abs().max())
        ),
        mistakes=[
            (
                lambda got, expected, case: torch.allclose(
                    got.double(), gptq.rtn_quantize(case.args[0], bits=case.args[2]).weight
                ),
                "this is round-to-nearest: the updates of the later columns are missing",
            )
        ],
        hint="""q = gptq.rtn_quantize(W, bits=bits) gives scale and zero; Hinv =
        torch.linalg.inv(H); for each column j: W[:, j:] = gptq_step(W[:, j:], Hinv, ...), then
        Hinv = Hinv[1:, 1:] - torch.outer(Hinv[1:, 0], Hinv[0, 1:]) / Hinv[0, 0].""",
        passed="agrees with qlearn.gptq.gptq_quantize on {n} layers",
    ),
    Spec(
        signature="gptq_gain(W, X, bits)",
        title="What GPTQ buys on a real layer",
        doc="""→ the output error of round-to-nearest divided by GPTQ's, both as exercise 2
        measures it (½ tr(Δ H Δᵀ) with H from the inputs ``X`` as in exercise 1), for the real
        layer ``W`` at ``bits`` (one min/max grid per row, GPTQ with the reference's damping of
        1 % of mean(diag H): X has fewer tokens than dimensions, so H alone is singular).
        Reference: ``qlearn.gptq.rtn_quantize``, ``gptq_quantize`` and ``layer_error``
        (Frantar et al. 2023, eq. 1 and Algorithm 1), in float64, within 2 % relative: a few
        codes of GPTQ follow the last bits of the arithmetic.""",
        inputs=_real_layers,
        reference=_gptq_gain,
        compare=lambda got, expected, case: compare_number(got, expected, rel=0.02),
        mistakes=[
            (
                lambda got, expected, case: abs(float(got) * expected - 1) < 0.05,
                "the ratio is upside down: RTN's error over GPTQ's (a gain above 1)",
            )
        ],
        hint="""H = layer_hessian(X) (exercise 1); rtn = gptq.rtn_quantize(W, bits=bits).weight;
        q = gptq.gptq_quantize(W, H, bits=bits).weight (its default damping); then
        layer_error(W, rtn, H) / layer_error(W, q, H) (exercise 2).""",
        passed="agrees with qlearn.gptq on {n} of the course model's layers",
    ),
]
