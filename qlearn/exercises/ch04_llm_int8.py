"""Chapter 04's exercises: outlier features and LLM.int8().
Taught in notebooks/04_llm_int8.ipynb."""

from __future__ import annotations

from typing import Any

import torch

from qlearn import int8
from qlearn.exercises import _course
from qlearn.exercises._compare import activations, as_tensor, codes_then, compare_tensor, show
from qlearn.exercises._runner import Case, Draw, Spec


def _outlier_activations(draw: Draw) -> list[Case]:
    """Activations with systematic outlier columns, an isolated outlier, negative outliers,
    none at all, and a value exactly at the threshold."""
    table = [(4, 6, 6.0), (16, 64, 6.0), (8, 32, 3.0), (5, 10, 100.0)]
    cases = [Case((activations(t, f, draw.torch), threshold)) for t, f, threshold in table]
    at_threshold = torch.randn(6, 16, generator=draw.torch).clamp(-3, 3)
    at_threshold[2, 7] = -5.0
    return [*cases, Case((at_threshold, 5.0), "|x| exactly at threshold")]


def _compare_columns(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    got = as_tensor(got)
    if isinstance(got, str):
        return got
    if got.dtype == torch.bool and got.shape == (case.args[0].shape[-1],):
        got = torch.argwhere(got).view(-1)  # a mask over the columns is accepted too
    if got.numel() == 0:  # an empty list has no integer dtype to show
        got = got.long()
    if got.is_floating_point() or got.dtype == torch.bool:
        return f"expected integer column indices, got {show(got)}"
    if got.flatten().tolist() != expected.tolist():
        return f"expected columns {expected.tolist()}, got {got.flatten().tolist()}"
    return None


def _rows(draw: Draw) -> list[Case]:
    """Activations with outliers, one with a row of zeros (its codes are 0)."""
    cases = [Case((activations(t, f, draw.torch),)) for t, f in [(4, 8), (16, 64), (3, 128)]]
    zero_row = activations(4, 16, draw.torch)
    zero_row[2] = 0
    return [*cases, Case((zero_row,), "row 2 is all zeros")]


def _row_absmax(got: Any, want: torch.Tensor) -> str | None:
    if isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape[-1] == 1:
        got = got.view(-1)  # [rows, 1] is accepted as [rows]
    return compare_tensor(got, want, rtol=0)


def _products(shapes: list[tuple]) -> Any:
    def products(draw: Draw) -> list[Case]:
        cases = []
        for tokens, features, out, *threshold in shapes:
            W = torch.randn(out, features, generator=draw.torch) * 0.1
            cases.append(Case((activations(tokens, features, draw.torch), W, *threshold)))
        return cases

    products.__doc__ = "Activations with outliers (and without), weights N(0, 0.1²)."
    return products


def _compare_product(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _in_float(got: Any, expected: Any, case: Case) -> bool:
    got, exact = as_tensor(got), case.args[0].double() @ case.args[1].double().T
    return got.shape == exact.shape and torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-6)


_FLOAT_PRODUCT = (_in_float, "this is X @ W.T in float: the int8 rounding is missing")

LAYER_SHARE = 0.25  # Dettmers et al. 2022, §4: at least 25 % of the layers ...
TOKEN_SHARE = 0.06  # ... and at least 6 % of the tokens


def _real_inputs(draw: Draw) -> list[Case]:
    """What the q_proj and gate_proj of every decoder layer of the course's model
    (SmolLM2-135M-Instruct, its weights a Q4_1 reconstruction) receive on four windows of 128
    tokens of *Emma* drawn by the seed: the normalized residual stream, 60 × [512, 576]; at
    the paper's threshold 6, and at 4 and 2 (a model of 135 M parameters has fewer and smaller
    outliers than the paper's of 6.7 B and more)."""
    names = _course.layer_names("self_attn.q_proj") + _course.layer_names("mlp.gate_proj")
    inputs = _course.layer_inputs(names, _course.emma_windows(draw, 4, 128))
    shown = {
        "inputs": f"{{name: X}} of the {len(names)} q_proj and gate_proj layers, X [512, 576]: "
        f"4 windows of 128 tokens of Emma (seed {draw.seed})"
    }
    return [Case((inputs, t), f"threshold {t}", shown=shown) for t in (6.0, 4.0, 2.0)]


def _systematic(
    inputs: dict[str, torch.Tensor],
    threshold: float,
    token_share: float = TOKEN_SHARE,
    layer_share: float = LAYER_SHARE,
) -> list[int]:
    """Dimensions that reach |x| ≥ threshold in ≥ 25 % of the layers, and in ≥ 6 % of the
    tokens of at least one of them (chapter 04's reading of §4)."""
    width = next(iter(inputs.values())).shape[-1]
    layers = torch.zeros(width, dtype=torch.int64)
    tokens = torch.zeros(width, dtype=torch.bool)
    for X in inputs.values():
        X = X.reshape(-1, X.shape[-1])
        hits = (X.abs() >= threshold).sum(dim=0).double() / X.shape[0]  # share of the tokens
        layers += hits > 0
        tokens |= hits >= token_share
    return torch.nonzero((layers >= layer_share * len(inputs)) & tokens).flatten().tolist()


SPECS = [
    Spec(
        signature="outlier_columns(X, threshold)",
        title="Find the outlier columns",
        doc="""→ the indices (ascending) of the columns of ``X`` [tokens, features] holding any
        value with |x| ≥ threshold. Reference: ``qlearn.int8.outlier_columns`` (Dettmers et al.
        2022, §3.2); a boolean mask over the columns is accepted too.""",
        inputs=_outlier_activations,
        reference=lambda X, threshold: int8.outlier_columns(X, threshold=threshold),
        compare=_compare_columns,
        mistakes=[
            (
                lambda got, expected, case: (
                    as_tensor(got).flatten().tolist()
                    == (case.args[0].abs() > case.args[1]).any(0).nonzero().flatten().tolist()
                ),
                "a value exactly at the threshold counts: |x| >= threshold, not >",
            )
        ],
        hint="(X.abs() >= threshold).any(dim=0) marks the columns; .nonzero() lists them.",
        passed="agrees with qlearn.int8.outlier_columns on {n} inputs",
    ),
    Spec(
        signature="vectorwise_quantize(X)",
        title="Vector-wise int8",
        doc="""→ (codes, row_absmax): absmax int8 per row, codes = round(x · 127 / max|row|).
        Reference: ``qlearn.int8.vectorwise_quantize(X)`` (Dettmers et al. 2022, eq. 1 and
        §3.1): row_absmax exactly, codes exactly but for ties.""",
        inputs=_rows,
        reference=lambda X: ((q := int8.vectorwise_quantize(X)).codes, q.row_absmax),
        compare=codes_then(
            ("codes", "row_absmax"),
            lambda x, e: x * 127 / e[1].double().clamp(min=1e-30).unsqueeze(-1),
            _row_absmax,
        ),
        hint="""row_absmax = X.abs().amax(dim=1); codes = torch.round(X * 127 / row_absmax[:,
        None]); a row of zeros must give codes 0, not NaN.""",
        passed="agrees with qlearn.int8.vectorwise_quantize on {n} inputs",
    ),
    Spec(
        signature="int8_matmul(X, W)",
        title="An int8 matmul",
        doc="""→ X Wᵀ computed in int8: X absmax per row (token), W absmax per row (output
        channel), an integer matmul of the codes, scaled back by c_x ⊗ c_w / 127². Reference:
        ``qlearn.int8.w8a8_matmul(X, W, granularity="vector")`` (Dettmers et al. 2022, eq. 6),
        within 10⁻⁴ of the largest output.""",
        inputs=_products([(4, 8, 3), (16, 64, 32), (8, 256, 16)]),
        reference=lambda X, W: int8.w8a8_matmul(X, W, granularity="vector"),
        compare=_compare_product,
        mistakes=[_FLOAT_PRODUCT],
        hint="""codes of X per row and of W per row (exercise 2), (Xq @ Wq.T) in integers (int32,
        or float64), then * c_x[:, None] * c_w[None, :] / 127**2.""",
        passed="agrees with qlearn.int8.w8a8_matmul on {n} products",
    ),
    Spec(
        signature="llm_int8_matmul(X, W, threshold)",
        title="LLM.int8() as one function",
        doc="""→ X Wᵀ by LLM.int8()'s decomposition, as section 3 of the chapter does it: the
        outlier columns O (any |x| ≥ threshold); the outlier values of X set to 0, int8 codes
        per row of what is left, those of the columns O set to 0, times W's int8 codes; plus
        X[:, O] times the dequantized int8 weight's columns O, in float. Reference:
        ``qlearn.int8.llm_int8_matmul`` (Dettmers et al. 2022, eq. 6–7), within 10⁻⁴ of the
        largest output.""",
        inputs=_products([(4, 8, 3, 6.0), (16, 64, 32, 6.0), (8, 128, 16, 4.0), (6, 32, 8, 100.0)]),
        reference=lambda X, W, threshold: int8.llm_int8_matmul(X, W, threshold=threshold),
        compare=_compare_product,
        mistakes=[_FLOAT_PRODUCT],
        hint="""follow section 3 of the chapter: zero the outlier values before the row absmax,
        set the codes of the outlier columns to 0, and multiply X[:, O] by the *dequantized* int8
        weight of those columns.""",
        passed="agrees with qlearn.int8.llm_int8_matmul on {n} products",
    ),
    Spec(
        signature="systematic_outliers(inputs, threshold)",
        title="Systematic outlier features of the real model",
        doc="""→ the input dimensions (ascending, a list of ints) that are *systematic* outlier
        features of ``inputs`` ({layer name: X [tokens, features]}): |x| ≥ ``threshold`` in at
        least 25 % of the layers, and in at least 6 % of the tokens of at least one of them
        (Dettmers et al. 2022, §4, read as section 1 of the chapter reads it). Reference: that
        definition over the tokens' |x|, exactly.""",
        inputs=_real_inputs,
        reference=_systematic,
        compare=lambda got, expected, case: (
            None
            if isinstance(got, (list, tuple)) and [int(d) for d in got] == expected
            else f"expected the dimensions {expected}, got {show(got)}"
        ),
        mistakes=[
            (
                lambda got, expected, case: [int(d) for d in got] == _systematic(*case.args, 0.0),
                "the token condition is missing: ≥ 6 % of the tokens in at least one layer",
            ),
            (
                lambda got, expected, case: (
                    [int(d) for d in got] == _systematic(*case.args, layer_share=0.0)
                ),
                "the layer condition is missing: the threshold reached in ≥ 25 % of the layers",
            ),
        ],
        hint="""for each layer: share = (X.abs() >= threshold).float().mean(dim=0), each
        dimension's share of tokens; count the layers where share > 0, and note where share >=
        0.06; keep the dimensions counted in at least 0.25 * len(inputs) layers that were noted
        at least once (torch.nonzero(...).flatten().tolist()).""",
        passed="finds the systematic outlier features of the course model at {n} thresholds",
    ),
]
