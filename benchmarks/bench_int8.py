"""Time qlearn.int8 against bitsandbytes' Linear8bitLt (CPU, eval) and an FP32 matmul, in one run.

The default model's four layer shapes (576 → 576 q/o, 576 → 192 k/v, 576 → 1536 gate/up,
1536 → 576 down) at 1 token (generation) and 512 tokens (a prompt). Inputs are float32, as the
course's model runs, N(0, 1) with two outlier dimensions (×20), so the 16-bit path is taken.

- ``llm_int8_matmul``: qlearn's function, which quantizes the weight on every call;
- ``Int8Linear``: qlearn's layer (weight quantized once), the fair match for
- ``Linear8bitLt``: bitsandbytes 0.50.2 with ``has_fp16_weights=False, threshold=6.0``, weights
  quantized by ``.to("cpu")``; it casts float32 inputs to fp16 to quantize them;
- ``FP32``: ``torch.nn.functional.linear`` with the original weight.

On a CPU qlearn multiplies the int8 codes as float64 (exact int32 sums; ``torch._int_mm`` is
many times slower without VNNI); bitsandbytes uses ``torch._int_mm`` on an AVX-512 CPU (it
registers it only there; elsewhere it multiplies in fp32). Run with qlearn installed
(`make bench`) or from the repository root as `PYTHONPATH=. python benchmarks/bench_int8.py`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from _timing import time_call
from torch import nn

from qlearn.int8 import Int8Linear, llm_int8_matmul, outlier_columns

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]
TOKENS = [1, 512]


def main() -> None:
    # bitsandbytes logs to stderr on import (CPUs with AVX512-BF16 but no `kernels` package)
    # and on every forward with a float32 input (the cast to fp16): keep the table readable.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, "
        f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}, "
        "float32 inputs with 2 outlier dimensions"
    )
    print(
        f"{'in → out':<12}{'tokens':>7}{'llm_int8_matmul':>17}{'Int8Linear':>12}"
        f"{'Linear8bitLt':>14}{'FP32':>10}{'bnb/ql':>8}{'fp32/ql':>9}"
    )
    for in_features, out_features in SHAPES:
        linear = nn.Linear(in_features, out_features, bias=False)
        ours = Int8Linear.from_linear(linear)
        theirs = bnb.nn.Linear8bitLt(
            in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0
        )
        theirs.load_state_dict(linear.state_dict())
        theirs = theirs.to("cpu").eval()
        weight = linear.weight.detach()
        for tokens in TOKENS:
            x = torch.randn(tokens, in_features)
            x[:, [3, in_features // 2]] *= 20
            assert outlier_columns(x).numel() > 0
            with torch.no_grad():
                times = {
                    "function": time_call(lambda x=x, w=weight: llm_int8_matmul(x, w)),
                    "layer": time_call(lambda x=x, m=ours: m(x)),
                    "bnb": time_call(lambda x=x, m=theirs: m(x)),
                    "fp32": time_call(lambda x=x, w=weight: F.linear(x, w)),
                }
            ms = {name: 1e3 * t for name, t in times.items()}
            print(
                f"{f'{in_features} → {out_features}':<12}{tokens:>7}{ms['function']:>15.3f}ms"
                f"{ms['layer']:>10.3f}ms{ms['bnb']:>12.3f}ms{ms['fp32']:>8.3f}ms"
                f"{times['bnb'] / times['layer']:>8.2f}{times['fp32'] / times['layer']:>9.2f}"
            )
    print(
        "ratios > 1: qlearn's Int8Linear is faster; bnb/ql: Linear8bitLt / Int8Linear; "
        "fp32/ql: FP32 / Int8Linear. llm_int8_matmul also quantizes the weight on each call."
    )


if __name__ == "__main__":
    main()
