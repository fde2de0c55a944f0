"""What nbval compares holds on any CPU (docs/design.md, "What nbval compares").

The notebooks follow one rule: a cell whose output nbval does not compare either shows an
interactive widget, or holds a machine-dependent (chaotic) number whose claim the next compared
code cell states with ``qlearn.claims``. ``scripts/check_portability.py`` compares outputs as
nbval does.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IGNORED = {"nbval-ignore-output", "nbval-skip"}
WIDGET_CALL = re.compile(r"widgets\.\w+_(explorer|stepper)\(")


def _script():
    spec = importlib.util.spec_from_file_location(
        "check_portability", ROOT / "scripts" / "check_portability.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_uncompared_cell_is_a_widget_or_is_followed_by_its_claims(path):
    cells = _code_cells(path)
    for i, cell in enumerate(cells):
        tags = set(cell.metadata.get("tags", []))
        assert "nbval-skip" not in tags, f"{path.name} code cell {i}: skipped, never run by nbval"
        if not tags & IGNORED or WIDGET_CALL.search(cell.source):
            continue
        compared = (c for c in cells[i + 1 :] if not set(c.metadata.get("tags", [])) & IGNORED)
        following = next(compared, None)
        assert following is not None and "claims.claim" in following.source, (
            f"{path.name} code cell {i}: its output is not compared, and the next compared code "
            "cell does not state what the text claims about it (qlearn.claims)"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_claims_print_no_failure(path):
    for cell in _code_cells(path):
        if "claims.claim" in cell.source:
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert "✓" in text and "does not hold" not in text, (
                f"{path.name}: a claims cell stored {text[:80]!r}"
            )
            assert not any(o.output_type == "error" for o in cell.outputs)


def test_compared_text_skips_what_nbval_skips_and_sanitizes_the_rest():
    script = _script()
    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="at 0x7f00deadbeef\n"),
        nbformat.v4.new_output("stream", name="stdout", text="done in 3.2 s elapsed\n"),
        nbformat.v4.new_output(
            "display_data",
            data={"image/png": "iVBOR", "text/plain": "<Figure size 600x400 with 1 Axes>"},
        ),
        nbformat.v4.new_output(
            "display_data",
            data={"application/vnd.jupyter.widget-view+json": {"model_id": "1"}, "text/plain": "V"},
        ),
    ]
    flat = script.compared_text(outputs, script.sanitize_patterns())
    assert flat == {
        "stdout": ["at 0xADDRESS\ndone in TIME\n"],  # streams joined, as nbval does
        "text/plain": ["<Figure size 600x400 with 1 Axes>", "V"],
    }


def test_the_alternative_setting_is_one_step_below_this_cpu():
    import torch

    script = _script()
    env = script.alternative_env()
    capability = torch.backends.cpu.get_cpu_capability().upper()
    assert env["ATEN_CPU_CAPABILITY"] != capability.lower()
    if capability.startswith("AVX512"):
        assert env == dict.fromkeys(
            ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"), "AVX2"
        ) | {"ATEN_CPU_CAPABILITY": "avx2"}
    else:  # AVX2 or arm64: ATen's plain C kernels (MKL's lower path would double the time)
        assert env == {"ATEN_CPU_CAPABILITY": "default"}
    lowest = script.lowest_env()
    assert lowest["ATEN_CPU_CAPABILITY"] == "default"


def test_make_test_runs_nbval_under_both_settings():
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:")[1].split("\n\n")[0]
    assert test_recipe.count("$(NBVAL) notebooks") == 2
    assert "check_portability.py --alternative-env" in test_recipe
