"""BitNet and BitNet b1.58: 1-bit and ternary weights, 8-bit activations, additions-only matmuls.

- **BitNet** (Wang et al., "BitNet: Scaling 1-bit Transformers for Large Language Models", 2023,
  §2.1, eq. 1–3): weights binarized around their mean, W̃ = Sign(W − α) with α = mean(W) and
  Sign(0) = −1, scaled back by β = mean|W|.
- **BitNet b1.58** (Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58
  Bits", 2024, eq. 1–3; and "The Era of 1-bit LLMs: Training Tips, Code and FAQ", 2024): ternary
  weights by absmean, s = 1 / max(mean|W|, 1e-5), codes = clamp(round(W · s), −1, 1), values
  codes / s. log2(3) ≈ 1.58 bits of information per weight, hence the name.
- **Activations**, in both: 8-bit absmax per token, s = 127 / max(max|x|, 1e-5) over the last
  dimension, codes = clamp(round(x · s), −128, 127) (BitNet §2.1, eq. 4–5; b1.58 FAQ).
- **BitLinear**: RMSNorm (Zhang and Sennrich, "Root Mean Square Layer Normalization", 2019), then
  a linear layer on the quantized activations and weights, trained with straight-through
  gradients (the FAQ's ``x + (q(x) − x).detach()``). Same numbers as transformers'
  ``integrations.bitnet`` (``WeightQuant``, ``ActQuant``, ``AutoBitLinear``): see
  tests/test_bitnet.py.
- **Storage**: 3^5 = 243 ≤ 256, so five ternary codes fit in one byte (1.6 bits per weight,
  the idea behind llama.cpp's TQ1_0, 1.6875 bits with its fp16 scale per 256), or four codes of
  2 bits (transformers' packed BitNet checkpoints; llama.cpp's TQ2_0, 2.0625 bits).
- **Compute**: with ternary weights, W x needs no multiplication: add the x_i where w = +1,
  subtract those where w = −1 (b1.58 paper, Fig. 1), then one multiply by the two scales.

Every quantizer returns :class:`BitNetQuantized`, whose ``codes * scale`` is the dequantized tensor.
Taught in notebooks/07_qat_bitnet.ipynb.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

from qlearn._checks import (
    check_choice,
    check_float_tensor,
    check_int,
    check_int_tensor,
    check_module,
    check_positive,
)
from qlearn._layers import set_weight_, weight_of
from qlearn._quantized import bits_per_weight

__all__ = [
    "ACTIVATIONS",
    "BINARY",
    "TERNARY",
    "WEIGHTS",
    "BitLinear",
    "BitNetQuantized",
    "activation_quant_int8",
    "pack_ternary",
    "pack_ternary_2bit",
    "quantize_model",
    "quantize_model_",
    "ternary_matmul",
    "unpack_ternary",
    "unpack_ternary_2bit",
    "weight_quant_binary",
    "weight_quant_ternary",
]

TERNARY: Final = "ternary"
"""BitNet b1.58's weights: codes in {−1, 0, +1}, absmean scale."""
BINARY: Final = "binary"
"""BitNet's (1-bit) weights: codes in {−1, +1}, scale mean|W|."""
WEIGHTS: Final = (TERNARY, BINARY)
ACTIVATIONS: Final = "int8"
"""The kind of :func:`activation_quant_int8`'s result: int8 codes, one scale per token."""

