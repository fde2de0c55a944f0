"""Tests of qlearn.awq against the authors' code (mit-han-lab/llm-awq, rewritten line by line in
plain torch below: ``pseudo_quantize_tensor``, the scale formula of ``_search_module_scale``,
``auto_clip_layer``), against ground truth computed here by brute force (the chosen α minimises
the output error over the grid; folding the scales leaves the model's function unchanged), on
tiny models with outlier channels, and every bad argument.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlearn import Quantized, awq
from qlearn.evaluate import perplexity
from qlearn.models import get_weight, linear_layers


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _activations(tokens: int, channels: int, *, seed: int = 0) -> torch.Tensor:
    """Inputs like a transformer's: N(0, 1) with a few channels 20-50× larger (Lin et al. §3.1)."""
    x = _randn(tokens, channels, seed=seed)
    x[:, :: channels // 4] *= 30.0
    return x


# ---------------------------------------------------------------------------------------------
# The authors' code, line by line (awq/quantize/quantizer.py, auto_scale.py, auto_clip.py)
# ---------------------------------------------------------------------------------------------


def reference_pseudo_quantize(w: torch.Tensor, n_bit: int, q_group_size: int) -> torch.Tensor:
    org_w_shape = w.shape
    if q_group_size > 0:
        assert org_w_shape[-1] % q_group_size == 0
        w = w.reshape(-1, q_group_size)
    max_val = w.amax(dim=1, keepdim=True)
    min_val = w.amin(dim=1, keepdim=True)
    max_int, min_int = 2**n_bit - 1, 0
    scales = (max_val - min_val).clamp(min=1e-5) / max_int
    zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
    w = (torch.clamp(torch.round(w / scales) + zeros, min_int, max_int) - zeros) * scales
    return w.reshape(org_w_shape)


def reference_scales(x: torch.Tensor, ratio: float) -> torch.Tensor:
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)  # get_act_scale
    scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
    return scales / (scales.max() * scales.min()).sqrt()


def reference_auto_clip(w, input_feat, n_bit, group_size, n_grid=20, max_shrink=0.5, n_token=512):
    input_feat = input_feat.view(-1, input_feat.shape[-1])
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, group_size)
    input_feat = input_feat[:, 0 :: input_feat.shape[1] // n_token]
    w = w.reshape(w.shape[0], 1, -1, group_size)
    org_max_val = w.abs().amax(dim=-1, keepdim=True)  # co, 1, n_group, 1
    best_max_val = org_max_val.clone()
    min_errs = torch.ones_like(org_max_val) * 1e9
    org_out = (input_feat * w).sum(dim=-1)  # co, n_token, n_group
    for i_s in range(int(max_shrink * n_grid)):
        max_val = org_max_val * (1 - i_s / n_grid)
        cur_w = torch.clamp(w, -max_val, max_val)
        q_w = reference_pseudo_quantize(cur_w, n_bit, group_size)
        cur_out = (input_feat * q_w).sum(dim=-1)
        err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
        cur_best_idx = err < min_errs
        min_errs[cur_best_idx] = err[cur_best_idx]
        best_max_val[cur_best_idx] = max_val[cur_best_idx]
    return best_max_val.squeeze(1).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# The quantizer and the scales
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, None])
def test_pseudo_quantize_equals_authors_quantizer(bits, group_size):
    w = _randn(64, 256, seed=bits)
    w[3] += 5.0  # a row with no negative values: the range is not stretched to hold 0
    expected = reference_pseudo_quantize(w, bits, group_size or -1)
    assert torch.equal(awq.pseudo_quantize(w, bits=bits, group_size=group_size), expected)
    q = awq.quantize_groups(w, bits=bits, group_size=group_size)
    assert torch.equal(q.dequantize(), expected)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
    assert q.scale.shape == (64, 256 // (group_size or 256))


def test_a_short_last_group_is_quantized_on_its_own():
    """576 inputs in groups of 128: four groups of 128 and one of 64, each its own range."""
    w = _randn(8, 576, seed=1)
    ours = awq.pseudo_quantize(w, bits=4, group_size=128)
    assert torch.equal(awq.quantize_groups(w, bits=4, group_size=128).dequantize(), ours)
    assert torch.equal(ours[:, :512], reference_pseudo_quantize(w[:, :512], 4, 128))
    assert torch.equal(ours[:, 512:], reference_pseudo_quantize(w[:, 512:], 4, 64))
    assert awq.quantize_groups(w, group_size=128).scale.shape == (8, 5)


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0, 1), seed=st.integers(0, 100))
def test_awq_scales_equal_authors_formula(alpha, seed):
    x = _activations(64, 32, seed=seed)
    x_mean = x.abs().mean(dim=0)
    torch.testing.assert_close(awq.awq_scales(x_mean, alpha), reference_scales(x, alpha))
    assert torch.equal(awq.awq_scales(x_mean, 0.0), torch.ones(32))


