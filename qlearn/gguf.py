"""GGUF: llama.cpp's block formats, byte for byte, and the files that hold them.

llama.cpp stores a weight matrix row by row, each row cut into blocks of 32 (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1) or super-blocks of 256 (the k-quants Q2_K … Q6_K). A block holds an fp16 scale
``d`` (and a min ``m``) and one small integer code per weight. A super-block holds 8 or 16
sub-blocks whose own scales (and mins) are quantized to 4, 6 or 8 bits under an fp16 super-scale:
that is how Q4_K spends 4.5 bits per weight where Q4_1 spends 5.

- Formats: Gerganov et al., ggml and llama.cpp (2023), ``ggml/src/ggml-common.h``; the file
  format: ``ggml/docs/gguf.md``. Legacy quantizers as gguf-py's ``gguf/quants.py``.
- k-quants: Kawrakow, "k-quants", llama.cpp pull request #1684 (2023),
  ``quantize_row_q*_K_ref`` of ``ggml/src/ggml-quants.c`` (see :mod:`qlearn._kquants`).

:func:`quantize` gives the bytes of ``gguf.quants.quantize`` for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 and of
llama.cpp's C reference for the k-quants, on any finite float32 input; :func:`dequantize` gives
``gguf.quants.dequantize``'s floats for every type. Arrays follow gguf-py's conventions: numpy,
rows along the last dimension (a multiple of the block size), quantized independently.
:func:`save_gguf` and :func:`load_gguf` write and read whole models through the ``gguf`` package.
Taught in notebooks/06_gguf.ipynb.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qlearn import _kquants as kq
from qlearn._checks import check_choice, check_int

__all__ = [
    "BLOCKS",
    "FALLBACK",
    "LAYOUTS",
    "RECIPES",
    "BlockFormat",
    "dequantize",
    "draw_block",
    "fallback_type",
    "load_gguf",
    "pack_block",
    "quantize",
    "quantize_model",
    "quantize_model_",
    "recipe_types",
    "save_gguf",
    "sub_block_scales",
    "tensor_bytes",
    "tensor_shapes",
    "unpack_block",
]

f32, f16 = np.float32, np.float16
_BELOW_HALF = float(np.nextafter(f32(0.5), f32(0)))
"""0.5 − 2⁻²⁵: trunc(v + sign(v)·this) is C's roundf for every float32 v (with 0.5 itself,
0.49999997 + 0.5 would round up to 1 in float32)."""


@dataclass(frozen=True)
class BlockFormat:
    """One GGUF tensor type: ``block_size`` weights stored in ``type_size`` bytes.

    ``fields`` names what :func:`unpack_block` returns: fp16 scales (``d``, ``dmin``, ``m``),
    per-sub-block ``scales``/``mins`` and the codes ``q``, in element order.
    """

    name: str
    block_size: int
    type_size: int
    fields: tuple[str, ...]

    @property
    def bits_per_weight(self) -> float:
        """8 · bytes per block / weights per block (Q4_K: 8 · 144 / 256 = 4.5)."""
        return 8 * self.type_size / self.block_size


BLOCKS: dict[str, BlockFormat] = {
    fmt.name: fmt
    for fmt in [
        BlockFormat("F32", 1, 4, ()),
        BlockFormat("F16", 1, 2, ()),
        BlockFormat("BF16", 1, 2, ()),
        BlockFormat("Q8_0", 32, 34, ("d", "q")),
        BlockFormat("Q4_0", 32, 18, ("d", "q")),
        BlockFormat("Q4_1", 32, 20, ("d", "m", "q")),
        BlockFormat("Q5_0", 32, 22, ("d", "q")),
        BlockFormat("Q5_1", 32, 24, ("d", "m", "q")),
        BlockFormat("Q2_K", 256, 84, ("d", "dmin", "scales", "mins", "q")),
        BlockFormat("Q3_K", 256, 110, ("d", "scales", "q")),
        BlockFormat("Q4_K", 256, 144, ("d", "dmin", "scales", "mins", "q")),
        BlockFormat("Q5_K", 256, 176, ("d", "dmin", "scales", "mins", "q")),
        BlockFormat("Q6_K", 256, 210, ("d", "scales", "q")),
    ]
}
"""The types qlearn reads and writes, with llama.cpp's block sizes (``GGML_QUANT_SIZES``)."""

