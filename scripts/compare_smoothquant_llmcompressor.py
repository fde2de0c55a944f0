"""Compare qlearn.smoothquant with llmcompressor's SmoothQuantModifier on a tiny Llama (CPU).

llmcompressor is heavy (and pins its own transformers), so it is not a test dependency: run this
in a throwaway environment, from the repository root:

    python3.11 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor
    PYTHONPATH=. /tmp/llmc/bin/python scripts/compare_smoothquant_llmcompressor.py

Both fold s into the norm before q, k, v and before gate, up. They differ in the statistics
behind s (qlearn follows the paper and the authors' code; llmcompressor 0.14's
``_calculate_smoothing_scales``):

    paper, qlearn:   s_j = max|X_j|^α / max|W_j|^(1−α)
    llmcompressor:   s_j = (max X_j − min X_j)^α / (2 · max|W_j|)^(1−α)

So the script prints, per smoothing group and α: the relative gap between llmcompressor's
scales (read back from its folded norm: original γ / smoothed γ) and qlearn's
``smoothing_scales(max|X|, W)``; the gap to ``smoothing_scales(max X − min X, 2 · W)``, which is
llmcompressor's formula computed by qlearn's function (expected: float rounding); and the gap
between the weights each folds (qlearn's ``smooth_model_`` with llmcompressor's statistics, by
``awq.fold_scales_``). Last, how far each smoothed model's logits are from the original's.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
from transformers import LlamaForCausalLM

from qlearn import awq, smoothquant

sys.path.insert(0, os.path.dirname(__file__))
from _llmcompressor_oneshot import quiet, run_oneshot, token_ids
from _llmcompressor_oneshot import tiny_llama as shared_tiny_llama

ALPHAS = (0.5, 0.8)


def tiny_llama() -> LlamaForCausalLM:
    model = shared_tiny_llama(num_key_value_heads=2)
    with torch.no_grad():  # outlier channels, as real models grow them (Xiao et al. §3)
        for block in model.model.layers:
            block.input_layernorm.weight.uniform_(0.5, 1.5)
            block.post_attention_layernorm.weight.uniform_(0.5, 1.5)
            block.input_layernorm.weight[::32] = 20.0
            block.post_attention_layernorm.weight[5::64] = 30.0
    return model


def channel_min_max(model: LlamaForCausalLM, ids: torch.Tensor) -> dict[str, tuple]:
    """Per smoothing layer (the norm), the per-channel min and max of its output."""
    stats: dict[str, tuple] = {}

    def hook(name):
        def record(module, args, out):
            x = out.reshape(-1, out.shape[-1])
            lo, hi = x.amin(0), x.amax(0)
            if name in stats:
                lo, hi = torch.minimum(stats[name][0], lo), torch.maximum(stats[name][1], hi)
            stats[name] = (lo, hi)

        return record

    handles = [
        model.get_submodule(g.norm).register_forward_hook(hook(g.norm))
        for g in smoothquant.smoothing_groups(model)
    ]
    with torch.no_grad():
        for row in ids:
            model(row[None])
    for h in handles:
        h.remove()
    return stats


def run_llmcompressor(model: LlamaForCausalLM, ids: torch.Tensor, alpha: float):
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return run_oneshot(model, ids, [SmoothQuantModifier(smoothing_strength=alpha)], 512)


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def main() -> None:
    quiet()
    model = tiny_llama()
    calibration, held_out = token_ids(held_out_rows=4)
    absmax = smoothquant.activation_absmax(model, calibration)
    ranges = channel_min_max(model, calibration)
    groups = smoothquant.smoothing_groups(model)
    with torch.no_grad():
        expected = model(held_out).logits
    print(
        f"{'α':>4} {'smoothing group':<38}{'vs paper s':>12}{'vs llmc formula':>17}"
        f"{'weights gap':>13}"
    )
    for alpha in ALPHAS:
        theirs = run_llmcompressor(copy.deepcopy(model), calibration, alpha)
        ours = copy.deepcopy(model)  # llmcompressor's statistics, qlearn's formula and folding
        for group in groups:
            norm = model.get_submodule(group.norm).weight.detach()
            s_theirs = norm / theirs.get_submodule(group.norm).weight.detach()
            weights = [model.get_submodule(n).weight.detach() for n in group.layers]
            paper = smoothquant.smoothing_scales(absmax[group.layers[0]], weights, alpha=alpha)
            lo, hi = ranges[group.norm]
            formula = smoothquant.smoothing_scales(hi - lo, [2 * w for w in weights], alpha=alpha)
            awq.fold_scales_(
                ours.get_submodule(group.norm),
                [ours.get_submodule(n) for n in group.layers],
                formula,
            )
            weight_gap = max(
                gap(ours.get_submodule(n).weight, theirs.get_submodule(n).weight)
                for n in group.layers
            )
            print(
                f"{alpha:>4} {group.norm:<38}{gap(paper, s_theirs):>12.1e}"
                f"{gap(formula, s_theirs):>17.1e}{weight_gap:>13.1e}"
            )
        paper_model = copy.deepcopy(model)
        smoothquant.smooth_model_(paper_model, act_absmax=absmax, alpha=alpha)
        with torch.no_grad():
            for label, m in [("llmcompressor", theirs), ("qlearn (paper)", paper_model)]:
                print(
                    f"     {label} smoothed, logits vs original: max |Δ| / max |logit| = "
                    f"{gap(m(held_out).logits, expected):.1e}"
                )


if __name__ == "__main__":
    main()
