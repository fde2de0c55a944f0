"""qlearn's GGUF files against llama.cpp's own tools (chapter 10, "The real tools").

Usage (after ``make llamacpp``, which builds the tools into ``build/llamacpp/bin``)::

    .venv/bin/python scripts/check_llamacpp.py               # prints the table
    .venv/bin/python scripts/check_llamacpp.py --json data/llamacpp_check.json

What it does, step by step:

1. writes the course's model as an F32 GGUF with ``qlearn.gguf.save_gguf`` (every tensor F32);
2. for Q8_0 and Q4_K_M: writes qlearn's file from the model, and runs ``llama-quantize`` on the
   F32 file; then reads both with ``gguf.GGUFReader`` and compares them tensor by tensor (type
   and raw bytes);
3. ``llama-perplexity`` on *Pride and Prejudice* (contexts of 512, ``--chunks``): once on the F32
   file with ``--kl-divergence-base`` (it stores the reference's log-probabilities), then on
   qlearn's Q8_0 and Q4_K_M files with ``--kl-divergence``: perplexity, mean KLD, same top-1;
   qlearn's own ``evaluate.perplexity`` and ``evaluate.kl_divergence`` on the same files (loaded
   back through transformers' GGUF reader), on the same number of tokens, beside them;
4. ``llama-completion`` (greedy) from each file: llama.cpp loads and runs qlearn's files;
5. ``llama-bench`` (prompt 512, generation 64, 2 threads) on the three files.

Timings are llama.cpp's; take them alone on the machine (nothing else running).
The GGUF's weights are a Q4_1 reconstruction (docs/design.md, "The default model").
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlearn import evaluate, gguf, models  # noqa: E402
from qlearn.data import load_text  # noqa: E402

TOOLS = ROOT / "build" / "llamacpp" / "bin"
RECIPES = ("Q8_0", "Q4_K_M")
PROMPT = "The capital of France is"
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tools", type=Path, default=TOOLS, help="folder of llama.cpp's binaries")
    parser.add_argument("--chunks", type=int, default=8, help="contexts of 512 tokens to score")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    for tool in ("llama-quantize", "llama-perplexity", "llama-bench", "llama-completion"):
        if not (args.tools / tool).is_file():
            sys.exit(f"{args.tools / tool} is missing: run `make llamacpp` first")
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as scratch:
        results = check(args.tools, Path(scratch), args.chunks)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"written: {args.json}")


def check(tools: Path, folder: Path, chunks: int) -> dict:
    model, tokenizer = models.load_model()
    f32 = gguf.save_gguf(folder / "model.F32.gguf", model, "F32")
    text_file = folder / "pride_and_prejudice.txt"
    text_file.write_text(load_text("pride_and_prejudice"))
    base = folder / "base.kld"
    reference = run_perplexity(tools, f32, text_file, chunks, ["--kl-divergence-base", str(base)])
    results = {
        "llama_cpp": llama_cpp_version(tools),
        "machine": f"{cpu_name()}, {THREADS} threads",
        "date": time.strftime("%Y-%m-%d"),
        "command": "make llamacpp && .venv/bin/python scripts/check_llamacpp.py --json "
        "data/llamacpp_check.json",
        "tokens": reference["tokens"],
        "context": 512,
        "files": {"F32": {"perplexity": reference["perplexity"], "bytes": f32.stat().st_size}},
    }
    files = {"F32": f32}
    for recipe in RECIPES:
        ours = gguf.save_gguf(folder / f"qlearn.{recipe}.gguf", model, recipe)
        theirs = folder / f"llamacpp.{recipe}.gguf"
        subprocess.run(
            [str(tools / "llama-quantize"), str(f32), str(theirs), recipe, str(THREADS)],
            check=True,
            capture_output=True,
        )
        same, total, differ = compare_files(ours, theirs)
        scored = run_perplexity(
            tools, ours, text_file, chunks, ["--kl-divergence-base", str(base), "--kl-divergence"]
        )
        results["files"][recipe] = {
            "bytes": ours.stat().st_size,
            "llama_quantize_bytes": theirs.stat().st_size,
            "tensors_identical": same,
            "tensors": total,
            "tensors_differing": differ,
            **scored,
        }
        files[recipe] = ours
    add_qlearn_figures(results, files, model, tokenizer)
    for name, path in files.items():
        results["files"][name]["completion"] = complete(tools, path)
    bench = run_bench(tools, list(files.values()))
    for name, path in files.items():
        results["files"][name].update(bench[path.name])
    return results


def compare_files(ours: Path, theirs: Path) -> tuple[int, int, list[str]]:
    """Tensors of equal type and equal bytes, out of all, and the names of those that differ."""
    from gguf import GGUFReader

    mine = {t.name: t for t in GGUFReader(ours).tensors}
    other = {t.name: t for t in GGUFReader(theirs).tensors}
    if set(mine) != set(other):
        raise SystemExit(f"the files name different tensors: {sorted(set(mine) ^ set(other))}")
    differ = [
        name
        for name, t in mine.items()
        if t.tensor_type != other[name].tensor_type
        or np.asarray(t.data).tobytes() != np.asarray(other[name].data).tobytes()
    ]
    return len(mine) - len(differ), len(mine), differ


def run_perplexity(tools: Path, model: Path, text: Path, chunks: int, extra: list[str]) -> dict:
    command = [
        str(tools / "llama-perplexity"),
        "-m",
        str(model),
        "-f",
        str(text),
        "-c",
        "512",
        "--chunks",
        str(chunks),
        "-t",
        str(THREADS),
        "-b",
        "512",
        *extra,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    log = out.stdout + out.stderr
    scoring = "--kl-divergence" in extra  # then it prints "Mean PPL(Q)", not "Final estimate"
    pattern = r"Mean PPL\(Q\)\s+:\s+([0-9.]+)" if scoring else r"Final estimate: PPL = ([0-9.]+)"
    figures = {"perplexity": float(_find(pattern, log)), "tokens": chunks * 512}
    if scoring:
        figures["kld_mean"] = float(_find(r"Mean\s+KLD:\s+([-0-9.]+)", log))
        figures["kld_p99"] = float(_find(r"99\.0%\s+KLD:\s+([-0-9.]+)", log))
        figures["same_top1"] = float(_find(r"Same top p:\s+([0-9.]+)", log)) / 100
    return figures


def add_qlearn_figures(results: dict, files: dict[str, Path], model, tokenizer) -> None:
    """qlearn's perplexity and KL on the same files and as many tokens (its windows of 512 score
    every token after the first; llama.cpp's only the second half of each context)."""
    text = load_text("pride_and_prejudice")
    tokens = results["tokens"]
    baseline = evaluate.kl_baseline(model, tokenizer, text, max_tokens=tokens, window=512)
    results["files"]["F32"]["qlearn_perplexity"] = evaluate.perplexity(
        model, tokenizer, text, max_tokens=tokens, window=512
    )
    for recipe in RECIPES:
        loaded, _ = models.load_model(str(files[recipe]))
        entry = results["files"][recipe]
        entry["qlearn_perplexity"] = evaluate.perplexity(
            loaded, tokenizer, text, max_tokens=tokens, window=512
        )
        divergence = evaluate.kl_divergence(
            baseline, loaded, tokenizer, text, max_tokens=tokens, window=512
        )
        entry["qlearn_kld_mean"] = divergence.mean
        entry["qlearn_same_top1"] = divergence.top1_agreement
        del loaded


