"""SmoothQuant: move the activations' outliers into the weights, then W8A8.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023:

- a linear layer computes Y = X Wᵀ; for any positive s (one per input channel j),
  Y = (X diag(s)⁻¹) (W diag(s))ᵀ (eq. 3): dividing the activations' column j by s_j and
  multiplying the weights' column j by s_j computes the same function;
- the *migration strength* α picks s_j = max|X_j|^α / max|W_j|^(1−α) (eq. 4): α = 1 makes
  every activation channel's maximum 1 and puts the whole range into the weights, α = 0 does
  the reverse (every weight column's maximum becomes 1), and in between both share it: at
  α = 0.5 channel j's maximum becomes √(max|X_j| · max|W_j|) in both;
- diag(s)⁻¹ costs nothing at run time: it is folded into the norm before the layers
  (RMSNorm/LayerNorm weight and bias ÷ s), and diag(s) into their weights, offline (§4.3).

The arithmetic follows the authors' ``smoothquant/calibration.py`` and ``smooth.py``
(``get_act_scales``, ``smooth_ln_fcs_llama_like``): max|X_j| is the maximum over every
calibration token of the input of each linear layer; the layers that share one input (q, k, v;
gate, up) share one s, with max|W_j| taken over all of their rows and clamped at 1e-5, and s is
clamped at 1e-5. Which norms feed which layers is the authors' choice for Llama and OPT: the
input norm → q, k, v and the post-attention norm → gate, up (GPT-2: ln_1 → c_attn, ln_2 → c_fc).

llmcompressor's ``SmoothQuantModifier`` (0.14) uses *ranges* instead of maxima: max − min of
each activation channel and 2 · max|W_j|. With the same statistics its scales are
``smoothing_scales(max − min, 2 · W)``: scripts/compare_smoothquant_llmcompressor.py checks it.

Taught in notebooks/11_moving_outliers.ipynb.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn

from qlearn import int8
from qlearn._checks import (
    check_choice,
    check_float_tensor,
    check_fraction,
    check_int,
    check_module,
)
from qlearn._layers import calibration_batches, weight_of
from qlearn.awq import fold_scales_
from qlearn.models import decoder_layers
from qlearn.offload import require_in_memory

__all__ = [
    "GRANULARITIES",
    "MIN_SCALE",
    "Smoothing",
    "SmoothingGroup",
    "activation_absmax",
    "quantize_model",
    "quantize_model_",
    "smooth_model_",
    "smoothing_groups",
    "smoothing_scales",
]

MIN_SCALE: Final = 1e-5
"""The authors' clamp, on max|W_j| and on s."""
GRANULARITIES: Final = int8.GRANULARITIES
"""Activation scales of the W8A8 that follows, ``int8.Int8Linear``'s: one per tensor
(``"tensor"``, the paper's O1–O3) or one per token (``"vector"``)."""


@dataclass(frozen=True)
class SmoothingGroup:
    """One smoothing site of a decoder layer: the norm whose output is divided by s, and the
    linear layers (sharing that input) whose weights are multiplied by it, all by full name."""

    norm: str
    layers: tuple[str, ...]


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class Smoothing:
    """What :func:`smooth_model_` did: α, and per smoothing group (keyed by the norm's name)
    the scales s it folded and the activations' per-channel maxima they came from."""

    alpha: float
    groups: tuple[SmoothingGroup, ...]
    scales: dict[str, torch.Tensor]
    activation_max: dict[str, torch.Tensor]


