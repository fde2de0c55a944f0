"""Clipping and calibration: choose the range [lo, hi] that a quantizer spends its codes on.

Chapter 02 spread the codes over the whole range [min, max] of a tensor; one outlier then
stretches the step S for every other value. Clipping spends the codes on a narrower range and
lets the few values outside it land on the end codes (:func:`clip_quantize`). How to choose the
range (:func:`choose_range`, Wu et al., "Integer Quantization for Deep Learning Inference:
Principles and Empirical Evaluation", 2020, §3.4 and §4.2; Nagel et al., "A White Paper on
Neural Network Quantization", 2021, §3.1):

- **minmax**: the extremes, nothing clipped (chapter 02's absmax and zero-point ranges).
- **percentile** (Wu et al. §3.4): clip the rarest values; symmetric, the p-th percentile of |x|
  (TensorRT's convention), asymmetric, the (100 − p)-th and p-th percentiles of x, from a
  histogram, within one bin of ``numpy.percentile``.
- **mse** (Wu et al. §3.4; Nagel et al. §3.1): the range whose error Σ(x − x̂)² is smallest,
  integrated exactly over a log-spaced histogram of x (64 bins per octave, fixed edges), then
  checked on the data, so that it is never worse than minmax.
- **kl** (entropy calibration: Migacz, "8-bit Inference with TensorRT", GTC 2017): the threshold
  of a 2048-bin histogram of |x| that minimizes KL(P‖Q), the same as ``modelopt``'s
  ``compute_amax("entropy")``. Symmetric only.

How each is computed, and how it compares with ``numpy`` and ``modelopt``: ``qlearn/_histogram.py``.

Observers (:class:`MinMaxObserver`, :class:`HistogramObserver`) see the inputs of a layer batch
after batch, through a forward pre-hook, and give a range by the same methods from what they saw.
:func:`calibrate` runs a model over calibration text and returns the range of every decoder
linear layer's input; :func:`quantize_activations` then fake-quantizes those inputs, **static**
(the calibrated ranges, fixed ahead of time) or **dynamic** (each incoming tensor's own min/max,
computed at run time: Nagel et al. 2021, §3.1 and §4.2; Wu et al. §4). With
``qlearn.affine.quantize_model(..., axis=0)`` on the weights this is W8A8.

Taught in notebooks/03_granularity_calibration.ipynb.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch
from torch import nn

from qlearn._checks import (
    check_bits,
    check_bool,
    check_choice,
    check_float_tensor,
    check_int,
    check_module,
    check_real,
)
from qlearn._histogram import (
    AbsHistogram,
    LogHistogram,
    kl_range,
    minmax_range,
    mse_range,
    mse_range_on_data,
    percentile_range_abs,
    percentile_range_signed,
    quantize_over,
)
from qlearn._layers import model_device
from qlearn._progress import progress_bar
from qlearn.affine import ABSMAX, MAX_BITS, ZEROPOINT, QuantizedTensor, fake_quantize
from qlearn.data import token_batches

__all__ = [
    "ACTIVATION_GRANULARITIES",
    "KL",
    "METHODS",
    "MINMAX",
    "MSE",
    "PERCENTILE",
    "ActivationQuantization",
    "HistogramObserver",
    "MinMaxObserver",
    "calibrate",
    "choose_range",
    "clip_quantize",
    "observe_inputs",
    "quantize_activations",
]

MINMAX: Final = "minmax"
"""The extremes of the data: nothing is clipped."""
PERCENTILE: Final = "percentile"
"""Clip the values beyond a percentile (Wu et al. 2020, §3.4)."""
MSE: Final = "mse"
"""The range with the smallest quantization error Σ(x − x̂)² (Wu et al. 2020, §3.4)."""
KL: Final = "kl"
"""TensorRT's entropy calibration: the threshold minimizing KL(P‖Q) (Migacz 2017)."""
METHODS: Final = (MINMAX, PERCENTILE, MSE, KL)
MODES: Final = ("dynamic", "static")
ACTIVATION_GRANULARITIES: Final = ("tensor", "token")
"""One range for a layer's whole input, or one per token (dynamic only)."""


