"""Time qlearn's microscaling quantizers against their references, in one run.

One tensor the shape of the default model's ffn_down (576 × 1536, N(0, 0.02²) float32):

- ``qlearn.mx.mx_quantize`` (MXFP4 and MXFP8 with the ``"ceil"`` scale) and
  ``qlearn.mx.nvfp4_quantize`` against NVIDIA TensorRT Model Optimizer's ``MXFP4QTensor``,
  ``MXFP8QTensor`` and ``NVFP4QTensor.quantize`` (torch on the CPU; the same scales and codes,
  tests/test_mx.py), and the OCP ``"floor"`` scale beside them;
- ``qlearn.gguf.quantize`` for MXFP4 against ``gguf.quants.quantize`` (gguf-py, numpy) and, for
  MXFP4 and NVFP4, llama.cpp's ``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref`` compiled
  with ``gcc -O2`` when ``scripts/make_gguf_golden.py --build-only`` has built
  ``build/ggml_ref/libggml_ref.so`` (gguf-py has no NVFP4 quantizer).

Ratios > 1: qlearn is faster. Run from the repository root as
`PYTHONPATH=. python benchmarks/bench_mx.py`, alone on the machine (two threads).
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import gguf as gguf_py
import numpy as np
import torch
from _timing import time_call
from gguf import GGMLQuantizationType

from qlearn import gguf, mx

LIBRARY = Path(__file__).resolve().parent.parent / "build" / "ggml_ref" / "libggml_ref.so"
SHAPE = (576, 1536)


def main() -> None:
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", module="modelopt")
    from modelopt.torch.quantization.qtensor import MXFP4QTensor, MXFP8QTensor, NVFP4QTensor

    x = torch.from_numpy(
        (np.random.default_rng(0).standard_normal(SHAPE) * 0.02).astype(np.float32)
    )
    print(f"tensor {SHAPE[0]}×{SHAPE[1]} float32, torch threads 2")
    rows = [
        ("MXFP8 ceil", lambda: mx.mx_quantize(x, "fp8_e4m3", scale_rounding="ceil"),
         lambda: MXFP8QTensor.quantize(x)),
        ("MXFP4 ceil", lambda: mx.mx_quantize(x, "fp4_e2m1", scale_rounding="ceil"),
         lambda: MXFP4QTensor.quantize(x, 32)),
        ("NVFP4", lambda: mx.nvfp4_quantize(x), lambda: NVFP4QTensor.quantize(x, 16)),
    ]  # fmt: skip
    print(f"{'format':<12}{'qlearn':>10}{'Model Opt.':>12}{'ratio':>7}")
    for name, ours, theirs in rows:
        t_ours, t_theirs = time_call(ours, repeat=5), time_call(theirs, repeat=5)
        print(f"{name:<12}{1e3 * t_ours:>8.1f}ms{1e3 * t_theirs:>10.1f}ms{t_theirs / t_ours:>7.2f}")
    t_floor = time_call(lambda: mx.mx_quantize(x, "fp4_e2m1"), repeat=5)
    print(f"{'MXFP4 floor':<12}{1e3 * t_floor:>8.1f}ms  (the OCP spec's scale; no reference)\n")

    xn = x.numpy()
    lib = ctypes.CDLL(str(LIBRARY)) if LIBRARY.exists() else None
    print(f"{'GGUF type':<10}{'qlearn':>10}{'gguf-py':>10}{'ratio':>7}{'C ref':>10}{'ratio':>7}")
    for qtype in ("MXFP4", "NVFP4"):
        t_ours = time_call(lambda q=qtype: gguf.quantize(xn, q, threads=1), repeat=5)
        line = f"{qtype:<10}{1e3 * t_ours:>8.1f}ms"
        if qtype == "MXFP4":
            t_py = time_call(lambda: gguf_py.quants.quantize(xn, GGMLQuantizationType.MXFP4), 5)
            line += f"{1e3 * t_py:>8.1f}ms{t_py / t_ours:>7.2f}"
        else:
            line += f"{'—':>10}{'':>7}"
        if lib is not None:
            t_c = time_call(lambda q=qtype: _c_quantize(lib, q, xn), repeat=5)
            line += f"{1e3 * t_c:>8.1f}ms{t_c / t_ours:>7.2f}"
        else:
            line += "   (C reference not built: scripts/make_gguf_golden.py --build-only)"
        print(line)
    print("qlearn's GGUF quantizers on one thread; the C reference single-threaded")


def _c_quantize(lib: ctypes.CDLL, qtype: str, x: np.ndarray) -> np.ndarray:
    fmt = gguf.BLOCKS[qtype]
    fn = getattr(lib, f"quantize_row_{qtype.lower()}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    out = np.zeros(x.size // fmt.block_size * fmt.type_size, dtype=np.uint8)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


if __name__ == "__main__":
    main()
