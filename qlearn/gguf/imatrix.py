"""llama.cpp's importance matrix: for every linear weight, the mean of x² over calibration tokens
for each of its input columns.

``llama-imatrix`` (``tools/imatrix/imatrix.cpp``) runs the model over a calibration text and, at
every matrix multiplication with a ``blk.*`` weight, adds xⱼ² of each input row to that weight's
column j; ``llama-quantize --imatrix`` divides by the number of rows (``tools/quantize``:
``sums / counts``) and hands the result, one value per input column, to ggml's quantizers as
``quant_weights``: the error of a weight in column j then counts in proportion to how large
column j's inputs are, the diagonal of the layer's Hessian 2·XXᵀ that GPTQ uses in full
(chapter 05). :func:`importance_matrix` computes the same means with forward pre-hooks on every
decoder linear layer. What it reproduces: the per-column Σx² / n over every calibration token,
for the decoder's linears (``output.weight``, the LM head, only with ``--process-output``: not
here), q, k and v each recording their own (equal) inputs. What it does not: llama-imatrix
replaces the first token of each chunk by BOS, skips multiplications of fewer than 16 rows,
accumulates in float32 (qlearn in float64) and writes a GGUF file of its own (``sums`` and
``counts``); here the windows are used as given and the result stays in memory, keyed by the
names of :func:`qlearn.models.linear_layers`. Taught in notebooks/12_shared_scales.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qlearn import _layers
from qlearn._checks import check_int, check_module

__all__ = ["importance_matrix"]


def importance_matrix(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    tokenizer: Any = None,
    *,
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """``{layer name: float32 [in_features]}``: per input column, the mean of x² over every
    calibration token that enters each decoder linear layer of ``model``.

    ``calibration_texts`` as for ``gptq``/``awq.quantize_model``: a text (``nsamples`` random
    windows of ``seqlen`` tokens, ``qlearn.data.calibration_windows(..., seed=seed)``) or
    token windows. The result goes to ``gguf.quantize(..., imatrix=result[name])`` or
    ``gguf.quantize_model(model, recipe, imatrix=result)``. llama.cpp's ``llama-imatrix``
    (see the module's docstring for what is and is not reproduced).
    Taught in notebooks/12_shared_scales.ipynb.
    """
    from qlearn.models import linear_layers

    check_module(model)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    batches = _layers.calibration_batches(
        calibration_texts, tokenizer, nsamples, seqlen, seed, batch_size
    )
    layers = dict(linear_layers(model))
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def observer(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] += x.shape[0]

        return hook

    handles = [layer.register_forward_pre_hook(observer(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
    unused = [name for name, n in counts.items() if n == 0]
    if unused:
        raise ValueError(
            f"model: expected every decoder linear layer to be called, {unused[0]} was not"
        )
    return {name: (sums[name] / counts[name]).float() for name in layers}
