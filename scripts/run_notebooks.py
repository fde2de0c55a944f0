"""Execute notebooks top to bottom, as a learner would, and report each one's time.

    python scripts/run_notebooks.py --out build notebooks/*.ipynb   # executed copies + HTML
    python scripts/run_notebooks.py --inplace notebooks/*.ipynb     # store outputs (authors)

The stored notebooks hold their outputs so readers see the figures and nbval can compare them;
``--inplace`` is how an author refreshes them (``make notebooks``). Timing metadata is not
recorded, so a re-run changes only what the code prints and draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

TIMEOUT_S = 900  # per cell


def execute(path: Path) -> nbformat.NotebookNode:
    """Run ``path`` in a fresh kernel, with the notebooks folder as working directory."""
    return execute_notebook(nbformat.read(path, as_version=4), path.parent)


def execute_notebook(
    notebook: nbformat.NotebookNode, folder: Path, *, allow_errors: bool = False
) -> nbformat.NotebookNode:
    """Run ``notebook`` (in place) in a fresh kernel started in ``folder``; return it."""
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute()
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:  # timestamps left by an earlier run elsewhere: noise in a diff
        cell.metadata.pop("execution", None)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder for executed copies and HTML")
    where.add_argument("--inplace", action="store_true", help="overwrite the notebooks")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    for i, path in enumerate(sorted(args.notebooks), 1):
        print(f"[{i}/{len(args.notebooks)}] {path.name} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            notebook = execute(path)
        except Exception as error:  # report which notebook failed, then stop
            print(f"FAILED after {time.perf_counter() - t0:.0f} s")
            print(error, file=sys.stderr)
            return 1
        if args.inplace:
            nbformat.write(notebook, path)
            target = path
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            target = args.out / path.name
            nbformat.write(notebook, target)
            html, _ = HTMLExporter().from_notebook_node(notebook)
            target.with_suffix(".html").write_text(html, encoding="utf-8")
        print(f"done in {time.perf_counter() - t0:.0f} s -> {target}", flush=True)
    print(f"all {len(args.notebooks)} notebooks ran in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
