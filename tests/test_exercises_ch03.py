"""Chapter 03's exercises (granularity, clipping, calibration): right answers without qlearn
(numpy), named as the exercises; WRONG ones with the diagnosis each must get (run by
test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import calibration, exercises


def bits_per_weight(bits, group_size, zero_point):
    n = group_size * 10
    return (n * bits + 10 * 16 + (10 * bits if zero_point else 0)) / n


def clipped_absmax(x, clip, bits):
    qmax = 2 ** (bits - 1) - 1
    a = np.clip(x.numpy().astype(np.float64), -clip, clip)
    return torch.from_numpy(np.round(a / (clip / qmax)) * (clip / qmax))


class RangeObserver:
    def __init__(self):
        self.batches = []

    def observe(self, x):
        self.batches.append(x.numpy().ravel())

    def range(self):
        everything = np.concatenate(self.batches)
        return float(everything.min()), float(everything.max())


def best_clip(x, bits, candidates):
    a = x.numpy().astype(np.float64)
    errors = [float(((a - clipped_absmax(x, c, bits).numpy()) ** 2).sum()) for c in candidates]
    return candidates[int(np.argmin(errors))]


class LastBatchOnly(RangeObserver):
    def observe(self, x):
        self.batches = [x.numpy().ravel()]


def channel_gain(w, bits):
    a = w.numpy()
    qmax = np.float32(2 ** (bits - 1) - 1)

    def mse(scale):
        back = np.round(a / scale) * scale
        return np.mean((back.astype(np.float64) - a) ** 2)

    return mse(np.abs(a).max() / qmax) / mse(np.abs(a).max(axis=1, keepdims=True) / qmax)


WRONG = {
    "bits_per_weight": [lambda bits, g, zp: bits + 16 / g],  # forgets the zero point
    "clipped_absmax": [  # the scale from max|x|: clipping never happens
        lambda x, c, bits: (
            torch.round(x / (x.abs().max() / (2 ** (bits - 1) - 1)))
            * (x.abs().max() / (2 ** (bits - 1) - 1))
        )
    ],
    "range_observer": [LastBatchOnly],
    "best_clip": [(lambda x, bits, candidates: candidates[-1], "does not clip at all")],
    "channel_gain": [
        (lambda w, bits: 1 / channel_gain(w, bits), "upside down"),
        (lambda w, bits: channel_gain(w.T, bits), "one scale per column"),
    ],
}


class StubObserver:
    def __init__(self):
        raise NotImplementedError


STUBS = {"range_observer": StubObserver}


def test_best_clip_accepts_any_candidate_as_good_as_the_best():
    def close_enough(x, bits, candidates):  # the best candidate, as a float32 round trip
        return float(torch.tensor(best_clip(x, bits, candidates), dtype=torch.float32))

    exercises.check_best_clip(close_enough)
    x = torch.tensor([1.0, -1.0, 0.5])
    e = {
        c: float((x - calibration.clip_quantize(x, -c, c, bits=8).dequantize()).square().sum())
        for c in (1.0, 2.0)
    }
    assert e[1.0] < e[2.0]  # the reference's notion of "best" on a case checkable by hand
