"""Tests of qlearn.nf4: bitsandbytes 0.50.2 bit for bit on CPU (code books, codes, packed bytes,
absmax, the nested state of double quantization, dequantized values for float32, float16 and
bfloat16), bits per weight from the bytes, error bounds and packing under hypothesis, and every
bad argument.

What bitsandbytes computes on CPU: ``quantize_4bit`` runs the pure-torch kernel of its default
backend (float32 x · (1 / absmax), ``torch.bucketize`` over the midpoints of the sorted code book,
FP4's rank mapped back to its code by ``argsort``); ``compress_statistics=True`` subtracts the
mean of the absmax and quantizes it with ``quantize_blockwise(..., blocksize=256)``, whose CPU
kernel (C++) looks each normalised value up in a 65,536-cell table; ``dequantize_4bit`` and
``dequantize_blockwise`` are C++ kernels: level · absmax in float32, then rounded to the output
dtype.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qlearn import nf4
from qlearn.affine import absmax_quantize
from qlearn.models import get_weight, linear_layers

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # one line on import on some CPUs
bnb_functional = pytest.importorskip("bitsandbytes.functional")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _weights(rows: int, cols: int, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Gaussian rows of very different scales, an all-zero block and a block with one outlier."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g).mul(3).add(0.01)
    w[1, :256] = 0.0
    w[2, 7] = 40.0
    return w.to(dtype)


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bits: equal bits, not just equal values (−0 ≠ +0, NaN = NaN)."""
    return x.contiguous().view(INT_VIEW[x.dtype])


def _bits_zero_unsigned(x: torch.Tensor) -> torch.Tensor:
    """The raw bits with −0 read as +0 (x + 0.0 changes no other bit).

    bitsandbytes' CPU dequantization is not the same on every CPU: its AVX-512 kernel decodes
    FP4's code of −0 (code 8) as +0, its portable path (an AVX2 CPU) as −0. qlearn gives +0.
    Where a test meets that code, the sign of a zero is the only bit not compared.
    """
    return _bits(x + 0.0)


# ---------------------------------------------------------------------------------------------
# Code books
# ---------------------------------------------------------------------------------------------


def test_nf4_levels_equal_bitsandbytes_table():
    """Our quantiles, computed with torch's ndtri, give bitsandbytes' hard-coded table bit for bit
    and the table its ``create_normal_map`` computes with scipy."""
    assert torch.equal(
        _bits(nf4.NF4_LEVELS), _bits(bnb_functional.get_4bit_type("nf4", device="cpu"))
    )
    pytest.importorskip("scipy")
    table = bnb_functional.create_normal_map(offset=nf4.NF4_OFFSET, use_extra_value=True)
    assert torch.equal(torch.cat([table[:7], table[7:8], table[-8:]]), nf4.NF4_LEVELS)
    assert int((table != 0).sum()) == 15  # 7 negative, 8 positive; 0 is the 16th level


def test_nf4_levels_are_equally_likely_normal_quantiles():
    """QLoRA eq. 4: rescaled to N(0, 1) units, the positive levels sit at evenly spaced
    probabilities from ½ to the offset; the negative ones likewise, one fewer."""
    q_max = float(torch.special.ndtri(torch.tensor(nf4.NF4_OFFSET, dtype=torch.float64)))
    probabilities = torch.special.ndtr(nf4.NF4_LEVELS.double() * q_max)
    torch.testing.assert_close(
        probabilities[7:], torch.linspace(0.5, nf4.NF4_OFFSET, 9, dtype=torch.float64)
    )
    torch.testing.assert_close(
        1 - probabilities[:8].flip(0), torch.linspace(0.5, nf4.NF4_OFFSET, 8, dtype=torch.float64)
    )


