"""GPTQ: quantize a layer column by column, spreading each error over the columns not yet done.

Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323). For a linear layer with
weight W [rows = out, columns = in] and calibration inputs X [in, N tokens], GPTQ looks for
quantized weights Ŵ that minimize the layer's output error ‖WX − ŴX‖² (§3, eq. 1). Row by row
this is a quadratic with Hessian H = 2XXᵀ (here divided by N, a mean over tokens, §3 eq. 2):

1. quantize one column (every row at once: a weight of each output);
2. the optimal brain surgeon update (OBS/OBQ, §3 eq. 2–3) moves the columns not yet quantized
   to cancel what that rounding did to the output: W[:, F] −= (w − ŵ) / [H_F⁻¹]_qq · (H_F⁻¹)_q,:;
3. take the columns in a fixed order (§4 step 1), update the trailing columns only once per
   block of 128 ("lazy batch updates", step 2), and read every needed row of H_F⁻¹ from the
   upper Cholesky factor of H⁻¹ (step 3, eq. 5): Algorithm 1.

The details follow the authors' reference code (IST-DASLab/gptq, ``gptq.py`` and ``quant.py``):
inputs that never fire (H_ii = 0, "dead") get H_ii = 1 and a zero weight column; H is damped by
``percdamp`` · mean(diag H) before the Cholesky; the quantizer is per output row, asymmetric
min/max over [min(w, 0), max(w, 0)] with codes in [0, 2^bits − 1] (symmetric as an option);
with groups its scale and zero are refitted, at the first column of each group, on the weights
as GPTQ has updated them so far; act-order takes columns by decreasing diag H, and static groups
fit all groups on the original weights first. The sequential procedure
(:func:`quantize_model`, :func:`quantize_model_`) quantizes decoder layer after decoder layer,
each calibrated on the outputs of the layers already quantized, as the reference's
``opt_sequential`` / ``llama_sequential`` do.

The column loop is written twice: once to read, one column per call (:func:`fit_quantizer`,
:func:`quantize_codes`, :func:`prepare_hessian`, :func:`obs_step_`: Algorithm 1 step by step,
what the chapter's step-through widget and exercises use), and once fast, with lazy batches,
inside :func:`gptq_quantize`; a test shows that the two give the same weights bit for bit.

Taught in notebooks/05_gptq.ipynb.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch
from torch import nn

from qlearn import _quantized, reuse
from qlearn._checks import (
    check_bits,
    check_bool,
    check_float_tensor,
    check_group_size,
    check_int,
    check_int_tensor,
    check_module,
    check_positive,
)
from qlearn._layers import (
    StopForwardError,
    calibration_batches,
    first_layer_inputs,
    linears_of,
    main_output,
    set_weight_,
    weight_of,
)
from qlearn._progress import progress_bar
from qlearn.models import decoder_layers, linear_layers
from qlearn.offload import linear_layers_onloaded, onloaded, require_in_memory

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_PERCDAMP",
    "ColumnStep",
    "GPTQReport",
    "HessianAccumulator",
    "LayerReport",
    "QuantizedWeight",
    "fit_quantizer",
    "gptq_quantize",
    "layer_error",
    "obs_step_",
    "prepare_hessian",
    "quantize_codes",
    "quantize_model",
    "quantize_model_",
    "rtn_quantize",
    "rtn_quantize_model",
    "rtn_quantize_model_",
]

DEFAULT_BLOCK_SIZE: Final = 128
"""Columns per lazy batch update (the paper's B, §4 step 2; the reference's ``blocksize``)."""
DEFAULT_PERCDAMP: Final = 0.01
"""Damping λ added to diag H, as a fraction of its mean (§4 step 3; the reference's default)."""


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class QuantizedWeight:
    """A weight quantized by :func:`gptq_quantize` or :func:`rtn_quantize`.

    ``weight``: the dequantized weight, the input's shape and dtype. ``codes`` (uint8, [out, in],
    the input's column order) lie in [0, 2^bits − 1]; ``scale`` (float32; float64 for a
    float64 input) and ``zero`` (uint8) are [out, n_groups]; column j belongs to group
    ``g_idx[j]``, so weight[:, j] = scale[:, g] · (codes[:, j] − zero[:, g]) with g = g_idx[j].
    ``perm``: the order in which GPTQ quantized the columns (act-order), else None.
    ``losses`` ([out], float32): GPTQ's own account of the error it made in each row,
    Σ (w − ŵ)² / (2 [H_F⁻¹]_qq) over the row's weights (the reference's ``Losses``, summed per
    row; the total equals ½ tr(ΔH_dΔᵀ) with Δ = W − Ŵ and H_d the damped Hessian), None for
    round-to-nearest. Frantar et al. 2023, Algorithm 1.
    Taught in notebooks/05_gptq.ipynb.
    """

    weight: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    perm: torch.Tensor | None
    bits: int
    group_size: int | None
    sym: bool
    losses: torch.Tensor | None

    @property
    def loss(self) -> float | None:
        """The sum of ``losses``: GPTQ's estimate of ½ tr(ΔH_dΔᵀ) (None for RTN)."""
        return None if self.losses is None else float(self.losses.sum())

    def dequantize(self) -> torch.Tensor:
        """scale · (codes − zero) for every weight, in ``weight``'s dtype (equals ``weight``).

        Computed in the scale's precision, as the quantizer computed ``weight``.
        Taught in notebooks/05_gptq.ipynb.
        """
        scale = self.scale[:, self.g_idx]
        zero = self.zero[:, self.g_idx].to(scale.dtype)
        return (scale * (self.codes.to(scale.dtype) - zero)).to(self.weight.dtype)

    def nbytes(self) -> float:
        """The bytes a GPTQ checkpoint stores for this weight (AutoGPTQ's layout).

        The codes packed at ``bits`` bits; per row and group (per row without groups) one fp16
        scale and one ``bits``-bit zero point; and ``g_idx`` (int32, one per input column) only
        where a column's group cannot be told from its position: act-order with groups refitted
        as the columns go (static groups and one group per row need no index).
        Taught in notebooks/13_capstone.ipynb.
        """
        rows, columns = self.codes.shape
        stored = rows * columns * self.bits / 8 + self.scale.numel() * (2 + self.bits / 8)
        if self.group_size is not None:
            in_order = torch.arange(columns, device=self.g_idx.device) // self.group_size
            if not torch.equal(self.g_idx, in_order):
                stored += 4 * columns
        return stored

    def bits_per_weight(self) -> float:
        """8 · :meth:`nbytes` over the number of weights. Taught in notebooks/13_capstone.ipynb."""
        return _quantized.bits_per_weight(self.nbytes(), self.codes.numel())


class HessianAccumulator:
    """The layer Hessian H = 2/N · Σ x xᵀ over the N calibration tokens seen so far.

    Feed it inputs with :meth:`add_batch`, or register :meth:`hook` as a forward pre-hook of
    the linear layer (``layer.register_forward_pre_hook(acc.hook)``). H is kept as a running mean
    (rescaled by n / (n + m) before each batch of m tokens is added, as the reference's
    ``add_batch`` does), in float32 by default. The reference counts sequences rather than
    tokens in N, which only scales H (and GPTQ's reported loss) by the sequence length; the
    quantized weights are the same. Frantar et al. 2023, §3 (H = 2XXᵀ).
    Taught in notebooks/05_gptq.ipynb.
    """

    def __init__(self, in_features: int, *, dtype: torch.dtype = torch.float32) -> None:
        in_features = check_int(in_features, "in_features", minimum=1)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        self.in_features = in_features
        self.n_tokens = 0
        self._H = torch.zeros(in_features, in_features, dtype=dtype)

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2/N · Σ x xᵀ, [in_features, in_features] (a copy)."""
        if self.n_tokens == 0:
            raise ValueError("hessian: no input was added yet (call add_batch or run the model)")
        return self._H.clone()

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        """Add the tokens of ``x`` ([..., in_features]: every leading index is a token)."""
        check_float_tensor(x, "x")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: expected a last dimension of {self.in_features} (in_features), "
                f"got shape {tuple(x.shape)}"
            )
        X = x.detach().reshape(-1, self.in_features).to(self._H)
        m = X.shape[0]
        self._H.mul_(self.n_tokens / (self.n_tokens + m))
        self.n_tokens += m
        self._H.addmm_(X.T, X, alpha=2.0 / self.n_tokens)

    def hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook: add the layer's input (its first positional argument)."""
        if not args or not isinstance(args[0], torch.Tensor):
            raise TypeError(
                f"input: expected the {type(module).__name__} to be called with its input as "
                f"the first positional argument, got {len(args)} positional arguments"
            )
        self.add_batch(args[0])


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = None,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    percdamp: float = DEFAULT_PERCDAMP,
) -> QuantizedWeight:
    """Quantize ``weight`` [out, in] with GPTQ, given the layer Hessian [in, in] of its inputs.

    Algorithm 1 of Frantar et al. 2023 with the reference's details (module docstring): dead
    inputs, damping ``percdamp`` · mean(diag H), Hinv = upper Cholesky factor of H⁻¹, lazy
    updates every ``block_size`` columns. ``group_size``: one scale and zero per row and group
    of that many consecutive columns (default: one per row), refitted on the updated weights at
    each group's first column; ``act_order``: quantize the columns by decreasing diag H (§5,
    "act-order"); ``static_groups`` (needs ``group_size``): fit every group on the original
    weights up front, so that act-order keeps groups of consecutive columns. ``sym``: symmetric
    quantizer (zero = 2^(bits−1)). Computed in float32 (float64 for a float64 weight); the
    input tensors are left untouched. Taught in notebooks/05_gptq.ipynb.
    """
    _check_weight(weight, bits, group_size)
    rows, columns = weight.shape
    _check_hessian(hessian, columns)
    sym, act_order, static_groups = (
        check_bool(sym, "sym"),
        check_bool(act_order, "act_order"),
        check_bool(static_groups, "static_groups"),
    )
    if static_groups and group_size is None:
        raise ValueError("static_groups: expected False without a group_size, got True")
    block_size = check_int(block_size, "block_size", minimum=1)
    percdamp = check_positive(percdamp, "percdamp", strict=False)

    dtype = _dtype_of(weight)
    maxq = 2**bits - 1
    with torch.no_grad():
        W = weight.detach().to(dtype, copy=True)
        H = hessian.detach().to(dtype, copy=True)
        # Per-row parameters on the original weights (the reference fits them before zeroing).
        scale, zero = _fit(W, maxq, sym)
        _drop_dead_inputs_(W, H)
        if group_size is None:
            scales, zeros = scale[:, None], zero[:, None]
        elif static_groups:  # every group fitted on the original weights, in column order
            scales, zeros = _fit_groups(W, group_size, maxq, sym)
        else:  # filled in as the columns go
            n_groups = -(-columns // group_size)
            scales = torch.empty(rows, n_groups, dtype=dtype)
            zeros = torch.empty(rows, n_groups, dtype=dtype)
        perm = None
        if act_order:  # §5: the columns with the largest inputs first
            perm = torch.argsort(H.diagonal(), descending=True)
            W, H = W[:, perm], H[perm][:, perm]
        # Column j of the (permuted) W belongs to group g_idx_q[j] of scales / zeros.
        order = perm if perm is not None else torch.arange(columns)
        if group_size is None:
            g_idx_q = torch.zeros(columns, dtype=torch.long)
        elif static_groups:
            g_idx_q = order // group_size
        else:
            g_idx_q = torch.arange(columns) // group_size

        Hinv = _damped_inverse_factor_(H, percdamp)

        with _one_thread():
            Q, codes, Err = _gptq_columns(
                W, Hinv, scales, zeros, g_idx_q, maxq, sym, group_size, static_groups, block_size
            )
        Losses = Err.square() / 2  # (w − q)² / d², halved: the reference's Losses
        if perm is not None:
            invperm = torch.argsort(perm)
            Q, codes = Q[:, invperm], codes[:, invperm]
        g_idx = torch.empty(columns, dtype=torch.long)
        g_idx[order] = g_idx_q
    return QuantizedWeight(
        weight=Q.to(weight.dtype),
        codes=codes.to(torch.uint8),
        scale=scales.contiguous(),
        zero=zeros.to(torch.uint8).contiguous(),
        g_idx=g_idx,
        perm=perm,
        bits=bits,
        group_size=group_size,
        sym=sym,
        losses=Losses.sum(dim=1),
    )


def rtn_quantize(
    weight: torch.Tensor, *, bits: int = 4, group_size: int | None = None, sym: bool = False
) -> QuantizedWeight:
    """Round-to-nearest with GPTQ's quantizer: the baseline GPTQ is compared with.

    One scale and zero per output row (or per row and group of ``group_size`` consecutive
    input columns), asymmetric min/max over [min(w, 0), max(w, 0)] with codes in
    [0, 2^bits − 1], or symmetric with ``sym``; every weight rounded on its own. This is the
    reference's ``--nearest`` (RTN) baseline, Frantar et al. 2023, §5 (and Yao et al. 2022,
    Dettmers et al. 2022 for RTN). Taught in notebooks/05_gptq.ipynb.
    """
    _check_weight(weight, bits, group_size)
    sym = check_bool(sym, "sym")
    columns = weight.shape[1]
    dtype = _dtype_of(weight)
    maxq = 2**bits - 1
    with torch.no_grad():
        W = weight.detach().to(dtype)
        g = group_size or columns
        scale, zero = _fit_groups(W, g, maxq, sym)
        g_idx = torch.arange(columns) // g
        codes = _codes(W, scale[:, g_idx], zero[:, g_idx], maxq)
        Q = scale[:, g_idx] * (codes - zero[:, g_idx])
    return QuantizedWeight(
        weight=Q.to(weight.dtype),
        codes=codes.to(torch.uint8),
        scale=scale,
        zero=zero.to(torch.uint8),
        g_idx=g_idx,
        perm=None,
        bits=bits,
        group_size=group_size,
        sym=sym,
        losses=None,
    )


def layer_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer's output error on its calibration inputs: ½ tr(ΔHΔᵀ) with Δ = W − Ŵ.

    With H = 2/N · XXᵀ this is ‖WX − ŴX‖² / N, the squared output error per token summed over
    the outputs: GPTQ's objective (Frantar et al. 2023, eq. 1). Computed in float64.
    Taught in notebooks/05_gptq.ipynb.
    """
    check_float_tensor(weight, "weight", ndim=2)
    check_float_tensor(quantized, "quantized", ndim=2)
    if quantized.shape != weight.shape:
        raise ValueError(
            f"quantized: expected weight's shape {tuple(weight.shape)}, "
            f"got {tuple(quantized.shape)}"
        )
    check_float_tensor(hessian, "hessian", ndim=2)
    columns = weight.shape[1]
    if tuple(hessian.shape) != (columns, columns):
        raise ValueError(
            f"hessian: expected shape ({columns}, {columns}), got {tuple(hessian.shape)}"
        )
    with torch.no_grad():
        delta = weight.detach().double() - quantized.detach().double()
        return float(((delta @ hessian.detach().double()) * delta).sum() / 2)


# --------------------------------------------------------------------------------------------
# Algorithm 1 one column at a time: the stepping API (for reading, the widget, the exercises)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class ColumnStep:
    """What :func:`obs_step_` did to one column q of W, every row at once ([rows] each, but
    ``update``).

    ``codes``: the column's codes, clamp(round(w / scale) + zero, 0, 2^bits − 1) (floats);
    ``quantized``: ŵ = scale · (code − zero), the values now in W[:, q]; ``error``: the scaled
    error (w − ŵ) / Hinv[q, q] (with the Cholesky factor: (w − ŵ) / √[H_F⁻¹]_qq, the
    reference's ``err1``; its square halved is the reference's ``Losses``); ``update``
    [rows, in − q − 1]: what was subtracted from the columns after q, error ⊗ Hinv[q, q + 1:]
    (eq. 3 / line 8 of Algorithm 1). Frantar et al. 2023, Algorithm 1.
    Taught in notebooks/05_gptq.ipynb.
    """

    codes: torch.Tensor
    quantized: torch.Tensor
    error: torch.Tensor
    update: torch.Tensor


def fit_quantizer(
    x: torch.Tensor, bits: int, *, sym: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's quantizer grid for each row of ``x`` [rows, k]: ``(scale, zero)``, each [rows].

    The reference's min/max quantizer (IST-DASLab/gptq ``quant.py``, ``find_params``): the range
    is [min(x, 0), max(x, 0)], so that 0 is on the grid; scale = range / (2^bits − 1), zero =
    round(−min / scale) (an integer kept as a float). ``sym``: the range [−m, m] with
    m = max|x| (for rows with a negative value, as the reference does) and zero = 2^(bits−1).
    An all-zero row gets the range [−1, 1]. Pass W for one grid per row, W[:, g0 : g0 + g] for
    one group. Frantar et al. 2023, §5 (the quantizer of every experiment).
    Taught in notebooks/05_gptq.ipynb.
    """
    check_float_tensor(x, "x", ndim=2)
    bits = check_bits(bits, low=2, high=8)
    sym = check_bool(sym, "sym")
    with torch.no_grad():
        return _fit(x.detach(), 2**bits - 1, sym)


def quantize_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """The codes clamp(round(w / scale) + zero, 0, 2^bits − 1), as floats, ``w``'s shape.

    ``scale`` and ``zero`` (from :func:`fit_quantizer`; ``zero`` may be an integer tensor)
    broadcast to ``w``: [rows] for one column of W, [rows, 1] for a block of columns. Rounding
    is ``torch.round`` (half to even), as the reference's ``quantize``. The dequantized value is
    scale · (codes − zero). Frantar et al. 2023, Algorithm 1 line 5 (quant(·)).
    Taught in notebooks/05_gptq.ipynb.
    """
    check_float_tensor(w, "w", allow_empty=True)
    check_float_tensor(scale, "scale")
    zero = _float_zero(zero, w.dtype)
    bits = check_bits(bits, low=2, high=8)
    for name, value in (("scale", scale), ("zero", zero)):
        try:
            shape = torch.broadcast_shapes(w.shape, value.shape)
        except RuntimeError:
            shape = None
        if shape != w.shape:
            raise ValueError(
                f"{name}: expected a shape that broadcasts to w's {tuple(w.shape)}, "
                f"got {tuple(value.shape)}"
            )
    with torch.no_grad():
        return _codes(w.detach(), scale, zero, 2**bits - 1)


def prepare_hessian(
    weight: torch.Tensor, hessian: torch.Tensor, *, percdamp: float = DEFAULT_PERCDAMP
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, Hinv)``: what Algorithm 1 starts from, as :func:`gptq_quantize` prepares it.

    Copies of ``weight`` [out, in] and ``hessian`` [in, in] in float32 (float64 for a float64
    weight); inputs that never fire (H_ii = 0) get H_ii = 1 and a zero weight column; H is
    damped by ``percdamp`` · mean(diag H) (§4 step 3); ``Hinv`` is the upper Cholesky factor of
    H⁻¹, whose row q holds (H_F⁻¹)_q,: / √[H_F⁻¹]_qq for F = the columns from q on (eq. 5,
    Algorithm 1 line 2), so no column ever has to be removed from H⁻¹ (eq. 3). Fit the grid
    with :func:`fit_quantizer` on the original weight (the reference fits before zeroing dead
    columns), then call :func:`obs_step_` for q = 0, 1, …. The inputs are left untouched.
    Taught in notebooks/05_gptq.ipynb.
    """
    check_float_tensor(weight, "weight", ndim=2)
    _check_hessian(hessian, weight.shape[1])
    percdamp = check_positive(percdamp, "percdamp", strict=False)
    dtype = _dtype_of(weight)
    with torch.no_grad():
        W = weight.detach().to(dtype, copy=True)
        H = hessian.detach().to(dtype, copy=True)
        _drop_dead_inputs_(W, H)
        return W, _damped_inverse_factor_(H, percdamp)


def obs_step_(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    column: int,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
) -> ColumnStep:
    """One step of Algorithm 1, in place on ``W`` [rows, in]: quantize column ``column`` (q)
    of every row, then move the columns after it to cancel what that rounding did to the output.

    ŵ = scale · (code − zero) with the codes of :func:`quantize_codes` (``scale``, ``zero``:
    [rows], the grid of each row or of the column's group); err = (w − ŵ) / Hinv[q, q];
    W[:, q + 1:] −= err ⊗ Hinv[q, q + 1:] (the optimal brain surgeon update, eq. 2–3, read
    from the Cholesky factor as in lines 6–8 of Algorithm 1); W[:, q] = ŵ. ``Hinv``: the
    factor of :func:`prepare_hessian` (its row q is H_F⁻¹'s row for the columns still to do);
    for q = 0 the plain inverse H⁻¹ gives the same update. Columns before q are not read: call
    it for q = 0, 1, … in turn (columns permuted first for act-order). Returns a
    :class:`ColumnStep`. :func:`gptq_quantize` computes the same, with lazy batch updates.
    Frantar et al. 2023, Algorithm 1. Taught in notebooks/05_gptq.ipynb.
    """
    check_float_tensor(W, "W", ndim=2)
    rows, columns = W.shape
    check_float_tensor(Hinv, "Hinv", ndim=2)
    if tuple(Hinv.shape) != (columns, columns):
        raise ValueError(
            f"Hinv: expected shape ({columns}, {columns}) to match W's {columns} columns, "
            f"got {tuple(Hinv.shape)}"
        )
    column = check_int(column, "column", minimum=0)
    if column >= columns:
        raise ValueError(f"column: expected a column of W, 0 to {columns - 1}, got {column}")
    check_float_tensor(scale, "scale")
    zero = _float_zero(zero, W.dtype)
    for name, value in (("scale", scale), ("zero", zero)):
        if value.numel() != rows:
            raise ValueError(
                f"{name}: expected one value per row of W ({rows}), got shape {tuple(value.shape)}"
            )
    scale, zero = scale.reshape(rows), zero.reshape(rows)
    bits = check_bits(bits, low=2, high=8)
    with torch.no_grad():
        w = W[:, column]
        codes = _codes(w, scale, zero, 2**bits - 1)
        quantized = (codes - zero).mul_(scale)  # ŵ = scale · (code − zero)
        error = (w - quantized) / Hinv[column, column]  # (w − ŵ) / [H_F⁻¹]_qq, Cholesky form
        update = torch.outer(error, Hinv[column, column + 1 :])  # line 8: the columns after q
        W[:, column + 1 :] -= update
        W[:, column] = quantized
    return ColumnStep(codes=codes, quantized=quantized, error=error, update=update)


@dataclass(frozen=True)
class LayerReport:
    """One linear layer of :func:`quantize_model_`: its output error (:func:`layer_error`,
    on the calibration inputs it received) with round-to-nearest and with GPTQ (both ``None``
    when the run was told ``layer_errors=False``), GPTQ's own
    ``loss`` (damped Hessian), the seconds of the :func:`gptq_quantize` call that
    quantized it (layers fed the same input are quantized together, in one call), and
    ``stored_bytes``: :meth:`QuantizedWeight.nbytes` of the layer's own GPTQ result.
    Taught in notebooks/05_gptq.ipynb."""

    name: str
    shape: tuple[int, int]
    rtn_error: float | None
    gptq_error: float | None
    loss: float
    seconds: float
    stored_bytes: float

    @property
    def ratio(self) -> float:
        """GPTQ's error over RTN's (below 1: GPTQ did better; NaN without the errors)."""
        if self.rtn_error is None or self.gptq_error is None or not self.rtn_error:
            return math.nan
        return self.gptq_error / self.rtn_error

    def nbytes(self) -> float:
        """The bytes the layer's quantized weight stores (codes packed, scales, zeros, g_idx)."""
        return self.stored_bytes

    def bits_per_weight(self) -> float:
        """8 · :meth:`nbytes` over the layer's out · in weights."""
        return _quantized.bits_per_weight(self.stored_bytes, self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class GPTQReport:
    """What :func:`quantize_model_` did: one :class:`LayerReport` per linear layer in model
    order, the calibration size, and where the time went (``seconds`` in all, of which
    ``gptq_seconds`` in :func:`gptq_quantize` and the rest mostly in forward passes).
    :meth:`nbytes` and :meth:`bits_per_weight` count the quantized layers' storage.
    Taught in notebooks/05_gptq.ipynb."""

    layers: list[LayerReport]
    n_windows: int
    n_tokens: int
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    gptq_seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTQReport:
        """The report ``dataclasses.asdict`` gave ``data`` (read back from JSON)."""
        layers = [LayerReport(**{**row, "shape": tuple(row["shape"])}) for row in data["layers"]]
        return cls(**{**data, "layers": layers, "settings": dict(data["settings"])})

    def nbytes(self) -> float:
        """The bytes of every quantized layer: the sum of each :class:`QuantizedWeight`'s
        ``nbytes()`` (codes packed, fp16 scales, zero points, g_idx where act-order needs it).
        Embeddings, norms and the LM head, which GPTQ keeps, are not counted.
        Taught in notebooks/13_capstone.ipynb."""
        return sum(row.stored_bytes for row in self.layers)

    def bits_per_weight(self) -> float:
        """8 · :meth:`nbytes` over the weights of the quantized layers."""
        n_weights = sum(row.shape[0] * row.shape[1] for row in self.layers)
        return _quantized.bits_per_weight(self.nbytes(), n_weights)

    def table(self, *, every: int = 1) -> str:
        """A text table: layer, shape, RTN error, GPTQ error, ratio (every ``every``-th row).

        Needs the layer errors: a run with ``layer_errors=False`` has none to show."""
        every = check_int(every, "every", minimum=1)
        if any(row.rtn_error is None for row in self.layers):
            raise ValueError(
                "report: this run was made with layer_errors=False, so it has no layer errors "
                "to tabulate; quantize with layer_errors=True (the default)"
            )
        lines = [f"{'layer':<34}{'in → out':>12}{'RTN error':>12}{'GPTQ error':>12}{'ratio':>7}"]
        for row in self.layers[::every]:
            shape = f"{row.shape[1]} → {row.shape[0]}"
            lines.append(
                f"{row.name:<34}{shape:>12}{row.rtn_error:>12.3g}{row.gptq_error:>12.3g}"
                f"{row.ratio:>7.2f}"
            )
        return "\n".join(lines)


def quantize_model(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    tokenizer: Any = None,
    *,
    cache: bool = False,
    **options: Any,
) -> tuple[nn.Module, GPTQReport]:
    """Return ``(a GPTQ-quantized copy of model, a GPTQReport)``; ``model`` is left untouched.

    :func:`quantize_model_` on ``copy.deepcopy(model)``, with the same arguments.
    Frantar et al. 2023, §4. Taught in notebooks/05_gptq.ipynb.

    ``options``: the keyword arguments of :func:`quantize_model_` (bits, group_size, …).
    With ``cache=True`` a result computed before on this machine, from the same model,
    calibration and options, is read back instead (:func:`qlearn.reuse.quantized_copy`): the
    same tensors and the same report, ``seconds`` included (the time it took then).
    """
    check_module(model)
    require_in_memory(model, "quantize it in place, layer by layer, with gptq.quantize_model_")
    cache = check_bool(cache, "cache")
    if not cache:
        return quantize_model_(copy.deepcopy(model), calibration_texts, tokenizer, **options)
    return reuse.quantized_copy(
        "gptq", quantize_model_, model, calibration_texts, tokenizer, options, GPTQReport.from_dict
    )


def quantize_model_(
    model: nn.Module,
    calibration_texts: str | torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    tokenizer: Any = None,
    *,
    bits: int = 4,
    group_size: int | None = None,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    percdamp: float = DEFAULT_PERCDAMP,
    batch_size: int = 8,
    layer_errors: bool = True,
    progress: bool | None = None,
) -> tuple[nn.Module, GPTQReport]:
    """Quantize ``model``'s decoder linear layers with GPTQ, in place; return ``(model, report)``.

    ``calibration_texts``: a text (``nsamples`` random windows of ``seqlen`` tokens are drawn
    from it with ``qlearn.data.calibration_windows(..., seed=seed)``, as the GPTQ authors'
    loader does), or anything ``qlearn.data.token_batches`` takes (a [n, seqlen] token tensor,
    a list of token tensors, a list of strings with ``tokenizer``); windows of equal length are
    run ``batch_size`` at a time. The sequential procedure of the reference (Frantar et al.
    2023, §4 and ``llama_sequential``): catch the inputs of the first decoder layer (and the
    keyword arguments the model passes it: attention mask, position embeddings); then for each
    decoder layer, one forward pass with hooks accumulates the Hessian of every linear layer in
    it, every linear is quantized with :func:`gptq_quantize` (all of the layer from the same
    pass, the reference's default rather than its ``--true-sequential``; layers fed the same
    input, such as q, k and v, share one Hessian and are quantized in one call on their stacked
    rows, which gives each exactly the weights it would get alone), and a second pass through
    the quantized layer gives the next layer's inputs. The hooks and the forward passes run
    under ``torch.no_grad``. Layers are those of
    ``qlearn.models.linear_layers``; embeddings, norms and the LM head are kept. The report's
    ``nbytes()`` counts what the quantized layers store. ``layer_errors``: also round every
    layer to nearest and give both output errors on the calibration inputs (the report's
    ``rtn_error`` / ``gptq_error``, :meth:`GPTQReport.table`); False skips that comparison,
    about 15 % of a run on the course's model, and changes nothing in the quantized weights.
    Arguments are checked before any work; an error in a forward pass leaves the model partly
    quantized. Taught in notebooks/05_gptq.ipynb.
    """
    started = time.perf_counter()
    check_module(model)
    bits = check_bits(bits, low=2, high=8)
    for name, layer in linear_layers(model):  # every layer checked before any work
        if group_size is not None:
            check_group_size(
                group_size,
                weight_of(layer).shape[1],
                f"group_size (layer {name})",
                must_divide=False,
            )
    for name, value in (
        ("sym", sym),
        ("act_order", act_order),
        ("static_groups", static_groups),
        ("layer_errors", layer_errors),
    ):
        check_bool(value, name)
    if static_groups and group_size is None:
        raise ValueError("static_groups: expected False without a group_size, got True")
    check_int(block_size, "block_size", minimum=1)
    check_positive(percdamp, "percdamp", strict=False)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    batches = calibration_batches(calibration_texts, tokenizer, nsamples, seqlen, seed, batch_size)

    quantized = model
    was_training = quantized.training
    quantized.eval()
    prefix, blocks = decoder_layers(quantized)
    rows: list[LayerReport] = []
    gptq_seconds = 0.0
    try:
        with torch.no_grad():
            inputs, extra_args = first_layer_inputs(quantized, blocks[0], batches)
            for index, block in enumerate(
                progress_bar(blocks, desc=f"GPTQ {bits}-bit", total=len(blocks), progress=progress)
            ):
                with onloaded(block):  # an offloaded layer: its weights, for this layer only
                    linears = dict(linears_of(block))
                    found: dict[str, LayerReport] = {}
                    # Layers fed the same input (q, k, v; gate, up) share H: GPTQ runs once on
                    # their stacked rows, which gives each the same weights as alone (rows are
                    # independent) with a third of the column steps.
                    for names, H in _block_hessians(
                        block, list(linears.items()), inputs, extra_args
                    ):
                        Ws = [weight_of(linears[name]).detach() for name in names]
                        tick = time.perf_counter()
                        result = gptq_quantize(
                            torch.cat(Ws) if len(Ws) > 1 else Ws[0],
                            H,
                            bits=bits,
                            group_size=group_size,
                            sym=sym,
                            act_order=act_order,
                            static_groups=static_groups,
                            block_size=block_size,
                            percdamp=percdamp,
                        )
                        seconds = time.perf_counter() - tick
                        gptq_seconds += seconds
                        start = 0
                        for name, W in zip(names, Ws, strict=True):
                            rows_of_W = slice(start, start + W.shape[0])
                            start += W.shape[0]
                            own = _rows(result, rows_of_W)  # this layer's part of the result
                            Q = own.weight
                            rtn_error = gptq_error = None
                            if layer_errors:
                                rtn = rtn_quantize(W, bits=bits, group_size=group_size, sym=sym)
                                rtn_error, gptq_error = _errors(W, (rtn.weight, Q), H)
                            found[name] = LayerReport(
                                name=f"{prefix}.{index}.{name}",
                                shape=(W.shape[0], W.shape[1]),
                                rtn_error=rtn_error,
                                gptq_error=gptq_error,
                                loss=float(own.losses.sum()),
                                seconds=seconds,
                                stored_bytes=own.nbytes(),
                            )
                            set_weight_(linears[name], Q)
                    rows.extend(found[name] for name in linears)  # in model order
                    inputs = [
                        main_output(block(x, *args, **kwargs))
                        for x, (args, kwargs) in zip(inputs, extra_args, strict=True)
                    ]
    finally:
        quantized.train(was_training)
    n_tokens = sum(batch.numel() for batch in batches)
    report = GPTQReport(
        layers=rows,
        n_windows=sum(batch.shape[0] for batch in batches),
        n_tokens=n_tokens,
        settings={
            "bits": bits,
            "group_size": group_size,
            "sym": sym,
            "act_order": act_order,
            "static_groups": static_groups,
            "block_size": block_size,
            "percdamp": percdamp,
            "layer_errors": layer_errors,
        },
        seconds=time.perf_counter() - started,
        gptq_seconds=gptq_seconds,
    )
    return quantized, report


def rtn_quantize_model(
    model: nn.Module, *, bits: int = 4, group_size: int | None = None, sym: bool = False
) -> nn.Module:
    """Return a copy of ``model`` whose decoder linear weights are :func:`rtn_quantize`-d.

    :func:`rtn_quantize_model_` on ``copy.deepcopy(model)``; ``model`` is left untouched.
    Frantar et al. 2023, §5. Taught in notebooks/05_gptq.ipynb.
    """
    check_module(model)
    require_in_memory(model, "round it in place, layer by layer, with gptq.rtn_quantize_model_")
    return rtn_quantize_model_(copy.deepcopy(model), bits=bits, group_size=group_size, sym=sym)


def rtn_quantize_model_(
    model: nn.Module, *, bits: int = 4, group_size: int | None = None, sym: bool = False
) -> nn.Module:
    """Round every decoder linear weight of ``model`` to nearest with GPTQ's quantizer
    (:func:`rtn_quantize`), in place; return ``model``.

    The RTN rows of the chapter's perplexity table (the reference's ``--nearest``). Layers are
    those of ``qlearn.models.linear_layers``; every one is checked before any is changed. A
    model that accelerate offloads is rounded one decoder layer in memory at a time
    (``qlearn.offload.linear_layers_onloaded``). Frantar et al. 2023, §5. Taught in
    notebooks/05_gptq.ipynb.
    """
    check_module(model)
    bits = check_bits(bits, low=2, high=8)
    check_bool(sym, "sym")
    layers = list(linear_layers(model))
    for name, layer in layers:
        if group_size is not None:
            check_group_size(
                group_size, weight_of(layer).shape[1], f"group_size ({name})", must_divide=False
            )
    for _, layer in linear_layers_onloaded(model):  # an offloaded model: one layer at a time
        weight = weight_of(layer).detach()
        set_weight_(layer, rtn_quantize(weight, bits=bits, group_size=group_size, sym=sym).weight)
    return model


# --------------------------------------------------------------------------------------------
# Helpers: the algorithm
# --------------------------------------------------------------------------------------------


def _fit(x: torch.Tensor, maxq: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of each row of ``x`` [rows, k]: the reference's min/max quantizer.

    The range is [min(x, 0), max(x, 0)]; symmetric makes it [−m, m] with m = max|x| (only for
    rows that have a negative value, as the reference does) and puts the zero in the middle;
    an all-zero row gets the range [−1, 1]. Zeros stay floats (integers in [0, maxq]).
    """
    xmin = x.amin(dim=1).clamp(max=0)
    xmax = x.amax(dim=1).clamp(min=0)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def _fit_groups(
    W: torch.Tensor, group_size: int, maxq: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [rows, n_groups] of every group of ``group_size`` consecutive columns
    (the last group is shorter when ``group_size`` does not divide the columns)."""
    rows, columns = W.shape
    full = columns - columns % group_size
    parts = []
    if full:
        Wg = W[:, :full].reshape(rows, full // group_size, group_size)
        s, z = _fit(Wg.reshape(-1, group_size), maxq, sym)
        parts.append((s.reshape(rows, -1), z.reshape(rows, -1)))
    if full < columns:
        s, z = _fit(W[:, full:], maxq, sym)
        parts.append((s[:, None], z[:, None]))
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """clamp(round(w / scale) + zero, 0, maxq), as floats (the reference's ``quantize``)."""
    return torch.round(w / scale).add_(zero).clamp_(0, maxq)


def _drop_dead_inputs_(W: torch.Tensor, H: torch.Tensor) -> None:
    """Inputs that are always 0 (H_ii = 0) carry no information: set H_ii = 1, which keeps H
    invertible, and zero their weight column (the reference's ``dead``). In place."""
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0


def _damped_inverse_factor_(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Add ``percdamp`` · mean(diag H) to diag H (in place), then return the upper Cholesky
    factor of its inverse (§4 step 3)."""
    damp = percdamp * torch.diag(H).mean()  # a contiguous copy: the reference's sum order
    H.diagonal().add_(damp)
    return _upper_cholesky_of_inverse(H)


def _upper_cholesky_of_inverse(H: torch.Tensor) -> torch.Tensor:
    """U with UᵀU = H⁻¹ (upper triangular): its row q holds [H_F⁻¹]_q,: / sqrt([H_F⁻¹]_qq)
    for F = the columns from q on (§4 step 3, eq. 5)."""
    try:
        L = torch.linalg.cholesky(H)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            "hessian: expected a positive semi-definite matrix (H = 2XXᵀ/N), but it is not "
            "positive definite even after damping; check it, or raise percdamp"
        ) from error


def _gptq_columns(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
    maxq: int,
    sym: bool,
    group_size: int | None,
    static_groups: bool,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 on W (in quantization order): return (Q, codes, Err), all [rows, columns].

    Works on transposed copies, so that a column of W is a contiguous row in memory; every
    operation covers all rows at once and the only Python loop runs over columns. Fills
    ``scales`` / ``zeros`` in place when groups are refitted (not static).
    """
    columns = W.shape[1]
    groups = g_idx.tolist()
    WT = W.T.contiguous()  # WT[j] is column j of W
    QT = torch.empty_like(WT)
    codesT = torch.empty_like(WT)
    ErrT = torch.empty_like(WT)
    scale, zero = scales[:, 0], zeros[:, 0]
    refit = group_size is not None and not static_groups
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = WT[i1:i2].clone()  # this block's columns, updated in place as they go
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            j = i1 + i
            if refit and j % group_size == 0:
                # The reference refits on W as updated by the blocks before this one (the
                # in-block updates of W1 are not in W yet when a group starts inside a block).
                scale, zero = _fit(WT[j : j + group_size].T, maxq, sym)
                scales[:, j // group_size], zeros[:, j // group_size] = scale, zero
            elif not refit and group_size is not None:
                scale, zero = scales[:, groups[j]], zeros[:, groups[j]]
            w, q, err1 = W1[i], QT[j], ErrT[j]  # views: the results land in place
            torch.div(w, scale, out=codesT[j]).round_().add_(zero).clamp_(0, maxq)
            torch.sub(codesT[j], zero, out=q).mul_(scale)  # q = scale · (code − zero)
            torch.sub(w, q, out=err1).div_(diag[i])  # (w − q) / [H_F⁻¹]_qq, Cholesky form
            # Line 8 of Algorithm 1 within the block: W[:, i:] −= err ⊗ Hinv[i, i:]
            W1[i:] -= torch.outer(Hinv1[i, i:], err1)
        # Line 10: the lazy update of every column after the block, one matrix product.
        WT[i2:].addmm_(Hinv[i1:i2, i2:].T, ErrT[i1:i2], alpha=-1)
    return QT.T, codesT.T, ErrT.T


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the column loop on one intra-op thread, then restore the thread count.

    Its operations touch at most block_size × rows values: too small to share between
    threads, and on a busy CPU the waits between them made the loop up to 50× slower
    (docs/design.md, "Anchor figures"; benchmarks/bench_gptq.py).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Helpers: the sequential procedure over a model
# --------------------------------------------------------------------------------------------


def _block_hessians(
    block: nn.Module,
    linears: list[tuple[str, nn.Module]],
    inputs: list[torch.Tensor],
    extra_args: list[tuple[tuple[Any, ...], dict[str, Any]]],
) -> list[tuple[list[str], torch.Tensor]]:
    """Run the block on every batch with pre-hooks on its linear layers; return their H, as
    ``[(names of the layers fed the same input, their H), ...]`` in the order of the calls.

    Layers fed the very same tensor (q, k and v; gate and up) share one accumulator, so each
    Hessian is computed once per distinct input (the reference computes equal copies). The
    pass stops as soon as every linear layer has received its input: the rest of the block
    (the last layer's product, the residual) is not needed here.
    """
    names = [name for name, _ in linears]
    seen: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}  # layer name → the layer whose accumulator it shares
    accumulators: dict[str, HessianAccumulator] = {}

    def catch(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if name not in owner:  # first batch: share with an earlier layer fed the same x
                leader = next((n for n, seen_x in seen.items() if seen_x is x), name)
                owner[name] = leader
                if leader == name:
                    accumulators[name] = HessianAccumulator(x.shape[-1])
            if owner[name] == name:
                accumulators[name].add_batch(x)
            elif seen.get(owner[name]) is not x:
                raise RuntimeError(f"{name}: its input changed from sharing {owner[name]}'s")
            seen[name] = x
            if len(seen) == len(names):
                raise StopForwardError

        return hook

    handles = [layer.register_forward_pre_hook(catch(name)) for name, layer in linears]
    try:
        for x, (args, kwargs) in zip(inputs, extra_args, strict=True):
            seen.clear()
            with contextlib.suppress(StopForwardError):
                block(x, *args, **kwargs)
            missing = [name for name in names if name not in seen]
            if missing:
                raise ValueError(f"model: the linear layers {missing} of a block were not called")
        seen.clear()
    finally:
        for handle in handles:
            handle.remove()
    return [
        ([name for name in names if owner[name] == leader], accumulator.hessian)
        for leader, accumulator in accumulators.items()
    ]


def _errors(W: torch.Tensor, quantized: tuple[torch.Tensor, ...], H: torch.Tensor) -> list[float]:
    """:func:`layer_error` of several quantized versions of W in one float32 product: for the
    report, three significant digits are plenty and float64 would double its cost."""
    deltas = torch.stack([W.float() - Q.float() for Q in quantized])  # [k, out, in]
    return [float(e) / 2 for e in ((deltas @ H.float()) * deltas).sum(dim=(1, 2))]


def _rows(result: QuantizedWeight, rows: slice) -> QuantizedWeight:
    """The rows ``rows`` of a result (views): one layer's part of a stacked GPTQ call."""
    return dataclasses.replace(
        result,
        weight=result.weight[rows],
        codes=result.codes[rows],
        scale=result.scale[rows],
        zero=result.zero[rows],
        losses=None if result.losses is None else result.losses[rows],
    )


def _check_weight(weight: Any, bits: Any, group_size: Any) -> None:
    check_float_tensor(weight, "weight", ndim=2)
    check_bits(bits, low=2, high=8)
    if group_size is not None:  # need not divide: 576 inputs in groups of 128 are 4 × 128 + 64
        check_group_size(group_size, weight.shape[1], must_divide=False)


def _check_hessian(hessian: Any, columns: int) -> None:
    """A float [columns, columns] matrix (positive definiteness is found by the Cholesky)."""
    check_float_tensor(hessian, "hessian", ndim=2)
    if hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"hessian: expected a square matrix, got shape {tuple(hessian.shape)}")
    if hessian.shape[0] != columns:
        raise ValueError(
            f"hessian: expected shape ({columns}, {columns}) to match weight's {columns} input "
            f"columns, got {tuple(hessian.shape)}"
        )


def _float_zero(zero: Any, dtype: torch.dtype) -> torch.Tensor:
    """A zero point as floats: float tensors as they are, integer ones (uint8) converted."""
    if isinstance(zero, torch.Tensor) and not zero.is_floating_point():
        return check_int_tensor(zero, "zero").to(dtype)
    check_float_tensor(zero, "zero")
    return zero


def _dtype_of(weight: torch.Tensor) -> torch.dtype:
    """GPTQ computes in float32, or in float64 for a float64 weight."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32
