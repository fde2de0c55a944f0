"""environment.yml (for conda users) stays honest: it installs what pyproject.toml and make do."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from qlearn import models

ROOT = Path(__file__).resolve().parent.parent


def load():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return env, project, conda, pip


def test_python_version_matches_requires_python():
    _, project, conda, _ = load()
    python = next(d for d in conda if d.startswith("python"))
    minimum = re.search(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1)
    assert python == f"python={minimum}"
    assert "pip" in conda


def test_pip_installs_the_package_with_every_extra():
    _, project, _, pip = load()
    editable = next(line for line in pip if line.startswith("-e ."))
    extras = set(re.search(r"\[(.*)\]", editable).group(1).split(","))
    assert extras == set(project["optional-dependencies"])


def test_torch_pin_is_the_makefiles():
    _, project, _, pip = load()
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r'"(torch==[\d.]+)"', makefile).group(1)
    assert pin in pip
    assert any(dep.startswith("torch") for dep in project["dependencies"])
    constraints = (ROOT / "constraints.txt").read_text().split()
    assert pin in constraints


def test_model_install_command_is_the_one_the_package_names():
    text = (ROOT / "environment.yml").read_text()
    assert models.INSTALL_COMMAND in text
    assert models.INSTALL_COMMAND.split()[-1] in (ROOT / "Makefile").read_text()


def test_every_dependency_is_pinned_in_constraints():
    _, project, _, _ = load()
    pinned = {
        re.split(r"[=<>!\[ ]", line)[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    wanted = project["dependencies"] + [
        d for ds in project["optional-dependencies"].values() for d in ds
    ]
    for dep in wanted:
        name = re.split(r"[=<>!\[ ]", dep)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in constraints.txt"
