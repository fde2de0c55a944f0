"""Tests of qlearn.int8: bitsandbytes 0.50.2 bit for bit (vector-wise codes and row statistics)
and to fp16 rounding (``Linear8bitLt`` on CPU in eval mode), error bounds under hypothesis, tiny
models, outlier features, and every bad argument.

How bitsandbytes computes a ``Linear8bitLt(has_fp16_weights=False, threshold=6.0)`` forward on
CPU in eval mode (``MatMul8bitLt``, ``int8_vectorwise_quant``, ``int8_mixed_scaled_mm``,
``int8_mm_dequant`` of its default backend): the weight is cast to fp16 and quantized per row
once, on ``.to(device)``; the input is cast to fp16 and quantized per row with its outliers
(|x| ≥ 6) zeroed, and the columns holding one get codes 0; ``torch._int_mm`` gives the int32
product (AVX-512 CPUs; others an fp32 matmul); the product is scaled by
``row_x · row_w · 6.200124e-05`` in fp32 (plus the bias) and cast to the input's dtype; then
``addmm`` adds x[:, O] @ (codes[:, O] · row_w · fl(1/127)).to(x.dtype)ᵀ in the input's dtype.
qlearn's codes and statistics are the same bits; its output differs by the roundings explained
at each test.
"""

from __future__ import annotations

import math

import bitsandbytes as bnb
import bitsandbytes.functional as bnb_F
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from qlearn.evaluate import generate
from qlearn.int8 import (
    DEFAULT_THRESHOLD,
    MODES,
    Int8Linear,
    OutlierFeatures,
    _int8_matmul,
    find_outlier_features,
    llm_int8_matmul,
    outlier_column_fraction,
    outlier_columns,
    quantize_model,
    vectorwise_quantize,
    w8a8_matmul,
)
from qlearn.models import get_weight, linear_layers, model_footprint

U16 = 2.0**-11  # unit roundoff of fp16: a rounding moves a value by at most U16 · |value|
U32 = 2.0**-24
BNB_SCALE_EXCESS = 6.200124e-05 * 127**2 - 1  # 1.8e-5: bitsandbytes' constant vs 1/127²