def test_fp4_levels_equal_bitsandbytes_table_and_kernel():
    """Same values as bitsandbytes' table (code order), and the same bits as its CPU kernel
    decodes for every code (its AVX-512 kernel turns the code of −0 into +0, as qlearn does)."""
    assert torch.equal(nf4.FP4_LEVELS, bnb_functional.get_4bit_type("fp4", device="cpu"))
    codes = nf4.pack_4bit(torch.arange(16).repeat(4))
    for quant_type, levels in [("fp4", nf4.FP4_LEVELS), ("nf4", nf4.NF4_LEVELS)]:
        decoded = torch.ops.bitsandbytes.dequantize_4bit.default(
            codes.reshape(-1, 1), torch.ones(1), 64, quant_type, (64,), torch.float32
        )
        assert torch.equal(_bits_zero_unsigned(decoded.reshape(-1)[:16]), _bits(levels))


def test_dynamic_map_equals_bitsandbytes():
    ours = nf4.dynamic_map()
    assert torch.equal(_bits(ours), _bits(bnb_functional.create_dynamic_map(signed=True)))
    assert ours.numel() == 256 and bool((ours.diff() > 0).all())
    ours[0] = 5.0  # a copy: the module's table is not changed
    assert float(nf4.dynamic_map()[0]) < 0


# ---------------------------------------------------------------------------------------------
# bitsandbytes bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", nf4.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "double_quant"])
def test_quantize_4bit_equals_bitsandbytes(dtype, quant_type, blocksize, double_quant):
    """Codes, packed bytes (high nibble first), absmax or the nested state (8-bit codes, absmax
    per 256, offset), and dequantized values: all bit for bit."""
    w = _weights(96, 1024, seed=blocksize, dtype=dtype)
    packed, state = bnb_functional.quantize_4bit(
        w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
    )
    q = nf4.quantize_4bit(w, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant)
    assert torch.equal(q.packed, packed.reshape(-1))
    high, low = packed.reshape(-1) >> 4, packed.reshape(-1) & 15
    assert torch.equal(q.codes.reshape(-1), torch.stack([high, low], 1).reshape(-1))
    if double_quant:
        assert q.absmax is None
        assert torch.equal(q.nested.codes, state.absmax)
        assert torch.equal(_bits(q.nested.absmax), _bits(state.state2.absmax))
        assert torch.equal(_bits(q.offset), _bits(state.offset))
        assert q.nested.blocksize == state.state2.blocksize == 256
    else:
        assert torch.equal(_bits(q.absmax), _bits(state.absmax))
    expected = bnb_functional.dequantize_4bit(packed, state)
    dequantized = q.dequantize()
    assert dequantized.dtype == dtype and dequantized.shape == w.shape
    assert torch.equal(_bits_zero_unsigned(dequantized), _bits_zero_unsigned(expected))


@pytest.mark.parametrize(
    ("dtype", "quant_type", "blocksize", "double_quant"),
    [
        (torch.float32, "nf4", 64, False),
        (torch.float16, "fp4", 32, True),
        (torch.bfloat16, "nf4", 2048, True),
    ],
)
def test_large_tensors_dequantize_as_bitsandbytes(dtype, quant_type, blocksize, double_quant):
    """Beyond a million packed bytes dequantize_4bit reads two bytes at a time, in chunks: the
    same bits as bitsandbytes (and as the 256-entry path of smaller tensors)."""
    w = _weights(2048, 1152, seed=3, dtype=dtype)  # 1,179,648 packed bytes
    packed, state = bnb_functional.quantize_4bit(
        w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
    )
    q = nf4.quantize_4bit(w, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant)
    expected = bnb_functional.dequantize_4bit(packed, state)
    dequantized = q.dequantize()
    assert dequantized.dtype == dtype and dequantized.shape == w.shape
    assert torch.equal(_bits_zero_unsigned(dequantized), _bits_zero_unsigned(expected))
    small = nf4.quantize_4bit(
        w[:64], quant_type=quant_type, blocksize=blocksize, double_quant=False
    ).dequantize()
    if not double_quant:
        assert torch.equal(_bits(small), _bits(dequantized[:64]))


def test_large_tensors_in_blocks_of_four_dequantize_as_level_times_absmax():
    """The smallest blocks the two-byte lookup takes (one uint16 per block): QLoRA eq. 6."""
    w = _weights(2048, 1152, seed=4)
    q = nf4.quantize_4bit(w, blocksize=4)
    expected = q.levels[q.codes.long()].reshape(-1, 4) * q.absmax[:, None]
    assert torch.equal(_bits(q.dequantize()), _bits(expected.reshape(w.shape)))


