"""Interactive explorers for Jupyter (ipywidgets), with their logic in plain, tested functions.

A widget cannot be compared by nbval or clicked by pytest, so every explorer is a thin shell over
functions that take and return plain values: tests call those, notebooks show the widget.
"""

from __future__ import annotations

from qlearn import floats
from qlearn._checks import check_int

__all__ = ["describe_code", "float_bit_explorer", "toggle_bit"]

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
