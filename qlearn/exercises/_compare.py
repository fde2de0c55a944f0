"""Comparing a learner's answer with qlearn's, showing values, and drawing test data. A compare
returns ``None`` when the answer is right, else one line saying what differs (where, what was
expected, what came), which the runner puts under the input."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import numpy as np
import torch

MAX_SHOWN: Final = 24  # a tensor with more values is shown by its shape, range and first values


def show(value: Any) -> str:
    """A short, readable description of a value (tensors by their values or their summary)."""
    if isinstance(value, torch.Tensor):
        shape, floating = "×".join(map(str, value.shape)) or "scalar", value.is_floating_point()
        if value.numel() <= MAX_SHOWN:
            values = _rounded(value.tolist()) if floating else value.tolist()
            return f"{values} ({value.dtype}, shape {shape})"
        flat = value.flatten()
        head, finite = flat[:4].tolist(), flat[torch.isfinite(flat)]
        head = _rounded(head) if floating else head
        if not floating:
            span = f", from {int(flat.min())} to {int(flat.max())}"
        elif finite.numel():
            span = f", from {float(finite.min()):.4g} to {float(finite.max()):.4g}"
        else:
            span = ""
        return f"{value.dtype} tensor of shape {shape}{span}, starting {head}"
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return show_bytes(value)
        shown = show(torch.from_numpy(np.ascontiguousarray(value)))
        return "numpy " + shown.replace("torch.", "").replace(" tensor ", " array ")
    if isinstance(value, (tuple, list)):
        if len(value) > 8 and all(isinstance(v, (int, float)) for v in value):
            return f"{len(value)} numbers, {show(list(value[:3]))[:-1]}, ...]"
        inner = ", ".join(show(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "None (did the function forget to return?)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def show_bytes(raw: Any) -> str:
    """Bytes in hex: ``34 bytes: 00 3c ...``."""
    data = np.asarray(raw, dtype=np.uint8).reshape(-1)
    return f"{data.size} bytes: " + " ".join(f"{b:02x}" for b in data.tolist())


def scalar(value: Any) -> Any:
    """A Python number from a number or a one-element tensor (anything else unchanged)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):  # numpy scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def as_bytes(got: Any) -> np.ndarray | str:
    """uint8 numpy bytes from bytes, bytearray, a numpy array or a tensor of values 0–255."""
    if isinstance(got, (bytes, bytearray)):
        return np.frombuffer(bytes(got), dtype=np.uint8)
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
    got = np.asarray(got) if isinstance(got, (list, tuple)) else got
    if not isinstance(got, np.ndarray):
        return f"expected bytes (a uint8 numpy array), got {show(got)}"
    if got.dtype != np.uint8:
        if got.dtype.kind not in "iu" or (got.size and (got.min() < 0 or got.max() > 255)):
            return f"expected bytes (uint8, 0 to 255), got a {got.dtype} array"
        got = got.astype(np.uint8)
    return got.reshape(-1)


def as_tensor(got: Any) -> torch.Tensor | str:
    """``got`` as a tensor (from a list or an array too), or what is wrong with it."""
    if isinstance(got, torch.Tensor):
        return got.detach()
    if isinstance(got, (list, tuple)) or hasattr(got, "__array__"):
        try:
            return torch.as_tensor(got)
        except (TypeError, ValueError, RuntimeError):
            pass
    return f"expected a torch tensor, got {show(got)}"


def compare_number(
    got: Any, expected: float, *, rel: float = 0.0, signed_zero: bool = False
) -> str | None:
    """One number, within ``rel`` relative; NaN must meet NaN; optionally the sign of zero."""
    got = scalar(got)
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {show(got)}"
    got = float(got)
    if math.isnan(expected):
        return None if math.isnan(got) else f"expected NaN (not a number), got {got!r}"
    if math.isnan(got):
        return f"expected {expected!r}, got NaN"
    if got == expected:
        if signed_zero and got == 0 and math.copysign(1, got) != math.copysign(1, expected):
            return f"expected {expected!r}, got {got!r}: the sign of zero differs"
        return None
    if math.isinf(expected) or math.isinf(got) or abs(got - expected) > rel * abs(expected):
        return f"expected {expected!r}, got {got!r}" + (
            f" (off by {abs(got - expected) / abs(expected):.2g} relative)"
            if expected and math.isfinite(got) and math.isfinite(expected)
            else ""
        )
    return None