LAYOUTS: dict[str, tuple[tuple[str, int], ...]] = {
    "Q8_0": (("d", 2), ("qs", 32)),
    "Q4_0": (("d", 2), ("qs", 16)),
    "Q4_1": (("d", 2), ("m", 2), ("qs", 16)),
    "Q5_0": (("d", 2), ("qh", 4), ("qs", 16)),
    "Q5_1": (("d", 2), ("m", 2), ("qh", 4), ("qs", 16)),
    "Q2_K": (("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)),
    "Q3_K": (("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)),
    "Q4_K": (("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)),
    "Q5_K": (("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)),
    "Q6_K": (("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)),
}
"""The bytes of a block, in order (``ggml-common.h``'s structs): fp16 scales, packed sub-block
scales, the codes' low bits (qs/ql) and high bits (qh/hmask)."""

FALLBACK: dict[str, str] = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
"""llama.cpp's ``tensor_type_fallback`` (src/llama-quant.cpp): a k-quant whose rows are not a
multiple of 256 becomes this 32-block type; a type whose rows are not a multiple of its block
becomes F16."""

RECIPES: dict[str, str] = {
    "<type>": "every linear weight of the decoder in that type (token embedding: see below)",
    "Q4_K_M": "llama.cpp's Q4_K_M: Q4_K, and Q6_K for attn_v and ffn_down in the layers "
    "use_more_bits picks (the first and last eighth, every third between)",
    "{kind: type}": "a type per tensor kind ('attn_q', 'ffn_down', 'token_embd', ...); "
    "'default' for the other 2-D tensors (F32 without it)",
}
"""What :func:`recipe_types` accepts. With a type name or "Q4_K_M", the token embedding (and a
separate output matrix) gets Q6_K as llama.cpp gives its output tensor (the type itself for F32,
F16, BF16 and Q8_0); 1-D tensors (norms) always stay F32; then :data:`FALLBACK` applies."""


# ---------------------------------------------------------------------------------------------
# Arrays of blocks
# ---------------------------------------------------------------------------------------------


def quantize(data: Any, qtype: str, *, threads: int | None = None) -> np.ndarray:
    """Quantize ``data`` (float, last dimension a multiple of the block) to GGUF ``qtype`` bytes.

    Returns uint8 of shape ``(*data.shape[:-1], n_blocks · type_size)``, as
    ``gguf.quants.quantize`` (which returns F32/F16 as floats; here every type is bytes).
    Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/BF16 give gguf-py's bytes, Q2_K…Q6_K those of llama.cpp's
    ``quantize_row_q*_K_ref`` (no importance matrix). Blocks are processed in chunks, on
    ``threads`` threads (default: torch's thread count); the bytes never depend on it.
    Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    x = _float32_rows(data, "data", fmt)
    threads = _check_threads(threads)
    if fmt.block_size == 1:
        with np.errstate(over="ignore"):  # beyond fp16's range: inf, as gguf-py
            return _CODECS[fmt.name].pack({"values": x}).reshape(*x.shape[:-1], -1)
    blocks = x.reshape(-1, fmt.block_size)
    raw = _apply_in_chunks(_CODECS[fmt.name], blocks, fmt, threads)
    return raw.reshape(*x.shape[:-1], x.shape[-1] // fmt.block_size * fmt.type_size)


def dequantize(raw: Any, qtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Float32 values of GGUF ``qtype`` bytes: equal to ``gguf.quants.dequantize``'s.

    ``raw`` is uint8 with a last dimension that is a whole number of blocks (its shape gives
    the result's, as in gguf-py), or any uint8 buffer when ``shape`` (the values' shape) is
    given. Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    raw = _check_raw(raw, fmt, shape)
    codec = _CODECS[fmt.name]
    with np.errstate(all="ignore"):  # inf/NaN scales give inf/NaN values, as in gguf-py
        values = codec.values(codec.unpack(raw.reshape(-1, fmt.type_size)))
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
    fields = _CODECS[fmt.name].unpack(raw.reshape(1, -1))
    return {k: v[0] for k, v in fields.items()}


def pack_block(fields: Mapping[str, Any], qtype: str) -> np.ndarray:
    """The bytes (uint8, ``type_size`` of them) of one block from its named fields.

    The inverse of :func:`unpack_block`; every field must be present and in range (a Q4_0
    code in 0..15, a Q4_K scale in 0..63, ...). Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype, blocks_only=True)
    batch = _check_fields(fields, fmt)
    return _CODECS[fmt.name].pack(batch)[0]


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
    fallback = FALLBACK.get(fmt.name, fmt.name)
    return fallback if row_length % BLOCKS[fallback].block_size == 0 else "F16"


def sub_block_scales(data: Any, qtype: str) -> dict[str, np.ndarray]:
    """The float scales (and mins) a k-quant's sub-block search finds, before the super-block
    quantizes them: float32 ``[..., blocks per row, sub-blocks]``.

    Q4_K/Q5_K/Q2_K: x ≈ scale·q − min with q ≥ 0; Q3_K/Q6_K: x ≈ scale·q, signed. Compare with
    ``d·scales`` (and ``dmin·mins``) of :func:`unpack_block` to see what 6 or 4 bits keep.
    Taught in notebooks/06_gguf.ipynb.
    """
    fmt = _check_qtype(qtype)
    if fmt.block_size != 256:
        raise ValueError(f"qtype: expected a k-quant (Q2_K … Q6_K), got {qtype!r}")
    x = _float32_rows(data, "data", fmt)
    with np.errstate(all="ignore"):
        _, _, scales, mins = kq.search(x.reshape(-1, 256), fmt.name)
    shape = (*x.shape[:-1], x.shape[-1] // 256, -1)
    out = {"scales": scales.reshape(shape)}
    if mins is not None:
        out["mins"] = mins.reshape(shape)
    return out


def draw_block(raw_block: Any, qtype: str, *, title: str | None = None) -> Any:
    """A matplotlib Figure of one block's bytes, coloured by field (:data:`LAYOUTS`), each
    cell showing its hex value; 16 bytes a row. Taught in notebooks/06_gguf.ipynb."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    fmt = _check_qtype(qtype, blocks_only=True)
    raw = _check_raw(raw_block, fmt, (fmt.block_size,)).ravel()
    per_row = 16 if fmt.type_size > 36 else fmt.type_size
    n_rows = -(-fmt.type_size // per_row)
    colors = dict(zip(["d", "dmin", "m", "scales", "hmask", "qh", "qs", "ql"],
                      plt.get_cmap("tab10").colors, strict=False))  # fmt: skip
    fig, ax = plt.subplots(figsize=(0.32 * per_row + 2.2, 0.32 * n_rows + 0.9))
    position = 0
    for field, size in LAYOUTS[fmt.name]:
        for _ in range(size):
            row, col = divmod(position, per_row)
            ax.add_patch(Rectangle((col, -row), 1, 1, facecolor=colors[field], edgecolor="white"))
            ax.text(col + 0.5, -row + 0.5, f"{raw[position]:02x}", ha="center", va="center",
                    fontsize=7, color="white", family="monospace")  # fmt: skip
            position += 1
    ax.set_xlim(0, per_row)
    ax.set_ylim(-n_rows + 1, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    handles = [Patch(color=colors[f], label=f"{f} ({n} B)") for f, n in LAYOUTS[fmt.name]]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
              fontsize=8)  # fmt: skip
    ax.set_title(
        title
        or f"{fmt.name}: {fmt.type_size} bytes hold {fmt.block_size} weights "
        f"({fmt.bits_per_weight:g} bits each)"
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Models and files
# ---------------------------------------------------------------------------------------------


def recipe_types(model: Any, recipe: str | Mapping[str, str]) -> dict[str, str]:
    """``{GGUF tensor name: type}`` for every tensor a GGUF file of ``model`` holds.

    Names are llama.cpp's (``blk.3.attn_v.weight``), from the ``gguf`` package's name map as
    transformers' GGUF loader uses it; see :data:`RECIPES` for ``recipe`` and
    :data:`FALLBACK` for rows that do not fit. Taught in notebooks/06_gguf.ipynb.
    """
    rule = _recipe_rule(recipe)
    tensors = _gguf_tensors(model)
    n_layers = int(model.config.num_hidden_layers)
    types = {}
    for name, (_, tensor) in tensors.items():
        if tensor.ndim < 2:
            types[name] = "F32"
            continue
        kind, layer = _kind(name)
        types[name] = fallback_type(rule(kind, layer, n_layers), int(tensor.shape[-1]))
    return types


def tensor_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """``{GGUF tensor name: shape}`` of the tensors a GGUF file of ``model`` holds (numpy
    order: rows last; a tied LM head is not stored twice). Taught in notebooks/06_gguf.ipynb."""
    return {name: tuple(t.shape) for name, (_, t) in _gguf_tensors(model).items()}


def quantize_model(model: Any, recipe: str | Mapping[str, str]) -> Any:
    """A copy of ``model`` whose decoder linear weights are quantized to ``recipe``'s types and
    dequantized again (GGUF's round trip, in memory); ``model`` is left untouched.
    See :func:`quantize_model_`. Taught in notebooks/06_gguf.ipynb."""
    _recipe_rule(recipe)
    return quantize_model_(copy.deepcopy(model), recipe)


def quantize_model_(model: Any, recipe: str | Mapping[str, str]) -> Any:
    """In place: replace every decoder linear weight by ``dequantize(quantize(W, t), t)`` with
    ``t`` its type under ``recipe`` (see :func:`recipe_types`); return ``model``.

    Embeddings, norms and the LM head are kept, as in the course's anchor figures; the values
    are those a GGUF file written by :func:`save_gguf` holds. Taught in
    notebooks/06_gguf.ipynb (perplexity per type).
    """
    from qlearn.models import get_weight, linear_layers, set_weight_

    types = recipe_types(model, recipe)
    by_hf_name = {hf: name for name, (hf, _) in _gguf_tensors(model).items()}
    for layer_name, layer in linear_layers(model):
        qtype = types[by_hf_name[f"{layer_name}.weight"]]
        weight = get_weight(layer).detach().float().cpu().numpy()
        values = dequantize(quantize(weight, qtype), qtype)
        set_weight_(layer, _torch().from_numpy(values))
    return model


def save_gguf(
    path: str | os.PathLike[str],
    model: Any,
    recipe: str | Mapping[str, str],
    *,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model`` as a GGUF file with tensors typed by ``recipe``; return the path.

    Metadata (architecture, hyper-parameters, tokenizer, chat template) are copied from
    ``source``, the GGUF the model came from (default: the course's model file), whose tensor
    list the model must match. Tensors get llama.cpp's names and, for Llama, llama.cpp's
    interleaved row order of attn_q/attn_k (``convert_hf_to_gguf.py``'s ``permute``, which
    transformers undoes on load). Written with ``gguf.GGUFWriter``. Taught in
    notebooks/06_gguf.ipynb.
    """
    from gguf import (
        GGML_QUANT_VERSION,
        GGMLQuantizationType,
        GGUFValueType,
        GGUFWriter,
        LlamaFileType,
    )

    path = Path(os.fspath(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the folder {path.parent} does not exist")
    types = recipe_types(model, recipe)
    tensors = _gguf_tensors(model)
    permute = _permutation(model)
    if source is None:
        from qlearn.models import default_gguf_path

        source = default_gguf_path()
    reader = _open_gguf(source, "source")
    arch = str(reader.fields["general.architecture"].contents())
    source_names = [t.name for t in reader.tensors]
    missing = sorted(set(source_names) - set(tensors))
    extra = sorted(set(tensors) - set(source_names))
    if missing or extra:
        raise ValueError(
            f"model: its tensors do not match those of {source} (missing {missing[:3]}, "
            f"not in the source {extra[:3]}); pass the GGUF it was loaded from as source"
        )

    writer = GGUFWriter(path, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _KEYS_WRITTEN_HERE:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
    if any(t not in {"F32", "F16", "BF16"} for t in types.values()):
        writer.add_quantization_version(GGML_QUANT_VERSION)
    if isinstance(recipe, str):  # llama.cpp's name for the mix, where it has one
        ftype = "ALL_F32" if recipe == "F32" else f"MOSTLY_{recipe}"
        if ftype in LlamaFileType.__members__:
            writer.add_file_type(LlamaFileType[ftype])
    for name in source_names:
        values = tensors[name][1].detach().float().cpu().numpy()
        values = permute.get(_kind(name)[0], lambda w: w)(values)
        qtype = types[name]
        if qtype == "F32":
            writer.add_tensor(name, np.ascontiguousarray(values, dtype=f32))
        elif qtype == "F16":
            writer.add_tensor(name, values.astype(f16))
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=GGMLQuantizationType[qtype])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def load_gguf(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Read a GGUF file back into a transformers model (dequantized to FP32) and its tokenizer.

    The file is checked first (magic, header, every tensor's bytes inside the file), so a
    corrupt or truncated file gives a clear ``ValueError``. Taught in notebooks/06_gguf.ipynb.
    """
    from qlearn.models import load_model

    path = Path(os.fspath(path))
    _open_gguf(path, "path")
    return load_model(str(path))


# ---------------------------------------------------------------------------------------------
# The legacy formats (blocks of 32), as gguf-py's quants.py computes them
# ---------------------------------------------------------------------------------------------


def _quantize_q8_0(x: np.ndarray) -> dict[str, np.ndarray]:
    """d = max|x| / 127, q = round-half-away(x / d) with the float32 d, then d stored fp16."""
    torch = _torch()
    t = torch.from_numpy(x)
    d = t.abs().amax(dim=1) / 127
    inv = torch.where(d == 0, 0.0, 1.0 / d)
    v = t * inv[:, None]
    q = (v + _BELOW_HALF * torch.sign(v)).to(torch.int8)  # conversion truncates: roundf
    return {"d": d.numpy().astype(f16), "q": q.numpy()}


def _quantize_absmax(x: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    """Q4_0 (16 levels), Q5_0 (32): m = the first value of largest |x|, d = m / −(levels/2),
    q = min(levels − 1, trunc(x / d + levels/2 + 0.5))."""
    torch = _torch()
    t = torch.from_numpy(x)
    m = _first_largest_magnitude(x, t)
    d = m / -(levels // 2)
    inv = torch.where(d == 0, 0.0, 1.0 / d)
    q = (t * inv[:, None] + (levels // 2 + 0.5)).to(torch.uint8)  # ≥ 0: truncation
    return {"d": d.numpy().astype(f16), "q": q.clamp_(max=levels - 1).numpy()}


def _quantize_minmax(x: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    """Q4_1 (16 levels), Q5_1 (32): d = (max − min) / (levels − 1), m = min,
    q = min(levels − 1, trunc((x − min) / d + 0.5))."""
    torch = _torch()
    t = torch.from_numpy(x)
    lo, hi = _row_extreme(x, t, "min"), _row_extreme(x, t, "max")
    d = (hi - lo) / (levels - 1)
    inv = torch.where(d == 0, 0.0, 1.0 / d)
    q = ((t - lo[:, None]) * inv[:, None] + 0.5).to(torch.uint8).clamp_(max=levels - 1)
    return {"d": d.numpy().astype(f16), "m": lo.numpy().astype(f16), "q": q.numpy()}


def _row_extreme(x: np.ndarray, t: Any, which: str) -> Any:
    """Each block's min or max (torch reduces rows of 32 ~10× faster than numpy). Which zero,
    −0 or +0, numpy's reduction returns shows in the fp16 bytes: such rows ask numpy."""
    torch = _torch()
    out = t.amin(dim=1) if which == "min" else t.amax(dim=1)
    zero = (out == 0).numpy()
    if zero.any():
        rows = x[zero]
        out[torch.from_numpy(zero)] = torch.from_numpy(
            rows.min(axis=1) if which == "min" else rows.max(axis=1)
        )
    return out


def _first_largest_magnitude(x: np.ndarray, t: Any) -> Any:
    """The signed value of each block's first largest |x| (gguf-py: abs().argmax()): the max
    when max > −min, the min when −min > max. Blocks where the two tie (+a and −a both there,
    or only zeros) need the position: numpy's argmax finds it there."""
    torch = _torch()
    hi, lo = t.amax(dim=1), t.amin(dim=1)
    m = torch.where(hi > -lo, hi, lo)
    unsure = (hi == -lo).numpy()
    if unsure.any():
        rows = x[unsure]
        first = np.take_along_axis(rows, np.abs(rows).argmax(axis=1)[:, None], axis=1)[:, 0]
        m[torch.from_numpy(unsure)] = torch.from_numpy(first)
    return m


def _pack_32(f: dict[str, np.ndarray], high_bits: bool) -> np.ndarray:
    """d, [m], [qh: bit j of a little-endian uint32 = fifth bit of code j], qs[16] (byte j:
    code j in the low nibble, code j + 16 in the high one)."""
    torch = _torch()
    q = torch.from_numpy(np.ascontiguousarray(f["q"]).view(np.uint8))
    parts = [f["d"]] + ([f["m"]] if "m" in f else [])
    if high_bits:
        bit = torch.arange(32, dtype=torch.int64)
        word = ((q >> 4).to(torch.int64) << bit).sum(dim=1)  # exact: distinct bits
        parts.append(word.numpy().view(np.uint8).reshape(-1, 8)[:, :4])  # little-endian
    parts.append(((q[:, :16] & 15) | (q[:, 16:] << 4)).numpy())
    return kq._concat(*parts)


def _unpack_32(raw: np.ndarray, has_m: bool, high_bits: bool) -> dict[str, np.ndarray]:
    fields = {"d": kq._fp16(raw[:, 0:2])}
    start = 2
    if has_m:
        fields["m"], start = kq._fp16(raw[:, 2:4]), 4
    qs = raw[:, start + 4 * high_bits :]
    q = np.concatenate([qs & 15, qs >> 4], axis=1)
    if high_bits:
        qh = np.unpackbits(raw[:, start : start + 4], axis=1, bitorder="little")
        q |= qh << 4
    fields["q"] = q
    return fields


def _values_q8_0(f: dict[str, np.ndarray]) -> np.ndarray:
    return f["q"].astype(f32) * f["d"].astype(f32)[:, None]


def _values_absmax(f: dict[str, np.ndarray], offset: int) -> np.ndarray:
    return f["d"].astype(f32)[:, None] * (f["q"].astype(np.int8) - np.int8(offset)).astype(f32)


def _values_minmax(f: dict[str, np.ndarray]) -> np.ndarray:
    return f["d"].astype(f32)[:, None] * f["q"].astype(f32) + f["m"].astype(f32)[:, None]


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits, round half to even (gguf-py's BF16, ggml's fp32_to_bf16)."""
    n = x.view(np.uint32).astype(np.uint64)
    return ((n + (0x7FFF + ((n >> 16) & 1))) >> 16).astype(np.uint16)


@dataclass(frozen=True)
class _Codec:
    """How one type turns weights into fields, fields into bytes and back, fields into values."""

    quantize: Callable[[np.ndarray], dict[str, np.ndarray]]
    pack: Callable[[dict[str, np.ndarray]], np.ndarray]
    unpack: Callable[[np.ndarray], dict[str, np.ndarray]]
    values: Callable[[dict[str, np.ndarray]], np.ndarray]
    chunk: int = 1 << 14  # blocks per piece of work


def _float_codec(dtype: str) -> _Codec:
    if dtype == "F32":
        to_bits, from_bits = (lambda x: x.astype(f32).view(np.uint8)), (lambda r: r.view(f32))
    elif dtype == "F16":
        to_bits, from_bits = (lambda x: x.astype(f16).view(np.uint8)), (lambda r: r.view(f16))
    else:
        to_bits = lambda x: _bf16_bits(x).view(np.uint8)  # noqa: E731
        from_bits = lambda r: (r.view(np.int16).astype(np.int32) << 16).view(f32)  # noqa: E731
    return _Codec(
        quantize=lambda x: {"values": x},
        pack=lambda f: to_bits(np.ascontiguousarray(f["values"])),
        unpack=lambda r: {"values": from_bits(np.ascontiguousarray(r)).astype(f32)},
        values=lambda f: f["values"],
    )


_CODECS: dict[str, _Codec] = {
    "F32": _float_codec("F32"),
    "F16": _float_codec("F16"),
    "BF16": _float_codec("BF16"),
    "Q8_0": _Codec(
        _quantize_q8_0,
        lambda f: kq._concat(f["d"], f["q"].view(np.uint8)),
        lambda r: {"d": kq._fp16(r[:, :2]), "q": r[:, 2:].view(np.int8)},
        _values_q8_0,
    ),
    "Q4_0": _Codec(
        lambda x: _quantize_absmax(x, 16),
        lambda f: _pack_32(f, high_bits=False),
        lambda r: _unpack_32(r, has_m=False, high_bits=False),
        lambda f: _values_absmax(f, 8),
    ),
    "Q4_1": _Codec(
        lambda x: _quantize_minmax(x, 16),
        lambda f: _pack_32(f, high_bits=False),
        lambda r: _unpack_32(r, has_m=True, high_bits=False),
        _values_minmax,
    ),
    "Q5_0": _Codec(
        lambda x: _quantize_absmax(x, 32),
        lambda f: _pack_32(f, high_bits=True),
        lambda r: _unpack_32(r, has_m=False, high_bits=True),
        lambda f: _values_absmax(f, 16),
    ),
    "Q5_1": _Codec(
        lambda x: _quantize_minmax(x, 32),
        lambda f: _pack_32(f, high_bits=True),
        lambda r: _unpack_32(r, has_m=True, high_bits=True),
        _values_minmax,
    ),
    **{
        name: _Codec(
            getattr(kq, f"quantize_{name.lower()}"),
            getattr(kq, f"pack_{name.lower()}"),
            getattr(kq, f"unpack_{name.lower()}"),
            getattr(kq, f"values_{name.lower()}"),
            chunk=1024 if name == "Q3_K" else 512,  # super-blocks per piece of work
        )
        for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
    },
}

# Ranges of the integer fields, for pack_block's checks: name → (field, low, high).
_FIELD_RANGES = {
    "Q8_0": {"q": (-128, 127)},
    "Q4_0": {"q": (0, 15)},
    "Q4_1": {"q": (0, 15)},
    "Q5_0": {"q": (0, 31)},
    "Q5_1": {"q": (0, 31)},
    "Q2_K": {"scales": (0, 15), "mins": (0, 15), "q": (0, 3)},
    "Q3_K": {"scales": (-32, 31), "q": (-4, 3)},
    "Q4_K": {"scales": (0, 63), "mins": (0, 63), "q": (0, 15)},
    "Q5_K": {"scales": (0, 63), "mins": (0, 63), "q": (0, 31)},
    "Q6_K": {"scales": (-128, 127), "q": (-32, 31)},
}
_FIELD_DTYPES = {"Q8_0": np.int8, "Q3_K": np.int8, "Q6_K": np.int8}
# Magnitudes beyond which a k-quant's sub-block search overflows float32 (x² or x³ terms).
_SEARCH_LIMIT = {"Q2_K": 1.8e19, "Q4_K": 1.8e19, "Q5_K": 1.8e19, "Q3_K": 6.9e12, "Q6_K": 6.9e12}
_KEYS_WRITTEN_HERE = {"general.architecture", "general.file_type", "general.quantization_version"}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _apply_in_chunks(codec: _Codec, blocks: np.ndarray, fmt: BlockFormat, threads: int):
    """pack(quantize(blocks)) over pieces of ``codec.chunk`` blocks, on ``threads`` threads
    (numpy releases the GIL inside its loops). Every piece is independent: same bytes."""
    out = np.empty((blocks.shape[0], fmt.type_size), dtype=np.uint8)
    overflow = []

    def work(start: int) -> None:
        piece = blocks[start : start + codec.chunk]
        with np.errstate(all="ignore"):  # inf/NaN lanes are computed and then discarded, as C
            fields = codec.quantize(piece)
            out[start : start + codec.chunk] = codec.pack(fields)
        scales = [v for v in fields.values() if v.dtype == f16]
        if any(not np.isfinite(v).all() for v in scales):
            overflow.append(start)

    starts = range(0, blocks.shape[0], codec.chunk)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(work, starts))
    else:
        for start in starts:
            work(start)
    amax = float(np.abs(blocks).max()) if overflow or fmt.block_size == 256 else 0.0
    if overflow or amax > _SEARCH_LIMIT.get(fmt.name, math.inf):
        warnings.warn(
            f"quantize: values up to {amax:.3g} overflow {fmt.name}'s float32 search or fp16 "
            "scales: those blocks dequantize to inf, NaN or 0, as llama.cpp's do",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def _nonzero(v: np.ndarray) -> np.ndarray:
    return np.where(v == 0, f32(1), v)


def _torch():
    import torch

    return torch


def _check_qtype(qtype: Any, *, blocks_only: bool = False) -> BlockFormat:
    names = [n for n, f in BLOCKS.items() if f.block_size > 1 or not blocks_only]
    check_choice(qtype, "qtype", names)
    return BLOCKS[qtype]


def _check_threads(threads: Any) -> int:
    if threads is None:
        return max(1, _torch().get_num_threads())
    return check_int(threads, "threads", minimum=1)


def _float32_rows(data: Any, name: str, fmt: BlockFormat) -> np.ndarray:
    """``data`` as a float32 numpy array, checked: non-empty, finite, rows fit the block."""
    torch = _torch()
    if isinstance(data, torch.Tensor):
        if not data.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {data.dtype}")
        data = data.detach().float().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array (or torch tensor), got {type(data).__name__}"
        )
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
    with np.errstate(over="ignore", invalid="ignore"):  # a float32 sum overflows: look closer
        suspicious = not np.isfinite(x.sum())
    if suspicious and not np.isfinite(x).all():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise ValueError(
            f"{name}: expected finite values, got {n_nan} NaN and {n_inf} Inf (after the cast "
            f"to float32) in an array of shape {data.shape}"
        )
    return x


def _check_raw(raw: Any, fmt: BlockFormat, shape: tuple[int, ...] | None) -> np.ndarray:
    """``raw`` as uint8 bytes whose length fits ``fmt`` (and ``shape`` if given)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"raw: expected a uint8 numpy array or bytes, got {type(raw).__name__}")
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


def _check_fields(fields: Any, fmt: BlockFormat) -> dict[str, np.ndarray]:
    """One block's fields → a batch of one, each checked for presence, shape and range."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields: expected a mapping of field names, got {type(fields).__name__}")
    if set(fields) != set(fmt.fields):
        raise ValueError(
            f"fields: expected exactly {list(fmt.fields)} for {fmt.name}, got {sorted(fields)}"
        )
    example = _CODECS[fmt.name].unpack(np.zeros((1, fmt.type_size), dtype=np.uint8))
    batch = {}
    for key in fmt.fields:
        value = np.asarray(fields[key])
        expected_shape = example[key].shape[1:]
        if value.shape != expected_shape:
            raise ValueError(f"fields[{key!r}]: expected shape {expected_shape}, got {value.shape}")
        if key in _FIELD_RANGES[fmt.name]:
            lo, hi = _FIELD_RANGES[fmt.name][key]
            if not np.issubdtype(value.dtype, np.integer) or value.min() < lo or value.max() > hi:
                raise ValueError(f"fields[{key!r}]: expected integers from {lo} to {hi}")
            dtype = _FIELD_DTYPES.get(fmt.name, np.uint8)
            value = value.astype(dtype if key in ("q", "scales") else np.uint8)
        else:
            value = value.astype(f16)
        batch[key] = value[None]
    return batch


def _recipe_rule(recipe: Any) -> Callable[[str, int | None, int], str]:
    """``recipe`` → rule(kind, layer, n_layers) giving each 2-D tensor's type."""
    if isinstance(recipe, str):
        if recipe == "Q4_K_M":
            return _q4_k_m
        check_choice(recipe, "recipe", [*BLOCKS, "Q4_K_M"])
        output = recipe if recipe in ("F32", "F16", "BF16", "Q8_0") else "Q6_K"
        return lambda kind, layer, n: output if kind in ("token_embd", "output") else recipe
    if isinstance(recipe, Mapping):
        for kind, qtype in recipe.items():
            if not isinstance(kind, str):
                raise TypeError(f"recipe: expected tensor kinds as keys, got {kind!r}")
            check_choice(qtype, f"recipe[{kind!r}]", list(BLOCKS))
        table = dict(recipe)
        return lambda kind, layer, n: table.get(kind, table.get("default", "F32"))
    raise TypeError(
        f"recipe: expected a type name, 'Q4_K_M' or a mapping {{kind: type}}, "
        f"got {type(recipe).__name__}"
    )


def _q4_k_m(kind: str, layer: int | None, n_layers: int) -> str:
    """llama.cpp's Q4_K_M (``llama_tensor_get_type``, no importance matrix)."""
    if kind in ("token_embd", "output"):
        return "Q6_K"
    if kind in ("attn_v", "ffn_down") and layer is not None and _use_more_bits(layer, n_layers):
        return "Q6_K"
    if kind == "attn_qkv":
        return "Q5_K"
    return "Q4_K"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: first and last eighth of the layers, every third between."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _kind(gguf_name: str) -> tuple[str, int | None]:
    """``blk.3.attn_v.weight`` → ("attn_v", 3); ``token_embd.weight`` → ("token_embd", None)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return parts[2], int(parts[1])
    return parts[0], None


def _gguf_tensors(model: Any) -> dict[str, tuple[str, Any]]:
    """``{GGUF name: (HF name, tensor)}`` through the ``gguf`` package's ``TensorNameMap`` (as
    transformers' GGUF loader maps them); a tied LM head (the same tensor as the embedding) is
    left out, as llama.cpp does."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise TypeError(
            f"model: expected a transformers model with a config, got {type(model).__name__}"
        )
    name_map = _name_map(config.model_type, int(config.num_hidden_layers))
    tensors = {}
    for hf_name, tensor in model.state_dict().items():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            tensors[f"{gguf_name}.{suffix}"] = (hf_name, tensor)
    out, embd = tensors.get("output.weight"), tensors.get("token_embd.weight")
    if out is not None and embd is not None and out[1].data_ptr() == embd[1].data_ptr():
        del tensors["output.weight"]
    return tensors


@functools.lru_cache(maxsize=8)
def _name_map(model_type: str, n_layers: int) -> Any:
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = {name: arch for arch, name in MODEL_ARCH_NAMES.items()}.get(model_type)
    if arch is None:
        raise ValueError(f"model: the gguf package has no architecture {model_type!r}")
    return get_tensor_name_map(arch, n_layers)


def _permutation(model: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Row orders llama.cpp expects but transformers' loader undoes: for Llama, attn_q and
    attn_k with each head's two rotary halves interleaved (``convert_hf_to_gguf.py``)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    config = model.config
    processor = TENSOR_PROCESSORS.get(config.model_type, TensorProcessor)
    if processor.__name__ == "LlamaTensorProcessor":
        n_head = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_head
        return {"attn_q": lambda w: _permute(w, n_head), "attn_k": lambda w: _permute(w, n_kv)}
    if processor is not TensorProcessor:
        raise ValueError(
            f"model: save_gguf writes Llama-like models; {config.model_type!r} needs "
            f"transformers' {processor.__name__}, which it does not invert"
        )
    return {}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` of convert_hf_to_gguf.py (inverse of transformers'
    ``_reverse_permute_weights``)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _open_gguf(path: Any, name: str):
    """A ``gguf.GGUFReader`` on ``path`` after checking that it is a whole GGUF file."""
    from gguf import GGUFReader

    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ValueError(
            f"{name}: {path} is not a GGUF file (it starts with {magic!r}, expected b'GGUF')"
        )
    try:
        reader = GGUFReader(path)
    except Exception as error:  # any parse failure inside gguf-py/numpy means a bad file
        raise ValueError(
            f"{name}: {path} is a corrupt or truncated GGUF file ({type(error).__name__}: {error})"
        ) from None
    for tensor in reader.tensors:
        if tensor.data_offset + int(tensor.n_bytes) > size:
            raise ValueError(
                f"{name}: {path} is truncated: tensor {tensor.name!r} needs bytes up to "
                f"{tensor.data_offset + int(tensor.n_bytes)}, the file has {size}"
            )
    return reader
