"""qlearn.kernels: each real low-bit layer equals dequantize-then-matmul, to the tolerance of its
compute precision, and is built from qlearn's own codes; whole models run on them.

Tolerances. bfloat16 layers round the input to bfloat16 (the weight the kernel multiplies with
is ``dequantize()`` exactly) and accumulate in float32, then round the output to bfloat16: each
output may differ from float32 ``F.linear`` on the same bfloat16 input by at most one part in
2^7 of Σ|x||w|, the scale of the sum. float32 layers: one part in 10^5 of Σ|x||w|. W8A8 is an
exact int32 sum scaled in float32: one part in 10^6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qlearn
from qlearn import awq, data, evaluate, gptq, int8, kernels, models

BF16_TOL = 2**-7
FP32_TOL = 1e-5


def _linear(out_features=192, in_features=576, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=g) * 0.05)
        if bias:
            layer.bias.copy_(torch.randn(out_features, generator=g))
    return layer


def _inputs(tokens=(3, 7), in_features=576, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*tokens, in_features, generator=g)


def _assert_matmul_close(y, x, weight, bias, tol):
    """|y − (x Wᵀ + b)| ≤ tol · (|x| |W|ᵀ + |b|), element by element."""
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    scale = F.linear(x.abs().double(), weight.abs().double())
    if bias is not None:
        scale = scale + bias.abs().double()
    assert y.shape == expected.shape
    excess = (y.double() - expected).abs() - tol * scale
    assert float(excess.max()) <= 0, float(excess.max())


@pytest.mark.parametrize("compute_dtype", kernels.COMPUTE_DTYPES)
def test_int8_weight_only_equals_dequantize_then_matmul(compute_dtype):
    linear, x = _linear(), _inputs()
    layer = kernels.Int8WeightOnlyLinear.from_linear(linear, compute_dtype=compute_dtype)
    y = layer(x)
    assert y.dtype == x.dtype and y.shape == (3, 7, 192)
    seen = x.to(compute_dtype).float()  # what the kernel reads
    tol = BF16_TOL if compute_dtype == torch.bfloat16 else FP32_TOL
    _assert_matmul_close(y, seen, layer.dequantize(), linear.bias.detach(), tol)


def test_int8_codes_are_llm_int8s_and_the_weight_is_close():
    """The codes are those of qlearn.int8.vectorwise_quantize (equal to bitsandbytes', tested
    in test_int8.py); the weight is within half a step of each row (plus bf16's scale)."""
    linear = _linear()
    weight = linear.weight.detach()
    expected = int8.vectorwise_quantize(weight)
    for layer in (
        kernels.Int8WeightOnlyLinear.from_linear(linear, compute_dtype=torch.float32),
        kernels.W8A8Linear.from_linear(linear),
    ):
        assert torch.equal(layer.codes, expected.codes)
        step = weight.abs().amax(dim=1, keepdim=True) / 127
        assert bool(((layer.dequantize() - weight).abs() <= 0.5 * step * (1 + 1e-5)).all())
    bf16 = kernels.Int8WeightOnlyLinear.from_linear(linear)
    assert bf16.scales.dtype == torch.bfloat16
    assert torch.equal(bf16.dequantize(), bf16.codes.float() * bf16.scales.float()[:, None])


def test_w8a8_is_an_exact_int32_product_scaled_back():
    linear, x = _linear(), _inputs() * 3
    layer = kernels.W8A8Linear.from_linear(linear)
    x_codes, x_scales = layer.quantize_input(x)
    rows = x.reshape(-1, 576)
    assert torch.equal(x_codes, int8.vectorwise_quantize(rows).codes)  # per token, dynamic
    # dequantize both sides, then matmul in float64
    expected = (x_codes.double() * x_scales.double()[:, None]) @ layer.dequantize().double().T
    expected = (expected + linear.bias.detach().double()).reshape(3, 7, 192)
    y = layer(x)
    scale = (
        x_codes.double().abs() * x_scales.double()[:, None]
    ) @ layer.dequantize().abs().double().T
    assert float(((y.double() - expected).abs().reshape(-1, 192) - 1e-6 * (scale + 1)).max()) <= 0
    # and it is chapter 04's vector-wise W8A8
    torch.testing.assert_close(y, int8.w8a8_matmul(x, linear.weight.detach(), linear.bias.detach()))


def test_w8a8_one_row_and_a_zero_row():
    """A single token (batch-1 decoding) and an all-zero token are both exact."""
    layer = kernels.W8A8Linear.from_linear(_linear(bias=False))
    x = torch.zeros(2, 576)
    x[0] = _inputs((1,))[0]
    y = layer(x)
    assert torch.equal(y[1], torch.zeros(192))
    torch.testing.assert_close(y[:1], layer(x[:1]))


def _gptq_result(weight, **options):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, weight.shape[1], generator=g)
    return gptq.gptq_quantize(weight, 2 * x.T @ x / len(x), bits=4, **options)


