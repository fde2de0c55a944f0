"""The house rules of the package: each checked by reading the code, as a reviewer would."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qlearn"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_qlearn_module(qualified: str) -> bool:
    """True when ``qualified`` (e.g. ``qlearn._layers``) names a module or package of qlearn."""
    relative = Path(*qualified.split("."))
    root = PACKAGE.parent
    return (root / relative).with_suffix(".py").exists() or (
        root / relative / "__init__.py"
    ).exists()


def private_imports(path: Path) -> list[str]:
    """Every use, in ``path``, of a private name that another qlearn module defines.

    Importing a private *module* (``from qlearn import _layers``, ``qlearn._checks``) is allowed:
    it is how modules share helpers. Taking a private *name* out of another module is not:
    ``from qlearn.models import _is_linear`` or ``gptq._fit``.
    """
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}  # local name -> the qlearn module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from . import x / from ._packing import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if not (module == "qlearn" or module.startswith("qlearn.")):
                continue
            for alias in node.names:
                target = f"{module}.{alias.name}"
                if _is_qlearn_module(target):
                    aliases[alias.asname or alias.name] = target
                elif _is_private(alias.name) and module != own:
                    found.append(f"line {node.lineno}: from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qlearn"):
                    aliases[alias.asname or alias.name] = alias.name if alias.asname else "qlearn"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != own
            and not _is_qlearn_module(f"{aliases[node.value.id]}.{node.attr}")
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_uses_another_modules_private_names(path):
    assert private_imports(path) == []


def test_the_scan_finds_private_names_taken_from_another_module(monkeypatch):
    fake = PACKAGE / "widgets.py"  # a real module's name, so the scan sees it as part of qlearn
    source = (
        "from qlearn import gptq\n"
        "from qlearn.models import _is_linear, get_weight\n"
        "from qlearn import _layers\n"
        "x = gptq._fit\n"
        "y = _layers.is_linear\n"
        "z = gptq.__name__\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert private_imports(fake) == [
        "line 2: from qlearn.models import _is_linear",
        "line 4: gptq._fit",
    ]


OUTSIDE = ("DESIGN" + ".md", "../" + "shared")  # files beside the checkout, not in it


def test_no_file_refers_to_a_file_outside_the_repository():
    """The design notes live in docs/design.md; a fresh clone has nothing beside it."""
    import subprocess

    root = PACKAGE.parent
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    offenders = []
    for name in listed:
        path = root / name
        if not path.is_file() or path.suffix in {".gguf", ".safetensors", ".bin", ".png"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert offenders == []


def test_every_subpackage_is_installed():
    """pyproject.toml lists packages by name: a new folder of qlearn must be listed, or a
    plain ``pip install .`` leaves it out."""
    import tomllib

    listed = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        for init in PACKAGE.rglob("__init__.py")
    }
    assert folders == set(listed["packages"])


def _every_result():
    """One result of every quantizer of the course, on the same small weight [16, 256]."""
    import torch

    from qlearn import affine, awq, bitnet, codebook, gguf, gptq, int8, kernels, mx, nf4

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=g)
    x = torch.randn(64, 256, generator=g)
    linear = torch.nn.Linear(256, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    return {
        "affine absmax": affine.absmax_quantize(w, 8, axis=0),
        "affine zero-point g64": affine.zeropoint_quantize(w, 4, group_size=64),
        "int8 vector-wise": int8.vectorwise_quantize(w, threshold=2.0),
        "int8 Int8Linear": int8.Int8Linear.from_linear(linear),
        "gptq": gptq.gptq_quantize(w, 2 * x.T @ x / len(x), bits=4, group_size=64),
        "awq groups": awq.quantize_groups(w, bits=4, group_size=64),
        "nf4 + double quant": nf4.quantize_4bit(w, blocksize=64, double_quant=True),
        "bitsandbytes dynamic 8-bit": nf4.quantize_dynamic_8bit(w),
        "bitnet ternary": bitnet.weight_quant_ternary(w),
        "gguf Q4_K": gguf.quantize_tensor(w.numpy(), "Q4_K"),
        "gguf MXFP4": gguf.quantize_tensor(w.numpy(), "MXFP4"),
        "gguf IQ4_XS with importance": gguf.quantize_tensor(
            w.numpy(), "IQ4_XS", imatrix=x.pow(2).mean(0)
        ),
        "mx MXFP4": mx.mx_quantize(w, "fp4_e2m1"),
        "mx MXINT8": mx.mx_quantize(w, "int8"),
        "mx NVFP4": mx.nvfp4_quantize(w),
        "codebook k-means per channel": codebook.codebook_quantize(w, 3),
        "kernels int8 weight-only": kernels.Int8WeightOnlyLinear.from_linear(linear),
        "kernels W8A8": kernels.W8A8Linear.from_linear(linear),
        "kernels int4 tinygemm": kernels.Int4WeightOnlyLinear.from_linear(linear, group_size=64),
    }


@pytest.mark.parametrize("name", list(_every_result()))
def test_every_result_is_a_quantized_that_counts_its_bytes(name):
    """Every result class is a qlearn.Quantized: its values back in the weight's shape, and
    bits per weight that follow from its bytes (what the capstone adds up)."""
    import qlearn

    result = _every_result()[name]
    assert isinstance(result, qlearn.Quantized)
    values = result.dequantize()  # bitsandbytes' dynamic map gives its values flat, as it does
    assert values.numel() == 16 * 256 and values.dtype.is_floating_point
    assert 0 < result.nbytes() < 16 * 256 * 4
    assert result.bits_per_weight() == pytest.approx(8 * result.nbytes() / (16 * 256))