EPS: Final = 1e-5
"""The floor on mean|W| and max|x| of the reference code (b1.58 FAQ; transformers)."""
TRITS_PER_BYTE: Final = 5
"""3^5 = 243 ≤ 256: five ternary codes per byte."""
CODES_PER_BYTE_2BIT: Final = 4


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class BitNetQuantized:
    """Integer codes (int8) and the scale that turns them back into reals: codes · scale.

    ``scale`` broadcasts against ``codes`` (0-D for weights, [..., 1] per token for
    activations). It is stored in float64, as 1 / s for the reference's multiplier s (float32):
    then codes · scale, rounded to float32, equals the reference's float32 division codes / s
    bit for bit (|c / s − m| ≥ 2^−49 |c / s| for every float32 midpoint m and code |c| ≤ 128,
    while the float64 product is off by at most 2^−52 of it). ``dtype`` is the input's;
    ``kind`` is :data:`TERNARY`, :data:`BINARY` or :data:`ACTIVATIONS` (how :meth:`nbytes`
    counts the codes).
    Ma et al. 2024, eq. 1–3; Wang et al. 2023, §2.1. Taught in notebooks/07_qat_bitnet.ipynb.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype
    kind: str = TERNARY

    def dequantize(self) -> torch.Tensor:
        """codes · scale, rounded to float32 and then to the input's dtype (as the reference)."""
        # Cast first: a same-dtype float64 product is vectorized, int8 × float64 may not be.
        return (self.codes.double() * self.scale).float().to(self.dtype)

    def nbytes(self) -> int:
        """Bytes a file or kernel would store, each scale as the reference's float32 (4 bytes;
        held here in float64 only to dequantize exactly):

        - ternary: the codes packed five per byte as :func:`pack_ternary` packs them,
          ``ceil(rows / 5) · (the other dimensions)`` bytes, plus 4 for the scale (1.6 bits per
          weight on large tensors; Ma et al. 2024);
        - binary: one bit per code, ``ceil(n / 8)`` bytes, plus 4 for β (Wang et al. 2023);
        - int8 activations: one byte per code plus 4 per token scale.

        Taught in notebooks/07_qat_bitnet.ipynb and notebooks/13_capstone.ipynb.
        """
        if self.kind == TERNARY:
            shape = self.codes.shape or (1,)
            packed = math.ceil(shape[0] / TRITS_PER_BYTE) * math.prod(shape[1:])
            return packed + 4 * self.scale.numel()
        if self.kind == BINARY:
            return math.ceil(self.codes.numel() / 8) + 4 * self.scale.numel()
        return self.codes.numel() + 4 * self.scale.numel()

    def bits_per_weight(self) -> float:
        """``8 · nbytes()`` per code (≈1.6 for ternary weights, ≈1 for binary ones)."""
        return bits_per_weight(self.nbytes(), self.codes.numel())


def weight_quant_ternary(w: torch.Tensor) -> BitNetQuantized:
    """BitNet b1.58 absmean quantization: codes = clamp(round(W · s), −1, 1), s = 1 / max(mean|W|,
    1e-5), one scale for the whole tensor; ``codes * scale`` equals transformers' ``WeightQuant``.

    Weights smaller than mean|W| / 2 become 0: typically a third or more of them.
    Ma et al. 2024, eq. 1–3 (RoundClip, γ = mean|W|). Taught in notebooks/07_qat_bitnet.ipynb.
    """
    check_float_tensor(w, "w")
    with torch.no_grad():
        w32 = w.detach().float()
        s = 1.0 / w32.abs().mean().clamp(min=EPS)  # the reference's float32 ops, in its order
        codes = (w32 * s).round_().clamp_(-1, 1).to(torch.int8)  # in place: no big temporaries
    return BitNetQuantized(codes=codes, scale=1.0 / s.double(), dtype=w.dtype, kind=TERNARY)


def weight_quant_binary(w: torch.Tensor) -> BitNetQuantized:
    """BitNet (1-bit) binarization: codes = Sign(W − α) ∈ {−1, +1} with α = mean(W) and
    Sign(0) = −1; scale β = mean|W| (one for the whole tensor).

    Wang et al. 2023, §2.1, eq. 1–3 (centering, Sign) and β = ‖W‖₁ / (nm) of its output
    scaling. Taught in notebooks/07_qat_bitnet.ipynb.
    """
    check_float_tensor(w, "w")
    with torch.no_grad():
        w32 = w.detach().float()
        alpha = w32.mean()
        codes = torch.where(w32 - alpha > 0, 1, -1).to(torch.int8)
        beta = w32.abs().mean()
    return BitNetQuantized(codes=codes, scale=beta.double(), dtype=w.dtype, kind=BINARY)


def activation_quant_int8(x: torch.Tensor) -> BitNetQuantized:
    """Per-token absmax int8: s = 127 / max(max|x|, 1e-5) over the last dimension,
    codes = clamp(round(x · s), −128, 127); ``scale`` = 1 / s, shaped [..., 1].

    ``codes * scale`` equals transformers' ``ActQuant``. The largest |x| of a token maps to ±127,
    so −128 never occurs. Wang et al. 2023, §2.1, eq. 4–5; Ma et al. 2024 (8-bit activations).
    Taught in notebooks/07_qat_bitnet.ipynb.
    """
    check_float_tensor(x, "x")
    if x.ndim == 0:
        raise ValueError(
            "x: expected at least one dimension (tokens along the last), got a 0-D tensor"
        )
    with torch.no_grad():
        x32 = x.detach().float()
        # 127 / t is t.reciprocal() * 127 in PyTorch: written the same way as the reference.
        s = 127 / x32.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
        codes = (x32 * s).round_().clamp_(-128, 127).to(torch.int8)
    return BitNetQuantized(codes=codes, scale=1.0 / s.double(), dtype=x.dtype, kind=ACTIVATIONS)


