"""GGUF's IQ4_NL and IQ4_XS (qlearn.gguf.iquants), the importance matrix (qlearn.gguf.imatrix)
and the k-quants' importance path (Q4_K, Q5_K) against llama.cpp's C and gguf-py.

Golden bytes: ``scripts/make_gguf_golden.py`` calls ggml's ``quantize_iq4_nl`` and
``quantize_iq4_xs`` (what ``llama-quantize`` calls, 7 scale tries per block) on the 100 shared
golden rows, once without an importance matrix and once with the stored ``imatrix`` (one value
per column: log-normal, six columns 100 times larger, four zeros), and ``quantize_q2_K`` …
``quantize_q6_K`` with the same importance. With the compiled library
present, a further test compares on fresh random rows and importance.
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import gguf as gguf_py
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from qlearn import gguf, models
from qlearn.gguf import iquants

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "gguf_golden" / "golden.npz"
C_LIBRARY = ROOT / "build" / "ggml_ref" / "libggml_ref.so"
TYPES = ["IQ4_NL", "IQ4_XS"]
pytestmark = pytest.mark.filterwarnings("ignore:quantize. values up to:RuntimeWarning")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_bytes_equal_llama_cpp(golden, qtype, with_imatrix):
    importance = golden["imatrix"] if with_imatrix else None
    ours = gguf.quantize(golden["input"], qtype, imatrix=importance)
    expected = golden[f"bytes_imatrix_{qtype}" if with_imatrix else f"bytes_{qtype}"]
    differ = np.flatnonzero((ours != expected).any(axis=1))
    assert ours.shape == expected.shape and differ.size == 0, f"rows {differ[:10]}"


WITH_IMPORTANCE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("qtype", WITH_IMPORTANCE)
def test_legacy_and_k_quant_bytes_with_importance_equal_llama_cpp(golden, qtype):
    """``quantize_q4_0`` … ``quantize_q6_K`` with ``quant_weights``: the importance paths
    (``make_qx_quants`` with weights, ``make_qkx3_quants``, ``make_qp_quants``), not the
    ``_ref`` ones."""
    ours = gguf.quantize(golden["input"], qtype, imatrix=golden["imatrix"])
    expected = golden[f"bytes_imatrix_{qtype}"]
    differ = np.flatnonzero((ours != expected).any(axis=1))
    assert differ.size == 0, f"rows {differ[:10]}"
    assert not np.array_equal(ours, gguf.quantize(golden["input"], qtype))


def test_the_importance_matrix_changes_the_bytes(golden):
    for qtype in TYPES:
        plain = gguf.quantize(golden["input"], qtype)
        weighted = gguf.quantize(golden["input"], qtype, imatrix=golden["imatrix"])
        assert (plain != weighted).any(axis=1).mean() > 0.5


@pytest.mark.skipif(
    not C_LIBRARY.exists(),
    reason="llama.cpp's C reference is not built: run scripts/make_gguf_golden.py --build-only",
)
@pytest.mark.parametrize("qtype", [*TYPES, *WITH_IMPORTANCE])
def test_bytes_equal_llama_cpp_on_fresh_inputs(qtype):
    lib = ctypes.CDLL(str(C_LIBRARY))
    fn = getattr(
        lib, "quantize_" + (qtype[:2].lower() + "_K" if qtype.endswith("_K") else qtype.lower())
    )
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    rng = np.random.default_rng()
    x = np.concatenate(
        [rng.standard_t(2, (100, 512)), rng.integers(-8, 8, (50, 512)) * 0.125]
    ).astype(np.float32)
    importance = np.exp(rng.normal(0, 2, 512)).astype(np.float32)
    fmt = gguf.BLOCKS[qtype]
    for imatrix in (None, importance):
        expected = np.zeros((x.shape[0], 512 // fmt.block_size * fmt.type_size), np.uint8)
        fn(x.ctypes.data, expected.ctypes.data, x.shape[0], 512,
           None if imatrix is None else imatrix.ctypes.data)  # fmt: skip
        assert np.array_equal(gguf.quantize(x, qtype, imatrix=imatrix), expected)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_equals_gguf_py(golden, qtype):
    raw = gguf.quantize(golden["input"][:60], qtype, imatrix=golden["imatrix"])
    theirs = gguf_py.quants.dequantize(raw, GGMLQuantizationType[qtype]).astype(np.float32)
    assert np.array_equal(gguf.dequantize(raw, qtype).view(np.uint32), theirs.view(np.uint32))


def _best_index_int8(x: float) -> int:
    """ggml's ``best_index_int8(16, kvalues_iq4nl, x)`` written out: a binary search, then the
    nearer of the two levels around x, the upper one on a tie (differences in float32)."""
    levels = [int(v) for v in iquants.KVALUES_IQ4NL]
    x = np.float32(x)
    if x <= levels[0]:  # (a NaN fails every comparison: level 15)
        return 0
    if x >= levels[-1]:
        return 15
    low, high = 0, 15
    while high - low > 1:
        middle = (low + high) // 2
        if x < levels[middle]:
            high = middle
        else:
            low = middle
    return high - 1 if x - np.float32(levels[high - 1]) < np.float32(levels[high]) - x else high


def test_nearest_level_equals_ggml_binary_search():
    """The look-up by ⌊2x⌋ decides as C's search does on every midpoint, the floats on either
    side of it and of every level, signed zeros, subnormals, infinities, NaN, random values."""
    levels = iquants.KVALUES_IQ4NL.astype(np.float32)
    midpoints = (levels[:-1] + levels[1:]) / 2
    edges = np.concatenate([midpoints, levels])
    special = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, -1e30, 1e30, np.inf, -np.inf, np.nan]
    special = np.array(special, np.float32)
    values = np.concatenate([
        edges, np.nextafter(edges, np.float32(-np.inf)), np.nextafter(edges, np.float32(np.inf)),
        special, np.random.default_rng(0).uniform(-140, 130, 5000).astype(np.float32),
    ])  # fmt: skip
    got = iquants._best_index(values[None, :])[0]
    assert got.tolist() == [_best_index_int8(v) for v in values]


def test_an_iq4_xs_block_by_hand():
    """d = 0.5, block i's scale l = i − 4 (stored as l + 32), every code 15 (level 113):
    value = 0.5 · (i − 4) · 113 in block i."""
    fields = {"d": np.float16(0.5), "scales": np.arange(8) + 28, "q": np.full(256, 15)}
    raw = gguf.pack_block(fields, "IQ4_XS")
    assert raw.shape == (136,)
    values = gguf.dequantize(raw, "IQ4_XS").reshape(8, 32)
    assert values[:, 0].tolist() == [0.5 * (i - 4) * 113 for i in range(8)]


def test_importance_lowers_the_weighted_error():
    """With the importance, the error in the columns that matter goes down (summed over many
    rows; on one row the search may still land elsewhere)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 256)) * 0.02).astype(np.float32)
    importance = np.ones(256, np.float32)
    importance[:32] = 1000.0
    for qtype in TYPES:
        plain = gguf.dequantize(gguf.quantize(x, qtype), qtype)
        weighted = gguf.dequantize(gguf.quantize(x, qtype, imatrix=importance), qtype)
        err = lambda v: float((importance * (v - x) ** 2).sum())  # noqa: E731
        assert err(weighted) < 0.99 * err(plain)


