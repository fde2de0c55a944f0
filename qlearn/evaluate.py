"""Measure what quantization cost: perplexity on held-out text, and greedy generations.

Perplexity is exp of the mean negative log-likelihood per predicted token (Jelinek et al. 1977;
as in the GPTQ paper's WikiText2 evaluation, Frantar et al. 2022 §5, here on Jane Austen).
Used from notebooks/02_absmax_zeropoint.ipynb on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qlearn import reuse
from qlearn._checks import check_bool, check_int
from qlearn._layers import model_device
from qlearn._progress import progress_bar

__all__ = ["generate", "perplexity", "token_windows"]


def perplexity(
    model: nn.Module,
    tokenizer: object,
    text: str,
    *,
    max_tokens: int = 2048,
    window: int = 1024,
    progress: bool | None = None,
    cache: bool = False,
) -> float:
    """Perplexity of ``model`` on the first ``max_tokens`` tokens of ``text``.

    The tokens are cut into consecutive, non-overlapping windows of ``window`` tokens (the last
    may be shorter); each window is one forward pass that starts with no context, and every
    token after the first of its window is predicted. The result is
    ``exp(sum of NLL over all predicted tokens / number of predicted tokens)``: the mean over
    tokens, not over windows. With ``max_tokens=4096, window=1024`` this is the evaluation
    behind the course's anchor figures (docs/design.md, "Anchor figures"). Taught in
    notebooks/02_absmax_zeropoint.ipynb.

    With ``cache=True`` the perplexity of the same model (every tensor), tokens and window,
    measured before on this machine, is read back (:func:`qlearn.reuse.remember_number`): the
    chapters evaluate the FP32 model, and the capstone the models of chapters 01–08, only once.
    """
    cache = check_bool(cache, "cache")
    windows = token_windows(tokenizer, text, max_tokens=max_tokens, window=window)
    device = model_device(model)
    if cache and reuse.plain_model(model):
        return reuse.remember_number(
            "perplexity",
            (model, windows, str(device)),
            lambda: _perplexity(model, windows, device, progress),
        )
    return _perplexity(model, windows, device, progress)


def _perplexity(
    model: nn.Module, windows: list[torch.Tensor], device: torch.device, progress: bool | None
) -> float:
    total_nll, total_predicted = 0.0, 0
    with torch.inference_mode():
        for ids in progress_bar(windows, desc="perplexity", progress=progress):
            ids = ids.to(device)
            logits = model(ids.unsqueeze(0)).logits[0, :-1].float()
            total_nll += F.cross_entropy(logits, ids[1:], reduction="sum").item()
            total_predicted += ids.numel() - 1
    return math.exp(total_nll / total_predicted)


def token_windows(
    tokenizer: object, text: str, *, max_tokens: int = 2048, window: int = 1024
) -> list[torch.Tensor]:
    """Tokenize ``text`` (no special tokens) and cut its first ``max_tokens`` tokens into windows.

    Windows of one token predict nothing and are dropped.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r:.40}")
    max_tokens = check_int(max_tokens, "max_tokens", minimum=2)
    window = check_int(window, "window", minimum=2)
    ids = _first_tokens(tokenizer, text, max_tokens)
    if ids.numel() < 2:
        raise ValueError(f"text: expected at least 2 tokens, got {ids.numel()}")
    return [chunk for chunk in ids.split(window) if chunk.numel() >= 2]


def generate(model: nn.Module, tokenizer: object, prompt: str, *, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` (deterministic): only the new text is returned.

    Taught in notebooks/02_absmax_zeropoint.ipynb, to read what a quantized model still says.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt: expected a non-empty string, got {prompt!r}")
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", minimum=1)
    device = model_device(model)
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


def _encode(tokenizer: object, text: str) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]


def _first_tokens(tokenizer: object, text: str, max_tokens: int) -> torch.Tensor:
    """The first ``max_tokens`` tokens of ``text``: those of the whole text, from a prefix.

    Tokenizing a whole novel to keep its first 2048 tokens took over a second per evaluation.
    A prefix gives the same first tokens once it reaches well past them (a tokenizer only
    merges across a short stretch of text), so the prefix doubles until two successive ones
    agree on the first ``max_tokens`` tokens and run past them; a short text is tokenized whole.
    """
    length = 16 * max_tokens  # characters: over twice what 2048 English BPE tokens take
    ids = _encode(tokenizer, text[:length])
    while length < len(text):
        length *= 2
        longer = _encode(tokenizer, text[:length])
        enough = ids.numel() > max_tokens and longer.numel() > ids.numel()
        if enough and torch.equal(ids[:max_tokens], longer[:max_tokens]):
            return ids[:max_tokens]
        ids = longer
    return ids[:max_tokens]
