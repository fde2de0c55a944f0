"""Chapter 08's exercises (NF4, AWQ): right answers without qlearn (QLoRA's table, numpy, the AWQ
authors' quantizer), named as the exercises; WRONG ones with the diagnosis each must get (run by
test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

CHAPTER = 8

NF4_TABLE = [  # QLoRA, appendix E
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


def nf4_codes(x):
    scaled = x.numpy() / np.abs(x.numpy()).max()
    return torch.from_numpy(np.abs(scaled[:, None] - np.array(NF4_TABLE)[None, :]).argmin(1))


def nf4_bits_per_weight(n, blocksize, double_quant):
    blocks = n // blocksize
    constants = blocks + 4 * math.ceil(blocks / 256) + 4 if double_quant else 4 * blocks
    return 8 * (n / 2 + constants) / n


def awq_scales(x_mean, alpha):
    s = np.maximum(x_mean.numpy().astype(np.float64) ** alpha, 1e-4)
    return torch.from_numpy(s / np.sqrt(s.max() * s.min()))


def _group_rtn(w, bits, group_size):  # the AWQ authors' min/max quantizer, per group
    g = w.reshape(w.shape[0], -1, group_size)
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    scale = np.maximum(hi - lo, 1e-5) / (2**bits - 1)
    zero = np.clip(-np.round(lo / scale), 0, 2**bits - 1)
    q = np.clip(np.round(g / scale) + zero, 0, 2**bits - 1)
    return ((q - zero) * scale).reshape(w.shape)


def best_alpha(W, X, alphas, bits, group_size):
    w, x = W.numpy().astype(np.float64), X.numpy().astype(np.float64)
    errors = []
    for alpha in alphas:
        s = awq_scales(torch.from_numpy(np.abs(x).mean(0)), alpha).numpy()
        w_hat = _group_rtn(w * s, bits, group_size) / s
        errors.append(((x @ w_hat.T - x @ w.T) ** 2).mean())
    return alphas[int(np.argmin(errors))]


def best_alpha_by_weight_error(W, X, alphas, bits, group_size):
    w = W.numpy().astype(np.float64)
    errors = []
    for alpha in alphas:
        s = awq_scales(X.abs().mean(0), alpha).numpy()
        errors.append(((_group_rtn(w * s, bits, group_size) / s - w) ** 2).mean())
    return alphas[int(np.argmin(errors))]


def _rtn_groups(W, bits=4, group_size=128):  # min/max per group (the last one shorter)
    out = np.empty(W.shape, dtype=np.float32)
    for start in range(0, W.shape[1], group_size):
        w = W.numpy()[:, start : start + group_size]
        hi, lo = w.max(axis=1, keepdims=True), w.min(axis=1, keepdims=True)
        scale = np.maximum(hi - lo, np.float32(1e-5)) / np.float32(2**bits - 1)
        zero = np.clip(-np.round(lo / scale), 0, 2**bits - 1)
        q = np.clip(np.round(w / scale) + zero, 0, 2**bits - 1)
        out[:, start : start + group_size] = (q - zero) * scale
    return out


def salient_errors(W, X, keep, by=lambda W, X: np.abs(X).mean(axis=0)):
    w, x = W.numpy(), X.numpy()
    rtn = _rtn_groups(W)
    kept = rtn.copy()
    salient = np.argsort(-by(w, x))[:keep]
    kept[:, salient] = w[:, salient]

    def mse(w_hat):
        return float(np.mean((x.astype(np.float64) @ (w - w_hat).astype(np.float64).T) ** 2))

    return mse(rtn), mse(kept)


WRONG = {
    "nf4_codes": [(lambda x: torch.round((x / x.abs().max() + 1) * 7.5), "a uniform grid")],
    "nf4_bits_per_weight": [  # QLoRA's rounded formula: no offset, no partial block of 256
        lambda n, b, dq: 4 + 8 / b + 32 / (b * 256) if dq else 4 + 32 / b
    ],
    "awq_scales": [
        (  # no clamp: a dead channel gives 0, the normalisation inf
            lambda x_mean, a: x_mean.pow(a) / (x_mean.pow(a).max() * x_mean.pow(a).min()).sqrt(),
            "a channel that never fires",
        ),
        lambda x_mean, a: x_mean.pow(a).clamp(min=1e-4),  # not normalised
    ],
    "best_alpha": [best_alpha_by_weight_error],
    "salient_errors": [
        (
            partial(salient_errors, by=lambda w, x: np.abs(w).mean(axis=0)),
            "chosen by the weights' size",
        ),
        partial(salient_errors, by=lambda w, x: -np.abs(x).mean(axis=0)),  # the least salient
    ],
}
