"""Shared by scripts/imatrix_effect.py and scripts/target_bpw.py: the course's model, the
evaluation text and an importance matrix from 32 windows of 512 tokens of *Emma*."""

from __future__ import annotations

from typing import Any

import torch

from qlearn import data, gguf, models


def model_text_and_importance() -> tuple[Any, Any, str, dict[str, torch.Tensor]]:
    """(model, tokenizer, Pride and Prejudice, ``gguf.importance_matrix`` of the model on
    ``calibration_windows(tokenizer, emma, n_samples=32, seqlen=512, seed=0)``)."""
    torch.manual_seed(0)
    model, tokenizer = models.load_model()
    text, emma = data.load_text("pride_and_prejudice"), data.load_text("emma")
    windows = data.calibration_windows(tokenizer, emma, n_samples=32, seqlen=512, seed=0)
    return model, tokenizer, text, gguf.importance_matrix(model, windows)
