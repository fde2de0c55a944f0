"""Rotations: spread the outliers over every channel with orthogonal matrices folded into the model.

QuaRot (Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS 2024),
after SliceGPT's computational invariance (Ashkboos et al. 2024, §3) and QuIP#'s incoherence
(Tseng et al. 2024):

- **an orthogonal Q changes no function it is folded into**: x Wᵀ = (x Q)(W Q)ᵀ because
  Q Qᵀ = I. An RMSNorm commutes with Q once its weight is folded into the next linears
  (‖x Q‖ = ‖x‖), so the whole residual stream can be rotated: the embedding E ← E Q, every
  linear that reads the stream W ← W Q (q, k, v, gate, up, the LM head), every linear that
  writes it W ← Qᵀ W (o, down). The logits do not change (up to float rounding).
- **after a rotation no channel stands out**: an outlier channel's size is shared by all the
  channels (each output of x H is a ±1/√n mix of all of x), which is what lets activations be
  quantized to 4 bits; a Hadamard matrix H (entries ±1/√n) spreads a spike perfectly evenly.
- **online rotations**: the inputs of ``down_proj`` and ``o_proj`` are not on the residual
  stream (after the SiLU product, after attention), so QuaRot rotates them at run time with a
  fast Hadamard transform and folds its transpose into the layer: W ← W H.

Which Hadamard matrices: Sylvester's for powers of two (H₂ₖ = [[H, H], [H, −H]]), and for
n = m · 2ᵏ the Kronecker product
H_m ⊗ H_{2ᵏ} with H_m from Paley's constructions (Paley I: m = q + 1 for a prime q ≡ 3 mod 4;
Paley II: m = 2(q + 1) for a prime q ≡ 1 mod 4), the smallest such m. The course's model needs
576 = 36 · 16 (Paley II, q = 17) and 1536 = 12 · 128 (Paley I, q = 11): the same orders QuaRot
stores as hard-coded tables (``hadamard_utils.get_had36``, ``get_had12``), built here from their
construction. No Hadamard matrix exists for an n > 2 that 4 does not divide, and a few
multiples of 4 (52, 92, 100, …) need other constructions: there ``kind="random"`` gives a random
orthogonal matrix instead (Haar: QR of a Gaussian), applied as a dense product.

QuaRot also puts a Hadamard over the heads' dimension into v_proj and o_proj; with this model's 9
heads (no Hadamard of order 9) the online rotation before ``o_proj`` is the full 576-wide one.
Only RMSNorm models (Llama, SmolLM2, Mistral, Qwen2): a LayerNorm subtracts the mean, which a
rotation does not commute with. Taught in notebooks/11_moving_outliers.ipynb.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from qlearn._checks import check_bool, check_choice, check_float_tensor, check_int, check_module
from qlearn._layers import is_linear, set_weight_, weight_of
from qlearn.models import decoder_layers
from qlearn.offload import require_in_memory

__all__ = [
    "KINDS",
    "OnlineRotation",
    "RotatedLinear",
    "Rotation",
    "apply_hadamard",
    "fold_norms_",
    "hadamard",
    "hadamard_order",
    "kurtosis",
    "random_orthogonal",
    "rotate_model_",
]

KINDS: Final = ("hadamard", "random")
"""The residual stream's rotation: a (Kronecker–Paley) Hadamard matrix, or a random orthogonal."""

_READS: Final = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
)
_WRITES: Final = ("self_attn.o_proj", "mlp.down_proj")


# --------------------------------------------------------------------------------------------
# Hadamard and orthogonal matrices
# --------------------------------------------------------------------------------------------


def hadamard_order(n: int) -> tuple[int, int] | None:
    """``(m, p)`` with n = m · p, p a power of two and m an order built by Paley's construction
    (or 1), the smallest such m; None when there is none (no Hadamard matrix of an
    order n > 2 that 4 does not divide exists; 52, 92, 100, … need other constructions)."""
    n = check_int(n, "n", minimum=1)
    p = n & -n  # the largest power of two dividing n
    while p >= 1:
        m = n // p
        if m == 1 or _paley_kind(m) is not None:
            return m, p
        p //= 2
    return None


def hadamard(n: int, *, normalized: bool = True) -> torch.Tensor:
    """The Hadamard matrix of order n this module uses, float64 [n, n]: H_m ⊗ H_p (Paley ⊗
    Sylvester, :func:`hadamard_order`), entries ±1/√n (``normalized``, orthogonal: H Hᵀ = I) or
    ±1 (H Hᵀ = n I). Raises naming n when no such order exists. Hadamard 1867; Sylvester 1867;
    Paley 1933."""
    normalized = check_bool(normalized, "normalized")
    factors = _require_order(n, "n")
    m, p = factors
    h = torch.kron(_base(m), _sylvester(p))
    return h / math.sqrt(n) if normalized else h