def _randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _activations(*shape: int, outliers: bool, seed: int = 0) -> torch.Tensor:
    """Activations like a transformer's: N(0, 1), and with ``outliers`` two systematic
    outlier dimensions (×25 in every token, as the paper's §4 describes) and one isolated
    large value."""
    x, n = _randn(*shape, seed=seed), shape[-1]
    if outliers:  # 256 columns: systematic 5 and 76, isolated 140
        x[..., [5, n * 3 // 10]] *= 25
        x.view(-1, n)[3, n * 11 // 20] = -9.0
    else:
        x = x.clamp(-5.5, 5.5)
    return x


def _bnb_linear(linear: nn.Linear, threshold: float) -> nn.Module:
    """The documented way: load the 16-bit weights, then move it; ``.to`` quantizes."""
    reference = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=threshold,
    )
    reference.load_state_dict(linear.state_dict())
    return reference.to("cpu").eval()


def _linear(in_features: int, out_features: int, dtype: torch.dtype) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features).to(dtype)


def _outlier_part(x: torch.Tensor, linear: nn.Linear, columns: torch.Tensor) -> torch.Tensor:
    """|x[:, O]| @ |Ŵ[:, O]|ᵀ in float64: how large the 16-bit path's terms are."""
    w_hat = vectorwise_quantize(linear.weight.detach()).dequantize().double()
    return x.double().abs()[..., columns] @ w_hat.abs()[:, columns].T


# ---------------------------------------------------------------------------------------------
# bitsandbytes, bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 6.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_vectorwise_quantize_equals_bitsandbytes_int8_vectorwise_quant(dtype, threshold):
    x = _activations(48, 160, outliers=True).to(dtype)
    x[7] = 0  # a row of zeros: absmax 0, codes 0
    x[9] = 0
    x[9, [5, 48]] = 30.0  # a row that holds only outliers: absmax 0 once they are zeroed
    before = x.clone()
    ours = vectorwise_quantize(x, threshold=threshold)
    codes, row_stats, columns = bnb_F.int8_vectorwise_quant(x.clone(), threshold=threshold or 0.0)
    assert torch.equal(x, before)  # bitsandbytes writes into its input and restores it; we don't
    assert ours.codes.dtype == codes.dtype == torch.int8
    assert ours.row_absmax.dtype == row_stats.dtype == torch.float32
    assert torch.equal(ours.codes, codes)
    assert torch.equal(ours.row_absmax, row_stats)
    if threshold is None:
        assert columns is None and ours.outlier_cols.numel() == 0
    else:
        assert torch.equal(ours.outlier_cols, columns)
        assert {5, 48, 88} <= set(columns.tolist())
    assert torch.equal(ours.dequantize(), bnb_F.int8_vectorwise_dequant(codes, row_stats))


def test_vectorwise_quantize_equals_bitsandbytes_on_one_row():
    """bitsandbytes zeroes the outlier columns only when there are several rows; in one row
    they are exactly the outliers, already zeroed: the codes agree either way."""
    x = torch.tensor([[7.0, -0.5, 1.0, -8.0, 0.25]], dtype=torch.float16)
    ours = vectorwise_quantize(x, threshold=6.0)
    codes, row_stats, columns = bnb_F.int8_vectorwise_quant(x.clone(), threshold=6.0)
    assert ours.codes.tolist() == codes.tolist() == [[0, -64, 127, 0, 32]]
    assert ours.row_absmax.tolist() == row_stats.tolist() == [1.0]
    assert ours.outlier_cols.tolist() == columns.tolist() == [0, 3]


def test_vectorwise_quantize_takes_rows_along_the_last_dimension():
    x = _activations(2, 6, 96, outliers=True)
    flat = vectorwise_quantize(x.reshape(-1, 96), threshold=6.0)
    ours = vectorwise_quantize(x, threshold=6.0)
    assert ours.codes.shape == x.shape and ours.row_absmax.shape == (2, 6)
    assert torch.equal(ours.codes.reshape(-1, 96), flat.codes)
    assert torch.equal(ours.row_absmax.reshape(-1), flat.row_absmax)
    assert torch.equal(ours.outlier_cols, flat.outlier_cols)
    one = vectorwise_quantize(torch.tensor([3.2, 0.1, -1.0]))  # 1-D: one row (chapter 02's)
    assert one.codes.tolist() == [127, 4, -40] and one.row_absmax.item() == pytest.approx(3.2)


def test_vectorwise_quantize_survives_rows_too_small_for_a_float32_reciprocal():
    """127 / absmax overflows float32 below absmax ≈ 3.7e-37; such rows are scaled in float64
    (bitsandbytes returns codes 0 there: inf · x cast to int8)."""
    x = torch.tensor([[1e-38, -5e-39, 0.0], [1.0, 0.5, -0.25]])
    q = vectorwise_quantize(x)
    assert q.codes.tolist() == [[127, -64, 0], [127, 64, -32]]
    assert torch.isfinite(q.dequantize()).all()


def test_bitsandbytes_scales_the_int32_sum_by_6_200124e_05_not_1_over_127_squared():
    """bitsandbytes' CPU ``int8_mm_dequant`` multiplies by 6.200124e-05, which is not
    1/127² = 6.2000124e-05: 1.8e-5 too big. qlearn uses 1/127²; the tolerances below allow it."""
    c = torch.tensor([[127 * 127]], dtype=torch.int32)
    stats = torch.tensor([127.0])
    ours = llm_int8_matmul(torch.full((1, 1), 127.0), torch.full((1, 1), 127.0))
    theirs = torch.ops.bitsandbytes.int8_mm_dequant.default(c, stats, stats, dtype=torch.float32)
    assert ours.item() == 127 * 127
    assert theirs.item() == pytest.approx(127 * 127 * (1 + BNB_SCALE_EXCESS), rel=1e-7)
    assert 1.7e-5 < BNB_SCALE_EXCESS < 1.9e-5


@pytest.mark.parametrize("outliers", [True, False], ids=["outliers", "no-outliers"])
def test_llm_int8_equals_bitsandbytes_linear8bitlt(outliers):
    """Same layer output as ``Linear8bitLt(threshold=6.0)`` in fp16, to fp16 rounding.

    Same codes and statistics (previous tests) and the same outlier columns; the sums differ
    by (a) bitsandbytes rounds the int8 part + bias to fp16 before adding the outlier part
    (``addmm`` in fp16, computed in fp32 and rounded once, adds a second rounding): at most
    U16 · |int8 part + bias|; (b) each final rounding to fp16, U16 · |y| each, and the two may
    straddle a power of two: 2 · 2 U16 · |y| covers both; (c) bitsandbytes' 1.8e-5 larger scale
    on the int8 part; (d) float32 sums, negligible. The int8 part is bounded by
    |y| + |bias| + |outlier part| (the bias may cancel it: then (c) dominates a tiny |y|).
    Without outliers only (b) and (c) remain, and most outputs are identical bits.
    """
    linear = _linear(256, 96, torch.float16)
    x = _activations(2, 24, 256, outliers=outliers).half()
    reference = _bnb_linear(linear, threshold=6.0)
    ours = Int8Linear.from_linear(linear, threshold=6.0)
    with torch.no_grad():
        theirs = reference(x)
        y = ours(x)
    columns = outlier_columns(x, threshold=6.0)
    assert torch.equal(reference.state.idx, columns)
    assert torch.equal(ours.weight_codes, reference.state.CB)
    assert torch.equal(ours.weight_absmax, reference.state.SCB)
    assert y.dtype == theirs.dtype == torch.float16 and y.shape == theirs.shape == (2, 24, 96)
    magnitude = theirs.double().abs()
    int8_part = magnitude + linear.bias.double().abs() + _outlier_part(x, linear, columns)
    tolerance = 4 * U16 * magnitude + (U16 + 2 * BNB_SCALE_EXCESS) * int8_part + 2**-24
    assert ((y.double() - theirs.double()).abs() <= tolerance).all()
    if outliers:
        assert columns.tolist() == [5, 76, 140]
        assert (y == theirs).float().mean() > 0.5
    else:
        assert columns.numel() == 0
        assert (y == theirs).float().mean() > 0.9
    assert torch.equal(llm_int8_matmul(x, linear.weight, linear.bias), y)  # function == module


def test_w8a8_vector_equals_bitsandbytes_linear8bitlt_without_threshold():
    """``threshold=0.0`` switches bitsandbytes' decomposition off: vector-wise W8A8. Only the
    final rounding and bitsandbytes' 1.8e-5 larger scale on the int8 sum (before the bias is
    added) differ."""
    linear = _linear(256, 96, torch.float16)
    x = _activations(40, 256, outliers=True).half()
    with torch.no_grad():
        theirs = _bnb_linear(linear, threshold=0.0)(x)
        y = Int8Linear.from_linear(linear, mode="vector")(x)
    magnitude = theirs.double().abs()
    int8_part = magnitude + linear.bias.double().abs()
    tolerance = 4 * U16 * magnitude + 2 * BNB_SCALE_EXCESS * int8_part + 2**-24
    assert ((y.double() - theirs.double()).abs() <= tolerance).all()
    assert (y == theirs).float().mean() > 0.9
    assert torch.equal(w8a8_matmul(x, linear.weight, linear.bias, granularity="vector"), y)


def test_llm_int8_equals_bitsandbytes_linear8bitlt_in_float32():
    """An fp32 input: bitsandbytes quantizes x.half() and the weight's .half(), but keeps the
    outlier path and the sums in fp32. On values that fp16 holds exactly both see the same
    codes, and only its 1.8e-5 larger scale and float32 sums (U32 per term) separate us."""
    linear = _linear(256, 96, torch.float32)
    with torch.no_grad():
        linear.weight.copy_(linear.weight.half().float())
        linear.bias.copy_(linear.bias.half().float())
    x = _activations(40, 256, outliers=True).half().float()
    with torch.no_grad():
        theirs = _bnb_linear(linear, threshold=6.0)(x)
        y = Int8Linear.from_linear(linear)(x)
    assert y.dtype == theirs.dtype == torch.float32
    columns = outlier_columns(x)
    terms = x.double().abs() @ linear.weight.double().abs().T
    int8_part = theirs.double().abs() + linear.bias.double().abs()
    int8_part += _outlier_part(x, linear, columns)
    tolerance = 2 * BNB_SCALE_EXCESS * int8_part + 512 * U32 * terms
    assert ((y.double() - theirs.double()).abs() <= tolerance).all()


@pytest.mark.parametrize("k", [1, 2, 7, 576, 2200])
def test_int8_matmul_is_exact_with_int_mm_and_with_its_float64_fallback(k):
    """torch._int_mm (CPU, torch 2.13: any m, n) and the float64 fallback give the exact int32
    sums, also at the extremes where an fp32 sum would round (k · 127² > 2^24). At k = 1
    torch._int_mm(A, B.T) returns garbage in torch 2.13 (pytorch/pytorch#195066): the fallback
    takes over there."""
    generator = torch.Generator().manual_seed(k)
    A = torch.randint(-127, 128, (5, k), dtype=torch.int8, generator=generator)
    B = torch.randint(-127, 128, (3, k), dtype=torch.int8, generator=generator)
    A[0], B[0], B[1] = 127, 127, -127  # sums of ±k · 127²
    exact = (A.long() @ B.long().T).to(torch.int32)
    assert torch.equal(_int8_matmul(A, B), exact)
    assert torch.equal(_int8_matmul(A, B, use_int_mm=False), exact)
    if k > 1:
        assert torch.equal(_int8_matmul(A, B, use_int_mm=True), exact)
        assert torch.equal(_int8_matmul(A.T.contiguous().T, B[:, None, :][:, 0]), exact)
    assert exact[0, 0] == k * 127**2


def test_llm_int8_matmul_with_one_input_feature():
    """k = 1 is where torch._int_mm fails; the layer is still exact up to its int8 steps."""
    x, weight = torch.tensor([[1.0], [-2.0], [0.5]]), torch.tensor([[2.0], [-1.0], [0.25]])
    assert torch.equal(llm_int8_matmul(x, weight), x @ weight.T)


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis) and error bounds
# ---------------------------------------------------------------------------------------------