@pytest.mark.parametrize("quant_type", nf4.QUANT_TYPES)
def test_values_at_the_thresholds_round_as_bitsandbytes(quant_type):
    """Values at, just below and just above every midpoint between two levels (ties go to the
    lower level), and tiny values around 0 (FP4 gives a tiny positive the code of −0)."""
    levels = nf4.NF4_LEVELS if quant_type == "nf4" else nf4.FP4_LEVELS
    ordered = levels.sort().values
    midpoints = (ordered[:-1] + ordered[1:]) / 2
    probes = torch.cat(
        [
            midpoints,
            midpoints.nextafter(torch.tensor(2.0)),
            midpoints.nextafter(torch.tensor(-2.0)),
            torch.tensor([1e-30, -1e-30, 0.0, -0.0, 1.0, -1.0]),
        ]
    )
    w = torch.cat([probes, torch.zeros(128 - probes.numel())]).reshape(2, 64)
    w[:, 0] = 1.0  # absmax 1 in both blocks: x · (1 / 1) = x
    packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    q = nf4.quantize_4bit(w, quant_type=quant_type, blocksize=64)
    assert torch.equal(q.packed, packed.reshape(-1))
    expected = bnb_functional.dequantize_4bit(packed, state)
    assert torch.equal(_bits_zero_unsigned(q.dequantize()), _bits_zero_unsigned(expected))


def test_double_quantization_follows_bitsandbytes_lookup_table():
    """The 8-bit constants go through bitsandbytes' table of 65,536 cells, which near a midpoint
    can pick the farther level: our codes equal its codes there, where the exact nearest level
    differs (so this test can tell the two apart)."""
    levels = nf4.dynamic_map()
    midpoints = (levels[:-1] + levels[1:]) / 2
    near = torch.stack([midpoints - 3e-6, midpoints + 3e-6, midpoints])  # 3 blocks of 255
    x = torch.cat([torch.ones(3, 1), near], dim=1)  # absmax 1 in each block: x · (1 / 1) = x
    x = torch.cat([x.reshape(-1), torch.zeros(256)])  # and an all-zero block
    expected, state = bnb_functional.quantize_blockwise(x, blocksize=256)
    ours = nf4.quantize_dynamic_8bit(x, blocksize=256)
    assert torch.equal(ours.codes, expected)
    assert torch.equal(_bits(ours.absmax), _bits(state.absmax))
    assert torch.equal(
        _bits(ours.dequantize()), _bits(bnb_functional.dequantize_blockwise(expected, state))
    )
    nearest = (x[:-256, None] - levels).abs().argmin(dim=1)
    assert int((nearest != ours.codes[:-256].long()).sum()) > 10
    assert bool((ours.codes[-256:] == 0).all()) and float(ours.absmax[-1]) == 0  # zero block


