"""The course's texts: one novel to evaluate on, another to calibrate on.

Both are Jane Austen novels (public domain) stored in the repository's ``data/`` folder; see
``data/README.md`` for where they come from. Used from notebooks/02_absmax_zeropoint.ipynb on.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from qlearn._checks import check_choice, check_int

__all__ = [
    "CALIBRATION_TEXT",
    "EVALUATION_TEXT",
    "TEXTS",
    "calibration_windows",
    "data_dir",
    "load_text",
    "token_batches",
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
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    seqlen = check_int(seqlen, "seqlen", minimum=2)
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


def token_batches(data: Any, tokenizer: Any = None) -> list[torch.Tensor]:
    """Calibration data as a list of [batch, seqlen] token tensors (one forward pass each).

    ``data`` is a [n, seqlen] token tensor (e.g. :func:`calibration_windows`; split into n
    passes of one window), a [seqlen] tensor, a list of token tensors (one pass each), or a
    list of strings (each tokenized alone by ``tokenizer``, without special tokens). Everything
    is checked up front. Used by ``qlearn.calibration`` and ``qlearn.int8``.
    """
    expected = "a [n, seqlen] token tensor, a list of token tensors or a list of strings"
    name = "texts_or_batches"
    if isinstance(data, torch.Tensor):
        _check_tokens(data, name)
        return list(data.reshape(-1, data.shape[-1]).split(1)) if data.ndim == 2 else [data[None]]
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"{name}: expected {expected}, got {data!r:.60} ({type(data).__name__})")
    if not data:
        raise ValueError(f"{name}: expected {expected}, got an empty {type(data).__name__}")
    if all(isinstance(item, str) for item in data):
        if tokenizer is None:
            raise ValueError(
                f"tokenizer: expected a tokenizer to turn the strings of {name} into tokens, "
                "got None"
            )
        batches = []
        for i, text in enumerate(data):
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            if ids.numel() == 0:
                raise ValueError(f"{name}[{i}]: expected a text with tokens, got {text!r:.40}")
            batches.append(ids)
        return batches
    batches = []
    for i, item in enumerate(data):
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"{name}[{i}]: expected a token tensor like the other items, "
                f"got {item!r:.40} ({type(item).__name__})"
            )
        _check_tokens(item, f"{name}[{i}]")
        batches.append(item if item.ndim == 2 else item[None])
    return batches


def _check_tokens(ids: torch.Tensor, name: str) -> None:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name}: expected token ids (an integer tensor), got dtype {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise ValueError(
            f"{name}: expected a [n, seqlen] or [seqlen] tensor, got {tuple(ids.shape)}"
        )
    if ids.numel() == 0:
        raise ValueError(f"{name}: expected at least one token, got shape {tuple(ids.shape)}")
