"""Tests of qlearn.qat: fake quantization against qlearn.affine and PyTorch's own fake quantizers
(values and straight-through gradients), QATLinear against torch.ao's QAT Linear, error bounds
under hypothesis, and every bad argument.

PyTorch's ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` compute
round(x · fl(1/S)) where qlearn divides, round(x / S) (as ``qlearn.affine`` does): the codes can
differ only where x / S lies within a rounding error of a half-integer. With a power-of-two scale
1/S is exact and both are the same bits; with other scales the tests check that every difference
is such a tie. Their gradient is the clipped straight-through estimator: 1 where the code lies in
[quant_min, quant_max], 0 where it was clipped, exactly qlearn's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.ao.nn.qat as nnqat
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver, QConfig

from qlearn import affine
from qlearn.qat import QATLinear, code_range, fake_quantize, straight_through_mask


def _randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _value_and_grad(fn, x: torch.Tensor, upstream: torch.Tensor):
    x = _leaf(x)
    y = fn(x)
    y.backward(upstream)
    return y.detach(), x.grad


def _near_tie(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Where x / S is within a few float32 ulps of a half-integer: the only places where
    dividing by S and multiplying by fl(1/S) may round to different codes."""
    v = x.double() / scale.double()
    return (v - v.floor() - 0.5).abs() <= 4 * 2.0**-24 * v.abs().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# qlearn.affine and PyTorch's fake quantizers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", affine.METHODS)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fake_quantize_equals_qlearn_affine_fake_quantize(method, bits, axis, dtype):
    w = _randn(48, 80, scale=0.05).to(dtype)
    q = affine.quantize(w, method, bits=bits, axis=axis)
    ours = fake_quantize(w, bits=bits, scale=q.scale, zero_point=q.zero_point)
    assert ours.dtype == dtype
    assert torch.equal(ours, affine.fake_quantize(w, method, bits=bits, axis=axis))


@pytest.mark.parametrize("zero_point", [0, 3, -3])
@pytest.mark.parametrize(("bits", "scale"), [(8, 2.0**-5), (4, 0.25), (3, 2.0**-3)])
def test_fake_quantize_equals_torch_fake_quantize_per_tensor_affine(bits, scale, zero_point):
    """Power-of-two scales: the same bits in value and gradient, clipping included."""
    qmin, qmax = code_range(bits)
    x = _randn(4000, scale=4.0 * scale * 2 ** (bits - 1) / 3)  # about 1/4 of values clipped
    upstream = _randn(4000, seed=1)
    ours, our_grad = _value_and_grad(
        lambda t: fake_quantize(t, bits=bits, scale=scale, zero_point=zero_point), x, upstream
    )
    theirs, their_grad = _value_and_grad(
        lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zero_point, qmin, qmax),
        x,
        upstream,
    )
    assert torch.equal(ours, theirs)
    assert torch.equal(our_grad, their_grad)
    clipped = our_grad == 0
    assert 0.05 < float(clipped.float().mean()) < 0.6  # both regions are exercised


def test_fake_quantize_differs_from_torch_only_at_ties_for_any_scale():
    """Arbitrary float32 scales: torch multiplies by fl(1/S), qlearn divides by S."""
    x = _randn(200_000, scale=3.0)
    upstream = torch.ones_like(x)
    differences = 0
    for i, s in enumerate(torch.rand(8, generator=torch.Generator().manual_seed(2)).tolist()):
        scale = float(torch.tensor(0.003 + 0.05 * s))  # a float32 value
        ours, our_grad = _value_and_grad(
            lambda t, sc=scale, z=i: fake_quantize(t, bits=8, scale=sc, zero_point=z), x, upstream
        )
        theirs, their_grad = _value_and_grad(
            lambda t, sc=scale, z=i: torch.fake_quantize_per_tensor_affine(t, sc, z, -128, 127),
            x,
            upstream,
        )
        differ = ours != theirs
        differences += int(differ.sum())
        assert bool(_near_tie(x[differ], torch.tensor(scale)).all())
        assert ((ours - theirs)[differ].abs() <= scale * 1.0001).all()  # one code apart
        grad_differ = our_grad != their_grad
        assert bool(_near_tie(x[grad_differ], torch.tensor(scale)).all())
    assert differences < 20  # ties are rare: about 1 value in 10^6


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quantize_equals_torch_fake_quantize_per_channel_affine(bits):
    """One scale and zero point per output row, values and gradients, with clipping."""
    qmin, qmax = code_range(bits)
    w = _randn(32, 200, scale=0.1)
    exponents = torch.randint(-9, -4, (32,), generator=torch.Generator().manual_seed(3))
    scale = 2.0 ** exponents.float()  # powers of two: exact reciprocals
    zero_point = torch.randint(-2, 3, (32,), generator=torch.Generator().manual_seed(4))
    upstream = _randn(32, 200, seed=5)
    ours, our_grad = _value_and_grad(
        lambda t: fake_quantize(t, bits=bits, scale=scale[:, None], zero_point=zero_point[:, None]),
        w,
        upstream,
    )
    theirs, their_grad = _value_and_grad(
        lambda t: torch.fake_quantize_per_channel_affine(t, scale, zero_point.int(), 0, qmin, qmax),
        w,
        upstream,
    )
    assert torch.equal(ours, theirs)
    assert torch.equal(our_grad, their_grad)
    assert bool((our_grad == 0).any()) and bool((our_grad == upstream).any())


