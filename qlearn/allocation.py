"""Bits where they matter: one GGUF type per tensor, chosen to reach a target size at the least
error.

llama.cpp's fixed mixes (Q4_K_M: more bits for ``attn_v`` and some ``ffn_down``, chapter 06) are
rules of thumb. A measured alternative, the idea of ``llama-quantize --target-bpw`` (llama.cpp
pull request #15550) and of EXL2's per-layer bit rates (turboderp, exllamav2): estimate for
every tensor t and every candidate type q the error e_t(q) it would add and the bytes b_t(q) it
would take, then choose one type per tensor to minimise Σ e_t subject to Σ b_t ≤ budget.

- **Error** (:func:`tensor_errors`): Σ_j a_j · Σ_i (W_ij − Ŵ_ij)², with a_j the importance
  matrix's mean x_j² of input column j (:func:`qlearn.gguf.importance_matrix`), or 1 without
  one. It is E‖(W − Ŵ)x‖² when the inputs' columns are uncorrelated: GPTQ's layer objective
  (chapter 05) with the Hessian 2·XXᵀ cut to its diagonal.
- **Sensitivity** (:func:`layer_sensitivity`), the measured counterpart: the KL divergence from
  the original model when only that one layer is quantized.
- **Allocation** (:func:`allocate_types`): Lagrangian relaxation (Everett 1963; Shoham and
  Gersho 1988 for bit allocation). For a price λ on bytes every tensor independently takes the
  type minimising e + λ·b; a larger λ never takes more bytes, so λ is bisected to the smallest
  price whose choice fits the budget. Every such choice is optimal for the bytes it uses (no
  assignment of the same or fewer bytes has a smaller total error); what is left of the budget
  is then spent greedily, the upgrade with the best error saved per byte first.

Types are the effective ones: a candidate a tensor's rows cannot hold is replaced by llama.cpp's
fallback for it (:func:`qlearn.gguf.fallback_type`), so on this model a "Q4_K" for a row of 576
is its Q5_0. Taught in notebooks/12_shared_scales.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qlearn import gguf
from qlearn._checks import check_choice, check_module, check_positive

__all__ = ["Allocation", "TensorOption", "allocate_types", "layer_sensitivity", "tensor_errors"]


@dataclass(frozen=True)
class TensorOption:
    """One tensor stored as one type: the error it adds and the bytes it takes."""

    qtype: str
    error: float
    nbytes: int


@dataclass(frozen=True)
class Allocation:
    """The chosen type per tensor, the total error and bytes, bits per weight, and the price λ
    (error per byte) at which the Lagrangian choice was made."""

    types: dict[str, str]
    error: float
    nbytes: int
    bits_per_weight: float
    price: float


def tensor_errors(
    model: nn.Module,
    qtypes: Sequence[str],
    *,
    imatrix: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, list[TensorOption]]:
    """``{layer name: [TensorOption per effective type]}`` for every decoder linear of ``model``.

    Each candidate in ``qtypes`` (GGUF type names) is replaced by its fallback where the rows do
    not fit, duplicates removed. With ``imatrix`` the quantizers use it too (as
    ``llama-quantize --imatrix``) and the error is weighted by it per input column. Taught in
    notebooks/12_shared_scales.ipynb.
    """
    from qlearn.models import get_weight, linear_layers

    check_module(model)
    names = [check_choice(q, "qtypes", list(gguf.BLOCKS)) for q in qtypes]
    if not names:
        raise ValueError("qtypes: expected at least one GGUF type")
    out: dict[str, list[TensorOption]] = {}
    for name, layer in linear_layers(model):
        weight = get_weight(layer).detach().float()
        importance = None if imatrix is None else _importance(imatrix, name, weight.shape[1])
        effective = dict.fromkeys(gguf.fallback_type(q, weight.shape[1]) for q in names)
        options = []
        for qtype in effective:
            uses = importance is not None and gguf.BLOCKS[qtype].takes_importance
            tensor = gguf.quantize_tensor(
                weight.numpy(), qtype, imatrix=importance.numpy() if uses else None
            )
            diff2 = (tensor.dequantize().double() - weight.double()) ** 2
            column = diff2.sum(dim=0)
            error = (
                float(column @ importance.double())
                if importance is not None
                else float(column.sum())
            )
            options.append(TensorOption(qtype, error, int(tensor.nbytes())))
        out[name] = options
    return out


def allocate_types(
    options: Mapping[str, Sequence[TensorOption]], target_bpw: float, n_weights: Mapping[str, int]
) -> Allocation:
    """One type per tensor with Σ bytes ≤ target_bpw · Σ weights / 8 at the least total error.

    ``options``: :func:`tensor_errors`' result; ``n_weights``: each tensor's number of weights.
    Lagrangian relaxation with the price bisected, then the leftover spent greedily (see the
    module's docstring). ``ValueError`` if even the smallest type of every tensor is above the
    budget. Taught in notebooks/12_shared_scales.ipynb.
    """
    target_bpw = check_positive(target_bpw, "target_bpw")
    if set(options) != set(n_weights):
        raise ValueError("n_weights: expected one count per tensor of options")
    total_weights = sum(n_weights.values())
    budget = target_bpw * total_weights / 8
    smallest = sum(min(o.nbytes for o in opts) for opts in options.values())
    if smallest > budget:
        raise ValueError(
            f"target_bpw: {target_bpw} is below the smallest reachable "
            f"{8 * smallest / total_weights:.4f} bits per weight with these types"
        )

    def choose(price: float) -> dict[str, TensorOption]:
        return {
            name: min(opts, key=lambda o: (o.error + price * o.nbytes, o.nbytes))
            for name, opts in options.items()
        }

    def size(choice: Mapping[str, TensorOption]) -> int:
        return sum(o.nbytes for o in choice.values())

    low, high = 0.0, 1.0
    while size(choose(high)) > budget:
        high *= 4
    if size(choose(low)) <= budget:
        high = low
    for _ in range(200):  # bisect the price: size(choose(price)) is non-increasing in it
        if high - low <= 1e-15 * high:
            break
        middle = (low + high) / 2
        if size(choose(middle)) > budget:
            low = middle
        else:
            high = middle
    choice = _spend_leftover(choose(high), options, budget)
    nbytes = size(choice)
    return Allocation(
        types={name: o.qtype for name, o in choice.items()},
        error=sum(o.error for o in choice.values()),
        nbytes=nbytes,
        bits_per_weight=8 * nbytes / total_weights,
        price=high,
    )


def layer_sensitivity(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    qtype: str,
    *,
    max_tokens: int = 512,
    imatrix: Mapping[str, torch.Tensor] | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, float]:
    """``{layer name: mean KL divergence from the original}`` with only that layer quantized to
    ``qtype`` (its fallback where the rows do not fit), on the first ``max_tokens`` tokens of
    ``text`` in one window. ``layers`` limits the layers measured. The model is restored after
    each layer. Taught in notebooks/12_shared_scales.ipynb.
    """
    from qlearn import evaluate
    from qlearn.models import get_weight, linear_layers, set_weight_

    check_module(model)
    check_choice(qtype, "qtype", list(gguf.BLOCKS))
    all_layers = dict(linear_layers(model))
    chosen = list(all_layers) if layers is None else list(layers)
    for name in chosen:
        check_choice(name, "layers", list(all_layers))
    baseline = evaluate.kl_baseline(
        model, tokenizer, text, max_tokens=max_tokens, window=max_tokens
    )
    out = {}
    for name in chosen:
        layer = all_layers[name]
        original = get_weight(layer).detach().clone()
        effective = gguf.fallback_type(qtype, original.shape[1])
        uses = imatrix is not None and gguf.BLOCKS[effective].takes_importance
        importance = _importance(imatrix, name, original.shape[1]).numpy() if uses else None
        tensor = gguf.quantize_tensor(original.float().numpy(), effective, imatrix=importance)
        set_weight_(layer, tensor.dequantize().to(original.dtype))
        try:
            kl = evaluate.kl_divergence(
                baseline, model, tokenizer, text, max_tokens=max_tokens, window=max_tokens
            )
        finally:
            set_weight_(layer, original)
        out[name] = kl.mean
    return out


def _spend_leftover(
    choice: dict[str, TensorOption], options: Mapping[str, Sequence[TensorOption]], budget: float
) -> dict[str, TensorOption]:
    """Upgrade tensors while the budget allows, the largest error saved per extra byte first."""
    choice = dict(choice)
    left = budget - sum(o.nbytes for o in choice.values())
    while True:
        best, best_gain = None, 0.0
        for name, opts in options.items():
            current = choice[name]
            for o in opts:
                extra = o.nbytes - current.nbytes
                saved = current.error - o.error
                if 0 < extra <= left and saved > 0 and saved / extra > best_gain:
                    best, best_gain = (name, o), saved / extra
        if best is None:
            return choice
        name, o = best
        left -= o.nbytes - choice[name].nbytes
        choice[name] = o


def _importance(imatrix: Mapping[str, torch.Tensor], name: str, columns: int) -> torch.Tensor:
    if name not in imatrix:
        raise ValueError(f"imatrix: no importance for {name}; importance_matrix gives every layer")
    values = torch.as_tensor(imatrix[name]).float()
    if (
        values.shape != (columns,)
        or not bool(torch.isfinite(values).all())
        or bool((values < 0).any())
    ):
        raise ValueError(
            f"imatrix[{name!r}]: expected {columns} finite non-negative values, got "
            f"shape {tuple(values.shape)}"
        )
    return values
