"""Chapter 11's KV-cache table on the course's model: KIVI at 8, 4 and 2 bits (keys per channel
or per token, with and without QuaRot's key rotation) and transformers' QuantizedCache (quanto),
perplexity and KL from the FP32 cache, the cache's bytes, and the greedy continuation of a
200-token prompt (how many of 32 tokens equal FP32's before the first that does not).

The first 1024 tokens of *Pride and Prejudice* are read 32 tokens per forward pass
(``kvcache.chunked_logits``): every chunk attends to the earlier tokens through the cache and to
itself in full precision, as decoding does. Recent window R = 32 tokens, values in groups of 32
channels (head dimension 64), float16 scales. Bytes: ``KIVICache.nbytes()`` after the 1024
tokens against ``roofline.kv_cache_bytes`` in FP16.

    PYTHONPATH=. python scripts/kv_cache_bits.py          # about 3 min on 2 cores
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache, QuantizedCache

from qlearn import data, evaluate, kvcache, models, roofline

TOKENS, CHUNK, WINDOW = 1024, 32, 32
PROMPT_TOKENS, NEW = 200, 32  # a prompt longer than the window, so the cache is quantized


def scores(
    logits: torch.Tensor, reference: torch.Tensor, ids: torch.Tensor
) -> tuple[float, float, float]:
    nll = F.cross_entropy(logits[0, :-1], ids[0, 1:])
    kl = evaluate.kl_per_token(reference[0, :-1], logits[0, :-1]).mean()
    top1 = (logits[0, :-1].argmax(-1) == reference[0, :-1].argmax(-1)).double().mean()
    return float(nll.exp()), float(kl), float(top1)


def greedy(model, prompt: torch.Tensor, make_cache) -> torch.Tensor:
    """NEW greedy tokens after ``prompt`` through a fresh cache (None: the FP32 DynamicCache)."""
    cache = DynamicCache(config=model.config) if make_cache is None else make_cache()
    out = model.generate(prompt, past_key_values=cache, max_new_tokens=NEW, do_sample=False)
    return out[0, prompt.shape[1] :]


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> int:
    """How many greedy tokens equal FP32's before the first that does not."""
    same = (tokens[: len(reference)] == reference[: len(tokens)]).long()
    return int(same.cumprod(0).sum())


def main() -> None:
    started = time.perf_counter()
    model, tokenizer = models.load_model()
    text = data.load_text("pride_and_prejudice")
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :TOKENS]
    config = model.config
    reference = kvcache.chunked_logits(model, ids, DynamicCache(config=config), chunk_size=CHUNK)
    fp16 = roofline.kv_cache_bytes(config, TOKENS, bytes_per_value=2)
    ppl, _, _ = scores(reference, reference, ids)
    print(
        f"FP32 cache: perplexity {ppl:.2f}; in FP16 the cache of {TOKENS} tokens is "
        f"{fp16 / 1e6:.2f} MB"
    )
    settings = {}
    for bits in (8, 4, 2):
        for keys, rotate in (
            ("channel", False),
            ("token", False),
            ("token", True),
            ("channel", True),
        ):
            label = f"KIVI {bits}-bit keys per {keys}" + (" rotated" if rotate else "")
            settings[label] = lambda b=bits, k=keys, r=rotate: kvcache.KIVICache(
                config,
                bits=b,
                residual_length=WINDOW,
                group_size=32,
                key_granularity=k,
                rotate_keys=r,
            )
        if bits != 8:  # quanto takes 2 and 4 bits
            settings[f"transformers quanto {bits}-bit"] = lambda b=bits: QuantizedCache(
                "quanto", config, nbits=b, q_group_size=32, residual_length=WINDOW
            )
    prompt = ids[:, TOKENS - PROMPT_TOKENS :]
    expected = greedy(model, prompt, None)
    print(f"FP32 greedy continuation: {tokenizer.decode(expected)!r}")
    print(
        f"{'cache':<34}{'perplexity':>11}{'KLD':>9}{'top-1':>8}{'MB':>8}{'× FP16':>8}"
        "  same greedy tokens (of 32), continuation"
    )
    for label, make in settings.items():
        cache = make()
        logits = kvcache.chunked_logits(model, ids, cache, chunk_size=CHUNK)
        p, kl, top1 = scores(logits, reference, ids)
        tokens = greedy(model, prompt, make)
        size = cache.nbytes() if isinstance(cache, kvcache.KIVICache) else float("nan")
        print(
            f"{label:<34}{p:>11.2f}{kl:>9.4f}{top1:>8.1%}{size / 1e6:>8.3f}{size / fp16:>8.3f}"
            f"  {agreement(tokens, expected):>2}  {tokenizer.decode(tokens)!r}",
            flush=True,
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
