"""Exercises in the notebooks and their lab copies (scripts/make_labs.py, ``make labs``).

Every notebook's exercise cells follow one convention: after a markdown cell starting with
"## Exercises", each exercise is a markdown prompt, a code cell tagged ``solution`` that defines
the answer, and a code cell tagged ``check`` that is exactly ``exercises.check_<key>(<answer>)``.
A prompt that also asks a question (a "?") is followed, after its check, by a code cell tagged
``answer`` that answers it with qlearn's own functions. Solutions and answers are stored
collapsed, so that the answer is not read under the question.
The cells' code is run here in-process (no kernel): each check must pass on the notebook's
solution and fail with "not implemented yet" on the lab's stub. New chapters' notebooks are
picked up by the glob ``notebooks/[0-9][0-9]_*.ipynb``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from qlearn import exercises

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_CALL = re.compile(r"^exercises\.check_(\w+)\((\w+)\)$")
EXERCISES_HEADING = re.compile(r"^## Exercises\s*$", re.MULTILINE)

_spec = importlib.util.spec_from_file_location("make_labs", ROOT / "scripts" / "make_labs.py")
make_labs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_labs)


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _exercise_section(notebook) -> tuple[list, list]:
    """(setup code cells, [(solution, check), ...]) of the section "## Exercises"."""
    start = next(
        (
            i
            for i, c in enumerate(notebook.cells)
            if c.cell_type == "markdown" and EXERCISES_HEADING.search(c.source)
        ),
        None,
    )
    if start is None:
        return [], []
    setup, pairs = [], []
    cells = notebook.cells[start + 1 :]
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("## "):
            break  # "## Further reading"
        if cell.cell_type != "code" or {"check", "answer"} & set(_tags(cell)):
            continue
        if "solution" in _tags(cell):
            pairs.append((cell, cells[i + 1] if i + 1 < len(cells) else None))
        else:
            setup.append(cell)
    return setup, pairs


def _chapter(path: Path) -> int:
    return int(path.name[:2])


def _defined_names(source: str) -> set[str]:
    return {
        node.name
        for node in ast.parse(source).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
    }


EXERCISE_CELLS = [
    pytest.param(path, k, id=f"{path.stem}-{k + 1}")
    for path in NOTEBOOKS
    for k in range(len(_exercise_section(nbformat.read(path, as_version=4))[1]))
]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_cells_follow_the_tagging_convention(path):
    notebook = nbformat.read(path, as_version=4)
    assert any(
        c.cell_type == "markdown" and EXERCISES_HEADING.search(c.source) for c in notebook.cells
    ), f"{path.name}: no '## Exercises' section"
    _, pairs = _exercise_section(notebook)
    tagged = [c for c in notebook.cells if {"solution", "check"} & set(_tags(c))]
    assert len(tagged) == 2 * len(pairs), f"{path.name}: a solution or check outside the section"
    calls = [c for c in notebook.cells if "exercises.check_" in c.source]
    assert all("check" in _tags(c) for c in calls), f"{path.name}: an untagged check call"

    keys = []
    for solution, check in pairs:
        where = f"{path.name}, cell {solution.id}"
        assert check is not None and "check" in _tags(check), f"{where}: no check cell after it"
        assert solution.cell_type == check.cell_type == "code"
        match = CHECK_CALL.match(check.source.strip())
        assert match, f"{where}: the check cell must be exactly exercises.check_<key>(<answer>)"
        key, answer = match.groups()
        assert key in exercises.EXERCISES, f"{where}: no qlearn.exercises.check_{key}"
        exercise = exercises.EXERCISES[key]
        assert exercise.chapter == _chapter(path), f"{where}: check_{key} is for another chapter"
        assert answer == exercise.name in _defined_names(solution.source), where
        make_labs.stub_source(solution.source)  # only imports, functions and classes
        assert not solution.outputs, f"{where}: a solution cell only defines; no output"
        outputs = [o for o in check.outputs if o.output_type == "stream"]
        assert len(outputs) == 1 and outputs[0].text.startswith("✓ "), f"{where}: stored output"
        keys.append(key)
    expected = [
        e.check.__name__.removeprefix("check_") for e in exercises.exercises_of(_chapter(path))
    ]
    assert keys == expected, f"{path.name}: every check of the chapter once, in order"
    if keys:
        assert 3 <= len(keys) <= 5


def test_every_chapter_with_checks_has_its_notebook():
    chapters = {_chapter(p) for p in NOTEBOOKS}
    assert {e.chapter for e in exercises.EXERCISES.values()} <= chapters


@pytest.mark.parametrize(("path", "k"), EXERCISE_CELLS)
def test_check_fails_on_the_lab_stub_and_passes_on_the_solution(path, k, capsys):
    setup, pairs = _exercise_section(nbformat.read(path, as_version=4))
    namespace: dict = {"__name__": "__exercise__"}
    for cell in setup:
        _run(cell, namespace, path)
    for solution, _ in pairs[:k]:  # later answers may use earlier ones
        _run(solution, namespace, path)
    solution, check = pairs[k]

    _run(nbformat.v4.new_code_cell(make_labs.stub_source(solution.source)), namespace, path)
    with pytest.raises(exercises.ExerciseFailed, match="is not implemented yet"):
        _run(check, namespace, path)

    _run(solution, namespace, path)
    capsys.readouterr()
    _run(check, namespace, path)
    printed = capsys.readouterr().out
    assert printed == check.outputs[0].text, "the stored output is what the check prints"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_copy_stubs_solutions_clears_exercise_outputs_and_keeps_the_rest(path):
    notebook = nbformat.read(path, as_version=4)
    lab, stubbed = make_labs.make_lab(notebook)
    nbformat.validate(lab)
    assert stubbed == len(_exercise_section(notebook)[1])
    assert [c.id for c in lab.cells] == [c.id for c in notebook.cells]
    for original, copy in zip(notebook.cells, lab.cells, strict=True):
        tags = _tags(original)
        if "solution" in tags:
            assert copy.source != original.source
            assert _defined_names(copy.source) == _defined_names(original.source)
            assert "raise NotImplementedError(" in copy.source
            assert copy.outputs == [] and copy.execution_count is None
            assert "hide-input" not in _tags(copy), "the stub is shown open in a lab"
            assert not copy.metadata.get("jupyter", {}).get("source_hidden")
        elif {"check", "answer"} & set(tags):
            assert copy.source == original.source and copy.metadata == original.metadata
            assert copy.outputs == [] and copy.execution_count is None
        else:
            assert copy == original  # source, outputs (figures included) and metadata
    assert lab.metadata == notebook.metadata
    assert notebook.cells == nbformat.read(path, as_version=4).cells  # the input is untouched


def _prompts_and_answers(notebook) -> list[tuple[str, list]]:
    """[(an exercise's prompt, the code cells up to the next prompt), ...]."""
    _, pairs = _exercise_section(notebook)
    sections, ids = [], {id(solution) for solution, _ in pairs}
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and id(cell) in ids:
            prompt = notebook.cells[i - 1]
            following = []
            for later in notebook.cells[i + 1 :]:
                if later.cell_type != "code":
                    break
                following.append(later)
            sections.append((prompt.source, following))
    return sections


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_are_collapsed_and_every_follow_up_question_is_answered(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if {"solution", "answer"} & set(_tags(cell)):
            where = f"{path.name}, cell {cell.id}"
            assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, where
            assert {"hide-input", "hide-cell"} & set(_tags(cell)), f"{where}: no toggle on the site"
        if "answer" in _tags(cell):
            assert cell.metadata["jupyter"].get("outputs_hidden") is True, where
            assert "hide-cell" in _tags(cell), where
            assert cell.outputs, f"{where}: an answer cell is stored with its output"
    for prompt, following in _prompts_and_answers(notebook):
        where = f"{path.name}: {prompt.splitlines()[0]}"
        answers = [c for c in following if "answer" in _tags(c)]
        if "?" in prompt:
            assert len(answers) == 1, f"{where}: a question without its answer cell"
            assert "check" in _tags(following[0]) and following[1] is answers[0], where
        else:
            assert not answers, f"{where}: an answer cell without a question"


SOLUTION = '''import math


@staticmethod
def scaled(x: float,
           factor: float = 2.0) -> float:
    """Multiply.

    Longer docstring."""
    # a comment that gives the answer away
    return x * factor * math.pi


def one_liner(a): return a + 1


class Counter:
    """Counts."""

    start = 0

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int = 1) -> None:
        """Add k."""
        self.n += k
'''


def test_stub_source_keeps_signatures_docstrings_and_imports_only():
    stub = make_labs.stub_source(SOLUTION)
    tree, original = ast.parse(stub), ast.parse(SOLUTION)
    assert "import math" in stub and "math.pi" not in stub and "gives the answer" not in stub
    assert "start = 0" not in stub and "self.n" not in stub
    assert (
        'def scaled(x: float,\n           factor: float = 2.0) -> float:\n    """Multiply.' in stub
    )
    assert "@staticmethod" in stub and '"""Add k."""' in stub
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(original):
        if isinstance(node, ast.FunctionDef):
            assert ast.dump(functions[node.name].args) == ast.dump(node.args)
            assert isinstance(functions[node.name].body[-1], ast.Raise)
    namespace: dict = {}
    exec(stub, namespace)
    for call in (lambda: namespace["one_liner"](1), lambda: namespace["Counter"]()):
        with pytest.raises(NotImplementedError, match="then run the check below"):
            call()


@pytest.mark.parametrize(
    "source", ["answer = 42\n", "print('hi')\n", "import math\n", "if True:\n    x = 1\n"]
)
def test_stub_source_refuses_cells_it_cannot_stub_without_the_answer(source):
    with pytest.raises(ValueError, match="solution cell"):
        make_labs.stub_source(source)


def test_make_labs_writes_every_notebook(tmp_path, capsys):
    assert make_labs.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        lab = nbformat.read(tmp_path / path.name, as_version=4)
        exercise_cells = [c for c in lab.cells if {"solution", "check", "answer"} & set(_tags(c))]
        assert not any(c.outputs for c in exercise_cells)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(NOTEBOOKS) and all("replaced by stubs" in line for line in printed)


def _run(cell, namespace: dict, path: Path) -> None:
    exec(compile(cell.source, f"{path.name}:{cell.get('id')}", "exec"), namespace)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_asks_to_predict_before_a_cell_runs(path):
    """At least one "Predict, then run." question in the chapter's body, right before the code
    cell whose output answers it (and not in the exercises, whose answers are collapsed)."""
    cells = nbformat.read(path, as_version=4).cells
    end = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown" and EXERCISES_HEADING.search(c.source)
        ),
        len(cells),
    )
    asked = [
        i
        for i, c in enumerate(cells[:end])
        if c.cell_type == "markdown" and c.source.startswith("**Predict, then run.**")
    ]
    assert asked, f"{path.name}: no 'Predict, then run.' question"
    for i in asked:
        following = cells[i + 1]
        assert following.cell_type == "code" and following.outputs, f"{path.name}, cell {i}"
