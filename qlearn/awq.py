"""AWQ: scale up the weight channels that large activations multiply, then quantize.

Lin et al., "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression and
Acceleration", MLSys 2024 (arXiv 2306.00978), §3. Taught in notebooks/08_awq_nf4.ipynb.

A weight's error matters in proportion to the input it multiplies: ‖(W − Q(W))X‖. A few input
channels carry activations much larger than the rest (§3.1: keeping 1 % of the channels in FP16,
chosen by activation magnitude, recovers most of the loss). AWQ protects them without mixed
precision. Multiply input channel j of the weight by s_j > 1 and divide the input by s_j: the
product is unchanged, Q(W·diag(s))·(diag(s)⁻¹X), but the rounding error of the scaled weights,
relative to them, shrinks for the scaled channels (§3.2, eq. 2–3). The scales come from the
activations alone:

    s = s_X^α,  s_X = mean |x| per input channel over the calibration tokens,
    α* = argmin_α ‖Q(W·diag(s))(diag(s)⁻¹·X) − WX‖   over a grid (eq. 4–5),

here, as in the authors' code (``awq/quantize/auto_scale.py``), α ∈ {0, 1/20, …, 19/20}, s
normalised by √(max s · min s), the error measured as the mean square error of the output of the
module the weights feed (q, k and v together through the whole attention; gate and up through the
MLP; up → down and v → o on the layer alone), weights quantized by the authors' group-wise
asymmetric min/max quantizer (:func:`quantize_groups`). The division by s is folded into the
operation before (§3.2): the RMSNorm's weight, or the rows of the previous linear layer, so the
model stays a plain transformers model with the same function (:func:`fold_scales_`). Then
(``auto_clip.py``) each layer's weights may be clipped per group to the range, searched on a grid
of shrink factors, whose quantized output error is smallest (:func:`search_clip`), and finally
every linear layer is rounded to nearest.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch
from torch import nn
from torch.func import functional_call

from qlearn import _quantized, reuse
from qlearn._checks import (
    check_bits,
    check_bool,
    check_float_tensor,
    check_fraction,
    check_group_size,
    check_int,
    check_module,
    check_positive,
    check_sequence,
)
from qlearn._layers import (
    calibration_batches,
    first_layer_inputs,
    is_conv1d,
    is_linear,
    linears_of,
    main_output,
    model_device,
    set_weight_,
    weight_of,
)
from qlearn._progress import progress_bar
from qlearn.data import token_batches
from qlearn.models import decoder_layers, linear_layers
from qlearn.offload import onloaded, require_in_memory

__all__ = [
    "DEFAULT_ALPHAS",
    "AWQReport",
    "GroupQuantized",
    "LayerReport",
    "ScaleReport",
    "ScaleSearch",
    "activation_means",
    "awq_scales",
    "clip_weight",
    "fold_scales_",
    "pseudo_quantize",
    "quantize_groups",
    "quantize_model",
    "quantize_model_",
    "search_clip",
    "search_scale",
]

DEFAULT_ALPHAS: Final = tuple(i / 20 for i in range(20))
"""The authors' grid: α = 0, 0.05, …, 0.95 (``n_grid = 20``; 1 itself is not tried)."""

_MIN_SCALE: Final = 1e-4  # the authors' clamp on s_X^α
_MIN_RANGE: Final = 1e-5  # the authors' clamp on max − min of a group
_SKIP_CLIP: Final = ("q_", "k_")  # the authors skip q and k: "due to qk bmm, hard to clip"


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class GroupQuantized:
    """Codes and what turns them back: w = scale · (code − zero), per row and group of columns.

    ``codes`` (uint8, [out, in]) are in [0, 2^bits − 1]; ``scale`` and ``zero`` are float32
    [out, n_groups] (zero an integer value, as the authors store it); groups are ``group_size``
    consecutive input columns, the last one shorter when ``group_size`` does not divide ``in``.
    Taught in notebooks/08_awq_nf4.ipynb.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    dtype: torch.dtype

    def dequantize(self) -> torch.Tensor:
        """scale · (codes − zero), in float32 then cast to the input's dtype."""
        columns = self.codes.shape[1]
        codes = _padded_groups(self.codes.float(), self.group_size)
        values = (codes - self.zero[..., None]) * self.scale[..., None]
        return values.reshape(codes.shape[0], -1)[:, :columns].to(self.dtype)

    def nbytes(self) -> float:
        """The bytes an AWQ checkpoint stores for this weight: the codes packed at ``bits``
        bits, and per row and group one fp16 scale and one ``bits``-bit zero point.
        Taught in notebooks/13_capstone.ipynb."""
        rows, columns = self.codes.shape
        return _group_bytes(rows, columns, self.bits, self.group_size)

    def bits_per_weight(self) -> float:
        """8 · :meth:`nbytes` over the number of weights. Taught in notebooks/13_capstone.ipynb."""
        return _quantized.bits_per_weight(self.nbytes(), self.codes.numel())


