"""Compare qlearn.awq with llmcompressor's AWQ on a tiny Llama built from a config (CPU).

llmcompressor is heavy (and pins its own transformers), so it is not a test dependency: run this
once in a throwaway virtual environment that has both, e.g.

    python3.11 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor
    PYTHONPATH=. /tmp/llmc/bin/python scripts/compare_awq_llmcompressor.py

Both search s = s_X^α per scale group on the same calibration tokens, with llmcompressor's grid
(α = i / 19, i = 0 … 19: it includes 1, unlike the authors' i / 20) and ``duo_scaling=False``
(the paper's scales; llmcompressor's default also divides by the weights' magnitudes), no
clipping (llmcompressor has no clip search), groups of 128, and llmcompressor's "sequential"
pipeline (its "basic" one found NaN when it replayed the attention here, and skipped those
groups). Printed: per scale group the α each chose (llmcompressor's read back from the scales it
folded into the model), how far apart the folded scales and weights are, the error gain of each
(RTN's error over the best), and the largest relative gap between the two error curves over α;
then the output error of the quantized models.

The two quantizers differ in one point: compressed-tensors stretches each group's range to hold 0
(as GPTQ's does); the authors' quantizer, which qlearn follows, does not. With groups of 128 the
range almost always holds 0 anyway.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
from transformers import LlamaForCausalLM

from qlearn import awq

sys.path.insert(0, os.path.dirname(__file__))
from _llmcompressor_oneshot import quiet, run_oneshot, token_ids
from _llmcompressor_oneshot import tiny_llama as shared_tiny_llama

ALPHAS = [i / 19 for i in range(20)]  # llmcompressor's grid: n_grid = 20 points over [0, 1]
HISTORY: dict[str, list[float]] = {}  # llmcompressor's output error at each α, per scale group


def tiny_llama() -> LlamaForCausalLM:
    model = shared_tiny_llama(
        num_key_value_heads=4
    )  # v and o of the same shape: the v → o group applies
    with torch.no_grad():  # salient channels, as real models grow them (Lin et al. §3.1)
        for block in model.model.layers:
            block.input_layernorm.weight[::32] = 12.0
            block.post_attention_layernorm.weight[::32] = 12.0
    return model


def run_llmcompressor(model: LlamaForCausalLM, ids: torch.Tensor) -> LlamaForCausalLM:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    # llmcompressor 0.14 pins its cached activations in page-locked memory before the grid
    # search, which a CPU-only torch refuses ("Cannot access accelerator device"): skip it.
    IntermediatesCache.pin_memory = lambda self, batch_index: None
    # record the output error at every α of every grid search (the loss of each sweep)
    compute_best_scale, compute_loss = AWQModifier._compute_best_scale, AWQModifier._compute_loss

    def best_scale(self, mapping, *args, **kwargs):
        HISTORY[mapping.smooth_name] = []
        return compute_best_scale(self, mapping, *args, **kwargs)

    def loss(self, *args, **kwargs):
        value = compute_loss(self, *args, **kwargs)
        next(reversed(HISTORY.values())).append(value)
        return value

    AWQModifier._compute_best_scale, AWQModifier._compute_loss = best_scale, loss

    recipe = [
        AWQModifier(duo_scaling=False, n_grid=20),
        QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"]),
    ]
    return run_oneshot(model, ids, recipe, vocab_size=512)


def implied_alpha(x_mean: torch.Tensor, scales: torch.Tensor) -> tuple[float, float]:
    """The grid α whose scales are closest to ``scales``, and the relative distance."""
    distances = [float(((awq.awq_scales(x_mean, a) - scales).abs() / scales).max()) for a in ALPHAS]
    best = min(range(len(ALPHAS)), key=distances.__getitem__)
    return ALPHAS[best], distances[best]


def main() -> None:
    quiet()
    model = tiny_llama()
    calibration, held_out = token_ids(held_out_rows=8)
    means = awq.activation_means(model, calibration)

    folded, report = awq.quantize_model(
        model, calibration, alphas=ALPHAS, clip=False, quantize=False, progress=False
    )
    ours_q, _ = awq.quantize_model(model, calibration, alphas=ALPHAS, clip=False)
    rtn_q, _ = awq.quantize_model(model, calibration, alphas=[0.0], clip=False)
    theirs = run_llmcompressor(copy.deepcopy(model), calibration)

    print(
        f"{'scale group':<34}{'qlearn α':>9}{'llmc α':>8}{'scale gap':>11}{'weight gap':>12}"
        f"{'qlearn gain':>13}{'llmc gain':>11}{'error curves gap':>18}"
    )
    for row in report.scales:
        prev = row.prev
        layer = row.layers[0]
        original = model.get_submodule(prev).weight.detach()
        ours = folded.get_submodule(prev).weight.detach()
        theirs_w = theirs.get_submodule(prev).weight.detach()
        if original.ndim == 1:  # a norm: weight ÷ s
            s_ours, s_theirs = original / ours, original / theirs_w
        else:  # a linear layer: rows ÷ s
            s_ours = original.abs().sum(1) / ours.abs().sum(1)
            s_theirs = original.abs().sum(1) / theirs_w.abs().sum(1)
        alpha_theirs, _ = implied_alpha(means[layer], s_theirs)
        scale_gap = float(((s_ours - s_theirs).abs() / s_ours).max())
        weight_gap = float((ours - theirs_w).abs().max() / ours.abs().max())
        history = HISTORY[prev]  # llmcompressor's error at each α, ours in row.errors
        curve_gap = max(abs(a - b) / b for a, b in zip(row.errors, history, strict=True))
        print(
            f"{row.name:<34}{row.alpha:>9.3f}{alpha_theirs:>8.3f}{scale_gap:>11.1e}"
            f"{weight_gap:>12.1e}{row.gain:>13.3f}{history[0] / min(history):>11.3f}"
            f"{curve_gap:>18.1e}"
        )

    with torch.no_grad():
        expected = model(held_out).logits
        for label, m in [("RTN (α = 0)", rtn_q), ("qlearn AWQ", ours_q), ("llmcompressor", theirs)]:
            error = float((m(held_out).logits - expected).pow(2).mean())
            print(f"{label:<14} logits MSE vs FP32 on held-out tokens: {error:.4g}")


if __name__ == "__main__":
    main()
