"""Absmax and zero-point quantization, per tensor, per channel and per group.

Every quantizer here is the affine map of Jacob et al., "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", 2018, eq. 1: a real value r is stored
as an integer code q with r = S (q − Z), where S (``scale``, the step between two codes) and Z
(``zero_point``) are chosen per block of values. Two ways to choose them:

- **absmax** (symmetric; Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for
  Transformers at Scale", 2022, §2): S = max|x| / (2^(b−1) − 1), Z = 0, codes in
  [−(2^(b−1) − 1), 2^(b−1) − 1] (int8: [−127, 127]);
- **zero-point** (asymmetric; Jacob et al. eq. 1–2, Dettmers et al. §2): the range
  [min(x, 0), max(x, 0)] is spread over all 2^b codes [−2^(b−1), 2^(b−1) − 1], and Z is the
  integer code that stands for the real 0, so zero is stored exactly.

Granularity (Nagel et al., "A White Paper on Neural Network Quantization", 2021, §2.2–2.3): one
(S, Z) for the whole tensor, one per index along an ``axis`` (``axis=0`` on a weight
[out, in] is per output channel), or one per ``group_size`` consecutive values along the last
dimension. Codes are q = clamp(round(r / S) + Z), with ``torch.round`` (half to even), always
computed in float32.

Taught in notebooks/02_absmax_zeropoint.ipynb (granularity again in notebooks/03).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from qlearn._checks import (
    check_axis,
    check_bits,
    check_choice,
    check_float_tensor,
    check_group_size,
    check_int,
    check_module,
    check_real,
)
from qlearn._layers import set_weight_, weight_of

__all__ = [
    "ABSMAX",
    "MAX_BITS",
    "METHODS",
    "MIN_SCALE",
    "ZEROPOINT",
    "QuantizedTensor",
    "absmax_quantize",
    "code_range",
    "fake_quantize",
    "quantization_error",
    "quantize",
    "quantize_in_range",
    "quantize_model",
    "quantize_model_",
    "zeropoint_quantize",
]

ABSMAX: Final = "absmax"
"""Symmetric quantization: Z = 0, S = max|x| / (2^(b−1) − 1)."""
ZEROPOINT: Final = "zeropoint"
"""Asymmetric quantization: S = (max − min) / (2^b − 1), Z = the code of the real 0."""
METHODS: Final = (ABSMAX, ZEROPOINT)

MAX_BITS: Final = 16
"""The widest codes, in bits, of the affine quantizers (and of ``calibration``, ``qat``)."""
MIN_SCALE: Final = torch.finfo(torch.float32).smallest_normal
"""The floor on every step S (float32's smallest normal, 1.2e-38, as torchao's ``eps``)."""


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class QuantizedTensor:
    """Integer codes and what turns them back into reals: r = scale · (codes − zero_point).

    ``codes`` has the input's shape (int8 for ``bits`` ≤ 8, int16 above); ``scale`` (float32) and
    ``zero_point`` (the codes' dtype, all 0 for absmax) broadcast against the codes, or against
    the codes viewed as [..., n_groups, group_size] when ``group_size`` is set. ``axis`` is stored
    non-negative; ``dtype`` is the input's; ``method`` is :data:`ABSMAX` or :data:`ZEROPOINT`.
    Jacob et al. 2018, eq. 1. Taught in notebooks/02_absmax_zeropoint.ipynb.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    axis: int | None
    group_size: int | None
    shape: torch.Size
    dtype: torch.dtype
    method: str

    @property
    def qmin(self) -> int:
        """Smallest code: −(2^(b−1) − 1) for absmax (symmetric), −2^(b−1) for zero-point."""
        return code_range(self.method, self.bits)[0]

    @property
    def qmax(self) -> int:
        """Largest code: 2^(b−1) − 1 for both methods (127 at 8 bits)."""
        return code_range(self.method, self.bits)[1]

    def dequantize(self) -> torch.Tensor:
        """Return scale · (codes − zero_point) in the input's dtype (Jacob et al. 2018, eq. 1).

        Computed in float32 (the subtraction is exact there), then cast. Taught in
        notebooks/02_absmax_zeropoint.ipynb.
        """
        codes = _grouped(self.codes, self.group_size).float()
        values = (codes - self.zero_point.float()) * self.scale
        return values.reshape(self.shape).to(self.dtype)

    def nbytes(self, scale_bits: int = 16) -> float:
        """Storage in bytes: codes at ``bits`` each, one scale per block at ``scale_bits``
        (16: stored as fp16, 32: as fp32) and, for zero-point, one zero point at ``bits`` each.

        The scales (and zero points) are the overhead that finer granularity pays: Nagel et al.
        2021, §2.3. Taught in notebooks/03 (granularity).
        """
        scale_bits = check_bits(scale_bits, low=1, high=64, name="scale_bits")
        n_blocks = self.scale.numel()
        zero_point_bits = self.bits if self.method == ZEROPOINT else 0
        return (self.codes.numel() * self.bits + n_blocks * (scale_bits + zero_point_bits)) / 8

    def bits_per_weight(self, scale_bits: int = 16) -> float:
        """``nbytes(scale_bits)`` per stored value, in bits (8.125: int8 absmax, groups of 128)."""
        return self.nbytes(scale_bits) * 8 / self.codes.numel()


def absmax_quantize(
    x: torch.Tensor, bits: int = 8, *, axis: int | None = None, group_size: int | None = None
) -> QuantizedTensor:
    """Symmetric (absmax) quantization: S = max|x| / (2^(b−1) − 1), codes = round(x / S).

    Codes lie in [−(2^(b−1) − 1), 2^(b−1) − 1]; the largest |x| of each block maps to ±qmax.
    With max|x| = 3.2 at 8 bits, 0.1 → code 4 → 0.1008. Dettmers et al. 2022 (LLM.int8()), §2;
    granularity per Nagel et al. 2021, §2. Taught in notebooks/02_absmax_zeropoint.ipynb.
    """
    return _quantize(x, ABSMAX, bits, axis, group_size)


def zeropoint_quantize(
    x: torch.Tensor, bits: int = 8, *, axis: int | None = None, group_size: int | None = None
) -> QuantizedTensor:
    """Asymmetric (zero-point) quantization over the range [min(x, 0), max(x, 0)].

    S = (max − min) / (2^b − 1), Z = qmin − round(min / S) (clamped to [qmin, qmax]),
    codes = clamp(round(x / S) + Z, qmin, qmax) with [qmin, qmax] = [−2^(b−1), 2^(b−1) − 1].
    The range is stretched to include 0, as PyTorch's observers and torchao do, so that 0 is a
    code (Z) and stays exactly 0. With max 3.2, min −3.0 at 8 bits: 1/S = 255 / 6.2 = 41.13,
    Z = −5, 0.1 → −1. Jacob et al. 2018, eq. 1–2; Dettmers et al. 2022, §2; granularity per
    Nagel et al. 2021, §2. Taught in notebooks/02_absmax_zeropoint.ipynb.
    """
    return _quantize(x, ZEROPOINT, bits, axis, group_size)


def quantize(
    x: torch.Tensor,
    method: str,
    *,
    bits: int = 8,
    axis: int | None = None,
    group_size: int | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` with ``method`` (:data:`ABSMAX` or :data:`ZEROPOINT`).

    Dispatches to :func:`absmax_quantize` (Dettmers et al. 2022, §2) or
    :func:`zeropoint_quantize` (Jacob et al. 2018, eq. 1–2). Taught in
    notebooks/02_absmax_zeropoint.ipynb.
    """
    check_choice(method, "method", METHODS)
    return _quantize(x, method, bits, axis, group_size)


def fake_quantize(
    x: torch.Tensor,
    method: str,
    *,
    bits: int = 8,
    axis: int | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """Quantize then dequantize: the values ``x`` takes after a round trip through the codes.

    Same dtype and shape as ``x``. Jacob et al. 2018, eq. 1 (r = S(q − Z)). Taught in
    notebooks/02_absmax_zeropoint.ipynb.
    """
    return quantize(x, method, bits=bits, axis=axis, group_size=group_size).dequantize()


def quantization_error(x: torch.Tensor, x_hat: torch.Tensor | QuantizedTensor) -> dict[str, float]:
    """Return ``{"mse", "max_abs", "sqnr_db"}`` of ``x_hat`` (a tensor or a QuantizedTensor).

    SQNR = 10 log10(Σx² / Σ(x − x̂)²) in dB (+inf for an exact round trip). Rounding to a step S
    adds noise of variance S²/12 (Bennett, "Spectra of Quantized Signals", 1948), so each bit
    halves S and adds about 6 dB. Taught in notebooks/02_absmax_zeropoint.ipynb.
    """
    check_float_tensor(x, "x")
    if isinstance(x_hat, QuantizedTensor):
        x_hat = x_hat.dequantize()
    check_float_tensor(x_hat, "x_hat")
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat: expected shape {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    x64, error = x.double(), x.double() - x_hat.double()
    signal, noise = float(x64.square().sum()), float(error.square().sum())
    return {
        "mse": float(error.square().mean()),
        "max_abs": float(error.abs().max()),
        "sqnr_db": _decibels(signal, noise),
    }


def code_range(method: str, bits: int) -> tuple[int, int]:
    """The codes (qmin, qmax) of ``method`` at ``bits``: absmax [−(2^(b−1) − 1), 2^(b−1) − 1]
    (symmetric: −127 … 127 at 8 bits), zero-point [−2^(b−1), 2^(b−1) − 1] (−128 … 127).

    Dettmers et al. 2022, §2; Jacob et al. 2018, eq. 1. Taught in
    notebooks/02_absmax_zeropoint.ipynb.
    """
    check_choice(method, "method", METHODS)
    bits = check_bits(bits, low=2, high=MAX_BITS)
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if method == ABSMAX else -qmax - 1), qmax


def quantize_model(
    model: nn.Module,
    method: str,
    *,
    bits: int = 8,
    axis: int | None = None,
    group_size: int | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose decoder linear weights are replaced by their fake-quantized
    values; ``model`` itself is left untouched.

    See :func:`quantize_model_` for the layers and the weight layout. Taught in
    notebooks/02_absmax_zeropoint.ipynb (every linear layer of the model).
    """
    check_choice(method, "method", METHODS)
    return quantize_model_(
        copy.deepcopy(model), method, bits=bits, axis=axis, group_size=group_size
    )


def quantize_model_(
    model: nn.Module,
    method: str,
    *,
    bits: int = 8,
    axis: int | None = None,
    group_size: int | None = None,
) -> nn.Module:
    """In place: replace each decoder linear weight by its :func:`fake_quantize`; return ``model``.

    Layers are those of ``qlearn.models.linear_layers`` (every ``nn.Linear`` and GPT-2 ``Conv1D``
    inside the decoder blocks; embeddings, norms and the LM head are kept). Granularity refers to
    the logical weight [out_features, in_features]: ``axis=0`` is one scale per output channel
    and groups run along the input dimension, also for ``Conv1D`` (stored [in, out]).
    Weight-only round-to-nearest quantization, Nagel et al. 2021, §2. Taught in
    notebooks/02_absmax_zeropoint.ipynb.
    """
    from qlearn.models import linear_layers

    check_choice(method, "method", METHODS)
    check_module(model)
    weights = [(layer, weight_of(layer).detach()) for _, layer in linear_layers(model)]
    for _, weight in weights:  # check every layer before changing any
        _check_args(weight, bits, axis, group_size)
    for layer, weight in weights:  # weight: [out, in], a view of the layer's
        set_weight_(
            layer, fake_quantize(weight, method, bits=bits, axis=axis, group_size=group_size)
        )
    return model


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@torch.no_grad()  # a weight may be a Parameter; the codes carry no gradient (see chapter 07)
def _quantize(
    x: torch.Tensor, method: str, bits: int, axis: int | None, group_size: int | None
) -> QuantizedTensor:
    """Check the arguments, choose (S, Z) per block, round: the body of both quantizers."""
    bits, axis, group_size = _check_args(x, bits, axis, group_size)
    xg = _grouped(x.float(), group_size)  # a view; float() copies only for fp16/bf16
    lo, hi = _block_min_max(xg, axis, group_size)
    return _quantize_in_range(x, xg, lo, hi, method, bits, axis, group_size)


def quantize_in_range(
    x: torch.Tensor, lo: float, hi: float, method: str, *, bits: int = 8
) -> QuantizedTensor:
    """Quantize ``x`` over a given range [lo, hi] (one scale for the tensor) instead of its own.

    The same (S, Z) and codes as :func:`absmax_quantize` / :func:`zeropoint_quantize` would give
    a tensor whose min and max were ``lo`` and ``hi``; values beyond the range land on the end
    codes (clipping). Used by ``qlearn.calibration`` for calibrated ranges: Nagel et al. 2021,
    §3.1. Taught in notebooks/03_granularity_calibration.ipynb.
    """
    check_choice(method, "method", METHODS)
    bits, _, _ = _check_args(x, bits, None, None)
    lo, hi = check_real(lo, "lo"), check_real(hi, "hi")
    if not lo < hi:
        raise ValueError(f"lo: expected lo < hi, got lo={lo}, hi={hi}")
    lo_t, hi_t = torch.tensor(float(lo)), torch.tensor(float(hi))
    with torch.no_grad():
        return _quantize_in_range(x, x.detach().float(), lo_t, hi_t, method, bits, None, None)


def _quantize_in_range(
    x: torch.Tensor,
    xg: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    method: str,
    bits: int,
    axis: int | None,
    group_size: int | None,
) -> QuantizedTensor:
    """(S, Z) from each block's range [lo, hi], then the codes of ``xg`` (``x`` grouped)."""
    qmin, qmax = code_range(method, bits)
    if method == ABSMAX:
        scale = _guard(torch.maximum(-lo, hi) / qmax)
        zero_point = torch.zeros_like(scale)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # stretch the range to hold 0 (Jacob §2.1)
        scale = _guard((hi - lo) / (qmax - qmin))
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    # Divide by S, as Jacob eq. 1 reads, quanto and the GPTQ reference do. torchao and PyTorch's
    # quantize_per_tensor multiply by a rounded 1/S instead: codes differ when x/S lies within an
    # ulp of a half-integer (about 1 value in 10^6 on Gaussian weights; see the tests).
    codes = (xg / scale).round_()  # in place on the one temporary: this is memory-bound
    if method == ZEROPOINT:
        codes += zero_point
    codes.clamp_(qmin, qmax)
    dtype = _codes_dtype(bits)
    return QuantizedTensor(
        codes=codes.to(dtype).reshape(x.shape),
        scale=scale,
        zero_point=zero_point.to(dtype),
        bits=bits,
        axis=axis,
        group_size=group_size,
        shape=x.shape,
        dtype=x.dtype,
        method=method,
    )


def _check_args(
    x: torch.Tensor, bits: int, axis: int | None, group_size: int | None
) -> tuple[int, int | None, int | None]:
    check_float_tensor(x, "x")
    bits = check_bits(bits, low=2, high=MAX_BITS)
    if axis is not None and group_size is not None:
        raise ValueError(
            f"axis: expected None when group_size is given (groups run along the last dimension "
            f"of each row), got axis={axis!r} and group_size={group_size!r}"
        )
    if axis is not None:
        axis = check_axis(axis, x.ndim)
    if group_size is not None:
        group_size = check_int(group_size, "group_size")
        if x.ndim == 0:
            raise ValueError(
                "group_size: expected None for a 0-D tensor (it has no last dimension)"
            )
        group_size = check_group_size(group_size, x.shape[-1])
    return bits, axis, group_size


def _codes_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16


def _grouped(t: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View [..., n] as [..., n / group_size, group_size] (unchanged without groups)."""
    if group_size is None:
        return t
    return t.reshape(*t.shape[:-1], t.shape[-1] // group_size, group_size)


def _block_min_max(
    xg: torch.Tensor, axis: int | None, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each block, shaped to broadcast against ``xg``.

    Two reductions rather than ``torch.aminmax``, whose ``dim=`` path is far slower on CPU.
    """
    if axis is None and group_size is None:
        return xg.amin(), xg.amax()
    dims = [-1] if group_size is not None else [d for d in range(xg.ndim) if d != axis]
    if not dims:  # axis=0 of a 1-D tensor: every value is its own block
        return xg, xg
    return xg.amin(dim=dims, keepdim=True), xg.amax(dim=dims, keepdim=True)


def _guard(scale: torch.Tensor) -> torch.Tensor:
    """Keep the step positive where a block's range is 0 (all zeros) or underflows.

    Clamped to float32's smallest normal (1.2e-38), exactly as torchao's choose_qparams_affine
    does by default (its ``eps``: ``finfo(input dtype).smallest_normal``); quanto does not guard
    and returns NaN codes. PyTorch's observers clamp to finfo.eps (1.2e-7), which would change
    results for weights smaller than about 1e-5; this guard only acts on blocks whose largest
    |x| is below ~1e-36, and an all-zero block still dequantizes to exact zeros.
    """
    return scale.clamp(min=MIN_SCALE)


def _decibels(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)
