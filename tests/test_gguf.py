"""Tests of qlearn.gguf: gguf-py's bytes (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, BF16) and floats (every
dequantize), llama.cpp's C bytes for the k-quants, the block fields, GGUF files, bad input.

How the golden bytes in ``tests/data/gguf_golden/golden.npz`` were made (no compiler needed
here): ``scripts/make_gguf_golden.py`` downloads the ``llama-cpp-python==0.3.36`` sdist from
PyPI, extracts ``ggml/src/ggml-quants.c`` and its headers, compiles them with a small shim with
plain ``gcc -O2 -DNDEBUG -fPIC -shared`` (no ``-march=native``: FMA contraction changes bytes)
into ``build/ggml_ref/libggml_ref.so``, and calls ``quantize_row_q{2,3,4,5,6}_K_ref`` (and the
legacy ``quantize_row_q*_{0,1}_ref``) through ctypes on 100 fixed rows of 256 floats: Gaussian at
four scales, Student t and Cauchy tails, log-uniform magnitudes over e^±20, zeros, constant
blocks and sub-blocks, sparse rows, an outlier per row, tiny (1e-30, subnormal) and huge (1e30)
values, values on coarse grids (ties everywhere) and rows of the default model's weights. The
inputs are stored with the bytes. When that library is present (run the script), an extra test
compares on fresh random inputs.
"""

from __future__ import annotations

import ctypes
import math
import struct
from pathlib import Path

import gguf as gguf_py
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qlearn import Quantized, gguf
from qlearn.gguf import _kquant_search as kq
from qlearn.gguf import files, formats, legacy

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "gguf_golden" / "golden.npz"
C_LIBRARY = ROOT / "build" / "ggml_ref" / "libggml_ref.so"
pytestmark = pytest.mark.filterwarnings("ignore:quantize. values up to:RuntimeWarning")

K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
ALL_TYPES = list(gguf.BLOCKS)
BLOCK_TYPES = LEGACY + K_QUANTS
MICROSCALING = ["MXFP4", "NVFP4"]  # tests/test_gguf_microscaling.py
IQUANTS = ["IQ4_NL", "IQ4_XS"]  # tests/test_gguf_iquants.py


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def _rows(kind: str, n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n_rows, n)
    if kind == "normal":
        x = rng.standard_normal(shape) * 0.05
    elif kind == "cauchy":
        x = rng.standard_cauchy(shape)
    elif kind == "magnitudes":
        x = np.exp(rng.uniform(-30, 30, shape)) * rng.choice([-1, 1], shape)
    elif kind == "grid":
        x = rng.integers(-8, 8, shape) * 0.125
    elif kind == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.1)
    else:  # constant rows, zeros among them
        x = np.repeat(rng.integers(-2, 3, (n_rows, 1)) * 0.75, n, axis=1)
    return x.astype(np.float32)


