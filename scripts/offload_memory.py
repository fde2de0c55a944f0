"""Peak memory of GPTQ on the course's model, in memory and with its decoder layers on disk.

    python scripts/offload_memory.py                    # 4-bit, groups of 64, 8 × 128 of Emma
    python scripts/offload_memory.py --method awq

Each run is a fresh process (peak memory: ``qlearn.roofline.peak_memory``): it loads
the model with transformers from a ``save_pretrained`` folder, either whole or with
``device_map`` putting every decoder layer on "disk" (accelerate's offload folder; embedding,
final norm and LM head on the CPU), quantizes it in place with ``gptq.quantize_model_`` (or
``awq``), which goes one decoder layer at a time through ``qlearn.offload.onloaded``, and prints
its peak memory, its time and a SHA-256 of every resulting tensor. The two digests must be equal:
the offloaded result is the in-memory one bit for bit. Chapter 10, "models bigger than memory";
the figures are in docs/design.md. Run it alone: the time is only a rough figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _digest(model) -> str:
    """SHA-256 of every tensor of the model, read module by module through ``onloaded``."""
    import torch

    from qlearn import offload

    sha = hashlib.sha256()
    modules = [model.model.embed_tokens, *model.model.layers, model.model.norm]
    for module in modules:
        with offload.onloaded(module):
            for name, tensor in sorted(module.state_dict().items()):
                sha.update(name.encode())
                sha.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from qlearn import awq, gptq, roofline
    from qlearn.data import calibration_windows, load_text

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    options = {}
    if args.where == "disk":
        config = AutoConfig.from_pretrained(args.folder)
        device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu"}
        device_map |= {f"model.layers.{i}": "disk" for i in range(config.num_hidden_layers)}
        device_map["lm_head"] = "cpu"
        options = {"device_map": device_map, "offload_folder": str(Path(args.folder) / "offload")}
    model = AutoModelForCausalLM.from_pretrained(args.folder, **options).eval()
    windows = calibration_windows(
        tokenizer, load_text("emma"), n_samples=args.nsamples, seqlen=args.seqlen, seed=0
    )
    started = time.perf_counter()
    if args.method == "gptq":
        gptq.quantize_model_(
            model, windows, bits=args.bits, group_size=args.group_size, layer_errors=False
        )
    else:
        awq.quantize_model_(model, windows, bits=args.bits, group_size=args.group_size)
    seconds = time.perf_counter() - started
    peak = roofline.peak_memory()
    print(json.dumps({"peak": peak, "seconds": seconds, "digest": _digest(model)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["gptq", "awq"], default="gptq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--where", choices=["memory", "disk"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.where:
        child(args)
        return

    from qlearn import models

    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer = models.load_model()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
        results = {}
        for where in ("memory", "disk"):
            command = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--where",
                where,
                "--folder",
                folder,
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
            if done.returncode:
                sys.exit(f"the {where} run failed:\n{done.stderr[-3000:]}")
            results[where] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{args.method} {args.bits}-bit g{args.group_size}, {args.nsamples} × {args.seqlen} tokens "
        "of Emma, the course's model (SmolLM2-135M-Instruct, its weights a Q4_1 reconstruction)"
    )
    for where, r in results.items():
        peak, seconds, digest = r["peak"] / 2**20, r["seconds"], r["digest"][:16]
        print(f"{where:<7} peak {peak:7.0f} MiB   {seconds:6.1f} s   {digest}")
    same = results["memory"]["digest"] == results["disk"]["digest"]
    print("the offloaded result is the in-memory one bit for bit" if same else "RESULTS DIFFER")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
