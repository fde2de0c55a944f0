"""Real low-bit linear layers on the CPU: weights stored as int8 or int4 codes, and multiplied
by torch's own low-bit kernels instead of being dequantized to float first.

Chapters 02–08 *fake*-quantize: the codes are turned back into float32 weights and the model
runs as before, which shows what quantization costs but not what it buys. The layers here keep
only the codes and their scales, so the model takes less memory, and each forward reads fewer
bytes of weights, which is what makes batch-1 decoding faster (it is memory-bound):

- :class:`Int8WeightOnlyLinear`: int8 codes, one scale per output row (absmax / 127, as
  LLM.int8's weights, Dettmers et al. 2022, eq. 1); y = (x · codesᵀ) ⊙ scale by
  ``aten._weight_int8pack_mm``, float activations (torchao's ``int8_weight_only``).
- :class:`W8A8Linear`: the same int8 weights and int8 activations with one absmax scale per
  token, found at run time ("dynamic"); the int8 × int8 product is summed exactly in int32
  by ``torch._int_mm`` and scaled back by s_x ⊗ s_w (Dettmers et al. 2022, eq. 6, without
  the outlier columns; Xiao et al. 2023's W8A8 baseline with per-token dynamic scales).
- :class:`Int4WeightOnlyLinear`: 4-bit codes in groups of 32–256 input columns, each group
  with a scale and a zero: w = (q − 8) · scale + zero, the layout of the "tinygemm" kernel
  (``aten._convert_weight_to_int4pack_for_cpu`` packs the codes, two per byte;
  ``aten._weight_int4pack_mm_for_cpu`` multiplies). It is built from the codes and scales of
  qlearn's own quantizers: GPTQ (Frantar et al. 2023), AWQ (Lin et al. 2024) or
  round-to-nearest, whose w = scale · (q − zero) is the same grid with zero' = scale · (8 − zero).

**Compute precision.** On the CPU, torch 2.13's two weight-only kernels are vectorized for
bfloat16 activations only; with float32 activations they fall back to a plain loop, 6–60×
slower than float32 ``F.linear`` (``benchmarks/bench_kernels.py`` measures it). So the layers
compute in ``compute_dtype`` = bfloat16 by default: the input is rounded to bfloat16, the
scales are stored in it, and the output is cast back to the input's dtype. ``dequantize()``
returns the weight the kernel really multiplies with (scales as stored), and every layer
equals ``F.linear(x.to(compute_dtype), dequantize().to(compute_dtype))`` up to the rounding of
the sum (tests/test_kernels.py states the tolerance). ``compute_dtype=torch.float32`` is exact
to float32 rounding, and slow. :class:`W8A8Linear` is exact in int32 in either case.

Chapter 10 (what quantization buys).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Final

import torch
from torch import nn

from qlearn import _quantized
from qlearn._checks import (
    check_choice,
    check_features,
    check_float_tensor,
    check_int,
    check_module,
    describe,
)
from qlearn._layers import is_linear, weight_of
from qlearn.models import linear_layers
from qlearn.offload import require_in_memory

__all__ = [
    "COMPUTE_DTYPES",
    "INT4_GROUP_SIZES",
    "KINDS",
    "Int4WeightOnlyLinear",
    "Int8WeightOnlyLinear",
    "W8A8Linear",
    "int_mm_is_exact",
    "quantize_model",
    "quantize_model_",
]

KINDS: Final = ("int8", "w8a8", "int4")
"""What :func:`quantize_model` swaps the linears for: weight-only int8, W8A8, weight-only int4."""
INT4_GROUP_SIZES: Final = (32, 64, 128, 256)
"""The group sizes the CPU int4 kernel takes (it must also divide the layer's input size)."""
COMPUTE_DTYPES: Final = (torch.bfloat16, torch.float32)
"""Activation precisions of the weight-only kernels: bfloat16 (fast) or float32 (a loop)."""

_INT4_OUT_MULTIPLE: Final = 16  # the int4 packing's tile: out_features must be a multiple
_INT4_MIDPOINT: Final = 8  # tinygemm's codes are unsigned, centred on 8


class _KernelLinear(nn.Module):
    """What the three layers share: their sizes, the bias, and the checks of a forward input."""

    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] as a row-major [tokens, in] matrix, after checking its last dimension."""
        check_features(x, self.in_features)
        return x.reshape(-1, self.in_features).contiguous()

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Add the bias and give the output x's dtype and leading shape."""
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def bits_per_weight(self) -> float:
        """8 · ``nbytes()`` over the layer's out · in weights."""
        return _quantized.bits_per_weight(self.nbytes(), self.in_features * self.out_features)

    def nbytes(self) -> float:  # pragma: no cover - every layer defines its own
        raise NotImplementedError