def compare_fields(
    got: Any,
    expected: tuple,
    labels: tuple[str, ...],
    checks: Sequence[tuple[int, Callable[[Any, Any], str | None]]] | None = None,
) -> str | None:
    """A tuple of ``len(labels)`` values, its parts compared in the order of ``checks``
    ((index, compare(part, wanted)); default: every part as a number, in order). The problem
    names the part: ``largest: expected ...``."""
    if not isinstance(got, (tuple, list)) or len(got) != len(labels):
        return f"expected a tuple of {len(labels)} values ({', '.join(labels)}), got {show(got)}"
    for index, compare in checks or [(i, compare_number) for i in range(len(labels))]:
        problem = compare(got[index], expected[index])
        if problem:
            return f"{labels[index]}: {problem}"
    return None


def codes_then(
    labels: tuple[str, ...], real: Callable[[torch.Tensor, tuple], torch.Tensor], *checks: Any
) -> Callable[[Any, tuple, Any], str | None]:
    """A compare of (codes, *rest): each of ``rest`` by its check (``compare(part, wanted)``),
    then the codes as :func:`compare_codes` does, unrounded ``real(x in float64, expected)``."""

    def compare(got: Any, expected: tuple, case: Any) -> str | None:
        def codes(got: Any, want: torch.Tensor) -> str | None:
            return compare_codes(got, want, real(case.args[0].double(), expected))

        return compare_fields(got, expected, labels, [*enumerate(checks, 1), (0, codes)])

    return compare


def compare_numbers(
    labels: tuple[str, ...], *, rel: float
) -> Callable[[Any, tuple, Any], str | None]:
    """A compare of a tuple of ``len(labels)`` numbers, each within ``rel`` relative."""
    checks = [(i, partial(compare_number, rel=rel)) for i in range(len(labels))]
    return lambda got, expected, case: compare_fields(got, expected, labels, checks)


def compare_choice(
    errors: Callable[..., Sequence[float]],
    names: tuple[str, str, str],
    *,
    rel: float,
    match: tuple[float, float],
) -> Callable[[Any, float, Any], str | None]:
    """A compare of one of the options ``case.args[2]`` whose error (``errors(*case.args)``, one
    per option) is within ``rel`` of the smallest. ``names``: (one option, the options, its
    error), e.g. ("clip", "candidates", "a squared error"); ``match``: (atol, rtol) within which
    a number is that option."""
    one, plural, error = names

    def compare(got: Any, expected: float, case: Any) -> str | None:
        options, value = case.args[2], scalar(got)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected one of the {plural} (a number), got {show(got)}"
        index = min(range(len(options)), key=lambda i: abs(options[i] - value))
        if abs(options[index] - value) > match[0] + match[1] * abs(options[index]):
            return f"expected one of the {plural} (the best is {expected!r}), got {value!r}"
        if options[index] == expected:
            return None
        values = [float(e) for e in errors(*case.args)]
        best, mine = min(values), values[index]
        if mine > best * (1 + rel):
            return (
                f"{one} {options[index]!r} gives {error} of {mine:.6g}; {one} {expected!r} gives "
                f"{best:.6g}"
            )
        return None

    return compare


