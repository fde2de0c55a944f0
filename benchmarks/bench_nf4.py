"""Time qlearn.nf4 against bitsandbytes' quantize_4bit / dequantize_4bit (CPU), in one run.

The default model's four linear shapes [out, in] (576 × 576 q/o, 192 × 576 k/v, 1536 × 576
gate/up, 576 × 1536 down) and its token embedding (49152 × 576), float32, blocks of 64, NF4 with
and without double quantization (FP4 costs the same). Both produce the same bytes
(tests/test_nf4.py). bitsandbytes quantizes 4-bit codes with the same pure-torch code on CPU, and
dequantizes with a C++ kernel; its 8-bit quantizer of the nested constants is C++ too.

Run with qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_nf4.py`.
"""

from __future__ import annotations

import logging

import torch
from _timing import time_call

from qlearn import nf4

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]


def main() -> None:
    # bitsandbytes logs one line on import on CPUs with AVX512-BF16 but no `kernels` package
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, "
        f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}, "
        "float32 weights, NF4, blocks of 64"
    )
    print(
        f"{'[out, in]':<14}{'double q.':>10}{'quantize ql':>13}{'bnb':>10}{'bnb/ql':>8}"
        f"{'dequantize ql':>15}{'bnb':>10}{'bnb/ql':>8}"
    )
    for shape in SHAPES:
        w = torch.randn(*shape)
        repeat = 5 if w.numel() > 10**7 else 15
        for double_quant in (False, True):
            q = nf4.nf4_quantize(w, double_quant=double_quant)
            packed, state = bnb_functional.quantize_4bit(
                w, quant_type="nf4", compress_statistics=double_quant
            )
            assert torch.equal(q.packed, packed.reshape(-1))
            times = {
                "q_ours": time_call(
                    lambda w=w, d=double_quant: nf4.nf4_quantize(w, double_quant=d), repeat
                ),
                "q_bnb": time_call(
                    lambda w=w, d=double_quant: bnb_functional.quantize_4bit(
                        w, quant_type="nf4", compress_statistics=d
                    ),
                    repeat,
                ),
                "d_ours": time_call(q.dequantize, repeat),
                "d_bnb": time_call(
                    lambda p=packed, s=state: bnb_functional.dequantize_4bit(p, s), repeat
                ),
            }
            ms = {name: 1e3 * t for name, t in times.items()}
            print(
                f"{f'{shape[0]} × {shape[1]}':<14}{double_quant!s:>10}"
                f"{ms['q_ours']:>11.2f}ms{ms['q_bnb']:>8.2f}ms"
                f"{times['q_bnb'] / times['q_ours']:>8.2f}"
                f"{ms['d_ours']:>13.2f}ms{ms['d_bnb']:>8.2f}ms"
                f"{times['d_bnb'] / times['d_ours']:>8.2f}"
            )
    print("ratios > 1: qlearn is faster (fastest of the repeated calls, after one warm-up)")


if __name__ == "__main__":
    main()