class Int8WeightOnlyLinear(_KernelLinear):
    """int8 weights, float activations: y = (x · codesᵀ) ⊙ scale + bias.

    Buffers: ``codes`` (int8 [out, in], in [−127, 127]), ``scales`` ([out], in
    ``compute_dtype``: W ≈ codes · scale per row) and ``bias`` (float32 or None). The forward
    is ``aten._weight_int8pack_mm``: the codes are read as int8 and converted inside the kernel,
    a quarter of the bytes of float32. Dettmers et al. 2022, eq. 1 (absmax per row).
    Chapter 10 (what quantization buys).
    """

    codes: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        codes = _check_codes(codes, "codes", torch.int8, -127, 127)
        out_features, in_features = codes.shape
        scales = _check_scales(scales, "scales", (out_features,))
        super().__init__(in_features, out_features, _check_bias(bias, out_features))
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.to(self.compute_dtype).contiguous())

    @classmethod
    def from_linear(
        cls, linear: nn.Module, *, compute_dtype: torch.dtype = torch.bfloat16
    ) -> Int8WeightOnlyLinear:
        """Quantize an ``nn.Linear`` (or GPT-2 ``Conv1D``) per output row, absmax to [−127, 127]
        (the rounding of ``qlearn.int8.vectorwise_quantize``); the bias is copied, ``linear`` is
        left untouched. Chapter 10."""
        weight, bias = _weight_and_bias(linear)
        codes, scales = _absmax_rows(weight)
        return cls(codes, scales, bias, compute_dtype=compute_dtype)

    def dequantize(self) -> torch.Tensor:
        """codes · scale, float32 [out, in]: the weight the kernel multiplies with."""
        return self.codes.float() * self.scales.float()[:, None]

    def nbytes(self) -> float:
        """One byte per code and one scale (2 bytes in bfloat16, 4 in float32) per row."""
        return self.codes.numel() + self.scales.numel() * self.scales.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] → [..., out] in x's dtype; the product in ``compute_dtype``."""
        rows = self._rows(x).to(self.compute_dtype)
        with torch.no_grad():
            y = torch.ops.aten._weight_int8pack_mm(rows, self.codes, self.scales)
        return self._finish(y, x)

    def extra_repr(self) -> str:
        return _repr(self, f"compute_dtype={self.compute_dtype}")


class W8A8Linear(_KernelLinear):
    """int8 weights × int8 activations, summed exactly in int32, then scaled back.

    For each input row (token) x: s_x = max|x| / 127, q_x = round(x / s_x) (half to even) in
    [−127, 127]; y = (q_x · codesᵀ) ⊙ (s_x ⊗ s_w) + bias, where the int8 × int8 product is
    ``torch._int_mm``'s int32 sum (exact: |sum| ≤ in · 127² < 2³¹). Buffers: ``codes`` (int8
    [out, in]), ``scales`` (float32 [out]), ``bias``. Where ``torch._int_mm`` is not exact (CPUs
    without VNNI: :func:`int_mm_is_exact`), the codes are summed in float64, exact as well. One
    outlier in a token spoils that token's scale: chapter 04 shows it and chapter 11 moves the
    outliers away. Dettmers et al. 2022, eq. 6 (vector-wise, without the outlier columns); Xiao
    et al. 2023 (W8A8, per-token dynamic). Chapter 10 (what quantization buys).
    """

    codes: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
    ) -> None:
        codes = _check_codes(codes, "codes", torch.int8, -127, 127)
        out_features, in_features = codes.shape
        if in_features < 2:  # torch._int_mm gives garbage for k = 1 (pytorch/pytorch#195066)
            raise ValueError(f"codes: expected at least 2 columns (in_features), got {in_features}")
        scales = _check_scales(scales, "scales", (out_features,))
        super().__init__(in_features, out_features, _check_bias(bias, out_features))
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.float().contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Module) -> W8A8Linear:
        """Quantize an ``nn.Linear`` (or GPT-2 ``Conv1D``) per output row, absmax to [−127, 127];
        the bias is copied, ``linear`` is left untouched. Chapter 10."""
        weight, bias = _weight_and_bias(linear)
        codes, scales = _absmax_rows(weight)
        return cls(codes, scales, bias)

    def dequantize(self) -> torch.Tensor:
        """codes · scale, float32 [out, in]: the weight the layer stands for."""
        return self.codes.float() * self.scales[:, None]

    def nbytes(self) -> float:
        """One byte per code and 4 per float32 row scale."""
        return self.codes.numel() + 4 * self.scales.numel()

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 codes [tokens, in] and float32 scales [tokens] of x's rows (dynamic)."""
        codes, scales = _absmax_rows(self._rows(x).float())
        return codes, scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] → [..., out] in x's dtype."""
        with torch.no_grad():
            x_codes, x_scales = self.quantize_input(x)
            # x_codes is row-major (_rows copies it so): _int_mm reads leading dimensions
            # from the strides, arbitrary on a size-1 dimension (pytorch/pytorch#195066).
            if int_mm_is_exact():
                acc = torch._int_mm(x_codes, self.codes.T).float()
            else:  # exact too: every sum is an integer below 2^53
                acc = (x_codes.double() @ self.codes.T.double()).float()
            y = acc * (x_scales[:, None] * self.scales[None, :])
        return self._finish(y, x)

    def extra_repr(self) -> str:
        return _repr(self, "activations=int8 per token")