class BitLinear(nn.Linear):
    """BitNet's replacement for ``nn.Linear``: RMSNorm, int8 activations, 1.58-bit (ternary) or
    1-bit (``weights="binary"``) weights, straight-through gradients.

    Forward (training and evaluation alike): x̄ = RMSNorm(x) (skipped with ``rms_norm=False``),
    y = F.linear(q(x̄), q(W), b) with q the fake quantizers :func:`activation_quant_int8` and
    :func:`weight_quant_ternary` (or :func:`weight_quant_binary`), whose backward pass is the
    identity: the latent float weight W receives the gradient a plain linear layer would get at
    q(W). With ``weights="ternary"`` this is transformers' ``AutoBitLinear(online_quant=True,
    use_rms_norm=True)``, value for value. :meth:`integer_forward` computes the same product the
    way a BitNet kernel does. Wang et al. 2023, §2 (BitLinear); Ma et al. 2024 and its FAQ.
    Taught in notebooks/07_qat_bitnet.ipynb.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        weights: str = TERNARY,
        rms_norm: bool = True,
        eps: float = 1e-6,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        self.weights = check_choice(weights, "weights", WEIGHTS)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.rms_norm = (
            _RMSNorm(in_features, check_positive(eps, "eps"), device=device, dtype=dtype)
            if rms_norm
            else None
        )

    def quantize_weight(self) -> BitNetQuantized:
        """The weight's codes and scale (:func:`weight_quant_ternary` or
        :func:`weight_quant_binary`, as chosen by ``weights``)."""
        quantize = weight_quant_ternary if self.weights == TERNARY else weight_quant_binary
        return quantize(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = F.linear(q(RMSNorm(x)), q(W), b), gradients straight through both q."""
        if self.rms_norm is not None:
            x = self.rms_norm(x)
        x_q = _StraightThrough.apply(x, activation_quant_int8(x).dequantize())
        w_q = _StraightThrough.apply(self.weight, self.quantize_weight().dequantize())
        return F.linear(x_q, w_q, self.bias)

    @torch.no_grad()
    def integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inference path: int8 activation codes × ternary weight codes with additions only
        (:func:`ternary_matmul`), then one multiply per output by both scales (Wang et al. 2023,
        §2.1, y = W̃x̃ · βγ/Q_b). Equal to :meth:`forward` up to float rounding (a few ulp)."""
        if self.rms_norm is not None:
            x = self.rms_norm(x)
        x_q = activation_quant_int8(x)
        w_q = self.quantize_weight()
        acc = ternary_matmul(x_q.codes, w_q.codes)
        y = (acc * x_q.scale * w_q.scale).float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        norm = self.rms_norm is not None
        return f"{super().extra_repr()}, weights={self.weights!r}, rms_norm={norm}"


def quantize_model(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` whose decoder linear weights are replaced by their BitNet b1.58
    ternary round trip; ``model`` is left untouched. See :func:`quantize_model_`. Ma et al.
    2024, eq. 1–3. Taught in notebooks/07_qat_bitnet.ipynb and notebooks/13_capstone.ipynb."""
    check_module(model)
    return quantize_model_(copy.deepcopy(model))


