"""Chapter 06's exercises (GGUF blocks): right answers without qlearn (gguf-py's own bytes), named
as the exercises; WRONG ones with the diagnosis each must get (run by test_exercises_runner.py);
the chapter's own cases."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from qlearn import gguf
from qlearn.exercises import EXERCISES, ExerciseFailed


def dequantize_q8_0(raw):
    return gguf_quants.dequantize(raw[None], GGMLQuantizationType.Q8_0)[0]


def quantize_q8_0(x):
    return gguf_quants.quantize(x[None], GGMLQuantizationType.Q8_0)[0]


def quantize_q4_0(x):
    return gguf_quants.quantize(x[None], GGMLQuantizationType.Q4_0)[0]


def quantize_q4_1(x):
    return gguf_quants.quantize(x[None], GGMLQuantizationType.Q4_1)[0]


def _q8_0_bytes(x, rounding):
    d = np.abs(x).max() / np.float32(127)
    with np.errstate(all="ignore"):  # a block of zeros: 0 / 0, cast to 0
        q = rounding(x * (np.float32(1) / d)).astype(np.int8)
    return np.concatenate([np.float16(d).reshape(1).view(np.uint8), q.view(np.uint8)])


def _neighbour_nibbles(raw, start):  # codes 2j, 2j + 1 in one byte
    qs = raw[start:]
    codes = np.concatenate([qs & 15, qs >> 4])
    return np.concatenate([raw[:start], (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)])


def _rmse_by_type(w):  # qlearn's k-quant bytes (llama.cpp's, tests/test_gguf.py), gguf-py's values
    a, errors = w.numpy(), {}
    for qtype in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"):
        raw = gguf.quantize(a, qtype)
        back = gguf_quants.dequantize(raw, GGMLQuantizationType[qtype])
        errors[qtype] = float(np.sqrt(np.mean((back.astype(np.float64) - a) ** 2)))
    return errors


def smallest_type(w, max_rmse):
    return next((t for t, e in _rmse_by_type(w).items() if e <= max_rmse), None)


NEIGHBOURS = "GGUF puts codes j and j + 16 there"
WRONG = {
    "dequantize_q8_0": [  # the codes read as unsigned
        (
            lambda raw: raw[2:].astype(np.float32) * raw[:2].view(np.float16).astype(np.float32),
            "the codes are signed int8",
        )
    ],
    "quantize_q8_0": [
        lambda x: _q8_0_bytes(x, np.trunc),  # truncation
        lambda x: _q8_0_bytes(x, np.round),  # halves to even
    ],
    "quantize_q4_0": [(lambda x: _neighbour_nibbles(quantize_q4_0(x), 2), NEIGHBOURS)],
    "quantize_q4_1": [(lambda x: _neighbour_nibbles(quantize_q4_1(x), 4), NEIGHBOURS)],
    "smallest_type": [
        (
            lambda w, m: next((t for t, e in reversed(_rmse_by_type(w).items()) if e <= m), None),
            "the question is the smallest",
        ),
        lambda w, m: next((t for t, e in _rmse_by_type(w).items() if e < m / 2), None),
    ],
}


def test_a_wrong_scale_is_named_as_the_field_that_differs():
    def wrong_scale(x):
        raw = quantize_q4_1(x).copy()
        raw[:2] = np.float16(1.0).reshape(1).view(np.uint8)
        return raw

    with pytest.raises(ExerciseFailed, match=r"the scale d \(bytes 0–1, fp16\) differs"):
        EXERCISES["quantize_q4_1"].check(wrong_scale)
