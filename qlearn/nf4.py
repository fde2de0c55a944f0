"""NF4 and FP4: 4-bit codes on a code book of 16 levels, one absmax per block, double quantization.

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", 2023, §3 (the 4-bit
NormalFloat, eq. 4; double quantization; the storage figures of §3: 32/64 = 0.5 bits per weight
for the constants, 8/64 + 32/(64·256) = 0.127 with double quantization). Taught in
notebooks/08_awq_nf4.ipynb.

A weight is cut into blocks of ``blocksize`` consecutive values (the tensor flattened in row-major
order, as bitsandbytes does). Each block stores its absmax c = max|x| in float32 and, per value,
the 4-bit index of the level nearest to x / c in a code book of 16 values in [-1, 1]:

- **NF4** (:data:`NF4_LEVELS`): the levels sit at quantiles of the standard normal distribution,
  so that each of them is equally likely for normally distributed weights (QLoRA eq. 4). Seven
  negative levels, 0 and eight positive ones: q_i = Φ⁻¹(p_i) for p evenly spaced from 1 − δ to
  ½ (δ = 1 − 0.9677083, the offset of bitsandbytes' ``create_normal_map``), each side normalised
  by the largest, so that ±1 are levels and 0 is exact (§3 "asymmetric").
- **FP4** (:data:`FP4_LEVELS`): bitsandbytes' 4-bit float, 1 sign, 2 exponent and 1 mantissa
  bits; magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12 (E2M1's normal numbers doubled, and a tiny
  subnormal), spaced like a float: dense near 0, coarse at the ends.

Codes are packed two per byte, the first value of each pair in the high nibble. **Double
quantization** (QLoRA §3) stores the block constants themselves in 8 bits: their mean (the
"offset") is subtracted, and the centred constants are quantized in blocks of 256 with the signed
8-bit dynamic map of Dettmers, "8-Bit Approximations for Parallelism in Deep Learning", 2016
(:func:`dynamic_map`), under one float32 absmax per 256.

Everything here equals ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` (0.50.2,
CPU) bit for bit — codes, packed bytes, absmax, the nested state and the dequantized values, for
float32, float16 and bfloat16 weights (tests/test_nf4.py). Rounding follows bitsandbytes' CPU
path: a 4-bit code is the level nearest to x · (1 / c) in float32, a value exactly halfway going
to the lower level; the 8-bit constants go through bitsandbytes' 65,536-entry lookup table (the
level nearest to the table cell, see :func:`quantize_dynamic_8bit`), which is not always the
nearest level (within 1.5e-5 of a midpoint).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from torch import nn

from qlearn._checks import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_int,
    check_int_tensor,
    check_module,
    check_positive,
    describe,
)
from qlearn._layers import set_weight_, weight_of
from qlearn._quantized import bits_per_weight

__all__ = [
    "DOUBLE_QUANT_BLOCKSIZE",
    "FP4",
    "FP4_LEVELS",
    "NF4",
    "NF4_LEVELS",
    "NF4_OFFSET",
    "QUANT_TYPES",
    "DynamicQuantized",
    "Quantized4bit",
    "dequantize_4bit",
    "dynamic_map",
    "fp4_levels",
    "fp4_quantize",
    "nf4_dequantize",
    "nf4_levels",
    "nf4_quantize",
    "pack_4bit",
    "quantize_4bit",
    "quantize_dynamic_8bit",
    "quantize_model",
    "quantize_model_",
    "unpack_4bit",
]

NF4: Final = "nf4"
FP4: Final = "fp4"
QUANT_TYPES: Final = (NF4, FP4)
NF4_OFFSET: Final = 0.9677083
"""The outermost probability of NF4's positive side (bitsandbytes' ``create_normal_map``)."""
DOUBLE_QUANT_BLOCKSIZE: Final = 256
"""Block size of the second quantization, over the absmax constants (QLoRA §3)."""

_ABSMAX_FLOOR: Final = 1e-38  # bitsandbytes' guard on 1 / absmax for an all-zero block
_LUT_SIZE: Final = 65536  # bitsandbytes' CPU 8-bit quantizer: a table over [-1, 1]
_CHUNK: Final = 1 << 20  # dequantize_4bit: beyond this many packed bytes, in chunks of it


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels in increasing order, float32, from normal quantiles (QLoRA eq. 4).

    Positive side: Φ⁻¹ at 8 probabilities evenly spaced from ``offset`` down to ½ (½ excluded),
    negative side: −Φ⁻¹ at 7 probabilities from ``offset`` to ½; with 0, sorted, divided by the
    largest. The probabilities are float32 (``torch.linspace``) and Φ⁻¹ is evaluated in float64
    (``torch.special.ndtri``), as bitsandbytes' ``create_normal_map`` evaluates
    ``scipy.stats.norm.ppf``. Taught in notebooks/08_awq_nf4.ipynb.
    """
    offset = check_positive(offset, "offset")
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset: expected a probability between 0.5 and 1, got {offset}")
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double()).float()
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double()).float()
    levels = torch.cat([negative, torch.zeros(1), positive]).sort().values
    return levels / levels.max()