_values = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
_matrices = st.tuples(st.integers(1, 6), st.integers(1, 40)).flatmap(
    lambda shape: arrays("float32", shape, elements=_values)
)


@settings(max_examples=60, deadline=None)
@given(_matrices, st.sampled_from([None, 0.5, 6.0]))
def test_vectorwise_codes_lie_within_half_a_step(array, threshold):
    """Codes in [−127, 127] and |x − codes · absmax / 127| ≤ absmax / 254 per row, plus the
    float32 product x · fl(127 / absmax) (two roundings of a value ≤ 127: absmax · 2^-23 in x).
    With a threshold the bound holds on the columns without outliers, whose codes are 0."""
    x = torch.from_numpy(array)
    q = vectorwise_quantize(x, threshold=threshold)
    assert q.codes.dtype == torch.int8
    assert int(q.codes.abs().max()) <= 127
    absmax = q.row_absmax.double().unsqueeze(-1)
    error = (x.double() - q.codes.double() * absmax / 127).abs()
    keep = torch.ones(x.shape[-1], dtype=torch.bool)
    keep[q.outlier_cols] = False
    assert (error[:, keep] <= absmax / 254 + absmax * 2**-22).all()
    assert (q.codes[:, ~keep] == 0).all()
    if threshold is not None:
        assert (x.abs()[:, keep] < threshold).all()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 48),
    st.integers(1, 8),
    st.sampled_from([1.0, 6.0, 100.0]),
    st.integers(0, 2**16),
)
def test_llm_int8_matmul_is_close_to_the_fp32_matmul(rows, in_features, out_features, alpha, seed):
    """Error bound, per output (i, j), with R the int8 columns and O the outlier columns:
    x ≈ x̂ with |x − x̂| ≤ e_x = c_x/254 (+ c_x 2^-22) on R, w ≈ ŵ with |w − ŵ| ≤ e_w = c_w/254
    (+ c_w 2^-21, which also covers ŵ's own float32 rounding), |x̂| ≤ c_x, so
    |xw − x̂ŵ| ≤ e_x |w| + c_x e_w on R and |x| e_w on O (x exact there). Summed:
    e_x Σ_R |w| + e_w (|R| c_x + Σ_O |x|), plus the float32 sums and scalings:
    (k + 8) 2^-23 (Σ (|x| + c_x)(|w| + c_w) + |b|)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=generator) * 4  # some |x| ≥ 6
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    y = llm_int8_matmul(x, weight, bias, threshold=alpha)
    exact = x.double() @ weight.double().T + bias.double()
    qx, qw = vectorwise_quantize(x, threshold=alpha), vectorwise_quantize(weight)
    c_x, c_w = qx.row_absmax.double().unsqueeze(1), qw.row_absmax.double().unsqueeze(0)
    R = torch.ones(in_features, dtype=torch.bool)
    R[qx.outlier_cols] = False
    e_x, e_w = c_x / 254 + c_x * 2**-22, c_w / 254 + c_w * 2**-21
    ax, aw = x.double().abs(), weight.double().abs()
    bound = (
        e_x * aw[:, R].sum(1).unsqueeze(0)
        + e_w * (int(R.sum()) * c_x + ax[:, ~R].sum(1, keepdim=True))
        + (in_features + 8) * 2**-23 * ((ax + c_x) @ (aw + c_w.T).T + bias.double().abs())
    )
    assert ((y.double() - exact).abs() <= bound).all()


def test_llm_int8_beats_vector_wise_beats_per_tensor_on_outlier_features():
    """The chapter's table in miniature: two outlier dimensions wreck a per-tensor scale,
    vector-wise scales help, the decomposition removes their error."""
    x = _activations(64, 256, outliers=True)
    weight = _randn(96, 256, seed=1, scale=0.05)
    exact = x.double() @ weight.double().T
    errors = {
        name: float((y.double() - exact).norm() / exact.norm())
        for name, y in [
            ("tensor", w8a8_matmul(x, weight, granularity="tensor")),
            ("vector", w8a8_matmul(x, weight, granularity="vector")),
            ("llm.int8", llm_int8_matmul(x, weight)),
        ]
    }
    assert errors["llm.int8"] < errors["vector"] / 3 < errors["tensor"] / 6
    assert errors["llm.int8"] < 0.01
    # without outliers, LLM.int8() is vector-wise W8A8, bit for bit
    assert torch.equal(llm_int8_matmul(x, weight, threshold=1e9), w8a8_matmul(x, weight))


def test_outlier_columns_and_the_fraction_that_goes_to_16_bit():
    x = _activations(64, 256, outliers=True)
    assert outlier_columns(x).tolist() == [5, 76, 140]
    assert outlier_column_fraction(x) == 3 / 256
    assert outlier_column_fraction(x, threshold=1e9) == 0.0
    fractions = [outlier_column_fraction(x, threshold=t) for t in (1.0, 2.0, 4.0, 6.0, 100.0)]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] == 1.0


def test_llm_int8_matmul_keeps_leading_dimensions_and_dtype():
    weight, bias = _randn(12, 20, seed=1), _randn(12, seed=2)
    x = _activations(3, 4, 20, outliers=True)
    y = llm_int8_matmul(x, weight, bias)
    assert y.shape == (3, 4, 12)
    assert torch.equal(y.reshape(12, 12), llm_int8_matmul(x.reshape(12, 20), weight, bias))
    assert llm_int8_matmul(x[0, 0], weight).shape == (12,)
    assert llm_int8_matmul(x.bfloat16(), weight).dtype == torch.bfloat16
    zeros = llm_int8_matmul(torch.zeros(2, 20), weight, bias)  # rows of zeros: just the bias
    assert torch.equal(zeros, bias.expand(2, 12))


# ---------------------------------------------------------------------------------------------
# Layers and tiny models
# ---------------------------------------------------------------------------------------------


def test_int8_linear_stores_half_the_bytes_of_fp16():
    """int8 codes are half of FP16; the float32 row scale adds 4 bytes per output row:
    0.5035 × FP16 for the default model's 576 → 576 projections."""
    layer = Int8Linear(576, 576, bias=False)
    fp16 = nn.Linear(576, 576, bias=False).half()
    assert model_footprint(layer) == 576 * 576 + 4 * 576
    assert model_footprint(layer) / model_footprint(fp16) == pytest.approx(0.5035, abs=1e-4)
    assert layer.weight_codes.dtype == torch.int8 and layer.weight_absmax.dtype == torch.float32
    assert "mode='llm.int8', threshold=6.0" in repr(layer)