def apply_hadamard(x: torch.Tensor) -> torch.Tensor:
    """x H for the normalized :func:`hadamard` of order x.shape[-1], without the n × n product:
    H = H_m ⊗ H_a ⊗ H_b ⊗ … (the Paley factor, then Sylvester factors of at most 128), and a
    Kronecker product acts on x one factor at a time, each along its own axis of x reshaped to
    [m, a, b, …]: m + a + b + … multiply-adds per value instead of n (1536: 12 + 128 = 140
    instead of 1536). Returns x's shape and dtype; computed in float32 (float64 stays)."""
    check_float_tensor(x, "x")
    n = x.shape[-1]
    m, p = _require_order(n, "x.shape[-1]")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    factors = ([m] if m > 1 else []) + _sylvester_factors(p)
    y = x.to(dtype).reshape(-1, n)
    before = 1
    for f in factors:
        after = n // (before * f)
        y = y.reshape(-1, before, f, after)
        y = torch.einsum("rifj,fg->rigj", y, _factor(f, dtype))
        before *= f
    return (y.reshape(x.shape) / math.sqrt(n)).to(x.dtype)


def random_orthogonal(n: int, *, seed: int = 0) -> torch.Tensor:
    """A random orthogonal matrix, float64 [n, n], uniform over the orthogonal group (Haar):
    Q of the QR of a Gaussian matrix, its columns' signs fixed by R's diagonal (Mezzadri 2007).
    SpinQuant's and QuaRot's random baseline."""
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def kurtosis(x: torch.Tensor) -> float:
    """E[(x − μ)⁴] / σ⁴ over all of x: 3 for a Gaussian, 1.8 for a uniform, large when a few
    values stand out. QuaRot and SpinQuant report it before and after rotating."""
    check_float_tensor(x, "x")
    if x.numel() < 2:
        raise ValueError(f"x: expected at least 2 values, got {x.numel()}")
    v = x.detach().double().flatten()
    centred = v - v.mean()
    var = centred.pow(2).mean()
    if var == 0:
        raise ValueError("x: expected values that are not all equal (σ = 0)")
    return float(centred.pow(4).mean() / var**2)


# --------------------------------------------------------------------------------------------
# Online rotations: modules
# --------------------------------------------------------------------------------------------


class OnlineRotation(nn.Module):
    """x ↦ x Q at run time, for an orthogonal Q of order ``size``: the fast Hadamard transform
    (``matrix=None``) or a dense product with ``matrix`` (float32 buffer)."""

    def __init__(self, size: int, matrix: torch.Tensor | None = None) -> None:
        super().__init__()
        self.size = check_int(size, "size", minimum=1)
        if matrix is None:
            _require_order(self.size, "size")
            self.matrix = None
        else:
            check_float_tensor(matrix, "matrix", ndim=2)
            if tuple(matrix.shape) != (self.size, self.size):
                raise ValueError(
                    f"matrix: expected shape {(self.size, self.size)}, got {tuple(matrix.shape)}"
                )
            self.register_buffer("matrix", matrix.float().contiguous())

    def dense(self) -> torch.Tensor:
        """Q as a float64 [size, size] matrix."""
        return hadamard(self.size) if self.matrix is None else self.matrix.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            raise ValueError(
                f"x: expected {self.size} features in the last dimension, got {x.shape[-1]}"
            )
        if self.matrix is None:
            return apply_hadamard(x)
        return (x.float() @ self.matrix).to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, {'hadamard' if self.matrix is None else 'dense'}"


class RotatedLinear(nn.Module):
    """``linear(rotation(x))``: a linear layer whose input is rotated online, its weight holding
    the rotation's transpose (QuaRot's online Hadamard before ``down_proj``). The linear is a
    child, so ``qlearn.models.linear_layers`` finds it (as ``...down_proj.linear``) and the
    quantizers see the rotated input it really receives."""

    def __init__(self, rotation: OnlineRotation, linear: nn.Module) -> None:
        super().__init__()
        if not isinstance(rotation, OnlineRotation):
            raise TypeError(f"rotation: expected an OnlineRotation, got {type(rotation).__name__}")
        if not is_linear(linear):
            raise TypeError(
                f"linear: expected nn.Linear or transformers Conv1D, got {type(linear).__name__}"
            )
        if weight_of(linear).shape[1] != rotation.size:
            raise ValueError(
                f"linear: expected {rotation.size} input features (the rotation's size), got "
                f"{weight_of(linear).shape[1]}"
            )
        self.rotation = rotation
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rotation(x))


