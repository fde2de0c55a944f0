"""Chapter 11's weight/activation table on the course's model: W8A8, W4A8 and W4A4 with and
without SmoothQuant and a rotation, RTN and GPTQ weights, perplexity and KL from FP32.

Weights: every decoder linear, per output channel (RTN: zero-point, ``affine.quantize_model``
with ``axis=0``; GPTQ: ``gptq.quantize_model``, 4-bit per channel, asymmetric, 32 × 512 tokens of
*Emma*). Activations: the input of every decoder linear, dynamic, per token, absmax
(``calibration.quantize_activations(granularity="token")``). Embeddings, norms, attention (the
KV cache) and the LM head stay FP32. Transforms: none; SmoothQuant α = 0.5
(``smoothquant.smooth_model_``, maxima from the same calibration windows); QuaRot's Hadamard
rotation (``rotation.rotate_model_``, online Hadamards before o_proj and down_proj). Evaluation:
the first 1024 tokens of *Pride and Prejudice* (one window); KL over the same tokens.

    PYTHONPATH=. python scripts/weight_activation_bits.py          # about 6 min on 2 cores
"""

from __future__ import annotations

import copy
import time

import torch

from qlearn import affine, calibration, data, evaluate, gptq, models, rotation, smoothquant

TOKENS = 1024
SETTINGS = [  # (weight bits, activation bits or None, weights by)
    (8, 8, "RTN"),
    (4, None, "RTN"),
    (4, 8, "RTN"),
    (4, 4, "RTN"),
    (4, None, "GPTQ"),
    (4, 4, "GPTQ"),
]


def main() -> None:
    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = models.load_model()
    text, emma = data.load_text("pride_and_prejudice"), data.load_text("emma")
    windows = data.calibration_windows(tokenizer, emma, n_samples=32, seqlen=512, seed=0)
    baseline = evaluate.kl_baseline(model, tokenizer, text, max_tokens=TOKENS, window=TOKENS)
    fp32 = evaluate.perplexity(model, tokenizer, text, max_tokens=TOKENS, window=TOKENS)
    print(f"FP32 perplexity {fp32:.2f} on {TOKENS} tokens (weights: a Q4_1 reconstruction)")

    smoothed = copy.deepcopy(model)
    smoothquant.smooth_model_(smoothed, windows, alpha=0.5)
    rotated = copy.deepcopy(model)
    rotation.rotate_model_(rotated)
    transforms = {"none": model, "SmoothQuant 0.5": smoothed, "Hadamard": rotated}

    print(f"{'setting':<14}{'transform':<18}{'perplexity':>11}{'× FP32':>8}{'KLD':>9}{'top-1':>8}")
    for w_bits, a_bits, method in SETTINGS:
        for label, base in transforms.items():
            if method == "RTN":
                quantized = affine.quantize_model(base, "zeropoint", bits=w_bits, axis=0)
            else:
                quantized, _ = gptq.quantize_model(base, windows, bits=w_bits, progress=False)
            setting = f"W{w_bits}A{a_bits or 32} {method}"
            handle = (
                calibration.quantize_activations(quantized, bits=a_bits, granularity="token")
                if a_bits
                else None
            )
            with torch.no_grad():
                ppl = evaluate.perplexity(
                    quantized, tokenizer, text, max_tokens=TOKENS, window=TOKENS
                )
                kld = evaluate.kl_divergence(
                    baseline, quantized, tokenizer, text, max_tokens=TOKENS, window=TOKENS
                )
            if handle is not None:
                handle.remove()
            print(
                f"{setting:<14}{label:<18}{ppl:>11.2f}{ppl / fp32:>8.3f}{kld.mean:>9.4f}"
                f"{kld.top1_agreement:>8.1%}",
                flush=True,
            )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
