"""Tests of qlearn.bitnet against transformers' ``integrations.bitnet`` (WeightQuant, ActQuant,
AutoBitLinear, BitLinear, pack_weights / unpack_weights) and gguf's TQ1_0 / TQ2_0, plus loops
written out in the tests, hypothesis properties, and every bad argument.

transformers decorates its quantizers with ``torch.compile``; with ``TORCHDYNAMO_DISABLE=1`` set
when the module is imported, they are the plain eager functions (checked below). Its quantizers
return −0.0 where a small negative value rounds to 0; an int8 code has no sign of zero, so the
bitwise comparisons add +0.0 first (−0.0 + 0.0 = +0.0, every other value unchanged).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from qlearn.bitnet import (
    BitLinear,
    activation_quant_int8,
    pack_ternary,
    pack_ternary_2bit,
    ternary_matmul,
    unpack_ternary,
    unpack_ternary_2bit,
    weight_quant_binary,
    weight_quant_ternary,
)

_previous = os.environ.get("TORCHDYNAMO_DISABLE")
os.environ["TORCHDYNAMO_DISABLE"] = "1"  # transformers' torch.compile decorators become no-ops
from transformers.integrations import bitnet as hf_bitnet  # noqa: E402

if _previous is None:
    del os.environ["TORCHDYNAMO_DISABLE"]
else:
    os.environ["TORCHDYNAMO_DISABLE"] = _previous

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern of a float tensor, with −0.0 mapped to +0.0."""
    t = t.detach() + 0.0
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _ternary(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)


def test_transformers_quantizers_run_eagerly():
    for fn in (hf_bitnet.WeightQuant.forward, hf_bitnet.ActQuant.forward, hf_bitnet.unpack_weights):
        assert not hasattr(fn, "_torchdynamo_orig_callable"), "torch.compile is active"


# ---------------------------------------------------------------------------------------------
# transformers' WeightQuant / ActQuant, bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "scale"), [((64, 96), 0.02), ((576, 192), 1.0), ((7,), 3.0), ((8, 8), 1e-7)]
)
def test_weight_quant_ternary_equals_transformers_weightquant(dtype, shape, scale):
    """scale 1e-7: mean|W| below the 1e-5 floor, so every code is 0."""
    w = _randn(*shape, scale=scale).to(dtype)
    before = w.clone()
    q = weight_quant_ternary(w)
    reference = hf_bitnet.WeightQuant.apply(w)
    assert torch.equal(w, before)
    assert q.codes.dtype == torch.int8 and q.codes.shape == w.shape and q.scale.ndim == 0
    assert set(q.codes.unique().tolist()) <= {-1, 0, 1}
    assert q.dequantize().dtype == dtype
    assert torch.equal(_bits(q.dequantize()), _bits(reference))
    assert torch.equal(_bits((q.codes * q.scale).float().to(dtype)), _bits(reference))
    if scale == 1e-7:
        assert not q.codes.any()