# --------------------------------------------------------------------------------------------
# Ranges and clipping
# --------------------------------------------------------------------------------------------


def choose_range(
    x: torch.Tensor,
    method: str,
    *,
    bits: int = 8,
    symmetric: bool = True,
    percentile: float = 99.99,
    num_bins: int = 2048,
) -> tuple[float, float]:
    """The range (lo, hi) to quantize ``x`` over, by ``method``: "minmax", "percentile", "mse"
    or "kl" (see the module docstring for each).

    Symmetric ranges are (−a, a), for absmax codes [−(2^(b−1) − 1), 2^(b−1) − 1]; asymmetric
    ones always hold 0 (lo ≤ 0 ≤ hi), as chapter 02's zero-point quantizer stretches them.
    ``percentile`` (in (0, 100]) is used by "percentile" only; ``num_bins`` is the size of the
    histogram of |x| that "percentile" (symmetric) and "kl" read. "mse" checks its range on
    ``x`` itself. Wu et al. 2020, §3.4; Migacz 2017 (kl); Nagel et al. 2021, §3.1. Taught in
    notebooks/03_granularity_calibration.ipynb.
    """
    check_float_tensor(x, "x")
    method, bits, symmetric, percentile, num_bins = _check_range_args(
        method, bits, symmetric, percentile, num_bins
    )
    x = x.detach()
    extremes = (float(x.min()), float(x.max()))
    histogram, fine = None, None
    if method == KL or (method == PERCENTILE and symmetric):
        histogram = AbsHistogram(num_bins)
        histogram.add(x)
    elif method != MINMAX:
        fine = LogHistogram()
        fine.add(x)
    lo_hi = _range_from(method, histogram, fine, extremes, bits, symmetric, percentile)
    if method == MSE:  # checked on the data, which an observer no longer has
        return mse_range_on_data(x, lo_hi, extremes, bits, symmetric)
    return lo_hi


