"""What llama.cpp's importance matrix buys on the course's model: Q2_K, Q3_K, Q4_K, Q4_K_M,
Q4_0, IQ4_NL and IQ4_XS, each without and with it (the bytes of ``llama-quantize`` and
``llama-quantize --imatrix`` for the same weights and importance).

The importance matrix: ``gguf.importance_matrix`` on 32 windows of 512 tokens of *Emma*
(``calibration_windows(..., seed=0)``); evaluation: perplexity on the first 2048 tokens of
*Pride and Prejudice* and KL divergence from FP32 on its first 512 (``evaluate.kl_baseline``).
Every decoder linear is quantized; rows of 576 cannot hold a super-block of 256, so those
tensors fall back as in llama.cpp (Q2_K and Q3_K to Q4_0, Q4_K to Q5_0, IQ4_XS to IQ4_NL):
only ``down_proj`` is stored as the k-quant or IQ4_XS itself, and the fallback types use the
importance matrix too.

    PYTHONPATH=. python scripts/imatrix_effect.py          # about 6 minutes on 2 cores
"""

from __future__ import annotations

import copy
import math
import time

from _course_importance import model_text_and_importance

from qlearn import evaluate, gguf, models

TOKENS, KL_TOKENS = 2048, 512


def main() -> None:
    started = time.perf_counter()
    model, tokenizer, text, imatrix = model_text_and_importance()
    print(f"importance matrix of {len(imatrix)} layers in {time.perf_counter() - started:.0f} s")
    baseline = evaluate.kl_baseline(model, tokenizer, text, max_tokens=KL_TOKENS, window=KL_TOKENS)
    fp32 = evaluate.perplexity(model, tokenizer, text, max_tokens=TOKENS)
    print(f"FP32 perplexity {fp32:.2f} (weights: a Q4_1 reconstruction)")
    print(
        f"{'setting':<22}{'bits':>6}{'perplexity':>12}{'× FP32':>8}{'KLD':>9}{'top-1':>8}{'s':>6}"
    )
    recipes = ["Q2_K", "Q3_K", "Q4_0", "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_M"]
    for recipe, use in [(r, u) for r in recipes for u in (False, True)]:
        t = time.perf_counter()
        tensors = gguf.quantize_tensors(model, recipe, imatrix=imatrix if use else None)
        seconds = time.perf_counter() - t
        quantized = copy.deepcopy(model)
        for name, layer in models.linear_layers(quantized):
            models.set_weight_(layer, tensors[name].dequantize())
        n_weights = sum(math.prod(t.shape) for t in tensors.values())
        bits = 8 * sum(t.nbytes() for t in tensors.values()) / n_weights
        ppl = evaluate.perplexity(quantized, tokenizer, text, max_tokens=TOKENS)
        kld = evaluate.kl_divergence(baseline, quantized, tokenizer, text, max_tokens=KL_TOKENS,
                                     window=KL_TOKENS)  # fmt: skip
        label = recipe + (" + imatrix" if use else "")
        print(f"{label:<22}{bits:>6.3f}{ppl:>12.2f}{ppl / fp32:>8.3f}{kld.mean:>9.4f}"
              f"{kld.top1_agreement:>8.1%}{seconds:>6.0f}", flush=True)  # fmt: skip
        del quantized
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
