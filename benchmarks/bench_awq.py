"""Time qlearn.awq's clipping search against the authors' ``auto_clip_layer``, in one run.

mit-han-lab/llm-awq (``awq/quantize/auto_clip.py``) computes every group's partial outputs by
broadcasting [out, tokens, groups, group_size] products and summing them (in batches of 256 rows
to bound the memory); qlearn computes the same numbers as a batched matrix product
(``torch.einsum("ogk,tgk->otg")``), and gets the same clipping ranges (tests/test_awq.py). The
authors' loop is rewritten below in plain torch. Shapes: the default model's linear layers that
AWQ clips ([out, in]: o 576 × 576, v 192 × 576, gate/up 1536 × 576, down 576 × 1536; rows cut
to a multiple of 256 for the authors' batches, v raised to 256), 1024 tokens (512 sampled), 4 bits,
groups of 64 (the authors' code needs a group size that divides 576).

With ``--model``, also the wall time of ``awq.quantize_model`` on the default model (8 windows
of 128 tokens of Emma, 4 bits, groups of 128, with clipping).

Run with qlearn installed (`make bench`) or from the repository root as
`PYTHONPATH=. python benchmarks/bench_awq.py [--model]`.
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import time_call

from qlearn import awq

SHAPES = [(512, 576), (256, 576), (1536, 576), (512, 1536)]


def authors_auto_clip(w, input_feat, n_bit=4, group_size=64, n_grid=20, max_shrink=0.5):
    """``auto_clip_layer`` of mit-han-lab/llm-awq, in plain torch (512 sampled tokens)."""
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, group_size)
    input_feat = input_feat[:, 0 :: max(1, input_feat.shape[1] // 512)]
    w_all = w.reshape(w.shape[0], 1, -1, group_size)
    best_all = []
    for i_b in range(w_all.shape[0] // 256):
        w = w_all[i_b * 256 : (i_b + 1) * 256]
        org_max_val = w.abs().amax(dim=-1, keepdim=True)
        best_max_val = org_max_val.clone()
        min_errs = torch.ones_like(org_max_val) * 1e9
        org_out = (input_feat * w).sum(dim=-1)
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max_val * (1 - i_s / n_grid)
            q_w = awq.pseudo_quantize(
                torch.clamp(w, -max_val, max_val).reshape(-1, group_size),
                bits=n_bit,
                group_size=group_size,
            ).reshape(w.shape)
            err = ((input_feat * q_w).sum(dim=-1) - org_out).pow(2).mean(dim=1)
            err = err.view(min_errs.shape)
            better = err < min_errs
            min_errs[better] = err[better]
            best_max_val[better] = max_val[better]
        best_all.append(best_max_val)
    return torch.cat(best_all).squeeze(1).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="store_true", help="also time awq.quantize_model")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 1024 tokens, groups of 64"
    )
    print(
        f"{'[out, in]':<14}{'qlearn search_clip':>20}{'authors':>12}{'authors/ql':>12}"
        f"{'same ranges':>13}"
    )
    for out, inputs in SHAPES:
        w, x = torch.randn(out, inputs) * 0.05, torch.randn(1024, inputs)
        same = float(
            (awq.search_clip(w, x, group_size=64) == authors_auto_clip(w, x)).float().mean()
        )
        ours = time_call(lambda w=w, x=x: awq.search_clip(w, x, group_size=64), 3)
        theirs = time_call(lambda w=w, x=x: authors_auto_clip(w, x), 3)
        print(
            f"{f'{out} × {inputs}':<14}{1e3 * ours:>18.1f}ms{1e3 * theirs:>10.1f}ms"
            f"{theirs / ours:>12.2f}{same:>13.2%}"
        )
    print("ratio > 1: qlearn is faster (fastest of 3 calls, after one warm-up)")
    if args.model:
        from qlearn.data import calibration_windows, load_text
        from qlearn.models import load_model

        model, tokenizer = load_model()
        windows = calibration_windows(tokenizer, load_text("emma"), n_samples=8, seqlen=128)
        started = time.perf_counter()
        _, report = awq.quantize_model(model, windows, progress=False)
        print(
            f"awq.quantize_model, default model, {report.n_tokens} calibration tokens: "
            f"{time.perf_counter() - started:.1f} s"
        )


if __name__ == "__main__":
    main()
