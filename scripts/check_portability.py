"""Run the notebooks under several CPU kernel choices and thread counts; say which cells differ.

    python scripts/check_portability.py                    # the whole matrix, every notebook
    python scripts/check_portability.py notebooks/04_*.ipynb --settings alternative --threads 2
    python scripts/check_portability.py --show-ignored     # also the cells nbval does not compare
    python scripts/check_portability.py --alternative-env  # KEY=VALUE words for `env` (Makefile)

What nbval compares must hold on any CPU (docs/design.md, "What nbval compares"). Another
machine gives other float results because torch, MKL and oneDNN pick other kernels (AVX-512,
AVX2, plain C); on one machine the same happens when those libraries are told to use a lower
instruction set, which is what the settings here do:

- ``native``: nothing set, as the notebooks were stored;
- ``alternative``: one step down from what this CPU offers, as cheaply as it can be — on an
  AVX-512 CPU ATen (``ATEN_CPU_CAPABILITY``), MKL (``MKL_CBWR``) and oneDNN
  (``ONEDNN_MAX_CPU_ISA``) all at AVX2; on an AVX2 CPU ATen's plain C kernels. This is the
  second nbval pass of ``make test``;
- ``lowest``: ATen's plain C kernels, MKL's SSE2 path (``COMPATIBLE``) and oneDNN at SSE4.1,
  the most different an x86-64 CPU can compute (about twice as slow: MKL's matrix products).

Each setting runs with 1 and with 2 threads (the ``THREADS = N`` line of a notebook's parameter
cell is rewritten before it runs). Every run executes each notebook top to bottom in a fresh
kernel, compares each compared cell's text outputs with the stored ones exactly as nbval does
(same skipped keys, same sanitize patterns), and prints a matrix of differing cells. The
executed copies land in ``build/portability/<setting>-<threads>t/``. Run it alone: it takes
15–30 minutes per column on two cores.
"""

from __future__ import annotations

import argparse
import configparser
import copy
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import nbformat
from nbval.plugin import coalesce_streams, transform_streams_for_comparison

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from run_notebooks import execute_notebook  # noqa: E402  (the same execution as make course)

SANITIZE = ROOT / "notebooks" / "sanitize.cfg"
IGNORE_TAGS = {"nbval-ignore-output", "nbval-skip"}
# nbval's own list of output keys it never compares (nbval.plugin.IPyNbFile.skip_compare).
SKIP_COMPARE = {
    "metadata",
    "traceback",
    "prompt_number",
    "output_type",
    "name",
    "execution_count",
    "application/vnd.jupyter.widget-view+json",
    "image/png",
    "image/jpeg",
}
THREADS_LINE = re.compile(r"^THREADS = \d+", re.MULTILINE)
# The lowest setting every x86-64 CPU can compute: ATen's plain C kernels, MKL's SSE2 path, oneDNN
# on SSE4.1. MKL's lower paths run its matrix products about twice as slowly.
LOWEST = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
# One step down from each capability torch reports (torch.backends.cpu.get_cpu_capability()),
# as cheap as it can be: on an AVX-512 CPU all three libraries step down to AVX2 (as fast, or
# nearly); on an AVX2 CPU, ATen steps down to its plain C kernels and MKL and oneDNN stay.
STEP_DOWN = {
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "default"},
}
PLAIN = {"ATEN_CPU_CAPABILITY": "default"}  # any other CPU (arm64): ATen's plain C kernels


def alternative_env() -> dict[str, str]:
    """The kernel settings one step below what this CPU offers (see ``STEP_DOWN``)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability().upper()
    for prefix, settings in STEP_DOWN.items():
        if capability.startswith(prefix):
            return dict(settings)
    return dict(PLAIN)


def lowest_env() -> dict[str, str]:
    """The lowest kernel settings this CPU can be held to (x86-64: ``LOWEST``)."""
    import platform

    return dict(LOWEST) if platform.machine().lower() in {"x86_64", "amd64"} else dict(PLAIN)


def sanitize_patterns(path: Path = SANITIZE) -> list[tuple[re.Pattern[str], str]]:
    """The regex/replace pairs of nbval's sanitize file, in order."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def compared_text(outputs: list, patterns: list[tuple[re.Pattern[str], str]]) -> dict[str, list]:
    """The outputs of one cell as nbval compares them: key -> sanitized values, in order."""
    flat: dict[str, list] = defaultdict(list)
    streams_joined = coalesce_streams(copy.deepcopy(outputs))  # as nbval does, on a copy
    for output in transform_streams_for_comparison(streams_joined):
        for key, value in output.items():
            if key in SKIP_COMPARE:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for name, text in items:
                if name in SKIP_COMPARE:
                    continue
                if isinstance(text, str):
                    for regex, replace in patterns:
                        text = regex.sub(replace, text)
                flat[name].append(text)
    return dict(flat)