def fp4_levels() -> torch.Tensor:
    """The 16 FP4 values indexed by their 4-bit code (bitsandbytes' layout), float32.

    Bit 3 is the sign; bits 2–1 the exponent e, bit 0 the mantissa m. e = 0 is subnormal:
    m · 2⁻⁴; otherwise (1 + m/2) · 2^(4 − e). Divided by the largest (12): codes 0b0011 and
    0b1011 are ±1. Codes 0 and 8 ("−0") both stand for +0. Taught in notebooks/08_awq_nf4.ipynb.
    """
    magnitudes = []
    for code in range(8):
        e, m = code >> 1, code & 1
        magnitudes.append(m * 2.0**-4 if e == 0 else (1 + m / 2) * 2.0 ** (4 - e))
    values = torch.tensor(magnitudes + [-v for v in magnitudes], dtype=torch.float32)
    # + 0.0 turns code 8's −0 into +0: bitsandbytes' CPU kernel decodes both zeros to +0.
    return values / values.abs().max() + 0.0


NF4_LEVELS: Final = nf4_levels()
"""NF4's code book: code i stands for ``NF4_LEVELS[i]`` (increasing, -1 … 1, code 7 is 0)."""
FP4_LEVELS: Final = fp4_levels()
"""bitsandbytes' FP4 code book: code i stands for ``FP4_LEVELS[i]`` (not in increasing order)."""


def dynamic_map() -> torch.Tensor:
    """The signed 8-bit dynamic map: 256 values in [-1, 1], increasing, float32.

    Dettmers 2016, §3 (dynamic tree quantization), as bitsandbytes' ``create_dynamic_map()``:
    for i = 0 … 6, the midpoints of 2^i + 1 points evenly spaced over [0.1, 1], times 10^(i − 6),
    with both signs; then 0 and 1. A value's exponent (the power of ten) costs as many bits as it
    needs, the rest go to the fraction: fine steps near 0, 2–3 significant digits everywhere.
    Used for the absmax constants of double quantization. Taught in notebooks/08_awq_nf4.ipynb.
    """
    return _dynamic_map().clone()


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class DynamicQuantized:
    """8-bit codes into :func:`dynamic_map`, with a float32 absmax per block of ``blocksize``.

    value = ``dynamic_map()[codes] · absmax[block]`` (the last block may be shorter). What double
    quantization stores for the absmax constants (QLoRA §3). Taught in notebooks/08_awq_nf4.ipynb.
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    blocksize: int

    def dequantize(self) -> torch.Tensor:
        """The float32 values: code book value times the block's absmax."""
        values = _dynamic_map().index_select(0, self.codes.reshape(-1).int())
        blocksize, full = self.blocksize, values.numel() // self.blocksize
        values[: full * blocksize].view(full, blocksize).mul_(self.absmax[:full, None])
        if values.numel() > full * blocksize:  # the last block is shorter
            values[full * blocksize :].mul_(self.absmax[full])
        return values.view(self.codes.shape)

    def nbytes(self) -> int:
        """Bytes stored: one per code, four per block absmax."""
        return self.codes.numel() + 4 * self.absmax.numel()

    def bits_per_weight(self) -> float:
        """``8 · nbytes()`` per code: 8 + 32 / blocksize (8.125 in blocks of 256)."""
        return bits_per_weight(self.nbytes(), self.codes.numel())


