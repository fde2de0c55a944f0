"""KV-cache quantization: keys per channel, values per token, a recent window in full precision.

Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024:

- **the cache grows with the context**: 2 · layers · KV heads · head dim · bytes · tokens
  (``roofline.kv_cache_bytes``); at long contexts it outgrows the weights;
- **keys have outlier channels** (a few channels large for every token, §3.1), so they are
  quantized *per channel*: each channel of a block of tokens gets its own min and scale;
  **values have none**, and each output of attention mixes values token by token, so they are
  quantized *per token* (in groups of channels);
- asymmetric min–max rounding, x ≈ min + scale · q with q in [0, 2ᵇ − 1] (§3.2), 2 or 4 bits
  there; a per-channel scale needs a block of tokens, so the most recent tokens, fewer than
  ``residual_length`` (KIVI's R), stay in full precision, and each time R have gathered they are
  quantized as one block (Algorithm 1). KIVI keeps exactly R values in full precision; here both
  keys and values follow the keys' rule (0 to R − 1 recent tokens), so one window serves both.
- QuaRot (Ashkboos et al. 2024, §4 stage 2) rotates keys by a Hadamard matrix of the head
  dimension before quantizing them: ``rotate_keys=True`` stores the codes of k H and gives back
  (dequantized) · Hᵀ, so attention is unchanged but for the rounding.

:class:`KIVICache` is a transformers ``Cache``: pass it to ``generate(past_key_values=...)`` or to
a forward pass. transformers' own ``QuantizedCache`` (quanto and HQQ backends) quantizes keys and
values alike, per channel in groups of ``q_group_size`` ("in contrast to what was described in
the paper", its docstring says) and re-quantizes its whole quantized part whenever its window
fills. Codes are kept one per byte here; :meth:`KIVICache.nbytes` counts what a packed layout
stores (b bits per code, as KIVI's kernels pack them) plus the float16 scales and minima.
Taught in notebooks/11_moving_outliers.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import torch
from transformers.cache_utils import Cache, DynamicLayer

from qlearn._checks import check_bits, check_bool, check_choice, check_float_tensor, check_int
from qlearn.rotation import hadamard, hadamard_order

__all__ = [
    "KEY_GRANULARITIES",
    "KIVICache",
    "KIVILayer",
    "QuantizedBlock",
    "chunked_logits",
    "quantize_per_channel",
    "quantize_per_token",
]

KEY_GRANULARITIES: Final = ("channel", "token")
"""Keys per channel (KIVI) or per token (as values; QuaRot's choice once keys are rotated)."""


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class QuantizedBlock:
    """Asymmetric codes of a [batch, heads, tokens, head_dim] block: x ≈ minimum + scale · codes.

    ``codes`` uint8 in [0, 2ᵇ − 1], the block's shape (one per byte); ``scale`` and ``minimum``
    float16, broadcastable to the block after :meth:`dequantize`'s reshape (per channel: one per
    batch, head and channel; per token: one per batch, head, token and group of channels)."""

    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor
    bits: int
    group_size: int | None  # per token: channels per group; per channel: None

    def dequantize(self) -> torch.Tensor:
        """float32, the block's shape."""
        codes = self.codes.float()
        if self.group_size is None:
            return self.minimum.float() + self.scale.float() * codes
        shape = codes.shape
        grouped = codes.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        return (self.minimum.float() + self.scale.float() * grouped).reshape(shape)

    def nbytes(self) -> int:
        """Bytes a packed layout stores: b bits per code, 2 per float16 scale and minimum."""
        return math.ceil(self.codes.numel() * self.bits / 8) + 2 * (
            self.scale.numel() + self.minimum.numel()
        )


def quantize_per_channel(x: torch.Tensor, *, bits: int) -> QuantizedBlock:
    """Each channel of a [batch, heads, tokens, head_dim] block over its tokens: one min and
    scale per (batch, head, channel). KIVI's keys (Liu et al. 2024, §3.2, eq. 3)."""
    check_float_tensor(x, "x", ndim=4)
    bits = check_bits(bits, low=2, high=8)
    return _quantize(x, bits, dim=-2, group_size=None)


def quantize_per_token(
    x: torch.Tensor, *, bits: int, group_size: int | None = None
) -> QuantizedBlock:
    """Each token of a [batch, heads, tokens, head_dim] block over groups of ``group_size``
    channels (None: all of head_dim): one min and scale per (batch, head, token, group). KIVI's
    values (Liu et al. 2024, §3.2)."""
    check_float_tensor(x, "x", ndim=4)
    bits = check_bits(bits, low=2, high=8)
    head_dim = x.shape[-1]
    group = head_dim if group_size is None else check_int(group_size, "group_size", minimum=1)
    if head_dim % group:
        raise ValueError(
            f"group_size: expected a divisor of the head dimension {head_dim}, got {group}"
        )
    grouped = x.reshape(*x.shape[:-1], head_dim // group, group)
    block = _quantize(grouped, bits, dim=-1, group_size=None)
    return QuantizedBlock(block.codes.reshape(x.shape), block.scale, block.minimum, bits, group)


class KIVILayer(DynamicLayer):
    """One decoder layer's cache: quantized blocks of ``residual_length`` tokens and the recent
    tokens in full precision (``self.keys`` / ``self.values``, DynamicLayer's)."""

    is_croppable = False

    def __init__(
        self,
        *,
        bits: int = 2,
        residual_length: int = 32,
        group_size: int | None = 32,
        key_granularity: str = "channel",
        rotate_keys: bool = False,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits, low=2, high=8)
        self.residual_length = check_int(residual_length, "residual_length", minimum=1)
        self.group_size = (
            None if group_size is None else check_int(group_size, "group_size", minimum=1)
        )
        self.key_granularity = check_choice(key_granularity, "key_granularity", KEY_GRANULARITIES)
        self.rotate_keys = check_bool(rotate_keys, "rotate_keys")
        self.cumulative_length = 0
        self.key_blocks: list[QuantizedBlock] = []
        self.value_blocks: list[QuantizedBlock] = []
        self._rotation: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        head_dim = key_states.shape[-1]
        if self.group_size is not None and head_dim % self.group_size:
            raise ValueError(
                f"group_size: expected a divisor of the head dimension {head_dim}, got "
                f"{self.group_size}"
            )
        if self.rotate_keys:
            if hadamard_order(head_dim) is None:
                raise ValueError(
                    f"rotate_keys: expected a head dimension with a Hadamard matrix, got {head_dim}"
                )
            self._rotation = hadamard(head_dim).to(torch.float32)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return every cached key and value (the quantized blocks dequantized, then the recent
        tokens in full precision) followed by the new ones, which attention uses as they are, as
        in KIVI and transformers' QuantizedLayer; then keep the new tokens and quantize whole
        blocks of ``residual_length`` of the oldest full-precision ones."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        keys = [self._dequantize_keys(b).to(self.dtype) for b in self.key_blocks]
        values = [b.dequantize().to(self.dtype) for b in self.value_blocks]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        returned = torch.cat([*keys, self.keys], dim=-2), torch.cat([*values, self.values], dim=-2)
        full = self.keys.shape[-2] // self.residual_length * self.residual_length
        for start in range(0, full, self.residual_length):
            block = slice(start, start + self.residual_length)
            self.key_blocks.append(self._quantize_keys(self.keys[..., block, :]))
            self.value_blocks.append(
                quantize_per_token(
                    self.values[..., block, :], bits=self.bits, group_size=self.group_size
                )
            )
        self.keys, self.values = self.keys[..., full:, :], self.values[..., full:, :]
        return returned

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def nbytes(self) -> int:
        """Packed quantized blocks plus the full-precision window, in bytes."""
        window = 0 if self.keys is None else (self.keys.nbytes + self.values.nbytes)
        return sum(b.nbytes() for b in (*self.key_blocks, *self.value_blocks)) + window

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self.key_blocks, self.value_blocks = [], []

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("KIVILayer: beam search is not supported (use greedy decoding)")

    def _quantize_keys(self, keys: torch.Tensor) -> QuantizedBlock:
        if self._rotation is not None:
            keys = keys.float() @ self._rotation
        if self.key_granularity == "channel":
            return quantize_per_channel(keys, bits=self.bits)
        return quantize_per_token(keys, bits=self.bits, group_size=self.group_size)

    def _dequantize_keys(self, block: QuantizedBlock) -> torch.Tensor:
        keys = block.dequantize()
        return keys if self._rotation is None else keys @ self._rotation.T


class KIVICache(Cache):
    """A KIVI-quantized cache for every decoder layer of a model with ``config``.

    ``bits`` (2–8), ``residual_length`` (R: recent tokens kept in full precision, and the block
    of tokens each key channel is quantized over), ``group_size`` (channels per value scale; None:
    the whole head), ``key_granularity`` ("channel", KIVI; or "token"), ``rotate_keys`` (QuaRot's
    Hadamard on the keys). Liu et al. 2024. Taught in notebooks/11_moving_outliers.ipynb.
    """

    def __init__(self, config: Any, **options: Any) -> None:
        text = (
            config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        )
        n_layers = getattr(text, "num_hidden_layers", None)
        if not isinstance(n_layers, int) or n_layers < 1:
            raise TypeError(
                f"config: expected a transformers config with num_hidden_layers, got "
                f"{type(config).__name__}"
            )
        super().__init__(layers=[KIVILayer(**options) for _ in range(n_layers)])

    def nbytes(self) -> int:
        """Bytes of every layer's cache: packed codes, float16 scales and minima, the window."""
        return sum(layer.nbytes() for layer in self.layers)


def chunked_logits(
    model: torch.nn.Module, ids: torch.Tensor, cache: Cache, *, chunk_size: int = 32
) -> torch.Tensor:
    """The logits of ``ids`` [1, tokens] read ``chunk_size`` tokens per forward pass through
    ``cache``: each chunk attends to the cached (quantized) earlier tokens and to itself in full
    precision, as decoding one token at a time does with ``chunk_size=1``. Returns float32
    [1, tokens, vocab]. With a plain ``DynamicCache`` it equals one forward pass to float
    rounding. Chapter 11 measures a quantized cache's perplexity and KL this way."""
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(
            f"ids: expected token ids of shape [1, tokens], got {getattr(ids, 'shape', ids)!r}"
        )
    if not isinstance(cache, Cache):
        raise TypeError(f"cache: expected a transformers Cache, got {type(cache).__name__}")
    pieces = []
    with torch.no_grad():
        for start in range(0, ids.shape[1], chunk_size):
            chunk = ids[:, start : start + chunk_size]
            out = model(input_ids=chunk, past_key_values=cache, use_cache=True)
            pieces.append(out.logits.float())
    return torch.cat(pieces, dim=1)


def _quantize(x: torch.Tensor, bits: int, *, dim: int, group_size: int | None) -> QuantizedBlock:
    """Min–max asymmetric rounding along ``dim``; scale and minimum stored as float16 and the
    codes computed from the stored values, so that dequantizing gives what was rounded to."""
    x = x.float()
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    levels = 2**bits - 1
    minimum = lo.half()
    scale = ((hi - minimum.float()) / levels).half()
    safe = torch.where(
        scale.float() > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32)
    )
    codes = torch.round((x - minimum.float()) / safe).clamp(0, levels).to(torch.uint8)
    return QuantizedBlock(codes, scale, minimum, bits, group_size)
