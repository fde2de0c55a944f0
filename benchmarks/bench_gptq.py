"""Time qlearn.gptq against the plain column-by-column GPTQ, in one run, then the whole model.

1. ``gptq_quantize`` (4-bit, per channel) on the default model's four layer shapes (576 → 576
   q/o, 576 → 192 k/v, 576 → 1536 gate/up, 1536 → 576 down), with the Hessian of 2048 correlated
   random inputs, against two slower forms of the same algorithm:

   - ``plain``: the optimal brain surgeon form of Frantar et al. 2023 (eq. 2–3) written
     directly: for each column, quantize it (all rows at once), spread its error over *every*
     later column at once, then remove the column from H⁻¹ by Gaussian elimination. No lazy
     blocks, no Cholesky factor: O(in³) work in H⁻¹ updates and a full-width update per column;
   - ``no lazy blocks``: qlearn with ``block_size`` = in (Cholesky, but every column's update
     spans all later columns, §4 step 2 switched off).

   The codes of all three agree (the share of equal codes is printed: float32 rounding may
   flip a rare tie); the ratios are plain / qlearn and no-lazy / qlearn.

2. ``qlearn.gptq.quantize_model`` on the default model at 4 bits, per channel, calibrated on
   32 windows of 512 tokens of *Emma* (the anchor setting of docs/design.md): the wall time,
   split into the time in ``gptq_quantize`` and the rest (forward passes and Hessians). The
   authors' code took about 150 s for this on 2 cores (docs/design.md, "Anchor figures").
   Skip it with ``--layers-only``.

Run with qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_gptq.py`. Set OMP_NUM_THREADS=1 on a busy machine.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _timing import time_call

from qlearn.gptq import gptq_quantize

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]  # (in, out)
BITS = 4


def plain_gptq(W: torch.Tensor, H: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """Codes of per-channel GPTQ, one column at a time, without lazy blocks or Cholesky."""
    maxq = 2**bits - 1
    W = W.clone()
    H = H.clone()
    lo = W.amin(dim=1).clamp(max=0)
    hi = W.amax(dim=1).clamp(min=0)
    scale = (hi - lo) / maxq
    zero = torch.round(-lo / scale)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += 0.01 * torch.diag(H).mean() * torch.eye(H.shape[0])
    Hinv = torch.linalg.inv(H)
    codes = torch.empty_like(W)
    for q in range(W.shape[1]):
        d = Hinv[q, q]
        codes[:, q] = torch.clamp(torch.round(W[:, q] / scale) + zero, 0, maxq)
        err = (W[:, q] - scale * (codes[:, q] - zero)) / d
        W[:, q + 1 :] -= torch.outer(err, Hinv[q, q + 1 :])  # eq. 2, every later column
        Hinv[q + 1 :, q + 1 :] -= torch.outer(Hinv[q + 1 :, q], Hinv[q, q + 1 :]) / d  # eq. 3
    return codes


def layers() -> None:
    print(
        f"{'in → out':<12}{'qlearn':>10}{'no lazy blocks':>16}{'plain':>10}"
        f"{'no-lazy/ql':>12}{'plain/ql':>10}{'equal codes':>13}"
    )
    for in_features, out_features in SHAPES:
        g = torch.Generator().manual_seed(0)
        mixing = torch.randn(in_features, in_features, generator=g) / math.sqrt(in_features)
        X = torch.randn(2048, in_features, generator=g) @ mixing
        H = 2 * X.T @ X / X.shape[0]
        W = 0.05 * torch.randn(out_features, in_features, generator=g)
        ours = gptq_quantize(W, H, bits=BITS)
        equal = float((plain_gptq(W, H) == ours.codes.float()).float().mean())
        times = {
            "qlearn": time_call(lambda W=W, H=H: gptq_quantize(W, H, bits=BITS), repeat=3),
            "no lazy": time_call(
                lambda W=W, H=H: gptq_quantize(W, H, bits=BITS, block_size=W.shape[1]), repeat=3
            ),
            "plain": time_call(lambda W=W, H=H: plain_gptq(W, H), repeat=1),
        }
        ms = {name: 1e3 * t for name, t in times.items()}
        print(
            f"{f'{in_features} → {out_features}':<12}{ms['qlearn']:>8.0f}ms"
            f"{ms['no lazy']:>14.0f}ms{ms['plain']:>8.0f}ms"
            f"{times['no lazy'] / times['qlearn']:>12.2f}{times['plain'] / times['qlearn']:>10.2f}"
            f"{100 * equal:>12.2f}%"
        )


def whole_model() -> None:
    from qlearn import gptq
    from qlearn.data import load_text
    from qlearn.models import load_model

    model, tokenizer = load_model()
    started = time.perf_counter()
    _, report = gptq.quantize_model(
        model, load_text("emma"), tokenizer, bits=BITS, nsamples=32, seqlen=512, progress=False
    )
    wall = time.perf_counter() - started
    print(
        f"gptq.quantize_model, {BITS}-bit per channel, {report.n_windows} × "
        f"{report.n_tokens // report.n_windows} tokens: {wall:.1f} s wall, of which "
        f"{report.gptq_seconds:.1f} s in gptq_quantize and {wall - report.gptq_seconds:.1f} s "
        "in forward passes and Hessians (the authors' code: about 150 s on 2 quiet cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers-only", action="store_true", help="skip the whole-model run")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU {torch.backends.cpu.get_cpu_capability()}, {BITS}-bit per channel, float32"
    )
    layers()
    print("ratios > 1: qlearn is faster")
    if not args.layers_only:
        whole_model()


if __name__ == "__main__":
    main()
