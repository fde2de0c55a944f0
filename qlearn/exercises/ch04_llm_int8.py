"""Chapter 04's exercises: outlier features and LLM.int8().
Taught in notebooks/04_llm_int8.ipynb."""

from __future__ import annotations

from typing import Any

import torch

from qlearn import int8
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
]
