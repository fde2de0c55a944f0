"""Interactive explorers for Jupyter (ipywidgets), with their logic in plain, tested functions.

A widget cannot be compared by nbval or clicked by pytest, so every explorer is a thin shell over
functions that take and return plain values, and each comes with a plain function that returns
the figure it draws: tests call those, notebooks (and the rendered site) show them, and the widget
only wires sliders to them.

- the float bit explorer (:func:`float_bit_explorer`, :func:`float_bit_figure`): click bits, see
  the value; IEEE 754-2019 and the FP8/FP4 formats. Taught in notebooks/01_float_formats.ipynb.
- the quantization explorer (:func:`quantization_explorer`, :func:`quantization_figure`,
  :func:`explore_quantization`): bits, method, granularity and clipping range → the histogram
  of the dequantized values and the error, live. Nagel et al., "A White Paper on Neural Network
  Quantization", 2021, §2.2–2.3 (granularity) and §3.1 (clipping). Taught in
  notebooks/03_granularity_calibration.ipynb.
- the GPTQ step-through (:func:`gptq_stepper`, :func:`gptq_step_figure`, :func:`gptq_step`):
  a slider over the columns of a small layer → the weights' change from the original, the
  rounding error of the columns done so far, and how the last column's error spread over the
  columns still to do. Frantar et al., "GPTQ", ICLR 2023, §3 eq. 2–3 and Algorithm 1. Taught in
  notebooks/05_gptq.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch
from matplotlib.figure import Figure

from qlearn import affine, floats, gptq, plot
from qlearn._checks import (
    check_bits,
    check_bool,
    check_choice,
    check_float_tensor,
    check_group_size,
    check_int,
    check_positive,
)

__all__ = [
    "GRANULARITIES",
    "GPTQStep",
    "QuantizationView",
    "describe_code",
    "explore_quantization",
    "float_bit_explorer",
    "float_bit_figure",
    "gptq_step",
    "gptq_step_figure",
    "gptq_stepper",
    "quantization_explorer",
    "quantization_figure",
    "toggle_bit",
]

GRANULARITIES: Final = ("per-tensor", "per-channel", "per-group")
"""One scale for the tensor, one per row (output channel), one per group of a row."""

_FIELD_STYLE = {"sign": "danger", "exponent": "info", "mantissa": "success"}


def toggle_bit(code: int, position: int, fmt: str) -> int:
    """Flip one bit of ``code``; ``position`` 0 is the leftmost (sign) bit.

    Taught in notebooks/01_float_formats.ipynb (the bit explorer).
    """
    bits = floats.format_info(fmt).bits
    position = check_int(position, "position")
    if not 0 <= position < bits:
        raise ValueError(f"position: expected 0 to {bits - 1} for {fmt}, got {position}")
    floats.decode(code, fmt)  # validates code
    return code ^ (1 << (bits - 1 - position))


def describe_code(code: int, fmt: str) -> str:
    """One line about ``code``: its fields, its kind and its value, as the explorer shows it."""
    decoded = floats.decode(code, fmt)
    return f"{fmt} {decoded.bits}  ({decoded.kind})  {decoded.formula}"


def float_bit_figure(value: float, fmt: str = "fp16") -> Figure:
    """The explorer's picture without the buttons: the bits of ``value`` in ``fmt`` (saturating
    to the format's largest value), coloured by field, with the value they store.

    Taught in notebooks/01_float_formats.ipynb.
    """
    code = floats.encode(value, fmt, saturate=True)
    decoded = floats.decode(code, fmt)
    return plot.bit_layout(
        code, fmt, title=f"{value!r} in {fmt}: {decoded.kind}, {decoded.value!r}"
    )


def float_bit_explorer(fmt: str = "fp16", *, value: float = 1.0):  # -> ipywidgets.Widget
    """A row of bit buttons for ``fmt``: click a bit, see the value; switch formats in a menu.

    Taught in notebooks/01_float_formats.ipynb.
    """
    import ipywidgets as w

    state = {"fmt": fmt, "code": floats.encode(value, fmt, saturate=True)}
    menu = w.Dropdown(options=list(floats.FORMATS), value=fmt, description="format")
    row = w.HBox()
    label = w.HTML()

    def field_of(i: int) -> str:
        info = floats.format_info(state["fmt"])
        return "sign" if i == 0 else "exponent" if i <= info.exponent_bits else "mantissa"

    def refresh() -> None:
        info = floats.format_info(state["fmt"])
        text = format(state["code"], f"0{info.bits}b")
        buttons = []
        for i, bit in enumerate(text):
            button = w.ToggleButton(
                value=bit == "1",
                description=bit,
                button_style=_FIELD_STYLE[field_of(i)],
                layout=w.Layout(width="30px", padding="0"),
            )
            button.observe(lambda change, i=i: flip(i), names="value")
            buttons.append(button)
        row.children = buttons
        label.value = f"<code>{describe_code(state['code'], state['fmt'])}</code>"

    def flip(i: int) -> None:
        state["code"] = toggle_bit(state["code"], i, state["fmt"])
        refresh()

    def switch(change: dict) -> None:
        current = floats.decode(state["code"], state["fmt"]).value
        state["fmt"] = change["new"]
        state["code"] = floats.encode(current, state["fmt"], saturate=True)
        refresh()

    menu.observe(switch, names="value")
    refresh()
    return w.VBox([menu, row, label])


@dataclass(frozen=True, eq=False)
class QuantizationView:
    """What the quantization explorer shows for one setting of its controls.

    ``dequantized``: the values after quantization and dequantization (float32, ``x``'s shape);
    ``error``: :func:`qlearn.affine.quantization_error` against the original (``mse``,
    ``max_abs``, ``sqnr_db``); ``clipped``: the fraction of values outside the clipping range;
    ``bits_per_weight``: storage with FP16 scales; ``label``: the setting in words.
    """

    dequantized: torch.Tensor
    error: dict[str, float]
    clipped: float
    bits_per_weight: float
    label: str


def explore_quantization(
    x: torch.Tensor,
    *,
    bits: int = 4,
    method: str = affine.ABSMAX,
    granularity: str = "per-channel",
    group_size: int = 64,
    clip: float = 1.0,
) -> QuantizationView:
    """Quantize ``x`` as the explorer's controls say and measure the error.

    ``granularity``: one of :data:`GRANULARITIES` (per-channel: one scale per row, ``x`` at least
    2-D; per-group: ``group_size`` consecutive values of a row). ``clip`` in (0, 1] shrinks each
    block's range to that fraction of its own (absmax: [−c·max|x|, c·max|x|]; zero-point:
    [c·min(x, 0), c·max(x, 0)]); values beyond it land on the end codes, as in
    ``qlearn.calibration.clip_quantize``. ``clip=1`` is chapter 02's quantizer exactly. Nagel et
    al. 2021, §2.3 and §3.1. Taught in notebooks/03_granularity_calibration.ipynb.
    """
    check_float_tensor(x, "x")
    check_choice(method, "method", affine.METHODS)
    check_choice(granularity, "granularity", GRANULARITIES)
    bits = check_bits(bits, low=2, high=16)
    clip = check_positive(clip, "clip")
    if clip > 1:
        raise ValueError(f"clip: expected a fraction of the range in (0, 1], got {clip}")
    if x.ndim == 0 or (granularity == "per-channel" and x.ndim < 2):
        raise ValueError(
            f"x: expected at least {2 if granularity == 'per-channel' else 1} dimension(s) for "
            f"{granularity} scales, got shape {tuple(x.shape)}"
        )
    axis = 0 if granularity == "per-channel" else None
    groups = check_group_size(group_size, x.shape[-1]) if granularity == "per-group" else None
    x = x.detach().float()
    clipped = _clip_blocks(x, clip, method, axis, groups)
    q = affine.quantize(clipped, method, bits=bits, axis=axis, group_size=groups)
    dequantized = q.dequantize()
    where = f"{granularity} ({groups})" if groups else granularity
    return QuantizationView(
        dequantized=dequantized,
        error=affine.quantization_error(x, dequantized),
        clipped=float((clipped != x).float().mean()),
        bits_per_weight=q.bits_per_weight(),
        label=f"{bits}-bit {method}, {where}, clip {clip:.0%}",
    )


def quantization_figure(
    x: torch.Tensor,
    *,
    bits: int = 4,
    method: str = affine.ABSMAX,
    granularity: str = "per-channel",
    group_size: int = 64,
    clip: float = 1.0,
) -> Figure:
    """The quantization explorer's picture for one setting: histograms of ``x`` and of its
    dequantized values (:func:`qlearn.plot.weight_histogram`), the error in the title.

    Arguments as :func:`explore_quantization`. Taught in
    notebooks/03_granularity_calibration.ipynb.
    """
    view = explore_quantization(
        x, bits=bits, method=method, granularity=granularity, group_size=group_size, clip=clip
    )
    return _view_figure(x, view)


def quantization_explorer(
    x: torch.Tensor,
    *,
    bits: int = 4,
    method: str = affine.ABSMAX,
    granularity: str = "per-channel",
    group_size: int = 64,
    clip: float = 1.0,
):  # -> ipywidgets.Widget
    """Sliders for bits, method, granularity, group size and clipping; the histogram and the
    error follow each change. Arguments as :func:`explore_quantization` (the starting point).

    Returns a ``VBox``: the controls, a line with the error, and the figure. Taught in
    notebooks/03_granularity_calibration.ipynb.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    explore_quantization(  # fail here, on bad arguments, rather than inside a callback
        x, bits=bits, method=method, granularity=granularity, group_size=group_size, clip=clip
    )
    sizes = [g for g in (16, 32, 64, 128, 256, 512) if x.shape[-1] % g == 0] or [x.shape[-1]]
    controls = {
        "bits": w.IntSlider(value=bits, min=2, max=8, description="bits"),
        "method": w.ToggleButtons(options=list(affine.METHODS), value=method),
        "granularity": w.Dropdown(options=list(GRANULARITIES), value=granularity),
        "group_size": w.Dropdown(
            options=sizes,
            value=group_size if group_size in sizes else sizes[0],
            description="group size",
        ),
        "clip": w.FloatSlider(
            value=clip, min=0.05, max=1.0, step=0.05, description="clip", readout_format=".0%"
        ),
    }
    label = w.HTML()
    out = w.Output()

    def refresh(*_: object) -> None:
        view = explore_quantization(x, **{k: c.value for k, c in controls.items()})
        e = view.error
        label.value = (
            f"<code>{view.label}: SQNR {e['sqnr_db']:.1f} dB, MSE {e['mse']:.3g}, "
            f"max error {e['max_abs']:.3g}, {100 * view.clipped:.2f} % clipped, "
            f"{view.bits_per_weight:.3f} bits per weight</code>"
        )
        with out:
            out.clear_output(wait=True)
            fig = _view_figure(x, view)
            display(fig)
            plt.close(fig)

    for control in controls.values():
        control.observe(refresh, names="value")
    refresh()
    return w.VBox(
        [w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:]), label, out]
    )