# --------------------------------------------------------------------------------------------
# Rotating a model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate_model_` did: the residual stream's rotation (``kind``, its order,
    its factors for a Hadamard), and the online rotations it added, by layer name."""

    kind: str
    size: int
    factors: tuple[int, int] | None
    online: tuple[str, ...]


def fold_norms_(model: nn.Module) -> nn.Module:
    """In place: fold every RMSNorm's weight into the linears that read its output, and set it
    to 1 (QuaRot's ``fuse_layer_norms``): input norm → q, k, v; post-attention norm → gate, up;
    the final norm → the LM head, which is first untied from the embedding (a copy: 4 bytes per
    vocabulary entry and hidden channel more in FP32). The logits do not change. Raises naming
    the first norm that is not an RMSNorm without bias. Taught in
    notebooks/11_moving_outliers.ipynb."""
    check_module(model)
    require_in_memory(model, "load it into memory first (the norms are changed in place)")
    prefix, blocks = decoder_layers(model)
    final_name, final = _final_norm(model, prefix)
    sites = []
    for index, block in enumerate(blocks):
        here = f"{prefix}.{index}"
        _check_block(block, here)
        sites.append((block.input_layernorm, [block.get_submodule(n) for n in _READS[:3]]))
        sites.append((block.post_attention_layernorm, [block.get_submodule(n) for n in _READS[3:]]))
    _check_rms_norm(final, final_name)
    head = _untied_head(model)
    sites.append((final, [head]))
    with torch.no_grad():
        for norm, layers in sites:
            gamma = norm.weight.detach().double()
            for layer in layers:
                set_weight_(layer, weight_of(layer).double() * gamma[None, :])
            norm.weight.fill_(1.0)
    return model


def rotate_model_(
    model: nn.Module,
    *,
    kind: str = "hadamard",
    seed: int = 0,
    online: bool = True,
) -> Rotation:
    """In place: QuaRot's rotation of a Llama-style model; the logits stay the same.

    :func:`fold_norms_`, then the residual stream is rotated by Q (``kind="hadamard"``: the
    normalized :func:`hadamard` of the hidden size; ``"random"``: :func:`random_orthogonal`
    with ``seed``): E ← E Q for the embedding, W ← W Q for q, k, v, gate, up and the LM head,
    W ← Qᵀ W (and b ← b Q) for o_proj and down_proj. With ``online``, ``down_proj`` and
    ``o_proj`` become :class:`RotatedLinear`: their input is rotated by a Hadamard at run time
    and their weight holds W H. With ``kind="hadamard"`` a size with no Hadamard of its order
    (:func:`hadamard_order`) raises before anything changes; with ``kind="random"`` an online
    rotation of such a size is a random orthogonal (a dense product). Every product is taken in
    float64 and stored in the weights' dtype. Returns a :class:`Rotation`. Ashkboos et al. 2024,
    §4 (stage 1a–1b). Taught in notebooks/11_moving_outliers.ipynb.
    """
    check_module(model)
    kind = check_choice(kind, "kind", KINDS)
    seed = check_int(seed, "seed")
    online = check_bool(online, "online")
    require_in_memory(model, "load it into memory first (every weight is rotated in place)")
    prefix, blocks = decoder_layers(model)
    for index, block in enumerate(blocks):
        _check_block(block, f"{prefix}.{index}")
    hidden = model.get_input_embeddings().weight.shape[1]
    sizes = {hidden} | (
        {weight_of(blocks[0].get_submodule(n)).shape[1] for n in _WRITES} if online else set()
    )
    for size in sorted(sizes) if kind == "hadamard" else ():
        _require_order(size, "kind='hadamard': a size the model needs")
    fold_norms_(model)
    q = hadamard(hidden) if kind == "hadamard" else random_orthogonal(hidden, seed=seed)
    added = []
    with torch.no_grad():
        embedding = model.get_input_embeddings()
        embedding.weight.copy_((embedding.weight.double() @ q).to(embedding.weight.dtype))
        head = model.get_output_embeddings()
        set_weight_(head, weight_of(head).double() @ q)
        for index, block in enumerate(blocks):
            for name in _READS:
                layer = block.get_submodule(name)
                set_weight_(layer, weight_of(layer).double() @ q)
            for name in _WRITES:
                layer = block.get_submodule(name)
                set_weight_(layer, q.T @ weight_of(layer).double())
                if getattr(layer, "bias", None) is not None:
                    layer.bias.copy_((layer.bias.double() @ q).to(layer.bias.dtype))
                if online:
                    _rotate_input_online(block, name, seed)
                    added.append(f"{prefix}.{index}.{name}")
    factors = hadamard_order(hidden) if kind == "hadamard" else None
    return Rotation(kind, hidden, factors, tuple(added))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _paley_kind(m: int) -> str | None:
    """'I' or 'II' when Paley's construction gives a Hadamard matrix of order m, else None."""
    if m >= 4 and _is_prime(m - 1) and (m - 1) % 4 == 3:
        return "I"
    if m % 2 == 0 and m >= 6 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return "II"
    return None


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = χ(j − i) mod q, χ the quadratic character (0, +1 residue, −1 non-residue)."""
    residues = {k * k % q for k in range(1, q)}
    chi = torch.tensor(
        [0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64
    )
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _base(m: int) -> torch.Tensor:
    """The ±1 Hadamard matrix of order m (1, or Paley I/II), float64."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if _paley_kind(m) == "I":  # q ≡ 3 mod 4: H = I + [[0, 1ᵀ], [−1, Q]], Q skew-symmetric
        q = m - 1
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + s
    q = m // 2 - 1  # Paley II, q ≡ 1 mod 4: C = [[0, 1ᵀ], [1, Q]] symmetric, H = C ⊗ A + I ⊗ B
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)