def test_int8_linear_from_gpt2_conv1d_equals_from_linear():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs; weight stored [in, out]
    with torch.no_grad():
        conv.weight.copy_(_randn(16, 24, seed=3))
        conv.bias.copy_(_randn(24, seed=4))
    linear = nn.Linear(16, 24)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    a, b = Int8Linear.from_linear(conv), Int8Linear.from_linear(linear)
    assert torch.equal(a.weight_codes, b.weight_codes) and a.weight_codes.shape == (24, 16)
    x = _activations(5, 16, outliers=False)
    assert torch.equal(a(x), b(x))
    error = (a.dequantize() - get_weight(conv)).abs()
    assert (error <= a.weight_absmax.unsqueeze(1) / 254 * (1 + 1e-5)).all()


@pytest.mark.parametrize("mode", MODES)
def test_quantize_model_on_tiny_models(tiny_model, char_tokenizer, mode):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    originals = list(linear_layers(tiny_model))
    quantized = quantize_model(tiny_model, mode=mode)

    # the original is untouched
    assert all(torch.equal(v, state[k]) for k, v in tiny_model.state_dict().items())
    assert [type(m) for _, m in linear_layers(tiny_model)] == [type(m) for _, m in originals]
    # every decoder linear is an Int8Linear, nothing else changed
    replaced = {n: m for n, m in quantized.named_modules() if isinstance(m, Int8Linear)}
    assert sorted(replaced) == sorted(name for name, _ in originals)
    assert not list(linear_layers(quantized))
    assert all(m.mode == mode for m in replaced.values())
    # footprint: codes are half of FP16's bytes; row scales and (GPT-2) biases come on top
    fp16_bytes = sum(2 * sum(p.numel() for p in m.parameters()) for _, m in originals)
    int8_bytes = sum(model_footprint(m) for m in replaced.values())
    overhead = sum(m.weight_absmax.numel() * 4 for m in replaced.values()) + sum(
        m.bias.numel() * m.bias.element_size() for m in replaced.values() if m.bias is not None
    )
    weights = sum(get_weight(m).numel() for _, m in originals)
    assert int8_bytes == weights + overhead
    assert 0.5 < int8_bytes / fp16_bytes < 0.62  # 0.5 + O(1/in_features): 32 to 128 here
    # logits close, and generation still works
    ids = char_tokenizer("it is a truth universally acknowledged", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = tiny_model(ids).logits, quantized(ids).logits
    assert float((got - expected).norm() / expected.norm()) < 0.02
    assert isinstance(generate(quantized, char_tokenizer, "it is", max_new_tokens=4), str)


def _llama_with_outlier_dimension(tiny_llama, dim: int = 17, value: float = 8.0):
    """Every token's residual stream gets ``value`` in dimension ``dim`` (the embedding
    column), while the other dimensions stay ~0.02: after RMSNorm the q/k/v and gate/up
    inputs hold ≈ 8 there, and nothing else reaches 6 (o_proj, down_proj inputs stay small)."""
    with torch.no_grad():
        tiny_llama.model.embed_tokens.weight[:, dim] = value
    return tiny_llama


def test_find_outlier_features_finds_an_injected_dimension(tiny_llama, char_tokenizer):
    model = _llama_with_outlier_dimension(tiny_llama, dim=17)
    texts = ["it is a truth universally acknowledged", "emma woodhouse, handsome, clever"]
    found = find_outlier_features(model, texts, tokenizer=char_tokenizer)
    n_tokens = sum(len(t) for t in texts)  # one character, one token
    assert list(found) == [name for name, _ in linear_layers(model)]
    for name, features in found.items():
        assert isinstance(features, OutlierFeatures) and features.n_tokens == n_tokens
        assert features.threshold == DEFAULT_THRESHOLD
        assert features.max_abs.shape == (features.in_features,)
        if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            assert features.dims.tolist() == [17]
            assert features.counts.tolist() == [n_tokens]  # systematic: every token
            assert int(features.max_abs.argmax()) == 17
            assert features.value_fraction == pytest.approx(1 / 64)
            assert features.dim_fraction == 1 / 64
            assert features.token_fraction.tolist() == [1.0]
        else:  # o_proj and down_proj: nothing reaches 6
            assert features.dims.numel() == 0 and features.value_fraction == 0.0
            assert float(features.max_abs.max()) < DEFAULT_THRESHOLD
    # the same tokens as a list of [1, seqlen] or [seqlen] tensors: the same statistics
    ids = [char_tokenizer(t, return_tensors="pt").input_ids for t in texts]
    for batches in (ids, [i[0] for i in ids]):
        again = find_outlier_features(model, batches)
        for name, features in again.items():
            assert torch.equal(features.counts, found[name].counts)
            assert torch.equal(features.max_abs, found[name].max_abs)
    batch = find_outlier_features(model, torch.cat([ids[0], ids[0]]))  # one [2, seqlen] batch
    assert all(f.n_tokens == 2 * len(texts[0]) for f in batch.values())
    assert all(not layer._forward_pre_hooks for _, layer in linear_layers(model))


def test_find_outlier_features_removes_its_hooks_when_the_model_fails(tiny_gpt2):
    assert find_outlier_features(tiny_gpt2, torch.randint(0, 34, (2, 8)))  # Conv1D layers
    with pytest.raises(IndexError):
        find_outlier_features(tiny_gpt2, torch.full((1, 4), 10_000))  # beyond the vocabulary
    assert all(not layer._forward_pre_hooks for _, layer in linear_layers(tiny_gpt2))


def test_an_outlier_dimension_ruins_per_tensor_w8a8_and_the_decomposition_helps(tiny_llama):
    """An outlier dimension as real models grow one, through a large RMSNorm gain (§4), while
    the other inputs stay ~N(0, 1): per-tensor W8A8 loses the small values, vector-wise W8A8
    loses them in every token, LLM.int8() keeps them. What remains is the int8 weight that the
    outlier column is multiplied with (bitsandbytes keeps no 16-bit weights): its error grows
    with the outlier's size, where the paper's 16-bit weights would have none."""
    with torch.no_grad():
        for block in tiny_llama.model.layers:
            block.input_layernorm.weight[17] = 30.0
            block.post_attention_layernorm.weight[17] = 30.0
    ids = torch.randint(2, 34, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny_llama(ids).logits
        errors = {
            mode: float(
                (quantize_model(tiny_llama, mode=mode)(ids).logits - expected).norm()
                / expected.norm()
            )
            for mode in MODES
        }
    assert errors["llm.int8"] < 0.8 * errors["vector"] < errors["tensor"] / 4


@pytest.mark.slow
def test_default_model_outliers_and_footprint(default_model):
    """The chapter's figures on SmolLM2-135M: a handful of outlier dimensions, ≈ 0.1 % of the
    values, hidden dimension 247 among them; int8 linear layers take ≈ ½ of FP16's bytes."""
    model, tokenizer = default_model
    text = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy"
    found = find_outlier_features(model, [text * 4], tokenizer=tokenizer)
    n_outliers = sum(int(f.counts.sum()) for f in found.values())
    fraction = n_outliers / sum(f.n_values for f in found.values())
    assert 1e-4 < fraction < 1e-2
    assert sum(247 in f.dims.tolist() for n, f in found.items() if n.endswith("q_proj")) >= 5
    quantized = quantize_model(model)
    fp16 = sum(2 * get_weight(m).numel() for _, m in linear_layers(model))
    int8 = sum(model_footprint(m) for m in quantized.modules() if isinstance(m, Int8Linear))
    assert 0.5 < int8 / fp16 < 0.505


# ---------------------------------------------------------------------------------------------
# Bad arguments: each error names the argument
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [llm_int8_matmul, w8a8_matmul])
def test_matmuls_reject_bad_arguments(function):
    x, weight = _randn(4, 10), _randn(8, 10)
    with pytest.raises(ValueError, match=r"x: expected a last dimension of 12"):
        function(x, _randn(8, 12))
    with pytest.raises(ValueError, match=r"weight: expected a 2-D tensor"):
        function(x, _randn(10))
    with pytest.raises(ValueError, match=r"weight: expected a 2-D tensor"):
        function(x, _randn(2, 8, 10))
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor"):
        function(torch.ones(4, 10, dtype=torch.int64), weight)
    with pytest.raises(TypeError, match=r"weight: expected a floating-point tensor"):
        function(x, weight.to(torch.int8))
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor"):
        function([[1.0] * 10], weight)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"x: expected finite values, got \d NaN and \d Inf"):
            function(torch.where(torch.arange(10) == 3, bad, x), weight)
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        function(x, weight, _randn(10))


