"""Measure qlearn's GPTQ and RTN perplexities on the settings of docs/design.md's anchor figures.

The anchors were measured with the GPTQ authors' code (IST-DASLab/gptq) on the default model:
evaluation on the first 4096 tokens of *Pride and Prejudice* in windows of 1024 (mean NLL, then
exp), calibration on 32 random windows of 512 tokens of *Emma* (``calibration_windows(...,
seed=0)``: the authors' loader), every decoder linear quantized, embeddings and norms kept.
This script runs the same settings through ``qlearn.gptq`` and ``qlearn.evaluate.perplexity``
and prints, for each: the anchor, our figure, their difference, and both as ratios to FP32
(our FP32 is 20.30 where the anchors' is 20.40: a small difference in preprocessing).

    .venv/bin/python scripts/gptq_anchors.py                 # every setting (~20-40 min)
    .venv/bin/python scripts/gptq_anchors.py gptq-4 rtn-4    # some of them
    .venv/bin/python scripts/gptq_anchors.py --json out.json # also write the figures

Set OMP_NUM_THREADS=1 on a busy machine (docs/design.md, "Anchor figures").
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from qlearn import gptq
from qlearn.data import load_text
from qlearn.evaluate import perplexity
from qlearn.models import load_model

FP32_ANCHOR = 20.40
# name: (method, bits, group_size, act_order with static groups, anchor in docs/design.md)
SETTINGS = {
    "fp32": ("fp32", None, None, False, FP32_ANCHOR),
    "rtn-4": ("rtn", 4, None, False, 32.83),
    "rtn-4-g128": ("rtn", 4, 128, False, 26.13),
    "rtn-3": ("rtn", 3, None, False, 397.0),
    "rtn-3-g128": ("rtn", 3, 128, False, 75.2),
    "gptq-4": ("gptq", 4, None, False, 27.14),
    "gptq-4-g128": ("gptq", 4, 128, False, 25.38),
    "gptq-4-g128-act-order": ("gptq", 4, 128, True, 23.01),
    "gptq-3": ("gptq", 3, None, False, 76.7),
    "gptq-3-g128": ("gptq", 3, 128, False, 40.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", help=f"any of {', '.join(SETTINGS)}")
    parser.add_argument("--seed", type=int, default=0, help="calibration windows' seed")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    names = args.settings or list(SETTINGS)
    if "fp32" not in names:
        names = ["fp32", *names]

    model, tokenizer = load_model()
    calibration, evaluation = load_text("emma"), load_text("pride_and_prejudice")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; calibration "
        f"{args.nsamples} × {args.seqlen} tokens of Emma (seed {args.seed}, batches of "
        f"{args.batch_size}), evaluation "
        f"{args.max_tokens} tokens of Pride and Prejudice in windows of 1024",
        flush=True,
    )
    results = {}
    for name in names:
        method, bits, group_size, act_order, anchor = SETTINGS[name]
        started = time.perf_counter()
        if method == "fp32":
            quantized = model
        elif method == "rtn":
            quantized = gptq.rtn_quantize_model(model, bits=bits, group_size=group_size)
        else:
            quantized, _ = gptq.quantize_model(
                model,
                calibration,
                tokenizer,
                bits=bits,
                group_size=group_size,
                act_order=act_order,
                static_groups=act_order,
                nsamples=args.nsamples,
                seqlen=args.seqlen,
                seed=args.seed,
                batch_size=args.batch_size,
            )
        quantize_s = time.perf_counter() - started
        ppl = perplexity(quantized, tokenizer, evaluation, max_tokens=args.max_tokens)
        results[name] = {"anchor": anchor, "ppl": ppl, "quantize_s": quantize_s}
        print(f"{name:<24} {ppl:8.2f}   (quantized in {quantize_s:.0f} s)", flush=True)
        del quantized

    fp32 = results["fp32"]["ppl"]
    print(
        f"\n{'setting':<24}{'anchor':>8}{'ours':>8}{'diff':>8}"
        f"{'anchor/FP32':>13}{'ours/FP32':>11}{'diff':>8}{'time':>8}"
    )
    for name, r in results.items():
        anchor_ratio, ratio = r["anchor"] / FP32_ANCHOR, r["ppl"] / fp32
        print(
            f"{name:<24}{r['anchor']:>8.2f}{r['ppl']:>8.2f}"
            f"{100 * (r['ppl'] / r['anchor'] - 1):>7.1f}%{anchor_ratio:>13.3f}{ratio:>11.3f}"
            f"{100 * (ratio / anchor_ratio - 1):>7.1f}%{r['quantize_s']:>7.0f}s"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"seed": args.seed, "batch_size": args.batch_size, "results": results},
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