@dataclass(frozen=True, eq=False)
class ScaleSearch:
    """What :func:`search_scale` found: the best ``alpha`` and its ``scales`` (one per input
    channel), and the output error (mean square) at every α of ``alphas``. Lin et al. §3.2.
    Taught in notebooks/08_awq_nf4.ipynb."""

    alpha: float
    scales: torch.Tensor
    alphas: torch.Tensor
    errors: torch.Tensor

    @property
    def rtn_error(self) -> float:
        """The error at α = 0 (all scales 1: plain round-to-nearest), if α = 0 was tried."""
        zero = (self.alphas == 0).nonzero()
        return float(self.errors[zero[0, 0]]) if zero.numel() else math.nan

    @property
    def error(self) -> float:
        """The smallest error, at :attr:`alpha`."""
        return float(self.errors.min())


@dataclass(frozen=True)
class LayerReport:
    """One linear layer that :func:`quantize_model_` quantized: its name, its shape
    [out, in], and ``stored_bytes``, what its :class:`GroupQuantized` stores
    (:meth:`GroupQuantized.nbytes`). Taught in notebooks/08_awq_nf4.ipynb."""

    name: str
    shape: tuple[int, int]
    stored_bytes: float

    def nbytes(self) -> float:
        """The bytes of the layer's quantized weight (codes packed, fp16 scales, zeros)."""
        return self.stored_bytes

    def bits_per_weight(self) -> float:
        """8 · :meth:`nbytes` over the layer's out · in weights."""
        return _quantized.bits_per_weight(self.stored_bytes, self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class ScaleReport:
    """One scale group of one decoder layer in :func:`quantize_model_`: where the scales were
    folded (``prev``), the layers they multiply, the α chosen, and the output error (mean
    square, on the calibration tokens) at every α of the grid ``alphas``."""

    name: str
    prev: str
    layers: tuple[str, ...]
    alpha: float
    alphas: tuple[float, ...]
    errors: tuple[float, ...]

    @property
    def error(self) -> float:
        """The error at the chosen α (the smallest)."""
        return min(self.errors)

    @property
    def rtn_error(self) -> float:
        """The error at α = 0 (all scales 1: plain RTN); NaN if the grid has no 0."""
        return self.errors[self.alphas.index(0.0)] if 0.0 in self.alphas else math.nan

    @property
    def gain(self) -> float:
        """RTN's error over AWQ's: how much the scales helped (NaN without α = 0)."""
        return self.rtn_error / self.error if self.error > 0 else math.inf


@dataclass
class AWQReport:
    """What :func:`quantize_model_` did: the scale groups, the clipped layers, the calibration
    size, the settings, the wall time, and one :class:`LayerReport` per quantized linear layer
    (none with ``quantize=False``), whose bytes :meth:`nbytes` adds up.
    Taught in notebooks/08_awq_nf4.ipynb."""

    scales: list[ScaleReport]
    clipped: list[str]
    n_windows: int
    n_tokens: int
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    layers: list[LayerReport] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AWQReport:
        """The report ``dataclasses.asdict`` gave ``data`` (read back from JSON)."""
        scales = [
            ScaleReport(
                **{
                    **row,
                    "layers": tuple(row["layers"]),
                    "alphas": tuple(row["alphas"]),
                    "errors": tuple(row["errors"]),
                }
            )
            for row in data["scales"]
        ]
        layers = [LayerReport(**{**row, "shape": tuple(row["shape"])}) for row in data["layers"]]
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in data["settings"].items()}
        return cls(
            **{
                **data,
                "scales": scales,
                "layers": layers,
                "settings": settings,
                "clipped": list(data["clipped"]),
            }
        )

    def nbytes(self) -> float:
        """The bytes of every quantized layer: the sum of each :class:`GroupQuantized`'s
        ``nbytes()`` (codes packed, fp16 scales, zero points). Embeddings, norms and the LM
        head, which AWQ keeps, are not counted. Taught in notebooks/13_capstone.ipynb."""
        return sum(row.stored_bytes for row in self.layers)

    def bits_per_weight(self) -> float:
        """8 · :meth:`nbytes` over the weights of the quantized layers."""
        if not self.layers:
            raise ValueError(
                "report: expected quantized layers, got none (quantize=False keeps FP weights)"
            )
        n_weights = sum(row.shape[0] * row.shape[1] for row in self.layers)
        return _quantized.bits_per_weight(self.nbytes(), n_weights)

    def table(self, *, every: int = 1) -> str:
        """A text table of the scale groups (every ``every``-th): α and the error gain."""
        every = check_int(every, "every", minimum=1)
        lines = [f"{'scale group':<36}{'alpha':>7}{'RTN error':>12}{'AWQ error':>12}{'gain':>7}"]
        for row in self.scales[::every]:
            lines.append(
                f"{row.name:<36}{row.alpha:>7.2f}{row.rtn_error:>12.3g}{row.error:>12.3g}"
                f"{row.gain:>7.2f}"
            )
        return "\n".join(lines)