def test_thresholds_modes_and_granularities_are_checked():
    x, weight = _randn(4, 10), _randn(8, 10)
    for bad in (0, 0.0, -6.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"threshold: expected a finite number > 0"):
            llm_int8_matmul(x, weight, threshold=bad)
        with pytest.raises(ValueError, match=r"threshold: expected a finite number > 0"):
            vectorwise_quantize(x, threshold=bad)
        with pytest.raises(ValueError, match="threshold:"):
            outlier_columns(x, threshold=bad)
    with pytest.raises(TypeError, match=r"threshold: expected a number"):
        llm_int8_matmul(x, weight, threshold="6")
    with pytest.raises(ValueError, match=r"granularity: expected one of 'tensor', 'vector'"):
        w8a8_matmul(x, weight, granularity="row")
    with pytest.raises(ValueError, match=r"mode: expected one of 'tensor', 'vector', 'llm.int8'"):
        Int8Linear(10, 8, mode="int4")
    with pytest.raises(ValueError, match="mode:"):
        quantize_model(nn.Sequential(), mode="llm_int8")
    with pytest.raises(ValueError, match="threshold:"):
        Int8Linear(10, 8, threshold=-1.0)
    with pytest.raises(ValueError, match="in_features:"):
        Int8Linear(0, 8)


