"""Tests of qlearn.rotation: every Hadamard matrix is one (±1 entries, H Hᵀ = n I, exactly),
Sylvester's equal scipy's, the fast transform equals the dense product, random matrices are
orthogonal, kurtosis equals scipy's; a rotated model computes the same logits while its residual
stream really is rotated (hidden states = original · Q); the outliers are spread; bad input.
"""

from __future__ import annotations

import copy
import math

import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import rotation
from qlearn.models import linear_layers

ORDERS = [1, 2, 4, 8, 12, 16, 20, 24, 28, 36, 44, 48, 60, 64, 72, 96, 128, 576, 1536]


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 30, (2, 24), generator=torch.Generator().manual_seed(seed))


def _with_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Random RMSNorm weights, so that folding them is visible."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 2.0, generator=generator)
    return model


# ---------------------------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", ORDERS)
def test_every_hadamard_matrix_is_one(n):
    h = rotation.hadamard(n, normalized=False)
    assert h.dtype == torch.float64 and h.shape == (n, n)
    assert bool(((h == 1) | (h == -1)).all())
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))  # exact: integers
    q = rotation.hadamard(n)
    torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64, 128, 1024])
def test_powers_of_two_are_sylvester_as_in_scipy(n):
    expected = torch.from_numpy(scipy.linalg.hadamard(n).astype("float64"))
    assert torch.equal(rotation.hadamard(n, normalized=False), expected)


def test_the_orders_the_course_model_needs():
    assert rotation.hadamard_order(576) == (36, 16)  # hidden size: Paley II (q = 17) ⊗ 16
    assert rotation.hadamard_order(1536) == (12, 128)  # intermediate: Paley I (q = 11) ⊗ 128
    assert rotation.hadamard_order(64) == (1, 64)  # head dimension
    for n in (3, 6, 9, 10, 18, 52, 100):
        assert rotation.hadamard_order(n) is None


@pytest.mark.parametrize("n", [2, 12, 20, 36, 64, 576, 1536])
def test_the_fast_transform_is_the_dense_product(n):
    x = _randn(3, 5, n, seed=n, dtype=torch.float64)
    torch.testing.assert_close(
        rotation.apply_hadamard(x), x @ rotation.hadamard(n), rtol=0, atol=1e-12
    )
    x32 = x.float()
    y = rotation.apply_hadamard(x32)
    assert y.dtype == torch.float32 and y.shape == x32.shape
    torch.testing.assert_close(y, (x @ rotation.hadamard(n)).float(), rtol=1e-5, atol=1e-5)
    assert rotation.apply_hadamard(x.bfloat16()).dtype == torch.bfloat16


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([4, 12, 24, 36, 64, 576]), seed=st.integers(0, 10_000))
def test_a_rotation_keeps_norms_and_spreads_a_spike_evenly(n, seed):
    x = _randn(4, n, seed=seed, dtype=torch.float64)
    y = rotation.apply_hadamard(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)
    spike = torch.zeros(n, dtype=torch.float64)
    spike[seed % n] = 100.0
    spread = rotation.apply_hadamard(spike)
    torch.testing.assert_close(spread.abs(), torch.full_like(spread, 100.0 / math.sqrt(n)))