def test_weight_quant_ternary_of_zeros_is_zeros():
    q = weight_quant_ternary(torch.zeros(4, 4))
    assert not q.codes.any() and not q.dequantize().any()
    assert torch.equal(q.dequantize(), hf_bitnet.WeightQuant.apply(torch.zeros(4, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(96,), (5, 96), (2, 7, 576)])
def test_activation_quant_int8_equals_transformers_actquant(dtype, shape):
    x = _randn(*shape, scale=3.0)
    x.view(-1, shape[-1])[0, 5] = 40.0  # an outlier sets one token's scale
    if len(shape) > 1:
        x.view(-1, shape[-1])[1] = 0.0  # a token of zeros: floor 1e-5, codes 0
    x = x.to(dtype)
    q = activation_quant_int8(x)
    reference = hf_bitnet.ActQuant.apply(x)
    assert q.codes.dtype == torch.int8 and q.codes.shape == x.shape
    assert q.scale.shape == (*shape[:-1], 1)
    assert int(q.codes.abs().max()) == 127
    assert torch.equal(_bits(q.dequantize()), _bits(reference))
    # the codes are the ones transformers' packed BitLinear computes for its integer matmul
    codes, s = hf_bitnet.BitLinear.activation_quant(None, x.float())
    assert torch.equal(q.codes, codes)
    assert torch.equal(q.scale, 1.0 / s.double())


def test_weight_quant_binary_equals_the_paper_written_as_a_loop():
    """BitNet eq. 1–3: W̃ = Sign(W − α), α = mean(W), Sign(0) = −1; β = mean|W|."""
    w = _randn(12, 10, scale=0.1) + 0.03  # a nonzero mean: the centering matters
    w[0, 0] = float(w.mean())  # exactly α: Sign(0) = −1
    q = weight_quant_binary(w)
    values = w.flatten().tolist()
    alpha = float(w.mean())
    beta = sum(abs(v) for v in values) / len(values)
    for code, value in zip(q.codes.flatten().tolist(), values, strict=True):
        assert code == (1 if value - alpha > 0 else -1)
    assert q.codes[0, 0] == -1
    assert float(q.scale) == pytest.approx(beta, rel=1e-6)
    assert torch.equal(q.dequantize(), q.codes.float() * float(w.abs().mean()))


# ---------------------------------------------------------------------------------------------
# BitLinear: transformers' AutoBitLinear, and the straight-through gradient
# ---------------------------------------------------------------------------------------------


def _pair(bias: bool, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    ours = BitLinear(96, 64, bias=bias, dtype=dtype)
    reference = hf_bitnet.AutoBitLinear(
        96, 64, bias=bias, online_quant=True, use_rms_norm=True, dtype=dtype
    )
    reference.to(dtype)  # transformers (5.23) creates its RMSNorm in float32 whatever dtype
    with torch.no_grad():
        ours.rms_norm.weight.uniform_(0.5, 1.5)
        reference.weight.copy_(ours.weight)
        reference.rms_norm.weight.copy_(ours.rms_norm.weight)
        if bias:
            reference.bias.copy_(ours.bias)
    return ours, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_bitlinear_equals_transformers_autobitlinear(bias, dtype):
    """Same output, and the same gradients for the input, the latent weight, the norm and bias."""
    ours, reference = _pair(bias, dtype)
    x = _randn(3, 5, 96).to(dtype).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), reference(x_ref)
    assert torch.equal(_bits(y), _bits(y_ref))
    upstream = _randn(3, 5, 64, seed=1).to(dtype)
    y.backward(upstream)
    y_ref.backward(upstream)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(ours.weight.grad, reference.weight.grad)
    assert torch.equal(ours.rms_norm.weight.grad, reference.rms_norm.weight.grad)
    if bias:
        assert torch.equal(ours.bias.grad, reference.bias.grad)


@pytest.mark.parametrize("weights", ["ternary", "binary"])
def test_bitlinear_latent_weight_gradient_equals_plain_linear_through_the_ste(weights):
    """dL/dW (latent) of BitLinear = dL/dŴ of an nn.Linear holding Ŵ = q(W), fed q(RMSNorm(x))."""
    torch.manual_seed(0)
    layer = BitLinear(80, 48, bias=True, weights=weights)
    x = _randn(6, 80)
    upstream = _randn(6, 48, seed=1)
    layer(x).backward(upstream)
    plain = nn.Linear(80, 48)
    with torch.no_grad():
        plain.weight.copy_(layer.quantize_weight().dequantize())
        plain.bias.copy_(layer.bias)
        x_q = activation_quant_int8(layer.rms_norm(x)).dequantize()
    plain(x_q).backward(upstream)
    assert torch.equal(layer.weight.grad, plain.weight.grad)
    assert torch.equal(layer.bias.grad, plain.bias.grad)
    codes = layer.quantize_weight().codes
    assert set(codes.unique().tolist()) == ({-1, 0, 1} if weights == "ternary" else {-1, 1})


def test_bitlinear_without_norm_is_linear_on_the_reference_quantizers():
    torch.manual_seed(0)
    layer = BitLinear(32, 16, rms_norm=False)
    x = _randn(4, 32, scale=2.0)
    expected = nn.functional.linear(
        hf_bitnet.ActQuant.apply(x), hf_bitnet.WeightQuant.apply(layer.weight.detach())
    )
    assert torch.equal(_bits(layer(x)), _bits(expected))
    assert layer.rms_norm is None


@pytest.mark.parametrize("bias", [False, True])
def test_integer_forward_equals_transformers_packed_bitlinear(bias):
    """The inference path: our 2-bit bytes loaded into transformers' BitLinear (which unpacks
    them, multiplies in float32 and divides by both scales) give the output of
    ``integer_forward`` (integer accumulation, scales in float64) to float32 rounding; both equal
    the fake-quantized ``forward`` to float32 rounding."""
    ours, _ = _pair(bias)
    reference = hf_bitnet.BitLinear(96, 64, bias=bias, dtype=torch.float32, use_rms_norm=True)
    q = ours.quantize_weight()
    with torch.no_grad():
        reference.weight.copy_(pack_ternary_2bit(q.codes))
        reference.weight_scale.copy_(1.0 / q.scale.float())
        reference.rms_norm.weight.copy_(ours.rms_norm.weight)
        if bias:
            reference.bias.copy_(ours.bias)
    x = _randn(2, 9, 96)
    with torch.no_grad():
        y_int, y_ref, y = ours.integer_forward(x), reference(x), ours(x)
    magnitude = y.abs() + (ours.bias.abs() if bias else 0.0) + 1e-6  # the bias may cancel
    assert y_int.shape == y_ref.shape == (2, 9, 64)
    assert ((y_int - y_ref).abs() <= 8 * 2.0**-24 * magnitude).all()
    # forward sums float32 products: a float32 dot product's rounding, bounded by |x||w| terms
    bound = (
        96
        * 2.0**-24
        * (activation_quant_int8(ours.rms_norm(x)).dequantize().abs() @ q.dequantize().abs().T)
    )
    assert ((y_int - y).abs() <= bound + 4 * 2.0**-24 * magnitude).all()


# ---------------------------------------------------------------------------------------------
# Packing: transformers' 2-bit layout, a 5-trits-per-byte loop, gguf's TQ1_0 / TQ2_0
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 96), (5, 3), (13,), (1, 7), (6, 2, 3)])
def test_pack_ternary_2bit_equals_transformers_pack_weights(shape):
    codes = _ternary(*shape)
    packed = pack_ternary_2bit(codes)
    reference = hf_bitnet.pack_weights(codes.clone())  # it adds 1 to its argument in place
    assert packed.dtype == reference.dtype == torch.uint8
    assert torch.equal(packed, reference)
    unpacked = hf_bitnet.unpack_weights(packed, dtype=torch.int8)
    assert torch.equal(unpacked[: shape[0]], codes)
    assert torch.equal(unpack_ternary_2bit(packed, shape), codes)


