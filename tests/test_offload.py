"""Quantizing a model that accelerate offloads: a tiny Llama dispatched with its decoder layers
on "disk" (or on "cpu": dispatched, but not offloaded without a GPU), quantized by GPTQ and AWQ in
place, equals the same model quantized in memory bit for bit; ``offload.onloaded`` writes back
what changed and leaves a model that is not offloaded alone (``tiny_llama``, ``char_tokenizer``:
tests/conftest.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from qlearn import awq, gguf, gptq, int8, kernels, nf4, offload
from qlearn.data import calibration_windows

TEXT = "it is a truth universally acknowledged, that a single man in possession of a good fortune"


def _dispatched(model, folder, where="disk"):
    """``model`` saved and loaded back with accelerate: its decoder layers on ``where``."""
    model.save_pretrained(folder / "model")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": where,
        "model.layers.1": where,
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    loaded = AutoModelForCausalLM.from_pretrained(
        folder / "model", device_map=device_map, offload_folder=folder / "offload"
    )
    return loaded.eval()


def _weights(model):
    """Every tensor of the model, read layer by layer through ``onloaded``."""
    found = {}
    for module in [model.model.embed_tokens, *model.model.layers, model.model.norm]:
        with offload.onloaded(module):
            prefix = next(n for n, m in model.named_modules() if m is module)
            found |= {f"{prefix}.{n}": t.detach().clone() for n, t in module.state_dict().items()}
    return found


def test_a_dispatched_model_is_offloaded_and_computes_as_in_memory(tiny_llama, tmp_path):
    dispatched = _dispatched(tiny_llama, tmp_path)
    assert offload.is_offloaded(dispatched) and not offload.is_offloaded(tiny_llama)
    assert dispatched.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(dispatched(ids).logits, tiny_llama(ids).logits)


def test_onloaded_loads_writes_back_and_drops_again(tiny_llama, tmp_path):
    dispatched = _dispatched(tiny_llama, tmp_path)
    block = dispatched.model.layers[1]
    with offload.onloaded(block):
        weight = block.mlp.down_proj.weight
        assert weight.device.type == "cpu"
        assert torch.equal(weight, tiny_llama.model.layers[1].mlp.down_proj.weight)
        with torch.no_grad():
            weight.mul_(2)
    assert block.mlp.down_proj.weight.device.type == "meta"
    with offload.onloaded(block):
        doubled = block.mlp.down_proj.weight.detach().clone()
    assert torch.equal(doubled, 2 * tiny_llama.model.layers[1].mlp.down_proj.weight.detach())
    with torch.no_grad():  # a forward pass sees the new values too
        tiny_llama.model.layers[1].mlp.down_proj.weight.mul_(2)
        ids = torch.tensor([[3, 1, 4, 1, 5]])
        assert torch.equal(dispatched(ids).logits, tiny_llama(ids).logits)


def test_onloaded_does_nothing_to_a_model_in_memory(tiny_llama):
    before = copy.deepcopy(tiny_llama.state_dict())
    with offload.onloaded(tiny_llama.model.layers[0]) as block:
        assert block is tiny_llama.model.layers[0]
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("where", ["disk", "cpu"])
def test_gptq_on_an_offloaded_model_equals_gptq_in_memory_bit_for_bit(
    tiny_llama, char_tokenizer, tmp_path, where
):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=4, seqlen=32, seed=0)
    dispatched = _dispatched(tiny_llama, tmp_path, where)
    in_memory, report = gptq.quantize_model(tiny_llama, windows, bits=3, group_size=16)
    _, offloaded_report = gptq.quantize_model_(dispatched, windows, bits=3, group_size=16)
    expected, got = _weights(in_memory), _weights(dispatched)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [r.loss for r in report.layers] == [r.loss for r in offloaded_report.layers]
    # "cpu" is no offload on a machine without a GPU (the CPU executes): hooks, weights in place
    kept = dispatched.model.layers[0].self_attn.q_proj.weight.device.type
    assert kept == ("meta" if where == "disk" else "cpu")
    ids = windows[:1]
    with torch.no_grad():
        assert torch.equal(dispatched(ids).logits, in_memory(ids).logits)


def test_awq_on_an_offloaded_model_equals_awq_in_memory_bit_for_bit(
    tiny_llama, char_tokenizer, tmp_path
):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=4, seqlen=32, seed=0)
    dispatched = _dispatched(tiny_llama, tmp_path)
    in_memory, report = awq.quantize_model(tiny_llama, windows, bits=4, group_size=16)
    _, offloaded_report = awq.quantize_model_(dispatched, windows, bits=4, group_size=16)
    expected, got = _weights(in_memory), _weights(dispatched)  # norms with the scales folded in
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [s.alpha for s in report.scales] == [s.alpha for s in offloaded_report.scales]


ROUNDING = {  # the quantizers that round each weight on its own, in place
    "rtn": lambda model: gptq.rtn_quantize_model_(model, bits=3, group_size=16),
    "nf4": lambda model: nf4.quantize_model_(model, blocksize=64, double_quant=True),
    "gguf": lambda model: gguf.quantize_model_(model, "Q4_K_M"),
}


@pytest.mark.parametrize("method", sorted(ROUNDING))
def test_rounding_an_offloaded_model_equals_rounding_it_in_memory_bit_for_bit(
    tiny_llama, tmp_path, method
):
    dispatched = _dispatched(tiny_llama, tmp_path)
    in_memory = ROUNDING[method](copy.deepcopy(tiny_llama))
    assert ROUNDING[method](dispatched) is dispatched
    assert dispatched.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # still on disk
    expected, got = _weights(in_memory), _weights(dispatched)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    original = _weights(tiny_llama)
    changed = [k for k in expected if "proj" in k and not torch.equal(expected[k], original[k])]
    assert len(changed) == 14  # every decoder linear of both layers was rounded
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(dispatched(ids).logits, in_memory(ids).logits)


def test_onloaded_names_the_argument():
    with pytest.raises(TypeError, match="module"), offload.onloaded("layer"):
        pass


def test_what_needs_the_model_in_memory_says_so(tiny_llama, char_tokenizer, tmp_path):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=2, seqlen=16, seed=0)
    dispatched = _dispatched(tiny_llama, tmp_path)
    for copying in (gptq.quantize_model, awq.quantize_model):  # a copy needs it all in memory
        with pytest.raises(ValueError, match=r"model: .*offloads.*quantize_model_"):
            copying(dispatched, windows, bits=4)
    copies = {
        "gptq.rtn_quantize_model_": lambda: gptq.rtn_quantize_model(dispatched, bits=4),
        "nf4.quantize_model_": lambda: nf4.quantize_model(dispatched),
        "gguf.quantize_model_": lambda: gguf.quantize_model(dispatched, "Q8_0"),
    }
    for instead, copying in copies.items():
        with pytest.raises(ValueError, match=rf"model: .*offloads.*{instead}"):
            copying()
    for swapping in (  # modules that hold codes cannot be written back to accelerate's store
        lambda: kernels.quantize_model_(dispatched, kind="int8"),
        lambda: int8.quantize_model_(dispatched),
        lambda: int8.quantize_model(dispatched),
    ):
        with pytest.raises(ValueError, match=r"model: .*offloads.*into memory"):
            swapping()
