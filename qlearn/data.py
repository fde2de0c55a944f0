"""The course's texts: one novel to evaluate on, another to calibrate on.

Both are Jane Austen novels (public domain) stored in the repository's ``data/`` folder; see
``data/README.md`` for where they come from. Used from notebooks/02_absmax_zeropoint.ipynb on.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from qlearn._checks import check_choice, check_int

__all__ = [
    "CALIBRATION_TEXT",
    "EVALUATION_TEXT",
    "TEXTS",
    "calibration_windows",
    "data_dir",
    "load_text",
]

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


def calibration_windows(
    tokenizer: object, text: str, *, n_samples: int = 32, seqlen: int = 512, seed: int = 0
) -> torch.Tensor:
    """``n_samples`` random windows of ``seqlen`` tokens of ``text``, as [n_samples, seqlen].

    The windows are drawn exactly as the GPTQ authors' data loader draws them (Frantar et al.
    2022, ``datautils.py``): ``random.seed(seed)``, then for each window a start
    ``random.randint(0, N - seqlen - 1)`` over the N tokens of the whole text, so that results
    can be compared with theirs window for window. Uses its own ``random.Random``, leaving the
    global generator alone. Used from notebooks/03_granularity_calibration.ipynb on.
    """
    n_samples = check_int(n_samples, "n_samples")
    seqlen = check_int(seqlen, "seqlen")
    if n_samples < 1:
        raise ValueError(f"n_samples: expected at least 1, got {n_samples}")
    if seqlen < 2:
        raise ValueError(f"seqlen: expected at least 2, got {seqlen}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r:.40}")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < seqlen + 2:
        raise ValueError(
            f"text: expected more than {seqlen + 1} tokens for windows of {seqlen}, "
            f"got {ids.numel()}"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(n_samples)]
    return torch.stack([ids[start : start + seqlen] for start in starts])