def quantize_groups(
    weight: torch.Tensor, *, bits: int = 4, group_size: int | None = 128
) -> GroupQuantized:
    """The authors' quantizer (``pseudo_quantize_tensor``, zero point on): per row and group of
    ``group_size`` input columns (``None``: the whole row), asymmetric min/max.

    scale = max(max − min, 1e-5) / (2^bits − 1), zero = clamp(−round(min / scale), 0, 2^bits − 1),
    code = clamp(round(w / scale) + zero, 0, 2^bits − 1), in float32, ``torch.round`` (half to
    even). Unlike GPTQ's quantizer the range is not stretched to hold 0. A last group shorter
    than ``group_size`` is allowed (the authors' code requires a divisor; 576 = 4 · 128 + 64 in
    the course's model). Lin et al. §3 (INT4 group-wise). Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_float_tensor(weight, "weight", ndim=2)
    bits = check_bits(bits, low=2, high=8)
    group_size = _group_size(group_size, weight.shape[1])
    maxq = 2**bits - 1
    with torch.no_grad():
        w = _padded_groups(weight.detach().float(), group_size)  # [out, n_groups, g]
        lo, hi = w.amin(dim=2), w.amax(dim=2)
        scale = (hi - lo).clamp(min=_MIN_RANGE) / maxq
        zero = (-torch.round(lo / scale)).clamp(0, maxq)
        codes = (torch.round(w / scale[..., None]) + zero[..., None]).clamp(0, maxq)
        codes = codes.reshape(w.shape[0], -1)[:, : weight.shape[1]].to(torch.uint8)
    return GroupQuantized(codes, scale, zero, bits, group_size, weight.dtype)


def pseudo_quantize(
    weight: torch.Tensor, *, bits: int = 4, group_size: int | None = 128
) -> torch.Tensor:
    """Quantize then dequantize with :func:`quantize_groups`: round-to-nearest (RTN) weights,
    in the input's dtype (the same values, computed without keeping the codes). Lin et al. §3.
    Taught in notebooks/08_awq_nf4.ipynb."""
    check_float_tensor(weight, "weight", ndim=2)
    bits = check_bits(bits, low=2, high=8)
    group_size = _group_size(group_size, weight.shape[1])
    with torch.no_grad():
        w = _padded_groups(weight.detach().float(), group_size)
        values = _pseudo_quantize_padded(w, bits).reshape(w.shape[0], -1)
    return values[:, : weight.shape[1]].to(weight.dtype)


def awq_scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """The per-channel scales s = s_X^α (clamped at 1e-4), divided by √(max s · min s).

    ``x_mean`` is s_X, the mean |x| of each input channel over the calibration tokens. α = 0
    gives all ones (plain RTN); α = 1 scales each channel by its activation magnitude. The
    normalisation centres the scales around 1 on a log scale. Lin et al. §3.2, eq. 5.
    Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_float_tensor(x_mean, "x_mean", ndim=1)
    if bool((x_mean < 0).any()):
        raise ValueError("x_mean: expected magnitudes (mean |x|, all >= 0), got negative values")
    alpha = check_fraction(alpha, "alpha")
    scales = x_mean.float().pow(alpha).clamp(min=_MIN_SCALE)
    return scales / (scales.max() * scales.min()).sqrt()


