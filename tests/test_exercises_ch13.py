"""Chapter 13's exercises (the capstone): right answers without qlearn (gguf-py's block sizes,
plain loops), named as the exercises, but for the design task, whose check counts bytes only of
qlearn's stored formats (its answer stores qlearn.gguf tensors); WRONG ones with the diagnosis
each must get (run by test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

import math

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


def _nf4_bits_per_weight(n, blocksize, double_quant):
    blocks = n // blocksize
    constants = blocks + 4 * math.ceil(blocks / 256) + 4 if double_quant else 4 * blocks
    return 8 * (n / 2 + constants) / n


def bits_from_bytes(w, fmt):
    n = w.numel()
    if fmt == "NF4":
        return 4 + 32 / 64
    if fmt == "NF4+DQ":
        return _nf4_bits_per_weight(n, 64, True)
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]
    return 8 * type_size / block


def best_under_budget(results, max_bits):
    best = None
    for label, (bits, ppl) in results.items():
        if bits <= max_bits and (best is None or ppl < results[best][1]):
            best = label
    return best


def pareto_front(results):
    front, lowest = [], math.inf
    for label in sorted(results, key=lambda k: results[k]):
        if results[label][1] < lowest:
            front.append(label)
            lowest = results[label][1]
    return front


def _in_rows_of_256(qtype):
    """A design that stores every decoder weight as GGUF ``qtype``, its values in rows of 256."""
    from qlearn import gguf, models

    def design(model, calibration):
        return {
            name: gguf.quantize_tensor(
                models.get_weight(layer).detach().float().numpy().reshape(-1, 256), qtype
            )
            for name, layer in models.linear_layers(model)
        }

    return design


def _q4_k_m(model, calibration):
    from qlearn import gguf

    return gguf.quantize_tensors(model, "Q4_K_M")


design = _in_rows_of_256("Q4_K")  # Q4_K in rows of 256: no fallback for the rows of 576

WRONG = {
    "bits_from_bytes": [
        (
            lambda w, fmt: {"F16": 16, "Q8_0": 8, "Q4_0": 4, "Q4_K": 4, "Q6_K": 6}.get(fmt[:4], 4),
            "the scales stored beside the codes are missing",
        )
    ],
    "best_under_budget": [
        (
            lambda r, m: min((k for k in r if r[k][0] < m), key=lambda k: r[k][1], default=None),
            "compare with <=, not <",
        )
    ],
    "pareto_front": [
        lambda r: sorted(r, key=lambda k: r[k][0]),  # every method
        lambda r: [k for i, k in enumerate(r) if all(r[k][1] < r[j][1] for j in list(r)[:i])],
    ],
    "design": [
        (_q4_k_m, "that is Q4_K_M's own size"),
        _in_rows_of_256("Q4_0"),  # 4.5 bits per weight, but far from Q4_K_M's perplexity
    ],
}


def test_measure_design_gives_what_the_check_measured_and_refuses_what_it_refuses():
    from qlearn import exercises

    result = exercises.measure_design(design)
    assert isinstance(result, exercises.DesignResult)
    assert result.bits_per_weight == 4.5 and math.isfinite(result.perplexity)
    assert exercises.measure_design(_q4_k_m).bits_per_weight > 5
    with pytest.raises(ValueError, match="design: the keys must be"):
        exercises.measure_design(lambda model, calibration: {})
    with pytest.raises(TypeError, match="design: expected a function"):
        exercises.measure_design("Q4_K")
