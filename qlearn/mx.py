"""Microscaling: blocks of low-bit elements that share one scale — the OCP MX formats and NVFP4.

Open Compute Project, "OCP Microscaling Formats (MX) Specification" v1.0 (Rouhani et al.,
2023): a block of k = 32 elements shares one scale X, a power of two stored as E8M0 (8 exponent
bits, bias 127, no sign, no mantissa: 2⁻¹²⁷ … 2¹²⁷). Elements are FP8 (E4M3, E5M2), FP6 (E2M3,
E3M2), FP4 (E2M1) or INT8 (two's complement with an implicit 2⁻⁶: values in [−2, 2)). The
spec's conversion (section 6.3):

    shared_exp = ⌊log₂ max|Vᵢ|⌋ − emax_elem        X = 2^shared_exp        Pᵢ = round(Vᵢ / X)

where emax_elem is the exponent of the element format's largest normal number (E2M1: 2, since
6 = 1.5 · 2²) and the rounding is to nearest, ties to even, *saturating* at the element's largest
value. The block's largest value lands in [2^emax, 2^(emax+1)), so for FP4 a value between 6
and 8 (times X) is clamped to 6: the spec's scale trades that clipping for a finer grid.
``scale_rounding="ceil"`` is the other common rule (NVIDIA's recipes, TensorRT Model
Optimizer's ``MXFP4QTensor`` and ``MXFP8QTensor``): X = 2^⌈log₂(max|Vᵢ| / max_elem)⌉, the
smallest power of two under which nothing is clipped.

NVFP4 (NVIDIA, "Pretraining Large Language Models with NVFP4", 2025; the recipe of TensorRT
Model Optimizer's ``NVFP4QTensor``, which :func:`nvfp4_quantize` reproduces bit for bit): E2M1
elements in blocks of 16, each block's scale an FP8 E4M3 number (not a power of two), and one
FP32 scale for the whole tensor that brings the block scales into E4M3's range:

    s_tensor = max|x| / (6 · 448)      s_block = E4M3(max_block|x| / (6 · s_tensor))
    Pᵢ = E2M1(xᵢ / (s_block · s_tensor))          x̂ᵢ = Pᵢ · s_block · s_tensor

Bits per weight, counted from what is stored: MXFP4 (4 + 8/32) = 4.25, MXFP6 6.25, MXFP8 and
MXINT8 8.25; NVFP4 (4 + 8/16) = 4.5 plus 32 bits per tensor. llama.cpp stores both as GGUF types
with its own rounding details (:mod:`qlearn.gguf.microscaling`). Element rounding is
:func:`qlearn.floats.round_to_format`. Taught in notebooks/12_shared_scales.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import torch

from qlearn import floats
from qlearn._checks import check_choice, check_float_tensor, check_int
from qlearn._quantized import bits_per_weight

__all__ = [
    "E8M0_BIAS",
    "ELEMENTS",
    "NVFP4_BLOCK",
    "SCALE_ROUNDINGS",
    "ElementFormat",
    "MXTensor",
    "NVFP4Tensor",
    "element_format",
    "mx_quantize",
    "nvfp4_quantize",
]

E8M0_BIAS: Final = 127
SCALE_ROUNDINGS: Final = ("floor", "ceil")
NVFP4_BLOCK: Final = 16
_INT8_SCALE: Final = 64  # MXINT8: an element is its int8 code · 2⁻⁶ (spec, section 5.3.4)
_FP4_MAX: Final = 6.0
_E4M3_MAX: Final = 448.0
_E4M3_MIN_SCALE: Final = 2.0**-9  # E4M3's smallest subnormal: Model Optimizer's lower clamp


@dataclass(frozen=True)
class ElementFormat:
    """An MX element type: its name, bits, largest value and ``emax`` (the exponent of its
    largest normal number; the spec's Table 1)."""

    name: str
    bits: int
    max: float
    emax: int


def _float_element(name: str) -> ElementFormat:
    info = floats.format_info(name)
    return ElementFormat(name, floats.FORMATS[name].bits, float(info.max), info.max_exponent)


ELEMENTS: Final[dict[str, ElementFormat]] = {
    **{
        name: _float_element(name)
        for name in ("fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1")
    },
    "int8": ElementFormat("int8", 8, 127 / _INT8_SCALE, 0),
}


def element_format(element: str) -> ElementFormat:
    """The :class:`ElementFormat` of ``element`` (one of :data:`ELEMENTS`), or ``ValueError``."""
    return ELEMENTS[check_choice(element, "element", ELEMENTS)]


@dataclass(frozen=True, eq=False)
class MXTensor:
    """A tensor in an MX format: one E8M0 scale per block of ``block_size`` along the last
    dimension, and one code per element.

    ``scale_codes`` (uint8, shape ``[..., n_blocks]``) hold 127 + shared_exp; ``codes`` (uint8,
    the input's shape) hold each element's bit pattern — a float code of ``element`` (sign bit
    first, as ``ml_dtypes`` stores it) or, for ``"int8"``, the two's-complement byte. OCP MX v1.0,
    section 5. Taught in notebooks/12_shared_scales.ipynb.
    """

    element: str
    block_size: int
    scale_codes: torch.Tensor
    codes: torch.Tensor
    shape: torch.Size

    def scales(self) -> torch.Tensor:
        """X = 2^(code − 127) per block, float64 (2⁻¹²⁷ is exact there)."""
        return torch.exp2(self.scale_codes.double() - E8M0_BIAS)

    def elements(self) -> torch.Tensor:
        """The element values Pᵢ, float32, before the shared scale."""
        if self.element == "int8":
            return self.codes.view(torch.int8).float() / _INT8_SCALE
        return floats.all_values(self.element)[self.codes.long()]

    def dequantize(self) -> torch.Tensor:
        """Pᵢ · X, float32, in the input's shape (exact: a short significand times 2^k)."""
        blocks = self.elements().double().reshape(*self.scale_codes.shape, self.block_size)
        return (blocks * self.scales()[..., None]).reshape(self.shape).float()

    def nbytes(self) -> float:
        """One byte of scale per block plus ``bits`` per element, packed."""
        n_blocks = self.scale_codes.numel()
        return n_blocks * (1 + self.block_size * ELEMENTS[self.element].bits / 8)

    def bits_per_weight(self) -> float:
        return bits_per_weight(self.nbytes(), math.prod(self.shape))


def mx_quantize(
    x: torch.Tensor,
    element: str = "fp4_e2m1",
    *,
    block_size: int = 32,
    scale_rounding: str = "floor",
) -> MXTensor:
    """Quantize ``x`` to an MX format along its last dimension, in blocks of ``block_size``.

    ``scale_rounding="floor"`` is the OCP MX v1.0 conversion (section 6.3): shared_exp =
    ⌊log₂ max|V|⌋ − emax_elem, clamped to E8M0's [−127, 127] (an all-zero block gets 2⁻¹²⁷);
    ``"ceil"`` is X = 2^⌈log₂(max|V| / max_elem)⌉ (TensorRT Model Optimizer's MXFP4/MXFP8). The
    elements V / X are rounded to nearest, ties to even, saturating at ±max_elem; a negative
    value that rounds to zero keeps its sign bit, ``-0.0`` itself is stored as +0; INT8 codes are
    clamped to ±127, the symmetric range (−128 is never produced). The spec's
    concrete formats use blocks of 32; any power of two from 2 to 1024 is accepted for
    experiments. Rows must be a multiple of the block. Taught in notebooks/12_shared_scales.ipynb.
    """
    fmt = element_format(element)
    block_size = _check_block_size(block_size, x)
    scale_rounding = check_choice(scale_rounding, "scale_rounding", SCALE_ROUNDINGS)
    blocks = x.detach().float().reshape(*x.shape[:-1], -1, block_size)
    amax = blocks.abs().amax(dim=-1)
    shared = _shared_exponent(amax.double(), fmt, scale_rounding)
    # V / X by a power of two: exact in float32, but for values so far below the block's
    # largest (under 2⁻¹²⁶ · X) that they round to zero in every element format anyway
    scaled = blocks * torch.exp2(-shared.float())[..., None]
    codes = _element_codes(scaled, fmt).reshape(x.shape)
    return MXTensor(
        fmt.name, block_size, (shared + E8M0_BIAS).to(torch.uint8), codes, torch.Size(x.shape)
    )


@dataclass(frozen=True, eq=False)
class NVFP4Tensor:
    """A tensor in NVFP4: E2M1 codes (uint8, 0–15, the input's shape), one E4M3 scale per block of
    16 along the last dimension (``block_scales``, ``torch.float8_e4m3fn``) and one float32
    ``tensor_scale``. NVIDIA's NVFP4 as TensorRT Model Optimizer stores it. Taught in
    notebooks/12_shared_scales.ipynb.
    """

    codes: torch.Tensor
    block_scales: torch.Tensor
    tensor_scale: torch.Tensor
    shape: torch.Size

    def elements(self) -> torch.Tensor:
        """The E2M1 values, float32, before the scales."""
        return floats.all_values("fp4_e2m1")[self.codes.long()]

    def packed(self) -> torch.Tensor:
        """Two codes per byte, element 2i in the low nibble and 2i + 1 in the high one (the
        layout of Model Optimizer's ``NVFP4QTensor``)."""
        return self.codes[..., 0::2] | (self.codes[..., 1::2] << 4)

    def dequantize(self) -> torch.Tensor:
        """Pᵢ · (s_block · s_tensor), float32, in Model Optimizer's order of operations."""
        scale = self.block_scales.float() * self.tensor_scale
        blocks = self.elements().reshape(*scale.shape, NVFP4_BLOCK)
        return (blocks * scale[..., None]).reshape(self.shape)

    def nbytes(self) -> float:
        """Half a byte per element, one byte per block of 16, four bytes for the tensor scale."""
        return self.codes.numel() / 2 + self.block_scales.numel() + 4

    def bits_per_weight(self) -> float:
        return bits_per_weight(self.nbytes(), math.prod(self.shape))


def nvfp4_quantize(x: torch.Tensor) -> NVFP4Tensor:
    """Quantize ``x`` to NVFP4 along its last dimension (a multiple of 16).

    s_tensor = max|x| / (6 · 448) (1 for an all-zero tensor, whose codes are all 0); each block's
    scale max|x_block| / (6 · s_tensor) (1 for an all-zero block), clamped to [2⁻⁹, 448] and cast
    to E4M3 (nearest, ties to even); elements x / (s_block · s_tensor) rounded to E2M1, nearest,
    ties to even, saturating at ±6, in float32 as Model Optimizer's ``NVFP4QTensor.quantize``
    computes them (tests/test_mx.py checks its bytes). Taught in notebooks/12_shared_scales.ipynb.
    """
    _check_block_size(NVFP4_BLOCK, x, name="x", fixed=True)
    xf = x.detach().float()
    amax = xf.abs().amax()
    tensor_scale = amax / (_FP4_MAX * _E4M3_MAX) if amax > 0 else torch.ones(())
    blocks = xf.reshape(*x.shape[:-1], -1, NVFP4_BLOCK)
    block_scale = blocks.abs().amax(dim=-1) / (_FP4_MAX * tensor_scale)
    block_scale[block_scale == 0] = 1.0
    block_scale = block_scale.clamp(min=_E4M3_MIN_SCALE, max=_E4M3_MAX).to(torch.float8_e4m3fn)
    scaled = blocks / (block_scale.float() * tensor_scale)[..., None]
    codes = _element_codes(scaled, ELEMENTS["fp4_e2m1"]).reshape(x.shape)
    return NVFP4Tensor(codes, block_scale, tensor_scale.float(), torch.Size(x.shape))


def _check_block_size(
    block_size: object, x: object, *, name: str = "x", fixed: bool = False
) -> int:
    """The block size, checked: a power of two in [2, 1024] (unless ``fixed``, the format's own),
    dividing the rows of ``x`` (a finite float tensor)."""
    check_float_tensor(x, name)
    assert isinstance(x, torch.Tensor)
    size = check_int(block_size, "block_size", minimum=2)
    if not fixed and (size > 1024 or size & (size - 1)):
        raise ValueError(
            f"block_size: expected a power of two from 2 to 1024 (the MX formats use 32), "
            f"got {size}"
        )
    if x.ndim == 0 or x.shape[-1] % size:
        rows = "a 0-d tensor" if x.ndim == 0 else f"rows of {x.shape[-1]} values"
        raise ValueError(
            f"{name}: {rows} cannot be cut into blocks of {size} along the last dimension; "
            "pad or reshape it to a multiple of the block"
        )
    return size


def _shared_exponent(amax: torch.Tensor, fmt: ElementFormat, rounding: str) -> torch.Tensor:
    """shared_exp per block (int64), clamped to E8M0's [−127, 127]; −127 for an all-zero block."""
    _, exponent = torch.frexp(amax)  # amax = m · 2^e, 0.5 <= m < 1: ⌊log₂ amax⌋ = e − 1
    if rounding == "floor":
        shared = exponent.long() - 1 - fmt.emax
    else:  # the smallest k with amax <= max_elem · 2^k, exactly
        # amax has 24 significant bits, so amax / max_elem is never within 2⁻⁵³ of a power of
        # two it is not equal to: float64's rounding cannot move it across one.
        m, e = torch.frexp(amax / fmt.max)
        shared = e.long() - (m == 0.5).long()
    shared = torch.where(amax > 0, shared, torch.full_like(shared, -E8M0_BIAS))
    return shared.clamp(-E8M0_BIAS, E8M0_BIAS)


def _element_codes(scaled: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Round V / X to the element format (nearest, ties to even, saturating) and encode: uint8."""
    if fmt.name == "int8":
        q = torch.round(scaled * _INT8_SCALE).clamp(-127, 127)  # half to even
        return q.to(torch.int8).view(torch.uint8)
    negative = scaled < 0
    rounded = floats.round_to_format(scaled, fmt.name, saturate=True).abs()
    dtype = floats.FORMATS[fmt.name].torch_dtype
    if dtype is not None:  # fp8: torch's own dtype holds the code (|rounded| is exact in it)
        index = rounded.to(getattr(torch, dtype)).view(torch.uint8)
    else:
        top = floats.FORMATS[fmt.name].max_code  # the largest finite code
        magnitudes = floats.all_values(fmt.name)[: top + 1]  # codes 0, 1, …: increasing
        index = torch.searchsorted(magnitudes, rounded).to(torch.uint8)
    return index | (negative.to(torch.uint8) << (fmt.bits - 1))