def test_nested_state_with_a_short_last_block_equals_bitsandbytes():
    """576 × 576 / 64 = 5184 constants: 20 blocks of 256 and one of 64."""
    w = _weights(576, 576, seed=3)
    packed, state = bnb_functional.quantize_4bit(
        w, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    q = nf4.nf4_quantize(w, double_quant=True)
    assert q.nested.codes.numel() == 5184 and q.nested.absmax.numel() == 21
    assert torch.equal(q.nested.codes, state.absmax)
    assert torch.equal(_bits(q.nested.absmax), _bits(state.state2.absmax))
    expected = bnb_functional.dequantize_4bit(packed, state)
    assert torch.equal(_bits_zero_unsigned(q.dequantize()), _bits_zero_unsigned(expected))


def test_nibble_order_first_value_high():
    """The first code of each pair in the high nibble: [-1, 1] → codes 0 and 15 → byte 0x0F."""
    q = nf4.nf4_quantize(torch.tensor([-1.0, 1.0]), blocksize=2)
    assert q.codes.tolist() == [0, 15]
    assert q.packed.tolist() == [0x0F]
    assert nf4.pack_4bit(torch.tensor([3, 10, 15, 0])).tolist() == [0x3A, 0xF0]


def test_input_is_left_untouched_and_shape_kept():
    w = _weights(8, 128)
    before = w.clone()
    q = nf4.nf4_quantize(w, double_quant=True)
    assert torch.equal(w, before)
    assert q.codes.shape == w.shape and q.dequantize().shape == w.shape
    assert nf4.nf4_dequantize(q).dtype == torch.float32
    assert torch.equal(nf4.nf4_dequantize(q), nf4.dequantize_4bit(q))
    assert nf4.fp4_quantize(w).quant_type == "fp4"


def test_quantize_model_replaces_every_decoder_linear(tiny_model):
    """Each decoder linear weight becomes its round trip (Conv1D seen as [out, in]); embeddings
    and norms stay; the input model is untouched."""
    before = copy.deepcopy(tiny_model.state_dict())
    quantized = nf4.quantize_model(tiny_model, blocksize=32, double_quant=True)
    for (name, layer), (_, original) in zip(
        linear_layers(quantized), linear_layers(tiny_model), strict=True
    ):
        expected = nf4.nf4_quantize(get_weight(original), blocksize=32, double_quant=True)
        assert torch.equal(get_weight(layer), expected.dequantize()), name
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    embedding = quantized.get_input_embeddings().weight
    assert torch.equal(embedding, tiny_model.get_input_embeddings().weight)
    with pytest.raises(ValueError, match=r"blocksize: expected a divisor"):
        nf4.quantize_model(tiny_model, blocksize=4096)
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        nf4.quantize_model("gpt2")


# ---------------------------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------------------------


def test_bits_per_weight_from_the_bytes():
    """QLoRA §3: 4 + 32/64 = 4.5 bits; with double quantization 4 + 8/64 + 32/(64·256) ≈ 4.127.
    Our byte count equals the bytes of bitsandbytes' own tensors."""
    w = torch.randn(1024, 4096)
    for double_quant, expected in [(False, 4.5), (True, 4 + 8 / 64 + 32 / (64 * 256))]:
        q = nf4.nf4_quantize(w, double_quant=double_quant)
        packed, state = bnb_functional.quantize_4bit(
            w, quant_type="nf4", compress_statistics=double_quant
        )
        theirs = packed.numel() + state.absmax.numel() * state.absmax.element_size()
        if double_quant:
            theirs += state.state2.absmax.numel() * 4 + state.offset.numel() * 4
        assert q.nbytes() == theirs
        assert q.bits_per_weight() == pytest.approx(expected, abs=1e-5)
    assert nf4.nf4_quantize(w, blocksize=128).bits_per_weight() == 4.25


def test_results_count_the_bytes_of_the_tensors_they_hold():
    from qlearn._quantized import Quantized

    w = torch.randn(64, 256)

    def size(t):
        return t.numel() * t.element_size()

    plain = nf4.nf4_quantize(w)
    assert isinstance(plain, Quantized)
    assert plain.nbytes() == size(plain.packed) + size(plain.absmax)
    double = nf4.nf4_quantize(w, double_quant=True)
    nested = double.nested
    assert isinstance(nested, Quantized)
    assert nested.nbytes() == size(nested.codes) + size(nested.absmax)
    assert nested.bits_per_weight() == 8 * nested.nbytes() / nested.codes.numel()
    assert double.nbytes() == size(double.packed) + nested.nbytes() + size(double.offset)


def test_quantize_model_in_place_equals_the_copy(tiny_model):
    copied = nf4.quantize_model(tiny_model, blocksize=32)
    same = nf4.quantize_model_(tiny_model, blocksize=32)
    assert same is tiny_model
    for (_, a), (_, b) in zip(linear_layers(copied), linear_layers(same), strict=True):
        assert torch.equal(get_weight(a), get_weight(b))


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(
        "float32", (4, 64), elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
    ),
    quant_type=st.sampled_from(nf4.QUANT_TYPES),
)
def test_round_trip_error_within_half_the_largest_gap(values, quant_type):
    """Each value lands on its nearest level: error ≤ ½ · largest gap between levels · absmax."""
    w = torch.from_numpy(values)
    q = nf4.quantize_4bit(w, quant_type=quant_type, blocksize=64)
    ordered = q.levels.sort().values
    half_gap = float(ordered.diff().max()) / 2
    absmax = w.abs().amax(dim=1, keepdim=True)
    error = (q.dequantize() - w).abs()
    assert bool((error <= absmax * (half_gap + 1e-6)).all())
    assert torch.equal(q.absmax, absmax.reshape(-1))
    assert bool((q.codes < 16).all())