def quantize_model_(model: nn.Module) -> nn.Module:
    """In place: replace each decoder linear weight by :func:`weight_quant_ternary`'s round trip
    (absmean codes in {−1, 0, 1} times one scale per layer); return ``model``.

    Weight-only post-training quantization, fake-quantized: the activations stay as they are and
    no layer is retrained (BitNet b1.58 is trained ternary from scratch; applied after training,
    as here, it shows what 1.58 bits cost a model that never learnt them). Layers are those of
    ``qlearn.models.linear_layers``, each weight seen as [out, in]; embeddings, norms and the LM
    head are kept. Ma et al. 2024, eq. 1–3. Taught in notebooks/07_qat_bitnet.ipynb and
    notebooks/13_capstone.ipynb.
    """
    from qlearn.models import linear_layers

    check_module(model)
    for _, layer in linear_layers(model):
        set_weight_(layer, weight_quant_ternary(weight_of(layer).detach()).dequantize())
    return model


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes five to a byte (3^5 = 243 ≤ 256): 1.6 bits per weight.

    Codes of shape [n, ...] (int, in {−1, 0, 1}) become a uint8 tensor [ceil(n / 5), ...]: the
    rows are cut into five planes of ceil(n / 5) rows, and byte j holds digits d_k = code + 1
    of rows j + k·ceil(n / 5) as Σ_k d_k · 3^k (padding rows: digit 0). Planes along the first
    dimension are the layout of transformers' 2-bit packing (:func:`pack_ternary_2bit`); llama.cpp's
    TQ1_0 packs five trits per byte too, within blocks of 256. Ma et al. 2024 (log2 3 ≈ 1.58
    bits). Taught in notebooks/07_qat_bitnet.ipynb.
    """
    return _pack(codes, base=3, per_byte=TRITS_PER_BYTE)


def unpack_ternary(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: int8 codes of ``shape`` from the packed bytes.

    Digit k of a byte b is (b // 3^k) % 3. Raises if ``packed`` is not the uint8 tensor of shape
    ``[ceil(shape[0] / 5), *shape[1:]]`` that :func:`pack_ternary` makes, or holds a byte above 242.
    Taught in notebooks/07_qat_bitnet.ipynb.
    """
    shape = _check_packed(packed, shape, TRITS_PER_BYTE)
    if bool((packed > 242).any()):
        bad = int((packed > 242).sum())
        raise ValueError(
            f"packed: expected bytes from 0 to 242 (five base-3 digits), got {bad} above 242"
        )
    return _unpack(packed, shape, base=3, per_byte=TRITS_PER_BYTE)


def pack_ternary_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes four to a byte, 2 bits each: byte j holds code + 1 of rows
    j + k·ceil(n / 4) in bits 2k, 2k+1 (k = 0..3; padding rows: 0 bits).

    Codes [n, ...] become uint8 [ceil(n / 4), ...]: the same bytes as transformers'
    ``integrations.bitnet.pack_weights`` (the packed BitNet checkpoints), 2 bits per weight;
    llama.cpp's TQ2_0 is the same 2-bit code in blocks of 256 plus an fp16 scale (2.0625 bits).
    Taught in notebooks/07_qat_bitnet.ipynb.
    """
    return _pack(codes, base=4, per_byte=CODES_PER_BYTE_2BIT)


def unpack_ternary_2bit(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_ternary_2bit`: int8 codes of ``shape`` from the packed bytes.

    Raises if ``packed`` is not uint8 of shape ``[ceil(shape[0] / 4), *shape[1:]]``, or if a 2-bit
    field holds 3 (not a code). Taught in notebooks/07_qat_bitnet.ipynb.
    """
    shape = _check_packed(packed, shape, CODES_PER_BYTE_2BIT)
    bad = sum(int((((packed >> (2 * k)) & 3) == 3).sum()) for k in range(CODES_PER_BYTE_2BIT))
    if bad:
        raise ValueError(
            f"packed: expected 2-bit fields 0, 1 or 2 (codes −1, 0, 1), got {bad} equal to 3"
        )
    return _unpack(packed, shape, base=4, per_byte=CODES_PER_BYTE_2BIT)