def complete(tools: Path, model: Path) -> str:
    command = [
        str(tools / "llama-completion"),
        "-m",
        str(model),
        "-p",
        PROMPT,
        "-n",
        "8",
        "--temp",
        "0",
        "--seed",
        "0",
        "-t",
        str(THREADS),
        "-no-cnv",
        "--no-display-prompt",
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return out.stdout.strip()


def run_bench(tools: Path, paths: list[Path]) -> dict[str, dict]:
    command = [
        str(tools / "llama-bench"),
        "-m",
        ",".join(map(str, paths)),
        "-p",
        "512",
        "-n",
        "64",
        "-t",
        str(THREADS),
        "-r",
        "5",
        "-o",
        "json",
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    figures: dict[str, dict] = {}
    for row in json.loads(out.stdout):
        name = Path(row["model_filename"]).name
        kind = "prefill_tokens_per_s" if row["n_prompt"] else "decode_tokens_per_s"
        figures.setdefault(name, {})[kind] = row["avg_ts"]
    return figures


def llama_cpp_version(tools: Path) -> str:
    out = subprocess.run(
        [str(tools / "llama-completion"), "--version"], capture_output=True, text=True
    )
    line = _find(r"(version: .*)", out.stdout + out.stderr)
    return f"llama-cpp-python 0.3.36 sdist, llama.cpp {line}"


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def _find(pattern: str, log: str) -> str:
    match = re.search(pattern, log)
    if match is None:
        raise SystemExit(f"llama.cpp's output has no line matching {pattern!r}:\n{log[-3000:]}")
    return match.group(1)


def print_table(results: dict) -> None:
    print(f"{results['llama_cpp']}; {results['machine']}; {results['tokens']} tokens")
    print(
        f"{'file':<8}{'tensors =':>11}{'MB':>8}{'PPL':>8}{'KLD':>9}{'top-1':>7}"
        f"{'qlearn PPL':>12}{'KLD':>9}{'pp512 t/s':>11}{'tg64 t/s':>10}  completion"
    )
    for name, row in results["files"].items():
        same = f"{row['tensors_identical']}/{row['tensors']}" if "tensors" in row else ""
        kld = f"{row['kld_mean']:>9.4f}{row['same_top1']:>7.1%}" if "kld_mean" in row else " " * 16
        ours = f"{row['qlearn_kld_mean']:>9.4f}" if "qlearn_kld_mean" in row else " " * 9
        print(
            f"{name:<8}{same:>11}{row['bytes'] / 1e6:>8.1f}{row['perplexity']:>8.2f}{kld}"
            f"{row['qlearn_perplexity']:>12.2f}{ours}{row['prefill_tokens_per_s']:>11.1f}"
            f"{row['decode_tokens_per_s']:>10.1f}  {row['completion']!r}"
        )


if __name__ == "__main__":
    main()
