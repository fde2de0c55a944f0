"""transformers' ``BitsAndBytesConfig`` on CPU stores what qlearn.nf4 and qlearn.int8 compute.

The other tests compare qlearn with bitsandbytes' functions; these load a model the way users do,
``AutoModelForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(...))`` on
CPU (transformers 5.23, bitsandbytes 0.50.2), and read what every decoder linear then holds:

- NF4 with double quantization (QLoRA's setting): the packed codes (``Params4bit.data``), the
  8-bit nested constants, their per-256 float32 absmax and the offset equal
  ``nf4.nf4_quantize(W, blocksize=64, double_quant=True)`` byte for byte;
- 8-bit (LLM.int8): ``Int8Params`` casts the weight to float16 and stores row-wise absmax codes
  (``CB``) and row statistics (``SCB``): equal to ``int8.vectorwise_quantize`` of the float16
  weight.

On the course's model, saved as safetensors to a temporary folder; chapter 10 shows the same.
"""

from __future__ import annotations

import logging

import pytest
import torch

from qlearn import int8, models, nf4

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved_model(default_model, tmp_path_factory):
    """The course's model as a safetensors folder, and its decoder weights as [out, in]."""
    model, _ = default_model
    folder = tmp_path_factory.mktemp("course_model")
    model.save_pretrained(folder)
    return folder, {
        name: models.get_weight(layer).detach().clone()
        for name, layer in models.linear_layers(model)
    }


def _load(folder, config):
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=config, device_map="cpu", dtype=torch.float32
    ).eval()


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


@pytest.mark.slow
def test_bitsandbytes_config_nf4_stores_qlearn_nf4_bytes(saved_model):
    folder, originals = saved_model
    config = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    loaded = _load(folder, config)
    layers = dict(models.linear_layers(loaded))
    assert set(layers) == set(originals)
    for name, layer in layers.items():
        state = layer.weight.quant_state
        ours = nf4.nf4_quantize(originals[name], blocksize=64, double_quant=True)
        assert (state.quant_type, state.blocksize, state.nested) == ("nf4", 64, True), name
        assert torch.equal(layer.weight.data.reshape(-1), ours.packed), name
        assert torch.equal(state.absmax, ours.nested.codes.reshape(-1)), name
        assert torch.equal(_bits(state.state2.absmax), _bits(ours.nested.absmax)), name
        assert torch.equal(_bits(state.offset), _bits(ours.offset)), name
        assert tuple(state.shape) == tuple(originals[name].shape), name


@pytest.mark.slow
def test_bitsandbytes_config_8bit_stores_qlearn_int8_codes(saved_model):
    folder, originals = saved_model
    loaded = _load(folder, transformers.BitsAndBytesConfig(load_in_8bit=True))
    layers = dict(models.linear_layers(loaded))
    assert set(layers) == set(originals)
    for name, layer in layers.items():
        ours = int8.vectorwise_quantize(originals[name].half())
        assert torch.equal(layer.weight.data, ours.codes), name
        assert torch.equal(layer.weight.SCB, ours.row_absmax), name