def smoothing_scales(
    act_absmax: torch.Tensor,
    weight: torch.Tensor | Sequence[torch.Tensor],
    *,
    alpha: float = 0.5,
) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α), one per input channel (Xiao et al. 2023, eq. 4).

    ``act_absmax``: [in], the maximum |x| of each input channel over the calibration tokens
    (:func:`activation_absmax`). ``weight``: the [out, in] weight of the layer, or a list of the
    weights of every layer that shares this input (q, k, v): max|W_j| is over all their rows.
    Both clamps are the authors': max|W_j| ≥ 1e-5 and s ≥ 1e-5. Returns float32 [in].
    Taught in notebooks/11_moving_outliers.ipynb.
    """
    alpha = check_fraction(alpha, "alpha")
    check_float_tensor(act_absmax, "act_absmax", ndim=1)
    if bool((act_absmax < 0).any()):
        raise ValueError("act_absmax: expected maxima of |x| (>= 0), got a negative value")
    weights = [weight] if isinstance(weight, torch.Tensor) else list(weight)
    if not weights:
        raise ValueError("weight: expected a weight or a list of weights, got an empty list")
    for i, w in enumerate(weights):
        name = "weight" if isinstance(weight, torch.Tensor) else f"weight[{i}]"
        check_float_tensor(w, name, ndim=2)
        if w.shape[1] != act_absmax.numel():
            raise ValueError(
                f"{name}: expected {act_absmax.numel()} input columns (one per channel of "
                f"act_absmax), got shape {tuple(w.shape)}"
            )
    w_max = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    w_max = w_max.clamp(min=MIN_SCALE)
    scales = act_absmax.float().pow(alpha) / w_max.pow(1 - alpha)
    return scales.clamp(min=MIN_SCALE)


def activation_absmax(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    tokenizer: Any = None,
    *,
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Per input channel, the maximum |x| entering every decoder linear layer of ``model``.

    ``calibration_texts`` as for ``gptq``/``awq.quantize_model_``: a text (``nsamples`` random
    windows of ``seqlen`` tokens, ``qlearn.data.calibration_windows(..., seed=seed)``), or
    anything ``qlearn.data.token_batches`` takes. Returns float32 [in] per layer name, computed
    by ``int8.find_outlier_features`` (chapter 04's outlier map: its ``max_abs``). The authors'
    ``get_act_scales``.
    Taught in notebooks/11_moving_outliers.ipynb.
    """
    check_module(model)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    batches = calibration_batches(calibration_texts, tokenizer, nsamples, seqlen, seed, batch_size)
    features = int8.find_outlier_features(model, batches, progress=progress)
    unused = [name for name, seen in features.items() if seen.n_tokens == 0]
    if unused:
        raise ValueError(
            f"model: expected every decoder linear layer to be called, {unused[0]} was not"
        )
    return {name: seen.max_abs for name, seen in features.items()}