@dataclass(frozen=True, eq=False)
class GPTQStep:
    """GPTQ's state after quantizing columns 0 … ``column`` of a layer (one column at a time).

    ``original``: the input weight [out, in] (in the computation's dtype); ``weight``: the state:
    columns 0 … ``column`` hold their quantized values, the later ones the values the updates
    moved them to; ``codes`` [out, column + 1]: the codes of the done columns; ``error``
    [out, column + 1]: each done column's rounding error w − q, w being its value when its turn
    came; ``spread`` [out, in]: what the update after column ``column`` added to the later
    columns (zero elsewhere); ``column``, ``bits``. Frantar et al. 2023, Algorithm 1.
    Taught in notebooks/05_gptq.ipynb.
    """

    original: torch.Tensor
    weight: torch.Tensor
    codes: torch.Tensor
    error: torch.Tensor
    spread: torch.Tensor
    column: int
    bits: int


def gptq_step(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 3,
    column: int = 0,
    sym: bool = False,
    percdamp: float = gptq.DEFAULT_PERCDAMP,
) -> GPTQStep:
    """Run GPTQ's column loop on ``weight`` [out, in] up to and including ``column``.

    The plain optimal-brain-surgeon update, one column at a time and without lazy batches
    (Frantar et al. 2023, §3 eq. 2–3): quantize column q (GPTQ's per-row min/max quantizer,
    :func:`qlearn.gptq.fit_quantizer`, fitted on the original weights), then
    W[:, F] −= (w − q) / [H_F⁻¹]_qq · (H_F⁻¹)_q,: over the columns F still to do, reading
    (H_F⁻¹)_q,: from the upper Cholesky factor of H⁻¹ (§4 step 3, eq. 5): the loop of
    :func:`qlearn.gptq.obs_step_` over :func:`qlearn.gptq.prepare_hessian`'s W and Hinv.
    ``hessian``: [in, in], e.g. from :class:`qlearn.gptq.HessianAccumulator`; dead inputs and
    damping as :func:`qlearn.gptq.gptq_quantize`, whose result (with one scale per row and
    ``block_size=in``) the state after the last column equals exactly. Taught in
    notebooks/05_gptq.ipynb.
    """
    check_float_tensor(weight, "weight", ndim=2)
    columns = weight.shape[1]
    bits = check_bits(bits, low=2, high=8)
    column = check_int(column, "column", minimum=0)
    if column >= columns:
        raise ValueError(f"column: expected a column of weight, 0 to {columns - 1}, got {column}")
    sym = check_bool(sym, "sym")

    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        original = weight.detach().to(dtype, copy=True)
        # One scale and zero per row, fitted on the original weights, as GPTQ fits them.
        scale, zero = gptq.fit_quantizer(original, bits, sym=sym)
        # Dead inputs (H_ii = 1, weight 0), damping, Hinv row q: (H_F⁻¹)_q,: / √[H_F⁻¹]_qq.
        W, Hinv = gptq.prepare_hessian(original, hessian, percdamp=percdamp)
        codes = torch.empty(W.shape[0], column + 1, dtype=dtype)
        error = torch.empty_like(codes)
        spread = torch.zeros_like(W)
        for q in range(column + 1):
            w = W[:, q].clone()  # the column as the updates so far left it
            step = gptq.obs_step_(W, Hinv, q, scale, zero, bits)
            codes[:, q] = step.codes
            error[:, q] = w - step.quantized
            if q == column:
                spread[:, q + 1 :] = -step.update
    return GPTQStep(
        original=original,
        weight=W,
        codes=codes.to(torch.uint8),
        error=error,
        spread=spread,
        column=column,
        bits=bits,
    )