def _int4_results(weight):
    return {
        "rtn g64": gptq.rtn_quantize(weight, bits=4, group_size=64),
        "rtn g32 sym": gptq.rtn_quantize(weight, bits=4, group_size=32, sym=True),
        "gptq g64": _gptq_result(weight, group_size=64),
        "gptq g64 act-order static": _gptq_result(
            weight, group_size=64, act_order=True, static_groups=True
        ),
        "awq g64": awq.quantize_groups(weight, bits=4, group_size=64),
        "awq g192": None,  # not a layout the kernel takes: see the bad-input test
    }


@pytest.mark.parametrize("name", [n for n in _int4_results(torch.zeros(16, 64)) if "192" not in n])
@pytest.mark.parametrize("compute_dtype", kernels.COMPUTE_DTYPES)
def test_int4_from_qlearn_results_keeps_their_grid(name, compute_dtype):
    """Built from GPTQ, AWQ or RTN codes, the layer stands for the same weights (exactly in
    float32; bfloat16 rounds each scale and zero once) and multiplies with them."""
    linear = _linear()
    quantized = _int4_results(linear.weight.detach())[name]
    layer = kernels.Int4WeightOnlyLinear.from_quantized(
        quantized, linear.bias.detach(), compute_dtype=compute_dtype
    )
    original = quantized.dequantize().float()
    if compute_dtype == torch.float32:
        torch.testing.assert_close(layer.dequantize(), original, rtol=0, atol=1e-6)
    else:  # |Δw| ≤ 2^-8 · (8 · scale + |zero'|): one bfloat16 rounding of each
        scale = layer.scales_and_zeros.float()[..., 0].T.repeat_interleave(layer.group_size, 1)
        zero = layer.scales_and_zeros.float()[..., 1].T.repeat_interleave(layer.group_size, 1)
        bound = 2**-8 * (8 * scale + zero.abs()) * 1.01 + 1e-9
        assert bool(((layer.dequantize() - original).abs() <= bound).all())
    x = _inputs()
    tol = BF16_TOL if compute_dtype == torch.bfloat16 else FP32_TOL
    _assert_matmul_close(
        layer(x), x.to(compute_dtype).float(), layer.dequantize(), linear.bias.detach(), tol
    )


def test_int4_codes_survive_the_packing():
    """Every code 0..15 in every position: read back through the kernel, as they went in."""
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (48, 256), generator=g, dtype=torch.uint8)
    n_groups = 256 // 128
    scales, zeros = torch.ones(48, n_groups), torch.zeros(48, n_groups)
    layer = kernels.Int4WeightOnlyLinear(codes, scales, zeros, group_size=128)
    assert torch.equal(layer.dequantize(), codes.float() - 8)
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 48 * 256 // 2


def test_int4_from_linear_is_rtn_at_4_bits():
    linear = _linear()
    layer = kernels.Int4WeightOnlyLinear.from_linear(
        linear, group_size=64, compute_dtype=torch.float32
    )
    rtn = gptq.rtn_quantize(linear.weight.detach(), bits=4, group_size=64)
    torch.testing.assert_close(layer.dequantize(), rtn.dequantize(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "bits"),
    [
        (lambda lin: kernels.Int8WeightOnlyLinear.from_linear(lin), 8 + 16 / 576),
        (
            lambda lin: kernels.Int8WeightOnlyLinear.from_linear(lin, compute_dtype=torch.float32),
            8 + 32 / 576,
        ),
        (lambda lin: kernels.W8A8Linear.from_linear(lin), 8 + 32 / 576),
        (lambda lin: kernels.Int4WeightOnlyLinear.from_linear(lin, group_size=64), 4 + 32 / 64),
        (
            lambda lin: kernels.Int4WeightOnlyLinear.from_linear(
                lin, group_size=128, compute_dtype=torch.float32
            ),
            4 + 64 / 128,
        ),
    ],
)
def test_every_layer_is_a_quantized_that_counts_its_bytes(build, bits):
    layer = build(_linear(in_features=576 if bits > 6 else 1536))
    assert isinstance(layer, qlearn.Quantized)
    assert layer.bits_per_weight() == pytest.approx(bits)
    stored = sum(b.numel() * b.element_size() for n, b in layer.named_buffers() if n != "bias")
    assert layer.nbytes() == stored  # the bytes the layer really holds