def test_importance_matrix_is_the_mean_square_input_of_each_column():
    """On a tiny Llama: equal to the mean of x² over every token entering each linear."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    windows = [torch.randint(0, 64, (2, 24)), torch.randint(0, 64, (1, 24))]
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0]))
        for n, m in model.model.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        for w in windows:
            model(input_ids=w)
    for h in handles:
        h.remove()
    result = gguf.importance_matrix(model, windows)
    assert len(result) == 2 * 7
    for name, values in result.items():
        inputs = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen[name.removeprefix("model.")]])
        assert inputs.shape[0] == 3 * 24
        torch.testing.assert_close(values, (inputs.double() ** 2).mean(0).float())
    assert torch.equal(
        result["model.layers.0.self_attn.q_proj"], result["model.layers.0.self_attn.k_proj"]
    )


def test_quantize_model_with_an_importance_matrix():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    imatrix = gguf.importance_matrix(model, [torch.randint(0, 64, (2, 32))])
    with_it = gguf.quantize_tensors(model, "IQ4_NL", imatrix=imatrix)
    without = gguf.quantize_tensors(model, "IQ4_NL")
    name = "model.layers.0.mlp.down_proj"
    values = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    assert np.array_equal(with_it[name].raw, gguf.quantize(values, "IQ4_NL", imatrix=imatrix[name]))
    assert not np.array_equal(with_it[name].raw, without[name].raw)
    mix = gguf.quantize_tensors(model, "Q4_K_M", imatrix=imatrix)  # Q4_K, Q5_0, Q6_K …
    assert len({tensor.qtype for tensor in mix.values()}) > 1
    layers = dict(models.linear_layers(model))
    for layer_name, tensor in mix.items():
        layer_values = layers[layer_name].weight.detach().numpy()
        uses = gguf.BLOCKS[tensor.qtype].takes_importance  # Q8_0, F16 …: ggml ignores it
        expected = gguf.quantize(
            layer_values, tensor.qtype, imatrix=imatrix[layer_name] if uses else None
        )
        assert np.array_equal(tensor.raw, expected)
    with pytest.raises(ValueError, match="no importance for"):
        gguf.quantize_tensors(model, "IQ4_NL", imatrix={})
    q8 = gguf.quantize_tensors(model, "Q8_0", imatrix=imatrix)  # ggml's Q8_0 ignores it
    assert np.array_equal(q8[name].raw, gguf.quantize(values, "Q8_0"))


def test_bad_importance_is_named():
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(
        ValueError, match=r"imatrix: expected one value per input column, shape \(64,\)"
    ):
        gguf.quantize(x, "IQ4_NL", imatrix=np.ones(32))
    with pytest.raises(ValueError, match="non-negative"):
        gguf.quantize(x, "IQ4_NL", imatrix=-np.ones(64))
    with pytest.raises(ValueError, match="non-negative"):
        gguf.quantize(x, "IQ4_NL", imatrix=np.full(64, np.nan))
    with pytest.raises(ValueError, match="Q8_0 takes no importance matrix"):
        gguf.quantize(x, "Q8_0", imatrix=np.ones(64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gguf.quantize(x, "IQ4_NL", imatrix=np.zeros(64))  # all zeros: allowed, as in C