@pytest.mark.parametrize("shape", [(10, 4), (7, 3), (13,), (1,)])
def test_pack_ternary_equals_a_base_3_loop(shape):
    """Byte j of column c holds Σ_k (code[j + k·R, c] + 1) · 3^k, R = ceil(n / 5)."""
    codes = _ternary(*shape, seed=1)
    packed = pack_ternary(codes)
    n = shape[0]
    rows = math.ceil(n / 5)
    flat_codes = codes.reshape(n, -1)
    expected = torch.zeros(rows, flat_codes.shape[1], dtype=torch.uint8)
    for j in range(rows):
        for c in range(flat_codes.shape[1]):
            byte = 0
            for k in range(5):
                row = j + k * rows
                digit = int(flat_codes[row, c]) + 1 if row < n else 0
                byte += digit * 3**k
            expected[j, c] = byte
    assert torch.equal(packed, expected.reshape(rows, *shape[1:]))
    assert torch.equal(unpack_ternary(packed, shape), codes)


@pytest.mark.parametrize(
    ("pack", "qtype", "code_bits"),
    [
        (pack_ternary, GGMLQuantizationType.TQ1_0, 1.6),
        (pack_ternary_2bit, GGMLQuantizationType.TQ2_0, 2.0),
    ],
)
def test_packed_sizes_match_gguf_tq1_0_and_tq2_0(pack, qtype, code_bits):
    """256 codes in qlearn's packing plus one fp16 scale = one block of gguf's TQ type."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    codes = _ternary(block_size)
    packed = pack(codes)
    assert packed.numel() + 2 == type_size  # TQ1_0: 52 + 2 = 54; TQ2_0: 64 + 2 = 66
    assert packed.numel() * 8 / codes.numel() == pytest.approx(code_bits, abs=0.03)
    assert type_size * 8 / block_size == {1.6: 1.6875, 2.0: 2.0625}[code_bits]
    wide = _ternary(5 * 576, 4)  # a multiple of 5 rows: exactly 1.6 bits (2 bits) per weight
    assert pack(wide).numel() * 8 / wide.numel() == code_bits


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0])
def test_ternary_weights_survive_gguf_tq1_0_and_tq2_0(qtype):
    """gguf's TQ types store what weight_quant_ternary computes: the codes dequantize to
    themselves, and the dequantized weights come back as the same codes times the scale
    rounded to fp16 (TQ's per-block scale is max|x| in fp16, here 1 / s)."""
    w = _randn(8, 512, scale=0.05)
    q = weight_quant_ternary(w)
    codes = q.codes.float().numpy()
    assert np.array_equal(quants.dequantize(quants.quantize(codes, qtype), qtype), codes)
    w_hat = q.dequantize().numpy()
    back = quants.dequantize(quants.quantize(w_hat, qtype), qtype)
    scale16 = np.float32(np.float16(float(q.scale)))
    assert np.array_equal(back, codes * scale16)
    assert abs(scale16 / float(q.scale) - 1) <= 2.0**-11


# ---------------------------------------------------------------------------------------------
# ternary_matmul: the integer matmul, with additions only
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "x_dtype", "out_dtype"),
    [
        ((5, 96), torch.int8, torch.int32),
        ((2, 3, 96), torch.int8, torch.int32),
        ((96,), torch.int16, torch.int64),
        ((64, 96), torch.int32, torch.int64),
    ],
)
def test_ternary_matmul_equals_integer_matmul(x_shape, x_dtype, out_dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, x_shape, generator=g).to(x_dtype)
    w = _ternary(40, 96, seed=2)
    y = ternary_matmul(x, w)
    expected = x.long() @ w.long().T  # int64 matmul: the exact reference
    assert y.dtype == out_dtype and y.shape == (*x_shape[:-1], 40)
    assert torch.equal(y.long(), expected)


