"""Time qlearn.codebook's k-means against scikit-learn's KMeans on the same data, in one run.

The weights of one ffn_down-shaped tensor (576 × 1536, N(0, 0.02²)): one k-means over all of
it (per tensor) at 3 and 4 bits, scikit-learn's ``KMeans(algorithm="lloyd", n_init=1)`` with
the same seed (the same centroids, tests/test_codebook.py); then per output row, qlearn's
batched k-means (all 576 rows at once) against one scikit-learn fit per row. Ratios > 1: qlearn
is faster. Run alone, from the repository root: `PYTHONPATH=. python benchmarks/bench_codebook.py`.
"""

from __future__ import annotations

import numpy as np
import torch
from _timing import time_call
from sklearn.cluster import KMeans

from qlearn import codebook

SHAPE = (576, 1536)


def main() -> None:
    torch.set_num_threads(2)
    w = np.random.default_rng(0).standard_normal(SHAPE) * 0.02
    flat = torch.from_numpy(w.reshape(-1))
    print(f"tensor {SHAPE[0]}×{SHAPE[1]}, float64")
    print(f"{'setting':<22}{'qlearn':>10}{'sklearn':>11}{'ratio':>7}")
    for bits in (3, 4):
        k = 1 << bits

        def sk(k=k):
            return KMeans(k, init="k-means++", n_init=1, random_state=0).fit(w.reshape(-1, 1))

        t_ours = time_call(lambda k=k: codebook.kmeans(flat, k, seed=0), repeat=3)
        t_sk = time_call(sk, repeat=3)
        print(f"{f'per tensor, {bits} bits':<22}{t_ours:>9.2f}s{t_sk:>10.2f}s{t_sk / t_ours:>7.2f}")
    rows = torch.from_numpy(w[:64])

    def sk_rows():
        for row in w[:64]:
            KMeans(16, init="k-means++", n_init=1, random_state=0).fit(row[:, None])

    t_ours = time_call(lambda: codebook.kmeans(rows, 16, seed=0), repeat=3)
    t_sk = time_call(sk_rows, repeat=3)
    print(f"{'64 rows, 4 bits':<22}{t_ours:>9.2f}s{t_sk:>10.2f}s{t_sk / t_ours:>7.2f}")


if __name__ == "__main__":
    main()
