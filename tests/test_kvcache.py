"""Tests of qlearn.kvcache: the per-channel and per-token rounding against the formula written
here, its error bound (hypothesis), KIVI's point (keys with outlier channels lose less per
channel than per token), the cache's window and blocks, its bytes, that transformers' generate()
and a chunked forward pass use it, the key rotation, and every bad argument.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from qlearn import kvcache, rotation


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids(length: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 30, (1, length), generator=torch.Generator().manual_seed(seed))


def reference_round(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """KIVI's asymmetric min–max rounding along ``dim``, with float16 scale and minimum."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    minimum = lo.half().float()
    scale = ((hi - minimum) / (2**bits - 1)).half().float()
    q = torch.round((x - minimum) / torch.where(scale > 0, scale, 1.0)).clamp(0, 2**bits - 1)
    return minimum + scale * q


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_per_channel_and_per_token_are_the_formula(bits):
    x = _randn(2, 3, 16, 32, seed=bits)
    block = kvcache.quantize_per_channel(x, bits=bits)
    assert block.codes.dtype == torch.uint8 and block.codes.shape == x.shape
    assert block.scale.shape == (2, 3, 1, 32)  # one per batch, head and channel
    assert torch.equal(block.dequantize(), reference_round(x, bits, dim=-2))
    grouped = kvcache.quantize_per_token(x, bits=bits, group_size=8)
    assert grouped.scale.shape == (2, 3, 16, 4, 1)  # one per token and group of 8 channels
    expected = reference_round(x.reshape(2, 3, 16, 4, 8), bits, dim=-1).reshape(x.shape)
    assert torch.equal(grouped.dequantize(), expected)
    whole = kvcache.quantize_per_token(x, bits=bits)
    assert torch.equal(whole.dequantize(), reference_round(x, bits, dim=-1))


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(2, 8), seed=st.integers(0, 10_000), spread=st.floats(0.01, 100.0))
def test_the_rounding_error_is_at_most_half_a_step(bits, seed, spread):
    x = _randn(1, 2, 8, 16, seed=seed) * spread
    block = kvcache.quantize_per_channel(x, bits=bits)
    step = block.scale.float()
    slack = 1e-3 * (x.abs().amax(-2, keepdim=True) + step)  # float16 scale and minimum
    assert bool(((block.dequantize() - x).abs() <= step / 2 + slack).all())
    assert int(block.codes.max()) <= 2**bits - 1


def test_keys_with_outlier_channels_lose_less_per_channel():
    """KIVI §3.1: a few key channels are large for every token; per channel they get their own
    scale, per token they set every token's scale."""
    keys = _randn(1, 2, 64, 64, seed=3)
    keys[..., [5, 40]] *= 30.0
    per_channel = kvcache.quantize_per_channel(keys, bits=2).dequantize()
    per_token = kvcache.quantize_per_token(keys, bits=2).dequantize()
    error = {name: (x - keys).pow(2).mean() for name, x in [("c", per_channel), ("t", per_token)]}
    assert error["c"] < error["t"] / 2


def test_the_cache_keeps_a_recent_window_and_blocks(tiny_llama):
    cache = kvcache.KIVICache(tiny_llama.config, bits=4, residual_length=8, group_size=16)
    with torch.no_grad():
        tiny_llama(_ids(21), past_key_values=cache)
    for layer in cache.layers:
        assert len(layer.key_blocks) == len(layer.value_blocks) == 2  # 16 of 21 tokens
        assert layer.keys.shape[-2] == layer.values.shape[-2] == 5
    assert cache.get_seq_length() == 21
    with torch.no_grad():
        tiny_llama(_ids(3, seed=1), past_key_values=cache)
    assert len(cache.layers[0].key_blocks) == 3 and cache.layers[0].keys.shape[-2] == 0


