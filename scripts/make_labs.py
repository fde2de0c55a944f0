"""Write lab copies of the notebooks: the answers taken out, everything else kept.

    python scripts/make_labs.py                         # notebooks/NN_*.ipynb -> labs/
    python scripts/make_labs.py --out DIR NOTEBOOK ...  # chosen notebooks, another folder

In a lab copy every cell tagged ``solution`` keeps its imports, the signatures and docstrings of
its functions and classes, and nothing else: each body becomes ``raise NotImplementedError``, so
the check cell after it still names the right thing and reports "not implemented yet" until the
learner writes the body. In the course's notebooks a solution cell is collapsed (Jupyter's
``source_hidden`` metadata, and the tag ``hide-input`` that the site's toggle reads), so that a
self-learner does not read the answer under the question; in a lab copy the stub is shown open.
Solution, check (tagged ``check``) and answer cells (tagged ``answer``: the collapsed answer to
an exercise's follow-up question, computed with qlearn's own functions) lose their outputs; every
other cell keeps its source, its outputs (figures included) and its metadata. ``make labs`` runs
this; ``labs/`` is a build output, not committed.
"""

from __future__ import annotations

import argparse
import ast
import copy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_TAG = "solution"
CHECK_TAG = "check"
ANSWER_TAG = "answer"
COLLAPSED_TAG = "hide-input"  # myst-nb's toggle on the site
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def stub_source(source: str) -> str:
    """The lab version of a solution cell: imports kept, every function and method body
    replaced by ``raise NotImplementedError(...)``, signatures and docstrings kept.

    A solution cell may hold only imports, functions and classes (whose bodies hold only a
    docstring and methods besides attributes, which are dropped); anything else raises
    ``ValueError``, since a stub could not keep it without giving the answer away.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    parts = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            parts.append(_segment(lines, node.lineno, node.end_lineno))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(_stub_function(lines, node, node.name))
        elif isinstance(node, ast.ClassDef):
            parts.append(_stub_class(lines, node))
        else:
            raise ValueError(
                f"solution cell: expected only imports, functions and classes, got "
                f"{type(node).__name__} on line {node.lineno}: {lines[node.lineno - 1].strip()!r}"
            )
    if not any(isinstance(node, _DEFINITIONS) for node in tree.body):
        raise ValueError("solution cell: expected at least one function or class, got none")
    return "\n\n\n".join(parts)


def make_lab(notebook: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """A copy of ``notebook`` with its solutions stubbed and its exercise outputs cleared;
    also returns how many solution cells were stubbed."""
    lab = copy.deepcopy(notebook)
    stubbed = 0
    for cell in lab.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type != "code" or not {SOLUTION_TAG, CHECK_TAG, ANSWER_TAG} & set(tags):
            continue
        if SOLUTION_TAG in tags:
            cell.source = stub_source(cell.source)
            _show_source(cell)
            stubbed += 1
        cell.outputs = []
        cell.execution_count = None
    return lab, stubbed


def _show_source(cell: nbformat.NotebookNode) -> None:
    """Open a collapsed cell: the stub is what the learner writes into."""
    metadata = cell.metadata
    metadata["tags"] = [t for t in metadata.get("tags", []) if t != COLLAPSED_TAG]
    jupyter = metadata.get("jupyter", {})
    jupyter.pop("source_hidden", None)
    if jupyter:
        metadata["jupyter"] = jupyter
    else:
        metadata.pop("jupyter", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "labs", help="default: labs/")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        lab, stubbed = make_lab(nbformat.read(path, as_version=4))
        nbformat.validate(lab)
        target = args.out / path.name
        nbformat.write(lab, target)
        shown = target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target
        print(f"{shown}: {stubbed} solution(s) replaced by stubs")
    return 0


def _segment(lines: list[str], first: int, last: int) -> str:
    return "\n".join(lines[first - 1 : last])


def _stub_function(
    lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef, name: str
) -> str:
    """Decorators, signature and docstring of ``node`` as written, then the stub's raise."""
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    docstring = body[0] if _is_docstring((body := node.body)[0]) else None
    if body[0].lineno == node.lineno:  # a one-line def: rebuild its header with ast
        header = copy.deepcopy(node)
        header.body = [ast.Pass()]
        text = ast.unparse(header).rsplit("\n", 1)[0]
        text = "\n".join(" " * node.col_offset + line for line in text.splitlines())
        indent = " " * (node.col_offset + 4)
    else:
        last = docstring.end_lineno if docstring else body[0].lineno - 1
        text = _segment(lines, first, last).rstrip()
        indent = " " * body[0].col_offset
    return f'{text}\n{indent}raise NotImplementedError("write {name}, then run the check below")'


def _stub_class(lines: list[str], node: ast.ClassDef) -> str:
    """The class line and docstring as written, then each method stubbed."""
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    last = node.body[0].end_lineno if _is_docstring(node.body[0]) else node.body[0].lineno - 1
    parts = [_segment(lines, first, last).rstrip()]
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(_stub_function(lines, item, f"{node.name}.{item.name}"))
    if len(parts) == 1:
        parts.append(" " * (node.col_offset + 4) + "pass")
    return "\n\n".join(parts)


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


if __name__ == "__main__":
    sys.exit(main())