@settings(max_examples=60, deadline=None)
@given(codes=arrays("uint8", st.integers(1, 100).map(lambda n: 2 * n), elements=st.integers(0, 15)))
def test_pack_unpack_round_trip(codes):
    codes = torch.from_numpy(codes)
    packed = nf4.pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == codes.numel() // 2
    assert torch.equal(nf4.unpack_4bit(packed), codes)


def test_nf4_beats_int4_and_fp4_on_normal_weights():
    """The chapter's claim: levels placed like the weights beat evenly spaced ones. On Gaussian
    weights in blocks of 64 (absmax each), NF4's error is below INT4 absmax's and FP4's."""
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0))
    errors = {
        "nf4": float((nf4.nf4_quantize(w).dequantize() - w).square().mean()),
        "fp4": float((nf4.fp4_quantize(w).dequantize() - w).square().mean()),
        "int4": float((absmax_quantize(w, bits=4, group_size=64).dequantize() - w).square().mean()),
    }
    assert errors["nf4"] < 0.9 * errors["int4"]
    assert errors["nf4"] < 0.9 * errors["fp4"]


# ---------------------------------------------------------------------------------------------
# Bad arguments: each error names the argument
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [nf4.nf4_quantize, nf4.fp4_quantize])
def test_quantizers_reject_bad_arguments(function):
    w = torch.randn(4, 96)
    for bad in (48, 100, 0, -64, 1):
        with pytest.raises(ValueError, match=r"blocksize: expected a power of two"):
            function(w, blocksize=bad)
    with pytest.raises(ValueError, match=r"blocksize: expected a divisor of the number of values"):
        function(w, blocksize=256)
    with pytest.raises(TypeError, match=r"blocksize: expected an int"):
        function(w, blocksize=64.0)
    with pytest.raises(TypeError, match=r"w: expected a floating-point tensor"):
        function(torch.ones(4, 64, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"w: expected a torch.Tensor"):
        function([[1.0] * 64])
    for bad in (float("nan"), float("inf"), -float("inf")):
        w_bad = torch.randn(2, 64)
        w_bad[1, 3] = bad
        with pytest.raises(ValueError, match=r"w: expected finite values"):
            function(w_bad)
    with pytest.raises(ValueError, match=r"w: expected a non-empty tensor"):
        function(torch.empty(0, 64))
    with pytest.raises(TypeError, match=r"double_quant: expected True or False"):
        function(w, blocksize=32, double_quant=1)


def test_other_functions_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"quant_type: expected one of 'nf4', 'fp4'"):
        nf4.quantize_4bit(torch.randn(64), quant_type="int4")
    with pytest.raises(ValueError, match=r"codes: expected values from 0 to 15"):
        nf4.pack_4bit(torch.tensor([0, 16]))
    with pytest.raises(ValueError, match=r"codes: expected an even number"):
        nf4.pack_4bit(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"codes: expected an integer tensor"):
        nf4.pack_4bit(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"packed: expected a uint8 tensor"):
        nf4.unpack_4bit(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"q: expected a Quantized4bit"):
        nf4.dequantize_4bit(torch.randn(64))
    with pytest.raises(ValueError, match=r"offset: expected a probability between 0.5 and 1"):
        nf4.nf4_levels(offset=0.4)
    with pytest.raises(ValueError, match=r"x: expected finite values"):
        nf4.quantize_dynamic_8bit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"blocksize: expected a power of two"):
        nf4.quantize_dynamic_8bit(torch.ones(10), blocksize=100)