class Int4WeightOnlyLinear(_KernelLinear):
    """4-bit weights in groups, float activations: the tinygemm layout.

    Column j of row i belongs to group g = j // group_size and stands for
    w[i, j] = (q[i, j] − 8) · scale[i, g] + zero[i, g], q ∈ [0, 15]. Buffers: ``packed`` (uint8
    [out, in / 2]: two codes per byte, in the kernel's own tiled order), ``scales_and_zeros``
    ([in / group_size, out, 2] in ``compute_dtype``) and ``bias``. Requirements of the CPU
    kernel: ``group_size`` in :data:`INT4_GROUP_SIZES` and a divisor of in_features,
    out_features a multiple of 16. Chapter 10 (what quantization buys).
    """

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        group_size: int,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        """``codes`` (integers in [0, 15], [out, in]); ``scales`` and ``zeros`` ([out, n_groups],
        float) in the tinygemm form w = (q − 8) · scale + zero."""
        codes = _check_codes(codes, "codes", None, 0, 15)
        out_features, in_features = codes.shape
        group_size = _check_int4_group_size(group_size, in_features)
        if out_features % _INT4_OUT_MULTIPLE:
            raise ValueError(
                f"codes: expected a multiple of {_INT4_OUT_MULTIPLE} rows (out_features) for "
                f"the int4 layout, got {out_features}"
            )
        groups = (out_features, in_features // group_size)
        scales = _check_scales(scales, "scales", groups)
        zeros = _check_scales(zeros, "zeros", groups, positive=False)
        super().__init__(in_features, out_features, _check_bias(bias, out_features))
        self.group_size = group_size
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        self.register_buffer("packed", packed)
        table = torch.stack([scales.T, zeros.T], dim=-1).to(self.compute_dtype).contiguous()
        self.register_buffer("scales_and_zeros", table)

    @classmethod
    def from_quantized(
        cls,
        quantized: object,
        bias: torch.Tensor | None = None,
        *,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> Int4WeightOnlyLinear:
        """Build the layer from a 4-bit result of qlearn: ``gptq.QuantizedWeight`` (GPTQ or
        RTN, groups in column order: no act-order, or act-order with static groups) or
        ``awq.GroupQuantized``, whose w = scale · (q − zero) becomes the tinygemm form with
        zero' = scale · (8 − zero). Chapter 10."""
        codes, scale, zero, group_size = _group_codes(quantized)
        zeros = scale * (_INT4_MIDPOINT - zero)
        return cls(codes, scale, zeros, bias, group_size=group_size, compute_dtype=compute_dtype)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        *,
        group_size: int = 64,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> Int4WeightOnlyLinear:
        """Round an ``nn.Linear`` (or GPT-2 ``Conv1D``) to nearest at 4 bits per group of
        ``group_size`` columns with GPTQ's asymmetric min/max quantizer
        (``qlearn.gptq.rtn_quantize``); the bias is copied. Chapter 10."""
        from qlearn.gptq import rtn_quantize

        weight, bias = _weight_and_bias(linear)
        _check_int4_group_size(group_size, weight.shape[1])
        quantized = rtn_quantize(weight.float(), bits=4, group_size=group_size)
        return cls.from_quantized(quantized, bias, compute_dtype=compute_dtype)

    def dequantize(self) -> torch.Tensor:
        """(q − 8) · scale + zero, float32 [out, in]: the weight the kernel multiplies with.

        The codes are read back through the kernel itself (the identity matrix times the
        packed weight with unit scales and zero zeros: exact in bfloat16, whose 8 bits of
        mantissa hold every q − 8 in [−8, 7]), so no unpacking of its private tile order is
        written here."""
        n_groups = self.in_features // self.group_size
        unit = torch.zeros(n_groups, self.out_features, 2, dtype=torch.bfloat16)
        unit[..., 0] = 1.0
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        centred = torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, self.group_size, unit
        ).T.float()  # [out, in]: q − 8
        table = self.scales_and_zeros.float()
        scale = table[..., 0].T.repeat_interleave(self.group_size, dim=1)
        zero = table[..., 1].T.repeat_interleave(self.group_size, dim=1)
        return centred * scale + zero

    def nbytes(self) -> float:
        """Half a byte per code and, per row and group, a scale and a zero in ``compute_dtype``."""
        return self.packed.numel() + self.scales_and_zeros.numel() * (
            self.scales_and_zeros.element_size()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] → [..., out] in x's dtype; the product in ``compute_dtype``."""
        rows = self._rows(x).to(self.compute_dtype)
        with torch.no_grad():
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows, self.packed, self.group_size, self.scales_and_zeros
            )
        return self._finish(y, x)

    def extra_repr(self) -> str:
        return _repr(self, f"group_size={self.group_size}, compute_dtype={self.compute_dtype}")


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` sums int8 × int8 exactly on this CPU, as it must.

    On a CPU without VNNI instructions (AVX2 only, or oneDNN held to AVX2 with
    ``ONEDNN_MAX_CPU_ISA=AVX2``) oneDNN multiplies u8 × s8 pairs with ``vpmaddubsw``, whose 16-bit
    sums saturate: products of full-range codes come back off by thousands. Checked once per
    process on codes of the full range; :class:`W8A8Linear` then sums in float64 instead (exact:
    every sum is an integer far below 2⁵³). Found by chapter 10's second nbval pass.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (8, 256), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (256, 32), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = 127, -127  # the largest pair sums
    return torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())


def quantize_model(
    model: nn.Module,
    *,
    kind: str,
    group_size: int = 64,
    compute_dtype: torch.dtype = torch.bfloat16,
    quantized: Mapping[str, object] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose decoder linears are real low-bit layers of ``kind``.

    :func:`quantize_model_` on ``copy.deepcopy(model)``; ``model`` is left untouched.
    Chapter 10 (what quantization buys).
    """
    check_module(model)
    return quantize_model_(
        copy.deepcopy(model),
        kind=kind,
        group_size=group_size,
        compute_dtype=compute_dtype,
        quantized=quantized,
    )


def quantize_model_(
    model: nn.Module,
    *,
    kind: str,
    group_size: int = 64,
    compute_dtype: torch.dtype = torch.bfloat16,
    quantized: Mapping[str, object] | None = None,
) -> nn.Module:
    """Swap every decoder linear of ``model`` (``qlearn.models.linear_layers``) for a layer of
    ``kind``, in place; return ``model``.

    ``kind``: ``"int8"`` (:class:`Int8WeightOnlyLinear`), ``"w8a8"`` (:class:`W8A8Linear`) or
    ``"int4"`` (:class:`Int4WeightOnlyLinear`, groups of ``group_size``). ``quantized`` (int4
    only): the 4-bit results of GPTQ, AWQ or RTN by layer name (as ``linear_layers`` names
    them), used as they are; a layer not in it is rounded to nearest. Embeddings, norms and the
    LM head stay as they were. Every layer is checked before any is swapped, so a model the
    kernels cannot take is left unchanged. ``generate()`` works on the result as before.
    Chapter 10 (what quantization buys).
    """
    check_module(model)
    require_in_memory(model, "load it into memory first (the kernel layers hold their codes)")
    kind = check_choice(kind, "kind", KINDS)
    _check_compute_dtype(compute_dtype)
    if quantized is not None and kind != "int4":
        raise ValueError(f"quantized: expected None for kind={kind!r} (int4 only), got a mapping")
    layers = list(linear_layers(model))
    found = {name for name, _ in layers}
    unknown = sorted(set(quantized or {}) - found)
    if unknown:
        raise ValueError(f"quantized: expected names of the model's linear layers, got {unknown}")
    built = {
        name: _build(layer, name, kind, group_size, compute_dtype, quantized)
        for name, layer in layers
    }
    for name, layer in built.items():
        model.set_submodule(name, layer)
    return model


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _build(
    layer: nn.Module,
    name: str,
    kind: str,
    group_size: int,
    compute_dtype: torch.dtype,
    quantized: Mapping[str, object] | None,
) -> nn.Module:
    """The kernel layer of ``kind`` that stands for ``layer`` (named ``name`` in errors)."""
    try:
        if kind == "int8":
            return Int8WeightOnlyLinear.from_linear(layer, compute_dtype=compute_dtype)
        if kind == "w8a8":
            return W8A8Linear.from_linear(layer)
        if quantized is not None and name in quantized:
            _, bias = _weight_and_bias(layer)
            return Int4WeightOnlyLinear.from_quantized(
                quantized[name], bias, compute_dtype=compute_dtype
            )
        return Int4WeightOnlyLinear.from_linear(
            layer, group_size=group_size, compute_dtype=compute_dtype
        )
    except ValueError as error:
        raise ValueError(f"{error} (layer {name})") from None


def _weight_and_bias(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight as [out, in] (detached) and the bias of an ``nn.Linear`` or ``Conv1D``."""
    if not is_linear(linear):
        raise TypeError(
            f"linear: expected nn.Linear or transformers Conv1D, got {type(linear).__name__}"
        )
    weight = weight_of(linear).detach()
    check_float_tensor(weight, "linear.weight", ndim=2)
    bias = getattr(linear, "bias", None)
    return weight, None if bias is None else bias.detach()


def _absmax_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: codes round(x / s) in [−127, 127] (int8) and s = max|x| / 127 (float32).

    The codes are ⌊x · fl(127 / max|x|)⌉, half to even, as ``qlearn.int8.vectorwise_quantize``
    and bitsandbytes round; an all-zero row gets codes 0 and scale 0."""
    x = x.float()
    absmax = x.abs().amax(dim=1)
    inverse = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    codes = (x * inverse[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return codes, absmax / 127.0


def _group_codes(quantized: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """codes [out, in], scale and zero [out, n_groups] (float32) and the group size of a 4-bit
    ``gptq.QuantizedWeight`` or ``awq.GroupQuantized``, groups in column order."""
    from qlearn.awq import GroupQuantized
    from qlearn.gptq import QuantizedWeight

    if not isinstance(quantized, (QuantizedWeight, GroupQuantized)):
        raise TypeError(
            "quantized: expected a gptq.QuantizedWeight or awq.GroupQuantized, "
            f"got {type(quantized).__name__}"
        )
    if quantized.bits != 4:
        raise ValueError(f"quantized: expected a 4-bit result, got {quantized.bits} bits")
    columns = quantized.codes.shape[1]
    group_size = quantized.group_size or columns
    if isinstance(quantized, QuantizedWeight):
        in_order = torch.arange(columns, device=quantized.g_idx.device) // group_size
        if not torch.equal(quantized.g_idx.cpu(), in_order.cpu()):
            raise ValueError(
                "quantized: expected groups of consecutive columns, got act-order groups "
                "(quantize with static_groups=True for the int4 layout)"
            )
    return (
        quantized.codes.cpu(),
        quantized.scale.cpu().float(),
        quantized.zero.cpu().float(),
        group_size,
    )


def _check_codes(
    codes: object, name: str, dtype: torch.dtype | None, low: int, high: int
) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
        raise TypeError(f"{name}: expected a 2-D torch.Tensor [out, in], got {describe(codes)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer codes, got dtype {codes.dtype}")
    if dtype is not None and codes.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {codes.dtype}")
    if codes.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty matrix, got shape {tuple(codes.shape)}")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < low or hi > high:
        raise ValueError(f"{name}: expected codes in [{low}, {high}], got values in [{lo}, {hi}]")
    return codes.cpu()


def _check_scales(
    values: object, name: str, shape: tuple[int, ...], *, positive: bool = True
) -> torch.Tensor:
    check_float_tensor(values, name)
    if tuple(values.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(values.shape)}")
    if positive and bool((values < 0).any()):
        raise ValueError(f"{name}: expected scales ≥ 0, got a minimum of {float(values.min())}")
    return values.detach().cpu()


def _check_bias(bias: object, out_features: int) -> torch.Tensor | None:
    if bias is None:
        return None
    return _check_scales(bias, "bias", (out_features,), positive=False)


def _check_int4_group_size(group_size: object, in_features: int) -> int:
    group_size = check_int(group_size, "group_size", minimum=1)
    if group_size not in INT4_GROUP_SIZES or in_features % group_size:
        raise ValueError(
            f"group_size: expected one of {INT4_GROUP_SIZES} that divides in_features "
            f"{in_features} (the CPU int4 kernel's layout), got {group_size}"
        )
    return group_size


def _check_compute_dtype(dtype: object) -> torch.dtype:
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype: expected torch.bfloat16 or torch.float32, got {dtype}")
    return dtype  # type: ignore[return-value]


def _repr(layer: _KernelLinear, extra: str) -> str:
    return (
        f"in_features={layer.in_features}, out_features={layer.out_features}, "
        f"bias={layer.bias is not None}, {extra}"
    )