def gptq_step_figure(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 3,
    column: int = 0,
    sym: bool = False,
    percdamp: float = gptq.DEFAULT_PERCDAMP,
) -> Figure:
    """The GPTQ step-through's picture after column ``column`` (arguments as :func:`gptq_step`).

    Top: the change of every weight from the original (columns up to ``column`` quantized, the
    later ones moved by the updates); middle: the RMS rounding error of each done column; bottom:
    the RMS change that column ``column``'s error made to each column still to do.
    Frantar et al. 2023, Algorithm 1. Taught in notebooks/05_gptq.ipynb.
    """
    step = gptq_step(weight, hessian, bits=bits, column=column, sym=sym, percdamp=percdamp)
    return _step_figure(step)


def gptq_stepper(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 3,
    column: int = 0,
    sym: bool = False,
    percdamp: float = gptq.DEFAULT_PERCDAMP,
):  # -> ipywidgets.Widget
    """A slider over the columns of ``weight`` (and one for the bits): the figure of
    :func:`gptq_step_figure` and a line with the layer's error follow it. Use a small layer
    (a few dozen columns): every move reruns the loop from column 0.

    Arguments as :func:`gptq_step` (the starting point). Returns a ``VBox``: the sliders, the
    line, the figure. Taught in notebooks/05_gptq.ipynb.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    gptq_step(  # fail here, on bad arguments, rather than inside a callback
        weight, hessian, bits=bits, column=column, sym=sym, percdamp=percdamp
    )
    controls = {
        "column": w.IntSlider(value=column, min=0, max=weight.shape[1] - 1, description="column"),
        "bits": w.IntSlider(value=bits, min=2, max=8, description="bits"),
    }
    label = w.HTML()
    out = w.Output()

    def refresh(*_: object) -> None:
        step = gptq_step(
            weight,
            hessian,
            bits=controls["bits"].value,
            column=controls["column"].value,
            sym=sym,
            percdamp=percdamp,
        )
        # ½ tr(ΔHΔᵀ) of the layer as it stands: done columns quantized, the rest moved
        loss = gptq.layer_error(step.original, step.weight, hessian.to(step.weight.dtype))
        label.value = (
            f"<code>{step.bits}-bit, columns 0-{step.column} quantized: RMS rounding error "
            f"{_rms(step.error):.3g}; the layer's output error so far {loss:.3g}</code>"
        )
        with out:
            out.clear_output(wait=True)
            fig = _step_figure(step)
            display(fig)
            plt.close(fig)

    for control in controls.values():
        control.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox(list(controls.values())), label, out])


def _clip_blocks(
    x: torch.Tensor, clip: float, method: str, axis: int | None, group_size: int | None
) -> torch.Tensor:
    """Clamp each block (tensor, row or group) of ``x`` to ``clip`` times its own range."""
    if clip == 1.0:
        return x
    if group_size is not None:
        blocks = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
        dims: list[int] = [-1]
    else:
        blocks = x
        dims = [d for d in range(x.ndim) if d != axis] if axis is not None else list(range(x.ndim))
    lo = blocks.amin(dim=dims, keepdim=True)
    hi = blocks.amax(dim=dims, keepdim=True)
    if method == affine.ABSMAX:
        hi = torch.maximum(-lo, hi) * clip
        lo = -hi
    else:
        lo, hi = lo.clamp(max=0) * clip, hi.clamp(min=0) * clip
    return torch.minimum(torch.maximum(blocks, lo), hi).reshape(x.shape)


def _view_figure(x: torch.Tensor, view: QuantizationView) -> Figure:
    e = view.error
    return plot.weight_histogram(
        x.detach().float(),
        {view.label: view.dequantized},
        title=f"{view.label}: SQNR {e['sqnr_db']:.1f} dB, {100 * view.clipped:.1f} % of values "
        "clipped",
    )


def _rms(x: torch.Tensor, dim: int | None = None) -> torch.Tensor | float:
    """Root mean square, over ``dim`` (a tensor) or over everything (a float)."""
    if dim is None:
        return float(x.double().square().mean().sqrt())
    return x.double().square().mean(dim=dim).sqrt()


def _step_figure(step: GPTQStep) -> Figure:
    import matplotlib.pyplot as plt

    columns = step.weight.shape[1]
    done, left = step.column + 1, columns - step.column - 1
    change = (step.weight - step.original).double()
    fig, axes = plt.subplots(
        3,
        1,
        figsize=(9, 7.5),
        sharex=True,
        gridspec_kw={"height_ratios": [2.2, 1, 1]},
        layout="constrained",
    )
    limit = float(change.abs().max()) or 1.0
    image = axes[0].imshow(
        change.numpy(),
        aspect="auto",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
        extent=(-0.5, columns - 0.5, change.shape[0] - 0.5, -0.5),
    )
    # One colorbar beside all three panels keeps their columns aligned.
    fig.colorbar(image, ax=list(axes), label="change from original", shrink=0.45, anchor=(0.0, 1.0))
    axes[0].set_ylabel("row (output)")
    axes[0].set_title("weight − original")
    x = torch.arange(columns)
    rounding = torch.zeros(columns, dtype=torch.float64)
    rounding[:done] = _rms(step.error, 0)
    spread = _rms(step.spread, 0)
    axes[1].bar(x.numpy(), rounding.numpy(), color=plot.QUANT_COLORS[0])
    axes[1].set_ylabel("RMS w − q")
    axes[1].set_title(f"rounding error of the {done} done column(s)")
    axes[2].bar(x.numpy(), spread.numpy(), color=plot.QUANT_COLORS[1])
    axes[2].set_ylabel("RMS update")
    axes[2].set_title(f"what column {step.column}'s error changed in each later column")
    axes[2].set_xlabel("column (input)")
    for ax in axes:
        ax.axvline(step.column + 0.5, color="grey", lw=1, ls="--")
    fig.suptitle(
        f"GPTQ {step.bits}-bit, column {step.column}: its rounding error "
        f"(RMS {_rms(step.error[:, -1]):.2g}) is spread over the {left} column(s) still to do"
    )
    return fig
