"""Chapter 12's exercises (shared scales and non-uniform grids): right answers without qlearn
(numpy, written from the OCP MX spec, ggml's quantize_row_mxfp4_ref, Lloyd's step and
llama-imatrix's mean), named as the exercises; WRONG ones with the diagnosis each must get (run
by test_exercises_runner.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
EMAX = {"fp4_e2m1": 2, "fp6_e3m2": 4, "fp8_e4m3": 8, "int8": 0}
LARGEST = {"fp4_e2m1": 6.0, "fp6_e3m2": 28.0, "fp8_e4m3": 448.0, "int8": 127 / 64}


def e8m0_scale(block, element):
    amax = float(block.abs().max())
    if amax == 0:
        return 0
    shared = math.frexp(amax)[1] - 1 - EMAX[element]  # ⌊log₂ amax⌋ exactly
    return 127 + max(-127, min(127, shared))


def _e8m0_ceil(block, element):
    amax = float(block.abs().max())
    if amax == 0:
        return 0
    return 127 + max(-127, min(127, math.ceil(math.log2(amax / LARGEST[element]))))


def quantize_mxfp4(x):
    amax = np.abs(x).max()
    e = 0 if amax == 0 else int(np.clip(math.frexp(float(amax))[1] - 1 - 2 + 127, 0, 255))
    d = np.float32(2.0 ** (e - 128))
    q = np.abs(KVALUES_MXFP4[None, :] * d - x[:, None]).argmin(axis=1)  # the first on a tie
    return np.concatenate([[e], q[:16] | (q[16:] << 4)]).astype(np.uint8)


def _mxfp4_ties_to_even(x):
    raw = quantize_mxfp4(x)
    d = np.float32(2.0 ** (int(raw[0]) - 128))
    scaled = np.abs(x) / d  # the doubled grid: 0 1 2 3 4 6 8 12, ties to the even code
    magnitudes = KVALUES_MXFP4[:8]
    gaps = np.abs(magnitudes[None, :] - scaled[:, None])
    best = gaps.min(axis=1, keepdims=True)
    tied = gaps == best
    even = tied & (np.arange(8) % 2 == 0)[None, :]
    q = np.where(even.any(axis=1), even.argmax(axis=1), tied.argmax(axis=1))
    q = np.where((x < 0) & (q > 0), q + 8, q)
    return np.concatenate([[raw[0]], q[:16] | (q[16:] << 4)]).astype(np.uint8)


def kmeans_step(values, centroids):
    v, c = values.numpy(), centroids.numpy()
    labels = np.abs(v[:, None] - c[None, :]).argmin(axis=1)
    return torch.from_numpy(np.array([v[labels == j].mean() for j in range(c.size)]))


def _kmeans_signed(values, centroids):  # the nearest by x − c, not |x − c|
    v, c = values.numpy(), centroids.numpy()
    labels = (v[:, None] - c[None, :]).argmin(axis=1)
    means = [v[labels == j].mean() if (labels == j).any() else c[j] for j in range(c.size)]
    return torch.from_numpy(np.array(means))


def layer_imatrix(X):
    x = X.numpy().astype(np.float64)
    return torch.from_numpy((x * x).mean(axis=0))


WRONG = {
    "e8m0_scale": [
        (lambda b, el: e8m0_scale(b, el) - 127, "shared_exp itself"),
        (_e8m0_ceil, "clips nothing"),
        (lambda b, el: min(254, e8m0_scale(b, el) + EMAX[el]), "emax_elem is missing"),
    ],
    "quantize_mxfp4": [
        (
            lambda x: np.concatenate([quantize_mxfp4(x)[:1], _neighbour_bytes(quantize_mxfp4(x))]),
            "codes 2j and 2j + 1 share a byte",
        ),
        (_mxfp4_ties_to_even, "ties go to the even code"),
    ],
    "kmeans_step": [
        (lambda v, c: kmeans_step(v, c).sort().values, "sorted"),
        (_kmeans_signed, "not x − c"),
        lambda v, c: c.clone(),  # the centroids unmoved
    ],
    "layer_imatrix": [
        (lambda X: layer_imatrix(X) * X.shape[0], "the sum over the tokens"),
        (lambda X: X.abs().double().mean(0), "the mean |x|"),
    ],
}


def _neighbour_bytes(raw):
    codes = np.concatenate([raw[1:] & 15, raw[1:] >> 4])
    return (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
