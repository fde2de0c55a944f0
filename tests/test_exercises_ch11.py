"""Chapter 11's exercises (moving the outliers): right answers without qlearn (numpy in float64
and float16, written from the papers' formulas), named as the exercises; WRONG ones with the
diagnosis each must get (run by test_exercises_runner.py)."""

from __future__ import annotations

import numpy as np
import torch


def smoothing_scales(act_absmax, weight, alpha):
    weights = [weight] if isinstance(weight, torch.Tensor) else list(weight)
    w = np.concatenate([x.numpy().astype(np.float64) for x in weights])
    w_max = np.maximum(np.abs(w).max(axis=0), 1e-5)
    s = act_absmax.numpy().astype(np.float64) ** alpha / w_max ** (1 - alpha)
    return torch.from_numpy(np.maximum(s, 1e-5))


def hadamard_matrix(n):
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return torch.from_numpy(h / np.sqrt(n))


def fold_norm(gamma, weight):
    return torch.from_numpy(weight.numpy() @ np.diag(gamma.numpy()))


def quantize_keys_per_channel(keys, bits):
    k = keys.numpy().astype(np.float32)
    m = k.min(axis=-2, keepdims=True).astype(np.float16).astype(np.float32)
    top = k.max(axis=-2, keepdims=True)
    s = ((top - m) / np.float32(2**bits - 1)).astype(np.float16).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1))
    q = np.clip(np.rint((k - m) / safe), 0, 2**bits - 1)
    return torch.from_numpy(m + s * q)


WRONG = {
    "smoothing_scales": [
        (lambda a, w, alpha: smoothing_scales(a, w, 1 - alpha), "exponents are swapped"),
        (
            lambda a, w, alpha: smoothing_scales(
                a, w if isinstance(w, torch.Tensor) else w[0], alpha
            ),
            "only the first weight",
        ),
    ],
    "hadamard_matrix": [
        (lambda n: hadamard_matrix(n) * np.sqrt(n), "divide by √n"),
        lambda n: torch.eye(n, dtype=torch.float64),  # orthogonal, but not a Hadamard matrix
    ],
    "fold_norm": [
        (lambda g, w: w * g[:, None] if w.shape[0] == w.shape[1] else w * g, "scales the rows"),
        lambda g, w: w / g[None, :],  # divided instead of multiplied
    ],
    "quantize_keys_per_channel": [
        (
            lambda k, b: quantize_keys_per_channel(k.transpose(-1, -2), b).transpose(-1, -2),
            "per token",
        ),
        lambda k, b: quantize_keys_per_channel(k, b + 1),  # one bit too many
    ],
}