def activation_means(
    model: nn.Module,
    texts_or_batches: torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    *,
    tokenizer: Any = None,
    progress: bool | None = None,
) -> dict[str, torch.Tensor]:
    """s_X: the mean |x| of every input channel of every decoder linear layer, keyed by name.

    Forward pre-hooks on the layers of ``qlearn.models.linear_layers`` (removed afterwards)
    average |x| over every calibration token. ``texts_or_batches`` as
    ``qlearn.data.token_batches`` takes it. The channels with large s_X are AWQ's salient ones
    (Lin et al. §3.1). Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_module(model)
    batches = token_batches(texts_or_batches, tokenizer)
    layers = list(linear_layers(model))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys((name for name, _ in layers), 0)

    def hook(name: str) -> Any:
        def add(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.abs().sum(dim=0)
            counts[name] += x.shape[0]

        return add

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in progress_bar(batches, desc="activation means", progress=progress):
                model(input_ids=batch.to(model_device(model)), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[name] / counts[name] for name, _ in layers if counts[name]}


def search_scale(
    module: nn.Module,
    layers: Sequence[nn.Module],
    x: torch.Tensor | Sequence[torch.Tensor],
    *,
    kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    bits: int = 4,
    group_size: int | None = 128,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> ScaleSearch:
    """AWQ's scale search (Lin et al. §3.2, eq. 4–5; the authors' ``_search_module_scale``).

    ``layers`` (linear layers inside ``module``, or ``module`` itself) all take the input ``x``
    (a tensor, or a list of tensors: one forward pass each, with ``kwargs`` for each). For each
    α of ``alphas``: s = :func:`awq_scales` (s_X = mean |x| over every token), each layer's
    weight becomes Q(W · diag(s)) · diag(s)⁻¹ (:func:`pseudo_quantize`), ``module(x, **kwargs)``
    runs with those weights (``torch.func.functional_call``: the module itself is not changed)
    and its output is compared with the original one: mean square error over every output
    value. Returns the α with the smallest error (the first, on ties), its scales, and every
    error. Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_module(module, "module")
    names = _layer_names(module, layers)
    xs, calls = _calls(x, kwargs)
    alphas = check_sequence(alphas, "alphas", check_fraction)
    bits = check_bits(bits, low=2, high=8)
    weights = {name: _weight(layer) for name, layer in zip(names, layers, strict=True)}
    for name, weight in weights.items():
        if weight.shape[1] != xs[0].shape[-1]:
            raise ValueError(
                f"x: expected a last dimension of {weight.shape[1]} (the layers' inputs), "
                f"got {xs[0].shape[-1]}"
            )
        _group_size(group_size, weight.shape[1], f"group_size (layer {name or 'module'})")
    with torch.no_grad():
        x_mean = _mean_abs(xs)
        expected = [main_output(module(xi, **kw)) for xi, kw in zip(xs, calls, strict=True)]
        errors = []
        for alpha in alphas:
            scales = awq_scales(x_mean, alpha)
            params = {
                _param_name(name): _stored(
                    layers[i],
                    pseudo_quantize(w * scales, bits=bits, group_size=group_size) / scales,
                )
                for i, (name, w) in enumerate(weights.items())
            }
            total, count = 0.0, 0
            for xi, kw, ref in zip(xs, calls, expected, strict=True):
                out = main_output(functional_call(module, params, (xi,), kw))
                total += float((out.float() - ref.float()).square().sum())
                count += ref.numel()
            errors.append(total / count)
    errors_t = torch.tensor(errors, dtype=torch.float64)
    best = int(torch.argmin(errors_t))  # the first minimum, as the authors' strict `<`
    return ScaleSearch(
        alpha=alphas[best],
        scales=awq_scales(x_mean, alphas[best]),
        alphas=torch.tensor(alphas, dtype=torch.float64),
        errors=errors_t,
    )