def ternary_matmul(x_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    """x_codes @ w_codesᵀ for ternary weights, with additions and subtractions only.

    For each output, sum the x_i where w = +1 and subtract the sum of the x_i where w = −1
    (select with ``torch.where``, then sum; a zero weight is skipped): no multiplication.
    ``x_codes`` is an integer tensor [..., in], ``w_codes`` [out, in] with values in {−1, 0, 1}.
    Returns [..., out], exactly the integer matmul: int32 for int8/uint8 inputs (as int8
    kernels accumulate), int64 for wider ones. Ma et al. 2024, Fig. 1 and §2 (the new
    computation paradigm). Taught in notebooks/07_qat_bitnet.ipynb.
    """
    _check_codes(x_codes, "x_codes")
    _check_ternary_codes(w_codes, "w_codes")
    if x_codes.ndim == 0:
        raise ValueError("x_codes: expected a tensor [..., in_features], got a 0-D tensor")
    if w_codes.ndim != 2:
        raise ValueError(
            f"w_codes: expected a 2-D tensor [out, in], got shape {tuple(w_codes.shape)}"
        )
    n_in = w_codes.shape[1]
    if x_codes.shape[-1] != n_in:
        raise ValueError(
            f"x_codes: expected a last dimension of {n_in} (w_codes is {tuple(w_codes.shape)}), "
            f"got shape {tuple(x_codes.shape)}"
        )
    acc = torch.int32 if x_codes.dtype in (torch.int8, torch.uint8) else torch.int64
    x = x_codes.reshape(-1, 1, n_in).to(acc)  # [tokens, 1, in]
    plus, minus = w_codes == 1, w_codes == -1  # [out, in]
    out = torch.empty(x.shape[0], w_codes.shape[0], dtype=acc, device=x.device)
    rows = max(1, (1 << 22) // max(1, x.shape[0] * n_in))  # bound the [tokens, rows, in] selection
    for o in range(0, w_codes.shape[0], rows):
        added = torch.where(plus[o : o + rows], x, 0).sum(-1, dtype=acc)
        subtracted = torch.where(minus[o : o + rows], x, 0).sum(-1, dtype=acc)
        out[:, o : o + rows] = added - subtracted
    return out.reshape(*x_codes.shape[:-1], w_codes.shape[0])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized value x̂ itself; backward: the gradient goes to x unchanged.

    The FAQ writes x + (x̂ − x).detach(), the same in exact arithmetic; in float32 that sum can
    miss x̂ by an ulp, so this returns x̂ as transformers' WeightQuant/ActQuant do."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return x_hat

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


class _RMSNorm(nn.Module):
    """RMSNorm with a learnable gain, computed as transformers' LlamaRMSNorm (float32 inside)."""

    def __init__(self, n: int, eps: float, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _check_codes(x: Any, name: str) -> None:
    """A non-empty integer tensor of codes."""
    check_int_tensor(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")


def _check_ternary_codes(codes: Any, name: str) -> None:
    _check_codes(codes, name)
    outside = (codes < -1) | (codes > 1)
    if bool(outside.any()):
        values = sorted(set(codes[outside].flatten()[:5].tolist()))
        raise ValueError(
            f"{name}: expected ternary codes in {{-1, 0, 1}}, got {int(outside.sum())} values "
            f"outside, e.g. {values}"
        )


def _pack(codes: torch.Tensor, base: int, per_byte: int) -> torch.Tensor:
    """Shared body of both packers: digits d = code + 1 in ``per_byte`` planes along dim 0,
    byte = Σ_k d_k · base^k (base 3: five trits; base 4: four 2-bit fields, d_k << 2k)."""
    _check_ternary_codes(codes, "codes")
    if codes.ndim == 0:
        raise ValueError("codes: expected at least one dimension, got a 0-D tensor")
    n, rest = codes.shape[0], codes.shape[1:]
    rows = math.ceil(n / per_byte)
    digits = torch.zeros((rows * per_byte, *rest), dtype=torch.int16, device=codes.device)
    digits[:n] = codes + 1
    planes = digits.reshape(per_byte, rows, *rest)
    weights = torch.tensor([base**k for k in range(per_byte)], dtype=torch.int16)
    packed = (planes * weights.reshape(-1, *[1] * (planes.ndim - 1))).sum(0)
    return packed.to(torch.uint8)


def _unpack(packed: torch.Tensor, shape: tuple[int, ...], base: int, per_byte: int) -> torch.Tensor:
    """Digit k of byte b is (b // base^k) % base; stack the planes, drop the padding, −1."""
    wide = packed.to(torch.int16)
    planes = [torch.div(wide, base**k, rounding_mode="floor") % base for k in range(per_byte)]
    digits = torch.cat(planes, dim=0)[: shape[0]]
    return (digits - 1).to(torch.int8).reshape(shape)


def _check_packed(packed: Any, shape: Sequence[int], per_byte: int) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(
            f"shape: expected a non-empty tuple of ints (the codes' shape), got {shape!r}"
        )
    shape = tuple(check_int(d, "shape", minimum=1) for d in shape)
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed: expected a uint8 torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected dtype torch.uint8, got {packed.dtype}")
    expected = (math.ceil(shape[0] / per_byte), *shape[1:])
    if tuple(packed.shape) != expected:
        raise ValueError(
            f"packed: expected shape {expected} ({per_byte} codes per byte along the first "
            f"dimension of codes shaped {shape}), got {tuple(packed.shape)}"
        )
    return shape
