"""Tests of qlearn.smoothquant against the authors' code (mit-han-lab/smoothquant, its
``get_act_scales`` and ``smooth_ln_fcs_llama_like`` rewritten in plain torch below), against
ground truth computed here (the function is unchanged by smoothing; the maxima are those of the
layers' real inputs), on tiny Llama and GPT-2 models, and every bad argument. llmcompressor's
``SmoothQuantModifier`` is compared by scripts/compare_smoothquant_llmcompressor.py (it pins its
own transformers).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import int8, smoothquant
from qlearn.models import linear_layers


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _with_outliers(model: torch.nn.Module) -> torch.nn.Module:
    """Random norm weights (so folding is visible) and a few large channels in every norm."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.uniform_(0.5, 1.5, generator=generator)
                if p.ndim == 1 and name.endswith("weight"):
                    p[:: max(1, p.numel() // 4)] *= 20.0
    return model


def _ids(seed: int = 0, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, 30, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The authors' code (smoothquant/calibration.py, smoothquant/smooth.py), line by line
# ---------------------------------------------------------------------------------------------


def reference_act_scales(model, batches):
    """``get_act_scales``: a forward hook on every nn.Linear, max over tokens of |x|."""
    act_scales = {}

    def stat_tensor(name, tensor):
        hidden_dim = tensor.shape[-1]
        tensor = tensor.view(-1, hidden_dim).abs().detach()
        coming_max = torch.max(tensor, dim=0)[0].float().cpu()
        if name in act_scales:
            act_scales[name] = torch.max(act_scales[name], coming_max)
        else:
            act_scales[name] = coming_max

    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(
                m.register_forward_hook(lambda m, x, y, name=name: stat_tensor(name, x[0]))
            )
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in hooks:
        h.remove()
    return act_scales


def reference_smooth_ln_fcs(ln, fcs, act_scales, alpha=0.5):
    """``smooth_ln_fcs_llama_like``."""
    dtype = fcs[0].weight.dtype
    act_scales = act_scales.to(dtype=dtype)
    weight_scales = torch.cat([fc.weight.abs().max(dim=0, keepdim=True)[0] for fc in fcs], dim=0)
    weight_scales = weight_scales.max(dim=0)[0].clamp(min=1e-5)
    scales = (act_scales.pow(alpha) / weight_scales.pow(1 - alpha)).clamp(min=1e-5).to(dtype)
    with torch.no_grad():
        ln.weight.div_(scales)
        for fc in fcs:
            fc.weight.mul_(scales.view(1, -1))
    return scales


def reference_smooth_lm(model, scales, alpha=0.5):
    """``smooth_lm`` for Llama-like decoder layers."""
    for name, module in model.named_modules():
        if type(module).__name__ == "LlamaDecoderLayer":
            attn_ln = module.input_layernorm
            qkv = [module.self_attn.q_proj, module.self_attn.k_proj, module.self_attn.v_proj]
            reference_smooth_ln_fcs(attn_ln, qkv, scales[name + ".self_attn.q_proj"], alpha)
            ffn_ln = module.post_attention_layernorm
            fcs = [module.mlp.gate_proj, module.mlp.up_proj]
            reference_smooth_ln_fcs(ffn_ln, fcs, scales[name + ".mlp.gate_proj"], alpha)


# ---------------------------------------------------------------------------------------------
# smoothing_scales: the formula
# ---------------------------------------------------------------------------------------------


def test_smoothing_scales_is_equation_4_with_the_authors_clamps():
    act = _randn(16).abs() * 10
    act[3] = 0.0  # a dead channel: s = 0^α / ... clamps to 1e-5
    w1, w2 = _randn(8, 16, seed=1), _randn(4, 16, seed=2)
    w2[:, 5] = 0.0
    w1[:, 5] = 0.0  # a dead weight column: max|W_j| clamps to 1e-5
    for alpha in (0.0, 0.3, 0.5, 0.85, 1.0):
        w_max = torch.maximum(w1.abs().amax(0), w2.abs().amax(0)).clamp(min=1e-5)
        expected = (act.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
        got = smoothquant.smoothing_scales(act, [w1, w2], alpha=alpha)
        assert torch.equal(got, expected)
    assert torch.equal(
        smoothquant.smoothing_scales(act, w1, alpha=0.5),
        (act.sqrt() / w1.abs().amax(0).clamp(min=1e-5).sqrt()).clamp(min=1e-5),
    )


@settings(max_examples=60, deadline=None)
@given(
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    spike=st.floats(1.0, 1000.0),
)
def test_smoothing_moves_range_between_activations_and_weights(alpha, seed, spike):
    """After smoothing, max|X_j / s_j| = (max|X_j| · max|W_j|)^(1−α) and max|W_j · s_j| =
    (max|X_j| · max|W_j|)^α: their product is unchanged, and at α = 0.5 they are equal."""
    x = _randn(32, 12, seed=seed)
    x[:, seed % 12] *= spike
    w = _randn(6, 12, seed=seed + 1)
    a_max, w_max = x.abs().amax(0), w.abs().amax(0)
    s = smoothquant.smoothing_scales(a_max, w, alpha=alpha)
    x_hat, w_hat = (x / s).abs().amax(0), (w * s).abs().amax(0)
    torch.testing.assert_close(x_hat * w_hat, a_max * w_max, rtol=1e-4, atol=0)
    torch.testing.assert_close(x_hat, (a_max * w_max).pow(1 - alpha), rtol=1e-4, atol=0)
    torch.testing.assert_close(w_hat, (a_max * w_max).pow(alpha), rtol=1e-4, atol=0)
    if alpha == 0.5:
        torch.testing.assert_close(x_hat, w_hat, rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 1.5}, ValueError, "alpha: expected a number from 0 to 1"),
        ({"alpha": -0.1}, ValueError, "alpha: expected a number from 0 to 1"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": "0.5"}, TypeError, "alpha"),
        (
            {"act_absmax": torch.tensor([1.0, float("nan"), 2.0, 3.0])},
            ValueError,
            "act_absmax: expected finite",
        ),
        (
            {"act_absmax": torch.tensor([1.0, float("inf"), 2.0, 3.0])},
            ValueError,
            "act_absmax: expected finite",
        ),
        ({"act_absmax": -torch.ones(4)}, ValueError, "act_absmax: expected maxima"),
        ({"act_absmax": torch.ones(5)}, ValueError, "weight: expected 5 input columns"),
        ({"act_absmax": torch.ones(2, 2)}, ValueError, "act_absmax: expected a 1-D"),
        ({"weight": []}, ValueError, "weight: expected a weight or a list"),
        ({"weight": [torch.ones(3, 4), torch.ones(3, 5)]}, ValueError, r"weight\[1\]"),
        ({"weight": torch.ones(3, 4, dtype=torch.int32)}, TypeError, "weight: expected a floating"),
        ({"weight": torch.full((3, 4), float("nan"))}, ValueError, "weight: expected finite"),
    ],
)
def test_smoothing_scales_rejects_bad_input(kwargs, error, match):
    args = {"act_absmax": torch.ones(4), "weight": torch.ones(3, 4), "alpha": 0.5} | kwargs
    with pytest.raises(error, match=match):
        smoothquant.smoothing_scales(args["act_absmax"], args["weight"], alpha=args["alpha"])


# ---------------------------------------------------------------------------------------------
# activation_absmax and smooth_model_ on tiny models
# ---------------------------------------------------------------------------------------------


def test_activation_absmax_equals_the_authors_act_scales(tiny_llama):
    model = _with_outliers(tiny_llama)
    batches = [_ids(0), _ids(1)]
    ours = smoothquant.activation_absmax(model, batches)
    theirs = reference_act_scales(model, batches)
    assert set(ours) == {name for name, _ in linear_layers(model)}
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


def test_activation_absmax_is_the_maximum_of_the_real_input(tiny_llama):
    """Independent of any hook: the q_proj input is the input norm of the layer's hidden state."""
    model = _with_outliers(tiny_llama)
    ids = _ids(3)
    maxima = smoothquant.activation_absmax(model, [ids])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        for i, layer in enumerate(model.model.layers):
            x = layer.input_layernorm(hidden[i])
            expected = x.reshape(-1, x.shape[-1]).abs().amax(0)
            torch.testing.assert_close(
                maxima[f"model.layers.{i}.self_attn.q_proj"], expected, rtol=1e-6, atol=1e-6
            )


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smooth_model_equals_the_authors_smooth_lm(tiny_llama, alpha):
    model = _with_outliers(tiny_llama)
    batches = [_ids(0), _ids(1)]
    theirs = copy.deepcopy(model)
    reference_smooth_lm(theirs, reference_act_scales(theirs, batches), alpha)
    ours = copy.deepcopy(model)
    smoothing = smoothquant.smooth_model_(ours, batches, alpha=alpha)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert smoothing.alpha == alpha
    assert [g.norm for g in smoothing.groups] == [
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
        "model.layers.1.input_layernorm",
        "model.layers.1.post_attention_layernorm",
    ]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_smoothing_leaves_the_function_unchanged(tiny_model, alpha):
    model = _with_outliers(tiny_model)
    ids = _ids(5)
    smoothed = copy.deepcopy(model)
    smoothing = smoothquant.smooth_model_(smoothed, [_ids(0)], alpha=alpha)
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in smoothing.scales.values())
    with torch.no_grad():
        torch.testing.assert_close(smoothed(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_smoothing_flattens_the_activations_it_was_calibrated_on(tiny_llama):
    """α = 1: every smoothed input channel's maximum becomes 1 on the calibration data."""
    model = _with_outliers(tiny_llama)
    batches = [_ids(0), _ids(1)]
    smoothed = copy.deepcopy(model)
    smoothquant.smooth_model_(smoothed, batches, alpha=1.0)
    after = smoothquant.activation_absmax(smoothed, batches)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"):
        torch.testing.assert_close(after[name], torch.ones_like(after[name]), rtol=1e-4, atol=0)


def test_act_absmax_given_skips_the_calibration_and_gives_the_same_model(tiny_llama):
    model = _with_outliers(tiny_llama)
    batches = [_ids(0)]
    maxima = smoothquant.activation_absmax(model, batches)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    smoothquant.smooth_model_(a, batches, alpha=0.6)
    smoothquant.smooth_model_(b, act_absmax=maxima, alpha=0.6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_quantize_model_makes_w8a8_int8_layers_and_leaves_the_original(tiny_llama):
    model = _with_outliers(tiny_llama)
    before = copy.deepcopy(model.state_dict())
    maxima = smoothquant.activation_absmax(model, [_ids(0)])
    quantized, _ = smoothquant.quantize_model(model, [_ids(0)], alpha=0.5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    layers = dict(quantized.named_modules())
    for name, _ in linear_layers(model):
        assert isinstance(layers[name], int8.Int8Linear) and layers[name].mode == "tensor"
    # the same as smoothing by hand, then int8's W8A8 per tensor
    by_hand = copy.deepcopy(model)
    smoothquant.smooth_model_(by_hand, act_absmax=maxima, alpha=0.5)
    by_hand = int8.quantize_model(by_hand, mode="tensor")
    ids = _ids(7)
    with torch.no_grad():
        assert torch.equal(quantized(ids).logits, by_hand(ids).logits)


def test_smoothing_helps_per_tensor_w8a8_when_one_channel_is_huge():
    """The paper's point (Fig. 4): one activation channel 100× the rest ruins a per-tensor
    scale; smoothed, the same int8 matmul (int8.w8a8_matmul) is several times more accurate."""
    x = _randn(64, 128, seed=11)
    x[:, 17] *= 100.0
    w = _randn(32, 128, seed=12) * 0.05
    exact = x @ w.T
    s = smoothquant.smoothing_scales(x.abs().amax(0), w, alpha=0.5)
    plain = int8.w8a8_matmul(x, w, granularity="tensor")
    smoothed = int8.w8a8_matmul(x / s, w * s, granularity="tensor")
    error_plain = (plain - exact).pow(2).mean()
    error_smoothed = (smoothed - exact).pow(2).mean()
    assert error_smoothed < error_plain / 5


# ---------------------------------------------------------------------------------------------
# Bad models and arguments
# ---------------------------------------------------------------------------------------------


def test_a_norm_that_cannot_take_the_scales_is_named(tiny_llama):
    tiny_llama.model.layers[1].post_attention_layernorm = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"model.layers.1.post_attention_layernorm to be a norm"):
        smoothquant.smoothing_groups(tiny_llama)
    before = tiny_llama.model.layers[0].input_layernorm.weight.clone()
    with pytest.raises(ValueError, match="post_attention_layernorm"):
        smoothquant.smooth_model_(tiny_llama, [_ids(0)])
    assert torch.equal(tiny_llama.model.layers[0].input_layernorm.weight, before)  # checked first


def test_an_unknown_decoder_layer_is_named(tiny_llama):
    del tiny_llama.model.layers[0].mlp.up_proj
    with pytest.raises(ValueError, match=r"Llama-style .* at model.layers.0"):
        smoothquant.smoothing_groups(tiny_llama)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 2.0}, ValueError, "alpha: expected a number from 0 to 1"),
        ({"granularity": "channel"}, ValueError, "granularity: expected one of"),
        ({"act_absmax": [1.0]}, TypeError, "act_absmax: expected a dict"),
        ({"act_absmax": {}}, ValueError, "act_absmax: expected the maxima of model.layers.0"),
        ({"calibration_texts": None}, ValueError, "calibration_texts: expected calibration"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_quantize_model_rejects_bad_arguments(tiny_llama, kwargs, error, match):
    args = {"calibration_texts": [_ids(0)]} | kwargs
    with pytest.raises(error, match=match):
        smoothquant.quantize_model(tiny_llama, **args)


def test_nan_maxima_are_refused_before_anything_changes(tiny_llama):
    maxima = smoothquant.activation_absmax(tiny_llama, [_ids(0)])
    name = "model.layers.1.mlp.gate_proj"
    maxima[name] = maxima[name].clone()
    maxima[name][0] = float("nan")
    before = copy.deepcopy(tiny_llama.state_dict())
    with pytest.raises(ValueError, match=r"act_absmax\['model.layers.1.mlp.gate_proj'\]"):
        smoothquant.smooth_model_(tiny_llama, act_absmax=maxima)
    for key, value in tiny_llama.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_not_a_model():
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        smoothquant.smooth_model_("gpt2", ["text"])


# ---------------------------------------------------------------------------------------------
# The default model
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoothing_the_default_model(default_model):
    """Logits unchanged before quantization; per-tensor W8A8 better smoothed than not."""
    from qlearn import data
    from qlearn.evaluate import perplexity

    model, tokenizer = default_model
    emma, text = data.load_text("emma"), data.load_text("pride_and_prejudice")
    maxima = smoothquant.activation_absmax(model, emma, tokenizer, nsamples=4, seqlen=256)
    smoothed = copy.deepcopy(model)
    smoothquant.smooth_model_(smoothed, act_absmax=maxima, alpha=0.5)
    ids = tokenizer(text[:3000], return_tensors="pt")["input_ids"][:, :128]
    with torch.no_grad():
        reference = model(ids).logits
        difference = (smoothed(ids).logits - reference).abs().max()
    assert difference < 1e-3 * reference.abs().max()  # float32 rounding
    del smoothed
    plain = perplexity(int8.quantize_model(model, mode="tensor"), tokenizer, text, max_tokens=512)
    smooth_model, _ = smoothquant.quantize_model(model, alpha=0.5, act_absmax=maxima)
    smooth = perplexity(smooth_model, tokenizer, text, max_tokens=512)
    fp32 = perplexity(model, tokenizer, text, max_tokens=512)
    assert fp32 < smooth < plain
