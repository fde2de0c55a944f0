"""LLM.int8(): outlier features, vector-wise int8 matmul, and the mixed-precision decomposition.

Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale", 2022:

- **absmax** (§2, eq. 1): a vector x is stored as codes ⌊127 · x / max|x|⌉ in [−127, 127];
- **vector-wise quantization** (§3.1, eq. 6): every row of the activations X [tokens, in] and
  every output row of the weight W [out, in] gets its own absmax c_x, c_w; the int32 product of
  the codes is scaled back by c_x ⊗ c_w / 127²;
- **mixed-precision decomposition** (§3.2, eq. 7): the few input dimensions (columns of X) that
  hold any |x| ≥ α (α = 6) are multiplied in 16-bit, the rest in int8, and the two sums are added;
- **outlier features** (§4): those dimensions are few (≈ 0.1 % of the values), systematic across
  tokens and layers, and up to 20× larger than the rest; one of them ruins per-tensor scales.

The arithmetic follows bitsandbytes 0.50.2 (``int8_vectorwise_quant``, ``int8_mixed_scaled_mm``;
tests/test_int8.py asserts equality), which differs from the paper in three details: the row
absmax of X is taken with only the outlier *values* zeroed (the non-outlier values of an outlier
column still count), the codes are ⌊x · fl(127 / absmax)⌉ (a float32 reciprocal, half to even),
and the outlier columns are multiplied with the *dequantized int8* weight rather than the
original 16-bit one, so the layer keeps only int8 weights. Here the int32 sum is scaled by the
exact 1/127², where bitsandbytes' CPU kernel uses the constant 6.200124e-05 (1.8·10⁻⁵ too big).
Everything is computed in float32 and returned in the input's dtype: the "16-bit" path is the
input's own precision (bitsandbytes does the same on CPU).

Taught in notebooks/04_llm_int8.ipynb.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from qlearn._checks import (
    check_choice,
    check_features,
    check_float_tensor,
    check_int,
    check_module,
    check_positive,
)
from qlearn._layers import model_device
from qlearn._progress import progress_bar
from qlearn._quantized import bits_per_weight
from qlearn.data import token_batches
from qlearn.offload import require_in_memory

__all__ = [
    "DEFAULT_THRESHOLD",
    "GRANULARITIES",
    "MODES",
    "Int8Linear",
    "OutlierFeatures",
    "VectorwiseInt8",
    "find_outlier_features",
    "llm_int8_matmul",
    "outlier_column_fraction",
    "outlier_columns",
    "quantize_model",
    "quantize_model_",
    "vectorwise_quantize",
    "w8a8_matmul",
]

DEFAULT_THRESHOLD: Final = 6.0
"""α of the paper (§3.2): an input value with |x| ≥ α makes its whole column an outlier column."""
GRANULARITIES: Final = ("tensor", "vector")
"""Activation scales of plain W8A8: one for the whole input, or one per row (token)."""
MODES: Final = ("tensor", "vector", "llm.int8")
"""What :class:`Int8Linear` computes: W8A8 per-tensor, W8A8 vector-wise, or LLM.int8()."""

_QMAX: Final = 127.0
_INV_QMAX: Final = 1.0 / 127  # becomes float32 7.874015718698502e-3, as in bitsandbytes
_INV_QMAX2: Final = 1.0 / 127**2


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class VectorwiseInt8:
    """Row-wise absmax int8 codes: x ≈ codes · row_absmax / 127 (Dettmers et al. 2022, eq. 1).

    ``codes`` (int8) has the input's shape; ``row_absmax`` (float32) has its shape without the
    last dimension (bitsandbytes' ``row_stats`` / ``SCB``); ``outlier_cols`` (int64, ascending)
    lists the columns that held a value with |x| ≥ threshold; their codes are 0, since the
    outlier path of :func:`llm_int8_matmul` carries them (empty without a threshold).
    Taught in notebooks/04_llm_int8.ipynb.
    """

    codes: torch.Tensor
    row_absmax: torch.Tensor
    outlier_cols: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """Return codes · row_absmax · fl(1/127) in float32 (bitsandbytes'
        ``int8_vectorwise_dequant``, bit for bit); outlier columns come back as 0.
        Dettmers et al. 2022, eq. 1. Taught in notebooks/04_llm_int8.ipynb."""
        return self.codes * self.row_absmax.unsqueeze(-1) * _INV_QMAX

    def nbytes(self) -> int:
        """Bytes stored: one per int8 code, 4 per float32 row absmax, and the outlier column
        indices as held (int64: 8 bytes each). The outlier *values* are not part of the result:
        :func:`llm_int8_matmul` reads them from x in 16 bits. Dettmers et al. 2022, §3.1–3.2.
        Taught in notebooks/04_llm_int8.ipynb."""
        return (
            self.codes.numel()
            + 4 * self.row_absmax.numel()
            + self.outlier_cols.numel() * self.outlier_cols.element_size()
        )

    def bits_per_weight(self) -> float:
        """``8 · nbytes()`` per code: 8 + 32 / row length without outlier columns."""
        return bits_per_weight(self.nbytes(), self.codes.numel())


@dataclass(frozen=True, eq=False)
class OutlierFeatures:
    """What :func:`find_outlier_features` saw at the input of one linear layer.

    ``dims``: the input dimensions that held a value with |x| ≥ ``threshold`` at least once
    (ascending); ``counts``: for each of them, how many tokens did; ``max_abs``: the largest |x|
    of every input dimension ([in_features], float32: one row of a layer × dimension picture);
    ``n_tokens``: how many input rows the layer saw. Dettmers et al. 2022, §4 (outlier features:
    |x| ≥ 6). Taught in notebooks/04_llm_int8.ipynb.
    """

    name: str
    threshold: float
    in_features: int
    n_tokens: int
    dims: torch.Tensor
    counts: torch.Tensor
    max_abs: torch.Tensor

    @property
    def n_values(self) -> int:
        """Input values the layer saw: tokens × in_features."""
        return self.n_tokens * self.in_features

    @property
    def value_fraction(self) -> float:
        """Fraction of all input values with |x| ≥ threshold (the paper's ≈ 0.1 %)."""
        return int(self.counts.sum()) / self.n_values if self.n_values else 0.0

    @property
    def dim_fraction(self) -> float:
        """Fraction of input dimensions with any |x| ≥ threshold: the columns that
        :func:`llm_int8_matmul` would send to 16-bit had all tokens been one batch."""
        return self.dims.numel() / self.in_features if self.in_features else 0.0

    @property
    def token_fraction(self) -> torch.Tensor:
        """For each of ``dims``, the fraction of tokens where it was an outlier (float64).

        The paper calls a dimension a systematic outlier feature when it is one in ≥ 6 % of the
        tokens (and ≥ 25 % of the layers), §4."""
        return self.counts.double() / max(self.n_tokens, 1)


def vectorwise_quantize(x: torch.Tensor, *, threshold: float | None = None) -> VectorwiseInt8:
    """Absmax int8 per row (last dimension): codes = ⌊x · fl(127 / max|row|)⌉, half to even.

    With ``threshold``: every value with |x| ≥ threshold is set to 0 before the row absmax is
    taken, and every column that held one gets codes 0 (it is listed in ``outlier_cols``).
    A row of zeros has absmax 0 and codes 0. This is bitsandbytes'
    ``int8_vectorwise_quant(x, threshold)`` bit for bit, for any float dtype (the product
    x · reciprocal is float32, the absmax is taken in x's dtype and stored as float32);
    unlike it, ``x`` may have any number of leading dimensions and is never written to.
    Dettmers et al. 2022, eq. 1 and §3.1–3.2. Taught in notebooks/04_llm_int8.ipynb.
    """
    check_float_tensor(x, "x")
    if x.ndim == 0:
        raise ValueError("x: expected at least 1 dimension (rows along the last), got shape ()")
    if threshold is not None:
        threshold = check_positive(threshold, "threshold")
    with torch.no_grad():
        return _quantize_rows(x.detach(), threshold)


def outlier_columns(x: torch.Tensor, *, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """The input dimensions (last axis of ``x``) that hold any |x| ≥ ``threshold``, ascending.

    These columns take the 16-bit path of :func:`llm_int8_matmul`. Dettmers et al. 2022, §3.2.
    Taught in notebooks/04_llm_int8.ipynb.
    """
    check_float_tensor(x, "x")
    if x.ndim == 0:
        raise ValueError("x: expected at least 1 dimension, got shape ()")
    threshold = check_positive(threshold, "threshold")
    with torch.no_grad():
        return _outlier_mask(x.detach(), threshold)[1]


def outlier_column_fraction(x: torch.Tensor, *, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of the input dimensions of ``x`` that go to 16-bit at ``threshold``.

    ``len(outlier_columns(x, threshold=threshold)) / x.shape[-1]``: sweep ``threshold`` to see
    how quickly the decomposition stops being cheap. Dettmers et al. 2022, §3.2 (0.1 % of the
    dimensions at α = 6 in their models). Taught in notebooks/04_llm_int8.ipynb.
    """
    return outlier_columns(x, threshold=threshold).numel() / x.shape[-1]


def llm_int8_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """LLM.int8(): x Wᵀ + b with the mixed-precision decomposition, x [..., in], W [out, in].

    1. Outlier columns O: the input dimensions where any row of x has |x| ≥ ``threshold``.
    2. The rest in int8: x vector-wise per row with the outliers zeroed (codes 0 in O),
       W per output row; int32 products, scaled by c_x ⊗ c_w / 127² (eq. 6).
    3. The columns O in the input's precision against the dequantized int8 weight W[:, O]
       (codes · c_w / 127, rounded to x's dtype, as bitsandbytes does); both sums added (eq. 7),
       then the bias. W is quantized on every call; :class:`Int8Linear` does it once.

    Returns x's dtype and shape [..., out]. Dettmers et al. 2022, §3.1–3.2, eq. 6–7.
    Taught in notebooks/04_llm_int8.ipynb.
    """
    x, weight, bias = _check_matmul(x, weight, bias)
    threshold = check_positive(threshold, "threshold")
    with torch.no_grad():
        w = _quantize_rows(weight.detach(), None)
        return _int8_linear(x.detach(), w.codes, w.row_absmax, bias, "llm.int8", threshold)


def w8a8_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    granularity: str = "vector",
) -> torch.Tensor:
    """Plain W8A8 (no outlier path): x Wᵀ + b with int8 activations and int8 weights.

    Weights absmax per output row; activations absmax per tensor (``granularity="tensor"``: one
    scale for all of x, which one outlier ruins) or per row (``"vector"``, eq. 6: what
    :func:`llm_int8_matmul` does without its outlier columns). int32 products scaled by
    c_x · c_w / 127². Returns x's dtype, shape [..., out]. Dettmers et al. 2022, §2 (eq. 1) and
    §3.1 (eq. 6). Taught in notebooks/04_llm_int8.ipynb.
    """
    check_choice(granularity, "granularity", GRANULARITIES)
    x, weight, bias = _check_matmul(x, weight, bias)
    with torch.no_grad():
        w = _quantize_rows(weight.detach(), None)
        return _int8_linear(x.detach(), w.codes, w.row_absmax, bias, granularity, None)


class Int8Linear(nn.Module):
    """A linear layer that stores int8 weights and multiplies with int8 activations.

    Buffers: ``weight_codes`` (int8 [out, in], bitsandbytes' ``CB``), ``weight_absmax``
    (float32 [out], its ``SCB``: W ≈ codes · absmax / 127) and ``bias`` (the original's dtype, or
    None): about half the bytes of an FP16 layer. ``mode`` picks the forward: ``"llm.int8"``
    (:func:`llm_int8_matmul`, outlier columns at |x| ≥ ``threshold`` in 16-bit), ``"vector"`` or
    ``"tensor"`` (:func:`w8a8_matmul`). Dettmers et al. 2022, §3. Taught in
    notebooks/04_llm_int8.ipynb.
    """

    weight_codes: torch.Tensor
    weight_absmax: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        mode: str = "llm.int8",
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.threshold = check_positive(threshold, "threshold")
        self.mode = check_choice(mode, "mode", MODES)
        self.register_buffer(
            "weight_codes", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_absmax", torch.zeros(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(
        cls, linear: nn.Module, *, threshold: float = DEFAULT_THRESHOLD, mode: str = "llm.int8"
    ) -> Int8Linear:
        """Quantize an ``nn.Linear`` or GPT-2 ``Conv1D`` (weight read as [out, in] through
        ``qlearn.models.get_weight``) per output row with :func:`vectorwise_quantize`; the bias is
        copied. ``linear`` is left untouched. Dettmers et al. 2022, §3.1. Taught in
        notebooks/04_llm_int8.ipynb."""
        from qlearn.models import get_weight

        try:
            weight = get_weight(linear).detach()
        except TypeError:
            raise TypeError(
                f"linear: expected nn.Linear or transformers Conv1D, got {type(linear).__name__}"
            ) from None
        check_float_tensor(weight, "linear.weight", ndim=2)
        out_features, in_features = weight.shape
        bias = getattr(linear, "bias", None)
        layer = cls(
            in_features, out_features, bias=bias is not None, threshold=threshold, mode=mode
        )
        w = vectorwise_quantize(weight)
        layer.weight_codes = w.codes.contiguous()
        layer.weight_absmax = w.row_absmax
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer

    def dequantize(self) -> torch.Tensor:
        """The weight the layer multiplies with, [out, in] float32: codes · absmax / 127.

        Plot it against the original to see what int8 costs. Dettmers et al. 2022, eq. 1.
        Taught in notebooks/04_llm_int8.ipynb."""
        return VectorwiseInt8(self.weight_codes, self.weight_absmax, _no_columns()).dequantize()

    def nbytes(self) -> int:
        """Bytes of the quantized weight: one per int8 code, 4 per float32 row absmax (the bias
        is kept as it was and not counted). Dettmers et al. 2022, §3.1. Taught in
        notebooks/13_capstone.ipynb."""
        return self.weight_codes.numel() + 4 * self.weight_absmax.numel()

    def bits_per_weight(self) -> float:
        """``8 · nbytes()`` per weight: 8 + 32 / in_features."""
        return bits_per_weight(self.nbytes(), self.weight_codes.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] → [..., out] in x's dtype, computed as ``mode`` says (see the class)."""
        check_features(x, self.in_features)
        threshold = self.threshold if self.mode == "llm.int8" else None
        with torch.no_grad():
            return _int8_linear(
                x.detach(), self.weight_codes, self.weight_absmax, self.bias, self.mode, threshold
            )

    def extra_repr(self) -> str:
        threshold = f", threshold={self.threshold}" if self.mode == "llm.int8" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, mode={self.mode!r}{threshold}"
        )


def quantize_model(
    model: nn.Module, *, threshold: float = DEFAULT_THRESHOLD, mode: str = "llm.int8"
) -> nn.Module:
    """Return a copy of ``model`` whose decoder linear layers are :class:`Int8Linear`;
    ``model`` is left untouched. See :func:`quantize_model_`. Dettmers et al. 2022, §3.
    Taught in notebooks/04_llm_int8.ipynb."""
    check_module(model)
    threshold = check_positive(threshold, "threshold")
    mode = check_choice(mode, "mode", MODES)
    require_in_memory(model, "load it into memory first (Int8Linear holds its codes)")
    return quantize_model_(copy.deepcopy(model), threshold=threshold, mode=mode)


def quantize_model_(
    model: nn.Module, *, threshold: float = DEFAULT_THRESHOLD, mode: str = "llm.int8"
) -> nn.Module:
    """In place: replace every decoder linear layer of ``model`` by an :class:`Int8Linear`;
    return ``model``.

    Every layer of ``qlearn.models.linear_layers`` (``nn.Linear`` and GPT-2 ``Conv1D`` inside
    the decoder blocks) is replaced; embeddings, norms and the LM head are kept. ``mode``:
    ``"llm.int8"`` (default), ``"vector"`` or ``"tensor"`` W8A8, the three rows of the chapter's
    perplexity table. Dettmers et al. 2022, §3 (and Table 1). Taught in
    notebooks/04_llm_int8.ipynb.
    """
    from qlearn.models import linear_layers

    check_module(model)
    threshold = check_positive(threshold, "threshold")
    mode = check_choice(mode, "mode", MODES)
    require_in_memory(model, "load it into memory first (Int8Linear holds its codes)")
    for name, layer in list(linear_layers(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Int8Linear.from_linear(layer, threshold=threshold, mode=mode))
    return model


def find_outlier_features(
    model: nn.Module,
    texts_or_batches: torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    tokenizer: object | None = None,
    progress: bool | None = None,
) -> dict[str, OutlierFeatures]:
    """Run ``model`` and record, at the input of every decoder linear layer, which input
    dimensions reach |x| ≥ ``threshold``, how often, and the largest |x| of each dimension.

    ``texts_or_batches``: a [n, seqlen] (or [seqlen]) tensor of token ids (one window per
    forward pass), a list of them, or a list of strings with ``tokenizer`` (tokenized without
    special tokens, one forward pass each): see ``qlearn.data.token_batches``.
    Layers are those of ``qlearn.models.linear_layers``; forward pre-hooks record
    their inputs and are removed afterwards, also when the model raises. Returns
    ``{layer name: OutlierFeatures}`` in model order. Dettmers et al. 2022, §4. Taught in
    notebooks/04_llm_int8.ipynb.
    """
    from qlearn.models import linear_layers

    check_module(model)
    threshold = check_positive(threshold, "threshold")
    batches = token_batches(texts_or_batches, tokenizer)
    layers = list(linear_layers(model))
    device = model_device(model)
    stats: dict[str, _Tally] = {}
    handles = []
    try:
        for name, layer in layers:
            tally = stats[name] = _Tally(threshold)
            handles.append(layer.register_forward_pre_hook(tally.hook))
        with torch.no_grad():
            for ids in progress_bar(batches, desc="outlier features", progress=progress):
                model(input_ids=ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: stats[name].result(name) for name, _ in layers}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _outlier_mask(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|x| ≥ threshold elementwise, the columns holding any, ascending).

    The comparison runs in x's dtype, as bitsandbytes' ``A.abs() >= threshold`` does."""
    outliers = x.abs() >= threshold
    columns = outliers.reshape(-1, x.shape[-1]).any(dim=0)
    return outliers, torch.argwhere(columns).view(-1)


def _quantize_rows(x: torch.Tensor, threshold: float | None) -> VectorwiseInt8:
    """The body of :func:`vectorwise_quantize` (bitsandbytes' ``int8_vectorwise_quant``)."""
    columns = _no_columns(x.device)
    if threshold is not None:
        outliers, columns = _outlier_mask(x, threshold)
        if columns.numel():
            x = x.masked_fill(outliers, 0)  # a copy: bitsandbytes zeroes in place and restores
    row_absmax = x.abs().amax(dim=-1).float()
    reciprocal = _QMAX / row_absmax  # float32, as bitsandbytes: codes = round(x · (127 / c_x))
    reciprocal = torch.where(row_absmax > 0, reciprocal, 0.0)  # a row of zeros: codes 0
    scaled = x * reciprocal.unsqueeze(-1)  # float32 (16-bit x is promoted), half to even below
    if not bool(torch.isfinite(reciprocal).all()):  # absmax < 127 / 3.4e38: 127/absmax overflows
        tiny = ~torch.isfinite(reciprocal).unsqueeze(-1)
        scaled = torch.where(tiny, x.double() / row_absmax.double().unsqueeze(-1) * _QMAX, scaled)
        scaled = scaled.float()
    codes = scaled.round_().to(torch.int8)
    if columns.numel():
        codes[..., columns] = 0
    return VectorwiseInt8(codes=codes, row_absmax=row_absmax, outlier_cols=columns)


def _int8_linear(
    x: torch.Tensor,
    w_codes: torch.Tensor,
    w_absmax: torch.Tensor,
    bias: torch.Tensor | None,
    mode: str,
    threshold: float | None,
) -> torch.Tensor:
    """x [..., in] · (codes · absmax / 127)ᵀ + bias, with int8 activations as ``mode`` says."""
    out_features, in_features = w_codes.shape
    X = x.reshape(-1, in_features)  # [tokens, in]
    if mode == "tensor":  # one absmax for all of X (eq. 1 on the whole tensor)
        c_x = X.abs().amax().float()
        inv = torch.where(c_x > 0, _QMAX / c_x, 0.0)
        A_i8 = (X.float() * inv).round_().to(torch.int8)
        c_x, outlier_cols = c_x.expand(X.shape[0]), _no_columns(x.device)
    else:  # vector-wise, and for LLM.int8() with the outlier columns O zeroed (eq. 6–7)
        A = _quantize_rows(X, threshold if mode == "llm.int8" else None)
        A_i8, c_x, outlier_cols = A.codes, A.row_absmax, A.outlier_cols
    C_i32 = _int8_matmul(A_i8, w_codes)  # [tokens, out]
    out = C_i32.float().mul_(c_x.unsqueeze(1) * w_absmax.unsqueeze(0)).mul_(_INV_QMAX2)
    if outlier_cols.numel():  # eq. 7: Σ_{h ∈ O} X^h W^h, W dequantized from int8 to x's dtype
        W_O = w_codes[:, outlier_cols] * w_absmax.unsqueeze(1) * _INV_QMAX  # [out, |O|]
        out.addmm_(X[:, outlier_cols].float(), W_O.to(x.dtype).float().T)
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], out_features)


def _int8_matmul(
    A: torch.Tensor, B: torch.Tensor, *, use_int_mm: bool | None = None
) -> torch.Tensor:
    """A [m, k] int8 · B [n, k]ᵀ int8 → [m, n] int32, exactly.

    ``torch._int_mm`` where it is exact and worth it (see :func:`_int_mm_allowed`: CUDA), on
    operands with row-major strides: its CPU kernel reads the leading dimensions from the
    strides, which are arbitrary on a size-1 dimension, and then silently returns garbage
    (pytorch/pytorch #195066). Otherwise float64, which holds every sum exactly
    (|sum| ≤ k · 127² < 2^53): the same int32 result, by the BLAS that every CPU has fast.
    """
    if use_int_mm is None:
        use_int_mm = _int_mm_allowed(A, B)
    if use_int_mm:
        return torch._int_mm(_row_major(A), _row_major(B).T)
    return (A.double() @ B.double().T).to(torch.int32)


def _int_mm_allowed(A: torch.Tensor, B: torch.Tensor) -> bool:
    """Whether :func:`_int8_matmul` takes ``torch._int_mm(A, B.T)`` by default.

    CUDA: m > 16 and k, n multiples of 8. Not on a CPU, where it is exact from torch 2.6 (2.4–2.5
    could overflow without AVX512-VNNI, pytorch/pytorch#136942; torch 2.13 takes any m, n and
    k ≥ 2, but k = 1 gives garbage, the case of #195066) but slow without VNNI: 14× slower than
    the float64 product on a 1024 × 1536 by 1536 × 576 int8 matmul on an AVX2 CPU (2 threads),
    which made chapter 04's perplexities take minutes. Both give the same exact int32 sums.
    Chapter 10 times the real int8 kernels.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    (m, k), n = A.shape, B.shape[0]
    if A.device.type == "cuda":
        return m > 16 and k % 8 == 0 and n % 8 == 0
    return False


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` with strides (columns, 1), copied only if it has other strides."""
    if t.stride() == (t.shape[1], 1):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _no_columns(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)


def _check_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    check_float_tensor(weight, "weight", ndim=2)
    check_float_tensor(x, "x")
    out_features, in_features = weight.shape
    if x.ndim == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"x: expected a last dimension of {in_features} to chain with weight "
            f"[out, in] = {list(weight.shape)}, got shape {tuple(x.shape)}"
        )
    if bias is not None:
        check_float_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != out_features:
            raise ValueError(
                f"bias: expected shape ({out_features},) (weight's out_features), "
                f"got {tuple(bias.shape)}"
            )
    return x, weight, bias


class _Tally:
    """Running statistics of one layer's inputs; ``hook`` is its forward pre-hook."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.n_tokens = 0
        self.in_features = 0
        self.counts: torch.Tensor | None = None
        self.max_abs: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        magnitude = x.reshape(-1, x.shape[-1]).abs().float()
        counts = (magnitude >= self.threshold).sum(dim=0)
        max_abs = magnitude.amax(dim=0) if magnitude.shape[0] else magnitude.new_zeros(x.shape[-1])
        if self.counts is None:
            self.counts, self.max_abs = counts, max_abs
        else:
            self.counts += counts
            torch.maximum(self.max_abs, max_abs, out=self.max_abs)
        self.n_tokens += magnitude.shape[0]
        self.in_features = x.shape[-1]

    def result(self, name: str) -> OutlierFeatures:
        if self.counts is None:  # the layer never ran (e.g. an unused branch)
            counts, max_abs = _no_columns(), torch.zeros(0)
        else:
            counts, max_abs = self.counts.cpu(), self.max_abs.cpu()
        dims = torch.argwhere(counts > 0).view(-1)
        return OutlierFeatures(
            name=name,
            threshold=self.threshold,
            in_features=self.in_features,
            n_tokens=self.n_tokens,
            dims=dims,
            counts=counts[dims],
            max_abs=max_abs,
        )
