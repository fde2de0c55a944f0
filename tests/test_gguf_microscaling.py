"""GGUF's MXFP4 and NVFP4 (qlearn.gguf.microscaling) against llama.cpp's C and gguf-py.

Golden bytes: ``scripts/make_gguf_golden.py`` runs ggml's ``quantize_row_mxfp4_ref`` and
``quantize_row_nvfp4_ref`` (llama-cpp-python 0.3.36's vendored llama.cpp, compiled with plain
``gcc -O2``) on the 100 shared golden rows and on 118 rows of their own (``input_mx``: block
maxima at, just below and just above every power of two from 2⁻¹²⁰ to 2¹²⁰, E2M1 ties, and
sub-block maxima around every UE4M3 boundary). With the compiled library present, a further test
compares on fresh random rows.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf as gguf_py
import ml_dtypes
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from qlearn import gguf, mx
from qlearn.gguf import microscaling

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "gguf_golden" / "golden.npz"
C_LIBRARY = ROOT / "build" / "ggml_ref" / "libggml_ref.so"
TYPES = ["MXFP4", "NVFP4"]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def _undefined_in_c(x: np.ndarray, qtype: str) -> np.ndarray:
    """Blocks where ggml's MXFP4 converts a negative float to uint8_t (⌊log₂ max|x|⌋ < −125)."""
    if qtype != "MXFP4":
        return np.zeros(x.size // gguf.BLOCKS[qtype].block_size, dtype=bool)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        return (amax > 0) & (np.floor(np.log2(amax)) < -125)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows", ["input", "input_mx"])
def test_bytes_equal_llama_cpp(golden, qtype, rows):
    x = golden[rows]
    fmt = gguf.BLOCKS[qtype]
    ours = gguf.quantize(x, qtype).reshape(-1, fmt.type_size)
    key = f"bytes_{qtype}" if rows == "input" else f"bytes_mx_{qtype}"
    expected = golden[key].reshape(-1, fmt.type_size)
    undefined = _undefined_in_c(x, qtype)
    differ = (ours != expected).any(axis=1)
    assert not (differ & ~undefined).any(), f"blocks {np.flatnonzero(differ & ~undefined)[:10]}"
    assert len(ours) >= 400
    if rows == "input" and qtype == "MXFP4":
        assert undefined.sum() == 16  # the golden rows of 1e-40 (subnormal float32)
    assert np.all(ours[undefined, 0] == 0)  # where C is undefined: the spec's clamp, e = 0


@pytest.mark.skipif(
    not C_LIBRARY.exists(),
    reason="llama.cpp's C reference is not built: run scripts/make_gguf_golden.py --build-only",
)
@pytest.mark.parametrize("qtype", TYPES)
def test_bytes_equal_llama_cpp_on_fresh_inputs(qtype):
    lib = ctypes.CDLL(str(C_LIBRARY))
    fn = getattr(lib, f"quantize_row_{qtype.lower()}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    rng = np.random.default_rng()
    x = np.concatenate(
        [
            rng.standard_t(2, (200, 256)),
            np.exp(rng.uniform(-80, 80, (100, 256))) * rng.choice([-1, 1], (100, 256)),
            rng.integers(-12, 13, (100, 256)) * rng.choice([0.25, 0.5, 1 / 3], (100, 1)),
        ]
    ).astype(np.float32)
    fmt = gguf.BLOCKS[qtype]
    expected = np.zeros((x.shape[0], x.shape[1] // fmt.block_size * fmt.type_size), np.uint8)
    for row, out in zip(x, expected, strict=True):
        fn(row.ctypes.data, out.ctypes.data, row.size)
    assert np.array_equal(gguf.quantize(x, qtype), expected)


def test_mxfp4_bytes_equal_gguf_py(golden):
    x = np.concatenate([golden["input"], golden["input_mx"]])
    keep = ~_undefined_in_c(x, "MXFP4").reshape(len(x), -1).any(axis=1)  # gguf-py wraps there too
    with np.errstate(all="ignore"):
        theirs = gguf_py.quants.quantize(x[keep], GGMLQuantizationType.MXFP4)
    assert np.array_equal(gguf.quantize(x[keep], "MXFP4"), theirs.view(np.uint8))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_equals_gguf_py(golden, qtype):
    raw = gguf.quantize(golden["input_mx"], qtype)
    theirs = gguf_py.quants.dequantize(raw, GGMLQuantizationType[qtype]).astype(np.float32)
    assert np.array_equal(gguf.dequantize(raw, qtype).view(np.uint32), theirs.view(np.uint32))


def test_an_mxfp4_block_by_hand():
    """e = 127 + 0 (so d = 2^-1 on the doubled levels: X = 1), codes 0..15 then 15..0."""
    q = np.array(list(range(16)) + list(range(15, -1, -1)))
    raw = gguf.pack_block({"e": np.uint8(127), "q": q}, "MXFP4")
    assert raw.shape == (17,) and raw[0] == 127
    assert raw[1] == 0 | (15 << 4) and raw[16] == 15 | (0 << 4)  # code j | code j + 16 << 4
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    levels = e2m1 + [-v for v in e2m1]
    assert gguf.dequantize(raw, "MXFP4").tolist() == levels + levels[::-1]


def test_mxfp4_is_the_ocp_conversion_but_for_ties():
    """Same shared exponent as qlearn.mx's spec conversion; the same values, except where an
    element sits exactly halfway between two levels: ggml takes the first (smaller) one."""
    x = torch.randn(64, 256) * torch.logspace(-3, 3, 64)[:, None]
    x[0, 1:8] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    x[0, 0] = 4.0  # X = 1 for that block
    raw = gguf.quantize(x.numpy(), "MXFP4").reshape(-1, 17)
    spec = mx.mx_quantize(x, "fp4_e2m1")
    assert np.array_equal(raw[:, 0], spec.scale_codes.reshape(-1).numpy())
    ours = torch.from_numpy(gguf.dequantize(raw, "MXFP4").reshape(x.shape))
    differ = ours != spec.dequantize()
    assert differ[0, 1:8].tolist() == [False, True, False, True, False, True, False]
    assert ours[0, 1:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4]  # every tie to the smaller level
    assert differ.sum() == 3  # nowhere else on Gaussian rows


def test_ue4m3_is_e4m3_but_for_ties_and_its_two_edges():
    """ggml_fp32_to_ue4m3 against ml_dtypes' float8_e4m3fn (round half to even). The same code,
    except: exact ties round up (the mantissa's fourth bit is added); a value that rounds up
    into exponent 15 (from 248 on, where E4M3 would give 256) saturates to 448 (0x7E); a value
    just below 2⁻⁶ that rounds up to it stays at the largest subnormal 7 · 2⁻⁹ (code 7)."""
    x = np.float32(2.0) ** np.random.default_rng(0).uniform(-12, 10, 20000).astype(np.float32)
    ours = microscaling.fp32_to_ue4m3(x)
    theirs = np.minimum(x, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    saturated = x >= 248
    capped = (x < 2.0**-6) & (theirs == 8)
    assert saturated.sum() > 1000 and 10 < capped.sum() < 200
    assert np.all(ours[saturated] == 0x7E) and np.all(ours[capped] == 7)
    rest = ~saturated & ~capped
    assert np.array_equal(ours[rest], theirs[rest])
    tie = np.float32(1.0625)  # halfway between 1.0 and 1.125: even -> 1.0, ggml -> 1.125
    assert microscaling.fp32_to_ue4m3(tie) == 0x39
    assert tie.astype(ml_dtypes.float8_e4m3fn).view(np.uint8) == 0x38
    assert microscaling.ue4m3_to_fp32(np.uint8(0x39)) == np.float32(1.125 / 2)


def test_the_registry_and_files_take_the_new_types(tmp_path):
    assert {q: gguf.BLOCKS[q].bits_per_weight for q in TYPES} == {"MXFP4": 4.25, "NVFP4": 4.5}
    assert all(gguf.FALLBACK.get(q) is None for q in TYPES)
    w = torch.randn(8, 128)
    for qtype in TYPES:
        tensor = gguf.quantize_tensor(w.numpy(), qtype)
        assert tensor.bits_per_weight() == gguf.BLOCKS[qtype].bits_per_weight
    with pytest.raises(ValueError, match="64"):
        gguf.quantize(np.zeros((2, 96), np.float32), "NVFP4")