def test_ternary_matmul_equals_integer_matmul_in_chunks():
    """Large enough that the output rows are processed in several chunks."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-127, 128, (256, 1024), generator=g, dtype=torch.int8)
    w = _ternary(300, 1024, seed=3)
    assert torch.equal(ternary_matmul(x, w).long(), x.long() @ w.long().T)


def test_ternary_matmul_with_binary_codes_and_extreme_values():
    x = torch.full((3, 4096), -128, dtype=torch.int8)
    w = -torch.ones(2, 4096, dtype=torch.int8)
    assert ternary_matmul(x, w).tolist() == [[128 * 4096] * 2] * 3


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

_shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)


@settings(max_examples=80, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 2**16))
def test_pack_unpack_round_trips(shape, seed):
    codes = _ternary(*shape, seed=seed)
    for pack, unpack, per_byte in (
        (pack_ternary, unpack_ternary, 5),
        (pack_ternary_2bit, unpack_ternary_2bit, 4),
    ):
        packed = pack(codes)
        assert packed.dtype == torch.uint8
        assert packed.shape == (math.ceil(shape[0] / per_byte), *shape[1:])
        assert torch.equal(unpack(packed, shape), codes)
    assert int(pack_ternary(codes).max()) <= 242


_floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)), elements=_floats))
def test_activation_codes_in_range_and_error_at_most_half_a_step(x):
    x = torch.from_numpy(x)
    q = activation_quant_int8(x)
    assert bool((q.codes.abs() <= 127).all())
    step = q.scale.float()  # one step per token: max|x| / 127 (or 1e-5 / 127)
    error = (x.double() - q.dequantize().double()).abs()
    assert bool((error <= step.double() * (0.5 + 1e-5) + 1e-6 * x.double().abs()).all())


@settings(max_examples=80, deadline=None)
@given(w=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 30)), elements=_floats))
def test_ternary_codes_in_range_and_error_bounded(w):
    """Within 1.5 γ of zero a weight is off by at most γ/2; beyond, it is clipped to ±γ."""
    w = torch.from_numpy(w)
    q = weight_quant_ternary(w)
    assert set(q.codes.unique().tolist()) <= {-1, 0, 1}
    gamma = float(q.scale)
    error = (w.double() - q.dequantize().double()).abs()
    bound = torch.maximum(torch.full_like(error, gamma / 2), w.double().abs() - gamma)
    assert bool((error <= bound * (1 + 1e-5) + 1e-30).all())
    binary = weight_quant_binary(w)
    assert set(binary.codes.unique().tolist()) <= {-1, 1}


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

QUANTIZERS = [weight_quant_ternary, weight_quant_binary, activation_quant_int8]


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.ones(3, 4, dtype=torch.int8), TypeError, "expected a floating-point tensor"),
        (torch.empty(0, 4), ValueError, "expected a non-empty tensor"),
        (torch.tensor([[1.0, math.nan]]), ValueError, "expected finite values"),
        (torch.tensor([[1.0, math.inf]]), ValueError, "expected finite values"),
        (np.ones((2, 2), dtype=np.float32), TypeError, "expected a torch.Tensor"),
    ],
)
def test_quantizers_reject_bad_input(quantize, value, error, match):
    with pytest.raises(error, match=match):
        quantize(value)


def test_activation_quant_rejects_a_scalar_and_bitlinear_a_nan_input():
    with pytest.raises(ValueError, match="x: expected at least one dimension"):
        activation_quant_int8(torch.tensor(1.0))
    with pytest.raises(ValueError, match="x: expected finite values"):
        BitLinear(2, 2)(torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(ValueError, match="weights: expected one of 'ternary', 'binary'"):
        BitLinear(2, 2, weights="2bit")
    with pytest.raises(ValueError, match="eps: expected a finite number > 0"):
        BitLinear(2, 2, eps=0.0)


@pytest.mark.parametrize("pack", [pack_ternary, pack_ternary_2bit])
@pytest.mark.parametrize(
    ("codes", "error", "match"),
    [
        (torch.tensor([0, 1, 2, -1], dtype=torch.int8), ValueError, "outside, e.g. \\[2\\]"),
        (torch.tensor([-3, 0]), ValueError, "codes: expected ternary codes in"),
        (torch.tensor([0.0, 1.0]), TypeError, "codes: expected an integer tensor"),
        (torch.tensor([True, False]), TypeError, "codes: expected an integer tensor"),
        (torch.empty(0, dtype=torch.int8), ValueError, "codes: expected a non-empty tensor"),
        (torch.tensor(1, dtype=torch.int8), ValueError, "codes: expected at least one dim"),
        ([0, 1], TypeError, "codes: expected a torch.Tensor"),
    ],
)
def test_packing_rejects_bad_codes(pack, codes, error, match):
    with pytest.raises(error, match=match):
        pack(codes)


@pytest.mark.parametrize(("unpack", "per_byte"), [(unpack_ternary, 5), (unpack_ternary_2bit, 4)])
def test_unpacking_rejects_a_buffer_of_the_wrong_length_or_type(unpack, per_byte):
    codes = _ternary(12, 3)
    packed = (pack_ternary if per_byte == 5 else pack_ternary_2bit)(codes)
    with pytest.raises(ValueError, match=r"packed: expected shape \(\d, 3\)"):
        unpack(packed[:-1], codes.shape)
    with pytest.raises(ValueError, match="packed: expected shape"):
        unpack(packed, (12, 4))
    with pytest.raises(ValueError, match="packed: expected shape"):
        unpack(packed.flatten(), codes.shape)
    with pytest.raises(TypeError, match=r"packed: expected dtype torch\.uint8"):
        unpack(packed.to(torch.int16), codes.shape)
    with pytest.raises(TypeError, match=r"packed: expected a uint8 torch\.Tensor"):
        unpack(packed.tolist(), codes.shape)
    with pytest.raises(TypeError, match="shape: expected a non-empty tuple"):
        unpack(packed, 36)
    with pytest.raises(ValueError, match="shape: expected at least 1"):
        unpack(packed, (12, 0))


def test_unpacking_rejects_bytes_that_are_not_codes():
    with pytest.raises(ValueError, match="packed: expected bytes from 0 to 242"):
        unpack_ternary(torch.tensor([243], dtype=torch.uint8), (5,))
    with pytest.raises(ValueError, match="packed: expected 2-bit fields 0, 1 or 2"):
        unpack_ternary_2bit(torch.tensor([0b1100], dtype=torch.uint8), (4,))


def test_ternary_matmul_rejects_bad_input():
    x = torch.ones(2, 8, dtype=torch.int8)
    w = _ternary(3, 8)
    with pytest.raises(TypeError, match="x_codes: expected an integer tensor"):
        ternary_matmul(x.float(), w)
    with pytest.raises(ValueError, match="w_codes: expected ternary codes"):
        ternary_matmul(x, w * 2)
    with pytest.raises(ValueError, match="x_codes: expected a last dimension of 8"):
        ternary_matmul(torch.ones(2, 7, dtype=torch.int8), w)
    with pytest.raises(ValueError, match=r"w_codes: expected a 2-D tensor \[out, in\]"):
        ternary_matmul(x, w.flatten())
    with pytest.raises(ValueError, match="x_codes: expected a non-empty tensor"):
        ternary_matmul(torch.empty(0, 8, dtype=torch.int8), w)


# ---------------------------------------------------------------------------------------------
# Bytes and the model-level API
# ---------------------------------------------------------------------------------------------


def test_results_count_the_bytes_they_would_store():
    """Ternary codes as pack_ternary packs them, binary codes one bit each, int8 activations one
    byte each; every scale as a float32 (4 bytes)."""
    from qlearn._quantized import Quantized

    torch.manual_seed(0)
    w = torch.randn(12, 7)
    ternary = weight_quant_ternary(w)
    assert isinstance(ternary, Quantized)
    assert ternary.nbytes() == pack_ternary(ternary.codes).numel() + 4 == 3 * 7 + 4
    assert ternary.bits_per_weight() == 8 * ternary.nbytes() / w.numel()
    binary = weight_quant_binary(w)
    assert binary.nbytes() == math.ceil(w.numel() / 8) + 4
    acts = activation_quant_int8(w)
    assert acts.nbytes() == acts.codes.numel() * acts.codes.element_size() + 4 * 12


def test_quantize_model_fake_quantizes_every_decoder_linear(tiny_model):
    from qlearn import bitnet
    from qlearn.models import get_weight, linear_layers

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    quantized = bitnet.quantize_model(tiny_model)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    for (name, layer), (_, original) in zip(
        linear_layers(quantized), linear_layers(tiny_model), strict=True
    ):
        expected = weight_quant_ternary(get_weight(original)).dequantize()
        assert torch.equal(get_weight(layer), expected), name
    same = bitnet.quantize_model_(tiny_model)
    assert same is tiny_model
    for (_, a), (_, b) in zip(linear_layers(quantized), linear_layers(same), strict=True):
        assert torch.equal(get_weight(a), get_weight(b))
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        bitnet.quantize_model("gpt2")
