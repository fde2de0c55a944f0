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
    "check_choice",
    "check_float_tensor",
    "check_group_size",
    "check_int",
    "check_positive",
]


def _describe(value: Any) -> str:
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
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(x)}")
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


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Raise unless ``value`` is an integer (a bool is not), at least ``minimum`` if given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {_describe(value)}")
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


def check_group_size(group_size: Any, dim_size: int, name: str = "group_size") -> int:
    """Raise unless ``group_size`` is a positive integer that divides ``dim_size``."""
    group_size = check_int(group_size, name)
    if group_size <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {group_size}")
    if dim_size % group_size:
        raise ValueError(
            f"{name}: expected a divisor of the last dimension ({dim_size}), got {group_size}"
        )
    return group_size


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
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
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
