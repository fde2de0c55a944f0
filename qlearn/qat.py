"""Quantization-aware training: fake quantization with a straight-through estimator (STE).

Post-training quantization (chapters 02–06) rounds a finished model. Quantization-aware training
(QAT) rounds *inside* training, so that the optimizer sees the error it will have to live with
(Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", 2018, §3, "training with simulated quantization"; Nagel et al., "A White Paper on
Neural Network Quantization", 2021, §4):

- **fake quantization** rounds a tensor to the grid r = S (q − Z) and returns the real values,
  q = clamp(round(r / S) + Z, −2^(b−1), 2^(b−1) − 1), exactly as ``qlearn.affine`` does
  (``torch.round``, half to even; a division by S, in float32);
- the derivative of rounding is 0 almost everywhere, which would stop all learning. The
  **straight-through estimator** (Bengio, Léonard and Courville, "Estimating or Propagating
  Gradients Through Stochastic Neurons for Conditional Computation", 2013; with clipping as in
  Hubara et al., "Binarized Neural Networks", 2016, and Nagel et al. 2021, §4.1) treats the
  rounding as the identity in the backward pass: gradient 1 where the code lies inside
  [qmin, qmax], 0 where it was clipped. PyTorch's ``torch.fake_quantize_per_tensor_affine`` and
  ``torch.fake_quantize_per_channel_affine`` have the same gradient (see tests/test_qat.py).

:class:`QATLinear` is a drop-in ``nn.Linear`` whose weight is fake-quantized (absmax, one scale
per output channel) in every forward pass. Taught in notebooks/07_qat_bitnet.ipynb.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qlearn import affine
from qlearn._checks import (
    check_bits,
    check_float_tensor,
    check_int,
    check_positive,
)
from qlearn.affine import MIN_SCALE, ZEROPOINT

__all__ = ["QATLinear", "code_range", "fake_quantize", "straight_through_mask"]


def fake_quantize(
    x: torch.Tensor,
    *,
    bits: int,
    scale: float | torch.Tensor,
    zero_point: int | torch.Tensor = 0,
) -> torch.Tensor:
    """Round ``x`` to the grid scale · (q − zero_point) and return the real values, with an STE.

    Forward: q = clamp(round(x / scale) + zero_point, −2^(b−1), 2^(b−1) − 1) (``torch.round``,
    half to even, computed in float32 as in ``qlearn.affine``), then scale · (q − zero_point) in
    the dtype of ``x``. ``scale`` (> 0) and ``zero_point`` (an integer inside the code range) are
    numbers or tensors that broadcast against ``x`` (shape [out, 1] for one per output row).
    Backward (straight-through estimator with clipping): the gradient passes unchanged where
    round(x / scale) + zero_point lies inside the code range and is 0 where it was clipped
    (:func:`straight_through_mask`); ``scale`` and ``zero_point`` are constants and get none.
    Jacob et al. 2018, §3; Bengio et al. 2013; Nagel et al. 2021, §4.1.
    Taught in notebooks/07_qat_bitnet.ipynb.
    """
    scale_t, zero_t, qmin, qmax = _check_fake_quantize_args(x, bits, scale, zero_point)
    return _FakeQuantizeSTE.apply(x, scale_t, zero_t, qmin, qmax)


def straight_through_mask(
    x: torch.Tensor,
    *,
    bits: int,
    scale: float | torch.Tensor,
    zero_point: int | torch.Tensor = 0,
) -> torch.Tensor:
    """The STE's gradient of :func:`fake_quantize` w.r.t. ``x``: 1.0 inside the range, 0.0 where
    the code was clipped (a float tensor shaped like ``x``). Nagel et al. 2021, §4.1.

    Taught in notebooks/07_qat_bitnet.ipynb.
    """
    scale_t, zero_t, qmin, qmax = _check_fake_quantize_args(x, bits, scale, zero_point)
    with torch.no_grad():
        q = _codes_unclamped(x.detach(), scale_t, zero_t)
        return ((q >= qmin) & (q <= qmax)).to(x.dtype)


def code_range(bits: int) -> tuple[int, int]:
    """The signed code range of :func:`fake_quantize`: (−2^(b−1), 2^(b−1) − 1), (−8, 7) at 4 bits.

    Taught in notebooks/07_qat_bitnet.ipynb.
    """
    return affine.code_range(ZEROPOINT, bits)  # checks bits: 2 to affine.MAX_BITS


class QATLinear(nn.Linear):
    """``nn.Linear`` that trains through a fake-quantized weight: int``bits``, one absmax scale
    per output channel, recomputed from the current weight in every forward pass.

    Forward: y = x Ŵᵀ + b with Ŵ = :func:`fake_quantize`(W, scale = max|W_row| / (2^(b−1) − 1)),
    the same values as ``qlearn.affine.fake_quantize(W, "absmax", bits=bits, axis=0)``. The
    scale is a constant for autograd (computed without gradient) and every code lies inside the
    range, so the straight-through gradient w.r.t. W is that of a plain linear layer evaluated
    at Ŵ. Jacob et al. 2018, §3; Nagel et al. 2021, §4. Taught in notebooks/07_qat_bitnet.ipynb.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 8,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        self.bits = check_bits(bits, low=2, high=8)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int = 8) -> QATLinear:
        """A new ``QATLinear`` holding a copy of ``linear``'s weight and bias (``linear`` is left
        alone). Taught in notebooks/07_qat_bitnet.ipynb (QAT from a trained model)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        check_float_tensor(linear.weight, "linear.weight")
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits=bits,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def weight_scale(self) -> torch.Tensor:
        """The absmax scale of each output channel, max|W_row| / (2^(b−1) − 1), shaped [out, 1]
        (float32, no gradient). Dettmers et al. 2022, §2; Nagel et al. 2021, §2.2."""
        with torch.no_grad():
            amax = self.weight.detach().float().abs().amax(dim=1, keepdim=True)
            return (amax / (2 ** (self.bits - 1) - 1)).clamp(min=MIN_SCALE)

    def quantized_weight(self) -> torch.Tensor:
        """Ŵ, the fake-quantized weight the forward pass uses (with the STE attached)."""
        return fake_quantize(self.weight, bits=self.bits, scale=self.weight_scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Ŵᵀ + b (see the class docstring)."""
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: round to the grid; backward: pass the gradient where the code was not clipped."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qmin: int,
        qmax: int,
    ) -> torch.Tensor:
        q = _codes_unclamped(x, scale, zero_point)
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return ((q.clamp_(qmin, qmax) - zero_point) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad_output * inside.to(grad_output.dtype), None, None, None, None


def _codes_unclamped(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """round(x / scale) + zero_point in float32: divide by S, as ``qlearn.affine`` does."""
    return (x.detach().float() / scale).round_() + zero_point


def _check_fake_quantize_args(
    x: torch.Tensor,
    bits: int,
    scale: float | torch.Tensor,
    zero_point: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Check everything up front; return scale and zero point as float32 tensors, qmin, qmax."""
    check_float_tensor(x, "x")
    qmin, qmax = code_range(bits)
    if isinstance(scale, torch.Tensor):
        check_float_tensor(scale, "scale")
        scale_t = scale.detach().float()
    else:
        scale_t = torch.tensor(check_positive(scale, "scale"), device=x.device)
    if not bool(((scale_t > 0) & torch.isfinite(scale_t)).all()):
        raise ValueError(
            f"scale: expected finite float32 values > 0, got values from "
            f"{float(scale_t.min())} to {float(scale_t.max())}"
        )
    if isinstance(zero_point, torch.Tensor):
        if (
            zero_point.is_floating_point()
            or zero_point.is_complex()
            or zero_point.dtype == torch.bool
        ):
            raise TypeError(
                f"zero_point: expected an int or an integer tensor, got dtype {zero_point.dtype}"
            )
        zero_t = zero_point.detach().float()
    else:
        zero_t = torch.tensor(float(check_int(zero_point, "zero_point")), device=x.device)
    if zero_t.numel() == 0 or not bool(((zero_t >= qmin) & (zero_t <= qmax)).all()):
        raise ValueError(
            f"zero_point: expected integers from {qmin} to {qmax} (the {bits}-bit code range), "
            f"got {zero_point!r:.60}"
        )
    for name, t in (("scale", scale_t), ("zero_point", zero_t)):
        try:
            shape = torch.broadcast_shapes(t.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"{name}: expected a number or a tensor that broadcasts against x "
                f"{tuple(x.shape)} (e.g. [out, 1] per row), got shape {tuple(t.shape)}"
            )
    return scale_t, zero_t, qmin, qmax