def _gguf_py_bytes(x: np.ndarray, qtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = gguf_py.quants.quantize(x, GGMLQuantizationType[qtype])
    return out.view(np.uint8).reshape(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# Bytes: gguf-py and llama.cpp
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_bytes_equal_llama_cpp(golden, qtype):
    assert str(golden["llama_cpp_python_version"]) == "0.3.36"
    ours = gguf.quantize(golden["input"], qtype)
    expected = golden[f"bytes_{qtype}"]
    assert ours.shape == expected.shape
    mismatched = np.flatnonzero((ours != expected).any(axis=1))
    assert mismatched.size == 0, f"rows {mismatched[:10]} differ from llama.cpp"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_bytes_do_not_depend_on_chunks_or_threads(golden, qtype, threads):
    x = np.tile(golden["input"], (6, 1))  # 600 super-blocks: two chunks of 512
    expected = np.tile(golden[f"bytes_{qtype}"], (6, 1))
    assert np.array_equal(gguf.quantize(x, qtype, threads=threads), expected)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", *LEGACY])
@pytest.mark.parametrize("kind", ["normal", "cauchy", "magnitudes", "grid", "sparse", "const"])
def test_legacy_bytes_equal_gguf_py(qtype, kind):
    x = _rows(kind, 24, 512, seed=len(kind))
    assert np.array_equal(gguf.quantize(x, qtype), _gguf_py_bytes(x, qtype))


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_bytes_equal_gguf_py_on_the_golden_rows(golden, qtype):
    assert np.array_equal(
        gguf.quantize(golden["input"], qtype), _gguf_py_bytes(golden["input"], qtype)
    )


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_bytes_equal_llama_cpp_but_for_the_sign_of_a_zero_scale(golden, qtype):
    """gguf-py (and so qlearn) equals ggml's C but for the sign of a zero d or m: where the
    block is all ±0 (or its min is ±0), C's running max/min starts from +0.0 or the first
    value, gguf-py's reductions pick another zero; the fp16 bytes then read 0x0000 vs 0x8000."""
    fmt = gguf.BLOCKS[qtype]
    ours = gguf.quantize(golden["input"], qtype).reshape(-1, fmt.type_size)
    theirs = golden[f"bytes_{qtype}"].reshape(-1, fmt.type_size)
    xor = ours ^ theirs
    sign_bits = np.zeros(fmt.type_size, dtype=np.uint8)
    offsets = [0, 2] if qtype in ("Q4_1", "Q5_1") else [0]  # d (and m), fp16 little-endian
    sign_bits[[o + 1 for o in offsets]] = 0x80
    assert np.all((xor & ~sign_bits) == 0)
    for o in offsets:
        flipped = xor[:, o + 1] == 0x80
        assert np.all(ours[flipped, o] == 0) and np.all(ours[flipped, o + 1] & 0x7F == 0)
    n_blocks = xor.any(axis=1).sum()  # Q8_0's d = max|x| / 127 is +0 for both
    assert n_blocks == 0 if qtype == "Q8_0" else 0 < n_blocks < 10


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        (3, 64),
        elements=st.floats(-1e30, 1e30).map(np.float32),
    ),
    st.sampled_from(LEGACY),
)
def test_legacy_bytes_equal_gguf_py_on_any_finite_input(x, qtype):
    assert np.array_equal(gguf.quantize(x, qtype), _gguf_py_bytes(x, qtype))


