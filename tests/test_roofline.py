"""qlearn.roofline: the byte counts against transformers' own cache and tensors, the formulas
against their definitions, and clear errors for bad input (``tiny_llama``: tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from qlearn import kernels, roofline


@pytest.mark.parametrize("tokens", [1, 7, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_counts_the_cache_transformers_builds(tiny_llama, tokens, dtype):
    model = tiny_llama.to(dtype)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    with torch.inference_mode():
        cache = model(ids, use_cache=True).past_key_values
    built = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    per_value = torch.finfo(dtype).bits // 8
    assert roofline.kv_cache_bytes(model.config, tokens, bytes_per_value=per_value) == built


def test_kv_cache_bytes_falls_back_to_attention_heads_and_hidden_over_heads():
    llama2 = SimpleNamespace(num_hidden_layers=32, num_attention_heads=32, hidden_size=4096)
    assert roofline.kv_cache_bytes(llama2, 4096) == 2 * 32 * 32 * 128 * 2 * 4096  # 2 GiB
    assert roofline.kv_cache_bytes(llama2, 10, batch=3, bytes_per_value=1) == 2 * 32 * 4096 * 30


def test_weight_bytes_counts_tied_tensors_once_and_kernel_buffers(tiny_llama):
    params = sum(p.numel() * 4 for p in tiny_llama.parameters())  # parameters() dedups ties
    params += sum(b.numel() * b.element_size() for b in tiny_llama.buffers())  # rotary inv_freq
    assert roofline.weight_bytes(tiny_llama) == params
    # decoding reads the tied embedding in full (it is the LM head): nothing subtracted
    assert roofline.weight_bytes_read(tiny_llama) == params
    int8 = kernels.quantize_model(tiny_llama, kind="int8")
    layers = [m for m in int8.modules() if isinstance(m, kernels.Int8WeightOnlyLinear)]
    linears = sum(m.in_features * m.out_features * 4 for m in layers)
    assert roofline.weight_bytes(int8) == params - linears + sum(m.nbytes() for m in layers)


def test_weight_bytes_read_skips_an_untied_embedding(tiny_llama):
    untied = LlamaForCausalLM(
        LlamaConfig(**{**tiny_llama.config.to_dict(), "tie_word_embeddings": False})
    )
    embedding = untied.get_input_embeddings().weight
    assert (
        roofline.weight_bytes_read(untied) == roofline.weight_bytes(untied) - embedding.numel() * 4
    )


@given(
    tokens=st.integers(1, 4096),
    features=st.tuples(st.integers(1, 8192), st.integers(1, 8192)),
    weight=st.sampled_from([4.0, 2.0, 1.0, 0.5]),
)
def test_arithmetic_intensity_grows_with_tokens_towards_the_activation_bound(
    tokens, features, weight
):
    i, o = features
    at = roofline.arithmetic_intensity(tokens, i, o, weight_bytes_per_value=weight)
    more = roofline.arithmetic_intensity(tokens + 1, i, o, weight_bytes_per_value=weight)
    assert at < more <= 2 * i * o / ((i + o) * 4)  # bounded by a weight that costs nothing
    one_token = roofline.arithmetic_intensity(1, 4096, 4096, weight_bytes_per_value=weight)
    assert one_token == pytest.approx(2 / (weight + 4 * 8192 / 4096**2), rel=1e-12)  # ≈ 2 / w


def test_bandwidth_and_limits_are_positive_and_consistent():
    bandwidth = roofline.measure_bandwidth(1 << 20, repeat=2)
    assert bandwidth > 1e8  # any machine copies more than 100 MB/s
    assert roofline.tokens_per_second_limit(2e8, 4e10) == pytest.approx(200)
    calls = []
    assert roofline.median_seconds(lambda: calls.append(1), 4, warmup=2) >= 0
    assert len(calls) == 6


def test_decode_seconds_per_token_runs_generate(tiny_llama):
    prompt = torch.tensor([[1, 2, 3]])
    assert roofline.decode_seconds_per_token(tiny_llama, prompt, new_tokens=3, repeat=1) > 0


def test_process_memory_of_the_libraries_alone():
    memory = roofline.process_memory("imports")
    assert memory.weights == 0 and 0 < memory.resident <= 2 * memory.peak


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: roofline.kv_cache_bytes(SimpleNamespace(), 4), TypeError, "config"),
        (lambda: roofline.kv_cache_bytes(LlamaConfig(), -1), ValueError, "tokens"),
        (
            lambda: roofline.kv_cache_bytes(LlamaConfig(), 4, bytes_per_value=0),
            ValueError,
            "bytes_per_value",
        ),
        (lambda: roofline.arithmetic_intensity(0, 4, 4), ValueError, "tokens"),
        (lambda: roofline.tokens_per_second_limit(0, 1e9), ValueError, "bytes_per_token"),
        (lambda: roofline.measure_bandwidth(16), ValueError, "n_bytes"),
        (lambda: roofline.median_seconds(3), TypeError, "fn"),
        (lambda: roofline.median_seconds(lambda: None, 0), ValueError, "repeat"),
        (lambda: roofline.weight_bytes("model"), TypeError, "model"),
        (lambda: roofline.process_memory("int2"), ValueError, "kind"),
        (
            lambda: roofline.decode_seconds_per_token(torch.nn.Linear(2, 2), torch.ones(3)),
            ValueError,
            "prompt",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_peak_memory_is_at_least_what_the_process_holds_now():
    import psutil

    held = torch.ones(1 << 24)  # 64 MiB, touched
    assert roofline.peak_memory() >= psutil.Process().memory_info().rss > held.numel()
