"""Tests of qlearn.affine: the chapter's seed figures, optimum-quanto and PyTorch's built-in
quantization bit for bit, properties under hypothesis, degenerate inputs, whole models, and every
bad argument.

The PyTorch reference is what ships with torch: the ``torch.ao.quantization`` observers
(``MinMaxObserver``, ``PerChannelMinMaxObserver``) choose (S, Z), ``torch.quantize_per_tensor`` /
``quantize_per_channel`` give the codes and ``torch.fake_quantize_per_*_affine`` the dequantized
values. Its scales and zero points equal ours bit for bit. Its codes round x · fl(1/S) (a float32
reciprocal) where we round x / S, both half to even, so they differ only at half-integer ties,
and the tests assert exactly where (see test_division_sides_with_quanto_at_a_tie and
test_torch_quantize_adds_the_zero_point_before_rounding). Per group, torch's per-channel
quantizers run on the view [n_groups, group_size]; quanto's group quantizer is checked as well.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from optimum.quanto import MaxOptimizer, absmax_scale, qint2, qint4, qint8, quantize_weight
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from qlearn.affine import (
    ABSMAX,
    METHODS,
    ZEROPOINT,
    QuantizedTensor,
    absmax_quantize,
    fake_quantize,
    quantization_error,
    quantize,
    quantize_model,
    quantize_model_,
    zeropoint_quantize,
)

EPS32 = torch.finfo(torch.float32).eps
TINY32 = torch.finfo(torch.float32).smallest_normal


def _weight(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


# ---------------------------------------------------------------------------------------------
# The chapter's seed figures (notebooks/02_absmax_zeropoint.ipynb)
# ---------------------------------------------------------------------------------------------


def test_absmax_seed_figure():
    """max 3.2, x = 0.1 → code 4 → 0.1008 (0.100787...)."""
    qt = absmax_quantize(torch.tensor([3.2, 0.1, -1.0]))
    assert qt.codes.tolist() == [127, 4, -40]
    assert qt.scale.item() == pytest.approx(3.2 / 127)
    assert qt.zero_point.item() == 0
    assert qt.dequantize()[1].item() == pytest.approx(0.100787, abs=1e-6)
    assert round(qt.dequantize()[1].item(), 4) == 0.1008


def test_zeropoint_seed_figure():
    """max 3.2, min −3.0 → 1/S = 255 / 6.2 = 41.13, Z = −5, 0.1 → −1; min → −128, max → 127."""
    qt = zeropoint_quantize(torch.tensor([3.2, 0.1, -3.0]))
    assert round(1 / qt.scale.item(), 2) == 41.13
    assert qt.zero_point.item() == -5
    assert qt.codes.tolist() == [127, -1, -128]
    assert (qt.qmin, qt.qmax) == (-128, 127)


def test_code_ranges_and_dtypes():
    x = _weight(4, 8)
    assert (absmax_quantize(x).qmin, absmax_quantize(x).qmax) == (-127, 127)
    assert (absmax_quantize(x, 4).qmin, absmax_quantize(x, 4).qmax) == (-7, 7)
    assert (zeropoint_quantize(x, 4).qmin, zeropoint_quantize(x, 4).qmax) == (-8, 7)
    assert absmax_quantize(x, 8).codes.dtype == torch.int8
    assert zeropoint_quantize(x, 9).codes.dtype == torch.int16
    qt = zeropoint_quantize(x, 16, axis=0)
    assert qt.codes.dtype == qt.zero_point.dtype == torch.int16
    assert (qt.qmin, qt.qmax) == (-32768, 32767)
    assert qt.scale.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# optimum-quanto, bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 256), (48, 7)])
def test_absmax_per_tensor_equals_quanto(shape):
    """quanto: ``absmax_scale`` = max|x| / 127 (iinfo(int8).max), then ``quantize_symmetric``
    divides x by the scale, rounds (half to even) and clamps to [−128, 127]. Same as ours: the
    codes never reach −128, since |x| / S ≤ 127."""
    w = _weight(*shape)
    scale = absmax_scale(w, qint8)
    codes = torch.ops.quanto.quantize_symmetric(w, torch.int8, None, scale)
    ours = absmax_quantize(w)
    assert torch.equal(ours.codes, codes)
    assert torch.equal(ours.scale, scale)


@pytest.mark.parametrize("shape", [(64, 256), (48, 7)])
def test_absmax_per_channel_equals_quanto(shape):
    """quanto's ``quantize_weight(w, qint8, axis=0)``: axis=0 keeps dimension 0, one scale per
    output row ([out, 1]), exactly our ``axis=0``; codes x / S, rounded half to even."""
    w = _weight(*shape)
    scale = absmax_scale(w, qint8, axis=0)
    qweight = quantize_weight(w, qint8, axis=0, scale=scale, optimized=False)
    ours = absmax_quantize(w, axis=0)
    assert torch.equal(ours.codes, qweight._data)
    assert torch.equal(ours.scale, qweight._scale)


@pytest.mark.parametrize(("qtype", "group_size"), [(qint4, 64), (qint4, 128), (qint2, 32)])
def test_zeropoint_per_group_equals_quanto_maxoptimizer(qtype, group_size):
    """quanto's group quantization (``MaxOptimizer``, ``zeropoint=True``) is unsigned: codes
    0..2^b − 1, S = (max − min) / (2^b − 1), shift = round(−min / S) as an integer, codes
    round(x / S) + shift, groups of consecutive values along the last dim (axis=0). That is ours
    plus 2^(b−1) (round(−a) = −round(a) with half to even). quanto does NOT stretch the range to
    include 0: on a group that is all positive (or all negative) its shift clamps and the
    conventions part. Gaussian groups of ≥ 32 hold both signs; the test asserts that it does."""
    w = _weight(96, 256, seed=1)
    groups = w.reshape(-1, group_size)
    assert bool((groups.amin(1) < 0).all() and (groups.amax(1) > 0).all())
    scale, shift = MaxOptimizer()(w, qtype, axis=0, group_size=group_size, zeropoint=True)
    qweight = quantize_weight(
        w, qtype, axis=0, scale=scale, shift=shift, group_size=group_size, optimized=False
    )
    quanto_codes = qweight._data.unpack().reshape(w.shape).to(torch.int16)
    ours = zeropoint_quantize(w, qtype.bits, group_size=group_size)
    offset = 2 ** (qtype.bits - 1)
    assert torch.equal(ours.codes.to(torch.int16) + offset, quanto_codes)
    assert torch.equal(ours.scale, scale.reshape(ours.scale.shape))
    assert torch.equal(
        ours.zero_point.to(torch.int16) + offset,
        shift.reshape(-1, 1).to(torch.int16).reshape(ours.zero_point.shape),
    )


def test_quanto_maxoptimizer_parts_on_a_group_without_zero():
    """Where a group does not hold 0, quanto's ``MaxOptimizer(zeropoint=True)`` keeps the range
    [min, max] but must clamp its integer shift into 0..15, and saturates: [1, 2, 3, 4] comes back
    as [1, 2, 3, 3]. Ours stretches the range to [0, 4] (as torch's observers do) and keeps 4. On
    a group that holds 0 (second row) the two agree."""
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, 3.5]])
    scale, shift = MaxOptimizer()(w, qint4, axis=0, group_size=4, zeropoint=True)
    qweight = quantize_weight(
        w, qint4, axis=0, scale=scale, shift=shift, group_size=4, optimized=False
    )
    assert qweight._data.unpack().tolist() == [[5, 10, 15, 15], [0, 5, 10, 15]]
    assert qweight.dequantize()[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 3.0])
    ours = zeropoint_quantize(w, 4, group_size=4)
    assert (ours.codes + 8).tolist() == [[4, 7, 11, 15], [0, 5, 10, 15]]
    assert ours.dequantize()[0, 3].item() == pytest.approx(4.0)


def test_quanto_default_float_shift_is_within_one_code():
    """quanto's default (``zeropoint=False``) keeps the shift −min as a float and rounds
    (x − min) / S: zero is not exactly representable, so it cannot match bit for bit. Its codes
    and ours (shifted by 8) differ by at most one."""
    w = _weight(96, 256, seed=2)
    scale, shift = MaxOptimizer()(w, qint4, axis=0, group_size=128)
    qweight = quantize_weight(w, qint4, axis=0, scale=scale, shift=shift, group_size=128)
    quanto_codes = qweight._data.unpack().reshape(w.shape).to(torch.int16)
    ours = zeropoint_quantize(w, 4, group_size=128).codes.to(torch.int16) + 8
    assert int((ours - quanto_codes).abs().max()) <= 1


# ---------------------------------------------------------------------------------------------
# PyTorch's built-in quantization (torch.ao observers, quantize_per_*, fake_quantize), bit for bit
# ---------------------------------------------------------------------------------------------

FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines
"""Whether torch was built with FBGEMM (x86-64): its quantize_per_tensor / quantize_per_channel
then add Z before rounding (see test_torch_quantize_adds_the_zero_point_before_rounding)."""


class _TorchReference(NamedTuple):
    scale: torch.Tensor  # one per block, flat, float32 (the observer's)
    zero_point: torch.Tensor  # one per block, flat, int64 (the observer's)
    codes: torch.Tensor  # quantize_per_*(...).int_repr(), clamped to [qmin, qmax]; x's shape
    fake: torch.Tensor  # fake_quantize_per_*_affine(...) = S · (q − Z) in float32; x's shape


def _torch_reference(
    x: torch.Tensor, method: str, bits: int, axis: int | None = None, group_size: int | None = None
) -> _TorchReference:
    """Quantize ``x`` with PyTorch's own quantization only, at ``qlearn``'s granularities.

    (S, Z): ``MinMaxObserver`` for one block per tensor, ``PerChannelMinMaxObserver`` with
    ``ch_axis=axis`` per channel, and per group the same observer on the view
    [n_groups, group_size] with ``ch_axis=0`` (a group is a channel of that view: torch has no
    group granularity of its own). Absmax: the symmetric qschemes with quant range
    [−(2^(b−1) − 1), 2^(b−1) − 1]; zero-point: the affine ones with [−2^(b−1), 2^(b−1) − 1];
    dtype qint8 for every b ≤ 8 (the observers take any range that holds 0 and spans at most 256
    codes). Codes: ``quantize_per_tensor`` / ``quantize_per_channel`` into qint8, ``int_repr()``,
    clamped to the quant range (the kernels saturate only to [−128, 127]). Values:
    ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine``.

    The observers keep S ≥ finfo(float32).eps = 1.2e-7 (ours: ≥ 1.2e-38, qlearn.affine._guard),
    so they part from ours on blocks whose range is below ~1e-5. Every input given here has
    blocks with S above 1e4 · eps = 1.2e-3 (asserted), far from both guards.
    """
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax if method == ABSMAX else -qmax - 1
    symmetric = method == ABSMAX
    with warnings.catch_warnings():
        # torch 2.13 deprecates the quantized dtypes (qint8, ...) and the functions that make
        # them (pytorch/pytorch#184982): the codes below still come from those kernels.
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        if axis is None and group_size is None:
            qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
            observer = MinMaxObserver(
                dtype=torch.qint8, qscheme=qscheme, quant_min=qmin, quant_max=qmax
            )
            observer(x)
            scale, zero_point = observer.calculate_qparams()
            S, Z = float(scale), int(zero_point)
            codes = torch.quantize_per_tensor(x, S, Z, torch.qint8).int_repr()
            fake = torch.fake_quantize_per_tensor_affine(x, S, Z, qmin, qmax)
        else:
            if group_size is None:
                view, axis = x, axis % x.ndim
            else:
                view, axis = x.reshape(-1, group_size), 0
            qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
            observer = PerChannelMinMaxObserver(
                ch_axis=axis, dtype=torch.qint8, qscheme=qscheme, quant_min=qmin, quant_max=qmax
            )
            observer(view)
            scale, zero_point = observer.calculate_qparams()
            codes = torch.quantize_per_channel(view, scale, zero_point, axis, torch.qint8)
            codes = codes.int_repr()
            fake = torch.fake_quantize_per_channel_affine(
                view, scale, zero_point.int(), axis, qmin, qmax
            )
    assert scale.dtype == torch.float32 and bool((scale > 1e4 * EPS32).all())
    return _TorchReference(
        scale=scale.flatten(),
        zero_point=zero_point.flatten().long(),
        codes=codes.clamp(qmin, qmax).reshape(x.shape),
        fake=fake.reshape(x.shape),
    )


def _torch_native_codes(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    per_tensor: bool,
) -> torch.Tensor:
    """What quantize_per_tensor / quantize_per_channel compute (``scale``, ``zero_point``: one
    per value), in float32 as they do.

    All multiply by a float32 reciprocal 1/S and round half to even. With FBGEMM (x86-64, as
    measured with torch 2.13) they add Z before rounding, round(x · (1/S) + Z): per tensor in one
    fused multiply-add, per channel after rounding x · (1/S) to float32. Without FBGEMM (arm64),
    ATen's kernels add Z after rounding, round(x · (1/S)) + Z, as fake_quantize does everywhere
    (from ATen's source, AffineQuantizerBase.cpp; not run on arm64 for these tests).
    """
    inverse = 1.0 / scale
    if not FBGEMM:
        return (torch.round(x * inverse) + zero_point).clamp(qmin, qmax)
    if per_tensor:  # fused: x · (1/S) is exact in float64, the sum 2^29 times finer than float32
        t = (x.double() * inverse.double() + zero_point.double()).float()
    else:
        t = x * inverse + zero_point
    return torch.round(t).clamp(qmin, qmax)


def _assert_equal_but_at_reciprocal_ties(
    x: torch.Tensor, ours: QuantizedTensor, ref: _TorchReference
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours divides, round(x / S) + Z; torch multiplies by a float32 reciprocal of S. Given equal
    (S, Z), assert that torch's codes and values differ from ours exactly where the roundings
    part (x / S within an ulp of a half-integer), and then by one code. Return both masks.

    fake_quantize: round(x · (1/S)) + Z, and its values S · (q − Z) equal ours bit for bit
    wherever the codes do. quantize_per_*: as :func:`_torch_native_codes` says.
    """
    scale, zero_point = _per_value(ours, ours.scale), _per_value(ours, ours.zero_point).float()
    divided = (torch.round(x / scale) + zero_point).clamp(ours.qmin, ours.qmax)
    reciprocal = (torch.round(x * (1.0 / scale)) + zero_point).clamp(ours.qmin, ours.qmax)
    fake_differs = divided != reciprocal
    assert torch.equal(ours.dequantize() != ref.fake, fake_differs)
    per_tensor = ours.axis is None and ours.group_size is None
    native = _torch_native_codes(x, scale, zero_point, ours.qmin, ours.qmax, per_tensor)
    native_differs = divided != native
    assert torch.equal(ours.codes != ref.codes, native_differs)
    assert int((ours.codes.int() - ref.codes.int()).abs().max()) <= 1
    return fake_differs, native_differs


GRANULARITIES = [
    pytest.param((256, 512), {}, id="per-tensor"),
    pytest.param((256, 512), {"axis": 0}, id="per-channel"),
    pytest.param((256, 512), {"axis": 1}, id="axis-1"),
    pytest.param((6, 40, 64), {"axis": -2}, id="3d-axis"),
    pytest.param((256, 512), {"group_size": 128}, id="group-128"),
    pytest.param((6, 40, 64), {"group_size": 16}, id="3d-group"),
]


@pytest.mark.parametrize(("shape", "kw"), GRANULARITIES)
def test_absmax_equals_torch_symmetric_quantization(shape, kw):
    """torch's ``per_tensor_symmetric`` / ``per_channel_symmetric`` observers with quant range
    [−127, 127]: S = max|x| / ((127 − (−127)) / 2), Z = 0. The scales are equal to ours bit for
    bit (both divide the float32 max|x| by 127). Codes: torch multiplies by a float32 reciprocal
    of S where we (and quanto, and Jacob et al.'s r / S) divide; they differ only where x / S
    lands on a half-integer tie (see test_division_sides_with_quanto_at_a_tie). Bit for bit
    everywhere else, codes and dequantized values."""
    x = _weight(*shape, seed=3)
    ref = _torch_reference(x, ABSMAX, 8, **kw)
    ours = absmax_quantize(x, **kw)
    assert torch.equal(ours.scale.flatten(), ref.scale)
    assert not ref.zero_point.any()
    for differs in _assert_equal_but_at_reciprocal_ties(x, ours, ref):
        assert int(differs.sum()) <= 1e-5 * x.numel()


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize(("shape", "kw"), GRANULARITIES)
def test_zeropoint_equals_torch_affine_quantization(shape, kw, bits):
    """torch's ``per_tensor_affine`` / ``per_channel_affine`` observers with quant range
    [−2^(b−1), 2^(b−1) − 1]: like ours they stretch the range to [min(x, 0), max(x, 0)],
    S = (max − min) / (qmax − qmin), Z = clamp(qmin − round(min / S)). The scales (float32) and
    zero points are equal to ours bit for bit; the codes and values too, except at exact ties
    (torch multiplies by 1/S, and its quantize_per_* on FBGEMM builds add Z before rounding)."""
    x = _weight(*shape, seed=4)
    ref = _torch_reference(x, ZEROPOINT, bits, **kw)
    ours = zeropoint_quantize(x, bits, **kw)
    assert torch.equal(ours.scale.flatten(), ref.scale)
    assert torch.equal(ours.zero_point.flatten().long(), ref.zero_point)
    for differs in _assert_equal_but_at_reciprocal_ties(x, ours, ref):
        assert int(differs.sum()) <= 1e-5 * x.numel()


def _near_ties(lo: float, hi: float, method: str, n: int) -> torch.Tensor:
    """lo, hi, then n float32 values within 64 ulps of half-integer multiples of the S that
    [lo, hi] gets: where x / S, x · (1/S) and x · (1/S) + Z round apart."""
    scale = quantize(torch.tensor([lo, hi]), method).scale
    k = torch.arange(-128, 128) + 0.5
    bits = (k * scale).view(torch.int32)[:, None] + torch.arange(-64, 65, dtype=torch.int32)
    near = bits.view(torch.float32).flatten()
    near = near[(near > lo) & (near < hi)]
    return torch.cat([torch.tensor([lo, hi]), near[:n]])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kw", [{}, {"axis": 0}], ids=["per-tensor", "per-channel"])
def test_torch_differs_from_ours_exactly_at_ties(method, kw):
    """The Gaussian weights above meet no tie. Here every value sits within 64 ulps of a tie of
    its row's S (rows [−2.9, 3.7], [−3.05, 2.2], [−1.0, 1.3]: Z = −16, 20, −17 for zero-point), so
    hundreds of codes part, and each must part exactly where the model of torch's rounding says
    (dividing vs a float32 reciprocal; for quantize_per_* also Z before rounding, fused or not)."""
    rows = [(-2.9, 3.7), (-3.05, 2.2), (-1.0, 1.3)]
    x = torch.stack([_near_ties(lo, hi, method, 20_000) for lo, hi in rows])
    if not kw:
        x = x[:1]
    ref = _torch_reference(x, method, 8, **kw)
    ours = quantize(x, method, **kw)
    assert torch.equal(ours.scale.flatten(), ref.scale)
    assert torch.equal(ours.zero_point.flatten().long(), ref.zero_point)
    fake_differs, native_differs = _assert_equal_but_at_reciprocal_ties(x, ours, ref)
    assert int(fake_differs.sum()) >= 10 * x.shape[0]
    assert int(native_differs.sum()) >= 10 * x.shape[0]


def test_division_sides_with_quanto_at_a_tie():
    """The one place the references part. With max|x| = 3.2, x = 1.8519684 gives x / S = 73.5
    exactly (half to even → 74) but x · fl(1/S) = 73.499992 (→ 73). We divide, as Jacob et al.
    write q = r / S + Z, as quanto and the GPTQ reference quantizer do; PyTorch's
    quantize_per_tensor and fake_quantize_per_tensor_affine multiply by the reciprocal, a second
    rounding."""
    x = torch.tensor([3.2, 1.8519684076309204])
    assert (x[1] / (x[0] / 127)).item() == 73.5
    assert (x[1] * (1 / (x[0] / 127))).item() == 73.49999237060547
    ours = absmax_quantize(x)
    quanto = torch.ops.quanto.quantize_symmetric(x, torch.int8, None, absmax_scale(x, qint8))
    ref = _torch_reference(x, ABSMAX, 8)
    assert ours.codes.tolist() == quanto.tolist() == [127, 74]
    assert torch.equal(ref.scale, ours.scale.flatten())
    assert ref.codes.tolist() == [127, 73]
    assert (ref.fake / ref.scale).round().tolist() == [127, 73]


def test_torch_quantize_adds_the_zero_point_before_rounding():
    """Where torch's own quantizers part from each other. ``fake_quantize_per_*_affine`` compute
    round(x · (1/S)) + Z everywhere. On FBGEMM builds (x86-64), ``quantize_per_tensor`` and
    ``quantize_per_channel`` compute round(x · (1/S) + Z): with an odd Z, a tie rounds the other
    way. x = [−101, 154] gives S = 1, Z = −27, so 0.5 → round(−26.5) = −26, not
    round(0.5) − 27 = −27. And the two part from each other: quantize_per_tensor forms
    x · (1/S) + Z in one fused multiply-add, quantize_per_channel rounds x · (1/S) to float32
    first. With [−2.9, 3.7] (S = 6.6 / 255, Z = −16) and x = −1.6435294, x · (1/S) is
    −63.4999944, in float32 −63.499996; + Z is −79.4999944 fused (→ −79) but −79.5 after a
    second float32 rounding (→ −80, half to even). Without FBGEMM (arm64), ATen adds Z after
    rounding in both, as fake_quantize does."""
    x = torch.tensor([-101.0, 154.0, 0.5, 1.5, -0.5, 2.5])
    per_tensor = _torch_reference(x, ZEROPOINT, 8)
    per_channel = _torch_reference(x[None], ZEROPOINT, 8, axis=0)
    assert (per_tensor.scale.item(), per_tensor.zero_point.item()) == (1.0, -27)
    ours = zeropoint_quantize(x)
    assert ours.codes.tolist() == [-128, 127, -27, -25, -27, -25]
    assert torch.equal(per_tensor.fake, ours.dequantize())
    assert torch.equal(per_channel.fake[0], ours.dequantize())
    native = [-128, 127, -26, -26, -28, -24] if FBGEMM else ours.codes.tolist()
    assert per_tensor.codes.tolist() == per_channel.codes[0].tolist() == native

    x = torch.tensor([-2.9, 3.7, -1.6435294151306152])
    per_tensor = _torch_reference(x, ZEROPOINT, 8)
    per_channel = _torch_reference(x[None], ZEROPOINT, 8, axis=0)
    assert per_tensor.zero_point.item() == -16
    assert (x[2] * (1 / per_tensor.scale)).item() == -63.499996185302734
    ours = zeropoint_quantize(x)
    assert ours.codes.tolist() == [-128, 127, -79]
    assert torch.equal(per_tensor.fake, ours.dequantize())
    assert per_tensor.codes.tolist() == [-128, 127, -79]
    assert per_channel.codes[0].tolist() == [-128, 127, -80 if FBGEMM else -79]


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------


@st.composite
def _cases(draw):
    """A float32 tensor of 1 to 3 dims with zeros mixed in, bits 2–8, and a granularity."""
    ndim = draw(st.integers(1, 3))
    group_size = draw(st.sampled_from([1, 2, 4, 8]))
    last = group_size * draw(st.integers(1, 4))
    shape = (*draw(st.lists(st.integers(1, 5), min_size=ndim - 1, max_size=ndim - 1)), last)
    values = st.floats(-1e4, 1e4, width=32, allow_subnormal=False) | st.just(0.0)
    x = torch.from_numpy(draw(arrays(np.float32, shape, elements=values)))
    x = x * draw(st.sampled_from([1.0, 1e-20, 1e20]))
    kind = draw(st.sampled_from(["tensor", "axis", "group"]))
    kw = {}
    if kind == "axis":
        kw["axis"] = draw(st.integers(-ndim, ndim - 1))
    elif kind == "group":
        kw["group_size"] = group_size
    return x, draw(st.integers(2, 8)), kw


def _grouped_shape(qt: QuantizedTensor) -> tuple[int, ...]:
    if qt.group_size is None:
        return tuple(qt.shape)
    return (*qt.shape[:-1], qt.shape[-1] // qt.group_size, qt.group_size)


def _per_value(qt: QuantizedTensor, t: torch.Tensor) -> torch.Tensor:
    """A per-block tensor (scale, zero point) expanded to one entry per value."""
    return torch.broadcast_to(t, _grouped_shape(qt)).reshape(qt.shape)


@settings(max_examples=150, deadline=None)
@given(case=_cases(), method=st.sampled_from(METHODS))
def test_round_trip_properties(case, method):
    """Codes in [qmin, qmax]; |x − x̂| ≤ S/2 up to float32 rounding; re-quantizing x̂ gives the
    same codes; the input is not mutated."""
    x, bits, kw = case
    before = x.clone()
    qt = quantize(x, method, bits=bits, **kw)
    assert torch.equal(x, before)
    assert qt.codes.shape == x.shape and qt.codes.dtype == torch.int8
    assert int(qt.codes.min()) >= qt.qmin and int(qt.codes.max()) <= qt.qmax
    x_hat = qt.dequantize()
    step = _per_value(qt, qt.scale)
    # S/2 from rounding; the rest is float32 rounding of x/S, of (q − Z)·S and of S itself
    # (the last scaled by the 2^b codes a range spans).
    tolerance = step * (0.5 + 2**bits * EPS32) + 4 * EPS32 * x.abs()
    assert bool(((x - x_hat).abs() <= tolerance).all())
    # Idempotent wherever a block's codes still span [qmin, qmax] (absmax: always reaches ±qmax);
    # see test_zeropoint_round_trip_can_shrink_the_range for the exception.
    again = quantize(x_hat, method, bits=bits, **kw)
    spans = _per_value(qt, _block_max(qt.codes, qt)) == qt.qmax
    if method == ABSMAX:
        spans = torch.ones_like(spans)
    assert torch.equal(torch.where(spans, again.codes, 0), torch.where(spans, qt.codes, 0))


def test_zeropoint_round_trip_can_shrink_the_range():
    """Zero-point codes are not always idempotent, here as in PyTorch: x = [−100.5, 154.5] gives
    S = 1, Z = −28 (round(−100.5) = −100, half to even) and 154.5 → round(154.5) − 28 = 126,
    not 127. The dequantized range is 254 steps wide, so re-quantizing picks a new S and the max
    code becomes 127. The min always lands on qmin; the max on qmax except at such ties. torch's
    observer picks the same (S, Z) and all its quantizers give 126: S = 1 makes x · (1/S) exact,
    and Z is even, so adding it before rounding (FBGEMM's quantize_per_*) gives
    round(126.5) = 126 too."""
    x = torch.tensor([-100.5, 154.5])
    qt = zeropoint_quantize(x)
    assert (qt.scale.item(), qt.zero_point.item(), qt.codes.tolist()) == (1.0, -28, [-128, 126])
    ref = _torch_reference(x, ZEROPOINT, 8)
    assert (ref.scale.item(), ref.zero_point.item(), ref.codes.tolist()) == (1.0, -28, [-128, 126])
    assert torch.equal(ref.fake, qt.dequantize())
    assert ref.fake.tolist() == [-100.0, 154.0]
    assert zeropoint_quantize(qt.dequantize()).codes.tolist() == [-128, 127]
    assert _torch_reference(ref.fake, ZEROPOINT, 8).codes.tolist() == [-128, 127]


@settings(max_examples=100, deadline=None)
@given(case=_cases())
def test_absmax_maps_the_largest_magnitude_to_qmax(case):
    """In every block the value of largest |x| gets code ±qmax (unless the block is so tiny,
    below qmax × 1.2e-38, that the step guard acts)."""
    x, bits, kw = case
    qt = absmax_quantize(x, bits, **kw)
    block_max = _per_value(qt, _block_max(x.abs(), qt))
    largest = (x.abs() == block_max) & (block_max >= qt.qmax * TINY32)
    assert bool((qt.codes.abs()[largest] == qt.qmax).all())


def _block_max(t: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    """The largest entry of ``t`` in each of ``qt``'s blocks, shaped to broadcast like the scale."""
    tg = t.reshape(_grouped_shape(qt))
    if qt.group_size is not None:
        return tg.amax(-1, keepdim=True)
    if qt.axis is None:
        return tg.amax()
    dims = [d for d in range(t.ndim) if d != qt.axis]
    return tg.amax(dim=dims, keepdim=True) if dims else tg


@settings(max_examples=100, deadline=None)
@given(case=_cases())
def test_zeropoint_keeps_zero_exact(case):
    """Zero-point: the zero point is a valid code and every 0 in x comes back exactly 0."""
    x, bits, kw = case
    qt = zeropoint_quantize(x, bits, **kw)
    assert int(qt.zero_point.min()) >= qt.qmin and int(qt.zero_point.max()) <= qt.qmax
    zeros = x == 0
    assert torch.equal(qt.codes[zeros], _per_value(qt, qt.zero_point)[zeros])
    assert bool((qt.dequantize()[zeros] == 0).all())


# ---------------------------------------------------------------------------------------------
# Degenerate inputs, dtypes, containers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kw", [{}, {"axis": 0}, {"axis": -1}, {"group_size": 4}])
def test_all_zero_tensor(method, kw):
    qt = quantize(torch.zeros(3, 8), method, **kw)
    assert bool(torch.isfinite(qt.scale).all()) and bool((qt.scale > 0).all())
    assert torch.equal(qt.dequantize(), torch.zeros(3, 8))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [2.5, -0.75, 1e-30])
def test_constant_tensor(method, value):
    x = torch.full((4, 6), value)
    qt = quantize(x, method, bits=4, axis=0)
    x_hat = qt.dequantize()
    assert bool(torch.isfinite(x_hat).all())
    assert torch.allclose(x_hat, x, rtol=1e-6, atol=0)


def test_zeros_in_a_row_of_a_per_channel_weight():
    x = _weight(4, 16)
    x[2] = 0
    for method in METHODS:
        qt = quantize(x, method, axis=0)
        assert torch.equal(qt.dequantize()[2], torch.zeros(16))
        assert torch.allclose(qt.dequantize()[[0, 1, 3]], x[[0, 1, 3]], atol=0.02)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_input_keeps_its_dtype(dtype, method):
    """Computed in float32 whatever the input; the round trip comes back in the input's dtype."""
    x = _weight(8, 64).to(dtype)
    before = x.clone()
    qt = quantize(x, method, group_size=32)
    assert qt.dtype == dtype and qt.scale.dtype == torch.float32
    assert qt.dequantize().dtype == dtype
    assert torch.equal(x, before)
    expected = quantize(x.float(), method, group_size=32)
    assert torch.equal(qt.codes, expected.codes)
    assert torch.equal(qt.dequantize(), expected.dequantize().to(dtype))


def test_shapes_of_scale_and_zero_point():
    x = _weight(6, 8, 32)
    assert absmax_quantize(x).scale.shape == ()
    assert absmax_quantize(x, axis=1).scale.shape == (1, 8, 1)
    assert absmax_quantize(x, axis=-1).scale.shape == (1, 1, 32)
    qt = zeropoint_quantize(x, group_size=8)
    assert qt.scale.shape == qt.zero_point.shape == (6, 8, 4, 1)
    assert qt.axis is None and qt.group_size == 8 and qt.shape == x.shape
    assert zeropoint_quantize(x, axis=-2).axis == 1


def test_zero_dim_and_one_dim_inputs():
    scalar = absmax_quantize(torch.tensor(-0.3))
    assert scalar.codes.item() == -127 and scalar.dequantize().item() == pytest.approx(-0.3)
    vector = torch.tensor([0.5, -2.0, 3.0])
    assert torch.allclose(zeropoint_quantize(vector, axis=0).dequantize(), vector)


def test_parameter_input_gives_no_graph():
    weight = nn.Parameter(_weight(4, 8))
    qt = absmax_quantize(weight, axis=0)
    assert not qt.scale.requires_grad and not qt.dequantize().requires_grad


def test_fake_quantize_is_quantize_then_dequantize():
    x = _weight(16, 64)
    for method in METHODS:
        expected = quantize(x, method, bits=4, group_size=16).dequantize()
        assert torch.equal(fake_quantize(x, method, bits=4, group_size=16), expected)
    assert torch.equal(quantize(x, ABSMAX, axis=0).codes, absmax_quantize(x, axis=0).codes)
    assert torch.equal(quantize(x, ZEROPOINT).codes, zeropoint_quantize(x).codes)


def test_dequantize_is_codes_minus_zero_point_times_scale():
    x = _weight(8, 32)
    qt = zeropoint_quantize(x, 4, group_size=8)
    codes = qt.codes.reshape(8, 4, 8).float()
    expected = ((codes - qt.zero_point.float()) * qt.scale).reshape(8, 32)
    assert torch.equal(qt.dequantize(), expected)


def test_quantized_tensor_is_frozen():
    qt = absmax_quantize(_weight(2, 4))
    with pytest.raises(AttributeError):
        qt.bits = 4  # type: ignore[misc]


def test_nbytes_counts_codes_scales_and_zero_points():
    x = _weight(1536, 576)
    assert absmax_quantize(x).nbytes() == 1536 * 576 + 2
    assert absmax_quantize(x, axis=0).nbytes(scale_bits=32) == 1536 * 576 + 1536 * 4
    qt = zeropoint_quantize(x, 4, group_size=64)
    n_groups = 1536 * 576 // 64
    assert qt.nbytes() == (1536 * 576 * 4 + n_groups * (16 + 4)) / 8
    assert absmax_quantize(x.T, group_size=128).bits_per_weight() == 8.125  # 576 % 128 != 0
    assert qt.bits_per_weight() == 4 + 20 / 64


def test_a_quantized_tensor_counts_the_tensors_it_holds():
    """A Quantized: codes at ``bits`` each (as packed), one fp16 scale and one ``bits``-bit
    zero point per block, counted from the tensors the result holds."""
    from qlearn._quantized import Quantized

    x = _weight(96, 256)
    for qt in (absmax_quantize(x, 8, axis=0), zeropoint_quantize(x, 4, group_size=64)):
        assert isinstance(qt, Quantized)
        zero_bits = qt.bits if qt.method == "zeropoint" else 0
        held = (
            qt.codes.numel() * qt.bits + qt.scale.numel() * 16 + qt.zero_point.numel() * zero_bits
        )
        assert qt.nbytes() == held / 8
        assert qt.bits_per_weight() == 8 * qt.nbytes() / x.numel()


def test_code_range_is_the_one_every_module_uses():
    from qlearn import affine, qat

    assert affine.code_range(ABSMAX, 8) == (-127, 127)
    assert affine.code_range("zeropoint", 4) == (-8, 7) == qat.code_range(4)
    for bits in range(2, affine.MAX_BITS + 1):
        q = absmax_quantize(torch.randn(16), bits)
        assert (q.qmin, q.qmax) == affine.code_range(ABSMAX, bits)


def test_quantization_error():
    x = _weight(64, 64)
    qt = absmax_quantize(x, axis=0)
    error = quantization_error(x, qt)
    assert set(error) == {"mse", "max_abs", "sqnr_db"}
    diff = (x - qt.dequantize()).double()
    assert error["mse"] == pytest.approx(float(diff.square().mean()))
    assert error["max_abs"] == pytest.approx(float(diff.abs().max()))
    assert 35 < error["sqnr_db"] < 50  # about 6 dB a bit
    four = quantization_error(x, absmax_quantize(x, 4, axis=0))
    assert 18 < error["sqnr_db"] - four["sqnr_db"] < 30  # four bits fewer, about 24 dB
    assert quantization_error(x, x)["sqnr_db"] == math.inf
    assert quantization_error(torch.zeros(3), torch.zeros(3))["mse"] == 0


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------


def _logical_weight(layer: nn.Module) -> torch.Tensor:
    """[out, in], written here independently of qlearn.models: GPT-2's Conv1D stores [in, out]."""
    from transformers.pytorch_utils import Conv1D

    return layer.weight.T if isinstance(layer, Conv1D) else layer.weight


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        (ABSMAX, {}),
        (ABSMAX, {"axis": 0}),
        (ZEROPOINT, {"axis": 0}),
        (ZEROPOINT, {"group_size": 16}),
    ],
    ids=["absmax-tensor", "absmax-channel", "zeropoint-channel", "zeropoint-group16"],
)
def test_quantize_model(tiny_model, method, kw):
    """Every decoder linear weight = fake_quantize of its logical [out, in] weight; the rest of
    the model (embeddings, norms, biases, LM head) and the original model are untouched."""
    from qlearn.models import linear_layers

    model = tiny_model  # a tiny Llama (nn.Linear) and a tiny GPT-2 (Conv1D), from conftest.py
    before = {name: t.clone() for name, t in model.state_dict().items()}
    quantized = quantize_model(model, method, bits=8, **kw)
    assert type(quantized) is type(model) and quantized is not model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name

    layers = dict(linear_layers(model))
    assert layers and len(layers) == len(dict(linear_layers(quantized)))
    for name, layer in linear_layers(quantized):
        expected = fake_quantize(_logical_weight(layers[name]).detach(), method, **kw)
        assert torch.equal(_logical_weight(layer), expected), name
        assert not torch.equal(layer.weight, layers[name].weight), name
    linear_weights = {f"{name}.weight" for name in layers}
    for name, tensor in quantized.state_dict().items():
        if name not in linear_weights:
            assert torch.equal(tensor, before[name]), name

    ids = torch.arange(20).reshape(2, 10)
    with torch.no_grad():
        logits, logits_q = model(ids).logits, quantized(ids).logits
    assert not torch.equal(logits, logits_q)
    assert float((logits - logits_q).abs().max()) < 0.02 * float(logits.abs().max())


def test_quantize_model_in_place_returns_the_same_model(tiny_gpt2):
    model = tiny_gpt2
    copy = quantize_model(model, ZEROPOINT, bits=4, group_size=16)
    same = quantize_model_(model, ZEROPOINT, bits=4, group_size=16)
    assert same is model
    for (name, tensor), other in zip(
        model.state_dict().items(), copy.state_dict().values(), strict=True
    ):
        assert torch.equal(tensor, other), name


def test_quantize_model_in_place_checks_every_layer_first(tiny_gpt2):
    """GPT-2's c_fc has in_features 32 but c_proj (mlp) 128: group_size 64 fits only some."""
    model = tiny_gpt2
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="group_size"):
        quantize_model_(model, ABSMAX, group_size=64)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


