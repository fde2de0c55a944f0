"""Chapter 10's exercises (what quantization buys): right answers without qlearn (numpy in
float64, plain integer sums), named as the exercises; WRONG ones with the diagnosis each must
get (run by test_exercises_runner.py)."""

from __future__ import annotations

import numpy as np
import torch


def kv_cache_bytes(config, tokens, bytes_per_value):
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads)
    head_dim = getattr(config, "head_dim", config.hidden_size // heads)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * bytes_per_value * tokens


def w8a8_matmul(x, codes, scales):
    a = x.numpy().astype(np.float32)
    absmax = np.abs(a).max(axis=1)
    with np.errstate(divide="ignore"):
        inverse = np.where(absmax > 0, np.float32(127) / absmax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(a * inverse[:, None]), -127, 127).astype(np.int64)
    sums = q @ codes.numpy().astype(np.int64).T
    return torch.from_numpy(
        sums.astype(np.float32) * ((absmax / np.float32(127))[:, None] * scales.numpy()[None, :])
    )


def kl_per_token(reference_logits, logits):
    def log_softmax(z):
        z = z.numpy().astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_p, log_q = log_softmax(reference_logits), log_softmax(logits)
    return torch.from_numpy((np.exp(log_p) * (log_p - log_q)).sum(axis=-1))


def arithmetic_intensity(tokens, in_features, out_features, weight_bytes, activation_bytes):
    flops = 2 * tokens * in_features * out_features
    return flops / (
        in_features * out_features * weight_bytes
        + tokens * (in_features + out_features) * activation_bytes
    )


WRONG = {
    "kv_cache_bytes": [
        (lambda c, t, b: kv_cache_bytes(c, t, b) / 2, "the factor 2"),
        (
            lambda c, t, b: (
                2
                * c.num_hidden_layers
                * c.num_attention_heads
                * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
                * b
                * t
            ),
            "num_key_value_heads",
        ),
    ],
    "w8a8_matmul": [
        (lambda x, codes, scales: x @ (codes.float() * scales[:, None]).T, "activations must"),
        lambda x, codes, scales: w8a8_matmul(x, codes, scales) * 127,  # scale = absmax, not /127
    ],
    "kl_per_token": [
        (lambda p, q: kl_per_token(q, p), "KL(q ‖ p)"),
        (lambda p, q: kl_per_token(p, q).sum(), "one KL per position"),
    ],
    "arithmetic_intensity": [
        (lambda t, i, o, w, a: 2 * t * i * o / (i * o * w), "only the weight's bytes"),
        lambda t, i, o, w, a: t * i * o / (i * o * w + t * (i + o) * a),  # one op per weight
    ],
}