@dataclass(frozen=True, eq=False)
class Quantized4bit:
    """A weight in NF4 or FP4: packed 4-bit codes and one absmax per block of ``blocksize``.

    ``packed`` (uint8, numel / 2) holds two codes per byte, the first of each pair in the high
    nibble. Without double quantization ``absmax`` is float32, one per block, and ``nested`` is
    None; with it, ``absmax`` is None and ``nested`` holds the constants minus ``offset`` in
    8 bits (:class:`DynamicQuantized`, blocks of 256). ``shape`` and ``dtype`` are the input's.
    QLoRA §3. Taught in notebooks/08_awq_nf4.ipynb.
    """

    packed: torch.Tensor
    absmax: torch.Tensor | None
    nested: DynamicQuantized | None
    offset: torch.Tensor | None
    blocksize: int
    shape: torch.Size
    dtype: torch.dtype
    quant_type: str

    @property
    def codes(self) -> torch.Tensor:
        """The 4-bit codes, unpacked (uint8, values 0–15), in the input's shape."""
        return unpack_4bit(self.packed).reshape(self.shape)

    @property
    def levels(self) -> torch.Tensor:
        """The code book: :data:`NF4_LEVELS` or :data:`FP4_LEVELS`."""
        return NF4_LEVELS if self.quant_type == NF4 else FP4_LEVELS

    def block_absmax(self) -> torch.Tensor:
        """The float32 absmax of every block, after the nested round trip if there is one.

        With double quantization: code book value · absmax of its block of 256, plus the offset
        (QLoRA eq. 6 reads the two constants c₂^FP32 and c₁^k-bit). Taught in
        notebooks/08_awq_nf4.ipynb.
        """
        if self.nested is None:
            return self.absmax
        return self.nested.dequantize() + self.offset

    def dequantize(self) -> torch.Tensor:
        """Level times block absmax (float32, then cast to the input's dtype): QLoRA eq. 6.

        Taught in notebooks/08_awq_nf4.ipynb.
        """
        return dequantize_4bit(self)

    def nbytes(self) -> int:
        """Bytes stored: the packed codes, the constants (4 bytes each) or, with double
        quantization, one byte per constant, 4 per block of 256 and 4 for the offset."""
        if self.nested is None:
            return self.packed.numel() + 4 * self.absmax.numel()
        return self.packed.numel() + self.nested.nbytes() + 4

    def bits_per_weight(self) -> float:
        """``nbytes()`` in bits per weight: 4.5 at blocksize 64, ≈4.127 with double quantization
        (QLoRA §3: 4 + 32/64, and 4 + 8/64 + 32/(64·256))."""
        return bits_per_weight(self.nbytes(), math.prod(self.shape))


