"""Time qlearn.gguf's quantizers against gguf-py's numpy ones and llama.cpp's C reference.

One tensor the shape of the default model's ffn_down (576 × 1536, N(0, 0.02²) float32), every
type, in one run:

- legacy types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): ``qlearn.gguf.quantize`` on one thread against
  ``gguf.quants.quantize`` (gguf-py 0.19, numpy), and ``dequantize`` against
  ``gguf.quants.dequantize``; both give the same bytes and floats;
- k-quants (Q2_K … Q6_K): qlearn on one and on two threads against llama.cpp's
  ``quantize_row_q*_K_ref`` compiled with ``gcc -O2`` (single-threaded), when
  ``scripts/make_gguf_golden.py --build-only`` has built ``build/ggml_ref/libggml_ref.so``
  (the column is skipped, saying so, when it has not). gguf-py has no k-quant quantizer;
- the importance paths (chapter 12): every type ``llama-quantize --imatrix`` hands an importance
  matrix to (Q4_0 … Q6_K, IQ4_NL, IQ4_XS) with a fixed random importance vector, qlearn on one
  thread against ggml's ``quantize_<type>(…, quant_weights)``, the functions llama-quantize
  calls, with the bytes checked equal; IQ4_NL and IQ4_XS also without importance.

Run with qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_gguf.py`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf as gguf_py
import numpy as np
import torch
from _timing import time_call
from gguf import GGMLQuantizationType

from qlearn import gguf

LIBRARY = Path(__file__).resolve().parent.parent / "build" / "ggml_ref" / "libggml_ref.so"
SHAPE = (576, 1536)


def main() -> None:
    torch.set_num_threads(1)
    x = (np.random.default_rng(0).standard_normal(SHAPE) * 0.02).astype(np.float32)
    print(
        f"tensor {SHAPE[0]}×{SHAPE[1]} float32; numpy {np.__version__}, gguf-py "
        f"{gguf_py.__version__ if hasattr(gguf_py, '__version__') else '0.19'}"
    )
    print(f"{'type':<6}{'qlearn':>10}{'gguf-py':>10}{'ratio':>7}  |  dequantize"
          f"{'qlearn':>9}{'gguf-py':>10}{'ratio':>7}")  # fmt: skip
    for qtype in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]:
        gtype = GGMLQuantizationType[qtype]
        raw = gguf.quantize(x, qtype)
        assert np.array_equal(raw, gguf_py.quants.quantize(x, gtype))
        t_q = time_call(lambda q=qtype: gguf.quantize(x, q, threads=1), repeat=10)
        t_g = time_call(lambda g=gtype: gguf_py.quants.quantize(x, g), repeat=10)
        t_d = time_call(lambda q=qtype, r=raw: gguf.dequantize(r, q), repeat=10)
        t_gd = time_call(lambda g=gtype, r=raw: gguf_py.quants.dequantize(r, g), repeat=10)
        print(
            f"{qtype:<6}{1e3 * t_q:>8.2f}ms{1e3 * t_g:>8.2f}ms{t_g / t_q:>7.2f}  |  "
            f"{'':>10}{1e3 * t_d:>7.2f}ms{1e3 * t_gd:>8.2f}ms{t_gd / t_d:>7.2f}"
        )
    print("ratio > 1: qlearn is faster (one thread); goal for the legacy types: >= 2\n")

    lib = ctypes.CDLL(str(LIBRARY)) if LIBRARY.exists() else None
    if lib is None:
        print(f"C reference not built ({LIBRARY} missing): run "
              "scripts/make_gguf_golden.py --build-only for that column")  # fmt: skip
    print(f"{'type':<6}{'qlearn 1t':>11}{'qlearn 2t':>11}{'C ref 1t':>11}{'C/ql 1t':>9}"
          f"{'C/ql 2t':>9}")  # fmt: skip
    for qtype in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        t1 = time_call(lambda q=qtype: gguf.quantize(x, q, threads=1), repeat=3)
        t2 = time_call(lambda q=qtype: gguf.quantize(x, q, threads=2), repeat=3)
        line = f"{qtype:<6}{1e3 * t1:>9.1f}ms{1e3 * t2:>9.1f}ms"
        if lib is not None:
            fn = getattr(lib, f"quantize_row_{qtype[:2].lower()}_K_ref")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
            out = np.empty(gguf.tensor_bytes(SHAPE, qtype), dtype=np.uint8)
            fn(x.ctypes.data, out.ctypes.data, x.size)
            assert np.array_equal(out, gguf.quantize(x, qtype).ravel())
            t_c = time_call(lambda f=fn, o=out: f(x.ctypes.data, o.ctypes.data, x.size), repeat=3)
            line += f"{1e3 * t_c:>9.1f}ms{t_c / t1:>9.2f}{t_c / t2:>9.2f}"
        print(line)
    print("C/ql > 1: qlearn is faster than llama.cpp's single-threaded C reference "
          "(goal: >= 1); the bytes were checked equal")  # fmt: skip
    if lib is not None:
        _importance_paths(lib, x)


def _importance_paths(lib: ctypes.CDLL, x: np.ndarray) -> None:
    """qlearn's importance paths against ggml's quantize_<type> with quant_weights."""
    importance = np.exp(np.random.default_rng(1).normal(0, 1, SHAPE[1])).astype(np.float32)
    print(f"\n{'type':<18}{'qlearn 1t':>11}{'C 1t':>11}{'C/ql':>7}")
    cases = [(q, importance) for q in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                                       "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]]  # fmt: skip
    cases += [("IQ4_NL", None), ("IQ4_XS", None)]
    for qtype, imatrix in cases:
        name = qtype[:2].lower() + "_K" if qtype.endswith("_K") else qtype.lower()
        fn = getattr(lib, f"quantize_{name}")
        fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_void_p]
        fn.restype = ctypes.c_size_t
        out = np.empty(gguf.tensor_bytes(SHAPE, qtype), dtype=np.uint8)
        weights = None if imatrix is None else imatrix.ctypes.data

        def run_c(f=fn, o=out, w=weights) -> None:
            f(x.ctypes.data, o.ctypes.data, SHAPE[0], SHAPE[1], w)

        run_c()
        assert np.array_equal(out, gguf.quantize(x, qtype, imatrix=imatrix).ravel())
        t_q = time_call(
            lambda q=qtype, m=imatrix: gguf.quantize(x, q, imatrix=m, threads=1), repeat=3
        )
        t_c = time_call(run_c, repeat=3)
        label = f"{qtype} {'+ imatrix' if imatrix is not None else 'plain'}"
        print(f"{label:<18}{1e3 * t_q:>9.1f}ms{1e3 * t_c:>9.1f}ms{t_c / t_q:>7.2f}")
    print("C/ql > 1: qlearn is faster than ggml's C (both one thread); the bytes are equal")


if __name__ == "__main__":
    main()