def search_clip(
    weight: torch.Tensor,
    x: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_tokens: int = 512,
) -> torch.Tensor:
    """AWQ's clipping search (the authors' ``auto_clip_layer``): per row and group, the range
    [−m, m] whose quantized output is closest to the original.

    ``x`` [tokens, in] is the layer's input; every k-th token is kept so that about
    ``n_tokens`` remain. For each shrink i = 0 … ⌊max_shrink · n_grid⌋ − 1,
    m = max|w| · (1 − i / n_grid): the group is clamped to [−m, m], quantized
    (:func:`pseudo_quantize`), and its partial output Σ_k w_k x_k is compared with the
    original one (mean square over the tokens, computed as dᵀ (XᵀX / tokens) d for the change d
    of the group's weights); the m with the smallest error is kept (the first, on ties).
    Returns m as [out, n_groups]. Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_float_tensor(weight, "weight", ndim=2)
    check_float_tensor(x, "x")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x: expected a last dimension of {weight.shape[1]} (in_features), got {x.shape[-1]}"
        )
    bits = check_bits(bits, low=2, high=8)
    group_size = _group_size(group_size, weight.shape[1])
    n_grid = check_int(n_grid, "n_grid", minimum=1)
    max_shrink = check_positive(max_shrink, "max_shrink")
    if max_shrink >= 1:
        raise ValueError(f"max_shrink: expected a fraction below 1, got {max_shrink}")
    n_tokens = check_int(n_tokens, "n_tokens", minimum=1)
    with torch.no_grad():
        tokens = x.detach().reshape(-1, x.shape[-1]).float()
        tokens = tokens[:: max(1, tokens.shape[0] // n_tokens)]
        # pad the last group: weights with a copy of their last column (same min and max),
        # inputs with zeros (no contribution to the partial outputs)
        w = _padded_groups(weight.detach().float(), group_size)  # [out, n_groups, g]
        xg = _zero_padded(tokens, w.shape[1] * group_size).reshape(tokens.shape[0], *w.shape[1:])
        # mean over tokens of (Σ_k d_k x_k)² = dᵀ C d with C = XᵀX / tokens, per group: the
        # authors' error without a pass over the tokens at each shrink step
        gram = torch.einsum("tgk,tgl->gkl", xg, xg) / tokens.shape[0]
        best_max = w.abs().amax(dim=2)  # [out, n_groups]
        best_err = torch.full_like(best_max, math.inf)
        for i in range(int(max_shrink * n_grid)):
            max_val = w.abs().amax(dim=2) * (1 - i / n_grid)
            clipped = torch.maximum(torch.minimum(w, max_val[..., None]), -max_val[..., None])
            d = _pseudo_quantize_padded(clipped, bits) - w
            err = (torch.einsum("ogk,gkl->ogl", d, gram) * d).sum(dim=2)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
    return best_max


def clip_weight(
    weight: torch.Tensor, max_val: torch.Tensor, *, group_size: int | None = 128
) -> torch.Tensor:
    """Clamp each row and group of ``weight`` to [−m, m], m from :func:`search_clip`
    ([out, n_groups]). The authors' ``apply_clip``. Taught in notebooks/08_awq_nf4.ipynb."""
    check_float_tensor(weight, "weight", ndim=2)
    group_size = _group_size(group_size, weight.shape[1])
    n_groups = -(-weight.shape[1] // group_size)
    check_float_tensor(max_val, "max_val", ndim=2)
    if tuple(max_val.shape) != (weight.shape[0], n_groups):
        raise ValueError(
            f"max_val: expected shape {(weight.shape[0], n_groups)} (rows, groups), "
            f"got {tuple(max_val.shape)}"
        )
    m = max_val.repeat_interleave(group_size, dim=1)[:, : weight.shape[1]].to(weight.dtype)
    return torch.maximum(torch.minimum(weight.detach(), m), -m)


def fold_scales_(prev: nn.Module, layers: Sequence[nn.Module], scales: torch.Tensor) -> None:
    """In place: divide the output of ``prev`` by ``scales`` and multiply the matching input
    columns of every layer of ``layers`` by them; the composition computes the same function.

    ``prev`` is a norm (RMSNorm, LayerNorm: weight and bias ÷ s) or a linear layer whose last
    ``len(scales)`` output rows (and bias) are divided. ``layers`` are ``nn.Linear`` or GPT-2
    ``Conv1D``: their weight [out, in] is multiplied by s along ``in``. The authors'
    ``scale_ln_fcs`` and ``scale_fc_fc``; Lin et al. §3.2 ("fuse the scales into the previous
    operator"). Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_float_tensor(scales, "scales", ndim=1)
    if bool((scales <= 0).any()):
        raise ValueError("scales: expected positive scales")
    if not isinstance(prev, nn.Module):
        raise TypeError(f"prev: expected a norm or linear layer, got {type(prev).__name__}")
    layers = list(layers)
    for i, layer in enumerate(layers):
        if not is_linear(layer):
            raise TypeError(
                f"layers[{i}]: expected nn.Linear or transformers Conv1D, got "
                f"{type(layer).__name__}"
            )
        if weight_of(layer).shape[1] != scales.numel():
            raise ValueError(
                f"scales: expected {weight_of(layer).shape[1]} scales (layers[{i}]'s inputs), "
                f"got {scales.numel()}"
            )
    with torch.no_grad():
        if is_linear(prev):
            rows = weight_of(prev)[-scales.numel() :]
            rows.div_(scales.to(rows.dtype)[:, None])
            if prev.bias is not None:
                prev.bias[-scales.numel() :].div_(scales.to(prev.bias.dtype))
        elif getattr(prev, "weight", None) is not None and prev.weight.shape == scales.shape:
            prev.weight.div_(scales.to(prev.weight.dtype))
            if getattr(prev, "bias", None) is not None:
                prev.bias.div_(scales.to(prev.bias.dtype))
        else:
            raise TypeError(
                f"prev: expected a norm with a weight of {scales.numel()} values or a linear "
                f"layer, got {type(prev).__name__}"
            )
        for layer in layers:
            weight = weight_of(layer)
            weight.mul_(scales.to(weight.dtype)[None, :])


def quantize_model(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    tokenizer: Any = None,
    *,
    cache: bool = False,
    **options: Any,
) -> tuple[nn.Module, AWQReport]:
    """Return ``(an AWQ-quantized copy of model, an AWQReport)``; ``model`` is left untouched.

    :func:`quantize_model_` on ``copy.deepcopy(model)``, with the same arguments.
    Lin et al. 2024, §3. Taught in notebooks/08_awq_nf4.ipynb.

    ``options``: the keyword arguments of :func:`quantize_model_` (bits, group_size, …).
    With ``cache=True`` a result computed before on this machine, from the same model,
    calibration and options, is read back instead (:func:`qlearn.reuse.quantized_copy`): the
    same tensors (the folded norms too) and the same report, ``seconds`` included.
    """
    check_module(model)
    require_in_memory(model, "quantize it in place, layer by layer, with awq.quantize_model_")
    cache = check_bool(cache, "cache")
    if not cache:
        return quantize_model_(copy.deepcopy(model), calibration_texts, tokenizer, **options)
    return reuse.quantized_copy(
        "awq", quantize_model_, model, calibration_texts, tokenizer, options, AWQReport.from_dict
    )


def quantize_model_(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    tokenizer: Any = None,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    clip: bool = True,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    quantize: bool = True,
    progress: bool | None = None,
) -> tuple[nn.Module, AWQReport]:
    """Quantize ``model``'s decoder linear layers with AWQ, in place; return ``(model, report)``.

    ``calibration_texts``: a text (``nsamples`` random windows of ``seqlen`` tokens are drawn
    with ``qlearn.data.calibration_windows(..., seed=seed)``, as for GPTQ) or anything
    ``qlearn.data.token_batches`` takes (a [n, seqlen] token tensor, a list of token tensors, a
    list of strings with ``tokenizer``); windows of equal length run ``batch_size`` at a time.
    The authors' ``run_awq`` (the Pile, 128 × 512 tokens there): the inputs of each decoder
    layer come from the unquantized layers before it. In each layer, for each scale group —
    input norm → q, k, v (error of the attention output), v → o (only when v and o have the same
    shape: not with grouped-query attention, as in the authors' code), post-attention norm →
    gate, up (error of the MLP output), up → down — :func:`search_scale` picks α and
    :func:`fold_scales_` folds the scales; with ``clip``, :func:`search_clip` clips every layer
    but q and k; then every linear layer is rounded with :func:`pseudo_quantize` (skipped with
    ``quantize=False``: the model keeps FP weights, scaled and clipped). Llama-style decoder
    layers (Llama, SmolLM2, Mistral, Qwen2) and GPT-2's (norms → c_attn and c_fc). The report's
    ``nbytes()`` counts what the quantized layers store. Arguments are checked before any work;
    an error in a forward pass leaves the model partly changed.
    Taught in notebooks/08_awq_nf4.ipynb.
    """
    started = time.perf_counter()
    check_module(model)
    bits = check_bits(bits, low=2, high=8)
    for name, layer in linear_layers(model):  # every layer checked before any work
        _group_size(group_size, weight_of(layer).shape[1], f"group_size (layer {name})")
    clip = check_bool(clip, "clip")
    quantize = check_bool(quantize, "quantize")
    alphas = check_sequence(alphas, "alphas", check_fraction)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    batches = calibration_batches(calibration_texts, tokenizer, nsamples, seqlen, seed, batch_size)

    quantized = model
    quantized.eval()
    prefix, blocks = decoder_layers(quantized)
    plans = [_scale_groups(block) for block in blocks]  # fails early on an unknown architecture
    reports: list[ScaleReport] = []
    clipped: list[str] = []
    stored: list[LayerReport] = []
    with torch.no_grad():
        inputs, extras = first_layer_inputs(quantized, blocks[0], batches)
        for index, (block, plan) in enumerate(
            progress_bar(
                list(zip(blocks, plans, strict=True)), desc=f"AWQ {bits}-bit", progress=progress
            )
        ):
            with onloaded(block):  # an offloaded layer: its weights, for this layer only
                where = f"{prefix}.{index}"
                linears = linears_of(block)
                watched = {inspect for _, _, inspect in plan}
                feats, calls, outputs = _run_block(block, linears, watched, inputs, extras)
                for prev_name, layer_names, inspect in plan:
                    layers = [block.get_submodule(n) for n in layer_names]
                    xs = [args[0] for args, _ in calls[inspect]]
                    found = search_scale(
                        block.get_submodule(inspect),
                        layers,
                        xs,
                        kwargs=[kw for _, kw in calls[inspect]],
                        bits=bits,
                        group_size=group_size,
                        alphas=alphas,
                    )
                    fold_scales_(block.get_submodule(prev_name), layers, found.scales)
                    for n in layer_names:  # the inputs the clip search sees are now x / s
                        feats[n] = feats[n] / found.scales
                    reports.append(
                        ScaleReport(
                            name=f"{where}.{inspect}",
                            prev=f"{where}.{prev_name}",
                            layers=tuple(f"{where}.{n}" for n in layer_names),
                            alpha=found.alpha,
                            alphas=tuple(alphas),
                            errors=tuple(found.errors.tolist()),
                        )
                    )
                for name, layer in linears:
                    weight = weight_of(layer).detach()
                    if clip and not any(key in name for key in _SKIP_CLIP):
                        max_val = search_clip(weight, feats[name], bits=bits, group_size=group_size)
                        weight = clip_weight(weight, max_val, group_size=group_size)
                        clipped.append(f"{where}.{name}")
                    if quantize:
                        weight = pseudo_quantize(weight, bits=bits, group_size=group_size)
                        rows, columns = weight.shape
                        size = _group_bytes(rows, columns, bits, _group_size(group_size, columns))
                        stored.append(LayerReport(f"{where}.{name}", (rows, columns), size))
                    set_weight_(layer, weight)
                del feats, calls
                inputs = outputs
    report = AWQReport(
        scales=reports,
        clipped=clipped,
        n_windows=sum(batch.shape[0] for batch in batches),
        n_tokens=sum(batch.numel() for batch in batches),
        settings={
            "bits": bits,
            "group_size": group_size,
            "clip": clip,
            "quantize": quantize,
            "alphas": tuple(alphas),
        },
        seconds=time.perf_counter() - started,
        layers=stored,
    )
    return quantized, report


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _scale_groups(block: nn.Module) -> list[tuple[str, list[str], str]]:
    """The scale groups of one decoder layer: (prev op, layers it feeds, module to inspect)."""
    names = {name for name, _ in block.named_modules()}
    if {"input_layernorm", "self_attn.q_proj", "mlp.down_proj"} <= names:  # Llama family
        groups = [
            (
                "input_layernorm",
                ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                "self_attn",
            ),
        ]
        v, o = block.self_attn.v_proj.weight, block.self_attn.o_proj.weight
        if v.shape == o.shape:  # not with grouped-query attention (authors' PR #67)
            groups.append(("self_attn.v_proj", ["self_attn.o_proj"], "self_attn.o_proj"))
        groups += [
            ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"], "mlp"),
            ("mlp.up_proj", ["mlp.down_proj"], "mlp.down_proj"),
        ]
        return groups
    if {"ln_1", "attn.c_attn", "ln_2", "mlp.c_fc"} <= names:  # GPT-2
        return [("ln_1", ["attn.c_attn"], "attn"), ("ln_2", ["mlp.c_fc"], "mlp")]
    raise ValueError(
        "model: expected Llama-style (input_layernorm, self_attn.q_proj, ..., mlp.down_proj) or "
        f"GPT-2 decoder layers, got {type(block).__name__}"
    )


def _run_block(
    block: nn.Module,
    linears: list[tuple[str, nn.Module]],
    watched: set[str],
    inputs: list[torch.Tensor],
    extras: list[tuple[tuple[Any, ...], dict[str, Any]]],
) -> tuple[dict[str, torch.Tensor], dict[str, list[Any]], list[torch.Tensor]]:
    """One pass of the block over every batch: the inputs of each linear layer ([tokens, in]),
    the calls of the watched modules ((args, kwargs) per batch) and the block's outputs."""
    feats: dict[str, list[torch.Tensor]] = {name: [] for name, _ in linears}
    calls: dict[str, list[Any]] = {name: [] for name in watched}

    def keep_input(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            feats[name].append(args[0].detach().reshape(-1, args[0].shape[-1]))

        return hook

    def keep_call(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            kwargs = dict(kwargs)
            if not args:  # Llama's decoder layer passes hidden_states by keyword
                args = (kwargs.pop("hidden_states"),)
            calls[name].append((tuple(args), kwargs))

        return hook

    handles = [layer.register_forward_pre_hook(keep_input(name)) for name, layer in linears]
    handles += [
        block.get_submodule(name).register_forward_pre_hook(keep_call(name), with_kwargs=True)
        for name in watched
    ]
    try:
        outputs = [
            main_output(block(x, *args, **kwargs))
            for x, (args, kwargs) in zip(inputs, extras, strict=True)
        ]
    finally:
        for handle in handles:
            handle.remove()
    for name, seen in feats.items():
        if not seen:
            raise ValueError(f"model: the linear layer {name} was not called")
    return {name: torch.cat(seen) for name, seen in feats.items()}, calls, outputs


def _layer_names(module: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    """The names of ``layers`` inside ``module`` ("" for the module itself)."""
    if isinstance(layers, nn.Module) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(
            "layers: expected a non-empty list of linear layers inside module, "
            f"got {type(layers).__name__}"
        )
    by_id = {id(m): name for name, m in module.named_modules()}
    names = []
    for i, layer in enumerate(layers):
        if not is_linear(layer):
            raise TypeError(
                f"layers[{i}]: expected nn.Linear or transformers Conv1D, got "
                f"{type(layer).__name__}"
            )
        if id(layer) not in by_id:
            raise ValueError(f"layers[{i}]: expected a layer inside module, got one outside it")
        names.append(by_id[id(layer)])
    return names


def _param_name(layer_name: str) -> str:
    return f"{layer_name}.weight" if layer_name else "weight"


def _weight(layer: nn.Module) -> torch.Tensor:
    return weight_of(layer).detach()


def _stored(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] in the layer's own layout (GPT-2 ``Conv1D`` stores [in, out])."""
    weight = weight.to(layer.weight.dtype)
    return weight.T if is_conv1d(layer) else weight


def _calls(
    x: torch.Tensor | Sequence[torch.Tensor], kwargs: Any
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    xs = [x] if isinstance(x, torch.Tensor) else list(x) if isinstance(x, Sequence) else None
    if not xs:
        raise ValueError(
            f"x: expected a tensor of inputs or a non-empty list of them, got {x!r:.60}"
        )
    for i, xi in enumerate(xs):
        check_float_tensor(xi, "x" if isinstance(x, torch.Tensor) else f"x[{i}]")
        if xi.shape[-1] != xs[0].shape[-1]:
            raise ValueError(f"x[{i}]: expected a last dimension of {xs[0].shape[-1]}")
    if kwargs is None:
        calls: list[dict[str, Any]] = [{} for _ in xs]
    elif isinstance(kwargs, dict):
        calls = [kwargs for _ in xs]
    else:
        calls = list(kwargs)
        if len(calls) != len(xs) or not all(isinstance(kw, dict) for kw in calls):
            raise ValueError(f"kwargs: expected a dict, or one dict per input ({len(xs)})")
    return xs, calls


def _mean_abs(xs: list[torch.Tensor]) -> torch.Tensor:
    total = sum(xi.reshape(-1, xi.shape[-1]).float().abs().sum(dim=0) for xi in xs)
    return total / sum(xi.numel() // xi.shape[-1] for xi in xs)


def _padded_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] → [out, n_groups, group_size], the last group padded with copies of the last
    column (which changes neither its min nor its max)."""
    pad = -w.shape[1] % group_size
    if pad:
        w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    return w.reshape(w.shape[0], -1, group_size)


def _zero_padded(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _pseudo_quantize_padded(w: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`quantize_groups` on groups already laid out as [..., group_size], dequantized."""
    maxq = 2**bits - 1
    lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scale = (hi - lo).clamp(min=_MIN_RANGE) / maxq
    zero = (-torch.round(lo / scale)).clamp(0, maxq)
    return ((torch.round(w / scale) + zero).clamp(0, maxq) - zero) * scale


def _group_size(group_size: Any, columns: int, name: str = "group_size") -> int:
    """``None`` stands for one group per row (``columns``); a size need not divide ``columns``
    (the last group is then shorter)."""
    if group_size is None:
        return columns
    return check_group_size(group_size, columns, name, must_divide=False)


def _group_bytes(rows: int, columns: int, bits: int, group_size: int) -> float:
    """What :class:`GroupQuantized` stores for [rows, columns] weights: codes at ``bits`` bits,
    one fp16 scale and one ``bits``-bit zero per row and group."""
    n_groups = -(-columns // group_size)
    return rows * columns * bits / 8 + rows * n_groups * (2 + bits / 8)
