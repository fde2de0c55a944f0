"""Argument checks shared by every public function of qlearn.

Every error the package raises for bad input comes from here, so they all read the same way:
``<argument>: expected <what>, got <what came>``. Functions call these at their top, before any
work, so a learner never meets a crash deep inside torch or a silent NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_axis",
    "check_bits",
    "check_bool",
    "check_choice",
    "check_float_tensor",
    "check_fraction",
    "check_group_size",
    "check_int",
    "check_int_tensor",
    "check_module",
    "check_positive",
    "check_real",
    "check_sequence",
    "describe",
]


def describe(value: Any) -> str:
    """How an error names what came: a tensor by dtype and shape, anything else by repr and type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{value!r} ({type(value).__name__})"


def check_float_tensor(
    x: Any,
    name: str,
    *,
    allow_empty: bool = False,
    finite: bool = True,
    ndim: int | None = None,
) -> None:
    """Raise unless ``x`` is a floating-point tensor (non-empty, finite, of ``ndim`` dims)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float32, float16 or bfloat16), "
            f"got dtype {x.dtype}; convert it with .float() first"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    # One reduction first (NaN/Inf make any sum non-finite); count the culprits only on failure.
    if finite and x.numel() and not _sum_is_finite(x) and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name}: expected finite values, got {n_nan} NaN and {n_inf} Inf "
            f"in a tensor of shape {tuple(x.shape)}"
        )


def check_features(x: Any, in_features: int, name: str = "x") -> None:
    """Raise unless ``x`` is a float tensor whose last dimension is ``in_features``."""
    check_float_tensor(x, name)
    if x.ndim == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"{name}: expected a last dimension of {in_features} (in_features), "
            f"got shape {tuple(x.shape)}"
        )


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Raise unless ``value`` is an integer (a bool is not), at least ``minimum`` if given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected at least {minimum}, got {value}")
    return int(value)


def check_bits(bits: Any, *, low: int, high: int, name: str = "bits") -> int:
    """Raise unless ``low <= bits <= high``; return ``bits``."""
    bits = check_int(bits, name)
    if not low <= bits <= high:
        raise ValueError(f"{name}: expected an integer from {low} to {high}, got {bits}")
    return bits


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Raise unless ``axis`` indexes one of ``ndim`` dimensions; return it as non-negative."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}: expected a dimension from {-ndim} to {ndim - 1} of a {ndim}-D tensor, "
            f"got {axis}"
        )
    return axis % ndim


def check_group_size(
    group_size: Any, dim_size: int, name: str = "group_size", *, must_divide: bool = True
) -> int:
    """Raise unless ``group_size`` is a positive integer that divides ``dim_size``; return it.

    With ``must_divide=False`` it need only be at most ``dim_size``: the last group is then
    shorter, as in GPTQ's and AWQ's reference code (groups of 128 on 576 inputs: 4 × 128 + 64).
    """
    group_size = check_int(group_size, name)
    if group_size <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {group_size}")
    if not must_divide:
        if group_size > dim_size:
            raise ValueError(
                f"{name}: expected at most the number of input columns ({dim_size}), "
                f"got {group_size}"
            )
        return group_size
    if dim_size % group_size:
        raise ValueError(
            f"{name}: expected a divisor of the last dimension ({dim_size}), got {group_size}"
        )
    return group_size


def check_module(value: Any, name: str = "model") -> Any:
    """Raise unless ``value`` is a ``torch.nn.Module``; return it."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(value).__name__}")
    return value


def check_real(value: Any, name: str) -> float:
    """Raise unless ``value`` is a finite real number (int or float, not bool); return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def check_fraction(value: Any, name: str) -> float:
    """Raise unless ``value`` is a number from 0 to 1 (both included); return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number from 0 to 1, got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name}: expected a number from 0 to 1, got {value!r}")
    return float(value)


def check_int_tensor(x: Any, name: str, *, ndim: int | None = None) -> torch.Tensor:
    """Raise unless ``x`` is a tensor of an integer dtype (of ``ndim`` dims if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(x)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    return x


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Raise unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Raise unless ``value`` is True or False (a Python bool, or a NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_positive(value: Any, name: str, *, strict: bool = True) -> float:
    """Raise unless ``value`` is a finite real number > 0 (>= 0 when ``strict`` is False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {describe(value)}")
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        expected = "a finite number > 0" if strict else "a finite number >= 0"
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return float(value)


def _sum_is_finite(x: torch.Tensor) -> bool:
    """True when the sum is finite: then no element is NaN or Inf.

    A false answer may also mean a sum that overflowed; the caller then checks every element.
    """
    with torch.no_grad():
        return bool(torch.isfinite(x.detach().sum()))


def check_sequence(values: Any, name: str, item: Any) -> list[Any]:
    """Raise unless ``values`` is a non-empty sequence (list, tuple, 1-D tensor; not a string)
    whose every entry passes ``item(value, f"{name}[{i}]")``; return the checked entries.

    ``item`` is one of the checks above, e.g. ``check_fraction`` for a grid of α in [0, 1].
    """
    if isinstance(values, torch.Tensor) and values.ndim == 1:
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range)):
        raise TypeError(f"{name}: expected a sequence (a list or a tuple), got {describe(values)}")
    if not values:
        raise ValueError(
            f"{name}: expected a non-empty sequence, got an empty {type(values).__name__}"
        )
    return [item(value, f"{name}[{i}]") for i, value in enumerate(values)]