def quantize_4bit(
    w: torch.Tensor, *, quant_type: str = NF4, blocksize: int = 64, double_quant: bool = False
) -> Quantized4bit:
    """Quantize ``w`` to NF4 or FP4 in blocks of ``blocksize`` values (absmax per block).

    The tensor is flattened in row-major order and cut into blocks; ``blocksize`` must be a power
    of two that divides ``w.numel()``. Per block c = max|x| (float32), x̂ = x · (1 / c) clamped to
    [−1, 1], code = the level nearest to x̂ (exactly halfway: the lower level). With
    ``double_quant`` the constants are quantized again (:func:`quantize_dynamic_8bit` of
    c − mean(c), blocks of 256). QLoRA §3, eq. 4–6. Equal to bitsandbytes' ``quantize_4bit``
    bit for bit. Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_choice(quant_type, "quant_type", QUANT_TYPES)
    check_float_tensor(w, "w")
    blocksize = _check_blocksize(blocksize, w.numel())
    double_quant = check_bool(double_quant, "double_quant")
    with torch.no_grad():
        blocks = w.detach().reshape(-1, blocksize).float()
        absmax = blocks.abs().amax(dim=1)
        scaled = (blocks * (1.0 / absmax.clamp(min=_ABSMAX_FLOOR))[:, None]).clamp_(-1, 1)
        codes = _nearest_level(scaled.reshape(-1), quant_type)
        nested, offset = None, None
        if double_quant:
            offset = absmax.mean()
            nested = quantize_dynamic_8bit(absmax - offset, blocksize=DOUBLE_QUANT_BLOCKSIZE)
            absmax = None
    return Quantized4bit(
        packed=pack_4bit(codes),
        absmax=absmax,
        nested=nested,
        offset=offset,
        blocksize=blocksize,
        shape=w.shape,
        dtype=w.dtype,
        quant_type=quant_type,
    )


def nf4_quantize(
    w: torch.Tensor, *, blocksize: int = 64, double_quant: bool = False
) -> Quantized4bit:
    """NF4 (QLoRA's 4-bit NormalFloat, §3 eq. 4) in blocks of ``blocksize``: see
    :func:`quantize_4bit`. Taught in notebooks/08_awq_nf4.ipynb."""
    return quantize_4bit(w, quant_type=NF4, blocksize=blocksize, double_quant=double_quant)


def fp4_quantize(
    w: torch.Tensor, *, blocksize: int = 64, double_quant: bool = False
) -> Quantized4bit:
    """bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bits) in blocks of ``blocksize``: see
    :func:`quantize_4bit`. Taught in notebooks/08_awq_nf4.ipynb."""
    return quantize_4bit(w, quant_type=FP4, blocksize=blocksize, double_quant=double_quant)


def dequantize_4bit(q: Quantized4bit) -> torch.Tensor:
    """Level · block absmax, computed in float32 and cast to the input's dtype (QLoRA eq. 6).

    Equal to bitsandbytes' ``dequantize_4bit`` bit for bit. Taught in notebooks/08_awq_nf4.ipynb.
    """
    if not isinstance(q, Quantized4bit):
        raise TypeError(f"q: expected a Quantized4bit, got {type(q).__name__}")
    # A table lookup instead of unpacking: entry b of a 256-entry table holds the two float32
    # levels that byte b stands for (high nibble first), gathered as one 8-byte item; then each
    # block times its absmax (the same float32 products as level · absmax).
    packed = q.packed.reshape(-1)
    absmax = q.block_absmax()
    if packed.numel() > _CHUNK and packed.device.type == "cpu" and q.blocksize >= 4:
        values = _dequantize_large(packed, absmax, q.blocksize, q.quant_type)
    else:
        pairs = _pair_table(q.quant_type).to(packed.device)
        values = pairs.index_select(0, packed.int()).view(torch.float32).view(-1, q.blocksize)
        values.mul_(absmax.unsqueeze(1))
    return values.view(q.shape).to(q.dtype)


def nf4_dequantize(q: Quantized4bit) -> torch.Tensor:
    """The weight that NF4 codes stand for: :func:`dequantize_4bit`. QLoRA §3, eq. 6.
    Taught in notebooks/08_awq_nf4.ipynb."""
    return dequantize_4bit(q)


def quantize_model(
    model: nn.Module,
    *,
    quant_type: str = NF4,
    blocksize: int = 64,
    double_quant: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` whose decoder linear weights are replaced by their NF4 (or FP4)
    round trip; ``model`` is left untouched. See :func:`quantize_model_`. QLoRA §3.
    Taught in notebooks/08_awq_nf4.ipynb."""
    from qlearn.offload import require_in_memory

    _check_model_args(model, quant_type, blocksize, double_quant)
    require_in_memory(model, "quantize it in place, layer by layer, with nf4.quantize_model_")
    return quantize_model_(
        copy.deepcopy(model), quant_type=quant_type, blocksize=blocksize, double_quant=double_quant
    )


def quantize_model_(
    model: nn.Module,
    *,
    quant_type: str = NF4,
    blocksize: int = 64,
    double_quant: bool = False,
) -> nn.Module:
    """In place: replace each decoder linear weight by its NF4 (or FP4) round trip; return
    ``model``.

    Each weight, seen as [out, in] (``qlearn.models.get_weight``), goes through
    :func:`quantize_4bit` and :func:`dequantize_4bit`: the values a ``load_in_4bit`` model
    multiplies with (QLoRA §3; bitsandbytes dequantizes to 16 bits before each matmul).
    Embeddings, norms and the LM head are kept. A model that accelerate offloads is quantized
    one decoder layer in memory at a time (``qlearn.offload.linear_layers_onloaded``). Taught in
    notebooks/08_awq_nf4.ipynb.
    """
    from qlearn.offload import linear_layers_onloaded

    _check_model_args(model, quant_type, blocksize, double_quant)
    for _, layer in linear_layers_onloaded(model):
        weight = weight_of(layer).detach()
        q = quantize_4bit(
            weight, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant
        )
        set_weight_(layer, q.dequantize())
    return model