def clip_quantize(
    x: torch.Tensor,
    lo: float,
    hi: float,
    *,
    bits: int = 8,
    symmetric: bool | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` over the range [lo, hi]; values outside it land on the end codes.

    The codes are those of chapter 02 with the range given instead of measured: a symmetric range
    (lo = −hi; ``symmetric=None`` infers it) uses absmax, S = hi / (2^(b−1) − 1), codes
    clamp(round(x / S)); any other range uses zero-point, stretched to hold 0 as
    ``qlearn.affine.zeropoint_quantize`` does, S = (hi − lo) / (2^b − 1),
    Z = qmin − round(lo / S), codes clamp(round(x / S) + Z). With lo, hi = the min and max of
    ``x`` the result equals ``qlearn.affine``'s bit for bit. Returns a
    ``qlearn.affine.QuantizedTensor`` (per tensor: axis and group_size None). Clipping: Wu et al.
    2020, §3.4; Nagel et al. 2021, §3.1; affine map: Jacob et al. 2018, eq. 1. Taught in
    notebooks/03_granularity_calibration.ipynb (a vector with one outlier clipped to [−5, 5]).
    """
    check_float_tensor(x, "x")
    bits = check_bits(bits, low=2, high=MAX_BITS)
    lo, hi, symmetric = _check_lo_hi(lo, hi, symmetric)
    return quantize_over(x, lo, hi, bits, symmetric)


# --------------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------------


class MinMaxObserver:
    """Keeps the smallest and largest value of every tensor it observes.

    Feed it with :meth:`observe` or register :meth:`hook` as a forward pre-hook of a layer
    (``layer.register_forward_pre_hook(observer.hook)``); :meth:`range` then gives the
    "minmax" range. Nagel et al. 2021, §3.1 (range setting from calibration data). Taught in
    notebooks/03_granularity_calibration.ipynb.
    """

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def observe(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Add the values of ``x`` (a finite floating-point tensor; errors name it ``name``)."""
        check_float_tensor(x, name)
        x = x.detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.numel()

    def hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook: observe the layer's first positional input."""
        self.observe(_first_input(args, module), name="input")

    def range(
        self,
        method: str = MINMAX,
        *,
        bits: int = 8,
        symmetric: bool = True,
        percentile: float = 99.99,
    ) -> tuple[float, float]:
        """The range of what was observed; only "minmax" (use :class:`HistogramObserver` for
        "percentile", "mse" and "kl"). Same conventions as :func:`choose_range`."""
        method, bits, symmetric, percentile, _ = _check_range_args(
            method, bits, symmetric, percentile, 2
        )
        if method != MINMAX:
            raise ValueError(
                f"method: expected 'minmax' (a MinMaxObserver keeps only the extremes; use a "
                f"HistogramObserver for 'percentile', 'mse' and 'kl'), got {method!r}"
            )
        self._check_seen()
        return minmax_range(self.min, self.max, bits, symmetric)

    def _check_seen(self) -> None:
        if not self.count:
            raise ValueError("observer: expected at least one observed tensor, got none")


class HistogramObserver(MinMaxObserver):
    """Keeps the extremes and two histograms of every tensor it observes, and gives a range by
    any of the four methods of :func:`choose_range` from them.

    - ``counts`` / ``edges``: TensorRT's histogram of |x| (Migacz 2017), built as NVIDIA
      ``modelopt``'s ``HistogramCalibrator`` builds it (a larger |x| later adds bins of the same
      width), with exact float64 counts; read by "kl" and the symmetric "percentile";
    - a fine log-spaced histogram of x (64 bins per octave, both signs, fixed edges), read by
      "mse" and the asymmetric "percentile".

    Both are detailed in ``qlearn/_histogram.py``. Wu et al. 2020, §3.4 (histogram
    calibration); Nagel et al. 2021, §3.1. Taught in notebooks/03_granularity_calibration.ipynb.
    """

    def __init__(self, num_bins: int = 2048) -> None:
        super().__init__()
        self.num_bins = check_int(num_bins, "num_bins", minimum=2)
        self._abs = AbsHistogram(self.num_bins)
        self._fine = LogHistogram()

    @property
    def counts(self) -> torch.Tensor:
        """Counts of the histogram of |x| (float64; empty before the first tensor)."""
        return self._abs.counts.clone()

    @property
    def edges(self) -> torch.Tensor:
        """Bin edges of the histogram of |x| (float32, one more than ``counts``)."""
        return self._abs.edges.clone()

    def observe(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Add the values of ``x`` (a finite floating-point tensor; errors name it ``name``)."""
        super().observe(x, name=name)
        x = x.detach()
        self._abs.add(x)
        self._fine.add(x)

    def range(
        self,
        method: str = MINMAX,
        *,
        bits: int = 8,
        symmetric: bool = True,
        percentile: float = 99.99,
    ) -> tuple[float, float]:
        """The range of what was observed, by ``method`` (see :func:`choose_range`). "mse" comes
        from the fine histogram alone (the data is gone). Wu et al. 2020, §3.4; Migacz 2017.
        Taught in notebooks/03_granularity_calibration.ipynb."""
        method, bits, symmetric, percentile, _ = _check_range_args(
            method, bits, symmetric, percentile, 2
        )
        self._check_seen()
        extremes = (self.min, self.max)
        return _range_from(method, self._abs, self._fine, extremes, bits, symmetric, percentile)


# --------------------------------------------------------------------------------------------
# A model's activations
# --------------------------------------------------------------------------------------------


def calibrate(
    model: nn.Module,
    texts_or_batches: torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    *,
    method: str = MINMAX,
    tokenizer: Any = None,
    bits: int = 8,
    symmetric: bool = True,
    percentile: float = 99.99,
    num_bins: int = 2048,
    progress: bool | None = None,
) -> dict[str, tuple[float, float]]:
    """Run ``model`` over calibration data and return the range of the input of every decoder
    linear layer (``qlearn.models.linear_layers``), keyed by the layer's name.

    :func:`observe_inputs` (a :class:`MinMaxObserver` per layer for "minmax", else a
    :class:`HistogramObserver`), then each observer's ``range(method, ...)``; arguments as in
    :func:`choose_range`. Static range setting from a calibration set: Nagel et al. 2021, §3.1
    and §4.2; Wu et al. 2020, §3.4 and §4. Taught in notebooks/03_granularity_calibration.ipynb.
    """
    method, bits, symmetric, percentile, num_bins = _check_range_args(
        method, bits, symmetric, percentile, num_bins
    )
    observers = observe_inputs(
        model,
        texts_or_batches,
        histogram=method != MINMAX,
        tokenizer=tokenizer,
        num_bins=num_bins,
        progress=progress,
    )
    return {
        name: observer.range(method, bits=bits, symmetric=symmetric, percentile=percentile)
        for name, observer in observers.items()
    }


def observe_inputs(
    model: nn.Module,
    texts_or_batches: torch.Tensor | Sequence[torch.Tensor] | Sequence[str],
    *,
    histogram: bool = True,
    tokenizer: Any = None,
    num_bins: int = 2048,
    progress: bool | None = None,
) -> dict[str, MinMaxObserver]:
    """Run ``model`` over calibration data with an observer on the input of every decoder
    linear layer; return the observers, keyed by layer name, to ask for ranges by any method.

    ``texts_or_batches``: a [n, seqlen] token tensor (e.g. ``qlearn.data.calibration_windows``,
    run one window at a time), a list of token tensors (each [batch, seqlen] or [seqlen], one
    forward pass each), or a list of strings (each tokenized alone by ``tokenizer``, without
    special tokens). Observers are :class:`HistogramObserver` (``histogram=True``) or
    :class:`MinMaxObserver`, fed by forward pre-hooks that are removed afterwards, also on error;
    the model is left in the train/eval mode it had. Nagel et al. 2021, §3.1. Taught in
    notebooks/03_granularity_calibration.ipynb.
    """
    from qlearn.models import linear_layers

    check_module(model)
    histogram = check_bool(histogram, "histogram")
    num_bins = check_int(num_bins, "num_bins", minimum=2)
    batches = token_batches(texts_or_batches, tokenizer)
    layers = list(linear_layers(model))
    observers: dict[str, MinMaxObserver] = {
        name: HistogramObserver(num_bins) if histogram else MinMaxObserver() for name, _ in layers
    }
    device = model_device(model)
    handles = []
    was_training = model.training
    try:
        for name, layer in layers:
            handles.append(layer.register_forward_pre_hook(_observing_hook(name, observers[name])))
        model.eval()
        with torch.no_grad():
            for batch in progress_bar(
                batches, desc="calibrating activations", total=len(batches), progress=progress
            ):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, observer in observers.items():
        if not observer.count:
            raise ValueError(
                f"model: expected every decoder linear layer to be called, but {name} saw no input"
            )
    return observers


@dataclass(eq=False)
class ActivationQuantization:
    """What :func:`quantize_activations` returns: the hooks it put on the model.

    ``remove()`` takes them off (the model is then exactly as before); ``with`` removes them on
    leaving the block. Taught in notebooks/03_granularity_calibration.ipynb.
    """

    mode: str
    bits: int
    symmetric: bool
    ranges: dict[str, tuple[float, float]] | None
    granularity: str = "tensor"
    _handles: list[Any] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        """True until :meth:`remove` runs."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook (calling it again does nothing)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> ActivationQuantization:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def quantize_activations(
    model: nn.Module,
    *,
    mode: str = "dynamic",
    ranges: dict[str, tuple[float, float]] | None = None,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
) -> ActivationQuantization:
    """Fake-quantize the input of every decoder linear layer through forward pre-hooks; return
    a handle whose ``remove()`` (or the end of a ``with`` block) takes them off.

    ``mode="dynamic"``: each incoming tensor is quantized over its own range, measured at run
    time (``qlearn.affine.fake_quantize``, absmax if ``symmetric`` else zero-point): one range
    for the whole tensor (``granularity="tensor"``) or one per token, i.e. per row of the
    input (``"token"``: the per-token dynamic activations of SmoothQuant's O1 and QuaRot,
    chapter 11).
    ``mode="static"``: over ``ranges[layer name]``, fixed ahead of time by :func:`calibrate`
    (values outside are clipped, :func:`clip_quantize`); every layer needs a range, symmetric
    (lo = −hi) when ``symmetric``. The weights are not touched: quantize them with
    ``qlearn.affine.quantize_model(model, "absmax", axis=0)`` for W8A8. The outputs carry no
    gradient through the rounding (chapter 07 adds the straight-through estimator). Static vs
    dynamic: Nagel et al. 2021, §3.1 and §4.2; Wu et al. 2020, §4. Taught in
    notebooks/03_granularity_calibration.ipynb.
    """
    from qlearn.models import linear_layers

    check_module(model)
    mode = check_choice(mode, "mode", MODES)
    bits = check_bits(bits, low=2, high=MAX_BITS)
    symmetric = check_bool(symmetric, "symmetric")
    granularity = check_choice(granularity, "granularity", ACTIVATION_GRANULARITIES)
    if granularity == "token" and mode == "static":
        raise ValueError(
            "granularity: expected 'tensor' in static mode (one calibrated range per layer), "
            "got 'token'"
        )
    layers = list(linear_layers(model))
    if mode == "static":
        ranges = _check_ranges(ranges, [name for name, _ in layers], symmetric)
    elif ranges is not None:
        raise ValueError(
            f"ranges: expected None in dynamic mode (ranges are measured at run time), "
            f"got a {type(ranges).__name__}"
        )
    handle = ActivationQuantization(
        mode=mode, bits=bits, symmetric=symmetric, ranges=ranges, granularity=granularity
    )
    for name, layer in layers:
        lo_hi = None if ranges is None else ranges[name]
        hook = _quantizing_hook(name, bits, symmetric, lo_hi, per_token=granularity == "token")
        handle._handles.append(layer.register_forward_pre_hook(hook))
    return handle


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_range_args(
    method: Any, bits: Any, symmetric: Any, percentile: Any, num_bins: Any
) -> tuple[str, int, bool, float, int]:
    method = check_choice(method, "method", METHODS)
    bits = check_bits(bits, low=2, high=MAX_BITS)
    symmetric = check_bool(symmetric, "symmetric")
    real = isinstance(percentile, numbers.Real) and not isinstance(percentile, bool)
    if real and not 0 < percentile <= 100:  # also rejects NaN
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile}")
    percentile = check_real(percentile, "percentile")
    num_bins = check_int(num_bins, "num_bins", minimum=2)
    if method == KL and not symmetric:
        raise ValueError(
            "symmetric: expected True for method 'kl' (TensorRT's entropy calibration works on "
            "a histogram of |x|, one threshold for both signs), got False"
        )
    return method, bits, symmetric, percentile, num_bins


def _check_lo_hi(lo: Any, hi: Any, symmetric: Any, name: str = "lo") -> tuple[float, float, bool]:
    """A range (lo, hi), lo < hi (each a number or a one-element tensor), symmetric or not."""
    lo, hi = (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in (lo, hi))
    lo, hi = check_real(lo, name), check_real(hi, "hi" if name == "lo" else name)
    if not lo < hi:
        raise ValueError(f"{name}: expected a number below hi ({hi}), got {lo}")
    symmetric = check_bool(lo == -hi if symmetric is None else symmetric, "symmetric")
    if symmetric and lo != -hi:
        raise ValueError(
            f"{name}: expected -hi ({-hi}) for a symmetric range (absmax), got {lo}; "
            f"pass symmetric=False for a zero-point range"
        )
    return lo, hi, symmetric


def _check_ranges(ranges: Any, names: list[str], symmetric: bool) -> dict[str, tuple[float, float]]:
    """``calibrate``'s answer: a (lo, hi) for each of ``names`` and nothing else."""
    if ranges is None:
        raise ValueError(
            "ranges: expected a dict {layer name: (lo, hi)} in static mode (from calibrate), "
            "got None"
        )
    if not isinstance(ranges, dict):
        raise TypeError(f"ranges: expected a dict {{layer name: (lo, hi)}}, got {ranges!r:.60}")
    missing = [name for name in names if name not in ranges]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(
            f"ranges: expected a (lo, hi) for every decoder linear layer, got none for "
            f"{missing[0]!r}{more}"
        )
    unknown = sorted(set(ranges) - set(names))
    if unknown:
        raise ValueError(
            f"ranges: expected only the model's decoder linear layers, got {unknown[0]!r} "
            f"(and {len(unknown) - 1} more unknown)"
        )
    checked = {}
    for name in names:
        pair = ranges[name]
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"ranges[{name!r}]: expected a pair (lo, hi), got {pair!r}")
        lo, hi, _ = _check_lo_hi(pair[0], pair[1], symmetric, name=f"ranges[{name!r}]")
        checked[name] = (lo, hi)
    return checked


def _range_from(
    method: str,
    histogram: AbsHistogram | None,
    fine: LogHistogram | None,
    extremes: tuple[float, float],
    bits: int,
    symmetric: bool,
    percentile: float,
) -> tuple[float, float]:
    """The range by ``method`` from what was seen: the extremes (minmax), the histogram of |x|
    (kl, symmetric percentile) or the fine histogram (asymmetric percentile, mse)."""
    if method == MINMAX:
        return minmax_range(*extremes, bits, symmetric)
    if method == KL:
        return kl_range(histogram, bits)
    if method == PERCENTILE:
        if symmetric:
            return percentile_range_abs(histogram, percentile, extremes, bits)
        return percentile_range_signed(fine, percentile, extremes, bits)
    return mse_range(fine, extremes, bits, symmetric)


def _first_input(args: tuple[Any, ...], module: nn.Module) -> torch.Tensor:
    if not args or not isinstance(args[0], torch.Tensor):
        raise TypeError(
            f"input: expected the {type(module).__name__} to be called with its input as the "
            f"first positional argument, got {len(args)} positional arguments"
        )
    return args[0]


def _observing_hook(name: str, observer: MinMaxObserver) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        observer.observe(_first_input(args, module), name=f"input of {name}")

    return hook


def _quantizing_hook(
    name: str,
    bits: int,
    symmetric: bool,
    lo_hi: tuple[float, float] | None,
    *,
    per_token: bool = False,
) -> Callable[..., tuple[Any, ...]]:
    method = ABSMAX if symmetric else ZEROPOINT

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = _first_input(args, module)
        check_float_tensor(x, f"input of {name}")
        if lo_hi is None and per_token:  # dynamic, one range per row (token)
            rows = x.reshape(-1, x.shape[-1])
            x_hat = fake_quantize(rows, method, bits=bits, axis=0).reshape(x.shape)
        elif lo_hi is None:  # dynamic: chapter 02's quantizer, per tensor, on x's own range
            x_hat = fake_quantize(x, method, bits=bits)
        else:  # static: the calibrated range, values beyond it clipped
            x_hat = quantize_over(x, *lo_hi, bits, symmetric).dequantize()
        return (x_hat, *args[1:])  # a new tensor: q, k and v share their input

    return hook
