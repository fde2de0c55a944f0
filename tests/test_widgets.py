"""qlearn.widgets: the explorers' logic, tested without a browser."""

from __future__ import annotations

import pytest

from qlearn import floats, widgets


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