def test_the_cache_bytes_are_codes_scales_and_window(tiny_llama):
    config = tiny_llama.config
    cache = kvcache.KIVICache(config, bits=2, residual_length=8, group_size=16)
    with torch.no_grad():
        tiny_llama(_ids(21), past_key_values=cache)
    layers, heads, head_dim = 2, config.num_key_value_heads, 16
    quantized = 16 * heads * head_dim  # values per layer, keys or values alike
    keys = quantized * 2 / 8 + 2 * 2 * (2 * heads * head_dim)  # 2 blocks: scale, min per channel
    values = quantized * 2 / 8 + 2 * 2 * (16 * heads * head_dim // 16)  # per token and group
    window = 2 * 5 * heads * head_dim * 4  # 5 float32 tokens, keys and values
    assert cache.nbytes() == layers * (keys + values + window)


def test_chunked_logits_with_a_plain_cache_is_one_forward_pass(tiny_llama):
    ids = _ids(40)
    with torch.no_grad():
        expected = tiny_llama(ids).logits
    got = kvcache.chunked_logits(
        tiny_llama, ids, DynamicCache(config=tiny_llama.config), chunk_size=7
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_new_tokens_are_used_in_full_precision_and_older_ones_quantized(tiny_llama):
    ids = _ids(40)
    with torch.no_grad():
        expected = tiny_llama(ids).logits
    cache = kvcache.KIVICache(tiny_llama.config, bits=2, residual_length=8, group_size=16)
    got = kvcache.chunked_logits(tiny_llama, ids, cache, chunk_size=10)
    torch.testing.assert_close(got[:, :10], expected[:, :10], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[:, 10:], expected[:, 10:], atol=1e-4)
    errors = []
    for bits in (8, 4, 2):
        cache = kvcache.KIVICache(tiny_llama.config, bits=bits, residual_length=8, group_size=16)
        errors.append(
            float(
                (kvcache.chunked_logits(tiny_llama, ids, cache, chunk_size=4) - expected)
                .abs()
                .max()
            )
        )
    assert errors[0] < errors[1] < errors[2]


@pytest.mark.parametrize("options", [{}, {"rotate_keys": True}, {"key_granularity": "token"}])
def test_generate_uses_the_cache(tiny_llama, options):
    ids = _ids(10)
    kwargs = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": 0}
    expected = tiny_llama.generate(ids, **kwargs)
    cache = kvcache.KIVICache(
        tiny_llama.config, bits=8, residual_length=8, group_size=16, **options
    )
    assert torch.equal(tiny_llama.generate(ids, past_key_values=cache, **kwargs), expected)
    assert cache.get_seq_length() == 29 and len(cache.layers[0].key_blocks) == 3


def test_rotated_keys_are_stored_rotated_and_given_back(tiny_llama):
    layer = kvcache.KIVILayer(bits=8, residual_length=4, group_size=16, rotate_keys=True)
    keys, values = _randn(1, 2, 4, 16, seed=1), _randn(1, 2, 4, 16, seed=2)
    layer.update(keys, values)
    h = rotation.hadamard(16).float()
    stored = layer.key_blocks[0].dequantize()
    torch.testing.assert_close(stored, keys @ h, rtol=0, atol=0.02)  # the codes are of k H
    returned, _ = layer.update(_randn(1, 2, 1, 16, seed=3), _randn(1, 2, 1, 16, seed=4))
    torch.testing.assert_close(returned[..., :4, :], keys, rtol=0, atol=0.02)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: kvcache.KIVILayer(bits=1), ValueError, "bits"),
        (lambda: kvcache.KIVILayer(bits=9), ValueError, "bits"),
        (lambda: kvcache.KIVILayer(bits=4.0), TypeError, "bits"),
        (lambda: kvcache.KIVILayer(residual_length=0), ValueError, "residual_length"),
        (lambda: kvcache.KIVILayer(key_granularity="head"), ValueError, "key_granularity"),
        (lambda: kvcache.KIVILayer(rotate_keys=1), TypeError, "rotate_keys"),
        (lambda: kvcache.KIVILayer(group_size=0), ValueError, "group_size"),
        (lambda: kvcache.KIVICache("llama"), TypeError, "config"),
        (
            lambda: kvcache.quantize_per_channel(torch.ones(4, 4), bits=2),
            ValueError,
            "x: expected a 4-D",
        ),
        (
            lambda: kvcache.quantize_per_channel(torch.full((1, 1, 2, 2), math.nan), bits=2),
            ValueError,
            "x: expected finite",
        ),
        (
            lambda: kvcache.quantize_per_token(torch.ones(1, 1, 2, 6), bits=2, group_size=4),
            ValueError,
            "group_size: expected a divisor",
        ),
        (
            lambda: kvcache.chunked_logits(
                torch.nn.Linear(2, 2), torch.ones(2, 3, dtype=torch.long), DynamicCache()
            ),
            ValueError,
            "ids",
        ),
        (
            lambda: kvcache.chunked_logits(
                torch.nn.Linear(2, 2), torch.ones(1, 3, dtype=torch.long), "cache"
            ),
            TypeError,
            "cache",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_group_size_the_head_does_not_divide_is_named_at_the_first_update(tiny_llama):
    cache = kvcache.KIVICache(tiny_llama.config, group_size=12)  # head dimension 16
    with pytest.raises(ValueError, match="group_size: expected a divisor of the head dimension 16"):
        tiny_llama(_ids(4), past_key_values=cache)


def test_transformers_quantized_cache_runs_beside_it_on_cpu(tiny_llama):
    """transformers' own KIVI-like cache (quanto backend): both near FP32 at 4 bits, both worse
    at 2; they differ by design (quanto: keys and values per channel, re-quantized each flush)."""
    pytest.importorskip("optimum.quanto")
    from transformers import QuantizedCache

    ids = _ids(48)
    with torch.no_grad():
        expected = tiny_llama(ids).logits
    scale = float(expected.abs().max())
    for bits in (4, 2):
        theirs = QuantizedCache(
            "quanto", tiny_llama.config, nbits=bits, q_group_size=16, residual_length=8
        )
        ours = kvcache.KIVICache(tiny_llama.config, bits=bits, residual_length=8, group_size=16)
        for cache in (theirs, ours):
            error = float(
                (kvcache.chunked_logits(tiny_llama, ids, cache, chunk_size=4) - expected)
                .abs()
                .max()
            )
            assert 0 < error < 0.2 * scale


@pytest.mark.slow
def test_kivi_on_the_default_model(default_model):
    """KIVI's claim on the real model: at 2 bits keys per channel stray far less than per token;
    at 8 bits the cache changes almost nothing; the bytes shrink with the bits."""
    from qlearn import data
    from qlearn.evaluate import kl_per_token

    model, tokenizer = default_model
    ids = tokenizer(data.load_text("pride_and_prejudice"), return_tensors="pt")["input_ids"]
    ids = ids[:, :256]
    reference = kvcache.chunked_logits(model, ids, DynamicCache(config=model.config), chunk_size=32)

    def kl(**options):
        cache = kvcache.KIVICache(model.config, residual_length=32, group_size=32, **options)
        logits = kvcache.chunked_logits(model, ids, cache, chunk_size=32)
        return float(kl_per_token(reference[0], logits[0]).mean()), cache.nbytes()

    kl8, bytes8 = kl(bits=8)
    kl2_channel, bytes2 = kl(bits=2)
    kl2_token, _ = kl(bits=2, key_granularity="token")
    assert kl8 < 1e-3 < kl2_channel < kl2_token / 2
    assert bytes2 < bytes8 / 2
