"""qlearn.plot: each figure function returns a Figure with the panels and labels it promises."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from qlearn import plot


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_weight_histogram_has_original_and_dequantized_panels():
    original = torch.randn(1000)
    fig = plot.weight_histogram(original, original.round(), title="rounding")
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["original", "dequantized"]
    assert fig._suptitle.get_text() == "rounding"
    counts = sum(patch.get_height() for patch in fig.axes[0].patches)
    assert counts == pytest.approx(1000)


def test_weight_histogram_takes_several_methods_and_a_range():
    original = torch.randn(64, 64)
    versions = {"absmax": original * 0.9, "zero-point": original * 1.1}
    fig = plot.weight_histogram(original, versions, bins=20, range=(-1.0, 1.0))
    assert [ax.get_title() for ax in fig.axes] == ["original", "absmax", "zero-point"]
    assert fig.axes[0].get_xlim()[0] <= -1.0


def test_weight_histogram_bad_input():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="shape"):
        plot.weight_histogram(x, torch.randn(11))
    with pytest.raises(TypeError, match="original"):
        plot.weight_histogram(np.zeros(10), x)
    with pytest.raises(ValueError, match="bins"):
        plot.weight_histogram(x, x, bins=1)
    with pytest.raises(ValueError, match="dequantized"):
        plot.weight_histogram(x, {})


def test_constant_tensor_histogram_does_not_fail():
    fig = plot.weight_histogram(torch.zeros(10), torch.zeros(10))
    assert len(fig.axes) == 2


def test_staircase_and_bar_chart():
    x = torch.linspace(-1, 1, 101)
    fig = plot.quantization_staircase(x, {"4 levels": (x * 2).round() / 2})
    assert fig.axes[0].get_xlabel() == "original value"
    fig = plot.bar_chart(
        {"FP32": 20.3, "INT8": 20.4}, ylabel="perplexity", title="t", reference=20.3
    )
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["FP32", "INT8"]
    with pytest.raises(ValueError, match="values"):
        plot.bar_chart({}, ylabel="y", title="t")


def test_bit_layout_and_spacing_plot():
    fig = plot.bit_layout(0x3C00, "fp16")
    assert "1.0" in fig.axes[0].get_title()
    assert len(fig.axes[0].patches) == 16
    fig = plot.spacing_plot(["fp16", "bf16"])
    assert len(fig.axes[0].get_lines()) == 2


def test_activation_heatmap_is_one_image_on_a_log_scale():
    values = torch.rand(4, 16)
    values[2, 5] = 300.0
    fig = plot.activation_heatmap(values, title="outliers")
    image = fig.axes[0].get_images()[0]
    assert image.get_array().shape == (4, 16)
    assert image.norm.vmax == pytest.approx(300.0)
    with pytest.raises(ValueError, match="values"):
        plot.activation_heatmap(torch.rand(3), title="1-D")


def test_range_histogram_draws_one_line_per_range():
    x = torch.randn(5000)
    fig = plot.range_histogram(x, {"minmax": (-4.0, 4.0), "mse": (-2.5, 2.5)}, title="ranges")
    lines = fig.axes[0].get_lines()
    assert [line.get_xdata()[0] for line in lines] == [4.0, 2.5]
    with pytest.raises(ValueError, match="ranges"):
        plot.range_histogram(x, {}, title="none")
    with pytest.raises(ValueError, match="x"):
        plot.range_histogram(torch.zeros(3), {"a": (-1.0, 1.0)}, title="zeros")


def test_draw_block_draws_every_byte_by_field():
    from qlearn import gguf

    x = (np.random.default_rng(0).standard_normal((1, 256)) * 0.05).astype(np.float32)
    raw = gguf.quantize(x, "Q6_K")[0]
    fig = plot.draw_block(raw, "Q6_K")
    ax = fig.axes[0]
    assert len(ax.patches) == 210
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "ql (128 B)", "qh (64 B)", "scales (16 B)", "d (2 B)"
    ]  # fmt: skip
    assert ax.texts[0].get_text() == f"{raw[0]:02x}"
    with pytest.raises(ValueError, match="210 bytes"):
        plot.draw_block(raw[:100], "Q6_K")
    for qtype, layout in gguf.LAYOUTS.items():
        assert sum(n for _, n in layout) == gguf.BLOCKS[qtype].type_size


def test_draw_block_by_sub_block_assigns_every_bit_of_q4_k_as_the_format_does():
    from qlearn import gguf

    x = (np.random.default_rng(1).standard_normal(256) * 0.05).astype(np.float32)
    raw = gguf.quantize(x, "Q4_K")
    fields = gguf.unpack_block(raw, "Q4_K")
    fig = plot.draw_block(raw, "Q4_K", sub_blocks=True)
    ax = fig.axes[0]
    parts = [patch.get_gid().split(",") for patch in ax.patches if patch.get_gid()]
    rebuilt = {"scales": np.zeros(8, int), "mins": np.zeros(8, int), "q": np.zeros(256, int)}
    header = {"d": 0, "dmin": 0}
    covered = np.zeros((144, 8), int)
    for owner, kind, element, position, first, bits, value_bit in parts:
        position, first, bits, value_bit = int(position), int(first), int(bits), int(value_bit)
        covered[position, first : first + bits] += 1
        value = (int(raw[position]) >> first) & ((1 << bits) - 1)
        if kind in header:
            assert owner == kind
            header[kind] |= value << value_bit
        elif kind == "q":
            rebuilt["q"][32 * int(owner) + int(element)] |= value << value_bit
        else:
            rebuilt["scales" if kind == "scale" else "mins"][int(owner)] |= value << value_bit
    assert (covered == 1).all()  # every bit of the 144 bytes drawn once
    for name in ("scales", "mins", "q"):
        assert np.array_equal(rebuilt[name], fields[name]), name
    assert np.array([header["d"]], np.uint16).view(np.float16)[0] == fields["d"]
    assert np.array([header["dmin"]], np.uint16).view(np.float16)[0] == fields["dmin"]
    assert sum(t.get_text() == f"{raw[0]:02x}" for t in ax.texts) >= 1
    with pytest.raises(ValueError, match="Q4_K only"):
        plot.draw_block(gguf.quantize(np.zeros(256, np.float32), "Q6_K"), "Q6_K", sub_blocks=True)