def quantize_dynamic_8bit(x: torch.Tensor, *, blocksize: int = 256) -> DynamicQuantized:
    """8-bit codes into :func:`dynamic_map` with an absmax per block (the last may be shorter).

    As bitsandbytes' CPU ``quantize_blockwise`` computes them: c = max|x| per block,
    v = clamp(x · (1 / c), −1, 1), then a lookup table of 65,536 cells over [−1, 1]: cell
    k = trunc((v + 1) · ½ · 65535 + ½), and each cell holds the level nearest to its left edge
    −1 + 2k / 65535. Near a midpoint between two levels (within half a cell, 1.5e-5) a value
    can get the farther level. An all-zero block gets absmax 0 and codes 0 (which stand for the
    map's lowest value, −0.99297: times 0 it is 0). Dettmers 2016 §3; QLoRA §3 (double
    quantization). Taught in
    notebooks/08_awq_nf4.ipynb.
    """
    check_float_tensor(x, "x")
    blocksize = _check_blocksize(blocksize, None)
    with torch.no_grad():
        flat = x.detach().reshape(-1).float()
        n = flat.numel()
        n_blocks = -(-n // blocksize)
        padded = torch.zeros(n_blocks * blocksize)
        padded[:n] = flat
        blocks = padded.reshape(n_blocks, blocksize)
        absmax = blocks.abs().amax(dim=1)
        nonzero = absmax > 0
        inverse = torch.where(nonzero, 1.0 / absmax, torch.zeros(()))
        v = (blocks * inverse[:, None]).clamp_(-1, 1)
        cell = (((v + 1) * 0.5) * (_LUT_SIZE - 1) + 0.5).long()  # truncation, as a C cast
        codes = _dynamic_lut()[cell].masked_fill_(~nonzero[:, None], 0).reshape(-1)[:n]
    return DynamicQuantized(codes=codes, absmax=absmax, blocksize=blocksize)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (integers 0–15, an even number of them) two per byte, flattened.

    Byte k = codes[2k] · 16 + codes[2k + 1]: the first code of each pair in the high nibble, as
    bitsandbytes stores them. Taught in notebooks/08_awq_nf4.ipynb.
    """
    check_int_tensor(codes, "codes")
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        raise ValueError(f"codes: expected an even number of codes, got {flat.numel()}")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 15):
        raise ValueError(
            f"codes: expected values from 0 to 15, got {int(flat.min())} to {int(flat.max())}"
        )
    pairs = flat.to(torch.uint8).reshape(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """The codes of :func:`pack_4bit`, flattened: high nibble first, then low (uint8).
    Taught in notebooks/08_awq_nf4.ipynb."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected a uint8 tensor, got {describe(packed)}")
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _nearest_level(scaled: torch.Tensor, quant_type: str) -> torch.Tensor:
    """Code of the level nearest to each value of ``scaled`` (in [-1, 1]); ties to the lower.

    The thresholds are the float32 midpoints between neighbouring levels in increasing order;
    a value above k of them gets the k-th smallest level. For FP4, whose codes are not in
    increasing order, the rank is mapped back to the code (+0 before −0, a stable sort: a tiny
    positive value gets the code of −0, as in bitsandbytes).
    """
    levels = NF4_LEVELS if quant_type == NF4 else FP4_LEVELS
    order = torch.argsort(levels, stable=True)
    ordered = levels[order]
    midpoints = (ordered[:-1] + ordered[1:]) / 2
    rank = torch.searchsorted(midpoints, scaled, side="left")  # number of midpoints < value
    return order[rank].to(torch.uint8)


