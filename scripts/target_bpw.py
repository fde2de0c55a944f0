"""Bits where they matter, on the course's model: a type per tensor chosen by
``allocation.allocate_types`` at Q4_K_M's size (and at 4.5 bits per weight), against Q4_K_M
itself, every recipe with the same importance matrix.

Importance from 32 windows of 512 tokens of *Emma*; candidate types Q2_K … Q8_0, Q4_0 … Q5_1,
IQ4_NL and IQ4_XS (each tensor's effective type after llama.cpp's fallback); errors
``allocation.tensor_errors`` (importance-weighted squared error); evaluation: perplexity on the
first 2048 tokens of *Pride and Prejudice*, KL divergence from FP32 on its first 512.

    PYTHONPATH=. python scripts/target_bpw.py          # about 5 minutes on 2 cores, alone
    PYTHONPATH=. python scripts/target_bpw.py --json data/target_bpw.json

``--json`` also writes every tensor's options (error and bytes per effective type), the types
chosen and the measured rows, with the machine: chapter 12 reads it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections import Counter
from pathlib import Path

from _course_importance import model_text_and_importance
from _machine import machine

from qlearn import allocation, evaluate, gguf, models

TOKENS, KL_TOKENS = 2048, 512
CANDIDATES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
              "IQ4_NL", "IQ4_XS"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the options and results here")
    args = parser.parse_args()
    rows: list[dict] = []
    allocations: dict[str, dict] = {}
    started = time.perf_counter()
    model, tokenizer, text, imatrix = model_text_and_importance()
    options = allocation.tensor_errors(model, CANDIDATES, imatrix=imatrix)
    n_weights = {name: math.prod(models.get_weight(layer).shape)
                 for name, layer in models.linear_layers(model)}  # fmt: skip
    print(
        f"errors of {len(options)} tensors × their types in {time.perf_counter() - started:.0f} s"
    )
    baseline = evaluate.kl_baseline(model, tokenizer, text, max_tokens=KL_TOKENS, window=KL_TOKENS)

    def measure(label: str, tensors: dict[str, gguf.GGUFTensor]) -> None:
        quantized = copy.deepcopy(model)
        for name, layer in models.linear_layers(quantized):
            models.set_weight_(layer, tensors[name].dequantize())
        bits = 8 * sum(t.nbytes() for t in tensors.values()) / sum(n_weights.values())
        ppl = evaluate.perplexity(quantized, tokenizer, text, max_tokens=TOKENS)
        kld = evaluate.kl_divergence(baseline, quantized, tokenizer, text, max_tokens=KL_TOKENS,
                                     window=KL_TOKENS)  # fmt: skip
        print(f"{label:<44}{bits:>7.3f}{ppl:>11.2f}{kld.mean:>9.4f}{kld.top1_agreement:>8.1%}",
              flush=True)  # fmt: skip
        rows.append({"setting": label, "bits_per_weight": bits, "perplexity": ppl,
                     "kld": kld.mean, "top1": kld.top1_agreement})  # fmt: skip

    print(f"{'setting':<44}{'bits':>7}{'perplexity':>11}{'KLD':>9}{'top-1':>8}")
    mix = gguf.quantize_tensors(model, "Q4_K_M", imatrix=imatrix)
    q4_k_m_bits = 8 * sum(t.nbytes() for t in mix.values()) / sum(n_weights.values())
    measure("Q4_K_M + imatrix", mix)
    # The model's weights are a Q4_1 reconstruction: Q4_1 (and Q5_1, on the same blocks of 32)
    # store them without error, which the allocator finds; the second pass leaves them out.
    aligned = ("Q4_1", "Q5_1")
    without = {n: [o for o in opts if o.qtype not in aligned] for n, opts in options.items()}
    for label, opts, target in [("", options, q4_k_m_bits), ("", options, 4.5),
                                (" without Q4_1/Q5_1", without, q4_k_m_bits),
                                (" without Q4_1/Q5_1", without, 4.5)]:  # fmt: skip
        chosen = allocation.allocate_types(opts, target, n_weights)
        tensors = {}
        for name, layer in models.linear_layers(model):
            qtype = chosen.types[name]
            uses = gguf.BLOCKS[qtype].takes_importance
            weight = models.get_weight(layer).detach().float().numpy()
            tensors[name] = gguf.quantize_tensor(
                weight, qtype, imatrix=imatrix[name].numpy() if uses else None
            )
        measure(f"allocated at {target:.3f}{label}", tensors)
        counts = Counter(chosen.types.values())
        print("    types:", ", ".join(f"{q} ×{n}" for q, n in counts.most_common()))
        allocations[f"allocated at {target:.3f}{label}"] = {
            "target_bpw": target, "without": list(aligned) if label else [],
            "types": chosen.types, "error": chosen.error, "nbytes": chosen.nbytes,
        }  # fmt: skip
    for recipe in ("Q4_K", "IQ4_XS"):
        measure(f"{recipe} + imatrix", gguf.quantize_tensors(model, recipe, imatrix=imatrix))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        _write_json(args.json, options, n_weights, rows, allocations, mix)


def _write_json(
    path: Path,
    options: dict[str, list[allocation.TensorOption]],
    n_weights: dict[str, int],
    rows: list[dict],
    allocations: dict[str, dict],
    mix: dict[str, gguf.GGUFTensor],
) -> None:
    record = {
        "what": "per decoder linear of the course's model, the importance-weighted squared error "
        "and the bytes of every candidate GGUF type (after llama.cpp's fallback), the types "
        "allocation.allocate_types chose, and perplexity (first 2048 tokens of Pride and "
        "Prejudice) and KL divergence from FP32 (its first 512) of each recipe "
        "(scripts/target_bpw.py)",
        "settings": {
            "candidates": CANDIDATES,
            "tokens": TOKENS,
            "kl_tokens": KL_TOKENS,
            "imatrix": "gguf.importance_matrix on 32 windows of 512 tokens of Emma, seed 0",
        },
        "machine": machine(),
        "n_weights": n_weights,
        "options": {
            name: [[o.qtype, o.error, o.nbytes] for o in opts] for name, opts in options.items()
        },
        "q4_k_m_types": {name: t.qtype for name, t in mix.items()},
        "allocations": allocations,
        "results": rows,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
