"""Chapter 10's exercises: what quantization buys (KV-cache memory, W8A8 with int32 sums, KL
divergence per token, arithmetic intensity). Taught in
notebooks/10_what_quantization_buys.ipynb."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from qlearn import evaluate, kernels, roofline
from qlearn.exercises._compare import compare_number, compare_tensor
from qlearn.exercises._runner import Case, Draw, Spec

_CONFIGS = [  # (name, layers, attention heads, KV heads or None, hidden size, head dim or None)
    ("SmolLM2-135M", 30, 9, 3, 576, 64),
    ("Llama-2-7B", 32, 32, None, 4096, None),
    ("Llama-3-8B", 32, 32, 8, 4096, None),
    ("Gemma-2-2B", 26, 8, 4, 2304, 256),
]


def _configs(draw: Draw) -> list[Case]:
    """Four real models' attention shapes (multi-head, grouped-query, a head_dim that is not
    hidden / heads), at drawn context lengths and 1, 2 or 4 bytes per value; then a made-up one."""
    cases = []
    made_up = ("made up", draw.py.randint(2, 12), 12, draw.py.choice((1, 2, 4)), 768, None)
    shapes = [*_CONFIGS, made_up]
    for name, layers, heads, kv_heads, hidden, head_dim in shapes:
        fields = {"num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": hidden}
        if kv_heads is not None:
            fields["num_key_value_heads"] = kv_heads
        if head_dim is not None:
            fields["head_dim"] = head_dim
        tokens, per_value = draw.py.choice((1, 100, 4096, 32768)), draw.py.choice((1, 2, 4))
        cases.append(Case((SimpleNamespace(**fields), tokens, per_value), name))
    return cases


def _kv_bytes(config: Any, tokens: int, bytes_per_value: float) -> float:
    return roofline.kv_cache_bytes(config, tokens, bytes_per_value=bytes_per_value)


def _compare_bytes(got: Any, expected: float, case: Case) -> str | None:
    return compare_number(got, expected, rel=1e-12)


def _missing_factor(got: Any, expected: float, factor: float) -> bool:
    try:
        return abs(float(got) * factor - expected) <= 1e-9 * expected
    except (TypeError, ValueError):
        return False


def _kv_heads_ignored(got: Any, expected: float, case: Case) -> bool:
    config = case.args[0]
    kv = getattr(config, "num_key_value_heads", None)
    return (
        kv is not None
        and kv != config.num_attention_heads
        and _missing_factor(got, expected, kv / config.num_attention_heads)
    )


def _w8a8_inputs(draw: Draw) -> list[Case]:
    """Activations [tokens, in] (one with an outlier feature, one all-zero row) and int8 weight
    codes [out, in] with float32 row scales, as ``kernels.W8A8Linear.from_linear`` makes them."""
    cases = []
    for tokens, features, out, note in [
        (1, 16, 4, "one token"),
        (5, 64, 8, ""),
        (8, 96, 16, "an outlier feature"),
        (3, 32, 6, "an all-zero row"),
    ]:
        x = torch.randn(tokens, features, generator=draw.torch)
        if note == "an outlier feature":
            x[:, draw.py.randrange(features)] *= 40
        if note == "an all-zero row":
            x[1] = 0
        w = torch.randn(out, features, generator=draw.torch) * 0.05
        layer = kernels.W8A8Linear.from_linear(_linear(w))
        cases.append(Case((x, layer.codes.clone(), layer.scales.clone()), note))
    return cases


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


def _w8a8(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return kernels.W8A8Linear(codes, scales)(x)


def _compare_w8a8(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=1e-5, atol=1e-6)


def _float_weights(got: Any, expected: torch.Tensor, case: Case) -> bool:
    """The activations were not quantized: x @ (codes · scales)ᵀ."""
    x, codes, scales = case.args
    unquantized = x @ (codes.float() * scales[:, None]).T
    return isinstance(got, torch.Tensor) and compare_tensor(got, unquantized, rtol=1e-5) is None


def _logit_pairs(draw: Draw) -> list[Case]:
    """Reference logits [positions, vocab] and a perturbed copy: small noise, large noise,
    logits of 30 (a confident model), one position, and two equal rows (KL 0)."""
    g, cases = draw.torch, []
    for positions, vocab, spread, noise, note in [
        (4, 10, 1.0, 0.1, "small noise"),
        (6, 50, 3.0, 1.0, "large noise"),
        (3, 32, 30.0, 0.5, "logits of 30"),
        (1, 100, 2.0, 0.3, "one position"),
    ]:
        p = torch.randn(positions, vocab, generator=g) * spread
        cases.append(Case((p, p + torch.randn(positions, vocab, generator=g) * noise), note))
    p = torch.randn(2, 20, generator=g)
    cases.append(Case((p, p.clone()), "the same logits: KL is 0"))
    return cases


def _compare_kl(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=1e-4, atol=1e-7)


def _reversed_kl(got: Any, expected: torch.Tensor, case: Case) -> bool:
    reference_logits, logits = case.args
    reverse = evaluate.kl_per_token(logits, reference_logits)
    return isinstance(got, torch.Tensor) and compare_tensor(got, reverse, rtol=1e-4) is None


def _summed(got: Any, expected: torch.Tensor, case: Case) -> bool:
    return isinstance(got, torch.Tensor) and got.numel() == 1 and expected.numel() > 1


def _layer_shapes(draw: Draw) -> list[Case]:
    """The course's four layer shapes and a 7B model's, at 1 to 4096 tokens, FP32 / BF16 / int8
    / int4 weights, FP32 or BF16 activations."""
    cases = []
    shapes = [(576, 576), (576, 192), (576, 1536), (1536, 576), (4096, 11008)]
    for in_features, out_features in shapes:
        tokens = draw.py.choice((1, 1, 8, 512, 4096))
        weight, activation = draw.py.choice((4, 2, 1, 0.5)), draw.py.choice((4, 2))
        cases.append(Case((tokens, in_features, out_features, weight, activation)))
    return cases


def _intensity(tokens: int, i: int, o: int, weight: float, activation: float) -> float:
    return roofline.arithmetic_intensity(
        tokens, i, o, weight_bytes_per_value=weight, activation_bytes_per_value=activation
    )


def _weights_only(got: Any, expected: float, case: Case) -> bool:
    tokens, i, o, weight, _ = case.args
    try:
        return abs(float(got) - 2 * tokens * i * o / (i * o * weight)) <= 1e-9 * float(got)
    except (TypeError, ValueError, ZeroDivisionError):
        return False


SPECS = [
    Spec(
        signature="kv_cache_bytes(config, tokens, bytes_per_value)",
        title="The KV cache of a model",
        doc="""→ the bytes of the keys and values a decoder keeps after ``tokens`` tokens at
        batch 1: 2 · layers · KV heads · head dim · bytes_per_value · tokens, from the config's
        ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads`` (when absent:
        the attention heads) and ``head_dim`` (when absent: ``hidden_size`` / attention heads).
        Reference: ``qlearn.roofline.kv_cache_bytes`` (Pope et al. 2022), exactly.""",
        inputs=_configs,
        reference=_kv_bytes,
        compare=_compare_bytes,
        mistakes=[
            (
                lambda got, expected, case: _missing_factor(got, expected, 2),
                "half the expected bytes: keys and values are both kept (the factor 2)",
            ),
            (
                _kv_heads_ignored,
                "grouped-query attention keeps num_key_value_heads heads of keys and values, not "
                "num_attention_heads",
            ),
        ],
        hint="""heads = config.num_attention_heads; kv = getattr(config, "num_key_value_heads",
        None) or heads; head_dim = getattr(config, "head_dim", None) or config.hidden_size //
        heads; then 2 * layers * kv * head_dim * bytes_per_value * tokens.""",
        passed="agrees with qlearn.roofline.kv_cache_bytes on {n} models",
    ),
    Spec(
        signature="w8a8_matmul(x, codes, scales)",
        title="W8A8: int8 × int8 with int32 sums",
        doc="""→ y ≈ x @ Wᵀ in float32 [tokens, out] from the weight's int8 ``codes`` [out, in]
        and float32 row ``scales`` [out]: quantize each row of ``x`` by its absmax, q_x =
        round(x · (127 / max|x|)) (half to even; an all-zero row gets codes 0 and scale 0),
        s_x = max|x| / 127; multiply the codes with integer sums (int32 or int64: they are
        exact), then scale by s_x ⊗ scales. Reference: ``qlearn.kernels.W8A8Linear``
        (``torch._int_mm``; Dettmers et al. 2022, eq. 6), within 10⁻⁵ relative.""",
        inputs=_w8a8_inputs,
        reference=_w8a8,
        compare=_compare_w8a8,
        mistakes=[
            (
                _float_weights,
                "this is x times the dequantized weight: the activations must be quantized too, "
                "one scale per row (token)",
            )
        ],
        hint="""absmax = x.abs().amax(dim=1); inverse = torch.where(absmax > 0, 127 / absmax, 0);
        q = (x * inverse[:, None]).round().clamp(-127, 127); acc = q.long() @ codes.long().T;
        return acc.float() * (absmax / 127)[:, None] * scales[None, :].""",
        passed="agrees with qlearn.kernels.W8A8Linear on {n} inputs",
    ),
    Spec(
        signature="kl_per_token(reference_logits, logits)",
        title="KL divergence per token",
        doc="""→ KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) at every position, float64
        [positions], p = softmax(``reference_logits``), q = softmax(``logits``), both
        [positions, vocab]. Reference: ``qlearn.evaluate.kl_per_token`` (Kullback and Leibler
        1951; llama.cpp's ``--kl-divergence``), within 10⁻⁴ relative.""",
        inputs=_logit_pairs,
        reference=evaluate.kl_per_token,
        compare=_compare_kl,
        mistakes=[
            (
                _reversed_kl,
                "this is KL(q ‖ p): the expectation is under the reference's distribution p",
            ),
            (_summed, "one number: return one KL per position, summed over the vocabulary only"),
        ],
        hint="""log_p = F.log_softmax(reference_logits.float(), dim=-1); log_q likewise from
        logits; return (log_p.exp() * (log_p - log_q)).sum(dim=-1).double().""",
        passed="agrees with qlearn.evaluate.kl_per_token on {n} pairs of logits",
    ),
    Spec(
        signature=(
            "arithmetic_intensity(tokens, in_features, out_features, weight_bytes_per_value, "
            "activation_bytes_per_value)"
        ),
        title="Arithmetic intensity",
        doc="""→ the operations per byte moved of y = x @ Wᵀ with ``tokens`` rows of x:
        2 · tokens · in · out operations over the weight's bytes (in · out ·
        weight_bytes_per_value) plus the input's and the output's (tokens · (in + out) ·
        activation_bytes_per_value). Reference: ``qlearn.roofline.arithmetic_intensity``
        (Williams, Waterman and Patterson 2009), within 10⁻⁹ relative.""",
        inputs=_layer_shapes,
        reference=_intensity,
        rtol=1e-9,
        mistakes=[
            (
                _weights_only,
                "only the weight's bytes are counted: the activations read and written move too",
            )
        ],
        hint="""flops = 2 * tokens * in_features * out_features; moved = in_features *
        out_features * weight_bytes_per_value + tokens * (in_features + out_features) *
        activation_bytes_per_value; return flops / moved.""",
        passed="agrees with qlearn.roofline.arithmetic_intensity on {n} layers",
    ),
]