def _dequantize_large(
    packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str
) -> torch.Tensor:
    """:func:`dequantize_4bit` of a large tensor on the CPU, [n_blocks, blocksize] float32.

    The profile of the 256-entry path on 28M values (49152 × 576): fresh index and value
    tensors, page-faulted in, cost more than the lookup itself. Here the bytes are read two at a
    time (uint16) and looked up in a 65,536-entry table of four levels (16 bytes), in chunks of
    ``_CHUNK`` bytes that stay in cache while each block is multiplied by its absmax.
    """
    quads = _quad_table(quant_type)
    pairs_of_bytes = packed.numpy().view(np.uint16)
    scale = absmax.numpy()
    out = np.empty(pairs_of_bytes.size, dtype=np.complex128)  # 16 bytes: four float32 values
    values = out.view(np.float32).reshape(-1, blocksize)
    per_block = blocksize // 4  # uint16 items per block
    step = max(1, _CHUNK // 2 // per_block) * per_block
    for start in range(0, pairs_of_bytes.size, step):
        stop = min(start + step, pairs_of_bytes.size)
        np.take(quads, pairs_of_bytes[start:stop], out=out[start:stop], mode="clip")
        blocks = slice(start // per_block, stop // per_block)
        np.multiply(values[blocks], scale[blocks, None], out=values[blocks])
    return torch.from_numpy(values)


@functools.cache
def _quad_table(quant_type: str) -> np.ndarray:
    """65,536 entries of 16 bytes: entry k holds the four float32 levels of the two bytes that
    make up the uint16 k in memory (first byte's high nibble first)."""
    levels = (NF4_LEVELS if quant_type == NF4 else FP4_LEVELS).numpy()
    two_bytes = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(-1, 2)
    nibbles = np.stack([two_bytes >> 4, two_bytes & 0x0F], axis=2).reshape(-1, 4)
    return np.ascontiguousarray(levels[nibbles]).view(np.complex128).reshape(-1)


@functools.cache
def _pair_table(quant_type: str) -> torch.Tensor:
    """256 entries of 8 bytes: entry b holds the float32 levels[b >> 4] and levels[b & 15], in
    that order, the two values byte b stands for (viewed as int64 only to gather them as one)."""
    levels = NF4_LEVELS if quant_type == NF4 else FP4_LEVELS
    pairs = torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=1).contiguous()
    return pairs.view(torch.int64).reshape(256)


@functools.cache
def _dynamic_map() -> torch.Tensor:
    values = []
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1)
        means = (edges[:-1] + edges[1:]) / 2.0
        scaled = 10.0 ** (i - 6) * means  # a float32 product, as bitsandbytes computes it
        values += [scaled, -scaled]
    values.append(torch.tensor([0.0, 1.0]))
    return torch.cat(values).sort().values


@functools.cache
def _dynamic_lut() -> torch.Tensor:
    """bitsandbytes' CPU lookup table: cell k → the code of the level nearest to −1 + 2k/65535
    (advance while the next float32 midpoint is below the cell's value)."""
    levels = _dynamic_map()
    midpoints = 0.5 * (levels[:-1] + levels[1:])
    cells = -1.0 + (2.0 * torch.arange(_LUT_SIZE, dtype=torch.float32)) / (_LUT_SIZE - 1)
    return torch.searchsorted(midpoints, cells, side="left").to(torch.uint8)


def _check_blocksize(blocksize: object, numel: int | None) -> int:
    blocksize = check_int(blocksize, "blocksize")
    if blocksize < 2 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize: expected a power of two (64, 128, ...), got {blocksize}")
    if numel is not None and numel % blocksize:
        raise ValueError(
            f"blocksize: expected a divisor of the number of values ({numel}), got {blocksize}"
        )
    return blocksize


def _check_model_args(
    model: object, quant_type: object, blocksize: object, double_quant: object
) -> None:
    """Every argument of :func:`quantize_model_`, every layer's blocksize, before any work."""
    from qlearn.models import linear_layers

    check_module(model)
    check_choice(quant_type, "quant_type", QUANT_TYPES)
    check_bool(double_quant, "double_quant")
    for _, layer in linear_layers(model):
        _check_blocksize(blocksize, weight_of(layer).numel())
