"""The course's figures: weight histograms, bit layouts, number spacing, quantization staircases.

Every function draws on a new matplotlib Figure and returns it, so notebooks show it and tests
inspect it without a display. Titles state the finding; axes carry units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from qlearn._checks import check_float_tensor, check_int

__all__ = [
    "activation_heatmap",
    "bar_chart",
    "bit_layout",
    "draw_block",
    "quantization_staircase",
    "range_histogram",
    "spacing_plot",
    "weight_histogram",
]

ORIGINAL_COLOR = "#4c72b0"
QUANT_COLORS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
FIELD_COLORS = {"sign": "#c44e52", "exponent": "#4c72b0", "mantissa": "#55a868"}


def weight_histogram(
    original: torch.Tensor,
    dequantized: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    title: str | None = None,
    bins: int = 150,
    range: tuple[float, float] | None = None,
) -> Figure:
    """Two (or more) panels: the original weights' histogram, then each dequantized version.

    ``dequantized`` is one tensor, or ``{label: tensor}`` for several methods side by side.
    Each dequantized panel also outlines the original's histogram, so the gaps (values that
    collapsed onto the same code) and the spikes (the codes) stand out. Bars are on a
    logarithmic count axis: the tails, where quantization hurts most, stay visible.
    Used in every chapter from notebooks/02_absmax_zeropoint.ipynb on.
    """
    check_float_tensor(original, "original")
    versions = (
        dict(dequantized) if isinstance(dequantized, Mapping) else {"dequantized": dequantized}
    )
    if not versions:
        raise ValueError("dequantized: expected a tensor or a non-empty mapping of tensors")
    for label, tensor in versions.items():
        check_float_tensor(tensor, f"dequantized[{label!r}]")
        if tensor.shape != original.shape:
            raise ValueError(
                f"dequantized[{label!r}]: expected the original's shape {tuple(original.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
    bins = check_int(bins, "bins")
    if bins < 2:
        raise ValueError(f"bins: expected at least 2, got {bins}")
    values = _numpy(original)
    lo, hi = range if range is not None else (float(values.min()), float(values.max()))
    if not lo < hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    n = 1 + len(versions)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), sharex=True, sharey=True)
    axes[0].hist(values, bins=edges, color=ORIGINAL_COLOR, log=True)
    axes[0].set_title("original")
    for ax, (label, tensor), color in zip(axes[1:], versions.items(), QUANT_COLORS, strict=False):
        ax.hist(_numpy(tensor), bins=edges, color=color, log=True)
        ax.hist(values, bins=edges, histtype="step", color=ORIGINAL_COLOR, lw=0.8, log=True)
        ax.set_title(label)
    for ax in axes:
        ax.set_xlabel("weight value")
    axes[0].set_ylabel("count (log scale)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def bit_layout(code: int, fmt: str, *, title: str | None = None) -> Figure:
    """Draw the bits of ``code`` in float format ``fmt``, coloured by field, with its value.

    Taught in notebooks/01_float_formats.ipynb.
    """
    from qlearn import floats

    decoded = floats.decode(code, fmt)
    info = floats.format_info(fmt)
    fields = ["sign"] + ["exponent"] * info.exponent_bits + ["mantissa"] * info.mantissa_bits
    bits = format(code, f"0{info.bits}b")
    width = max(info.bits * 0.32, 4.0)
    fig, ax = plt.subplots(figsize=(width, 1.5))
    for i, (bit, field) in enumerate(zip(bits, fields, strict=True)):
        ax.add_patch(Rectangle((i, 0), 1, 1, facecolor=FIELD_COLORS[field], edgecolor="white"))
        ax.text(i + 0.5, 0.5, bit, ha="center", va="center", color="white", fontsize=11)
    ax.set_xlim(0, info.bits)
    ax.set_ylim(-0.05, 1.05)
    ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in FIELD_COLORS.values()]
    ax.legend(
        handles,
        FIELD_COLORS.keys(),
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
        fontsize=8,
    )
    ax.set_title(title or f"{fmt}: code 0x{code:0{(info.bits + 3) // 4}x} = {decoded.value!r}")
    fig.tight_layout()
    return fig


def draw_block(
    raw_block: np.ndarray | bytes,
    qtype: str,
    *,
    title: str | None = None,
    sub_blocks: bool = False,
) -> Figure:
    """One GGUF block's bytes, coloured by field (``qlearn.gguf.LAYOUTS``), each cell showing
    its hex value; 16 bytes a row. Gerganov et al., ggml (2023), ``ggml-common.h``'s block
    structs. Taught in notebooks/06_gguf.ipynb.

    ``sub_blocks=True`` (Q4_K only) colours the bits instead by the sub-block they belong to:
    d and dmin, then each sub-block's 6-bit scale and min (mins hatched) in the 12 ``scales``
    bytes, then its 32 four-bit codes in ``qs``; a byte is split where its bits belong to two
    sub-blocks (bit 7 on the left). Each drawn part's ``gid`` reads
    ``"owner,kind,element,byte,first bit,bits,first value bit"`` (owner a sub-block number or
    ``d``/``dmin``; kind ``d``, ``dmin``, ``scale``, ``min`` or ``q``), so a test can rebuild
    every field from the bytes as the figure assigns them.
    """
    from qlearn import gguf

    gguf.unpack_block(raw_block, qtype)  # checks the type and the block's length
    fmt = gguf.BLOCKS[qtype]
    if isinstance(raw_block, np.ndarray):
        raw = np.ascontiguousarray(raw_block).ravel()
    else:
        raw = np.frombuffer(raw_block, dtype=np.uint8)
    if sub_blocks:
        if qtype != "Q4_K":
            raise ValueError(f"sub_blocks: drawn for Q4_K only, got {qtype!r}")
        return _draw_q4_k_sub_blocks(raw, title)
    per_row = 16 if fmt.type_size > 36 else fmt.type_size
    n_rows = -(-fmt.type_size // per_row)
    fields = ["d", "dmin", "m", "scales", "hmask", "qh", "qs", "ql", "e", "scales_h", "scales_l"]
    palette = plt.get_cmap("tab20").colors  # tab10's colours first, then their light shades
    colors = dict(zip(fields, palette[::2] + palette[1::2], strict=False))
    fig, ax = plt.subplots(figsize=(0.32 * per_row + 2.2, 0.32 * n_rows + 0.9))
    position = 0
    for field, size in fmt.layout:
        for _ in range(size):
            row, col = divmod(position, per_row)
            ax.add_patch(Rectangle((col, -row), 1, 1, facecolor=colors[field], edgecolor="white"))
            ax.text(col + 0.5, -row + 0.5, f"{raw[position]:02x}", ha="center", va="center",
                    fontsize=7, color="white", family="monospace")  # fmt: skip
            position += 1
    ax.set_xlim(0, per_row)
    ax.set_ylim(-n_rows + 1, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    handles = [Patch(color=colors[f], label=f"{f} ({n} B)") for f, n in fmt.layout]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
              fontsize=8)  # fmt: skip
    ax.set_title(
        title
        or f"{fmt.name}: {fmt.type_size} bytes hold {fmt.block_size} weights "
        f"({fmt.bits_per_weight:g} bits each)"
    )
    fig.tight_layout()
    return fig


def _q4_k_parts() -> list[tuple[int, int, int, int | str, str, int, int]]:
    """Who owns each bit of a Q4_K block (``get_scale_min_k4`` and ``dequantize_row_q4_K`` of
    ggml-quants.c): (byte, first bit, bits, owner, kind, element, first value bit)."""
    parts: list[tuple[int, int, int, int | str, str, int, int]] = [
        (0, 0, 8, "d", "d", 0, 0), (1, 0, 8, "d", "d", 0, 8),
        (2, 0, 8, "dmin", "dmin", 0, 0), (3, 0, 8, "dmin", "dmin", 0, 8),
    ]  # fmt: skip
    for i in range(4):  # scales bytes 0-3: scale i, top bits of scale i+4; 4-7: the same for mins
        parts += [(4 + i, 0, 6, i, "scale", 0, 0), (4 + i, 6, 2, i + 4, "scale", 0, 4)]
        parts += [(8 + i, 0, 6, i, "min", 0, 0), (8 + i, 6, 2, i + 4, "min", 0, 4)]
        parts += [(12 + i, 0, 4, i + 4, "scale", 0, 0), (12 + i, 4, 4, i + 4, "min", 0, 0)]
    for b in range(128):  # qs: 32 bytes per pair of sub-blocks, low nibble first
        k, element = divmod(b, 32)
        parts += [
            (16 + b, 0, 4, 2 * k, "q", element, 0),
            (16 + b, 4, 4, 2 * k + 1, "q", element, 0),
        ]
    return sorted(parts)


def _draw_q4_k_sub_blocks(raw: np.ndarray, title: str | None) -> Figure:
    per_row, n_rows = 16, 9
    tab = plt.get_cmap("tab10").colors
    colors: dict[int | str, tuple[float, ...] | str] = {
        j: tab[c] for j, c in enumerate((0, 1, 2, 3, 4, 5, 6, 9))
    }
    colors.update({"d": "#333333", "dmin": "#888888"})
    fig, ax = plt.subplots(figsize=(11.5, 5.4))
    for position, first, bits, owner, kind, element, value_bit in _q4_k_parts():
        row, col = divmod(position, per_row)
        left = col + (8 - first - bits) / 8  # bit 7 on the left, bit 0 on the right
        patch = Rectangle((left, -row), bits / 8, 1, facecolor=colors[owner], edgecolor="none",
                          hatch="////" if kind == "min" else None, linewidth=0)  # fmt: skip
        patch.set_gid(f"{owner},{kind},{element},{position},{first},{bits},{value_bit}")
        ax.add_patch(patch)
        if kind in ("scale", "min") and bits >= 4:
            label = f"{'s' if kind == 'scale' else 'm'}{owner}"
            ax.text(left + bits / 16, -row + 0.2, label, ha="center", va="center", fontsize=6,
                    color="white", fontweight="bold")  # fmt: skip
    for position in range(raw.size):
        row, col = divmod(position, per_row)
        ax.add_patch(Rectangle((col, -row), 1, 1, facecolor="none", edgecolor="white", lw=1.5))
        y = -row + (0.62 if 4 <= position < 16 else 0.5)
        ax.text(col + 0.5, y, f"{raw[position]:02x}", ha="center", va="center", fontsize=7,
                color="white", family="monospace")  # fmt: skip
    notes = ["d, dmin (fp16) | 12 bytes: 8 six-bit scales s_j, mins m_j"]
    notes += [f"codes of sub-blocks {2 * k} (low nibbles)\nand {2 * k + 1} (high nibbles), 32 each"
              for k in range(4)]  # fmt: skip
    for row, note in zip((0, 1.5, 3.5, 5.5, 7.5), notes, strict=True):
        ax.annotate(note, (per_row + 0.2, -row + 0.5), fontsize=8, va="center")
    for k in range(4):  # a bracket per pair of rows
        top, bottom = -1 - 2 * k + 1, -1 - 2 * k - 1
        ax.plot([per_row + 0.1] * 2, [top - 0.05, bottom + 0.05], color="black", lw=1)
    handles = [Patch(color=colors["d"], label="d (fp16)"),
               Patch(color=colors["dmin"], label="dmin (fp16)")]  # fmt: skip
    handles += [Patch(color=colors[j], label=f"sub-block {j}") for j in range(8)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="min bits"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.42, 0.0), ncol=6,
              frameon=False, fontsize=8)  # fmt: skip
    ax.set_xlim(0, per_row + 4.2)
    ax.set_ylim(-n_rows + 1, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        title
        or "Q4_K, 144 bytes for 256 weights: d, dmin → each sub-block's 6-bit scale s_j and "
        "min m_j → its 32 codes\nweight l of sub-block j = d·s_j·q_l − dmin·m_j",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def spacing_plot(
    formats: Sequence[str],
    *,
    title: str | None = None,
    magnitude_range: tuple[float, float] = (2.0**-20, 2.0**18),
) -> Figure:
    """Gap to the next representable number vs magnitude, one line per float format (log-log).

    Within a binade the gap is constant; it doubles at each power of two, so relative
    precision stays about the same over the whole range. Magnitudes are drawn within
    ``magnitude_range`` (FP32's full range would flatten the others). Taught in
    notebooks/01_float_formats.ipynb.
    """
    from qlearn import floats

    fig, ax = plt.subplots(figsize=(7, 4))
    for fmt, color in zip(formats, (*QUANT_COLORS, ORIGINAL_COLOR), strict=False):
        info = floats.format_info(fmt)
        lo, hi = max(info.min_subnormal, magnitude_range[0]), min(info.max, magnitude_range[1])
        xs = np.geomspace(lo, hi, 600)
        gaps = [floats.spacing(float(x), fmt) for x in xs]
        ax.step(xs, gaps, where="post", label=fmt, color=color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("magnitude |x|")
    ax.set_ylabel("gap to the next number")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    ax.set_title(title or "The gap grows with the magnitude: precision is relative")
    fig.tight_layout()
    return fig


def quantization_staircase(
    x: torch.Tensor,
    dequantized: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    title: str | None = None,
) -> Figure:
    """Plot dequantized against original values: the staircase a quantizer makes of a line.

    Taught in notebooks/02_absmax_zeropoint.ipynb.
    """
    check_float_tensor(x, "x")
    versions = (
        dict(dequantized) if isinstance(dequantized, Mapping) else {"dequantized": dequantized}
    )
    order = np.argsort(_numpy(x))
    xs = _numpy(x)[order]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, xs, color="grey", lw=0.8, ls="--", label="no error")
    for (label, tensor), color in zip(versions.items(), QUANT_COLORS, strict=False):
        check_float_tensor(tensor, f"dequantized[{label!r}]")
        ax.step(xs, _numpy(tensor)[order], where="mid", color=color, label=label)
    ax.set_xlabel("original value")
    ax.set_ylabel("dequantized value")
    ax.legend()
    ax.set_title(title or "Quantization turns a line into a staircase")
    fig.tight_layout()
    return fig


def bar_chart(
    values: Mapping[str, float],
    *,
    ylabel: str,
    title: str,
    log: bool = False,
    reference: float | None = None,
    reference_label: str = "reference",
) -> Figure:
    """A labelled bar chart of one figure per method (perplexity, error, bytes...)."""
    if not values:
        raise ValueError("values: expected a non-empty mapping of label to number")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(values) + 1.5), 3.6))
    labels = list(values)
    bars = ax.bar(labels, [values[k] for k in labels], color=QUANT_COLORS[0])
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label=reference_label)
        ax.legend()
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def range_histogram(
    x: torch.Tensor,
    ranges: Mapping[str, tuple[float, float]],
    *,
    title: str,
    bins: int = 120,
) -> Figure:
    """Histogram of |x| on log-log axes, with a vertical line where each range clips.

    Heavy-tailed activations need both logarithms: the bulk sits near zero, the outliers
    decades above it. Each range (lo, hi) is drawn at max(|lo|, |hi|). Taught in
    notebooks/03_granularity_calibration.ipynb.
    """
    check_float_tensor(x, "x")
    if not ranges:
        raise ValueError("ranges: expected a non-empty mapping of label to (lo, hi)")
    magnitudes = _numpy(x.abs())
    positive = magnitudes[magnitudes > 0]
    if positive.size == 0:
        raise ValueError("x: expected some non-zero values to draw")
    edges = np.geomspace(positive.min(), positive.max() * 1.0001, bins + 1)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.hist(positive, bins=edges, color=ORIGINAL_COLOR, alpha=0.6, log=True)
    for (label, (lo, hi)), color in zip(ranges.items(), QUANT_COLORS, strict=False):
        clip = max(abs(lo), abs(hi))
        ax.axvline(clip, color=color, lw=1.6, label=f"{label}: {clip:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("|x| (log scale)")
    ax.set_ylabel("count (log scale)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def activation_heatmap(
    values: torch.Tensor,
    *,
    title: str,
    xlabel: str = "input dimension",
    ylabel: str = "layer",
    colorbar_label: str = "max |x|",
) -> Figure:
    """A [rows, columns] map of magnitudes on a logarithmic colour scale (rows top to bottom).

    Used for the layer × dimension picture of outlier features, Dettmers et al. 2022 §4.
    Taught in notebooks/04_llm_int8.ipynb.
    """
    from matplotlib.colors import LogNorm

    check_float_tensor(values, "values", ndim=2)
    data = values.detach().float().abs().cpu().numpy()
    positive = data[data > 0]
    low = float(positive.min()) if positive.size else 1e-3
    fig, ax = plt.subplots(figsize=(9, 3.6))
    image = ax.imshow(
        np.maximum(data, low),
        aspect="auto",
        interpolation="nearest",
        norm=LogNorm(vmin=low, vmax=max(float(data.max()), low * 10)),
        cmap="magma",
    )
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().flatten().cpu().numpy()
