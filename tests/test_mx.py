"""qlearn.mx against its references: the OCP MX v1.0 conversion written out here block by block,
``ml_dtypes`` casts (float8_e8m0fnu scales; float8_e4m3fn, float8_e5m2, float6_e2m3fn,
float6_e3m2fn, float4_e2m1fn elements), and NVIDIA TensorRT Model Optimizer's ``MXFP4QTensor``,
``MXFP8QTensor`` and ``NVFP4QTensor`` (the ``"ceil"`` scale and NVFP4, bit for bit).
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qlearn import Quantized, mx

FLOAT_ELEMENTS = ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1"]
ML_DTYPE = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}


def _weights(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian rows at several scales, a few outliers, a zero block and a constant block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-6, 3, rows)[:, None]
    x[3, 17] = 40.0
    x[5, :32] = 0.0
    x[6, 32:64] = -1.5
    return x


def _spec_block(values: list[float], element: str) -> list[float]:
    """OCP MX v1.0, section 6.3, for one block, written from the spec in exact arithmetic:
    shared_exp = floor(log2(max|V|)) - emax (clamped to [-127, 127]), X = 2^shared_exp,
    P = V / X rounded to the nearest element value (ties to the even code), clamped to +-max."""
    fmt = mx.ELEMENTS[element]
    amax = max(abs(v) for v in values)
    if amax == 0:
        return [0.0] * len(values)
    shared = max(-127, min(127, math.frexp(amax)[1] - 1 - fmt.emax))
    scale = Fraction(2) ** shared
    if element == "int8":
        grid = [(Fraction(k, 64), k) for k in range(-127, 128)]
    else:
        codes = np.arange(1 << fmt.bits, dtype=np.uint8)
        decoded = codes.view(ML_DTYPE[element]).astype(np.float64)
        grid = [
            (Fraction(float(v)), int(c))
            for v, c in zip(decoded, codes, strict=True)
            if np.isfinite(v)
        ]
    out = []
    for v in values:
        target = Fraction(v) / scale
        target = max(-Fraction(fmt.max), min(Fraction(fmt.max), target))
        best = min(grid, key=lambda vc: (abs(vc[0] - target), vc[1] & 1))  # ties: even code
        out.append(float(best[0] * scale))
    return out


# ---------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------


def test_element_formats_are_the_specs_table():
    """OCP MX v1.0 Table 1: emax and the largest value of each element type."""
    table = {name: (f.bits, f.emax, f.max) for name, f in mx.ELEMENTS.items()}
    assert table == {
        "fp8_e4m3": (8, 8, 448.0), "fp8_e5m2": (8, 15, 57344.0), "fp6_e2m3": (6, 2, 7.5),
        "fp6_e3m2": (6, 4, 28.0), "fp4_e2m1": (4, 2, 6.0), "int8": (8, 0, 127 / 64),
    }  # fmt: skip
    for name in FLOAT_ELEMENTS:
        assert mx.ELEMENTS[name].max == float(ml_dtypes.finfo(ML_DTYPE[name]).max)


@pytest.mark.parametrize(
    ("element", "bits"),
    [("fp4_e2m1", 4.25), ("fp6_e3m2", 6.25), ("fp8_e4m3", 8.25), ("int8", 8.25)],
)
def test_bytes_are_one_scale_byte_per_block_and_packed_elements(element, bits):
    q = mx.mx_quantize(_weights(), element)
    assert isinstance(q, Quantized)
    assert q.nbytes() == 64 * 8 * (1 + 32 * mx.ELEMENTS[element].bits / 8)
    assert q.bits_per_weight() == bits


# ---------------------------------------------------------------------------------------------
# The OCP conversion ("floor")
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("element", [*FLOAT_ELEMENTS, "int8"])
def test_blocks_equal_the_spec_written_out(element):
    x = _weights(rows=12, cols=64, seed=1)
    x[0, :8] = torch.tensor([6.5, 7.0, 7.9, -3.0, 0.1, 1.25, 1.75, -0.0])  # saturation and ties
    ours = mx.mx_quantize(x, element).dequantize()
    for row in range(x.shape[0]):
        for start in range(0, 64, 32):
            block = x[row, start : start + 32].double().tolist()
            assert ours[row, start : start + 32].tolist() == _spec_block(block, element)


@pytest.mark.parametrize("element", FLOAT_ELEMENTS)
def test_elements_are_ml_dtypes_casts_of_the_clamped_ratio(element):
    x = _weights(seed=2)
    q = mx.mx_quantize(x, element)
    scaled = x.double().reshape(64, -1, 32) / q.scales()[..., None]
    top = mx.ELEMENTS[element].max
    clamped = scaled.clamp(-top, top).numpy().reshape(x.shape)
    theirs = clamped.astype(np.float32).astype(ML_DTYPE[element])  # exact ratios: one rounding
    assert np.array_equal(q.elements().numpy(), theirs.astype(np.float32))
    nonzero = theirs.astype(np.float32) != 0  # the sign of a zero aside: -0.0 is stored as +0
    assert np.array_equal(q.codes.numpy()[nonzero], theirs.view(np.uint8)[nonzero])


def test_scales_are_e8m0_codes_of_a_power_of_two():
    x = _weights(seed=3)
    q = mx.mx_quantize(x, "fp8_e4m3")
    theirs = q.scales().numpy().astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    assert np.array_equal(q.scale_codes.numpy(), theirs)
    amax = x.abs().reshape(64, -1, 32).amax(-1).double()
    live = amax > 0
    expected = torch.floor(torch.log2(amax[live])) - 8 + 127  # E4M3: emax = 8
    assert torch.equal(q.scale_codes[live].double(), expected)
    assert torch.all(q.scale_codes[~live] == 0)  # an all-zero block: the smallest scale


def test_fp4_saturates_above_six_times_the_scale_and_ceil_does_not():
    block = torch.tensor([[7.5] + [0.25] * 31])  # max 7.5: X = 2^(2 - 2) = 1, 7.5 -> 6
    floor = mx.mx_quantize(block, "fp4_e2m1")
    ceil = mx.mx_quantize(block, "fp4_e2m1", scale_rounding="ceil")
    assert floor.dequantize()[0, 0] == 6.0 and float(floor.scales()) == 1.0
    assert ceil.dequantize()[0, 0] == 8.0 and float(ceil.scales()) == 2.0  # 4 · 2: no clipping
    assert floor.dequantize()[0, 1] == 0.0  # 0.25 is halfway between 0 and 0.5: ties to even 0
    assert ceil.dequantize()[0, 1] == 0.0  # 0.125 under X = 2 rounds to 0 too


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, (4, 32), elements=st.floats(-1e6, 1e6, width=32)),
    st.sampled_from([*FLOAT_ELEMENTS, "int8"]),
    st.sampled_from(mx.SCALE_ROUNDINGS),
)
def test_error_bound_and_idempotence(values, element, rounding):
    """|x - x̂| <= X · half a step at the top of the element's range (plus, with the spec's floor
    scale, what saturation clips: below 2^(emax+1) - max); quantizing x̂ again changes nothing."""
    x = torch.from_numpy(values)
    q = mx.mx_quantize(x, element, scale_rounding=rounding)
    fmt = mx.ELEMENTS[element]
    mbits = 6 if element == "int8" else int(element[-1])  # int8: steps of 2^-6 below 2
    half_step = 2.0 ** (fmt.emax - mbits - 1)
    clip = 2.0 ** (fmt.emax + 1) - fmt.max if rounding == "floor" else 0.0
    bound = q.scales() * max(half_step, clip)
    tiny = 2.0**-127 * fmt.max  # blocks below the smallest scale's range
    err = (q.dequantize().double() - x.double()).abs().reshape(4, 1, 32)
    assert torch.all(err <= bound[..., None] * (1 + 1e-12) + tiny)
    again = mx.mx_quantize(q.dequantize(), element, scale_rounding=rounding)
    assert torch.equal(again.dequantize(), q.dequantize())


# ---------------------------------------------------------------------------------------------
# TensorRT Model Optimizer: the "ceil" scale and NVFP4
# ---------------------------------------------------------------------------------------------


def test_mxfp8_ceil_equals_model_optimizer_bit_for_bit():
    from modelopt.torch.quantization.qtensor import MXFP8QTensor

    x = _weights(seed=4)
    qt, scale = MXFP8QTensor.quantize(x)
    ours = mx.mx_quantize(x, "fp8_e4m3", scale_rounding="ceil")
    assert torch.equal(ours.scale_codes, scale)
    assert torch.equal(ours.codes, qt._quantized_data.view(torch.uint8))


def test_mxfp4_ceil_equals_model_optimizer_but_for_its_ties():
    """Model Optimizer's MXFP4 rounds a value exactly halfway between two E2M1 levels down;
    the spec rounds it to the even level. Everywhere else the values are the same."""
    from modelopt.torch.quantization.qtensor import MXFP4QTensor

    x = _weights(seed=5)
    x[7, :4] = torch.tensor([6.0, 1.25, 1.75, 2.5])  # ties under X = 1
    qt, scale = MXFP4QTensor.quantize(x, 32)
    theirs = qt.dequantize(scale=scale, block_sizes={-1: 32}, dtype=torch.float32)
    ours = mx.mx_quantize(x, "fp4_e2m1", scale_rounding="ceil")
    assert torch.equal(ours.scale_codes, scale.reshape(ours.scale_codes.shape))
    ratio = x.double().reshape(64, -1, 32) / ours.scales()[..., None]
    tie = torch.isin(ratio.abs(), torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]).double())
    tie = tie.reshape(x.shape)
    assert torch.equal(ours.dequantize()[~tie], theirs[~tie])
    assert tie[7, 1:4].all() and ours.dequantize()[7, 1:4].tolist() == [1.0, 2.0, 2.0]
    assert theirs[7, 1:4].tolist() == [1.0, 1.5, 2.0]


def test_nvfp4_equals_model_optimizer_bit_for_bit():
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    x = _weights(seed=6)
    qt, block_scale, tensor_scale = NVFP4QTensor.quantize(x, 16)
    ours = mx.nvfp4_quantize(x)
    assert torch.equal(ours.tensor_scale, tensor_scale)
    assert torch.equal(ours.block_scales.view(torch.uint8), block_scale.view(torch.uint8))
    nonzero = ours.elements() != 0  # Model Optimizer's code of a zero carries no sign
    packed_theirs = qt._quantized_data
    unpacked = torch.stack([packed_theirs & 15, packed_theirs >> 4], dim=-1).reshape(x.shape)
    assert torch.equal(ours.codes[nonzero], unpacked[nonzero])
    theirs = qt.dequantize(
        dtype=torch.float32, scale=block_scale, double_scale=tensor_scale, block_sizes={-1: 16}
    )
    assert torch.equal(ours.dequantize(), theirs)


def test_nvfp4_bytes_and_an_all_zero_tensor():
    x = _weights()
    q = mx.nvfp4_quantize(x)
    assert q.nbytes() == x.numel() / 2 + x.numel() / 16 + 4 and q.packed().shape == (64, 128)
    assert q.bits_per_weight() == pytest.approx(4.5 + 32 / x.numel())
    zero = mx.nvfp4_quantize(torch.zeros(2, 32))
    assert torch.equal(zero.dequantize(), torch.zeros(2, 32)) and float(zero.tensor_scale) == 1.0


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_is_named():
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="element"):
        mx.mx_quantize(x, "fp5_e2m2")
    for size in (3, 0, 2048):
        with pytest.raises(ValueError, match="block_size"):
            mx.mx_quantize(x, block_size=size)
    with pytest.raises(ValueError, match="rows of 48 values"):
        mx.mx_quantize(torch.randn(4, 48))
    with pytest.raises(ValueError, match="rows of 40 values"):
        mx.nvfp4_quantize(torch.randn(4, 40))
    with pytest.raises(ValueError, match="finite"):
        mx.mx_quantize(torch.tensor([[float("nan")] * 32]))
    with pytest.raises(TypeError, match="x"):
        mx.nvfp4_quantize(torch.ones(2, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="scale_rounding"):
        mx.mx_quantize(x, scale_rounding="round")