def run_notebook(path: Path, threads: int, env: dict[str, str]) -> nbformat.NotebookNode:
    """Execute ``path`` with ``THREADS = threads`` in a kernel started with ``env`` added."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and THREADS_LINE.search(cell.source):
            cell.source = THREADS_LINE.sub(f"THREADS = {threads}", cell.source)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel starts with this process's environment
    try:
        return execute_notebook(notebook, path.parent, allow_errors=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def differing_cells(stored, fresh, patterns, *, show_ignored: bool) -> list[str]:
    """One line block per compared cell whose fresh output differs from the stored one."""
    report = []
    code = [
        (i, s, f)
        for i, (s, f) in enumerate(zip(stored.cells, fresh.cells, strict=True))
        if s.cell_type == "code"
    ]
    for number, (index, old, new) in enumerate(code):
        ignored = bool(IGNORE_TAGS & set(old.metadata.get("tags", [])))
        if ignored and not show_ignored:
            continue
        a, b = compared_text(old.outputs, patterns), compared_text(new.outputs, patterns)
        if a == b:
            continue
        first = old.source.strip().splitlines()[0][:70] if old.source.strip() else ""
        mark = "ignored" if ignored else "DIFFERS"
        report.append(f"  {mark} cell {number} (notebook cell {index}): {first}")
        report.extend(_first_difference(a, b))
    return report


def _first_difference(a: dict[str, list], b: dict[str, list]) -> list[str]:
    for key in sorted(set(a) | set(b)):
        old = "".join(map(str, a.get(key, []))).splitlines()
        new = "".join(map(str, b.get(key, []))).splitlines()
        for line_old, line_new in zip(old + [""] * len(new), new + [""] * len(old), strict=False):
            if line_old != line_new:
                return [f"      stored: {line_old[:110]}", f"      here  : {line_new[:110]}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument(
        "--settings",
        default="native,alternative,lowest",
        help="comma-separated: native, alternative, lowest (default all three)",
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "portability")
    parser.add_argument(
        "--show-ignored",
        action="store_true",
        help="also report cells whose output nbval does not compare",
    )
    parser.add_argument(
        "--alternative-env",
        action="store_true",
        help="print the alternative setting as KEY=VALUE words and exit",
    )
    args = parser.parse_args(argv)
    if args.alternative_env:
        print(" ".join(f"{k}={v}" for k, v in alternative_env().items()))
        return 0

    notebooks = sorted(args.notebooks or (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    settings = {"native": {}, "alternative": alternative_env(), "lowest": lowest_env()}
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in settings]
    if unknown:
        parser.error(f"--settings: expected native, alternative or lowest, got {unknown}")
    threads = [int(t) for t in args.threads.split(",")]
    patterns = sanitize_patterns()

    matrix: dict[str, dict[str, int]] = defaultdict(dict)
    columns = []
    for setting in chosen:
        for n in threads:
            column = f"{setting}-{n}t"
            columns.append(column)
            env = {**settings[setting], "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
            print(
                f"== {column}: {' '.join(f'{k}={v}' for k, v in env.items()) or '(nothing set)'}",
                flush=True,
            )
            folder = args.out / column
            folder.mkdir(parents=True, exist_ok=True)
            for path in notebooks:
                started = time.perf_counter()
                fresh = run_notebook(path, n, env)
                nbformat.write(fresh, folder / path.name)
                stored = nbformat.read(path, as_version=4)
                report = differing_cells(stored, fresh, patterns, show_ignored=args.show_ignored)
                matrix[path.name][column] = sum(line.startswith("  DIFFERS") for line in report)
                print(
                    f"{path.name}: {matrix[path.name][column]} compared cells differ "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
                for line in report:
                    print(line)

    width = max(len(c) for c in columns)
    print("\ncompared cells that differ from the stored outputs:")
    print(f"{'notebook':<32}" + "".join(f"{c:>{width + 2}}" for c in columns))
    for name, row in matrix.items():
        print(f"{name:<32}" + "".join(f"{row[c]:>{width + 2}}" for c in columns))
    total = sum(sum(row.values()) for row in matrix.values())
    print(f"{total} differing cells in all")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
