"""The byte plumbing shared by the block formats: bit fields, fp16 halves, rows of bytes.

A GGUF block is a C struct (``ggml/src/ggml-common.h``: Gerganov et al., ggml and llama.cpp,
2023): fp16 scales as two little-endian bytes, then small codes packed 2, 4 or 8 to a byte. The
formats of :mod:`qlearn.gguf.legacy` (as gguf-py's ``gguf/quants.py``) and of
:mod:`qlearn.gguf.kquants` (Kawrakow, "k-quants", llama.cpp pull request #1684, 2023) pack and
unpack their blocks with these functions, over arrays of blocks ``[nb, ...]`` at once.
Private: ``qlearn.gguf`` is the entry point. Taught in notebooks/06_gguf.ipynb.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["concat", "fp16", "pack_bits", "split", "unpack_bits"]


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """[..., k, m] small codes → [nb, -1] bytes: code j of each group in bits ``bits·j``."""
    packed = np.zeros(q.shape[:-2] + q.shape[-1:], dtype=np.uint8)
    for j in range(q.shape[-2]):
        packed |= (q[..., j, :] << (bits * j)).astype(np.uint8)
    return packed.reshape(q.shape[0], -1)


def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: [..., m] bytes → [nb, -1] codes, 8 / bits per byte."""
    shifts = (np.arange(8 // bits, dtype=np.uint8) * bits)[:, None]
    codes = (packed[..., None, :] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)


def split(raw: np.ndarray, layout: tuple[tuple[str, int], ...]) -> list[np.ndarray]:
    """Cut [nb, type_size] bytes into the consecutive fields of ``layout``."""
    return np.split(raw, np.cumsum([size for _, size in layout])[:-1], axis=1)


def fp16(two_bytes: np.ndarray) -> np.ndarray:
    """[nb, 2] little-endian bytes → [nb] float16."""
    return np.ascontiguousarray(two_bytes).view(np.float16)[:, 0]


def concat(*fields: np.ndarray) -> np.ndarray:
    """Per-block fields → [nb, bytes], fp16 fields as their two little-endian bytes (joined by
    torch.cat, which copies rows of a few bytes faster than np.concatenate)."""
    parts = [
        f.view(np.uint8).reshape(f.shape[0], -1) if f.dtype == np.float16 else f for f in fields
    ]
    tensors = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.uint8)) for p in parts]
    return torch.cat(tensors, dim=1).numpy()