def test_ste_gradient_equals_a_loop_over_values():
    """The clipped STE written out value by value: d fq / dx = 1 if qmin ≤ round(x/S)+Z ≤ qmax."""
    x = torch.linspace(-3, 3, 241)
    scale, zero_point, bits = 0.3, 2, 4
    qmin, qmax = code_range(bits)
    _, grad = _value_and_grad(
        lambda t: fake_quantize(t, bits=bits, scale=scale, zero_point=zero_point),
        x,
        torch.ones_like(x),
    )
    s32 = float(torch.tensor(scale))
    for value, g in zip(x.tolist(), grad.tolist(), strict=True):
        v = float(torch.tensor(value) / torch.tensor(s32))
        code = round(v) + zero_point  # Python's round is half to even, as torch.round
        assert g == (1.0 if qmin <= code <= qmax else 0.0)
    mask = straight_through_mask(x, bits=bits, scale=scale, zero_point=zero_point)
    assert torch.equal(mask, grad)


def test_fake_quantize_values_equal_a_loop_over_values():
    x = _randn(300, scale=2.0)
    scale, zero_point, bits = 0.07, -1, 5
    qmin, qmax = code_range(bits)
    ours = fake_quantize(x, bits=bits, scale=scale, zero_point=zero_point)
    s = torch.tensor(scale)
    for value, y in zip(x, ours, strict=True):
        code = min(qmax, max(qmin, round(float(value / s)) + zero_point))
        assert y.item() == float(torch.tensor(float(code - zero_point)) * s)


def test_fake_quantize_leaves_its_input_alone_and_keeps_shape():
    x = _randn(3, 4, 5)
    before = x.clone()
    y = fake_quantize(x, bits=4, scale=0.5)
    assert torch.equal(x, before) and y.shape == x.shape and y is not x


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64),
    bits=st.integers(2, 8),
    scale=st.floats(1e-3, 10.0),
    zero_point=st.integers(-2, 1),
)
def test_fake_quantize_error_bounds_and_codes(values, bits, scale, zero_point):
    x = torch.tensor(values, dtype=torch.float32)
    qmin, qmax = code_range(bits)
    y = fake_quantize(x, bits=bits, scale=scale, zero_point=zero_point)
    s = float(torch.tensor(scale))
    codes = torch.round(y.double() / s) + zero_point
    assert torch.equal(codes, codes.round()) and bool(((codes >= qmin) & (codes <= qmax)).all())
    inside = straight_through_mask(x, bits=bits, scale=scale, zero_point=zero_point).bool()
    error = (x.double() - y.double()).abs()
    # inside the range: at most half a step (plus the float32 rounding of the product)
    assert bool((error[inside] <= s / 2 * (1 + 1e-6) + 1e-6 * x.double().abs()[inside]).all())
    # outside: the value lands on an end of the grid
    lo, hi = (qmin - zero_point) * s, (qmax - zero_point) * s
    ends = torch.tensor([lo, hi], dtype=torch.float32)
    assert bool(torch.isin(y[~inside], ends).all())
    # idempotent: a value on the grid stays where it is
    assert torch.equal(fake_quantize(y, bits=bits, scale=scale, zero_point=zero_point), y)


# ---------------------------------------------------------------------------------------------
# QATLinear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_qat_linear_forward_equals_linear_on_affine_fake_quantized_weight(bits):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    layer = QATLinear.from_linear(linear, bits=bits)
    x = _randn(2, 7, 96)
    expected_weight = affine.fake_quantize(linear.weight.detach(), "absmax", bits=bits, axis=0)
    assert torch.equal(layer.quantized_weight().detach(), expected_weight)
    expected = nn.functional.linear(x, expected_weight, linear.bias.detach())
    assert torch.equal(layer(x).detach(), expected)
    assert torch.equal(layer.weight, linear.weight) and layer.weight is not linear.weight


@pytest.mark.parametrize("bits", [4, 8])
def test_qat_linear_gradient_equals_plain_linear_at_the_quantized_weight(bits):
    """Straight through: dL/dW of QATLinear = dL/dŴ of a plain linear holding Ŵ."""
    torch.manual_seed(0)
    layer = QATLinear(64, 24, bits=bits)
    plain = nn.Linear(64, 24)
    with torch.no_grad():
        plain.weight.copy_(layer.quantized_weight())
        plain.bias.copy_(layer.bias)
    x = _randn(5, 64)
    loss = (layer(x) ** 2).sum()
    loss.backward()
    (plain(x) ** 2).sum().backward()
    assert torch.equal(layer.weight.grad, plain.weight.grad)
    assert torch.equal(layer.bias.grad, plain.bias.grad)


