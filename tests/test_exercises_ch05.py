"""Chapter 05's exercises (GPTQ): right answers without qlearn (numpy, each row alone with the
eliminations of eq. 3), named as the exercises; WRONG ones with the diagnosis each must get (run
by test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch


def layer_hessian(X):
    a = X.reshape(-1, X.shape[-1]).numpy().astype(np.float64)
    return torch.from_numpy(2 * a.T @ a / a.shape[0])


def layer_error(W, W_hat, H):
    d = (W.double() - W_hat.double()).numpy()
    return sum(0.5 * row @ H.double().numpy() @ row for row in d)


def gptq_step(W, Hinv, scale, zero, bits, rounding=np.round):
    W, Hi = W.numpy().copy(), Hinv.numpy()
    for r in range(W.shape[0]):
        s, z = float(scale[r]), float(zero[r])
        w_hat = s * (min(max(rounding(W[r, 0] / s) + z, 0), 2**bits - 1) - z)
        W[r, 1:] -= (W[r, 0] - w_hat) / Hi[0, 0] * Hi[0, 1:]
        W[r, 0] = w_hat
    return torch.from_numpy(W)


def gptq_layer(W, H, bits):
    # Every row alone, with its own min/max grid and the eliminations of eq. 3 (Frantar et al.).
    out = []
    for row in W.numpy():
        lo, hi = min(row.min(), 0.0), max(row.max(), 0.0)
        scale = (hi - lo) / (2**bits - 1)
        zero = np.round(-lo / scale)
        w, Hinv, done = row.copy(), np.linalg.inv(H.numpy()), []
        for _ in range(len(row)):
            q = scale * (np.clip(np.round(w[0] / scale) + zero, 0, 2**bits - 1) - zero)
            w = w[1:] - (w[0] - q) / Hinv[0, 0] * Hinv[0, 1:]
            Hinv = Hinv[1:, 1:] - np.outer(Hinv[1:, 0], Hinv[0, 1:]) / Hinv[0, 0]
            done.append(q)
        out.append(done)
    return torch.tensor(out, dtype=torch.float64)


def gptq_rtn(W, bits):  # each row on its grid, nothing moves
    return torch.stack(
        [gptq_layer(row[None], torch.eye(len(row), dtype=row.dtype), bits)[0] for row in W]
    )


def gptq_without_elimination(W, H, bits):  # the rows of the full H⁻¹, never reduced (no eq. 3)
    out = W.clone()
    Hinv = torch.linalg.inv(H)
    for row in range(W.shape[0]):
        w = W[row]
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        s = torch.tensor([(hi - lo) / (2**bits - 1)], dtype=W.dtype)
        z = torch.round(torch.tensor([-lo], dtype=W.dtype) / s)
        r = w.clone()[None]
        for j in range(W.shape[1]):
            r[:, j:] = gptq_step(r[:, j:], Hinv[j:, j:], s, z, bits)
        out[row] = r[0]
    return out


def gptq_step_undivided(W, Hinv, scale, zero, bits):
    Hi = Hinv.clone()
    Hi[0, 0] = 1.0
    return gptq_step(W, Hi, scale, zero, bits)


def gptq_step_rtn(W, Hinv, s, z, bits):  # round-to-nearest: nothing moves
    column = s[:, None] * (
        (torch.round(W[:, :1] / s[:, None]) + z[:, None]).clamp(0, 2**bits - 1) - z[:, None]
    )
    return torch.cat([column, W[:, 1:]], 1)


def _grid(W, bits):  # each row's min/max grid: scale and zero, [rows, 1]
    lo, hi = np.minimum(W.min(axis=1), 0.0), np.maximum(W.max(axis=1), 0.0)
    scale = ((hi - lo) / (2**bits - 1))[:, None]
    return scale, np.round(-lo[:, None] / scale)


def _on_grid(w, scale, zero, bits):
    return scale * (np.clip(np.round(w / scale) + zero, 0, 2**bits - 1) - zero)


def _gptq_all_rows(W, H, bits):  # every row at once; H⁻¹ shrinks by eq. 3 after each column
    W = W.copy()
    scale, zero = _grid(W, bits)
    Hinv, Q = np.linalg.inv(H), np.empty_like(W)
    for j in range(W.shape[1]):
        Q[:, j] = _on_grid(W[:, j : j + 1], scale, zero, bits)[:, 0]
        W[:, j + 1 :] -= np.outer((W[:, j] - Q[:, j]) / Hinv[0, 0], Hinv[0, 1:])
        Hinv = Hinv[1:, 1:] - np.outer(Hinv[1:, 0], Hinv[0, 1:]) / Hinv[0, 0]
    return Q


def gptq_gain(W, X, bits, upside_down=False):
    a = X.numpy().astype(np.float64)
    H = 2 * a.T @ a / a.shape[0]
    w = W.numpy().astype(np.float64)
    damped = H + 0.01 * np.mean(np.diag(H)) * np.eye(len(H))
    scale, zero = _grid(w, bits)

    def error(w_hat):
        d = w - w_hat
        return 0.5 * np.sum((d @ H) * d)

    gain = error(_on_grid(w, scale, zero, bits)) / error(_gptq_all_rows(w, damped, bits))
    return 1 / gain if upside_down else gain


WRONG = {
    "layer_hessian": [  # no factor 2
        (
            lambda X: X.reshape(-1, X.shape[-1]).T @ X.reshape(-1, X.shape[-1]) / X.shape[0],
            "factor 2",
        )
    ],
    "layer_error": [  # no ½
        (lambda W, W_hat, H: float(((W - W_hat) @ H * (W - W_hat)).sum()), "the ½ is missing")
    ],
    "gptq_step": [
        (gptq_step_rtn, "the update is missing"),
        gptq_step_undivided,  # the error not divided by [H⁻¹]_qq
        (partial(gptq_step, rounding=np.floor), "not on the row's grid point nearest to it"),
    ],
    "gptq_layer": [
        (lambda W, H, bits: gptq_rtn(W, bits), "this is round-to-nearest"),
        lambda W, H, bits: gptq_without_elimination(W, H, bits),
    ],
    "gptq_gain": [
        (partial(gptq_gain, upside_down=True), "upside down"),
        lambda W, X, bits: gptq_gain(W, X, bits + 1),  # one bit more than asked
    ],
}
