"""Time qlearn.kernels' real low-bit layers against FP32, BF16 and dequantize-then-matmul, in one
run; then the whole default model's decoding speed per kind, and the share of the roofline.

Layers: the default model's four shapes at 1 token (batch-1 decoding) and 512 tokens (a
prompt: prefill). Columns:

- ``FP32`` / ``BF16``: ``F.linear`` with the float weight (as chapters 02–08 run the model);
- ``deq+mm``: what a fake-quantized layer does when it keeps only int4 codes: dequantize the
  codes to float32 on every call, then ``F.linear`` (the INT4 paper's "dequantization cost");
- ``int8`` / ``int4``: ``Int8WeightOnlyLinear`` / ``Int4WeightOnlyLinear`` in bfloat16, their
  fast path; ``int8·f32`` / ``int4·f32``: the same kernels with float32 activations (torch
  2.13's CPU fallback loop); ``w8a8``: ``W8A8Linear`` (``torch._int_mm``).

Whole model (``--model``, about 2 minutes): greedy decoding of 64 new tokens after a 16-token
prompt (KV cache, batch 1) and one 512-token prefill, for FP32, BF16 (``model.to(bfloat16)``)
and each kernel kind; the LM head (tied to the embedding) stays as it was in every kind. The
roofline (``qlearn.roofline``): a copy of a 1 GiB tensor measures this machine's memory
bandwidth B (bytes read + written per second); decoding one token reads every weight once, so
tokens/s ≤ B / bytes of weights read. The share of that limit each kind reaches is printed.
Caches: a CPU whose last level cache holds most of the weights (480 MiB on some Xeons) can beat
the DRAM roofline.

Run alone: two cores are easily saturated and any other job changes every figure. Run with
qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_kernels.py [--model]`.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _timing import time_call
from torch import nn

from qlearn import kernels, roofline

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]
TOKENS = [1, 512]
GROUP_SIZE = 64


def layer_table() -> None:
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, int4 groups of {GROUP_SIZE}"
    )
    columns = ["FP32", "BF16", "deq+mm", "int8", "int8·f32", "w8a8", "int4", "int4·f32"]
    print(f"{'in → out':<12}{'tokens':>7}" + "".join(f"{c:>10}" for c in columns) + "   (ms)")
    ratios = []
    for in_features, out_features in SHAPES:
        linear = nn.Linear(in_features, out_features, bias=False)
        weight = linear.weight.detach()
        int4 = kernels.Int4WeightOnlyLinear.from_linear(linear, group_size=GROUP_SIZE)
        layers = {
            "int8": kernels.Int8WeightOnlyLinear.from_linear(linear),
            "int8·f32": kernels.Int8WeightOnlyLinear.from_linear(
                linear, compute_dtype=torch.float32
            ),
            "w8a8": kernels.W8A8Linear.from_linear(linear),
            "int4": int4,
            "int4·f32": kernels.Int4WeightOnlyLinear.from_linear(
                linear, group_size=GROUP_SIZE, compute_dtype=torch.float32
            ),
        }
        codes, scale, zero = _unpacked(int4)
        weight_bf16 = weight.bfloat16()
        for tokens in TOKENS:
            x = torch.randn(tokens, in_features)
            repeat = 30 if tokens == 1 else 5
            with torch.no_grad():
                times = {
                    "FP32": time_call(lambda x=x, w=weight: F.linear(x, w), repeat),
                    "BF16": time_call(lambda x=x, w=weight_bf16: F.linear(x.bfloat16(), w), repeat),
                    "deq+mm": time_call(
                        lambda x=x, q=codes, s=scale, z=zero: F.linear(x, (q - 8) * s + z),
                        repeat,
                    ),
                }
                for name, layer in layers.items():
                    slow = name.endswith("f32") and tokens > 1
                    times[name] = time_call(lambda x=x, m=layer: m(x), 2 if slow else repeat)
            print(
                f"{f'{in_features} → {out_features}':<12}{tokens:>7}"
                + "".join(f"{1e3 * times[c]:>10.3f}" for c in columns)
            )
            ratios.append((f"{in_features}→{out_features} × {tokens}", times))
    print("\nspeed-up over FP32 (FP32 time / kernel time; > 1: the kernel is faster)")
    kinds = ["BF16", "deq+mm", "int8", "w8a8", "int4"]
    print(f"{'layer × tokens':<22}" + "".join(f"{k:>9}" for k in kinds) + f"{'int4/deq':>10}")
    for label, times in ratios:
        print(
            f"{label:<22}"
            + "".join(f"{times['FP32'] / times[k]:>9.2f}" for k in kinds)
            + f"{times['deq+mm'] / times['int4']:>10.2f}"
        )
    print(
        "int4/deq: dequantize-then-matmul time over the int4 kernel's (> 1: the kernel wins).\n"
        "int8·f32 and int4·f32 (float32 activations) take torch's fallback loop on the CPU."
    )


def _unpacked(layer: kernels.Int4WeightOnlyLinear) -> tuple[torch.Tensor, ...]:
    """The int4 layer's codes (as uint8, one per byte) and per-column scale and zero, float32:
    what a layer that dequantizes on every call would keep."""
    weight = layer.dequantize()
    table = layer.scales_and_zeros.float()
    scale = table[..., 0].T.repeat_interleave(layer.group_size, dim=1)
    zero = table[..., 1].T.repeat_interleave(layer.group_size, dim=1)
    codes = torch.round((weight - zero) / scale + 8).to(torch.uint8)
    return codes, scale, zero


def model_table() -> None:
    from qlearn import data, models

    model, tokenizer = models.load_model()
    text = data.load_text("pride_and_prejudice")
    ids = tokenizer(text[:20000], return_tensors="pt", add_special_tokens=False).input_ids
    prompt, prefill = ids[:, :16], ids[:, :512]
    bw = roofline.measure_bandwidth(1 << 30)
    print(f"\nmemory bandwidth (copy of 1 GiB): {bw / 1e9:.1f} GB/s")
    variants = {"FP32": model, "BF16": _bf16_copy(model)}
    for kind in kernels.KINDS:
        variants[kind] = kernels.quantize_model(model, kind=kind, group_size=GROUP_SIZE)
    print(
        f"{'kind':<6}{'weights MB':>11}{'decode tok/s':>14}{'roofline':>10}{'share':>7}"
        f"{'vs FP32':>9}{'prefill ms':>12}{'vs FP32':>9}"
    )
    base_decode = base_prefill = None
    with torch.inference_mode():
        for name, variant in variants.items():
            per_token = roofline.decode_seconds_per_token(variant, prompt, new_tokens=64)
            prefill_s = time_call(lambda v=variant: v(prefill), 3, stat="median")
            read = roofline.weight_bytes_read(variant)
            limit = bw / read
            base_decode = base_decode or per_token
            base_prefill = base_prefill or prefill_s
            print(
                f"{name:<6}{read / 1e6:>11.1f}{1 / per_token:>14.1f}{limit:>10.1f}"
                f"{(1 / per_token) / limit:>7.2f}{base_decode / per_token:>9.2f}"
                f"{1e3 * prefill_s:>12.1f}{base_prefill / prefill_s:>9.2f}"
            )
    print(
        "roofline: bandwidth / weight bytes read per token (tokens/s); share: measured / "
        "roofline; vs FP32: FP32's time over this kind's (> 1: faster)."
    )


def _bf16_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="store_true", help="also time the whole model")
    args = parser.parse_args()
    started = time.perf_counter()
    layer_table()
    if args.model:
        model_table()
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