def smoothing_groups(model: nn.Module) -> list[SmoothingGroup]:
    """Where :func:`smooth_model_` folds scales, decoder layer by decoder layer.

    Llama-style layers (Llama, SmolLM2, Mistral, Qwen2): input norm → q, k, v and post-attention
    norm → gate, up. GPT-2: ln_1 → c_attn and ln_2 → c_fc. The authors' ``smooth_lm``. Any
    other layer raises, naming it.
    """
    prefix, blocks = decoder_layers(model)
    groups = []
    for index, block in enumerate(blocks):
        names = {name for name, _ in block.named_modules()}
        here = f"{prefix}.{index}"
        if {
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "mlp.up_proj",
        } <= names:
            pairs = [
                ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            ]
        elif {"ln_1", "attn.c_attn", "ln_2", "mlp.c_fc"} <= names:
            pairs = [("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))]
        else:
            raise ValueError(
                f"model: expected Llama-style (input_layernorm → q/k/v_proj, "
                f"post_attention_layernorm → gate/up_proj) or GPT-2 decoder layers, got "
                f"{type(block).__name__} at {here}"
            )
        for norm, layers in pairs:
            norm_module = block.get_submodule(norm)
            width = weight_of(block.get_submodule(layers[0])).shape[1]
            weight = getattr(norm_module, "weight", None)
            if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (width,):
                raise ValueError(
                    f"model: expected {here}.{norm} to be a norm with a weight of {width} values "
                    f"(to fold the scales into), got {type(norm_module).__name__}"
                )
            groups.append(SmoothingGroup(f"{here}.{norm}", tuple(f"{here}.{n}" for n in layers)))
    return groups


def smooth_model_(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str] | None = None,
    tokenizer: Any = None,
    *,
    alpha: float = 0.5,
    act_absmax: dict[str, torch.Tensor] | None = None,
    **calibration: Any,
) -> Smoothing:
    """In place: fold SmoothQuant's scales into every smoothing group of ``model``.

    For each :func:`smoothing_groups` entry, s = :func:`smoothing_scales` of the activations'
    maxima at the group's input and the weights of all its layers; the norm's weight (and bias)
    is divided by s and each layer's weight columns multiplied by it (``awq.fold_scales_``), so
    the model computes the same logits, up to float rounding. The maxima come from
    ``act_absmax`` (:func:`activation_absmax` of this model before any smoothing: pass it to try
    several α on one calibration) or, when it is None, from a calibration pass over
    ``calibration_texts`` (``calibration``: nsamples, seqlen, seed, batch_size, progress).
    Arguments are checked before anything changes. Xiao et al. 2023, eq. 3–4 and §4.3.
    Taught in notebooks/11_moving_outliers.ipynb.
    """
    check_module(model)
    alpha = check_fraction(alpha, "alpha")
    require_in_memory(model, "load it into memory first (the norms are changed in place)")
    groups = smoothing_groups(model)
    if act_absmax is None:
        if calibration_texts is None:
            raise ValueError(
                "calibration_texts: expected calibration data (or act_absmax), got None"
            )
        act_absmax = activation_absmax(model, calibration_texts, tokenizer, **calibration)
    elif not isinstance(act_absmax, dict):
        raise TypeError(
            f"act_absmax: expected a dict of layer name → tensor, got {type(act_absmax).__name__}"
        )
    modules = dict(model.named_modules())
    plan = []
    for group in groups:
        first = group.layers[0]
        if first not in act_absmax:
            raise ValueError(f"act_absmax: expected the maxima of {first}'s input, found none")
        maxima = act_absmax[first]
        check_float_tensor(maxima, f"act_absmax[{first!r}]", ndim=1)
        weights = [weight_of(modules[name]) for name in group.layers]
        plan.append((group, maxima, smoothing_scales(maxima, weights, alpha=alpha)))
    scales: dict[str, torch.Tensor] = {}
    for group, _, s in plan:
        fold_scales_(modules[group.norm], [modules[name] for name in group.layers], s)
        scales[group.norm] = s
    return Smoothing(alpha, tuple(groups), scales, {g.norm: m for g, m, _ in plan})


def quantize_model(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str] | None = None,
    tokenizer: Any = None,
    **options: Any,
) -> tuple[nn.Module, Smoothing]:
    """Return ``(a smoothed W8A8 copy of model, its Smoothing)``; ``model`` is left untouched.

    :func:`quantize_model_` on ``copy.deepcopy(model)``, with the same arguments.
    Xiao et al. 2023. Taught in notebooks/11_moving_outliers.ipynb.
    """
    check_module(model)
    require_in_memory(model, "load it into memory first (the norms are changed in place)")
    return quantize_model_(copy.deepcopy(model), calibration_texts, tokenizer, **options)


def quantize_model_(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str] | None = None,
    tokenizer: Any = None,
    *,
    alpha: float = 0.5,
    granularity: str = "tensor",
    act_absmax: dict[str, torch.Tensor] | None = None,
    **calibration: Any,
) -> tuple[nn.Module, Smoothing]:
    """In place: :func:`smooth_model_`, then every decoder linear becomes W8A8 with real int8
    matmuls (``int8.Int8Linear``: int8 weights absmax per output row, int8 activations absmax
    per tensor (``granularity="tensor"``, the paper's setting) or per token (``"vector"``), int32
    sums). ``alpha=0`` makes every weight column's maximum 1 and leaves the range in the
    activations, ``alpha=1`` the reverse; no smoothing at all is
    ``int8.quantize_model(mode=...)``. Returns ``(model, smoothing)``. Xiao et al. 2023, §4.
    Taught in notebooks/11_moving_outliers.ipynb.
    """
    granularity = check_choice(granularity, "granularity", GRANULARITIES)
    smoothing = smooth_model_(
        model, calibration_texts, tokenizer, alpha=alpha, act_absmax=act_absmax, **calibration
    )
    int8.quantize_model_(model, mode=granularity)
    return model, smoothing
