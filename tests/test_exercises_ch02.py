"""Chapter 02's exercises (absmax and zero-point): right answers without qlearn (numpy, plain
loops), named as the exercises; WRONG ones with the diagnosis each must get (run by
test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import exercises


def dequantize(codes, scale, zero_point):
    values = (codes.numpy().astype(np.float64) - zero_point.numpy()) * scale.numpy()
    return torch.from_numpy(values.astype(np.float32))


def absmax_codes(x, bits):
    a = x.numpy().astype(np.float64)
    return torch.from_numpy(np.round(a / (np.abs(a).max() / (2 ** (bits - 1) - 1))))


def zeropoint_quantize(x, bits):
    a = x.numpy()
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
    scale = np.float32((hi - lo) / (qmax - qmin))
    zero_point = qmin - int(np.round(lo / scale))
    return np.clip(np.round(a / scale) + zero_point, qmin, qmax), scale, zero_point


def group_absmax(w, bits, group_size):
    qmax = 2 ** (bits - 1) - 1
    out = []
    for row in w.tolist():
        new_row = []
        for start in range(0, len(row), group_size):
            group = row[start : start + group_size]
            scale = max(abs(v) for v in group) / qmax
            new_row += [round(v / scale) * scale for v in group]
        out.append(new_row)
    return torch.tensor(out)


def _absmax_relative_errors(weights, bits, per_row=False):
    errors = {}
    for name, w in weights.items():
        a, b = w.numpy().astype(np.float64), w.numpy()
        absmax = np.abs(b).max(axis=1, keepdims=True) if per_row else np.abs(b).max()
        scale = (absmax / np.float32(2 ** (bits - 1) - 1)).astype(np.float32)
        back = (np.round(b / scale) * scale).astype(np.float64)
        errors[name] = np.linalg.norm(a - back) / np.linalg.norm(a)
    return errors


def worst_layer(weights, bits):
    errors = _absmax_relative_errors(weights, bits)
    return max(errors, key=errors.get)


WRONG = {
    "dequantize": [lambda codes, scale, zp: (codes - zp) * scale],  # int8 wraps around
    "absmax_codes": [lambda x, bits: torch.round(x / (x.abs().max() / (2**bits - 1)))],
    "zeropoint_quantize": [  # the range is not stretched to hold 0
        lambda x, bits: (
            torch.round((x - x.min()) / ((x.max() - x.min()) / (2**bits - 1))) - 2 ** (bits - 1),
            float((x.max() - x.min()) / (2**bits - 1)),
            int(-(2 ** (bits - 1)) - torch.round(x.min() / ((x.max() - x.min()) / (2**bits - 1)))),
        )
    ],
    "group_absmax": [  # one scale per row instead of per group
        lambda w, bits, g: (
            torch.round(w / (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)))
            * (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1))
        )
    ],
    "worst_layer": [
        lambda weights, bits: min(  # the best-served layer
            (e := _absmax_relative_errors(weights, bits)), key=e.get
        ),
        (
            lambda weights, bits: max(
                (e := _absmax_relative_errors(weights, bits, per_row=True)), key=e.get
            ),
            "one scale serves all",
        ),
    ],
}


def test_an_answer_that_writes_to_its_input_does_not_change_the_next_reference():
    def vandal(x, bits):
        codes = absmax_codes(x, bits)
        x.zero_()
        return codes

    exercises.check_absmax_codes(vandal)