def test_random_orthogonal_is_orthogonal_and_seeded():
    q = rotation.random_orthogonal(72, seed=3)
    torch.testing.assert_close(q @ q.T, torch.eye(72, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(q, rotation.random_orthogonal(72, seed=3))
    assert not torch.allclose(q, rotation.random_orthogonal(72, seed=4))


def test_kurtosis_is_scipys_pearson_kurtosis():
    for x in (_randn(10_000, seed=1), torch.rand(5000, generator=torch.Generator().manual_seed(2))):
        expected = scipy.stats.kurtosis(x.double().numpy(), fisher=False)
        assert rotation.kurtosis(x) == pytest.approx(expected, rel=1e-10)
    heavy = _randn(4096, seed=3)
    heavy[::512] *= 50
    assert (
        rotation.kurtosis(rotation.apply_hadamard(heavy.reshape(4, 1024)))
        < 4
        < rotation.kurtosis(heavy)
    )


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def test_fold_norms_keeps_the_logits_and_unties_the_head(tiny_llama):
    model = _with_norms(tiny_llama)
    ids = _ids()
    embedding = model.model.embed_tokens.weight.detach().clone()
    folded = rotation.fold_norms_(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    for name, p in folded.named_parameters():
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
    assert folded.lm_head.weight is not folded.model.embed_tokens.weight
    assert torch.equal(folded.model.embed_tokens.weight, embedding)
    assert folded.config.tie_word_embeddings is False


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_a_rotated_model_computes_the_same_logits(tiny_llama, kind):
    model = _with_norms(tiny_llama)
    ids = _ids(2)
    rotated = copy.deepcopy(model)
    info = rotation.rotate_model_(rotated, kind=kind, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(rotated(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert info.kind == kind and info.size == 64
    assert info.online == (
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.down_proj",
    )
    assert isinstance(rotated.model.layers[0].mlp.down_proj, rotation.RotatedLinear)
    assert len(list(linear_layers(rotated))) == len(list(linear_layers(model)))


def test_the_residual_stream_is_rotated(tiny_llama):
    """Not the identity: every hidden state of the rotated model is the original's times Q."""
    model = _with_norms(tiny_llama)
    ids = _ids(3)
    rotated = copy.deepcopy(model)
    rotation.rotate_model_(rotated)
    q = rotation.hadamard(64).float()
    with torch.no_grad():
        before = model(ids, output_hidden_states=True).hidden_states
        after = rotated(ids, output_hidden_states=True).hidden_states
    for i, (h, r) in enumerate(zip(before[:-1], after[:-1], strict=True)):  # the last is normed
        torch.testing.assert_close(r, h @ q, rtol=1e-4, atol=1e-5, msg=f"hidden state {i}")
        assert not torch.allclose(r, h, atol=1e-3)


def test_without_online_rotations_the_layers_stay_linear(tiny_llama):
    model = _with_norms(tiny_llama)
    rotated = copy.deepcopy(model)
    info = rotation.rotate_model_(rotated, online=False)
    assert info.online == ()
    assert isinstance(rotated.model.layers[0].mlp.down_proj, torch.nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(
            rotated(_ids()).logits, model(_ids()).logits, rtol=1e-5, atol=1e-5
        )


def test_rotation_spreads_the_outliers_of_the_down_proj_input(tiny_llama):
    """A spike in the SiLU product (down_proj's input) is spread by the online Hadamard."""
    model = _with_norms(tiny_llama)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[5] *= 200  # one input channel of down_proj
    rotated = copy.deepcopy(model)
    rotation.rotate_model_(rotated)
    seen = {}

    def catch(name):
        return lambda module, args: seen.__setitem__(name, args[0].detach())

    model.model.layers[0].mlp.down_proj.register_forward_pre_hook(catch("before"))
    rotated.model.layers[0].mlp.down_proj.linear.register_forward_pre_hook(catch("after"))
    with torch.no_grad():
        model(_ids())
        rotated(_ids())
    assert rotation.kurtosis(seen["after"]) < rotation.kurtosis(seen["before"]) / 5


def test_generate_works_on_a_rotated_model(tiny_llama):
    model = _with_norms(tiny_llama)
    rotated = copy.deepcopy(model)
    rotation.rotate_model_(rotated)
    ids = _ids()[:1, :8]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(rotated.generate(ids, **kwargs), model.generate(ids, **kwargs))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _llama(hidden: int, intermediate: int, heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def test_a_size_without_a_hadamard_needs_kind_random():
    model = _llama(52, 64, heads=2)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"kind='hadamard'.*got 52.*kind='random'"):
        rotation.rotate_model_(model)
    for key, value in model.state_dict().items():  # refused before anything changed
        assert torch.equal(value, state[key]), key
    reference = copy.deepcopy(model)
    info = rotation.rotate_model_(model, kind="random")
    assert info.factors is None
    with torch.no_grad():
        torch.testing.assert_close(
            model(_ids()).logits, reference(_ids()).logits, rtol=1e-5, atol=1e-5
        )


def test_an_online_size_without_a_hadamard_is_refused_or_random():
    model = _llama(64, 72 + 28)  # 100: no Paley order
    with pytest.raises(ValueError, match="got 100"):
        rotation.rotate_model_(copy.deepcopy(model))
    rotated = copy.deepcopy(model)
    rotation.rotate_model_(rotated, kind="random")
    assert rotated.model.layers[0].mlp.down_proj.rotation.matrix is not None  # dense
    with torch.no_grad():
        torch.testing.assert_close(
            rotated(_ids()).logits, model(_ids()).logits, rtol=1e-5, atol=1e-5
        )


def test_layernorm_models_are_refused_naming_the_layer(tiny_gpt2):
    with pytest.raises(ValueError, match=r"Llama-style decoder layers .* at transformer.h.0"):
        rotation.rotate_model_(tiny_gpt2)


def test_a_norm_that_is_not_an_rmsnorm_is_named(tiny_llama):
    tiny_llama.model.layers[1].post_attention_layernorm = torch.nn.LayerNorm(64)
    with pytest.raises(
        ValueError, match=r"model.layers.1.post_attention_layernorm to be an RMSNorm"
    ):
        rotation.fold_norms_(tiny_llama)


def test_rotating_twice_is_refused(tiny_llama):
    rotation.rotate_model_(tiny_llama)
    with pytest.raises(ValueError, match="already rotated or quantized"):
        rotation.rotate_model_(tiny_llama)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: rotation.hadamard(18), ValueError, "n: expected an order with a Hadamard"),
        (lambda: rotation.hadamard(0), ValueError, "n"),
        (lambda: rotation.hadamard(4.0), TypeError, "n"),
        (lambda: rotation.apply_hadamard(torch.ones(3, 6)), ValueError, r"x.shape\[-1\]"),
        (lambda: rotation.apply_hadamard(torch.ones(4, dtype=torch.int64)), TypeError, "x"),
        (
            lambda: rotation.apply_hadamard(torch.tensor([1.0, float("nan")])),
            ValueError,
            "x: expected finite",
        ),
        (lambda: rotation.random_orthogonal(0), ValueError, "n"),
        (lambda: rotation.kurtosis(torch.ones(8)), ValueError, "x: expected values"),
        (lambda: rotation.OnlineRotation(6), ValueError, "size"),
        (
            lambda: rotation.OnlineRotation(4, torch.ones(3, 3)),
            ValueError,
            "matrix: expected shape",
        ),
        (
            lambda: rotation.OnlineRotation(4)(torch.ones(2, 8)),
            ValueError,
            "x: expected 4 features",
        ),
        (
            lambda: rotation.RotatedLinear(rotation.OnlineRotation(4), torch.nn.Linear(8, 2)),
            ValueError,
            "linear: expected 4",
        ),
        (lambda: rotation.RotatedLinear("H", torch.nn.Linear(8, 2)), TypeError, "rotation"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "givens"}, ValueError, "kind: expected one of"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"online": "yes"}, TypeError, "online"),
    ],
)
def test_rotate_model_rejects_bad_arguments(tiny_llama, kwargs, error, match):
    with pytest.raises(error, match=match):
        rotation.rotate_model_(tiny_llama, **kwargs)


# ---------------------------------------------------------------------------------------------
# The default model
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rotating_the_default_model(default_model):
    """Same logits to float rounding; per-tensor W8A8 far better rotated than not."""
    from qlearn import data, int8
    from qlearn.evaluate import perplexity

    model, tokenizer = default_model
    text = data.load_text("pride_and_prejudice")
    rotated = copy.deepcopy(model)
    info = rotation.rotate_model_(rotated)
    assert info.factors == (36, 16) and len(info.online) == 60
    ids = tokenizer(text[:3000], return_tensors="pt")["input_ids"][:, :128]
    with torch.no_grad():
        reference = model(ids).logits
        assert (rotated(ids).logits - reference).abs().max() < 1e-3 * reference.abs().max()
    plain = perplexity(int8.quantize_model(model, mode="tensor"), tokenizer, text, max_tokens=512)
    turned = perplexity(
        int8.quantize_model(rotated, mode="tensor"), tokenizer, text, max_tokens=512
    )
    fp32 = perplexity(model, tokenizer, text, max_tokens=512)
    assert fp32 < turned < plain
    assert turned / fp32 < 1.1 < plain / fp32
