"""Time qlearn.calibration.choose_range, method by method, against NVIDIA modelopt's
HistogramCalibrator and numpy.percentile on the same 1M values, in one run.

The values are activation-like: a Laplace bulk, one outlier channel (×40) and one outlier token
(×30), float32. Each column times the whole job from a tensor to a range: for modelopt,
``collect`` (its histogram of |x|) then ``compute_amax`` ("percentile", "mse", "entropy"; for
"minmax" its ``MaxCalibrator``); for numpy, ``numpy.percentile`` of |x| (sorting, exact). qlearn
builds only the histogram a method reads, and "mse" also checks a few ranges on the data.
modelopt's entropy search is O(bins²) in Python (~2 s for 2048 bins) and is timed once.

Beside the times, each range's actual quantization error on the data (int8, symmetric) shows
what the time buys: modelopt's "mse" evaluates only bin centres and lands far from the best
range on such data. The observers' cost per 1M-value batch (both histograms vs modelopt's
``collect``) closes the table.

Needs nvidia-modelopt (``pip install nvidia-modelopt``, CPU is fine) for its columns; without it
they read "-". Run with qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_calibration.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from _timing import time_call

from qlearn.affine import quantization_error
from qlearn.calibration import METHODS, HistogramObserver, choose_range, clip_quantize

PERCENTILE = 99.99
MODELOPT_METHOD = {"minmax": "max", "percentile": "percentile", "mse": "mse", "kl": "entropy"}


def activation_like(n: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.distributions.Laplace(0.0, 0.3).sample((n // 64, 64))
    x[:, 7] *= 40
    x[0] *= 30
    return x.flatten()


def modelopt_calls(x: torch.Tensor) -> dict[str, Callable[[], float]] | None:
    try:
        with warnings.catch_warnings():  # it warns that it is untested with this transformers
            warnings.simplefilter("ignore")
            from modelopt.torch.quantization.calib.histogram import HistogramCalibrator
            from modelopt.torch.quantization.calib.max import MaxCalibrator
    except ImportError:
        return None

    def histogram(method: str) -> Callable[[], float]:
        def run() -> float:
            calibrator = HistogramCalibrator(num_bits=8, unsigned=False, num_bins=2048)
            calibrator.collect(x)
            kwargs = {"percentile": PERCENTILE} if method == "percentile" else {}
            return float(calibrator.compute_amax(method, **kwargs))

        return run

    def maximum() -> float:
        calibrator = MaxCalibrator(num_bits=8, axis=None, unsigned=False)
        calibrator.collect(x)
        return float(calibrator.compute_amax())

    calls = {
        name: histogram(method) for name, method in MODELOPT_METHOD.items() if name != "minmax"
    }
    return {"minmax": maximum, **calls}


def int8_mse(x: torch.Tensor, amax: float) -> float:
    return quantization_error(x, clip_quantize(x, -amax, amax))["mse"]


def main() -> None:
    x = activation_like(1_000_000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 1M float32 values")
    modelopt = modelopt_calls(x)
    print(
        f"{'method':<12}{'qlearn':>10}{'modelopt':>11}{'numpy':>10}{'mo/ql':>8}{'np/ql':>8}"
        f"{'amax ql':>10}{'amax mo':>10}{'MSE ql':>10}{'MSE mo':>10}"
    )
    for method in METHODS:
        ours = time_call(lambda method=method: choose_range(x, method, percentile=PERCENTILE), 3)
        amax = choose_range(x, method, percentile=PERCENTILE)[1]
        theirs = theirs_amax = None
        if modelopt is not None:
            repeat = 1 if method == "kl" else 3
            theirs = time_call(modelopt[method], repeat)
            theirs_amax = modelopt[method]()
        numpy_time = None
        if method == "percentile":
            values = x.abs().numpy()
            numpy_time = time_call(lambda values=values: np.percentile(values, PERCENTILE), 3)
        row = f"{method:<12}{1e3 * ours:>8.1f}ms"
        row += f"{1e3 * theirs:>9.1f}ms" if theirs is not None else f"{'-':>11}"
        row += f"{1e3 * numpy_time:>8.1f}ms" if numpy_time is not None else f"{'-':>10}"
        row += f"{theirs / ours:>8.2f}" if theirs is not None else f"{'-':>8}"
        row += f"{numpy_time / ours:>8.2f}" if numpy_time is not None else f"{'-':>8}"
        row += f"{amax:>10.3f}" + (
            f"{theirs_amax:>10.3f}" if theirs_amax is not None else f"{'-':>10}"
        )
        row += f"{int8_mse(x, amax):>10.2e}"
        row += f"{int8_mse(x, theirs_amax):>10.2e}" if theirs_amax is not None else f"{'-':>10}"
        print(row)
    observer_time = time_call(lambda: HistogramObserver().observe(x), 3)
    line = f"{'observe':<12}{1e3 * observer_time:>8.1f}ms"
    if modelopt is not None:
        from modelopt.torch.quantization.calib.histogram import HistogramCalibrator

        collect = time_call(lambda: HistogramCalibrator(num_bins=2048).collect(x), 3)
        line += f"{1e3 * collect:>9.1f}ms{'-':>10}{collect / observer_time:>8.2f}"
    print(line)
    print(
        "ratios > 1: qlearn is faster; mo/ql: modelopt / qlearn, np/ql: numpy.percentile / "
        "qlearn; MSE: int8 absmax error of the range on the data; observe: one batch into a "
        "HistogramObserver (both histograms) vs modelopt's collect"
    )


if __name__ == "__main__":
    main()