# ---------------------------------------------------------------------------------------------
# The scale search: ground truth by brute force
# ---------------------------------------------------------------------------------------------


def test_search_scale_minimises_a_layers_output_error_over_the_grid():
    """For each α, scale, quantize, unscale and multiply by hand: the errors are the search's,
    the α chosen is the grid's minimum, and it beats plain RTN (α = 0) on outlier inputs."""
    x, layer = _activations(256, 128), nn.Linear(128, 64)
    with torch.no_grad():
        layer.weight.copy_(_randn(64, 128, seed=2) * 0.05)
    found = awq.search_scale(layer, [layer], x, bits=3, group_size=32)
    errors = []
    expected_out = layer(x).detach()
    for alpha in awq.DEFAULT_ALPHAS:
        s = reference_scales(x, alpha)
        w_q = reference_pseudo_quantize(layer.weight.detach() * s, 3, 32) / s
        out = nn.functional.linear(x, w_q, layer.bias).detach()
        errors.append(float((out - expected_out).pow(2).mean()))
    torch.testing.assert_close(found.errors, torch.tensor(errors, dtype=torch.float64))
    assert found.alpha == awq.DEFAULT_ALPHAS[errors.index(min(errors))]
    assert found.error == min(errors) and found.rtn_error == errors[0]
    assert found.error < 0.8 * found.rtn_error
    torch.testing.assert_close(found.scales, reference_scales(x, found.alpha))


