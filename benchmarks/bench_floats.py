"""Time qlearn.floats.round_to_format on 1M values against an ml_dtypes astype round trip.

The same float32 values (standard normal, like weights) cast to each format and back to
float32; the ratio is qlearn's time over ml_dtypes'. Run with qlearn installed (`make bench`)
or from the repository root as `PYTHONPATH=. python benchmarks/bench_floats.py`.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
from _timing import time_call

from qlearn.floats import round_to_format

ML_DTYPES = {
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}


if __name__ == "__main__":
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    x_np = x.numpy()
    print(f"1M float32 values, {torch.get_num_threads()} torch threads")
    print(f"{'format':<10} {'qlearn ms':>10} {'ml_dtypes ms':>13} {'ratio':>7}")
    for fmt, dtype in ML_DTYPES.items():
        ours = time_call(lambda fmt=fmt: round_to_format(x, fmt))
        ref = time_call(lambda dtype=dtype: x_np.astype(dtype).astype(np.float32))
        print(f"{fmt:<10} {ours * 1e3:>10.2f} {ref * 1e3:>13.2f} {ours / ref:>7.2f}")
