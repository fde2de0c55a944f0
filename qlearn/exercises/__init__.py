"""Checks for the chapters' exercises: the learner's answer against qlearn's, on fresh inputs.

Every chapter ends with 4–5 exercises (a prompt, a cell tagged ``solution``, a cell calling the
check: notebooks/01_float_formats.ipynb to notebooks/13_capstone.ipynb). ``check_<name>(answer)``
runs the answer on inputs drawn from generators seeded by ``seed`` (the stored notebooks hold
its output), compares every result with qlearn's implementation, and prints one line starting
with ✓ or raises :class:`ExerciseFailed` with the input, what was expected and what came back;
a lab stub that raises ``NotImplementedError`` is "not implemented yet". Each exercise is a
:class:`Spec` in its chapter's module (``ch01_floats`` … ``ch13_capstone``, list ``SPECS``), the
chapter from the module's name, the number from its place; :data:`EXERCISES` lists them all.
The capstone's design task is measured, not compared: :func:`measure_design` runs a design as
``check_design`` does and returns its :class:`DesignResult` (bits per weight, perplexity).
"""

from __future__ import annotations

from typing import Final

from qlearn._checks import check_int
from qlearn.exercises._runner import Case, Draw, Exercise, ExerciseFailed, Spec, collect
from qlearn.exercises.ch13_capstone import DesignResult, measure_design

EXERCISES: Final[dict[str, Exercise]] = collect(__name__, __path__)
"""Every exercise by the name of its check (``check_<key>``), in course order."""

globals().update({e.check.__name__: e.check for e in EXERCISES.values()})

__all__ = [  # the checks last, in course order
    "EXERCISES",
    "Case",
    "DesignResult",
    "Draw",
    "Exercise",
    "ExerciseFailed",
    "Spec",
    "exercises_of",
    "measure_design",
    *(e.check.__name__ for e in EXERCISES.values()),
]


def exercises_of(chapter: int) -> list[Exercise]:
    """The exercises of one chapter (1–8, 10–13), in the order the notebook poses them."""
    chapter = check_int(chapter, "chapter")
    return [e for e in EXERCISES.values() if e.chapter == chapter]
