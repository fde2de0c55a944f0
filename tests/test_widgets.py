"""qlearn.widgets: the explorers' logic, tested without a browser."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from qlearn import affine, calibration, floats, gptq, widgets


def test_toggle_bit_flips_sign_exponent_and_mantissa():
    one = floats.encode(1.0, "fp16")  # 0x3C00
    assert floats.decode(widgets.toggle_bit(one, 0, "fp16"), "fp16").value == -1.0
    assert floats.decode(widgets.toggle_bit(one, 15, "fp16"), "fp16").value == 1 + 2**-10
    assert floats.decode(widgets.toggle_bit(one, 5, "fp16"), "fp16").value == 0.5
    assert floats.decode(widgets.toggle_bit(one, 1, "fp16"), "fp16").kind == "inf"
    assert widgets.toggle_bit(widgets.toggle_bit(one, 7, "fp16"), 7, "fp16") == one


def test_toggle_bit_bad_position():
    with pytest.raises(ValueError, match="position"):
        widgets.toggle_bit(0, 8, "fp8_e4m3")


def test_describe_code_names_kind_and_value():
    text = widgets.describe_code(floats.encode(1.0, "bf16"), "bf16")
    assert "normal" in text and "1.0" in text


def test_explorer_builds_one_button_per_bit_and_follows_clicks():
    explorer = widgets.float_bit_explorer("fp8_e4m3", value=1.0)
    menu, row, label = explorer.children
    assert len(row.children) == 8
    row.children[0].value = not row.children[0].value  # click the sign bit
    assert "-1.0" in label.value
    menu.value = "fp16"
    assert len(explorer.children[1].children) == 16
    assert "-1.0" in explorer.children[2].value


# --------------------------------------------------------------------------------------------
# The float bit explorer's figure
# --------------------------------------------------------------------------------------------


def test_float_bit_figure_draws_one_box_per_bit_and_names_the_value():
    fig = widgets.float_bit_figure(0.1, "bf16")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == list(format(floats.encode(0.1, "bf16"), "016b"))
    assert "0.10009765625" in ax.get_title()  # bf16's nearest value to 0.1
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The quantization explorer: compared with qlearn.calibration.clip_quantize (a different code
# path: one explicit range per call) and with qlearn.affine at clip 1
# --------------------------------------------------------------------------------------------


def _weights(rows: int = 8, columns: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, columns, generator=g) * torch.logspace(-1, 0, rows).unsqueeze(1)
    w[3, 5] = 6.0  # one outlier
    return w


@pytest.mark.parametrize("method", ["absmax", "zeropoint"])
def test_explorer_per_tensor_clipping_equals_clip_quantize(method):
    w = _weights()
    view = widgets.explore_quantization(
        w, bits=4, method=method, granularity="per-tensor", clip=0.4
    )
    if method == "absmax":
        lo, hi = -0.4 * float(w.abs().max()), 0.4 * float(w.abs().max())
    else:
        lo, hi = 0.4 * min(float(w.min()), 0.0), 0.4 * max(float(w.max()), 0.0)
    expected = calibration.clip_quantize(
        w, lo, hi, bits=4, symmetric=method == "absmax"
    ).dequantize()
    torch.testing.assert_close(view.dequantized, expected, rtol=1e-6, atol=1e-7)
    assert view.clipped == pytest.approx(float(((w < lo) | (w > hi)).float().mean()))


def test_explorer_per_channel_clipping_equals_clip_quantize_row_by_row():
    w = _weights()
    view = widgets.explore_quantization(
        w, bits=3, method="absmax", granularity="per-channel", clip=0.7
    )
    for row, got in zip(w, view.dequantized, strict=True):
        a = 0.7 * float(row.abs().max())
        expected = calibration.clip_quantize(row, -a, a, bits=3).dequantize()
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("granularity", "kwargs"),
    [("per-tensor", {}), ("per-channel", {"axis": 0}), ("per-group", {"group_size": 16})],
)
def test_explorer_without_clipping_is_chapter_02s_quantizer(granularity, kwargs):
    w = _weights()
    view = widgets.explore_quantization(
        w, bits=4, method="zeropoint", granularity=granularity, group_size=16
    )
    q = affine.zeropoint_quantize(w, 4, **kwargs)
    assert torch.equal(view.dequantized, q.dequantize())
    assert view.error == affine.quantization_error(w, q)
    assert view.clipped == 0.0
    assert view.bits_per_weight == q.bits_per_weight()


def test_explorer_error_falls_with_bits_and_with_finer_granularity():
    w = _weights(16, 256)
    sqnr = {
        (bits, g): widgets.explore_quantization(w, bits=bits, granularity=g, group_size=32).error[
            "sqnr_db"
        ]
        for bits in (3, 4, 8)
        for g in ("per-tensor", "per-channel", "per-group")
    }
    for g in ("per-tensor", "per-channel", "per-group"):
        assert sqnr[3, g] < sqnr[4, g] < sqnr[8, g]
    for bits in (3, 4, 8):
        assert sqnr[bits, "per-tensor"] < sqnr[bits, "per-channel"] < sqnr[bits, "per-group"]


def test_quantization_figure_shows_both_histograms_and_the_error():
    w = _weights()
    fig = widgets.quantization_figure(w, bits=4, granularity="per-group", group_size=16, clip=0.5)
    view = widgets.explore_quantization(w, bits=4, granularity="per-group", group_size=16, clip=0.5)
    assert [ax.get_title() for ax in fig.axes] == ["original", view.label]
    assert f"SQNR {view.error['sqnr_db']:.1f} dB" in fig._suptitle.get_text()
    counts = sum(patch.get_height() for patch in fig.axes[1].patches[:150])
    assert counts == pytest.approx(w.numel())
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bits": 1}, ValueError, "bits"),
        ({"bits": 4.0}, TypeError, "bits"),
        ({"method": "minmax"}, ValueError, "method"),
        ({"granularity": "per-row"}, ValueError, "granularity"),
        ({"granularity": "per-group", "group_size": 7}, ValueError, "group_size"),
        ({"clip": 0.0}, ValueError, "clip"),
        ({"clip": 1.5}, ValueError, "clip"),
        ({"clip": "all"}, TypeError, "clip"),
    ],
)
def test_explore_quantization_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        widgets.explore_quantization(_weights(), **kwargs)


def test_explore_quantization_bad_tensors():
    with pytest.raises(ValueError, match="2 dimension"):
        widgets.explore_quantization(torch.randn(10), granularity="per-channel")
    with pytest.raises(TypeError, match="x"):
        widgets.explore_quantization(torch.arange(10))
    with pytest.raises(ValueError, match="finite"):
        widgets.explore_quantization(torch.tensor([[1.0, float("nan")]]))


def test_quantization_explorer_follows_its_controls(capsys):
    w = _weights()
    explorer = widgets.quantization_explorer(w, bits=8, granularity="per-tensor")
    first_row, second_row, label, _ = explorer.children
    bits, method, granularity = first_row.children
    group_size, clip = second_row.children
    assert "8-bit absmax, per-tensor, clip 100%" in label.value
    bits.value = 3
    assert "3-bit absmax" in label.value
    method.value = "zeropoint"
    assert "3-bit zeropoint" in label.value
    method.value = "absmax"
    granularity.value = "per-group"
    group_size.value = 32
    clip.value = 0.5
    view = widgets.explore_quantization(w, bits=3, granularity="per-group", group_size=32, clip=0.5)
    assert f"SQNR {view.error['sqnr_db']:.1f} dB" in label.value
    assert "per-group (32)" in label.value
    with pytest.raises(ValueError, match="clip"):
        widgets.quantization_explorer(w, clip=2.0)


# --------------------------------------------------------------------------------------------
# The GPTQ step-through: compared with qlearn.gptq.gptq_quantize (lazy batches, a different
# loop) and with the closed form of the optimal update of the columns still to do
# --------------------------------------------------------------------------------------------


def _layer(rows: int = 10, columns: int = 24, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, columns, generator=g, dtype=dtype)
    X = torch.randn(300, columns, generator=g, dtype=dtype)
    X = X @ (torch.eye(columns, dtype=dtype) + 0.3 * torch.randn(columns, columns, generator=g))
    X[:, 5] = 0  # a dead input
    return W, 2 * X.T @ X / X.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("bits", "sym"), [(2, False), (3, False), (4, True)])
def test_gptq_step_after_the_last_column_equals_gptq_quantize(dtype, bits, sym):
    W, H = _layer(dtype=dtype)
    step = widgets.gptq_step(W, H, bits=bits, column=W.shape[1] - 1, sym=sym)
    reference = gptq.gptq_quantize(W, H, bits=bits, sym=sym, block_size=W.shape[1])
    assert torch.equal(step.weight, reference.weight)
    assert torch.equal(step.codes, reference.codes)
    assert torch.equal(step.original, W)


@pytest.mark.parametrize("column", [0, 7, 15])
def test_gptq_step_leaves_the_optimal_update_of_the_columns_still_to_do(column):
    # With columns Q = 0..column fixed at their quantized values, the output error
    # tr(ΔHΔᵀ) is smallest for Ŵ_F = W_F + Δ_Q H_QF H_FF⁻¹ (Δ_Q = W_Q − Ŵ_Q): GPTQ's sequence
    # of OBS updates must land there (Frantar et al. 2023, §3; H damped as GPTQ does).
    W, H = _layer()
    step = widgets.gptq_step(W, H, bits=3, column=column)
    Hd = H.clone()
    dead = Hd.diagonal() == 0
    Hd[dead, dead] = 1
    Hd += 0.01 * Hd.diagonal().mean() * torch.eye(W.shape[1], dtype=W.dtype)
    W0 = W.clone()
    W0[:, dead] = 0
    q, f = slice(0, column + 1), slice(column + 1, None)
    delta_q = W0[:, q] - step.weight[:, q]
    expected = W0[:, f] + delta_q @ Hd[q, f] @ torch.linalg.inv(Hd[f, f])
    torch.testing.assert_close(step.weight[:, f], expected, rtol=1e-9, atol=1e-9)


def test_gptq_step_done_columns_are_on_the_grid_and_the_spread_is_the_last_update():
    W, H = _layer()
    before = widgets.gptq_step(W, H, bits=3, column=8)
    step = widgets.gptq_step(W, H, bits=3, column=9)
    fitted = gptq.rtn_quantize(W, bits=3)  # the same per-row scale and zero, fitted on W
    scale, zero = fitted.scale, fitted.zero.double()
    assert int(step.codes.max()) <= 7
    torch.testing.assert_close(step.weight[:, :10], scale * (step.codes.double() - zero))
    torch.testing.assert_close(step.weight[:, 10:], before.weight[:, 10:] + step.spread[:, 10:])
    assert not step.spread[:, :10].any()
    torch.testing.assert_close(step.error[:, :9], before.error)
    torch.testing.assert_close(step.error[:, 9], before.weight[:, 9] - step.weight[:, 9])


def test_gptq_step_figure_shows_the_change_the_errors_and_the_spread():
    W, H = _layer()
    step = widgets.gptq_step(W, H, bits=3, column=4)
    fig = widgets.gptq_step_figure(W, H, bits=3, column=4)
    heatmap, rounding, spread = fig.axes[:3]
    assert torch.equal(
        torch.from_numpy(heatmap.images[0].get_array().data), step.weight - step.original
    )
    heights = torch.tensor([p.get_height() for p in rounding.patches], dtype=torch.float64)
    torch.testing.assert_close(heights[:5], step.error.square().mean(0).sqrt())
    assert not heights[5:].any()
    heights = torch.tensor([p.get_height() for p in spread.patches], dtype=torch.float64)
    torch.testing.assert_close(heights, step.spread.square().mean(0).sqrt())
    assert heights[6:].all() and not heights[:5].any()  # column 5 is dead: H couples it to none
    assert "column 4" in fig._suptitle.get_text() and "19 column(s)" in fig._suptitle.get_text()
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"column": 24}, ValueError, "column"),
        ({"column": -1}, ValueError, "column"),
        ({"column": 1.0}, TypeError, "column"),
        ({"bits": 1}, ValueError, "bits"),
        ({"bits": 9}, ValueError, "bits"),
        ({"sym": 1}, TypeError, "sym"),
        ({"percdamp": -0.1}, ValueError, "percdamp"),
    ],
)
def test_gptq_step_bad_arguments(kwargs, error, match):
    W, H = _layer()
    with pytest.raises(error, match=match):
        widgets.gptq_step(W, H, **kwargs)


def test_gptq_step_bad_tensors():
    W, H = _layer()
    with pytest.raises(ValueError, match="hessian"):
        widgets.gptq_step(W, H[:-1, :-1])
    with pytest.raises(ValueError, match="weight"):
        widgets.gptq_step(W[0], H)
    with pytest.raises(TypeError, match="hessian"):
        widgets.gptq_step(W, H.long())
    with pytest.raises(ValueError, match="finite"):
        widgets.gptq_step(torch.full_like(W, float("nan")), H)
    with pytest.raises(ValueError, match="positive"):
        widgets.gptq_step(W, -torch.eye(W.shape[1], dtype=W.dtype), percdamp=0.0)


def test_gptq_stepper_follows_its_sliders():
    W, H = _layer()
    stepper = widgets.gptq_stepper(W, H, bits=3)
    controls, label, _ = stepper.children
    column, bits = controls.children
    assert column.max == W.shape[1] - 1
    assert "columns 0-0 quantized" in label.value
    column.value = 12
    step = widgets.gptq_step(W, H, bits=3, column=12)
    assert "columns 0-12 quantized" in label.value
    assert f"{step.error.square().mean().sqrt():.3g}" in label.value
    bits.value = 4
    assert label.value.startswith("<code>4-bit")
    column.value = W.shape[1] - 1  # the layer's error after the last column: GPTQ's result's
    reference = gptq.gptq_quantize(W, H, bits=4, block_size=W.shape[1])
    assert f"output error so far {gptq.layer_error(W, reference.weight, H):.3g}" in label.value
    with pytest.raises(ValueError, match="column"):
        widgets.gptq_stepper(W, H, column=99)