def test_layers_and_models_reject_bad_arguments(tiny_llama):
    layer = Int8Linear.from_linear(nn.Linear(10, 8))
    with pytest.raises(ValueError, match=r"x: expected a last dimension of 10 \(in_features\)"):
        layer(_randn(3, 12))
    with pytest.raises(ValueError, match=r"x: expected finite values"):
        layer(torch.full((3, 10), float("nan")))
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor"):
        layer(torch.ones(3, 10, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"linear: expected nn.Linear or transformers Conv1D"):
        Int8Linear.from_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"linear.weight: expected finite values"):
        Int8Linear.from_linear(nn.Linear(4, 4).requires_grad_(False).apply(_fill_nan))
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        quantize_model("gpt2")
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        find_outlier_features("gpt2", torch.zeros(1, 4, dtype=torch.long))
    # the inputs are parsed by qlearn.data.token_batches, shared with qlearn.calibration
    with pytest.raises(ValueError, match=r"tokenizer: expected a tokenizer"):
        find_outlier_features(tiny_llama, ["some text"])
    with pytest.raises(TypeError, match=r"texts_or_batches: expected token ids"):
        find_outlier_features(tiny_llama, torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"texts_or_batches: expected .*, got an empty list"):
        find_outlier_features(tiny_llama, [])
    with pytest.raises(ValueError, match=r"texts_or_batches: expected a \[n, seqlen\]"):
        find_outlier_features(tiny_llama, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="x: expected at least 1 dimension"):
        vectorwise_quantize(torch.tensor(1.0))


