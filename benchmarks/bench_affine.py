"""Time qlearn.affine against PyTorch's built-in quantization and optimum-quanto on the same
weights, in one run.

Per-channel int8 absmax and group-128 4-bit zero-point quantization (codes + scales, the
dequantize step not included) of weights of the default model's shapes and of a 7B-class layer.
Group 128 needs an input dimension divisible by 128: SmolLM2's [1536, 576] (gate/up) is not, so
groups are timed on its down projection [576, 1536].

PyTorch's reference is ``torch.quantize_per_channel`` into qint8 (codes and qparams in one
quantized tensor; ``int_repr()`` not included), with the (S, Z) of a fresh
``PerChannelMinMaxObserver`` (``per_channel_symmetric``, [−127, 127]; ``per_channel_affine``,
[−8, 7]). The observer is timed on its own, outside the quantize column, and the ratio compares
qlearn with both together, since qlearn and quanto also choose their scales inside the timed
call. torch has no group granularity: groups are the channels of the view [n_groups, 128].
torch rounds x · (1/S) where qlearn and quanto round x / S (tests/test_affine.py).

Run with qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_affine.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from _timing import time_call
from optimum.quanto import MaxOptimizer, absmax_scale, qint4, qint8, quantize_weight
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from qlearn._checks import check_float_tensor
from qlearn.affine import absmax_quantize, zeropoint_quantize

# torch 2.13 deprecates quantize_per_channel's qint8 output (pytorch/pytorch#184982).
warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)


def torch_per_channel(
    w: torch.Tensor, qscheme: torch.qscheme, quant_min: int, quant_max: int
) -> dict[str, Callable[[], object]]:
    """torch's observer (timed alone) and ``quantize_per_channel`` with the observer's (S, Z),
    computed once outside its timing."""

    def observe() -> tuple[torch.Tensor, torch.Tensor]:
        observer = PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=qscheme, quant_min=quant_min, quant_max=quant_max
        )
        observer(w)
        return observer.calculate_qparams()

    scale, zero_point = observe()
    return {
        "torch": lambda: torch.quantize_per_channel(w, scale, zero_point, 0, torch.qint8),
        "observer": observe,
    }


def per_channel(w: torch.Tensor) -> dict[str, Callable[[], object]]:
    return {
        "qlearn": lambda: absmax_quantize(w, 8, axis=0),
        **torch_per_channel(w, torch.per_channel_symmetric, -127, 127),
        "quanto": lambda: quantize_weight(
            w, qint8, axis=0, scale=absmax_scale(w, qint8, axis=0), optimized=False
        ),
    }


def group_128(w: torch.Tensor) -> dict[str, Callable[[], object]]:
    def quanto() -> object:
        scale, shift = MaxOptimizer()(w, qint4, axis=0, group_size=128, zeropoint=True)
        return quantize_weight(
            w, qint4, axis=0, scale=scale, shift=shift, group_size=128, optimized=False
        )

    return {
        "qlearn": lambda: zeropoint_quantize(w, 4, group_size=128),
        **torch_per_channel(w.reshape(-1, 128), torch.per_channel_affine, -8, 7),
        "quanto": quanto,  # includes packing two 4-bit codes a byte
    }


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 on CPU")
    print(
        f"{'case':<34}{'qlearn':>10}{'(checks)':>10}{'torch':>10}{'(observer)':>12}"
        f"{'quanto':>10}{'th/ql':>8}{'qt/ql':>8}"
    )
    cases = [
        ("per-channel int8 absmax", per_channel, (1536, 576)),
        ("per-channel int8 absmax", per_channel, (4096, 4096)),
        ("group-128 int4 zero-point", group_128, (576, 1536)),
        ("group-128 int4 zero-point", group_128, (4096, 4096)),
    ]
    for label, make, shape in cases:
        w = torch.randn(shape)
        times = {name: time_call(fn) for name, fn in make(w).items()}
        times["checks"] = time_call(lambda w=w: check_float_tensor(w, "x"))  # part of qlearn's time
        ms = {name: 1e3 * t for name, t in times.items()}
        torch_total = times["torch"] + times["observer"]
        print(
            f"{label + ' ' + 'x'.join(map(str, shape)):<34}{ms['qlearn']:>8.2f}ms"
            f"{ms['checks']:>8.2f}ms{ms['torch']:>8.2f}ms{ms['observer']:>10.2f}ms"
            f"{ms['quanto']:>8.2f}ms{torch_total / times['qlearn']:>8.2f}"
            f"{times['quanto'] / times['qlearn']:>8.2f}"
        )
    print(
        "ratios > 1: qlearn is faster; th/ql: (torch + observer) / qlearn; (checks): qlearn's "
        "input validation (finite values); (observer): torch's qparams, timed apart"
    )


if __name__ == "__main__":
    main()
