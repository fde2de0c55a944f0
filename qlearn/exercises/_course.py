"""The course's model for the exercises that run on it: loaded once per process, and what a
seed draws from it (layers, windows of *Emma*, the inputs a layer receives on them). Chapters
01–08 each pose at least one exercise on this model, not only on toy tensors."""

from __future__ import annotations

import functools
from typing import Any, Final

import torch
from torch import nn

from qlearn import models
from qlearn.data import calibration_windows, load_text
from qlearn.exercises._runner import Draw

MODEL_NOTE: Final = "SmolLM2-135M-Instruct, the course's model (its weights a Q4_1 reconstruction)"


@functools.cache
def course_model() -> tuple[nn.Module, Any]:
    """(model, tokenizer) of ``qlearn.models.load_model()``, loaded once per process."""
    return models.load_model()


def layer_names(suffix: str = "") -> list[str]:
    """The names of the course model's decoder linear layers that end with ``suffix``."""
    model, _ = course_model()
    return [name for name, _ in models.linear_layers(model) if name.endswith(suffix)]


def weight(name: str) -> torch.Tensor:
    """A copy of the weight [out, in] of the course model's layer ``name``, float32."""
    model, _ = course_model()
    layer = dict(models.linear_layers(model))[name]
    return models.get_weight(layer).detach().float().clone()


def drawn_names(draw: Draw, n: int, suffix: str = "") -> list[str]:
    """``n`` different layer names (ending with ``suffix``) drawn by the seed, in model order."""
    names = layer_names(suffix)
    return [names[i] for i in sorted(draw.py.sample(range(len(names)), n))]


def drawn_weights(draw: Draw, n: int, suffix: str = "") -> list[tuple[str, torch.Tensor, str]]:
    """``n`` layers drawn by the seed (:func:`drawn_names`), each as (name, a copy of its
    weight, how a check shows it)."""
    return [
        (name, w := weight(name), shown_weight(name, w)) for name in drawn_names(draw, n, suffix)
    ]


@functools.cache
def _windows(n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    _, tokenizer = course_model()
    return calibration_windows(
        tokenizer, load_text("emma"), n_samples=n_samples, seqlen=seqlen, seed=seed
    )


def emma_windows(draw: Draw, n_samples: int, seqlen: int) -> torch.Tensor:
    """[n_samples, seqlen] tokens of *Emma* drawn by the seed (``calibration_windows``)."""
    return _windows(n_samples, seqlen, draw.seed).clone()


def layer_inputs(names: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the named layers receive when the course model reads ``windows`` [n, seqlen]:
    ``{name: [n · seqlen, in_features]}`` float32, the tokens of every window one after another."""
    model, _ = course_model()
    layers = dict(models.linear_layers(model))
    caught: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [
        layers[name].register_forward_pre_hook(
            lambda module, args, name=name: caught[name].append(args[0].detach().float().clone())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            for ids in windows:
                model(input_ids=ids[None], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for name, xs in caught.items()
    }


def drawn_layers_and_inputs(
    draw: Draw, names: list[str], n: int, n_windows: int, seqlen: int
) -> list[tuple[str, torch.Tensor, torch.Tensor, dict[str, str]]]:
    """``n`` of ``names`` drawn by the seed, each as (name, weight, what it receives on
    ``n_windows`` windows of ``seqlen`` tokens of *Emma* drawn by the seed, how to show them)."""
    chosen = draw.py.sample(names, n)
    inputs = layer_inputs(chosen, emma_windows(draw, n_windows, seqlen))
    tokens = n_windows * seqlen
    return [
        (
            name,
            w := weight(name),
            inputs[name],
            {"W": shown_weight(name, w), "X": f"its inputs [{tokens}, {w.shape[1]}] on Emma"},
        )
        for name in chosen
    ]


def shown_weight(name: str, w: torch.Tensor) -> str:
    """How a check shows a real weight: its layer and shape, not its values."""
    return f"the weight of {name} ({w.shape[0]}×{w.shape[1]}), from {MODEL_NOTE}"
