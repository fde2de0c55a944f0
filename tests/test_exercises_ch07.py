"""Chapter 07's exercises (QAT, BitNet b1.58): right answers without qlearn (PyTorch's own fake
quantizer, numpy, plain loops), named as the exercises; WRONG ones with the diagnosis each must
get (run by test_exercises_runner.py); the chapter's own cases."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch


def fake_quantize_ste(x, bits, scale):  # PyTorch's own fake quantizer, STE included
    return torch.fake_quantize_per_tensor_affine(
        x, scale, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    )


def absmean_ternary(w):
    a = w.numpy().astype(np.float64)
    gamma = np.abs(a).mean()
    return torch.from_numpy(np.clip(np.round(a / gamma), -1, 1)), gamma


def pack_trits(codes):
    n = len(codes)
    m = -(-n // 5)
    values = codes.tolist()
    return torch.tensor(
        [
            sum((values[j + k * m] + 1 if j + k * m < n else 0) * 3**k for k in range(5))
            for j in range(m)
        ],
        dtype=torch.uint8,
    )


def ternary_matmul(x_codes, w_codes):
    return x_codes.long() @ w_codes.long().T


def pack_trits_consecutive(codes):  # codes 5j … 5j + 4 in byte j, not the five planes
    digits = (codes.long() + 1).tolist()
    digits += [0] * (-len(digits) % 5)
    return torch.tensor(
        [sum(d * 3**k for k, d in enumerate(digits[i : i + 5])) for i in range(0, len(digits), 5)],
        dtype=torch.uint8,
    )


def pack_trits_powers_of_4(codes):  # digits weighted by 4**k, not 3**k
    m = -(-len(codes) // 5)
    digits = torch.zeros(5 * m, dtype=torch.long)
    digits[: len(codes)] = codes.long() + 1
    return sum(digits.reshape(5, m)[k] * 4**k for k in range(5))


def ternary_stats(w, gamma_of=np.mean):
    a = w.numpy().astype(np.float64)
    gamma = gamma_of(np.abs(w.numpy()))
    codes = np.clip(np.round(w.numpy() / gamma), -1, 1)
    return float(np.mean(codes == 0)), float(np.linalg.norm(a - gamma * codes) / np.linalg.norm(a))


WRONG = {
    "fake_quantize_ste": [
        (
            lambda x, bits, scale: (
                torch.round(x / scale).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
            ),
            "the STE is missing",
        ),
        (  # no clip mask
            lambda x, bits, scale: x + (fake_quantize_ste(x, bits, scale) - x).detach(),
            "clipped values must get 0",
        ),
    ],
    "absmean_ternary": [  # absmax, not absmean
        (
            lambda w: (torch.clamp(torch.round(w / w.abs().max()), -1, 1), float(w.abs().max())),
            "gamma is max|w|",
        )
    ],
    "pack_trits": [pack_trits_consecutive, (pack_trits_powers_of_4, "above 242")],
    "ternary_matmul": [
        (lambda x, w: x.long() @ w.abs().long().T, "added, not subtracted"),
        (lambda x, w: (x.long() @ w.long().T).to(torch.int8), "int8 sums overflow"),
    ],
    "ternary_stats": [
        (partial(ternary_stats, gamma_of=np.max), "scales by mean|W|"),
        lambda w: ternary_stats(w)[::-1],  # the two numbers swapped
    ],
}
