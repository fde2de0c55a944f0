"""Chapter 01's exercises (float formats): right answers without qlearn (numpy, ml_dtypes), named
as the exercises; WRONG ones with the diagnosis each must get (run by test_exercises_runner.py);
the chapter's own cases."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from qlearn import exercises, floats
from qlearn.exercises import ExerciseFailed


def memory_gb(n_params, bits):
    return math.ceil(n_params * bits / 8) / 1e9


def decode_fp16(code):
    return float(np.array([code], dtype=np.uint16).view(np.float16)[0])


def format_limits(exponent_bits, mantissa_bits):
    # Brute force: the largest finite code is the one just below the all-ones exponent.
    bias = 2 ** (exponent_bits - 1) - 1
    values = [
        (1 + m / 2**mantissa_bits) * 2.0 ** (e - bias)
        for e in range(1, 2**exponent_bits - 1)
        for m in (0, 2**mantissa_bits - 1)
    ]
    return max(values), min(values) / 2**mantissa_bits  # smallest normal / 2^M


def round_to_bf16(x):
    return torch.from_numpy(x.numpy().astype(ml_dtypes.bfloat16).astype(np.float32))


_ML_DTYPES = {
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
}


def flushed_to_zero(w, fmt):
    a = w.numpy()
    back = a.astype(_ML_DTYPES[fmt]).astype(np.float32)
    return np.count_nonzero((back == 0) & (a != 0)) / np.count_nonzero(a)


def flushed_after_an_absmax_scale(w, fmt):
    scale = float(w.abs().max()) / (448.0 if fmt == "fp8_e4m3" else 57344.0)
    return flushed_to_zero(w / scale, fmt) if fmt.startswith("fp8") else flushed_to_zero(w, fmt)


WRONG = {
    "memory_gb": [lambda n, b: n * b / 8 / 2**30],  # GiB, not GB
    "decode_fp16": [  # no subnormals: the implicit 1 everywhere
        lambda c: (-1) ** (c >> 15) * 2.0 ** (((c >> 10) & 31) - 15) * (1 + (c & 1023) / 1024)
    ],
    "format_limits": [  # forgets that the all-ones exponent is inf/NaN
        lambda e, m: (
            (2 - 2.0**-m) * 2.0 ** (2**e - 1 - (2 ** (e - 1) - 1)),
            2.0 ** (2 - 2**e - m),
        )
    ],
    "round_to_bf16": [
        lambda x: (x.view(torch.int32) & ~0xFFFF).view(torch.float32),  # truncation
        lambda x: ((x.view(torch.int32) + 0x8000) & ~0xFFFF).view(torch.float32),  # half up
    ],
    "flushed_to_zero": [
        flushed_after_an_absmax_scale,  # section 6's scaled cast: FP8 flushes far fewer
        (
            lambda w, fmt: float(
                (w.numpy().astype(_ML_DTYPES[fmt]).astype(np.float32) != w.numpy()).mean()
            ),
            "count only those that became 0",
        ),
    ],
}


def test_checks_are_deterministic_and_seed_changes_the_inputs(capsys):
    seen = {}

    def spy(seed):
        def record(x):
            seen.setdefault(seed, []).append(x.clone())
            return round_to_bf16(x)

        return record

    for seed in (0, 0, 1):
        exercises.check_round_to_bf16(spy(seed), seed=seed)
    runs = capsys.readouterr().out.splitlines()
    assert runs[0] == runs[1] == runs[2]
    first, second = seen[0][: len(seen[0]) // 2], seen[0][len(seen[0]) // 2 :]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(seen[0][0], seen[1][0])
    with pytest.raises(ValueError, match="seed"):
        exercises.check_round_to_bf16(round_to_bf16, seed=-1)


def test_ties_are_tested_and_round_half_to_even_is_required():
    half_up = WRONG["round_to_bf16"][1]
    with pytest.raises(ExerciseFailed, match="exact ties"):
        exercises.check_round_to_bf16(half_up)


def test_format_limits_reference_agrees_with_ml_dtypes_and_numpy():
    def limits(dtype):
        info = ml_dtypes.finfo(dtype)
        return float(info.max), float(info.smallest_subnormal)

    for (e, m), dtype in [
        ((5, 10), np.float16),
        ((8, 7), ml_dtypes.bfloat16),
        ((5, 2), ml_dtypes.float8_e5m2),
        ((8, 23), np.float32),
    ]:
        assert format_limits(e, m) == limits(dtype)


def test_decode_reference_covers_every_kind_of_fp16_code(capsys):
    exercises.check_decode_fp16(decode_fp16)
    kinds = {floats.decode(c, "fp16").kind for c in (0, 1, 0x3C00, 0x7C00, 0x7E00)}
    assert kinds == {"zero", "subnormal", "normal", "inf", "nan"}
    assert "zeros, subnormals, normals, inf and NaN" in capsys.readouterr().out
