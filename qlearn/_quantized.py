"""What every quantized result of qlearn can do: give its values back and count its bytes.

One protocol for every result class (``affine.QuantizedTensor``, ``int8.VectorwiseInt8`` and
``int8.Int8Linear``, ``gptq.QuantizedWeight``, ``awq.GroupQuantized``, ``nf4.Quantized4bit``,
``bitnet.BitNetQuantized``, a GGUF tensor): the capstone's table adds these up and nothing else,
so "bits per weight" always means the bytes a result stores, counted by the result itself.
Taught in notebooks/13_capstone.ipynb.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # importing qlearn stays light: torch is only named in annotations
    import torch

__all__ = ["Quantized", "bits_per_weight"]


@runtime_checkable
class Quantized(Protocol):
    """A quantized tensor (or layer): its dequantized values and the bytes it stores.

    ``nbytes()`` counts the tensors the result holds as a file or a kernel would store them:
    codes as packed, scales, zero points, outlier columns, index arrays. ``bits_per_weight()``
    is ``8 · nbytes()`` over the number of weights it stands for.
    """

    def dequantize(self) -> torch.Tensor: ...

    def nbytes(self) -> float: ...

    def bits_per_weight(self) -> float: ...


def bits_per_weight(nbytes: float, n_weights: int) -> float:
    """``8 · nbytes / n_weights``: the figure every result's ``bits_per_weight()`` reports."""
    if n_weights <= 0:
        raise ValueError(f"n_weights: expected a positive count of weights, got {n_weights}")
    return 8 * nbytes / n_weights