def _fill_nan(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.weight.fill_(math.nan)


def test_quantize_model_in_place_equals_the_copy(tiny_model):
    from qlearn import int8

    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 12))
    copied = int8.quantize_model(tiny_model)
    same = int8.quantize_model_(tiny_model)
    assert same is tiny_model
    assert not list(linear_layers(tiny_model))
    with torch.no_grad():
        assert torch.equal(same(ids).logits, copied(ids).logits)


def test_results_count_their_bytes():
    """Each result is a Quantized, and nbytes() is the bytes of the tensors it holds."""
    from qlearn._quantized import Quantized

    torch.manual_seed(0)
    x = torch.randn(6, 32)
    x[:, 3] = 9.0
    q = vectorwise_quantize(x, threshold=6.0)
    assert isinstance(q, Quantized)
    assert q.outlier_cols.tolist() == [3]
    held = (q.codes, q.row_absmax, q.outlier_cols)
    assert q.nbytes() == sum(t.numel() * t.element_size() for t in held) == 6 * 32 + 6 * 4 + 8
    assert q.bits_per_weight() == 8 * q.nbytes() / (6 * 32)

    layer = Int8Linear.from_linear(nn.Linear(32, 6))
    assert isinstance(layer, Quantized)
    held = (layer.weight_codes, layer.weight_absmax)
    assert layer.nbytes() == sum(t.numel() * t.element_size() for t in held) == 6 * 32 + 6 * 4
    assert layer.bits_per_weight() == 8 + 32 / 32
    assert layer.dequantize().shape == (6, 32)