@pytest.mark.parametrize("kind", kernels.KINDS)
def test_quantize_model_swaps_every_decoder_linear(tiny_model, char_tokenizer, kind):
    group_size = 32
    quantized = kernels.quantize_model(
        tiny_model, kind=kind, group_size=group_size, compute_dtype=torch.float32
    )
    names = [name for name, _ in models.linear_layers(tiny_model)]
    for name in names:
        module = quantized.get_submodule(name)
        assert type(module).__name__ != "Linear" and isinstance(module, qlearn.Quantized)
    assert all(not isinstance(m, kernels.W8A8Linear) for _, m in tiny_model.named_modules())
    # the same model as fake quantization with the same weights (float32 compute)
    fake = tiny_model
    for name in names:
        models.set_weight_(fake.get_submodule(name), quantized.get_submodule(name).dequantize())
    ids = char_tokenizer("a single man in possession", return_tensors="pt").input_ids
    with torch.no_grad():
        got, expected = quantized(ids).logits, fake(ids).logits
    tol = 2e-2 if kind == "w8a8" else 1e-4  # W8A8 also rounds the activations
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert isinstance(
        evaluate.generate(quantized, char_tokenizer, "a single", max_new_tokens=5), str
    )


def test_quantize_model_takes_gptq_codes_by_name(tiny_llama):
    names = [name for name, _ in models.linear_layers(tiny_llama)]
    first = names[0]
    result = _gptq_result(
        models.get_weight(tiny_llama.get_submodule(first)).detach(), group_size=32
    )
    quantized = kernels.quantize_model(
        tiny_llama,
        kind="int4",
        group_size=64,
        compute_dtype=torch.float32,
        quantized={first: result},
    )
    layer = quantized.get_submodule(first)
    assert layer.group_size == 32  # the GPTQ result's own groups
    torch.testing.assert_close(layer.dequantize(), result.dequantize(), rtol=0, atol=1e-6)
    assert quantized.get_submodule(names[1]).group_size == 64  # rounded to nearest


@pytest.mark.slow
def test_the_default_model_runs_on_every_kernel(default_model):
    """The whole course model on each kind: it still says the same first words greedily, and
    its perplexity stays near that of the same weights fake-quantized."""
    model, tokenizer = default_model
    text = data.load_text("pride_and_prejudice")
    fp32 = evaluate.perplexity(model, tokenizer, text, max_tokens=512, window=512)
    for kind in kernels.KINDS:
        quantized = kernels.quantize_model(model, kind=kind)
        ppl = evaluate.perplexity(quantized, tokenizer, text, max_tokens=512, window=512)
        assert fp32 * 0.97 < ppl < fp32 * (1.05 if kind != "int4" else 1.25), (kind, ppl, fp32)
        words = evaluate.generate(
            quantized, tokenizer, "The capital of France is", max_new_tokens=4
        )
        assert "Paris" in words, (kind, words)
        assert models.model_footprint(quantized) < 0.45 * models.model_footprint(model)


# --- bad input --------------------------------------------------------------------------------


def test_codes_out_of_range_are_refused():
    scales = torch.ones(16)
    with pytest.raises(ValueError, match=r"codes: expected codes in \[-127, 127\]"):
        kernels.Int8WeightOnlyLinear(torch.full((16, 64), -128, dtype=torch.int8), scales)
    with pytest.raises(TypeError, match=r"codes: expected dtype torch\.int8"):
        kernels.W8A8Linear(torch.zeros(16, 64, dtype=torch.int32), scales)
    with pytest.raises(TypeError, match="codes: expected integer codes"):
        kernels.W8A8Linear(torch.zeros(16, 64), scales)
    with pytest.raises(ValueError, match=r"codes: expected codes in \[0, 15\]"):
        kernels.Int4WeightOnlyLinear(
            torch.full((16, 64), 16), torch.ones(16, 1), torch.zeros(16, 1), group_size=64
        )
    with pytest.raises(ValueError, match="scales: expected shape"):
        kernels.Int8WeightOnlyLinear(torch.zeros(16, 64, dtype=torch.int8), torch.ones(8))
    with pytest.raises(ValueError, match="scales: expected scales ≥ 0"):
        kernels.Int8WeightOnlyLinear(torch.zeros(16, 64, dtype=torch.int8), -torch.ones(16))
    with pytest.raises(ValueError, match="in_features"):
        kernels.W8A8Linear(torch.zeros(16, 1, dtype=torch.int8), scales)