@pytest.mark.parametrize("bits", [4, 8])
def test_qat_linear_equals_torch_ao_qat_linear(bits):
    """torch.ao's QAT Linear with a per-channel symmetric FakeQuantize on [−qmax, qmax]: scale
    max|W_row| / qmax as ours; values differ at most at ties (see the module docstring)."""
    qmax = 2 ** (bits - 1) - 1
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    linear.qconfig = QConfig(
        activation=nn.Identity,
        weight=FakeQuantize.with_args(
            observer=PerChannelMinMaxObserver,
            quant_min=-qmax,
            quant_max=qmax,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        ),
    )
    reference = nnqat.Linear.from_float(linear)
    ours = QATLinear.from_linear(linear, bits=bits)
    x = _randn(6, 128)
    upstream = _randn(6, 48, seed=1)
    y_ours, y_ref = ours(x), reference(x)
    assert torch.equal(ours.weight_scale().flatten(), reference.weight_fake_quant.scale)
    w_ref = reference.weight_fake_quant(reference.weight).detach()
    differ = ours.quantized_weight().detach() != w_ref
    scale = ours.weight_scale().expand(48, 128)
    assert bool(_near_tie(linear.weight.detach()[differ], scale[differ]).all())
    if not differ.any():
        assert torch.equal(y_ours, y_ref)
    y_ours.backward(upstream)
    y_ref.backward(upstream)
    assert torch.equal(ours.weight.grad, reference.weight.grad)
    assert torch.equal(ours.bias.grad, reference.bias.grad)


def test_qat_finetuning_beats_post_training_quantization_on_correlated_inputs():
    """A least-squares layer with correlated inputs (an anisotropic loss, where rounding each
    weight to its nearest code is not the best int4 point): fine-tuning through the fake
    quantizer finds int4 weights that fit better than rounding the float optimum."""
    x = _randn(512, 32) @ (torch.eye(32) + 0.9 * _randn(32, 32, seed=7))
    w_true = _randn(8, 32, seed=1)
    y = x @ w_true.T
    linear = nn.Linear(32, 8, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w_true)
    qat = QATLinear.from_linear(linear, bits=4)
    with torch.no_grad():
        ptq_loss = float(((qat(x) - y) ** 2).mean())
    optimizer = torch.optim.Adam(qat.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 300)
    for _ in range(300):
        loss = ((qat(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        qat_loss = float(((qat(x) - y) ** 2).mean())
    assert qat_loss < 0.8 * ptq_loss


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": torch.arange(4)}, TypeError, "x: expected a floating-point tensor"),
        ({"x": torch.empty(0)}, ValueError, "x: expected a non-empty tensor"),
        ({"x": torch.tensor([1.0, math.nan])}, ValueError, "x: expected finite values"),
        ({"x": [1.0, 2.0]}, TypeError, "x: expected a torch.Tensor"),
        ({"bits": 1}, ValueError, "bits: expected an integer from 2 to 16"),
        ({"bits": 4.0}, TypeError, "bits: expected an int"),
        ({"scale": 0.0}, ValueError, "scale: expected a finite number > 0"),
        ({"scale": -1.0}, ValueError, "scale: expected a finite number > 0"),
        ({"scale": math.inf}, ValueError, "scale: expected a finite number > 0"),
        ({"scale": 1e39}, ValueError, "scale: expected finite float32 values > 0"),
        ({"scale": "1"}, TypeError, "scale: expected a number"),
        ({"scale": torch.tensor([0.1, 0.0])}, ValueError, "scale: expected finite float32"),
        ({"scale": torch.tensor([0.1, math.nan])}, ValueError, "scale: expected finite values"),
        ({"scale": torch.ones(3)}, ValueError, "scale: expected a number or a tensor that"),
        ({"zero_point": 9}, ValueError, "zero_point: expected integers from -8 to 7"),
        ({"zero_point": 0.5}, TypeError, "zero_point: expected an int"),
        ({"zero_point": torch.tensor([0.0])}, TypeError, "zero_point: expected an int or an"),
        ({"zero_point": torch.zeros(3, dtype=torch.int32)}, ValueError, "zero_point: expected a"),
    ],
)
def test_fake_quantize_rejects_bad_input(kwargs, error, match):
    args = {"x": torch.ones(2, 4), "bits": 4, "scale": 0.1, "zero_point": 0, **kwargs}
    x = args.pop("x")
    with pytest.raises(error, match=match):
        fake_quantize(x, **args)


def test_qat_linear_rejects_bad_input():
    with pytest.raises(ValueError, match="bits: expected an integer from 2 to 8"):
        QATLinear(4, 4, bits=16)
    with pytest.raises(ValueError, match="in_features: expected at least 1"):
        QATLinear(0, 4)
    with pytest.raises(TypeError, match=r"linear: expected an nn\.Linear"):
        QATLinear.from_linear(nn.Conv1d(2, 2, 1))
    broken = nn.Linear(4, 4)
    with torch.no_grad():
        broken.weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"linear\.weight: expected finite values"):
        QATLinear.from_linear(broken)