def test_search_scale_on_the_attention_of_a_tiny_llama(tiny_llama):
    """q, k and v scaled together, the error measured on the attention output (the authors'
    module2inspect): brute force on a deep copy whose weights are really replaced."""
    attn = tiny_llama.model.layers[0].self_attn
    captured = {}
    attn.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    ids = torch.randint(2, 34, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiny_llama(ids)
    x = captured.pop("hidden_states")
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    found = awq.search_scale(attn, layers, x, kwargs=captured, bits=3, group_size=16, alphas=alphas)
    with torch.no_grad():
        expected_out = attn(x, **captured)[0]
        for alpha, error in zip(alphas, found.errors.tolist(), strict=True):
            s = reference_scales(x, alpha)
            copy_ = copy.deepcopy(attn)
            for layer in (copy_.q_proj, copy_.k_proj, copy_.v_proj):
                layer.weight.copy_(reference_pseudo_quantize(layer.weight * s, 3, 16) / s)
            out = copy_(x, **captured)[0]
            assert error == pytest.approx(float((out - expected_out).pow(2).mean()), rel=1e-5)
    assert torch.equal(attn.q_proj.weight, tiny_llama.model.layers[0].self_attn.q_proj.weight)


# ---------------------------------------------------------------------------------------------
# Clipping: the authors' auto_clip_layer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [32, 64])
def test_search_clip_equals_authors_auto_clip(group_size):
    w, x = _randn(48, 128, seed=3), _activations(1024, 128, seed=4)
    expected = reference_auto_clip(w, x, 4, group_size)
    found = awq.search_clip(w, x, bits=4, group_size=group_size)
    assert found.shape == (48, 128 // group_size)
    torch.testing.assert_close(found, expected, rtol=0, atol=0)
    clipped = awq.clip_weight(w, found, group_size=group_size)
    m = found.repeat_interleave(group_size, dim=1)
    assert torch.equal(clipped, torch.clamp(w, -m, m))
    assert int((clipped != w).sum()) > 0  # some groups were clipped


def test_search_clip_with_a_short_last_group():
    """The last group (64 of 576 columns) is searched on its own, as a 64-wide group would be."""
    w, x = _randn(16, 576, seed=5), _activations(512, 576, seed=6)
    found = awq.search_clip(w, x, bits=4, group_size=128)
    assert found.shape == (16, 5)
    torch.testing.assert_close(found[:, :4], reference_auto_clip(w[:, :512], x[:, :512], 4, 128))
    torch.testing.assert_close(found[:, 4:], reference_auto_clip(w[:, 512:], x[:, 512:], 4, 64))


# ---------------------------------------------------------------------------------------------
# Folding keeps the function
# ---------------------------------------------------------------------------------------------


def test_fold_scales_leaves_a_llama_unchanged(tiny_llama):
    """Scales folded into the norms and into up_proj (then multiplied into q/k/v, gate/up and
    down): the logits stay the same, before any quantization."""
    ids = torch.randint(2, 34, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny_llama(ids).logits
    for i, block in enumerate(tiny_llama.model.layers):
        attn, mlp = block.self_attn, block.mlp
        s1, s2, s3 = (
            torch.rand(n, generator=torch.Generator().manual_seed(i)) * 4 + 0.1
            for n in (64, 64, 128)
        )
        awq.fold_scales_(block.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], s1)
        awq.fold_scales_(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], s2)
        awq.fold_scales_(mlp.up_proj, [mlp.down_proj], s3)
    with torch.no_grad():
        torch.testing.assert_close(tiny_llama(ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_fold_scales_leaves_a_gpt2_unchanged(tiny_gpt2):
    """LayerNorm (weight and bias) into Conv1D layers, whose weights are stored [in, out]."""
    ids = torch.randint(2, 34, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tiny_gpt2(ids).logits
    for block in tiny_gpt2.transformer.h:
        s = torch.rand(32, generator=torch.Generator().manual_seed(3)) * 4 + 0.1
        awq.fold_scales_(block.ln_1, [block.attn.c_attn], s)
        awq.fold_scales_(block.ln_2, [block.mlp.c_fc], s)
    with torch.no_grad():
        torch.testing.assert_close(tiny_gpt2(ids).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_folded_model_before_quantization_equals_the_original(model_name, tiny_llama, tiny_gpt2):
    """The whole pipeline with ``quantize=False, clip=False``: every group scaled by its searched
    scales, folded, and the model computes the same logits; the input model is untouched."""
    model = tiny_llama if model_name == "llama" else tiny_gpt2
    before = copy.deepcopy(model.state_dict())
    ids = torch.randint(2, 34, (4, 48), generator=torch.Generator().manual_seed(3))
    folded, report = awq.quantize_model(model, ids, quantize=False, clip=False, group_size=16)
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
    assert any(r.alpha > 0 for r in report.scales)  # scales other than 1 were folded
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert type(folded) is type(model)  # still a plain transformers model


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def _llama_with_outlier_channels(tiny_llama):
    """Outlier input channels as real models grow them: large RMSNorm gains (Lin et al. §3.1)."""
    with torch.no_grad():
        for block in tiny_llama.model.layers:
            block.input_layernorm.weight[::16] = 25.0
            block.post_attention_layernorm.weight[::16] = 25.0
    return tiny_llama


def test_awq_beats_rtn_on_a_model_with_outlier_channels(tiny_llama):
    model = _llama_with_outlier_channels(tiny_llama)
    calibration = torch.randint(2, 34, (8, 64), generator=torch.Generator().manual_seed(4))
    held_out = torch.randint(2, 34, (4, 64), generator=torch.Generator().manual_seed(5))
    awq_model, report = awq.quantize_model(model, calibration, bits=3, group_size=32)
    rtn_model, rtn_report = awq.quantize_model(
        model, calibration, bits=3, group_size=32, alphas=[0.0], clip=False
    )
    assert all(r.gain == 1 and r.alpha == 0 for r in rtn_report.scales)
    assert not rtn_report.clipped
    with torch.no_grad():
        expected = model(held_out).logits
        awq_error = float((awq_model(held_out).logits - expected).pow(2).mean())
        rtn_error = float((rtn_model(held_out).logits - expected).pow(2).mean())
    assert awq_error < 0.7 * rtn_error
    # each group's α is the minimum of its errors; 2 layers × 3 groups (no v → o with GQA)
    assert len(report.scales) == 6 and report.n_tokens == 8 * 64
    assert all(r.errors[awq.DEFAULT_ALPHAS.index(r.alpha)] == min(r.errors) for r in report.scales)
    assert all(r.rtn_error == r.errors[0] and r.gain >= 1 for r in report.scales)
    assert "model.layers.1.mlp.down_proj" in report.table()
    assert not any("q_proj" in n or "k_proj" in n for n in report.clipped)
    assert len(report.clipped) == 2 * 5
    # RTN through quantize_model (α = 0, no clipping) is the authors' quantizer on every layer
    for (name, layer), (_, original) in zip(
        linear_layers(rtn_model), linear_layers(model), strict=True
    ):
        expected_w = reference_pseudo_quantize(get_weight(original).detach(), 3, 32)
        assert torch.equal(get_weight(layer), expected_w), name


@pytest.mark.parametrize(("bits", "group_size"), [(4, 128), (3, 32), (4, 20), (2, None)])
def test_group_quantized_nbytes_counts_its_tensors(bits, group_size):
    """Codes packed at `bits` bits, an fp16 scale and a `bits`-bit zero per row and group."""
    result = awq.quantize_groups(_randn(24, 128, seed=bits), bits=bits, group_size=group_size)
    assert isinstance(result, Quantized)
    expected = result.codes.numel() * bits / 8 + result.scale.numel() * 2
    expected += result.zero.numel() * bits / 8
    assert result.nbytes() == expected
    assert result.bits_per_weight() == 8 * expected / result.codes.numel()


def test_report_bytes_equal_the_capstone_formula_and_each_layers_result(tiny_llama):
    """out·in·bits/8 + out·⌈in/g⌉·(2 + bits/8) over the linear layers (the capstone's count),
    and each layer's bytes those of quantize_groups on its final weights."""
    calibration = torch.randint(2, 34, (4, 32), generator=torch.Generator().manual_seed(4))
    for bits, group_size in [(4, 32), (3, 48)]:
        quantized, report = awq.quantize_model(
            tiny_llama, calibration, bits=bits, group_size=group_size
        )
        expected, n_weights = 0.0, 0
        for _, layer in linear_layers(tiny_llama):
            out, inp = get_weight(layer).shape
            expected += out * inp * bits / 8 + out * math.ceil(inp / group_size) * (2 + bits / 8)
            n_weights += out * inp
        assert report.nbytes() == pytest.approx(expected, rel=1e-12)
        assert report.bits_per_weight() == pytest.approx(8 * expected / n_weights, rel=1e-12)
        layers = dict(linear_layers(quantized))
        assert [row.name for row in report.layers] == list(layers)
        for row in report.layers:
            weight = get_weight(layers[row.name]).detach()
            result = awq.quantize_groups(weight, bits=bits, group_size=group_size)
            assert row.nbytes() == result.nbytes()
            assert row.bits_per_weight() == result.bits_per_weight()
    _, folded = awq.quantize_model(
        tiny_llama, calibration, group_size=32, quantize=False, clip=False
    )
    assert folded.layers == [] and folded.nbytes() == 0
    with pytest.raises(ValueError, match="report: expected quantized layers"):
        folded.bits_per_weight()


def test_quantize_model_in_place_equals_the_copy(tiny_llama):
    calibration = torch.randint(2, 34, (4, 32), generator=torch.Generator().manual_seed(6))
    copied, report = awq.quantize_model(tiny_llama, calibration, bits=3, group_size=16)
    model = copy.deepcopy(tiny_llama)
    same, report_ = awq.quantize_model_(model, calibration, bits=3, group_size=16)
    assert same is model and report_.nbytes() == report.nbytes()
    for (_, a), (_, b) in zip(linear_layers(copied), linear_layers(model), strict=True):
        assert torch.equal(get_weight(a), get_weight(b))
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        awq.quantize_model_("gpt2", calibration)


def test_v_to_o_group_without_grouped_query_attention():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=34,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(2, 34, (2, 32), generator=torch.Generator().manual_seed(6))
    folded, report = awq.quantize_model(model, ids, quantize=False, clip=False, group_size=16)
    assert [r.prev.split(".", 3)[-1] for r in report.scales] == [
        "input_layernorm",
        "self_attn.v_proj",
        "post_attention_layernorm",
        "mlp.up_proj",
    ]
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)


def test_activation_means_equal_a_hand_computed_mean(tiny_llama):
    """s_X of q_proj is the mean |x| of input_layernorm's output, taken here by an output hook."""
    ids = torch.randint(2, 34, (3, 20), generator=torch.Generator().manual_seed(7))
    means = awq.activation_means(tiny_llama, ids)
    outputs = []
    tiny_llama.model.layers[1].input_layernorm.register_forward_hook(
        lambda m, args, out: outputs.append(out)
    )
    with torch.no_grad():
        for row in ids:
            tiny_llama(row[None])
    expected = torch.cat([o.reshape(-1, 64) for o in outputs]).abs().mean(dim=0)
    torch.testing.assert_close(means["model.layers.1.self_attn.q_proj"], expected)
    assert set(means) == {name for name, _ in linear_layers(tiny_llama)}
    assert not any(layer._forward_pre_hooks for _, layer in linear_layers(tiny_llama))


@pytest.mark.slow
def test_default_model_awq_beats_rtn(default_model):
    """SmolLM2-135M at 4 bits, groups of 128: AWQ's perplexity below RTN's (same quantizer).
    Calibration 8 windows of 128 tokens of Emma, evaluation 1024 tokens of Pride and
    Prejudice."""
    from qlearn.data import calibration_windows, load_text

    model, tokenizer = default_model
    windows = calibration_windows(tokenizer, load_text("emma"), n_samples=8, seqlen=128)
    text = load_text("pride_and_prejudice")
    awq_model, report = awq.quantize_model(model, windows, clip=False)
    rtn_model, _ = awq.quantize_model(model, windows, alphas=[0.0], clip=False)
    awq_ppl = perplexity(awq_model, tokenizer, text, max_tokens=1024)
    rtn_ppl = perplexity(rtn_model, tokenizer, text, max_tokens=1024)
    assert awq_ppl < rtn_ppl
    assert len(report.scales) == 30 * 3  # grouped-query attention: no v → o group


# ---------------------------------------------------------------------------------------------
# Bad arguments: each error names the argument
# ---------------------------------------------------------------------------------------------


def test_scale_search_rejects_bad_arguments():
    x, layer = _randn(16, 32), nn.Linear(32, 8)
    ok = {"group_size": 16}
    with pytest.raises(ValueError, match=r"alphas: expected a non-empty sequence"):
        awq.search_scale(layer, [layer], x, alphas=[], **ok)
    with pytest.raises(ValueError, match=r"alphas\[1\]: expected a number from 0 to 1"):
        awq.search_scale(layer, [layer], x, alphas=[0.0, 1.5], **ok)
    with pytest.raises(ValueError, match=r"alphas\[0\]: expected a number from 0 to 1"):
        awq.search_scale(layer, [layer], x, alphas=[math.nan], **ok)
    with pytest.raises(TypeError, match=r"alphas: expected a sequence"):
        awq.search_scale(layer, [layer], x, alphas=0.5, **ok)
    with pytest.raises(ValueError, match=r"x: expected finite values"):
        awq.search_scale(layer, [layer], torch.full((4, 32), math.inf), **ok)
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor"):
        awq.search_scale(layer, [layer], torch.ones(4, 32, dtype=torch.long), **ok)
    with pytest.raises(ValueError, match=r"x: expected a last dimension of 32"):
        awq.search_scale(layer, [layer], _randn(4, 16), **ok)
    with pytest.raises(ValueError, match=r"x: expected a tensor of inputs or a non-empty list"):
        awq.search_scale(layer, [layer], [], **ok)
    with pytest.raises(ValueError, match=r"layers\[0\]: expected a layer inside module"):
        awq.search_scale(layer, [nn.Linear(32, 8)], x, **ok)
    with pytest.raises(TypeError, match=r"layers\[0\]: expected nn.Linear"):
        awq.search_scale(layer, [nn.ReLU()], x, **ok)
    with pytest.raises(TypeError, match=r"layers: expected a non-empty list"):
        awq.search_scale(layer, [], x, **ok)
    with pytest.raises(ValueError, match=r"group_size \(layer module\): expected at most"):
        awq.search_scale(layer, [layer], x, group_size=64)
    with pytest.raises(ValueError, match=r"bits: expected an integer from 2 to 8"):
        awq.search_scale(layer, [layer], x, bits=16, **ok)
    with pytest.raises(ValueError, match=r"kwargs: expected a dict, or one dict per input"):
        awq.search_scale(layer, [layer], [x, x], kwargs=[{}], **ok)


def test_quantizer_scales_and_clip_reject_bad_arguments():
    w = _randn(8, 64)
    with pytest.raises(TypeError, match=r"weight: expected a floating-point tensor"):
        awq.quantize_groups(torch.ones(8, 64, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"weight: expected finite values, got 8 NaN"):
        awq.pseudo_quantize(torch.where(torch.arange(64) == 5, math.nan, w))
    with pytest.raises(ValueError, match=r"weight: expected a 2-D tensor"):
        awq.quantize_groups(_randn(64))
    with pytest.raises(ValueError, match=r"group_size: expected a positive integer"):
        awq.quantize_groups(w, group_size=0)
    with pytest.raises(ValueError, match=r"alpha: expected a number from 0 to 1"):
        awq.awq_scales(torch.ones(4), -0.1)
    with pytest.raises(ValueError, match=r"x_mean: expected magnitudes"):
        awq.awq_scales(torch.tensor([1.0, -1.0]), 0.5)
    with pytest.raises(ValueError, match=r"x: expected a last dimension of 64"):
        awq.search_clip(w, _randn(10, 32))
    with pytest.raises(ValueError, match=r"max_shrink: expected a fraction below 1"):
        awq.search_clip(w, _randn(10, 64), max_shrink=1.0, group_size=32)
    with pytest.raises(ValueError, match=r"max_val: expected shape \(8, 2\)"):
        awq.clip_weight(w, torch.ones(8, 3), group_size=32)
    with pytest.raises(ValueError, match=r"scales: expected positive scales"):
        awq.fold_scales_(nn.LayerNorm(64), [nn.Linear(64, 8)], torch.zeros(64))
    with pytest.raises(ValueError, match=r"scales: expected 64 scales"):
        awq.fold_scales_(nn.LayerNorm(64), [nn.Linear(64, 8)], torch.ones(32))
    with pytest.raises(TypeError, match=r"prev: expected a norm with a weight of 64 values"):
        awq.fold_scales_(nn.ReLU(), [nn.Linear(64, 8)], torch.ones(64))


def test_model_quantization_rejects_bad_arguments(tiny_llama, char_tokenizer):
    ids = torch.randint(2, 34, (2, 16))
    ok = {"group_size": 16}
    with pytest.raises(ValueError, match=r"texts_or_batches: expected .*, got an empty list"):
        awq.quantize_model(tiny_llama, [], **ok)
    with pytest.raises(ValueError, match=r"texts_or_batches: expected at least one token"):
        awq.quantize_model(tiny_llama, torch.zeros(2, 0, dtype=torch.long), **ok)
    with pytest.raises(ValueError, match=r"texts_or_batches\[0\]: expected a text with tokens"):
        awq.quantize_model(tiny_llama, [""], char_tokenizer, **ok)
    with pytest.raises(ValueError, match=r"text: expected a non-empty string"):
        awq.quantize_model(tiny_llama, "   ", char_tokenizer, **ok)
    with pytest.raises(ValueError, match=r"text: expected more than 513 tokens"):
        awq.quantize_model(tiny_llama, "too short", char_tokenizer, **ok)
    with pytest.raises(ValueError, match=r"tokenizer: expected a tokenizer"):
        awq.quantize_model(tiny_llama, "some text", **ok)
    with pytest.raises(ValueError, match=r"alphas: expected a non-empty sequence"):
        awq.quantize_model(tiny_llama, ids, alphas=(), **ok)
    with pytest.raises(ValueError, match=r"group_size \(layer model.layers.0.self_attn.q_proj\)"):
        awq.quantize_model(tiny_llama, ids, group_size=65)
    with pytest.raises(ValueError, match=r"bits: expected an integer from 2 to 8"):
        awq.quantize_model(tiny_llama, ids, bits=1, **ok)
    with pytest.raises(TypeError, match=r"clip: expected True or False"):
        awq.quantize_model(tiny_llama, ids, clip="yes", **ok)
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        awq.quantize_model("gpt2", ids, **ok)
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        awq.activation_means("gpt2", ids)
    with pytest.raises(TypeError, match=r"texts_or_batches: expected token ids"):
        awq.activation_means(tiny_llama, torch.zeros(1, 4))
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(
        OPTConfig(
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=34,
            word_embed_proj_dim=16,
        )
    )
    with pytest.raises(ValueError, match=r"model: expected Llama-style .* got OPTDecoderLayer"):
        awq.quantize_model(opt, ids, **ok)