@pytest.mark.parametrize("group_size", [16, 48, 512, 128, 0, 2.0])
def test_int4_group_sizes_the_layout_does_not_take(group_size):
    linear = _linear(in_features=576)  # 576 = 4.5 · 128: 128 does not divide it
    with pytest.raises((ValueError, TypeError), match="group_size"):
        kernels.Int4WeightOnlyLinear.from_linear(linear, group_size=group_size)


def test_int4_refuses_what_its_layout_cannot_hold():
    weight = _linear().weight.detach()
    with pytest.raises(ValueError, match="multiple of 16 rows"):
        kernels.Int4WeightOnlyLinear.from_linear(_linear(out_features=40))
    with pytest.raises(ValueError, match="act-order"):
        kernels.Int4WeightOnlyLinear.from_quantized(
            _gptq_result(weight, group_size=64, act_order=True)
        )
    with pytest.raises(ValueError, match="4-bit"):
        kernels.Int4WeightOnlyLinear.from_quantized(
            gptq.rtn_quantize(weight, bits=3, group_size=64)
        )
    with pytest.raises(ValueError, match="group_size"):  # one group per row of 576
        kernels.Int4WeightOnlyLinear.from_quantized(gptq.rtn_quantize(weight, bits=4))
    with pytest.raises(ValueError, match="group_size"):  # AWQ's short last group
        kernels.Int4WeightOnlyLinear.from_quantized(awq.quantize_groups(weight, group_size=128))
    with pytest.raises(TypeError, match=r"quantized: expected a gptq\.QuantizedWeight"):
        kernels.Int4WeightOnlyLinear.from_quantized(weight)


def test_layers_refuse_bad_inputs_and_dtypes():
    layer = kernels.Int8WeightOnlyLinear.from_linear(_linear())
    with pytest.raises(ValueError, match="x: expected a last dimension of 576"):
        layer(torch.zeros(2, 64))
    with pytest.raises(TypeError, match="x"):
        layer(torch.zeros(2, 576, dtype=torch.int64))
    with pytest.raises(ValueError, match="compute_dtype"):
        kernels.Int8WeightOnlyLinear.from_linear(_linear(), compute_dtype=torch.float16)
    with pytest.raises(TypeError, match=r"linear: expected nn\.Linear"):
        kernels.W8A8Linear.from_linear(torch.nn.Conv2d(3, 3, 1))


def test_quantize_model_bad_input(tiny_llama):
    before = [p.clone() for p in tiny_llama.parameters()]
    with pytest.raises(ValueError, match="kind"):
        kernels.quantize_model(tiny_llama, kind="int3")
    with pytest.raises(TypeError, match="model"):
        kernels.quantize_model("a model", kind="int8")
    with pytest.raises(ValueError, match="model: expected a decoder"):
        kernels.quantize_model_(torch.nn.Sequential(torch.nn.Linear(4, 4)), kind="int8")
    with pytest.raises(ValueError, match="quantized: expected None for kind='int8'"):
        kernels.quantize_model(tiny_llama, kind="int8", quantized={})
    with pytest.raises(ValueError, match="quantized: expected names"):
        kernels.quantize_model(tiny_llama, kind="int4", quantized={"lm_head": None})
    # group 128 divides no layer of the tiny model (64 in): refused before any layer is swapped
    with pytest.raises(ValueError, match=r"group_size.*\(layer model\.layers\.0\."):
        kernels.quantize_model_(tiny_llama, kind="int4", group_size=128)
    assert all(type(m) is not kernels.Int4WeightOnlyLinear for m in tiny_llama.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llama.parameters(), strict=True))


def test_int_mm_is_exact_tells_the_truth_and_w8a8_is_exact_either_way(monkeypatch):
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-127, 128, (6, 512), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (512, 24), generator=g, dtype=torch.int8)
    int_mm_exact = torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    assert kernels.int_mm_is_exact() == int_mm_exact
    codes = b.T.contiguous()
    scales = torch.rand(24, generator=g) + 0.5
    x = torch.randn(6, 512, generator=g)
    x[:, 3] *= 50
    layer = kernels.W8A8Linear(codes, scales)
    x_codes, x_scales = layer.quantize_input(x)
    exact = (
        (x_codes.long() @ codes.long().T).double() * x_scales.double()[:, None] * scales.double()
    )
    for path in (True, False):  # torch._int_mm where it is exact, float64 sums where it is not
        if path and not int_mm_exact:
            continue  # this CPU's _int_mm saturates: the layer never takes that path here
        monkeypatch.setattr(kernels, "int_mm_is_exact", lambda path=path: path)
        torch.testing.assert_close(layer(x).double(), exact, rtol=1e-6, atol=1e-6)
