"""Time qlearn.bitnet against its references, in one run.

- ``weight_quant_ternary`` / ``activation_quant_int8`` (codes, then ``dequantize``) against
  transformers' ``WeightQuant`` / ``ActQuant`` (eager: ``TORCHDYNAMO_DISABLE=1`` is set before
  transformers is imported), on the default model's layer shapes and 512 tokens;
- ``pack_ternary`` (5 trits per byte) and ``pack_ternary_2bit`` with their unpackers, against
  transformers' ``pack_weights`` / ``unpack_weights`` (2 bits) and gguf's TQ1_0 / TQ2_0
  ``quantize`` / ``dequantize`` (numpy, blocks of 256 with an fp16 scale each);
- ``ternary_matmul`` (additions and subtractions only, int8 activations) against the same
  product as an int32 matmul, ``torch._int_mm`` (int8 × int8 → int32) and a float32 matmul.

The additions-only matmul is a teaching kernel: it shows *what* BitNet hardware saves, while
PyTorch's matmuls use SIMD multiply-accumulate units; expect it to be far slower. Run with qlearn
installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_bitnet.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # before transformers: eager reference code

import numpy as np
import torch
from _timing import time_call
from gguf import GGMLQuantizationType, quants
from transformers.integrations import bitnet as hf_bitnet

from qlearn.bitnet import (
    activation_quant_int8,
    pack_ternary,
    pack_ternary_2bit,
    ternary_matmul,
    unpack_ternary,
    unpack_ternary_2bit,
    weight_quant_ternary,
)

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # [out, in]
TOKENS = 512


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:9.3f} ms"


def quantizers() -> None:
    print(f"\nquantizers ({TOKENS} tokens for activations)")
    print(
        f"{'[out, in]':<12}{'ternary W':>13}{'WeightQuant':>13}{'ratio':>7}"
        f"{'int8 x':>13}{'ActQuant':>13}{'ratio':>7}"
    )
    for out_features, in_features in SHAPES:
        w = torch.randn(out_features, in_features) * 0.02
        x = torch.randn(TOKENS, in_features)
        ours_w = time_call(lambda w=w: weight_quant_ternary(w).dequantize())
        ref_w = time_call(lambda w=w: hf_bitnet.WeightQuant.apply(w))
        ours_x = time_call(lambda x=x: activation_quant_int8(x).dequantize())
        ref_x = time_call(lambda x=x: hf_bitnet.ActQuant.apply(x))
        print(
            f"{f'[{out_features}, {in_features}]':<12}{_ms(ours_w):>13}{_ms(ref_w):>13}"
            f"{ref_w / ours_w:>7.2f}{_ms(ours_x):>13}{_ms(ref_x):>13}{ref_x / ours_x:>7.2f}"
        )


def packing() -> None:
    print("\npacking ternary codes: pack / unpack (gguf sees the same weights as rows of 256)")
    labels = ["5 trits/B", "TQ1_0 (gguf)", "2 bits", "pack_weights (hf)", "TQ2_0 (gguf)"]
    print(f"{'[out, in]':<12}" + "".join(f"{label:>24}" for label in labels))
    for out_features, in_features in SHAPES:
        codes = weight_quant_ternary(torch.randn(out_features, in_features)).codes
        cells = [f"{1e3 * p:7.2f} / {1e3 * u:7.2f} ms" for p, u in _packing_times(codes)]
        print(f"{f'[{out_features}, {in_features}]':<12}" + "".join(f"{c:>24}" for c in cells))
    print(
        "bytes per 256 weights: 5 trits/B 52 (+2 fp16 scale = TQ1_0's 54), "
        "2 bits 64 (+2 = TQ2_0's 66)"
    )


def _packing_times(codes: torch.Tensor) -> list[tuple[float, float]]:
    """(pack, unpack) seconds for qlearn's two packings, transformers' and gguf's."""
    rows = codes.float().reshape(-1, 256).numpy()  # gguf's TQ types work on rows of 256
    tq1, tq2 = GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0
    p5, p2 = pack_ternary(codes), pack_ternary_2bit(codes)
    b1, b2 = quants.quantize(rows, tq1), quants.quantize(rows, tq2)
    assert np.array_equal(quants.dequantize(b1, tq1), rows)
    assert np.array_equal(quants.dequantize(b2, tq2), rows)
    pairs = [
        (lambda: pack_ternary(codes), lambda: unpack_ternary(p5, codes.shape)),
        (lambda: quants.quantize(rows, tq1), lambda: quants.dequantize(b1, tq1)),
        (lambda: pack_ternary_2bit(codes), lambda: unpack_ternary_2bit(p2, codes.shape)),
        (
            lambda: hf_bitnet.pack_weights(codes.clone()),
            lambda: hf_bitnet.unpack_weights(p2, dtype=torch.int8),
        ),
        (lambda: quants.quantize(rows, tq2), lambda: quants.dequantize(b2, tq2)),
    ]
    return [(time_call(pack, 5), time_call(unpack, 5)) for pack, unpack in pairs]


def matmul() -> None:
    print("\nternary matmul: int8 activations × ternary weights")
    print(
        f"{'[out, in]':<12}{'tokens':>7}{'ternary_matmul':>16}{'int32 @':>13}"
        f"{'_int_mm':>13}{'float32 @':>13}{'int32/ql':>10}{'fp32/ql':>9}"
    )
    for out_features, in_features in SHAPES:
        w_codes = weight_quant_ternary(torch.randn(out_features, in_features)).codes
        for tokens in (1, 64):
            x_codes = activation_quant_int8(torch.randn(tokens, in_features)).codes
            expected = x_codes.int() @ w_codes.int().T
            assert torch.equal(ternary_matmul(x_codes, w_codes), expected)
            xi, wi = x_codes.int(), w_codes.int().T.contiguous()
            xf, wf = x_codes.float(), w_codes.float().T.contiguous()
            times = {
                "ql": time_call(lambda x=x_codes, w=w_codes: ternary_matmul(x, w), 5),
                "int32": time_call(lambda x=xi, w=wi: x @ w, 5),
                "fp32": time_call(lambda x=xf, w=wf: x @ w, 5),
            }
            try:  # CPU int8 GEMM; needs tokens > 16 and sizes that are multiples of 8
                wt = w_codes.T.contiguous()
                torch._int_mm(x_codes, wt)
                int_mm = _ms(time_call(lambda x=x_codes, w=wt: torch._int_mm(x, w), 5))
            except RuntimeError:
                int_mm = "n/a"
            print(
                f"{f'[{out_features}, {in_features}]':<12}{tokens:>7}{_ms(times['ql']):>16}"
                f"{_ms(times['int32']):>13}{int_mm:>13}{_ms(times['fp32']):>13}"
                f"{times['int32'] / times['ql']:>10.3f}{times['fp32'] / times['ql']:>9.3f}"
            )
    print(
        "ratios < 1: PyTorch's matmuls are faster (multiply-accumulate in SIMD units); the "
        "additions-only kernel pays off in hardware without multipliers, or with lookup tables "
        "(bitnet.cpp), not in PyTorch."
    )


def main() -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    quantizers()
    packing()
    matmul()


if __name__ == "__main__":
    main()
