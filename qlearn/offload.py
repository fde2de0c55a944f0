"""Quantize a model bigger than memory: one decoder layer at a time, through accelerate's offload.

``from_pretrained(..., device_map=..., offload_folder=...)`` hands a model to accelerate, which
keeps the weights of "cpu"- or "disk"-mapped modules out of the modules themselves (they sit on
the ``meta`` device) and loads them, module by module, for each forward pass only
(``AlignDevicesHook``). That is how a model larger than memory runs at all; it is also why a
quantizer that reads and writes weights *between* forward passes finds nothing there. GPTQ and
AWQ work decoder layer by decoder layer anyway (Frantar et al. 2023, §4; Lin et al. 2024, §3.3),
so :func:`onloaded` gives them one layer at a time: every offloaded tensor of the layer is
loaded onto its execution device for the duration of a ``with`` block, forward passes inside it
use those tensors as they are (the hooks neither reload nor drop them), and at the end each is
written back where accelerate keeps it — its CPU copy, or a ``.dat`` file in the offload folder
(``accelerate.utils.offload_weight``) — and dropped again. Peak memory is then about one layer
plus the calibration activations, whatever the model's size. On a model without offloaded
weights it changes nothing. Chapter 10 (what quantization buys: models bigger than memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight
from accelerate.utils.modeling import (
    has_offloaded_params,
    named_module_tensors,
    set_module_tensor_to_device,
)
from torch import nn

from qlearn._checks import check_module
from qlearn._layers import is_linear

__all__ = ["is_offloaded", "linear_layers_onloaded", "onloaded", "require_in_memory"]


def is_offloaded(model: nn.Module) -> bool:
    """True if any module of ``model`` has weights offloaded by accelerate (CPU or disk)."""
    check_module(model)
    return any(has_offloaded_params(module) for module in model.modules())


def require_in_memory(model: nn.Module, instead: str) -> None:
    """Raise a ``ValueError`` naming ``model`` if accelerate offloads any of its weights.

    For what cannot work offloaded: a copy of the model (``quantize_model`` deep-copies, which
    would need the whole model in memory, the very thing offloading avoids). ``instead``: what
    to call instead, for the message.
    """
    if is_offloaded(model):
        raise ValueError(
            "model: expected a model in memory, got one whose weights accelerate offloads; "
            f"{instead}"
        )


@contextmanager
def onloaded(module: nn.Module) -> Iterator[nn.Module]:
    """Load every offloaded tensor of ``module`` (a decoder layer, say) for a ``with`` block.

    Inside, the tensors are real and may be read, replaced or changed in place (a quantizer's
    ``set_weight_``, AWQ's scales folded into a norm), and forward passes use them as they are.
    On leaving, every one of them is written back to accelerate's store — a changed value
    included — and dropped to the ``meta`` device again, so the next forward pass (and the
    rest of the model) sees the new values. Not offloaded: nothing happens.
    """
    check_module(module, "module")
    hooked = [m for m in module.modules() if has_offloaded_params(m)]
    loaded: list[tuple[nn.Module, list[str]]] = []
    try:
        for m in hooked:
            hook = m._hf_hook
            names = [
                name
                for name, _ in named_module_tensors(
                    m,
                    include_buffers=hook.offload_buffers,
                    recurse=hook.place_submodules,
                    remove_non_persistent=True,
                )
            ]
            for name in names:
                value = hook.weights_map[name]
                set_module_tensor_to_device(m, name, hook.execution_device, value=value)
            hook.offload = False  # its pre_forward now keeps these tensors, post_forward too
            loaded.append((m, names))
        yield module
    finally:
        for m, names in loaded:
            hook = m._hf_hook
            for name in names:
                _write_back(hook.weights_map, name, _tensor(m, name))
                set_module_tensor_to_device(m, name, "meta")
            hook.offload = True


def linear_layers_onloaded(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` for every decoder linear, as ``qlearn.models.linear_layers`` yields
    them, with the decoder layer that holds it :func:`onloaded` while its linears are yielded.

    For the quantizers that round each weight on its own (RTN, NF4, the GGUF types): a weight
    set with ``set_weight_`` during the loop is written back when the loop moves to the next
    decoder layer, so an offloaded model is quantized one layer in memory at a time. On a model
    in memory it is ``linear_layers``. Chapter 10 (models bigger than memory).
    """
    from qlearn.models import decoder_layers

    prefix, blocks = decoder_layers(model)
    for index, block in enumerate(blocks):
        with onloaded(block):
            for name, module in block.named_modules():
                if is_linear(module):
                    yield f"{prefix}.{index}.{name}", module


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf).detach()


def _write_back(weights_map: Mapping, name: str, value: torch.Tensor) -> None:
    """Store ``value`` as accelerate's ``weights_map[name]``: in its state dict on the CPU, or as
    the ``.dat`` file of the offload folder that its index then points to."""
    value = value.to("cpu").contiguous()
    store, key = weights_map, name
    if isinstance(weights_map, PrefixedDataset):
        store, key = weights_map.dataset, weights_map.prefix + name
    if isinstance(store, OffloadedWeightsLoader):
        if key in store.state_dict:
            store.state_dict[key] = value
            return
        if store.save_folder is None:
            raise ValueError(
                f"module: accelerate keeps {key!r} in a file it cannot rewrite (no offload "
                "folder); load the model with offload_folder=... to quantize it offloaded"
            )
        offload_weight(value, key, store.save_folder, index=store.index)
        return
    store[key] = value  # the dict a hook builds itself
