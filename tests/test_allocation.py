"""qlearn.allocation: per-tensor errors recomputed by hand, the Lagrangian allocation against a
brute-force search over every assignment, and per-layer sensitivity on a tiny Llama."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import allocation, gguf, models

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. "
) * 3


def _options(
    rng: np.random.Generator, tensors: int, types: int
) -> dict[str, list[allocation.TensorOption]]:
    """Random instances: more bytes buy less error, with random rates."""
    out = {}
    for t in range(tensors):
        nbytes = np.sort(rng.choice(np.arange(10, 200), types, replace=False))
        error = np.sort(rng.random(types) * rng.uniform(1, 100))[::-1]
        out[f"t{t}"] = [allocation.TensorOption(f"q{i}", float(e), int(b))
                        for i, (e, b) in enumerate(zip(error, nbytes, strict=True))]  # fmt: skip
    return out


def _brute_force(options, budget):
    best = None
    names = list(options)
    for combo in itertools.product(*(options[n] for n in names)):
        nbytes = sum(o.nbytes for o in combo)
        if nbytes <= budget:
            error = sum(o.error for o in combo)
            if best is None or error < best[0]:
                best = (error, nbytes)
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.2, 1.0))
def test_allocation_fits_and_is_close_to_the_optimum(seed, share):
    """Within the budget; never worse than the best assignment of the bytes the Lagrangian step
    used (it is optimal there); and within the gap the leftover leaves to the true optimum."""
    rng = np.random.default_rng(seed)
    options = _options(rng, 4, 4)
    n_weights = {name: 100 for name in options}
    smallest = sum(min(o.nbytes for o in opts) for opts in options.values())
    largest = sum(max(o.nbytes for o in opts) for opts in options.values())
    budget = smallest + share * (largest - smallest)
    target = 8 * budget / 400
    result = allocation.allocate_types(options, target, n_weights)
    assert result.nbytes <= budget + 1e-9
    assert result.bits_per_weight == pytest.approx(8 * result.nbytes / 400)
    optimum, _ = _brute_force(options, budget)
    assert result.error >= optimum - 1e-9
    lagrangian = {n: min(opts, key=lambda o: (o.error + result.price * o.nbytes, o.nbytes))
                  for n, opts in options.items()}  # fmt: skip
    used = sum(o.nbytes for o in lagrangian.values())
    assert sum(o.error for o in lagrangian.values()) <= _brute_force(options, used)[0] + 1e-9
    assert result.error <= sum(o.error for o in lagrangian.values()) + 1e-12


def test_a_larger_budget_never_costs_more_error():
    options = _options(np.random.default_rng(1), 6, 5)
    n_weights = {name: 100 for name in options}
    errors = [
        allocation.allocate_types(options, bpw, n_weights).error for bpw in np.linspace(4, 16, 30)
    ]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(errors))


def test_tensor_errors_are_the_importance_weighted_squared_errors(tiny_llama, char_tokenizer):
    windows = [torch.tensor([char_tokenizer.encode(TEXT)[:48]])]
    imatrix = gguf.importance_matrix(tiny_llama, windows)
    options = allocation.tensor_errors(tiny_llama, ["Q4_K", "Q8_0", "Q4_0"], imatrix=imatrix)
    name = "model.layers.0.mlp.down_proj"
    weight = dict(models.linear_layers(tiny_llama))[name].weight.detach()
    by_type = {o.qtype: o for o in options[name]}
    assert set(by_type) == {"Q5_0", "Q8_0", "Q4_0"}  # rows of 128: Q4_K falls back to Q5_0
    tensor = gguf.quantize_tensor(weight.numpy(), "Q4_0", imatrix=imatrix[name].numpy())
    expected = (
        ((tensor.dequantize() - weight) ** 2).double().sum(0) @ imatrix[name].double()
    ).item()
    assert by_type["Q4_0"].error == pytest.approx(expected, rel=1e-9)
    assert by_type["Q4_0"].nbytes == tensor.nbytes()
    assert by_type["Q8_0"].error < by_type["Q4_0"].error


def test_layer_sensitivity_is_the_kl_of_one_quantized_layer(tiny_llama, char_tokenizer):
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    coarse = allocation.layer_sensitivity(
        tiny_llama, char_tokenizer, TEXT, "Q4_0", max_tokens=64, layers=names
    )
    fine = allocation.layer_sensitivity(
        tiny_llama, char_tokenizer, TEXT, "Q8_0", max_tokens=64, layers=names
    )
    assert list(coarse) == names
    for name in names:
        assert 0 < fine[name] < coarse[name]
    before = {n: layer.weight.detach().clone() for n, layer in models.linear_layers(tiny_llama)}
    allocation.layer_sensitivity(
        tiny_llama, char_tokenizer, TEXT, "Q2_K", max_tokens=64, layers=names
    )
    for n, layer in models.linear_layers(tiny_llama):  # the model is restored
        assert torch.equal(layer.weight, before[n])


def test_bad_input_is_named(tiny_llama):
    options = _options(np.random.default_rng(2), 2, 3)
    n_weights = {name: 100 for name in options}
    with pytest.raises(ValueError, match=r"target_bpw: 0\.01 is below the smallest reachable"):
        allocation.allocate_types(options, 0.01, n_weights)
    with pytest.raises(ValueError, match="n_weights"):
        allocation.allocate_types(options, 8.0, {"t0": 100})
    with pytest.raises(ValueError, match="qtypes"):
        allocation.tensor_errors(tiny_llama, ["Q4_X"])
    with pytest.raises(ValueError, match="imatrix: no importance"):
        allocation.tensor_errors(tiny_llama, ["Q4_0"], imatrix={})
