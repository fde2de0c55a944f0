"""Time qlearn.rotation's Hadamard transforms against a dense product, and the online rotation's
cost against the layer it precedes, in one run (CPU, float32).

For each order the default model needs (64: a head; 576 = 36 · 16: the hidden size, before
``o_proj``; 1536 = 12 · 128: the MLP, before ``down_proj``), at 1 token (decoding) and 512 tokens
(a prompt):

- ``fast``: ``rotation.apply_hadamard`` (Walsh–Hadamard butterflies over the power-of-two
  factor, then the small Paley matrix);
- ``dense``: ``x @ H`` with the [n, n] matrix built once (what a random orthogonal costs);
- ``layer``: ``F.linear`` of the layer the online rotation precedes (o_proj 576 → 576,
  down_proj 1536 → 576; a 64 → 64 product for the head size).

The last column is what QuaRot's online rotation adds to that layer: fast ÷ layer. Run with
qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_rotation.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import time_call

from qlearn import rotation

SIZES = [(64, 64, "head"), (576, 576, "o_proj"), (1536, 576, "down_proj")]
TOKENS = [1, 512]


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (ms per call)")
    print(
        f"{'n':>5} {'factors':>9} {'precedes':<10}{'tokens':>7}{'fast':>9}{'dense':>9}"
        f"{'layer':>9}{'dense/fast':>12}{'fast/layer':>12}"
    )
    for n, out, layer_name in SIZES:
        m, p = rotation.hadamard_order(n)
        h = rotation.hadamard(n).float()
        weight = torch.randn(out, n) * 0.02
        for tokens in TOKENS:
            x = torch.randn(tokens, n)
            fast = time_call(lambda x=x: rotation.apply_hadamard(x))
            dense = time_call(lambda x=x, h=h: x @ h)
            layer = time_call(lambda x=x, w=weight: F.linear(x, w))
            print(
                f"{n:>5} {f'{m}·{p}':>9} {layer_name:<10}{tokens:>7}{fast * 1e3:>9.3f}"
                f"{dense * 1e3:>9.3f}{layer * 1e3:>9.3f}{dense / fast:>12.2f}{fast / layer:>12.2f}"
            )
    print("dense/fast > 1: the fast transform wins; fast/layer: the online rotation's extra cost.")


if __name__ == "__main__":
    main()