def _sylvester(p: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _sylvester_factors(p: int, largest: int = 128) -> list[int]:
    """p (a power of two) as a product of powers of two of at most ``largest``."""
    factors = []
    while p > 1:
        factors.append(min(p, largest))
        p //= factors[-1]
    return factors


@functools.lru_cache(maxsize=32)
def _factor(f: int, dtype: torch.dtype) -> torch.Tensor:
    """The ±1 Hadamard factor of order f (Paley or Sylvester) in ``dtype``, built once."""
    return (_base(f) if hadamard_order(f) == (f, 1) else _sylvester(f)).to(dtype)


def _require_order(n: int, name: str) -> tuple[int, int]:
    n = check_int(n, name, minimum=1)
    factors = hadamard_order(n)
    if factors is None:
        raise ValueError(
            f"{name}: expected an order with a Hadamard matrix here (2^k, or m · 2^k with m a "
            f"Paley order such as 12, 20, 28 or 36), got {n}; use random_orthogonal({n}) or "
            "kind='random' instead"
        )
    return factors


def _check_block(block: nn.Module, here: str) -> None:
    names = {name for name, _ in block.named_modules()}
    missing = [n for n in (*_READS, *_WRITES) if n not in names]
    if missing or not {"input_layernorm", "post_attention_layernorm"} <= names:
        raise ValueError(
            f"model: expected Llama-style decoder layers (input_layernorm, "
            f"post_attention_layernorm, q/k/v/o_proj, gate/up/down_proj), got "
            f"{type(block).__name__} at {here}"
        )
    for name in ("input_layernorm", "post_attention_layernorm"):
        _check_rms_norm(block.get_submodule(name), f"{here}.{name}")
    for name in (*_READS, *_WRITES):
        if not is_linear(block.get_submodule(name)):
            raise ValueError(
                f"model: expected {here}.{name} to be a linear layer (already rotated or "
                f"quantized?), got {type(block.get_submodule(name)).__name__}"
            )


def _check_rms_norm(norm: nn.Module, name: str) -> None:
    weight = getattr(norm, "weight", None)
    if (
        "RMSNorm" not in type(norm).__name__
        or not isinstance(weight, torch.Tensor)
        or getattr(norm, "bias", None) is not None
    ):
        raise ValueError(
            f"model: expected {name} to be an RMSNorm with a weight and no bias (its weight is "
            f"folded into the next layers), got {type(norm).__name__}: a LayerNorm subtracts the "
            "mean, which a rotation does not commute with"
        )


def _final_norm(model: nn.Module, prefix: str) -> tuple[str, nn.Module]:
    parent = prefix.rpartition(".")[0]
    name = f"{parent}.norm" if parent else "norm"
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model: expected a final norm at {name}, found none") from None


def _untied_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None or not is_linear(head):
        raise ValueError(f"model: expected a linear LM head, got {type(head).__name__}")
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        config = getattr(model, "config", None)
        if config is not None:
            config.tie_word_embeddings = False
    return head


def _rotate_input_online(block: nn.Module, name: str, seed: int) -> None:
    layer = block.get_submodule(name)
    size = weight_of(layer).shape[1]
    matrix = None if hadamard_order(size) is not None else random_orthogonal(size, seed=seed + 1)
    rotation = OnlineRotation(size, matrix)
    set_weight_(layer, weight_of(layer).double() @ rotation.dense())
    parent, _, child = name.rpartition(".")
    setattr(block.get_submodule(parent), child, RotatedLinear(rotation, layer))
