"""The generic runner: exercise specs (data) in, ``check_<name>`` functions out. Each
chapter's module (``chNN_*.py``) holds a list ``SPECS``; :func:`collect` turns them into
:class:`Exercise` entries, chapter from the module's name, number from the place in the list."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qlearn._checks import check_int
from qlearn.exercises._compare import compare_number, compare_tensor, copy_value, sample, show

PACKAGE = Path(__file__).resolve().parent  # frames from its files are the checker's


class ExerciseFailed(AssertionError):  # noqa: N818 (the name the course uses)
    """An exercise check found a wrong answer, or none yet. The message says on which input,
    what was expected and what came back; it is an AssertionError, so pytest reports it too."""

    def _render_traceback_(self) -> list[str]:
        """What Jupyter shows (IPython's protocol): the message, not a traceback through the
        checker; when the answer itself raised, first the frames of the answer's own code."""
        lines = []
        if (cause := self.__cause__) is not None:
            frames = traceback.extract_tb(cause.__traceback__)
            frames = [f for f in frames if PACKAGE not in Path(f.filename).resolve().parents]
            lines += traceback.format_list(frames) + traceback.format_exception_only(cause)
        lines.append(f"{type(self).__name__}: {self}")
        return "".join(lines).splitlines()


@dataclass(frozen=True)
class Case:
    """One input: the answer's arguments, a note, how to show some of them (by name), and
    keyword arguments only the reference receives (``context``)."""

    args: tuple
    note: str = ""
    shown: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


class Draw:
    """The random sources of one run of a check, each seeded by ``seed``: ``torch`` (a
    ``torch.Generator``), ``py`` (``random.Random``), ``np`` (numpy's)."""

    def __init__(self, seed: int) -> None:
        self.seed, self.py, self.np = seed, random.Random(seed), np.random.default_rng(seed)
        self.torch = torch.Generator().manual_seed(seed)


Predicate = Callable[[Any, Any, Case], Any]
Inputs = Callable[[Draw], list[Case]]


@dataclass(frozen=True)
class Spec:
    """One exercise, as data: ``signature``, what the learner defines (a class: its name, with
    ``arg_names``); ``title``; ``doc``, what is asked and, after "Reference:", what it is compared
    with; ``inputs``, which draws the cases (its docstring says which); ``reference``, the qlearn
    function called on a case's arguments; ``hint`` and ``passed`` (``{n}``: the number of
    cases), prose; ``compare(got, expected, case)`` → ``None`` or what is wrong (default: within
    ``rtol`` and ``atol``); ``call(answer, *args)`` runs an answer that is not a plain function;
    ``mistakes``: (predicate(got, expected, case), diagnosis), the first that holds is added."""

    signature: str
    title: str
    doc: str
    inputs: Inputs
    reference: Callable[..., Any]
    hint: str
    passed: str
    compare: Callable[[Any, Any, Case], str | None] | None = None
    rtol: float = 0.0
    atol: float = 0.0
    call: Callable[..., Any] | None = None
    mistakes: Sequence[tuple[Predicate, str]] = ()
    points: int = 1
    arg_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mistakes", tuple(self.mistakes))  # hashable, as a spec is

    @property
    def name(self) -> str:
        """What the learner defines: the signature up to its parenthesis."""
        return self.signature.partition("(")[0]

    @property
    def key(self) -> str:
        """The check's name without ``check_``: ``name`` in snake case."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()

    @property
    def names(self) -> tuple[str, ...]:
        """The names the inputs are shown by: ``arg_names``, or the signature's parameters."""
        inside = self.signature.partition("(")[2].rstrip(")")
        return self.arg_names or tuple(p.strip() for p in inside.split(",") if p.strip())

    def text(self, name: str) -> str:
        """``hint`` or ``passed`` as one line: wrapped lines joined by single spaces."""
        return " ".join(getattr(self, name).split())


def tensors(doc: str, *table: tuple, scale: float = 1.0) -> Inputs:
    """Inputs from a table: for each row (shape, kind, *rest) the case (``sample(shape, kind)``
    · ``scale``, *rest), noted by its kind; ``doc`` says which."""

    def inputs(draw: Draw) -> list[Case]:
        return [Case((sample(s, k, draw.torch) * scale, *rest), k) for s, k, *rest in table]

    inputs.__doc__ = doc
    return inputs


def settings(
    doc: str, fixed: list[tuple], more: Callable[[random.Random], tuple] | None = None, n: int = 0
) -> Inputs:
    """Inputs: the argument tuples ``fixed``, then ``n`` more drawn by ``more(draw.py)``."""

    def inputs(draw: Draw) -> list[Case]:
        return [Case(args) for args in [*fixed, *(more(draw.py) for _ in range(n))]]

    inputs.__doc__ = doc
    return inputs


@dataclass(frozen=True)
class Exercise:
    """One exercise: the name of the answer it checks, its chapter, its title, its check, its
    number in the chapter and its spec (its ``points`` too)."""

    name: str
    chapter: int
    title: str
    check: Callable[..., None]
    number: int
    spec: Spec

    @property
    def points(self) -> int:
        return self.spec.points


def collect(package: str, path: Iterable[str]) -> dict[str, Exercise]:
    """Every exercise of the modules ``chNN_*`` of ``package``, by key, in course order."""
    exercises: dict[str, Exercise] = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if match := re.fullmatch(r"ch(\d\d)_\w+", info.name):
            chapter = int(match.group(1))
            for number, spec in enumerate(
                importlib.import_module(f"{package}.{info.name}").SPECS, 1
            ):
                if spec.key in exercises:
                    raise ValueError(f"{info.name}: a second exercise named {spec.name!r}")
                check = make_check(spec, chapter, number, package)
                exercises[spec.key] = Exercise(spec.name, chapter, spec.title, check, number, spec)
    return exercises


def make_check(spec: Spec, chapter: int, number: int, module: str) -> Callable[..., None]:
    """``check_<key>(answer, *, seed=0)``, documented from the spec."""

    def check(answer: Any, *, seed: int = 0) -> None:
        __tracebackhide__ = True
        n = run(spec, answer, seed)
        print(f"✓ {spec.name} {spec.text('passed').format(n=n)}.")

    doc, inputs = inspect.cleandoc(spec.doc), inspect.cleandoc(spec.inputs.__doc__ or "")
    check.__name__ = check.__qualname__ = f"check_{spec.key}"
    check.__module__ = module
    check.__doc__ = (
        f"Chapter {chapter:02d}, exercise {number}: ``{spec.signature}``"
        f"{'' if doc[:1] in ',;:' else ' '}{doc}\n\nInputs: {inputs[:1].lower()}{inputs[1:]}\n\n"
        f"Prints one line starting with ✓, or raises :class:`ExerciseFailed` saying on which\n"
        f"input, what was expected and what came back; another ``seed`` draws other inputs.\n"
        f"Worth {spec.points} point{'s' * (spec.points != 1)}."
    )
    return check


def run(spec: Spec, answer: Any, seed: Any) -> int:
    """Run ``answer`` on every case of ``spec``; raise on the first problem, else return how
    many cases there were."""
    __tracebackhide__ = True
    cases = spec.inputs(Draw(check_int(seed, "seed", minimum=0)))
    name = spec.name
    if not callable(answer):
        raise ExerciseFailed(
            f"✗ {name}: expected a function (or class) to check, got {show(answer)}.\n"
            f"  Pass the function itself: check_...({name}), without calling it."
        )
    compare = spec.compare or (
        lambda got, expected, case: (
            compare_tensor(got, expected, rtol=spec.rtol, atol=spec.atol)
            if isinstance(expected, torch.Tensor)
            else compare_number(got, expected, rel=spec.rtol)
        )
    )
    for i, case in enumerate(cases):
        expected = spec.reference(*case.args, **case.context)
        args = tuple(copy_value(a) for a in case.args)  # an answer writing to its input harms none
        try:
            got = spec.call(answer, *args) if spec.call else answer(*args)
        except NotImplementedError:
            raise ExerciseFailed(
                f"✗ {name} is not implemented yet: it still raises NotImplementedError.\n"
                f"  Write its body in the solution cell above, run that cell, then run this check "
                f"again."
            ) from None
        except Exception as error:
            raise ExerciseFailed(
                f"✗ {name} raised {type(error).__name__}: {error}\n"
                f"  on input {i + 1} of {len(cases)}{_note(case)}:\n{_describe(spec, case)}\n"
                f"  (the traceback above shows where)"
            ) from error
        if problem := compare(got, expected, case):
            diagnosis = next((d for p, d in spec.mistakes if _holds(p, got, expected, case)), "")
            raise ExerciseFailed(
                f"✗ {name} gave a wrong answer on input {i + 1} of {len(cases)}{_note(case)}:\n"
                f"{_describe(spec, case)}\n"
                f"  expected: {show(expected)}\n"
                f"  got:      {show(got)}\n"
                f"  {problem}{f' — {diagnosis}' if diagnosis else ''}\n"
                f"  hint: {spec.text('hint')}"
            )
    return len(cases)


def _holds(predicate: Predicate, got: Any, expected: Any, case: Case) -> bool:
    """Whether a known mistake's predicate holds; one that fails on the answer (another type
    or shape) does not."""
    try:
        return bool(predicate(got, expected, case))
    except Exception:
        return False


def _describe(spec: Spec, case: Case) -> str:
    shown = (case.shown.get(n) or show(a) for n, a in zip(spec.names, case.args, strict=True))
    return "\n".join(f"    {n} = {s}" for n, s in zip(spec.names, shown, strict=True))


def _note(case: Case) -> str:
    return f" ({case.note})" if case.note else ""
