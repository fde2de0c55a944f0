"""Chapter 04's exercises (outlier features, LLM.int8()): right answers without qlearn (numpy),
named as the exercises; WRONG ones with the diagnosis each must get (run by
test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

import numpy as np
import torch


def outlier_columns(X, threshold):
    return [j for j in range(X.shape[1]) if any(abs(v) >= threshold for v in X[:, j].tolist())]


def vectorwise_quantize(X):
    a = X.numpy()
    absmax = np.abs(a).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.nan_to_num(np.round(a * 127 / absmax[:, None]))
    return torch.from_numpy(codes), torch.from_numpy(absmax)


def int8_matmul(X, W):
    (Xq, cx), (Wq, cw) = vectorwise_quantize(X), vectorwise_quantize(W)
    product = Xq.numpy().astype(np.int64) @ Wq.numpy().astype(np.int64).T
    return torch.from_numpy(product * cx.numpy()[:, None] * cw.numpy()[None, :] / 127**2)


def llm_int8_matmul(X, W, threshold):
    a = X.numpy()
    outlier = np.abs(a) >= threshold
    columns = outlier.any(axis=0)
    Xq, cx = vectorwise_quantize(torch.from_numpy(np.where(outlier, 0, a)))
    Xq = Xq.numpy().astype(np.int64)
    Xq[:, columns] = 0
    Wq, cw = vectorwise_quantize(W)
    Wq = Wq.numpy().astype(np.int64)
    cx, cw = cx.numpy(), cw.numpy()
    result = (Xq @ Wq.T) * cx[:, None] * cw[None, :] / 127**2
    result += a[:, columns] @ (Wq[:, columns] * cw[:, None] / 127).T
    return torch.from_numpy(result)


def systematic_outliers(inputs, threshold, token_share=0.06, layer_share=0.25):
    layers, tokens = 0, False
    for X in inputs.values():
        share = (np.abs(X.numpy()) >= threshold).mean(axis=0)  # of the tokens, per dimension
        layers = layers + (share > 0)
        tokens = tokens | (share >= token_share)
    return [int(d) for d in np.flatnonzero((layers >= layer_share * len(inputs)) & tokens)]


IN_FLOAT = "the int8 rounding is missing"
WRONG = {
    "outlier_columns": [  # > instead of >=
        (lambda X, t: (X.abs() > t).any(0).nonzero().flatten(), "|x| >= threshold, not >")
    ],
    "vectorwise_quantize": [  # a row of zeros gives NaN
        lambda X: (torch.round(X * 127 / X.abs().amax(1, keepdim=True)), X.abs().amax(1))
    ],
    "int8_matmul": [(lambda X, W: X @ W.T, IN_FLOAT)],  # no quantization at all
    "llm_int8_matmul": [
        lambda X, W, t: int8_matmul(X, W),  # no outlier path
        (lambda X, W, t: X @ W.T, IN_FLOAT),
    ],
    "systematic_outliers": [
        (lambda inputs, t: systematic_outliers(inputs, t, 0.0), "the token condition is missing"),
        (
            lambda inputs, t: systematic_outliers(inputs, t, layer_share=0.0),
            "the layer condition is missing",
        ),
    ],
}