def compare_tensor(
    got: Any,
    expected: torch.Tensor,
    *,
    rtol: float = 1e-6,
    atol: float = 0.0,
    bits_of: torch.Tensor | None = None,
    ties: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> str | None:
    """Values, exactly when ``rtol = atol = 0``; ``ties`` = (x / step, step): at a tie a value
    may be one step off; ``bits_of``: the inputs, shown with their float32 bits."""
    got = _tensor(got, expected)
    if isinstance(got, str):
        return got
    if not (
        got.is_floating_point()
        or got.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        return f"expected numbers, got a {got.dtype} tensor"
    g, e = got.double(), expected.double()
    same = (g == e) | (torch.isnan(g) & torch.isnan(e))
    if rtol or atol:
        scale = float(e.abs().max()) if e.numel() else 0.0
        same |= (g - e).abs() <= rtol * e.abs() + atol + rtol * 1e-3 * scale
    if ties is not None:
        frac = (ties[0].double().abs() % 1 - 0.5).abs()
        same |= (frac < 1e-4) & ((g - e).abs() <= ties[1].double() * 1.0001)
    if bool(same.all()):
        return None
    index, text = _first(same, "values", expected)
    if bits_of is not None:
        x = bits_of[index]
        text += f"input {float(x)!r} (bits 0x{int(x.view(torch.int32)) & 0xFFFFFFFF:08x}), "
    return text + f"expected {float(e[index])!r}, got {float(g[index])!r}"


def compare_codes(got: Any, expected: torch.Tensor, real: torch.Tensor) -> str | None:
    """Integer codes: equal, except one off where ``real`` (the unrounded code) is a tie."""
    got = _tensor(got, expected)
    if isinstance(got, str):
        return got
    if got.dtype == torch.bool:
        return "expected integer codes, got a bool tensor"
    if got.is_floating_point():
        if not bool(torch.isfinite(got).all()):
            return "expected integer codes, got NaN or inf among them (a division by zero?)"
        if not bool((got == got.round()).all()):
            return "expected integer codes, got values with a fractional part (round them)"
    ties = ((real.abs() % 1) - 0.5).abs() < 1e-4
    diff = (got.double() - expected.double()).abs()
    ok = (diff == 0) | (ties & (diff == 1))
    if bool(ok.all()):
        return None
    index, text = _first(ok, "codes", expected)
    return (
        f"{text}expected {int(expected[index])}, got {float(got[index]):g} "
        f"(unrounded {float(real[index]):.4f})"
    )


def _tensor(got: Any, expected: torch.Tensor) -> torch.Tensor | str:
    got = as_tensor(got)
    if isinstance(got, torch.Tensor) and got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    return got


def _first(ok: torch.Tensor, what: str, expected: torch.Tensor) -> tuple[tuple, str]:
    """The index of the first value not ``ok``, and the start of the line saying so."""
    bad = torch.argwhere(~ok)
    index = tuple(bad[0].tolist())
    where = ", ".join(map(str, index))
    return index, f"{len(bad)} of {expected.numel()} {what} differ; the first at [{where}]: "


def copy_value(value: Any) -> Any:
    """A deep enough copy of an input that an answer writing to it harms no one."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in value.items()}
    return value


def sample(shape: tuple[int, ...], kind: str, g: torch.Generator) -> torch.Tensor:
    """Random test data: "normal", "uniform" (in [−1, 1]), "positive", "negative", "skewed"
    (mostly positive) or "outlier" (normal with a few values 10–40× larger)."""
    x = torch.randn(shape, generator=g)
    if kind == "uniform":
        x = torch.rand(shape, generator=g) * 2 - 1
    elif kind == "positive":
        x = torch.rand(shape, generator=g) * 3 + 0.1
    elif kind == "negative":
        x = -torch.rand(shape, generator=g) * 2 - 0.5
    elif kind == "skewed":
        x = x.abs() * 2 - 0.3
    elif kind == "outlier":
        flat = x.view(-1)
        n = max(1, flat.numel() // 100)
        where = torch.randperm(flat.numel(), generator=g)[:n]
        flat[where] = (torch.rand(n, generator=g) * 30 + 10) * torch.sign(flat[where] + 1e-3)
    return x


def activations(tokens: int, features: int, g: torch.Generator) -> torch.Tensor:
    """N(0, 1) activations with one systematic outlier column (×10 in every token) and one
    isolated large negative value, as Dettmers et al. 2022 §4 describes them."""
    X = torch.randn(tokens, features, generator=g)
    column = int(torch.randint(0, features, (1,), generator=g))
    X[:, column] *= 10
    X[int(torch.randint(0, tokens, (1,), generator=g)), (column + features // 2) % features] = -9.0
    return X


def _rounded(values: Any) -> Any:
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return float(f"{values:.5g}") if math.isfinite(values) else values
