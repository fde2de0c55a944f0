"""Measure what quantization cost: perplexity on held-out text, KL divergence from the
original model, and greedy generations.

Perplexity is exp of the mean negative log-likelihood per predicted token (Jelinek et al. 1977;
as in the GPTQ paper's WikiText2 evaluation, Frantar et al. 2022 §5, here on Jane Austen).
Used from notebooks/02_absmax_zeropoint.ipynb on. The KL divergence of a quantized model's
next-token distribution from the original's, token by token, is what llama.cpp's
``llama-perplexity --kl-divergence`` reports; chapter 10 teaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qlearn import reuse
from qlearn._checks import check_bool, check_float_tensor, check_int, check_module
from qlearn._layers import model_device
from qlearn._progress import progress_bar

__all__ = [
    "Divergence",
    "KLBaseline",
    "generate",
    "kl_baseline",
    "kl_divergence",
    "kl_per_token",
    "perplexity",
    "token_windows",
]


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


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class Divergence:
    """How far a model's next-token distributions lie from a reference model's, on one text.

    ``values``: KL(P_ref ‖ P_q) in nats for every predicted token (float64, in text order).
    ``mean``, ``median`` and ``p99`` (the 99th percentile, linear interpolation) summarize
    them; ``top1_agreement`` is the share of tokens where both models' most likely next token
    is the same (llama.cpp's "Same top p"); ``delta_p`` the mean of p_q(correct token) −
    p_ref(correct token) (llama.cpp's "Mean Δp", here a fraction, not a percentage);
    ``perplexity`` and ``reference_perplexity`` the two models' perplexities on the same
    tokens, and ``perplexity_ratio`` their ratio. Chapter 10 (what quantization buys).
    """

    values: torch.Tensor
    top1_agreement: float
    delta_p: float
    perplexity: float
    reference_perplexity: float

    @property
    def n_tokens(self) -> int:
        """The number of predicted tokens the figures are over."""
        return self.values.numel()

    @property
    def mean(self) -> float:
        """Mean KL divergence per predicted token, nats: llama.cpp's "Mean KLD"."""
        return float(self.values.mean())

    @property
    def median(self) -> float:
        """Median KL divergence per predicted token, nats."""
        return float(torch.quantile(self.values, 0.5))

    @property
    def p99(self) -> float:
        """The 99th percentile of the KL divergence per token, nats: the rare tokens the
        quantized model gets badly wrong, which a mean hides."""
        return float(torch.quantile(self.values, 0.99))

    @property
    def perplexity_ratio(self) -> float:
        """PPL(model) / PPL(reference): exp of the mean change of the negative log-likelihood."""
        return self.perplexity / self.reference_perplexity


@dataclass(frozen=True, eq=False)
class KLBaseline:
    """A reference model's next-token log-probabilities on the windows of one text, computed
    once to compare any number of models against it (llama.cpp's ``--kl-divergence-base`` file;
    here float32, in memory: 4 · vocabulary bytes per token, 197 kB for the course's model).
    ``windows``: the token ids of each window; ``log_probs``: float32 [len − 1, vocab] for
    each; ``vocab_size``: the reference's. Made by :func:`kl_baseline`; chapter 10.
    """

    windows: list[torch.Tensor]
    log_probs: list[torch.Tensor]
    vocab_size: int | None

    @property
    def n_tokens(self) -> int:
        """The number of predicted tokens: every position after the first of each window."""
        return sum(lp.shape[0] for lp in self.log_probs)


def kl_baseline(
    reference: nn.Module,
    tokenizer: object,
    text: str,
    *,
    max_tokens: int = 2048,
    window: int = 1024,
    progress: bool | None = None,
) -> KLBaseline:
    """The log-probabilities of ``reference`` on the windows :func:`kl_divergence` reads.

    Pass the result as ``kl_divergence``'s ``reference`` to compare many models with one
    reference pass (as ``llama-perplexity --kl-divergence-base`` stores them once): the figures
    are those of passing the reference model itself. Chapter 10 (what quantization buys).
    """
    check_module(reference, "reference")
    windows = token_windows(tokenizer, text, max_tokens=max_tokens, window=window)
    _check_same_vocabulary(reference, reference, tokenizer)
    with torch.inference_mode():
        log_probs = [
            _log_probs(reference, ids).cpu()
            for ids in progress_bar(windows, desc="KL baseline", progress=progress)
        ]
    return KLBaseline(windows, log_probs, getattr(reference.config, "vocab_size", None))


def kl_divergence(
    reference: nn.Module | KLBaseline,
    model: nn.Module,
    tokenizer: object,
    text: str,
    *,
    max_tokens: int = 2048,
    window: int = 1024,
    progress: bool | None = None,
) -> Divergence:
    """KL divergence of ``model``'s next-token distributions from ``reference``'s, per token.

    Both models read the same windows as :func:`perplexity` (``max_tokens`` tokens of
    ``text`` cut into windows of ``window``, each from no context); at every predicted
    position, with p and q the two softmaxes over the vocabulary,
    KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) ≥ 0, zero only where the distributions agree.
    Unlike perplexity, which only looks at the probability of the token that came next, this
    compares the whole distribution, so two models with the same perplexity can differ
    (Kullback and Leibler 1951; for quantized LLMs, llama.cpp's ``--kl-divergence``).

    How llama.cpp's figures differ: ``llama-perplexity`` scores only the second half of each
    context of ``n_ctx`` tokens (the first half is context), stores the reference's
    log-probabilities in 16 bits, and prints Δp in percent; here every position after the
    first of a window counts and everything is float32 log-softmax, summed in float64.
    ``tokenizer`` is the one both models read; they must share its vocabulary (a
    ``ValueError`` otherwise). ``reference`` may also be a :class:`KLBaseline` of the same
    text, tokens and windows (:func:`kl_baseline`): its stored log-probabilities stand for the
    reference model's, and only ``model`` runs. Chapter 10 (what quantization buys).
    """
    check_module(model, "model")
    windows = token_windows(tokenizer, text, max_tokens=max_tokens, window=window)
    if isinstance(reference, KLBaseline):
        _check_baseline(reference, windows)
        stored = reference.log_probs
    else:
        check_module(reference, "reference")
        _check_same_vocabulary(reference, model, tokenizer)
        stored = None
    per_token: list[torch.Tensor] = []
    same_top = delta_p = nll = nll_ref = 0.0
    with torch.inference_mode():
        for i, ids in enumerate(progress_bar(windows, desc="KL divergence", progress=progress)):
            log_q = _log_probs(model, ids)
            log_p = _log_probs(reference, ids) if stored is None else stored[i].to(log_q.device)
            if log_q.shape != log_p.shape:
                raise ValueError(
                    f"model: expected logits over the reference's {log_p.shape[-1]} tokens, "
                    f"got {log_q.shape[-1]}"
                )
            target = ids[1:].to(log_p.device).unsqueeze(1)
            per_token.append(_kl_rows(log_p, log_q).cpu())
            same_top += (log_p.argmax(dim=1) == log_q.argmax(dim=1)).sum().item()
            p_ref, p_q = log_p.gather(1, target), log_q.gather(1, target)
            delta_p += (p_q.exp() - p_ref.exp()).double().sum().item()
            nll_ref -= p_ref.double().sum().item()
            nll -= p_q.double().sum().item()
    values = torch.cat(per_token)
    n = values.numel()
    return Divergence(
        values=values,
        top1_agreement=same_top / n,
        delta_p=delta_p / n,
        perplexity=math.exp(nll / n),
        reference_perplexity=math.exp(nll_ref / n),
    )


def kl_per_token(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) at every position: p = softmax(``reference_logits``), q = softmax(``logits``).

    Both ``[positions, vocab]`` (or ``[vocab]`` for one position), any float dtype; computed as
    Σ_v p(v) (log p(v) − log q(v)) from float32 log-softmaxes, returned in float64 nats, one
    value per position. What :func:`kl_divergence` sums window by window (Kullback and Leibler
    1951; chapter 10's exercise writes it).
    """
    check_float_tensor(reference_logits, "reference_logits")
    check_float_tensor(logits, "logits")
    if reference_logits.ndim not in (1, 2) or logits.shape != reference_logits.shape:
        raise ValueError(
            "logits: expected the shape of reference_logits ([positions, vocab] or [vocab]), "
            f"got {tuple(logits.shape)} and {tuple(reference_logits.shape)}"
        )
    log_p = F.log_softmax(reference_logits.float(), dim=-1)
    log_q = F.log_softmax(logits.float().to(log_p.device), dim=-1)
    return _kl_rows(log_p, log_q)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ_v p (log p − log q) along the last dimension, float64 (p = 0 terms contribute 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1).double()


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """log-softmax of the model's logits at every position but the last, float32 [n − 1, vocab]."""
    logits = model(ids.to(model_device(model)).unsqueeze(0)).logits[0, :-1]
    return F.log_softmax(logits.float(), dim=-1)


def _check_baseline(baseline: KLBaseline, windows: list[torch.Tensor]) -> None:
    """The baseline was made on these very windows (same tokens, same cuts)."""
    same = len(baseline.windows) == len(windows) and all(
        torch.equal(a, b) for a, b in zip(baseline.windows, windows, strict=False)
    )
    if not same:
        raise ValueError(
            f"reference: expected a KLBaseline of these {sum(w.numel() for w in windows)} tokens "
            f"in {len(windows)} windows, got one of {sum(w.numel() for w in baseline.windows)} "
            f"in {len(baseline.windows)}: make it with kl_baseline on the same text, max_tokens "
            "and window"
        )


def _check_same_vocabulary(reference: nn.Module, model: nn.Module, tokenizer: object) -> None:
    """Both models' output vocabularies are one size, and the tokenizer's ids fit in it."""
    sizes = {
        name: getattr(getattr(m, "config", None), "vocab_size", None)
        for name, m in (("reference", reference), ("model", model))
    }
    if None not in sizes.values() and sizes["reference"] != sizes["model"]:
        raise ValueError(
            f"model: expected the reference's vocabulary of {sizes['reference']} tokens, "
            f"got {sizes['model']}: KL divergence compares distributions over the same tokens"
        )
    tokens = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    vocab = sizes["reference"]
    if tokens is not None and vocab is not None and tokens > vocab:
        raise ValueError(
            f"tokenizer: expected at most the models' {vocab} tokens, got a tokenizer of "
            f"{tokens}: it is not these models' tokenizer"
        )


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
