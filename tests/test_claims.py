"""qlearn.claims: a claim prints one machine-independent line when it holds, and fails loudly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qlearn import claims


def test_a_claim_that_holds_prints_its_statement_and_no_value(capsys):
    claims.claim("GPTQ's perplexity is below RTN's", 24.5 < 29.7, gptq=24.5, rtn=29.7)
    assert capsys.readouterr().out == "✓ GPTQ's perplexity is below RTN's\n"


def test_a_claim_that_fails_raises_with_the_values_it_was_judged_on(capsys):
    with pytest.raises(claims.ClaimFailed, match=r"below RTN's: does not hold here \(gptq = 31"):
        claims.claim("GPTQ's perplexity is below RTN's", 31.2 < 29.7, gptq=31.2, rtn=29.7)
    assert capsys.readouterr().out == ""
    assert issubclass(claims.ClaimFailed, AssertionError)  # a failed claim is a failed assertion


@pytest.mark.parametrize("holds", [np.bool_(True), torch.tensor(True), torch.tensor([True])])
def test_numpy_and_torch_booleans_are_accepted(holds, capsys):
    claims.claim("it holds", holds)
    assert capsys.readouterr().out == "✓ it holds\n"


@pytest.mark.parametrize("holds", [1.0, "yes", None, torch.tensor(1.0)])
def test_a_condition_that_is_not_a_boolean_is_refused(holds):
    with pytest.raises(TypeError, match="holds: expected True or False"):
        claims.claim("it holds", holds)


@pytest.mark.parametrize("statement", ["", "   ", None, 3])
def test_a_claim_needs_a_sentence(statement):
    with pytest.raises(ValueError, match="statement: expected a non-empty sentence"):
        claims.claim(statement, True)


def test_claim_between_prints_its_bounds(capsys):
    claims.claim_between("W8A8 per-tensor perplexity", 33.4, 28, 40)
    assert capsys.readouterr().out == "✓ W8A8 per-tensor perplexity lies in [28, 40]\n"


@given(
    value=st.floats(allow_nan=True, allow_infinity=True, width=32),
    low=st.floats(-1e6, 1e6, width=32),
    width=st.floats(0, 1e6, width=32),
)
def test_claim_between_holds_exactly_inside_its_bounds(value, low, width):
    high = low + width
    inside = not math.isnan(value) and low <= value <= high
    if inside:
        claims.claim_between("x", value, low, high)
    else:
        with pytest.raises(claims.ClaimFailed):
            claims.claim_between("x", value, low, high)


def test_claim_between_refuses_bounds_in_the_wrong_order_and_non_numbers():
    with pytest.raises(ValueError, match="low, high: expected low <= high"):
        claims.claim_between("x", 1.0, 2.0, 1.0)
    with pytest.raises(TypeError, match="value: expected a number"):
        claims.claim_between("x", torch.tensor(1.0), 0.0, 2.0)
    with pytest.raises(TypeError, match="low: expected a number"):
        claims.claim_between("x", 1.0, True, 2.0)
