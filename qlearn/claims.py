"""What a notebook asserts about numbers that differ from one machine to the next.

A perplexity of a quantized model, a greedy generation, the loss of a model trained in a notebook:
each sits downstream of rounding decisions that a change in the last bit of a float can flip, and
another CPU (other vector instructions, another MKL kernel) changes those last bits. Such numbers
are shown in cells whose output nbval does not compare (tag ``nbval-ignore-output``); what the
text concludes from them is stated with :func:`claim` or :func:`claim_between` in the next cell,
whose output nbval does compare. A claim prints one line starting with ✓ and no machine-dependent
number, so it reads the same on every machine while it holds, and it raises :class:`ClaimFailed`
with the values the day it stops holding. Its tolerance comes from the spread measured across CPU
kernel settings, thread counts and calibration seeds (``scripts/check_portability.py``); the rule
is in docs/design.md, "What nbval compares". Used from notebooks/03_granularity_calibration.ipynb
on.
"""

from __future__ import annotations

import math
from typing import Any

from qlearn._checks import check_bool

__all__ = ["ClaimFailed", "claim", "claim_between"]


class ClaimFailed(AssertionError):  # noqa: N818 (as qlearn.exercises.ExerciseFailed)
    """A claim of the text does not hold for the values this machine computed."""


def claim(statement: str, holds: Any, **values: float) -> None:
    """Print ``✓ statement`` if ``holds``; otherwise raise :class:`ClaimFailed` with ``values``.

    ``statement`` is the sentence of the text, in words (no machine-dependent number in it);
    ``values`` are the numbers it was judged on, reported only when it fails::

        claim("GPTQ's perplexity is below 0.9 × RTN's", gptq < 0.9 * rtn, gptq=gptq, rtn=rtn)
    """
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError(f"statement: expected a non-empty sentence, got {statement!r}")
    if hasattr(holds, "item") and not isinstance(holds, bool):  # a NumPy or torch boolean
        holds = holds.item()
    holds = check_bool(holds, "holds")
    if not holds:
        shown = ", ".join(f"{name} = {_short(value)}" for name, value in values.items())
        raise ClaimFailed(f"{statement}: does not hold here" + (f" ({shown})" if shown else ""))
    print(f"✓ {statement}")


def claim_between(label: str, value: float, low: float, high: float) -> None:
    """Claim ``low <= value <= high`` and print ``✓ label lies in [low, high]``.

    The bounds are part of the printed line, so choose them from the measured spread with room
    to spare (a real regression, not a last-bit change, should fall outside).
    """
    for name, number in (("value", value), ("low", low), ("high", high)):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError(f"{name}: expected a number, got {number!r} ({type(number).__name__})")
    if not low <= high:
        raise ValueError(f"low, high: expected low <= high, got [{low}, {high}]")
    holds = not math.isnan(value) and low <= value <= high
    claim(f"{label} lies in [{low:g}, {high:g}]", holds, **{"value": value})


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)
