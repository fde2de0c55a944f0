"""How far the calibrated methods move with the calibration windows: perplexity over seeds.

The notebooks compare GPTQ and AWQ with each other and with methods that need no calibration
(RTN, NF4). Their perplexities move with the random windows they calibrate on, and a claim that
orders two of them holds only if it holds for every seed (docs/design.md, "What nbval
compares"). This script quantizes the default model as chapters 05, 08 and 13 do — 8 windows of
*Emma* (128 tokens each by default, as in 08 and 13), every decoder linear at 4 bits with groups
of 128 — once per seed, and prints each method's perplexity on the first 2048 tokens of *Pride
and Prejudice*, then the smallest and largest over the seeds.

    .venv/bin/python scripts/calibration_spread.py                   # seeds 0, 1, 2 (~6 min)
    .venv/bin/python scripts/calibration_spread.py --seeds 0 1 2 3 4 --seqlen 256
    .venv/bin/python scripts/calibration_spread.py --json data/calibration_spread.json

``--json`` also writes every value with the settings and the machine's CPU kernels: chapter 08
reads data/calibration_spread.json (seeds 0, 1, 2 at its own settings) to show the spread of the
two methods it cannot order from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _machine import machine

from qlearn import awq, evaluate, gptq, models, nf4
from qlearn.data import calibration_windows, load_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the values here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenizer = models.load_model()
    text, emma = load_text("pride_and_prejudice"), load_text("emma")

    def ppl(m: torch.nn.Module) -> float:
        return evaluate.perplexity(m, tokenizer, text, max_tokens=args.max_tokens)

    fixed = {
        "FP32": ppl(model),
        "RTN": ppl(gptq.rtn_quantize_model(model, bits=args.bits, group_size=args.group_size)),
        "NF4 + DQ": ppl(nf4.quantize_model(model, blocksize=64, double_quant=True)),
    }
    for label, value in fixed.items():
        print(f"{label:<24} {value:8.3f}   (no calibration)", flush=True)

    calibrated: dict[str, list[float]] = {"GPTQ": [], "GPTQ act-order": [], "AWQ": []}
    for seed in args.seeds:
        windows = calibration_windows(
            tokenizer, emma, n_samples=args.nsamples, seqlen=args.seqlen, seed=seed
        )
        started = time.perf_counter()
        runs = {
            "GPTQ": gptq.quantize_model(
                model,
                windows,
                bits=args.bits,
                group_size=args.group_size,
                layer_errors=False,
            )[0],
            "GPTQ act-order": gptq.quantize_model(
                model,
                windows,
                bits=args.bits,
                group_size=args.group_size,
                act_order=True,
                static_groups=True,
                layer_errors=False,
            )[0],
            "AWQ": awq.quantize_model(
                model,
                windows,
                bits=args.bits,
                group_size=args.group_size,
            )[0],
        }
        for label, quantized in runs.items():
            calibrated[label].append(ppl(quantized))
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {v[-1]:.3f}" for k, v in calibrated.items())
            + f"  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    print(
        f"\n{args.nsamples} windows x {args.seqlen} tokens, {args.bits}-bit g{args.group_size}, "
        f"seeds {args.seeds}"
    )
    for label, values in calibrated.items():
        print(
            f"{label:<24} min {min(values):8.3f}  max {max(values):8.3f}  "
            f"spread {100 * (max(values) / min(values) - 1):4.1f} %"
        )
    if args.json:
        _write_json(args, fixed, calibrated)
    return 0


def _write_json(args: argparse.Namespace, fixed: dict, calibrated: dict) -> None:
    record = {
        "what": "perplexity on the first max_tokens tokens of Pride and Prejudice, per seed of "
        "the calibration windows of Emma (scripts/calibration_spread.py)",
        "settings": {
            "seeds": args.seeds,
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "bits": args.bits,
            "group_size": args.group_size,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
        },
        "machine": machine(),
        "uncalibrated": fixed,
        "calibrated": calibrated,
    }
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
