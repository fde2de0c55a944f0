"""The course's texts: one novel to evaluate on, another to calibrate on.

Both are Jane Austen novels (public domain) stored in the repository's ``data/`` folder; see
``data/README.md`` for where they come from. Used from notebooks/02_absmax_zeropoint.ipynb on.
"""

from __future__ import annotations

import os
from pathlib import Path

from qlearn._checks import check_choice

__all__ = ["CALIBRATION_TEXT", "EVALUATION_TEXT", "TEXTS", "data_dir", "load_text"]

TEXTS = {"pride_and_prejudice": "pride_and_prejudice.txt", "emma": "emma.txt"}
EVALUATION_TEXT = "pride_and_prejudice"
CALIBRATION_TEXT = "emma"


def data_dir() -> Path:
    """The folder holding the texts: ``$QLEARN_DATA`` if set, else the repository's ``data/``."""
    override = os.environ.get("QLEARN_DATA")
    folder = Path(override) if override else Path(__file__).resolve().parent.parent / "data"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the course data folder {folder} does not exist: run from a clone of the qlearn "
            "repository (pip install -e .), or point QLEARN_DATA at a copy of its data/ folder"
        )
    return folder


def load_text(name: str) -> str:
    """Return the text of ``name``: ``"pride_and_prejudice"`` (evaluation) or ``"emma"``."""
    check_choice(name, "name", TEXTS)
    return (data_dir() / TEXTS[name]).read_text(encoding="utf-8")