@pytest.mark.skipif(
    not C_LIBRARY.exists(),
    reason="llama.cpp's C reference is not built: run scripts/make_gguf_golden.py --build-only",
)
@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_bytes_equal_llama_cpp_on_fresh_inputs(qtype):
    lib = ctypes.CDLL(str(C_LIBRARY))
    fn = getattr(lib, f"quantize_row_{qtype[:2].lower()}_K_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    rng = np.random.default_rng()
    x = np.concatenate(
        [
            rng.standard_t(2, (200, 256)),
            np.exp(rng.uniform(-40, 40, (100, 256))) * rng.choice([-1, 1], (100, 256)),
            rng.integers(-4, 4, (100, 256)) * rng.choice([0.5, 0.1, 1 / 3], (100, 1)),
        ]
    ).astype(np.float32)
    expected = np.zeros((x.shape[0], gguf.BLOCKS[qtype].type_size), dtype=np.uint8)
    fn(x.ctypes.data, expected.ctypes.data, x.size)
    assert np.array_equal(gguf.quantize(x, qtype), expected)


# ---------------------------------------------------------------------------------------------
# Floats: gguf-py's dequantize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_equals_gguf_py_on_any_bytes(qtype):
    """Random bytes: every scale bit pattern (NaN, Inf, subnormal) and every code."""
    fmt = gguf.BLOCKS[qtype]
    raw = np.random.default_rng(1).integers(0, 256, (64, 8 * fmt.type_size), dtype=np.uint8)
    ours = gguf.dequantize(raw, qtype)
    with np.errstate(all="ignore"):
        theirs = gguf_py.quants.dequantize(raw, GGMLQuantizationType[qtype]).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_blocks_dequantize_through_gguf_py(golden, qtype):
    raw = gguf.quantize(golden["input"], qtype)
    with np.errstate(all="ignore"):
        theirs = gguf_py.quants.dequantize(raw, GGMLQuantizationType[qtype])
    assert np.array_equal(gguf.dequantize(raw, qtype).view(np.uint32), theirs.view(np.uint32))


def test_dequantize_takes_a_flat_buffer_with_a_shape():
    x = _rows("normal", 4, 512)
    raw = gguf.quantize(x, "Q4_K")
    flat = raw.tobytes()
    assert np.array_equal(
        gguf.dequantize(flat, "Q4_K", shape=(4, 512)), gguf.dequantize(raw, "Q4_K")
    )


# ---------------------------------------------------------------------------------------------
# Block formats and fields
# ---------------------------------------------------------------------------------------------


def test_block_sizes_equal_ggml_and_bits_per_weight_match_the_course():
    for name, fmt in gguf.BLOCKS.items():
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    bpw = {name: fmt.bits_per_weight for name, fmt in gguf.BLOCKS.items()}
    assert bpw == {
        "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5,
        "Q5_1": 6.0, "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625,
        "MXFP4": 4.25, "NVFP4": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25,
    }  # fmt: skip


def _value_loop(f: dict, qtype: str) -> list[float]:
    """One block's values from its fields, element by element, as ggml's dequantize_row_*
    (the formulas the docstring of unpack_block states), in float64."""
    d = float(f["d"])
    out = []
    for i in range(gguf.BLOCKS[qtype].block_size):
        q = int(f["q"][i])
        if qtype == "Q8_0":
            out.append(d * q)
        elif qtype in ("Q4_0", "Q5_0"):
            out.append(d * (q - (8 if qtype == "Q4_0" else 16)))
        elif qtype in ("Q4_1", "Q5_1"):
            out.append(d * q + float(f["m"]))
        elif qtype == "Q2_K":
            j = i // 16
            out.append(d * int(f["scales"][j]) * q - float(f["dmin"]) * int(f["mins"][j]))
        elif qtype in ("Q4_K", "Q5_K"):
            j = i // 32
            out.append(d * int(f["scales"][j]) * q - float(f["dmin"]) * int(f["mins"][j]))
        else:  # Q3_K, Q6_K: signed codes, signed scales
            out.append(d * int(f["scales"][i // 16]) * q)
    return out


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_unpack_block_fields_give_gguf_py_values(qtype):
    fmt = gguf.BLOCKS[qtype]
    x = _rows("normal", 1, fmt.block_size * 3, seed=3)
    raw = gguf.quantize(x, qtype).reshape(-1, fmt.type_size)
    theirs = gguf_py.quants.dequantize(raw, GGMLQuantizationType[qtype])
    for block, values in zip(raw, theirs, strict=True):
        fields = gguf.unpack_block(block, qtype)
        assert set(fields) == set(fmt.fields)
        np.testing.assert_allclose(_value_loop(fields, qtype), values, rtol=1e-6, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(BLOCK_TYPES + IQUANTS + MICROSCALING), st.data())
def test_pack_block_inverts_unpack_block_on_any_bytes(qtype, data):
    size = gguf.BLOCKS[qtype].type_size
    raw = np.frombuffer(data.draw(st.binary(min_size=size, max_size=size)), dtype=np.uint8)
    assert np.array_equal(gguf.pack_block(gguf.unpack_block(raw, qtype), qtype), raw)


def test_a_q4_k_block_by_hand():
    """Fields set by hand: one sub-block of codes 0..15 at scale 2, min 1, under d = 0.5,
    dmin = 0.25 → values 0.5·2·q − 0.25·1."""
    fields = {
        "d": np.float16(0.5),
        "dmin": np.float16(0.25),
        "scales": np.array([2] + [0] * 7),
        "mins": np.array([1] + [0] * 7),
        "q": np.array(list(range(16)) * 2 + [0] * 224),
    }
    raw = gguf.pack_block(fields, "Q4_K")
    assert raw.shape == (144,) and raw.dtype == np.uint8
    assert raw[:4].tobytes() == struct.pack("<ee", 0.5, 0.25)
    assert raw[4] == 2 and raw[8] == 1  # scale 0 in byte 4, min 0 in byte 8 (low 6 bits)
    assert raw[16] == 0 | (0 << 4) and raw[17] == 1  # code 0 | code 32 << 4, code 1 | code 33 << 4
    values = gguf.dequantize(raw, "Q4_K")
    assert np.array_equal(values[:32], np.array(list(range(16)) * 2, dtype=np.float32) - 0.25)
    assert np.all(values[32:] == 0)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q2_K"])
def test_stored_sub_block_scales_round_the_searched_ones(qtype):
    """d·scale (and dmin·min) is the searched scale rounded to a multiple of d: within half a
    step, plus what the fp16 rounding of d moves the largest code (63 or 15 steps)."""
    x = _rows("normal", 8, 512, seed=5)
    search = gguf.sub_block_scales(x, qtype)
    raw = gguf.quantize(x, qtype).reshape(-1, gguf.BLOCKS[qtype].type_size)
    top = 15 if qtype == "Q2_K" else 63
    for field, scale in (("scales", "d"), ("mins", "dmin")):
        searched = search[field].reshape(len(raw), -1)
        for block, wanted in zip(raw, searched, strict=True):
            f = gguf.unpack_block(block, qtype)
            step = float(f[scale])
            stored = step * f[field].astype(np.float64)
            assert np.all(np.abs(stored - wanted) <= step * (0.5 + top * 2.0**-11) + 1e-12)


def test_the_registry_holds_every_type_and_each_layout_sums_to_its_type_size():
    assert list(gguf.BLOCKS) == ["F32", "F16", "BF16", *IQUANTS, *LEGACY, *K_QUANTS, *MICROSCALING]
    for name, fmt in gguf.BLOCKS.items():
        assert issubclass(fmt, gguf.BlockFormat) and fmt.name == name
        assert sum(size for _, size in fmt.layout) == fmt.type_size
        assert fmt.fields == tuple(spec.name for spec in fmt.field_specs)
    assert list(gguf.LAYOUTS) == IQUANTS + BLOCK_TYPES + MICROSCALING  # block types only
    assert dict(gguf.FALLBACK) == {
        "IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1",
        "Q6_K": "Q8_0",
    }  # fmt: skip
    for qtype in IQUANTS + BLOCK_TYPES + MICROSCALING:  # every field's shape is what unpack gives
        fmt = gguf.BLOCKS[qtype]
        fields = fmt.unpack(np.zeros((3, fmt.type_size), dtype=np.uint8))
        assert list(fields) == list(fmt.fields)
        for spec in fmt.field_specs:
            assert fields[spec.name].shape == (3, *spec.shape)
            assert fields[spec.name].dtype == spec.dtype


def test_a_new_format_is_one_class_that_registers_itself():
    class Q40Test(gguf.BLOCKS["Q4_0"], name="Q4_0_TEST"):  # Q4_0's codec, another name
        fallback = "Q8_0"

    try:
        assert gguf.BLOCKS["Q4_0_TEST"] is Q40Test
        assert gguf.LAYOUTS["Q4_0_TEST"] == gguf.LAYOUTS["Q4_0"]
        assert gguf.FALLBACK["Q4_0_TEST"] == "Q8_0"
        x = _rows("normal", 2, 64)
        assert np.array_equal(gguf.quantize(x, "Q4_0_TEST"), gguf.quantize(x, "Q4_0"))
        assert gguf.fallback_type("Q4_0_TEST", 48) == "F16"
        with pytest.raises(ValueError, match="already registered"):

            class Again(gguf.BlockFormat, name="Q4_0_TEST"):
                block_size, layout = 32, (("d", 2), ("qs", 16))

    finally:
        del formats._REGISTRY["Q4_0_TEST"]
    assert "Q4_0_TEST" not in gguf.BLOCKS
    with pytest.raises(TypeError, match="used as a class"):
        gguf.BLOCKS["Q4_0"]()


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_gguf_tensor_counts_the_bytes_it_stores(qtype):
    x = torch.from_numpy(_rows("normal", 6, 512, seed=7))
    t = gguf.quantize_tensor(x, qtype)
    assert isinstance(t, Quantized)
    raw = gguf.quantize(x, qtype)
    assert np.array_equal(t.raw, raw) and t.shape == (6, 512) and t.qtype == qtype
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    assert t.nbytes() == raw.nbytes == gguf.tensor_bytes((6, 512), qtype)
    assert t.nbytes() == 6 * 512 // block_size * type_size
    assert t.bits_per_weight() == 8 * raw.nbytes / x.numel() == gguf.BLOCKS[qtype].bits_per_weight
    values = t.dequantize()
    assert isinstance(values, torch.Tensor) and values.dtype == torch.float32
    assert np.array_equal(values.numpy(), gguf.dequantize(raw, qtype))


def test_nearest_int_is_c_bit_trick():
    """ggml's nearest_int, ported with struct (float32 add, reinterpret the bits)."""

    def c_nearest_int(v: float) -> int:
        val = struct.unpack("<f", struct.pack("<f", v))[0] + 12582912.0
        val = struct.unpack("<f", struct.pack("<f", val))[0]  # the float32 sum
        i = struct.unpack("<i", struct.pack("<f", val))[0]
        return (i & 0x007FFFFF) - 0x00400000

    values = np.array(
        [0.5, 1.5, 2.5, -0.5, -1.5, 3.4999998, 4194303.5, 4194304.0, 9e6, -9e6, 1e30, -3.7, 0.0],
        dtype=np.float32,
    )
    assert kq.nearest_int(values).tolist() == [c_nearest_int(float(v)) for v in values]
    assert kq.nearest_int(values[:6]).tolist() == [0, 2, 2, 0, -2, 3]  # half to even


@pytest.mark.parametrize("n_columns", [1, 2, 3, 1000])
def test_sequential_sum_adds_left_to_right(n_columns):
    rng = np.random.default_rng(n_columns)
    a = (rng.standard_normal((32, n_columns)) * np.exp(rng.uniform(-8, 8, (32, 1)))).astype(
        np.float32
    )
    expected = a[0].copy()
    for row in a[1:]:
        expected = (expected + row).astype(np.float32)
    assert np.array_equal(kq.sequential_sum(a), expected)


def test_round_half_away_trick_equals_roundf_near_every_half():
    """Q8_0's rounding: trunc(v + sign(v)·(0.5 − 2⁻²⁵)) against gguf-py's np_roundf on every
    float32 in [0.25, 2) and within 64 ulps of every half-integer up to 128."""
    bits = np.arange(0x3E800000, 0x40000000, dtype=np.uint32)
    halves = np.arange(0.5, 128.0, 1.0, dtype=np.float32).view(np.uint32)
    near = (halves[:, None] + np.arange(-64, 65, dtype=np.int64)).astype(np.uint32).ravel()
    v = np.concatenate([bits, near]).view(np.float32)
    v = np.concatenate([v, -v])
    t = torch.from_numpy(v)
    ours = (t + legacy._BELOW_HALF * torch.sign(t)).to(torch.int32).numpy()
    assert np.array_equal(ours, gguf_py.quants.np_roundf(v).astype(np.int32))


# ---------------------------------------------------------------------------------------------
# Recipes and fallbacks
# ---------------------------------------------------------------------------------------------


def test_fallback_types_are_llama_cpps():
    """llama.cpp's tensor_type_fallback (src/llama-quant.cpp, llama-cpp-python 0.3.36)."""
    assert [gguf.fallback_type(t, 576) for t in K_QUANTS] == [
        "Q4_0", "Q4_0", "Q5_0", "Q5_1", "Q8_0"
    ]  # fmt: skip
    assert [gguf.fallback_type(t, 1536) for t in K_QUANTS] == K_QUANTS
    assert gguf.fallback_type("Q4_0", 48) == "F16"
    assert gguf.fallback_type("Q4_K", 48) == "F16"
    assert gguf.fallback_type("F32", 7) == "F32"


def _llama(hidden: int, layers: int = 8):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def test_q4_k_m_recipe_follows_llama_cpp():
    """llama_tensor_get_type for Q4_K_M: Q4_K, Q6_K for attn_v and ffn_down where
    use_more_bits(i, 8) (layers 0, 4, 7), Q6_K → Q8_0 for the tied embedding when its rows do
    not fit 256, norms F32. use_more_bits(i, 8): i < 1, i >= 7 or (i − 1) % 3 == 2."""
    types = gguf.recipe_types(_llama(256), "Q4_K_M")
    more = {0, 3, 6, 7}
    for i in range(8):
        for kind in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert types[f"blk.{i}.{kind}.weight"] == "Q4_K"
        for kind in ("attn_v", "ffn_down"):
            assert types[f"blk.{i}.{kind}.weight"] == ("Q6_K" if i in more else "Q4_K")
        assert types[f"blk.{i}.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "Q6_K"
    assert "output.weight" not in types  # tied: one tensor, as llama.cpp writes it
    small = gguf.recipe_types(_llama(64), "Q4_K_M")
    assert small["blk.0.attn_q.weight"] == "Q5_0"  # 64 is no multiple of 256
    assert small["blk.0.ffn_down.weight"] == "Q8_0"  # Q6_K → Q8_0 (rows of 128)
    assert small["token_embd.weight"] == "Q8_0"


def test_recipe_mapping_and_single_types():
    model = _llama(256, layers=2)
    only_down = gguf.recipe_types(model, {"ffn_down": "Q3_K"})
    assert only_down["blk.1.ffn_down.weight"] == "Q3_K"
    assert only_down["blk.1.attn_q.weight"] == "F32"
    assert only_down["token_embd.weight"] == "F32"
    q8 = gguf.recipe_types(model, "Q8_0")
    assert set(q8.values()) == {"Q8_0", "F32"}


def test_quantize_model_equals_quantizing_each_weight(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    out = gguf.quantize_model(tiny_llama, "Q4_0")
    for name, tensor in tiny_llama.state_dict().items():
        assert torch.equal(tensor, before[name])  # the input is untouched
    weight = tiny_llama.model.layers[1].mlp.down_proj.weight.detach().numpy()
    expected = gguf.dequantize(gguf.quantize(weight, "Q4_0"), "Q4_0")
    assert np.array_equal(out.model.layers[1].mlp.down_proj.weight.detach().numpy(), expected)
    assert torch.equal(out.model.embed_tokens.weight, tiny_llama.model.embed_tokens.weight)


def test_quantize_tensors_are_what_quantize_model_writes(tiny_llama):
    from qlearn.models import get_weight, linear_layers

    tensors = gguf.quantize_tensors(tiny_llama, "Q4_K_M")
    assert list(tensors) == [name for name, _ in linear_layers(tiny_llama)]
    types = gguf.recipe_types(tiny_llama, "Q4_K_M")
    out = gguf.quantize_model(tiny_llama, "Q4_K_M")
    layers = dict(linear_layers(out))
    total = 0
    for name, layer in linear_layers(tiny_llama):
        t = tensors[name]
        weight = get_weight(layer).detach().numpy()
        assert t.qtype in types.values() and t.shape == weight.shape
        assert np.array_equal(t.raw, gguf.quantize(weight, t.qtype))
        assert torch.equal(t.dequantize(), get_weight(layers[name]).detach())
        total += gguf.tensor_bytes(weight.shape, t.qtype)
    assert sum(t.nbytes() for t in tensors.values()) == total


# ---------------------------------------------------------------------------------------------
# GGUF files
# ---------------------------------------------------------------------------------------------


def _tiny_source(path: Path, model) -> Path:
    """A GGUF 'source' for a small random Llama: hyper-parameters written here, the default
    model's tokenizer, zero tensors (save_gguf takes only names and shapes from them)."""
    from qlearn.models import default_gguf_path

    config = model.config
    reader = GGUFReader(default_gguf_path())
    writer = GGUFWriter(path, "llama")
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    for name, (_, tensor) in files._gguf_tensors(model).items():
        writer.add_tensor(name, np.zeros(tuple(tensor.shape), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def vocab_llama():
    """A 2-layer random Llama with the default model's vocabulary (so its tokenizer loads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256,
        tie_word_embeddings=True, rope_theta=10000.0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.mark.slow
def test_saved_f32_file_reloads_to_the_same_logits(vocab_llama, tmp_path):
    """save_gguf → transformers' GGUF loader gives the model back bit for bit: llama.cpp's
    names, the attn_q/attn_k permutation that transformers undoes, tied embeddings."""
    source = _tiny_source(tmp_path / "source.gguf", vocab_llama)
    path = gguf.save_gguf(tmp_path / "f32.gguf", vocab_llama, "F32", source=source)
    ids = torch.tensor([[1, 500, 2000, 33, 7000, 12, 9]])
    loaded, tokenizer = gguf.load_gguf(path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, vocab_llama(ids).logits)
    assert tokenizer("Pride")["input_ids"]  # the tokenizer came along


@pytest.mark.slow
def test_saved_k_quant_file_holds_quantize_models_weights(vocab_llama, tmp_path):
    recipe = {"default": "Q4_K", "attn_v": "Q6_K", "token_embd": "Q8_0"}
    source = _tiny_source(tmp_path / "source.gguf", vocab_llama)
    path = gguf.save_gguf(tmp_path / "mix.gguf", vocab_llama, recipe, source=source)
    reader = GGUFReader(path)
    types = gguf.recipe_types(vocab_llama, recipe)
    assert {t.name: t.tensor_type.name for t in reader.tensors} == types
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    expected = gguf.quantize_model(vocab_llama, recipe).state_dict()
    hf = {name: hf for name, (hf, _) in files._gguf_tensors(vocab_llama).items()}
    n_heads = {"attn_q": 4, "attn_k": 2}
    for tensor in reader.tensors:
        values = gguf_py.quants.dequantize(tensor.data, tensor.tensor_type)
        kind = tensor.name.split(".")[2] if tensor.name.startswith("blk") else ""
        if kind in n_heads:  # transformers' reverse permutation, as its loader applies it
            n = n_heads[kind]
            values = values.reshape(n, values.shape[0] // n // 2, 2, -1).swapaxes(2, 1)
            values = values.reshape(-1, tensor.shape[0])
        if tensor.name != "token_embd.weight":
            assert np.array_equal(values, expected[hf[tensor.name]].numpy()), tensor.name


def test_default_models_q4_1_blocks_come_back_byte_for_byte():
    """Re-quantizing the default model's dequantized Q4_1 weights as Q4_1 gives its bytes."""
    from qlearn.models import default_gguf_path

    reader = GGUFReader(default_gguf_path())
    for tensor in reader.tensors[:12]:
        if tensor.tensor_type.name in ("Q4_1", "Q8_0"):
            qtype = tensor.tensor_type.name
            raw = np.asarray(tensor.data)
            assert np.array_equal(gguf.quantize(gguf.dequantize(raw, qtype), qtype), raw)


@pytest.mark.slow
def test_saved_default_model_keeps_llama_cpps_metadata(default_model, tmp_path):
    model, _ = default_model
    path = gguf.save_gguf(tmp_path / "q8.gguf", model, "Q8_0")
    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 3
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 49152
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    assert sizes["blk.0.ffn_down.weight"] == gguf.tensor_bytes((576, 1536), "Q8_0")
    assert path.stat().st_size > sum(sizes.values())


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_quantize_rejects_bad_input():
    x = np.ones((2, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of Q4_K's block"):
        gguf.quantize(x, "Q4_K")
    with pytest.raises(ValueError, match="qtype: expected one of"):
        gguf.quantize(x, "Q7_0")
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[1, 3] = bad
        with pytest.raises(ValueError, match="expected finite values"):
            gguf.quantize(y, "Q8_0")
    with pytest.raises(ValueError, match="expected finite values"):
        gguf.quantize(np.full((1, 32), 1e300), "Q8_0")  # overflows float32
    with pytest.raises(TypeError, match="floating-point"):
        gguf.quantize(np.ones((1, 32), dtype=np.int32), "Q8_0")
    with pytest.raises(TypeError, match="numpy array"):
        gguf.quantize([1.0] * 32, "Q8_0")
    with pytest.raises(ValueError, match="non-empty"):
        gguf.quantize(np.ones((0, 32), dtype=np.float32), "Q8_0")
    with pytest.raises(ValueError, match="threads: expected at least 1"):
        gguf.quantize(x, "Q8_0", threads=0)


def test_quantize_takes_torch_tensors():
    x = torch.randn(3, 256)
    assert np.array_equal(gguf.quantize(x, "Q6_K"), gguf.quantize(x.numpy(), "Q6_K"))


def test_dequantize_rejects_bad_bytes():
    raw = gguf.quantize(np.ones((2, 256), dtype=np.float32), "Q4_K")
    with pytest.raises(ValueError, match="multiple of Q4_K's 144 bytes"):
        gguf.dequantize(raw[:, :-1], "Q4_K")
    with pytest.raises(ValueError, match="expected 288 bytes"):
        gguf.dequantize(raw.ravel()[:-5], "Q4_K", shape=(2, 256))
    with pytest.raises(TypeError, match="uint8"):
        gguf.dequantize(raw.astype(np.int16), "Q4_K")
    with pytest.raises(ValueError, match="shape: expected a tuple"):
        gguf.dequantize(raw, "Q4_K", shape=(2, -256))
    with pytest.raises(ValueError, match="qtype"):
        gguf.dequantize(raw, "Q4_KM")


def test_block_helpers_reject_bad_input():
    raw = gguf.quantize(np.ones(32, dtype=np.float32), "Q4_0")
    with pytest.raises(ValueError, match="raw: expected 18 bytes for Q4_0"):
        gguf.unpack_block(raw[:-1], "Q4_0")
    with pytest.raises(ValueError, match="qtype"):
        gguf.unpack_block(raw, "F32")  # not a block type
    fields = gguf.unpack_block(raw, "Q4_0")
    with pytest.raises(ValueError, match=r"fields\['q'\]: expected integers from 0 to 15"):
        gguf.pack_block({**fields, "q": np.full(32, 16)}, "Q4_0")
    with pytest.raises(ValueError, match="expected exactly"):
        gguf.pack_block({"d": fields["d"]}, "Q4_0")
    with pytest.raises(ValueError, match="expected shape"):
        gguf.pack_block({**fields, "q": np.zeros(31, dtype=int)}, "Q4_0")
    with pytest.raises(ValueError, match="row_length: expected at least 1"):
        gguf.fallback_type("Q4_K", 0)
    with pytest.raises(ValueError, match="shape"):
        gguf.tensor_bytes((10, 100), "Q4_K")


def test_recipes_reject_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="recipe: expected one of"):
        gguf.recipe_types(tiny_llama, "Q4_K_L")
    with pytest.raises(ValueError, match=r"recipe\['ffn_down'\]"):
        gguf.recipe_types(tiny_llama, {"ffn_down": "Q9"})
    with pytest.raises(TypeError, match="recipe"):
        gguf.recipe_types(tiny_llama, 4)
    with pytest.raises(TypeError, match="model"):
        gguf.recipe_types(torch.nn.Linear(4, 4), "Q8_0")


def _small_gguf(path: Path) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("a", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_load_gguf_rejects_corrupt_files(tmp_path):
    good = _small_gguf(tmp_path / "good.gguf")
    files._open_gguf(good, "path")  # a whole file passes the checks
    bad_magic = tmp_path / "magic.gguf"
    bad_magic.write_bytes(b"GGML" + good.read_bytes()[4:])
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf.load_gguf(bad_magic)
    truncated = tmp_path / "short.gguf"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        gguf.load_gguf(truncated)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(good.read_bytes()[:30])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        gguf.load_gguf(header_only)
    with pytest.raises(FileNotFoundError, match="no file"):
        gguf.load_gguf(tmp_path / "missing.gguf")


def test_save_gguf_rejects_bad_input(tiny_llama, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf.save_gguf(tmp_path / "no" / "m.gguf", tiny_llama, "Q8_0")
    source = _small_gguf(tmp_path / "other.gguf")
    with pytest.raises(ValueError, match="do not match"):
        gguf.save_gguf(tmp_path / "m.gguf", tiny_llama, "Q8_0", source=source)
    with pytest.raises(ValueError, match="recipe"):
        gguf.save_gguf(tmp_path / "m.gguf", tiny_llama, "Q1", source=source)


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_no_silent_nans(qtype):
    """Zero and constant rows come back finite; values too large for an fp16 scale give the
    C reference's bytes (inf scales) and a warning, not silence."""
    x = np.concatenate([np.zeros((1, 256)), np.full((1, 256), 3.0)]).astype(np.float32)
    values = gguf.dequantize(gguf.quantize(x, qtype), qtype)
    assert np.array_equal(values[0], np.zeros(256))
    assert math.isclose(values[1].mean(), 3.0, rel_tol=0.02)
    with pytest.warns(RuntimeWarning, match="overflow .* scales"):
        gguf.quantize(np.full((1, 256), 1e30, dtype=np.float32), qtype)
