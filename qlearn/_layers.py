"""What every method needs of a model's layers: which modules are linear, their weight as
[out, in], the model's device, and the plumbing of layer-by-layer calibration.

Private to qlearn (learners use ``qlearn.models``, whose public functions build on these).
Layer by layer, shared by GPTQ and AWQ:

Both methods quantize a model one decoder layer at a time, each calibrated on the outputs of
the layers already processed (Frantar et al. 2023, §4, the reference's ``llama_sequential``;
Lin et al. 2024, the authors' ``run_awq``): catch the hidden states (and the keyword arguments:
attention mask, position embeddings) that enter the first decoder layer, then run the layers
one after another. This module holds those shared steps; the methods live in ``qlearn.gptq``
and ``qlearn.awq``. Taught in notebooks/05_gptq.ipynb and notebooks/08_awq_nf4.ipynb.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from qlearn._checks import check_float_tensor, check_int
from qlearn.data import calibration_windows, token_batches

LayerCall = tuple[tuple[Any, ...], dict[str, Any]]
"""The positional (after the hidden states) and keyword arguments a decoder layer is called with."""


class StopForwardError(Exception):
    """Raised by a hook to end a forward pass once it has caught what it needed."""


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 ``Conv1D`` (a linear layer whose weight is stored [in, out])."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency; be tolerant in bare environments
        return False
    return isinstance(module, Conv1D)


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2 ``Conv1D``: the layers every method quantizes."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_of(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as [out_features, in_features] (a view; ``Conv1D``'s is transposed)."""
    if not is_linear(layer):
        raise TypeError(
            f"layer: expected nn.Linear or transformers Conv1D, got {type(layer).__name__}"
        )
    return layer.weight.T if is_conv1d(layer) else layer.weight


def set_weight_(layer: nn.Module, weight: torch.Tensor) -> None:
    """Overwrite the layer's weight in place with ``weight``, given as [out, in]."""
    current = weight_of(layer)
    check_float_tensor(weight, "weight")
    if weight.shape != current.shape:
        raise ValueError(
            f"weight: expected shape {tuple(current.shape)} ([out, in]), got {tuple(weight.shape)}"
        )
    with torch.no_grad():
        current.copy_(weight.to(current.dtype))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def linears_of(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear layers (``nn.Linear``, GPT-2 ``Conv1D``) inside one decoder block, by name."""
    return [(name, module) for name, module in block.named_modules() if is_linear(module)]


def main_output(output: Any) -> torch.Tensor:
    """A module's main output: the tensor itself, or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def first_layer_inputs(
    model: nn.Module, first: nn.Module, batches: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[LayerCall]]:
    """Run the model up to its first decoder layer for each batch: return the hidden states
    that enter it and the other arguments the model passes it (the references' ``Catcher``)."""
    inputs: list[torch.Tensor] = []
    calls: list[LayerCall] = []

    def catch(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        inputs.append(hidden)
        calls.append((tuple(rest), kwargs))
        raise StopForwardError

    device = model_device(model)
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(StopForwardError):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
    return inputs, calls


def calibration_batches(
    data: Any, tokenizer: Any, nsamples: int, seqlen: int, seed: int, batch_size: int
) -> list[torch.Tensor]:
    """Token batches [b, seqlen] for the forward passes, at most ``batch_size`` windows each.

    ``data``: a text, from which ``nsamples`` random windows of ``seqlen`` tokens are drawn with
    ``qlearn.data.calibration_windows(..., seed=seed)`` (the GPTQ authors' loader); or anything
    ``qlearn.data.token_batches`` takes, whose windows of equal length are stacked.
    """
    if isinstance(data, str):
        if tokenizer is None:
            raise ValueError(
                "tokenizer: expected a tokenizer to draw windows from the calibration text, "
                "got None"
            )
        nsamples = check_int(nsamples, "nsamples", minimum=1)
        seqlen = check_int(seqlen, "seqlen", minimum=2)
        seed = check_int(seed, "seed")
        windows = calibration_windows(tokenizer, data, n_samples=nsamples, seqlen=seqlen, seed=seed)
        return list(windows.split(batch_size))
    batches: list[torch.Tensor] = []
    for batch in token_batches(data, tokenizer):
        last = batches[-1] if batches else None
        if (
            last is not None
            and last.shape[1] == batch.shape[1]
            and last.shape[0] + batch.shape[0] <= batch_size
        ):
            batches[-1] = torch.cat([last, batch])
        else:
            batches.append(batch)
    return batches
