"""GGUF's tensor types, one class each: block size, byte layout, fallback, and the codec.

llama.cpp stores a weight matrix row by row, each row cut into blocks of 32 (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1) or super-blocks of 256 (the k-quants Q2_K … Q6_K). A block holds an fp16 scale
``d`` (and a min ``m``) and one small integer code per weight. A super-block holds 8 or 16
sub-blocks whose own scales (and mins) are quantized to 4, 6 or 8 bits under an fp16 super-scale:
that is how Q4_K spends 4.5 bits per weight where Q4_1 spends 5.

Every type is one subclass of :class:`BlockFormat`, which registers itself under its name (as
gguf-py's ``gguf/quants.py`` does with ``__init_subclass__``); :data:`BLOCKS`, :data:`LAYOUTS`
and :data:`FALLBACK` are read-only views of that registry. A class states its block size, its
bytes (``layout``), its unpacked fields with their dtypes and ranges (``field_specs``),
llama.cpp's fallback type and, for a k-quant, the magnitude beyond which its float32 search
overflows; its ``quantize``/``pack``/``unpack``/``dequantize`` work on arrays of blocks at once,
never a Python loop per block. Adding a type is one class. This module holds the base, the
float types (F32, F16, BF16) and the functions over arrays; the quantized types live in

- :mod:`qlearn.gguf.legacy`: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32), as gguf-py's
  ``gguf/quants.py`` computes them; formats of Gerganov et al., ggml and llama.cpp (2023),
  ``ggml/src/ggml-common.h``;
- :mod:`qlearn.gguf.kquants`: Q2_K … Q6_K, Kawrakow, "k-quants", llama.cpp pull request #1684
  (2023), ``quantize_row_q*_K_ref`` of ``ggml/src/ggml-quants.c`` (the sub-block searches:
  :mod:`qlearn.gguf._kquant_search`).

:func:`quantize` gives the bytes of ``gguf.quants.quantize`` for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 and of
llama.cpp's C reference for the k-quants, on any finite float32 input; :func:`dequantize` gives
``gguf.quants.dequantize``'s floats for every type. Arrays follow gguf-py's conventions: numpy,
rows along the last dimension (a multiple of the block size), quantized independently.
Taught in notebooks/06_gguf.ipynb.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from qlearn._checks import check_choice, check_float_tensor, check_int, describe
from qlearn._quantized import bits_per_weight as _bits_per_weight

__all__ = [
    "BF16",
    "BLOCKS",
    "F16",
    "F32",
    "FALLBACK",
    "LAYOUTS",
    "BlockFormat",
    "Field",
    "GGUFTensor",
    "dequantize",
    "fallback_type",
    "pack_block",
    "quantize",
    "quantize_tensor",
    "sub_block_scales",
    "tensor_bytes",
    "unpack_block",
]

f32, f16 = np.float32, np.float16

Fields = dict[str, np.ndarray]
"""A batch of blocks, unpacked: one array per field, one row per block."""


@dataclass(frozen=True)
class Field:
    """One field of an unpacked block: its shape per block, dtype and (integers) range.

    fp16 scales (``d``, ``dmin``, ``m``) have shape ``()``; sub-block ``scales``/``mins`` one
    entry per sub-block; the codes ``q`` one per weight, in element order.
    """

    name: str
    shape: tuple[int, ...] = ()
    dtype: type = f16
    low: int | None = None
    high: int | None = None


_REGISTRY: dict[str, type[BlockFormat]] = {}


class BlockFormat:
    """One GGUF tensor type: ``block_size`` weights stored in ``type_size`` bytes.

    A subclass states ``block_size``, ``layout`` (the block's bytes in order, as ggml-common.h's
    struct: ``(name, bytes)`` pairs, which sum to ``type_size``), ``field_specs`` (what
    :meth:`unpack` returns: fp16 scales, per-sub-block ``scales``/``mins`` and codes ``q``),
    ``fallback`` (llama.cpp's type for rows that are no multiple of the block, if any) and
    ``search_limit`` (magnitudes beyond which its float32 search overflows), and implements
    four class methods over arrays of blocks:

    - ``quantize(blocks)``: float32 ``[nb, block_size]`` → fields (:data:`Fields`);
    - ``pack(fields)`` → uint8 ``[nb, type_size]`` and ``unpack(raw)``, its inverse;
    - ``dequantize(fields)`` → float32 ``[nb, block_size]``, in gguf-py's order of operations.

    A k-quant (:mod:`qlearn.gguf.kquants`) adds ``search(blocks)``: its sub-blocks' float
    scales before they are quantized (what :func:`sub_block_scales` shows).

    Defining the class registers it under its name (the class name, or ``name=`` in the class
    statement); ``register=False`` makes a base that shares code without being a type.
    """

    name: ClassVar[str]
    block_size: ClassVar[int]
    layout: ClassVar[tuple[tuple[str, int], ...]]
    field_specs: ClassVar[tuple[Field, ...]] = ()
    fallback: ClassVar[str | None] = None
    search_limit: ClassVar[float] = math.inf
    takes_importance: ClassVar[bool] = False
    """True for the types whose ``quantize(blocks, importance)`` takes per-weight importance
    (:meth:`importance_weights` of the importance matrix): Q4_0 … Q5_1, Q2_K … Q6_K, IQ4_NL,
    IQ4_XS."""
    chunk: ClassVar[int] = 1 << 14  # blocks per piece of work in quantize
    # derived from the above when the class is defined
    type_size: ClassVar[int]
    fields: ClassVar[tuple[str, ...]]
    bits_per_weight: ClassVar[float]
    """8 · bytes per block / weights per block (Q4_K: 8 · 144 / 256 = 4.5)."""

    def __init_subclass__(
        cls, *, name: str | None = None, register: bool = True, **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        if not register:
            return
        cls.name = name or cls.__name__
        if cls.name in _REGISTRY:
            raise ValueError(f"name: the GGUF type {cls.name!r} is already registered")
        cls.type_size = sum(size for _, size in cls.layout)
        cls.fields = tuple(spec.name for spec in cls.field_specs)
        cls.bits_per_weight = 8 * cls.type_size / cls.block_size
        _REGISTRY[cls.name] = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> BlockFormat:
        raise TypeError(
            f"{cls.__name__} is a format, used as a class: {cls.__name__}.quantize(...)"
        )

    @classmethod
    def importance_weights(cls, rows: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
        """What ``quantize(blocks, importance)`` receives for ``rows`` (float32 [..., n]) and
        an importance matrix (float32 [n]): the matrix broadcast over the rows; a type whose
        weights depend on the whole row (the legacy types' σ²) computes them here."""
        return np.ascontiguousarray(np.broadcast_to(imatrix, rows.shape))

    @classmethod
    def quantize(cls, blocks: np.ndarray) -> Fields:
        raise NotImplementedError

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        raise NotImplementedError

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        raise NotImplementedError


class _RegistryView(Mapping[str, Any]):
    """A read-only, live view of the registry: ``{type name: what(format)}`` for the formats
    ``keep`` accepts, in the order they were defined."""

    def __init__(self, what: Callable[[type[BlockFormat]], Any], keep: Callable[..., bool]):
        self._what, self._keep = what, keep

    def __getitem__(self, name: str) -> Any:
        fmt = _REGISTRY[name]
        if not self._keep(fmt):
            raise KeyError(name)
        return self._what(fmt)

    def __iter__(self) -> Iterator[str]:
        return (name for name, fmt in _REGISTRY.items() if self._keep(fmt))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


BLOCKS: Mapping[str, type[BlockFormat]] = _RegistryView(lambda f: f, lambda f: True)
"""The types qlearn reads and writes, with llama.cpp's block sizes (``GGML_QUANT_SIZES``)."""

LAYOUTS: Mapping[str, tuple[tuple[str, int], ...]] = _RegistryView(
    lambda f: f.layout, lambda f: f.block_size > 1
)
"""The bytes of a block, in order (``ggml-common.h``'s structs): fp16 scales, packed sub-block
scales, the codes' low bits (qs/ql) and high bits (qh/hmask)."""

FALLBACK: Mapping[str, str] = _RegistryView(lambda f: f.fallback, lambda f: f.fallback is not None)
"""llama.cpp's ``tensor_type_fallback`` (src/llama-quant.cpp): a k-quant whose rows are not a
multiple of 256 becomes this 32-block type; a type whose rows are not a multiple of its block
becomes F16."""


# ---------------------------------------------------------------------------------------------
# Float types: one value per "block"
# ---------------------------------------------------------------------------------------------


class _Float(BlockFormat, register=False):
    """A float type: each weight's bits, no scale (gguf-py converts with numpy's astype)."""

    block_size = 1

    @classmethod
    def quantize(cls, blocks: np.ndarray) -> Fields:
        return {"values": blocks}

    @classmethod
    def dequantize(cls, fields: Fields) -> np.ndarray:
        return fields["values"]


class F32(_Float):
    layout = (("value", 4),)

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        return np.ascontiguousarray(fields["values"]).astype(f32).view(np.uint8)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        return {"values": np.ascontiguousarray(raw).view(f32).astype(f32)}


class F16(_Float):
    layout = (("value", 2),)

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        return np.ascontiguousarray(fields["values"]).astype(f16).view(np.uint8)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        return {"values": np.ascontiguousarray(raw).view(f16).astype(f32)}


class BF16(_Float):
    """float32 → bfloat16 bits, round half to even (gguf-py's BF16, ggml's fp32_to_bf16)."""

    layout = (("value", 2),)

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        n = np.ascontiguousarray(fields["values"]).view(np.uint32).astype(np.uint64)
        return ((n + (0x7FFF + ((n >> 16) & 1))) >> 16).astype(np.uint16).view(np.uint8)

    @classmethod
    def unpack(cls, raw: np.ndarray) -> Fields:
        bits = np.ascontiguousarray(raw).view(np.int16).astype(np.int32) << 16
        return {"values": bits.view(f32).astype(f32)}


# ---------------------------------------------------------------------------------------------
# Arrays of blocks: the public functions
# ---------------------------------------------------------------------------------------------


def quantize(
    data: Any, qtype: str, *, threads: int | None = None, imatrix: Any = None
) -> np.ndarray:
    """Quantize ``data`` (float, last dimension a multiple of the block) to GGUF ``qtype`` bytes.

    Returns uint8 of shape ``(*data.shape[:-1], n_blocks · type_size)``, as
    ``gguf.quants.quantize`` (which returns F32/F16 as floats; here every type is bytes).
    Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/BF16 give gguf-py's bytes, Q2_K…Q6_K those of llama.cpp's
    ``quantize_row_q*_K_ref`` (no importance matrix). Blocks are processed in chunks, on
    ``threads`` threads (default: torch's thread count); the bytes never depend on it.
    ``imatrix``: an importance matrix for this tensor, one non-negative value per input column
    (the last dimension), as ``llama-quantize --imatrix`` passes to ggml's ``quantize_*``
    (:func:`qlearn.gguf.importance_matrix` computes one); only the types with
    ``takes_importance`` (Q4_0 … Q5_1, Q2_K … Q6_K, IQ4_NL, IQ4_XS) accept it.
    Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    x = _float32_rows(data, "data", fmt)
    threads = _check_threads(threads)
    importance = None if imatrix is None else _check_imatrix(imatrix, fmt, x.shape[-1])
    if fmt.block_size == 1:
        with np.errstate(over="ignore"):  # beyond fp16's range: inf, as gguf-py
            return fmt.pack(fmt.quantize(x)).reshape(*x.shape[:-1], -1)
    blocks = x.reshape(-1, fmt.block_size)
    if importance is not None:
        importance = fmt.importance_weights(x, importance).reshape(blocks.shape)
    raw = _apply_in_chunks(fmt, blocks, threads, importance)
    return raw.reshape(*x.shape[:-1], x.shape[-1] // fmt.block_size * fmt.type_size)


def dequantize(raw: Any, qtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Float32 values of GGUF ``qtype`` bytes: equal to ``gguf.quants.dequantize``'s.

    ``raw`` is uint8 with a last dimension that is a whole number of blocks (its shape gives
    the result's, as in gguf-py), or any uint8 buffer when ``shape`` (the values' shape) is
    given. Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    raw = _check_raw(raw, fmt, shape)
    with np.errstate(all="ignore"):  # inf/NaN scales give inf/NaN values, as in gguf-py
        values = fmt.dequantize(fmt.unpack(raw.reshape(-1, fmt.type_size)))
    out_shape = shape or (*raw.shape[:-1], raw.shape[-1] // fmt.type_size * fmt.block_size)
    return values.reshape(out_shape)


def unpack_block(raw_block: Any, qtype: str) -> dict[str, Any]:
    """The named fields of one block: fp16 scales as ``np.float16`` scalars, per-sub-block
    scales/mins and codes as integer arrays (codes in element order, e.g. Q4_0's 0..15 stand
    for d·(q − 8), Q6_K's −32..31 for d·scale·q). :func:`pack_block` is the inverse.
    Taught in notebooks/06_gguf.ipynb (a block drawn byte by byte).
    """
    fmt = _check_qtype(qtype, blocks_only=True)
    raw = _check_raw(raw_block, fmt, (fmt.block_size,))
    fields = fmt.unpack(raw.reshape(1, -1))
    return {k: v[0] for k, v in fields.items()}


def pack_block(fields: Mapping[str, Any], qtype: str) -> np.ndarray:
    """The bytes (uint8, ``type_size`` of them) of one block from its named fields.

    The inverse of :func:`unpack_block`; every field must be present and in range (a Q4_0
    code in 0..15, a Q4_K scale in 0..63, ...). Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype, blocks_only=True)
    return fmt.pack(_check_fields(fields, fmt))[0]


def tensor_bytes(shape: tuple[int, ...], qtype: str) -> int:
    """Bytes of a tensor of ``shape`` (values) stored as ``qtype``: rows × blocks × type size.

    Taught in notebooks/06_gguf.ipynb (file sizes per recipe)."""
    fmt = _check_qtype(qtype)
    if not shape or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape: expected a tuple of positive ints, got {shape!r}")
    if shape[-1] % fmt.block_size:
        raise ValueError(
            f"shape: expected a last dimension that is a multiple of {fmt.name}'s block "
            f"({fmt.block_size}), got {shape[-1]}"
        )
    return int(np.prod(shape)) // fmt.block_size * fmt.type_size


def fallback_type(qtype: str, row_length: int) -> str:
    """The type llama.cpp uses for rows of ``row_length`` when ``qtype`` does not fit them.

    ``row_length`` a multiple of the block: ``qtype`` itself; else :data:`FALLBACK` (Q4_K →
    Q5_0, ...), and F16 when even that does not fit (llama.cpp's ``tensor_type_fallback``).
    The default model's hidden size, 576, is no multiple of 256: only ffn_down (rows of 1536)
    can hold a k-quant. Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    row_length = check_int(row_length, "row_length", minimum=1)
    if row_length % fmt.block_size == 0:
        return fmt.name
    fallback = fmt.fallback or fmt.name
    return fallback if row_length % BLOCKS[fallback].block_size == 0 else "F16"


def sub_block_scales(data: Any, qtype: str) -> dict[str, np.ndarray]:
    """The float scales (and mins) a k-quant's sub-block search finds, before the super-block
    quantizes them: float32 ``[..., blocks per row, sub-blocks]``.

    Q4_K/Q5_K/Q2_K: x ≈ scale·q − min with q ≥ 0; Q3_K/Q6_K: x ≈ scale·q, signed. Compare with
    ``d·scales`` (and ``dmin·mins``) of :func:`unpack_block` to see what 6 or 4 bits keep.
    Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    if not hasattr(fmt, "search"):  # only a k-quant searches sub-block scales
        raise ValueError(f"qtype: expected a k-quant (Q2_K … Q6_K), got {qtype!r}")
    x = _float32_rows(data, "data", fmt)
    with np.errstate(all="ignore"):
        _, _, scales, mins = fmt.search(x.reshape(-1, fmt.block_size))
    shape = (*x.shape[:-1], x.shape[-1] // fmt.block_size, -1)
    out = {"scales": scales.reshape(shape)}
    if mins is not None:
        out["mins"] = mins.reshape(shape)
    return out


@dataclass(frozen=True, eq=False)
class GGUFTensor:
    """A tensor stored as one GGUF type: its bytes as a GGUF file holds them.

    ``raw`` is uint8 ``[*shape[:-1], blocks per row · type_size]`` (what :func:`quantize`
    returns), ``shape`` the values' shape. ``dequantize()`` gives the float32 values as a torch
    tensor (gguf-py's floats; :func:`dequantize` gives them as numpy), ``nbytes()`` the length of
    ``raw`` and ``bits_per_weight()`` 8 · that / the number of values (Q4_K: 4.5).
    Taught in notebooks/13_capstone.ipynb.
    """

    raw: np.ndarray
    qtype: str
    shape: tuple[int, ...]

    def dequantize(self) -> torch.Tensor:
        """The float32 values, shape ``shape``, as a torch tensor."""
        return torch.from_numpy(dequantize(self.raw, self.qtype, self.shape))

    def nbytes(self) -> int:
        """Bytes the tensor stores: every block's scales and codes (``raw.nbytes``)."""
        return int(self.raw.nbytes)

    def bits_per_weight(self) -> float:
        return _bits_per_weight(self.nbytes(), math.prod(self.shape))


def quantize_tensor(
    data: Any, qtype: str, *, threads: int | None = None, imatrix: Any = None
) -> GGUFTensor:
    """``data`` (numpy or torch floats) stored as GGUF ``qtype``: :func:`quantize`'s bytes with
    their type and shape, a :class:`qlearn.Quantized`. Taught in notebooks/13_capstone.ipynb."""
    raw = quantize(data, qtype, threads=threads, imatrix=imatrix)
    return GGUFTensor(raw, qtype, tuple(int(n) for n in data.shape))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _apply_in_chunks(
    fmt: type[BlockFormat], blocks: np.ndarray, threads: int, importance: np.ndarray | None = None
) -> np.ndarray:
    """pack(quantize(blocks)) over pieces of ``fmt.chunk`` blocks, on ``threads`` threads
    (numpy releases the GIL inside its loops). Every piece is independent: same bytes."""
    out = np.empty((blocks.shape[0], fmt.type_size), dtype=np.uint8)
    overflow = []
    chunk = fmt.chunk

    def work(start: int) -> None:
        piece = blocks[start : start + chunk]
        with np.errstate(all="ignore"):  # inf/NaN lanes are computed and then discarded, as C
            if importance is None:
                fields = fmt.quantize(piece)
            else:
                fields = fmt.quantize(piece, importance[start : start + chunk])
            out[start : start + chunk] = fmt.pack(fields)
        scales = [v for v in fields.values() if v.dtype == f16]
        if any(not np.isfinite(v).all() for v in scales):
            overflow.append(start)

    starts = range(0, blocks.shape[0], chunk)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(work, starts))
    else:
        for start in starts:
            work(start)
    check_amax = overflow or fmt.search_limit < math.inf
    amax = float(np.abs(blocks).max()) if check_amax else 0.0
    if overflow or amax > fmt.search_limit:
        warnings.warn(
            f"quantize: values up to {amax:.3g} overflow {fmt.name}'s float32 search or fp16 "
            "scales: those blocks dequantize to inf, NaN or 0, as llama.cpp's do",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def _check_imatrix(imatrix: Any, fmt: type[BlockFormat], columns: int) -> np.ndarray:
    """An importance matrix for rows of ``columns``: float32 [columns], finite, non-negative."""
    if not fmt.takes_importance:
        takers = ", ".join(n for n, f in _REGISTRY.items() if f.takes_importance)
        raise ValueError(
            f"imatrix: {fmt.name} takes no importance matrix here (these do: {takers})"
        )
    if isinstance(imatrix, torch.Tensor):
        imatrix = imatrix.detach().float().cpu().numpy()
    values = np.asarray(imatrix, dtype=f32)
    if values.shape != (columns,):
        raise ValueError(
            f"imatrix: expected one value per input column, shape ({columns},), got {values.shape}"
        )
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("imatrix: expected finite, non-negative values (a mean of x² per column)")
    return values


def _check_qtype(qtype: Any, *, blocks_only: bool = False) -> type[BlockFormat]:
    names = [n for n, f in _REGISTRY.items() if f.block_size > 1 or not blocks_only]
    check_choice(qtype, "qtype", names)
    return _REGISTRY[qtype]


def _check_threads(threads: Any) -> int:
    if threads is None:
        return max(1, torch.get_num_threads())
    return check_int(threads, "threads", minimum=1)


def _float32_rows(data: Any, name: str, fmt: type[BlockFormat]) -> np.ndarray:
    """``data`` as a float32 numpy array, checked: non-empty, finite, rows fit the block."""
    if isinstance(data, torch.Tensor):
        check_float_tensor(data, name, allow_empty=True, finite=False)
        data = data.detach().float().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array (or torch tensor), got {describe(data)}")
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"{name}: expected floating-point values, got dtype {data.dtype}")
    if data.ndim == 0 or data.size == 0:
        raise ValueError(f"{name}: expected a non-empty array of rows, got shape {data.shape}")
    if data.shape[-1] % fmt.block_size:
        raise ValueError(
            f"{name}: expected a last dimension that is a multiple of {fmt.name}'s block "
            f"({fmt.block_size}), got shape {data.shape}"
        )
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(data, dtype=f32)
    if not x.flags.writeable:  # torch.from_numpy, used inside, warns on read-only memory
        x = x.copy()
    # NaN or Inf make any sum non-finite (torch's sum is ~3x numpy's); one that overflows
    # float32 only asks for a closer look
    suspicious = not bool(torch.isfinite(torch.from_numpy(x).sum()))
    if suspicious and not np.isfinite(x).all():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise ValueError(
            f"{name}: expected finite values, got {n_nan} NaN and {n_inf} Inf (after the cast "
            f"to float32) in an array of shape {data.shape}"
        )
    return x


def _check_raw(raw: Any, fmt: type[BlockFormat], shape: tuple[int, ...] | None) -> np.ndarray:
    """``raw`` as uint8 bytes whose length fits ``fmt`` (and ``shape`` if given)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"raw: expected a uint8 numpy array or bytes, got {describe(raw)}")
    if raw.dtype != np.uint8:
        raise TypeError(f"raw: expected uint8 bytes, got dtype {raw.dtype}")
    if raw.ndim == 0 or raw.size == 0:
        raise ValueError(f"raw: expected a non-empty array of bytes, got shape {raw.shape}")
    raw = np.ascontiguousarray(raw)
    if shape is not None:
        if (
            not isinstance(shape, tuple)
            or not shape
            or any(
                isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in shape
            )
        ):
            raise ValueError(f"shape: expected a tuple of positive ints, got {shape!r}")
        expected = tensor_bytes(tuple(int(n) for n in shape), fmt.name)
        if raw.size != expected:
            raise ValueError(
                f"raw: expected {expected} bytes for {fmt.name} values of shape {shape}, "
                f"got {raw.size}"
            )
        return raw.reshape(-1, fmt.type_size)
    if raw.shape[-1] % fmt.type_size:
        raise ValueError(
            f"raw: expected a last dimension that is a multiple of {fmt.name}'s "
            f"{fmt.type_size} bytes per block, got shape {raw.shape}"
        )
    return raw


def _check_fields(fields: Any, fmt: type[BlockFormat]) -> Fields:
    """One block's fields → a batch of one, each checked for presence, shape and range."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields: expected a mapping of field names, got {describe(fields)}")
    if set(fields) != set(fmt.fields):
        raise ValueError(
            f"fields: expected exactly {list(fmt.fields)} for {fmt.name}, got {sorted(fields)}"
        )
    batch = {}
    for spec in fmt.field_specs:
        key = spec.name
        value = np.asarray(fields[key])
        if value.shape != spec.shape:
            raise ValueError(f"fields[{key!r}]: expected shape {spec.shape}, got {value.shape}")
        if spec.low is not None:
            lo, hi = spec.low, spec.high
            if not np.issubdtype(value.dtype, np.integer) or value.min() < lo or value.max() > hi:
                raise ValueError(f"fields[{key!r}]: expected integers from {lo} to {hi}")
        batch[key] = value.astype(spec.dtype)[None]
    return batch