# ---------------------------------------------------------------------------------------------
# Bad input: every error names its argument
# ---------------------------------------------------------------------------------------------

X = torch.ones(4, 8)

BAD = [
    pytest.param(
        lambda: absmax_quantize(torch.ones(4, 8, dtype=torch.int32)), TypeError, "x", id="int-x"
    ),
    pytest.param(lambda: zeropoint_quantize([1.0, 2.0]), TypeError, "x", id="list-x"),
    pytest.param(lambda: absmax_quantize(torch.ones(0, 8)), ValueError, "x", id="empty-x"),
    pytest.param(
        lambda: absmax_quantize(torch.tensor([1.0, math.nan])), ValueError, "x", id="nan-x"
    ),
    pytest.param(lambda: zeropoint_quantize(torch.tensor([math.inf])), ValueError, "x", id="inf-x"),
    pytest.param(lambda: absmax_quantize(X, 1), ValueError, "bits", id="bits-1"),
    pytest.param(lambda: zeropoint_quantize(X, 17), ValueError, "bits", id="bits-17"),
    pytest.param(lambda: absmax_quantize(X, 4.0), TypeError, "bits", id="bits-float"),
    pytest.param(lambda: absmax_quantize(X, True), TypeError, "bits", id="bits-bool"),
    pytest.param(lambda: absmax_quantize(X, axis=2), ValueError, "axis", id="axis-2"),
    pytest.param(lambda: zeropoint_quantize(X, axis=-3), ValueError, "axis", id="axis-neg"),
    pytest.param(lambda: absmax_quantize(X, axis=0.0), TypeError, "axis", id="axis-float"),
    pytest.param(lambda: absmax_quantize(X, group_size=0), ValueError, "group_size", id="group-0"),
    pytest.param(
        lambda: absmax_quantize(X, group_size=-4), ValueError, "group_size", id="group-neg"
    ),
    pytest.param(
        lambda: zeropoint_quantize(X, group_size=3), ValueError, "group_size", id="group-3"
    ),
    pytest.param(
        lambda: absmax_quantize(X, group_size=4.0), TypeError, "group_size", id="group-float"
    ),
    pytest.param(
        lambda: absmax_quantize(torch.tensor(1.0), group_size=1),
        ValueError,
        "group_size",
        id="group-0d",
    ),
    pytest.param(
        lambda: absmax_quantize(X, axis=0, group_size=4), ValueError, "axis", id="axis-and-group"
    ),
    pytest.param(lambda: quantize(X, "minmax"), ValueError, "method", id="method"),
    pytest.param(lambda: fake_quantize(X, None), ValueError, "method", id="fake-method"),
    pytest.param(
        lambda: quantize_model(nn.Linear(2, 2), "int8"), ValueError, "method", id="model-method"
    ),
    pytest.param(lambda: quantize_model_("gpt2", ABSMAX), TypeError, "model", id="model-type"),
    pytest.param(
        lambda: absmax_quantize(X).nbytes(scale_bits=0), ValueError, "scale_bits", id="scale-bits"
    ),
    pytest.param(
        lambda: quantization_error(X, torch.ones(8, 4)), ValueError, "x_hat", id="error-shape"
    ),
    pytest.param(lambda: quantization_error(X.int(), X), TypeError, "x", id="error-x"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        call()


def test_quantize_in_range_equals_the_quantizers_on_their_own_range():
    from qlearn.affine import quantize_in_range

    x = torch.randn(64, 32)
    amax = float(x.abs().max())
    ours, ref = quantize_in_range(x, -amax, amax, ABSMAX), absmax_quantize(x)
    assert torch.equal(ours.codes, ref.codes) and torch.equal(ours.scale, ref.scale)
    ours = quantize_in_range(x, float(x.min()), float(x.max()), ZEROPOINT, bits=4)
    ref = zeropoint_quantize(x, bits=4)
    assert torch.equal(ours.codes, ref.codes) and torch.equal(ours.zero_point, ref.zero_point)
    clipped = quantize_in_range(x, -0.5, 0.5, ABSMAX)
    assert int(clipped.codes.max()) == 127 and int(clipped.codes.min()) == -127
    assert float(clipped.dequantize().abs().max()) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("lo", "hi", "match"),
    [(1.0, 1.0, "lo"), (2.0, 1.0, "lo"), (float("nan"), 1.0, "lo"), (0.0, float("inf"), "hi")],
)
def test_quantize_in_range_bad_range(lo, hi, match):
    from qlearn.affine import quantize_in_range

    with pytest.raises(ValueError, match=match):
        quantize_in_range(torch.randn(8), lo, hi, ABSMAX)
