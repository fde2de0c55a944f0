"""What a decoded token costs: the bytes of weights it reads, the KV cache, bandwidth, the roofline.

Decoding one token at batch 1 multiplies every weight matrix by one vector: two floating-point
operations per weight, against the bytes of that weight, which must come from memory. A CPU
does far more operations per second than its memory delivers bytes, so the time is the bytes
read divided by the bandwidth — the *roofline* (Williams, Waterman and Patterson 2009): a step
needs at least ``bytes / bandwidth`` seconds and at least ``flops / peak`` seconds, and batch-1
decoding sits far on the memory side. Storing the weights in fewer bits raises that speed limit
in proportion; a prompt (prefill, hundreds of tokens at once) reuses each weight hundreds of
times and is limited by arithmetic instead, where dequantizing costs more than it saves (Wu et
al. 2023, "Understanding INT4 Quantization for Transformer Models: Latency Speedup,
Composability, and Failure Cases", arXiv:2301.12017). The KV cache grows with the context,
2 · layers · kv heads · head dim · bytes · tokens (Pope et al. 2022, "Efficiently Scaling
Transformer Inference", §2), and at long contexts outgrows the weights. Chapter 10
(notebooks/10_what_quantization_buys.ipynb).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qlearn._checks import check_choice, check_int, check_module, check_positive

__all__ = [
    "MEMORY_KINDS",
    "ProcessMemory",
    "arithmetic_intensity",
    "call_seconds",
    "decode_seconds_per_token",
    "kv_cache_bytes",
    "measure_bandwidth",
    "median_seconds",
    "peak_memory",
    "process_memory",
    "tokens_per_second_limit",
    "weight_bytes",
    "weight_bytes_read",
]


def median_seconds(fn: Callable[[], object], repeat: int = 5, *, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls.

    The median, not the mean: one interruption by another process does not move it. A timing
    taken beside another job is not a timing: measure on a quiet machine.
    """
    return statistics.median(call_seconds(fn, repeat, warmup=warmup))


def call_seconds(fn: Callable[[], object], repeat: int = 5, *, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of each of ``repeat`` calls of ``fn``, after ``warmup`` untimed ones."""
    repeat = check_int(repeat, "repeat", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    if not callable(fn):
        raise TypeError(f"fn: expected a function of no arguments, got {type(fn).__name__}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure_bandwidth(n_bytes: int = 1 << 28, *, repeat: int = 5) -> float:
    """This machine's memory bandwidth in bytes per second, from copying ``n_bytes`` of float32.

    ``dst.copy_(src)`` reads each byte once and writes it once, so the figure is
    2 · n_bytes / median seconds (the STREAM "copy" kernel's count, McCalpin 1995). Use a
    buffer well beyond the last-level cache (256 MiB by default), or the cache's bandwidth is
    measured instead of the memory's.
    """
    n_bytes = check_int(n_bytes, "n_bytes", minimum=4096)
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), repeat)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` as stored, each storage counted once.

    Tied tensors (an LM head that is the embedding) share one storage and count once; a
    quantized layer's codes, scales and zero points are its buffers, so this is what the model
    holds in memory, whatever its kind.
    """
    check_module(model, "model")
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def weight_bytes_read(model: nn.Module) -> int:
    """Bytes a transformers causal LM reads from its weights to decode one token at batch 1.

    Every parameter and buffer is read once, except the input embedding, of which a step reads
    one row — unless it is tied to the LM head, which reads all of it (counted once).
    """
    check_module(model, "model")
    total = weight_bytes(model)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != embedding.data_ptr():
        total -= embedding.untyped_storage().nbytes()
    return total


def tokens_per_second_limit(bytes_per_token: float, bandwidth: float) -> float:
    """The roofline's speed limit of memory-bound decoding: ``bandwidth / bytes_per_token``."""
    bytes_per_token = check_positive(bytes_per_token, "bytes_per_token")
    bandwidth = check_positive(bandwidth, "bandwidth")
    return bandwidth / bytes_per_token


def arithmetic_intensity(
    tokens: int,
    in_features: int,
    out_features: int,
    *,
    weight_bytes_per_value: float = 4.0,
    activation_bytes_per_value: float = 4.0,
) -> float:
    """Floating-point operations per byte moved of ``y = x Wᵀ`` with ``x`` of ``tokens`` rows.

    2 · tokens · in · out operations, against the weight (in · out values) plus the input and
    output activations (tokens · (in + out) values). Where it is below the machine's balance
    (peak operations per second / bandwidth), the product is memory-bound; above, compute-bound.
    At one token it is about 2 / (bytes per weight): 0.5 for FP32, 4 for int4.
    """
    tokens = check_int(tokens, "tokens", minimum=1)
    in_features = check_int(in_features, "in_features", minimum=1)
    out_features = check_int(out_features, "out_features", minimum=1)
    w = check_positive(weight_bytes_per_value, "weight_bytes_per_value")
    a = check_positive(activation_bytes_per_value, "activation_bytes_per_value")
    flops = 2 * tokens * in_features * out_features
    moved = in_features * out_features * w + tokens * (in_features + out_features) * a
    return flops / moved


def kv_cache_bytes(
    config: object, tokens: int, *, batch: int = 1, bytes_per_value: float = 2.0
) -> float:
    """Bytes of the KV cache of a transformers decoder after ``tokens`` tokens of context.

    2 (keys and values) · layers · kv heads · head dim · bytes per value · tokens · batch, from
    ``config``'s ``num_hidden_layers``, ``num_key_value_heads`` (grouped-query attention shares
    one key and value head between several query heads; ``num_attention_heads`` when absent)
    and ``head_dim`` (``hidden_size / num_attention_heads`` when absent). ``bytes_per_value``:
    2 for FP16/BF16, 4 for FP32, 1 for an 8-bit cache.
    """
    layers = _config_int(config, "num_hidden_layers")
    heads = _config_int(config, "num_attention_heads")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or _config_int(config, "hidden_size") // heads
    tokens = check_int(tokens, "tokens", minimum=0)
    batch = check_int(batch, "batch", minimum=1)
    per_value = check_positive(bytes_per_value, "bytes_per_value")
    return 2 * layers * int(kv_heads) * int(head_dim) * per_value * tokens * batch


def decode_seconds_per_token(
    model: nn.Module, prompt: torch.Tensor, *, new_tokens: int = 32, repeat: int = 3
) -> float:
    """Median seconds per new token of greedy decoding at batch 1, with the KV cache.

    ``model.generate`` from ``prompt`` (token ids ``[1, n]``) for exactly ``new_tokens`` tokens;
    the prompt's own forward pass (prefill) is included once, so use a short prompt.
    """
    check_module(model, "model")
    if not isinstance(prompt, torch.Tensor) or prompt.ndim != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt: expected token ids of shape [1, n], got {_shape(prompt)}")
    new_tokens = check_int(new_tokens, "new_tokens", minimum=1)

    def run() -> None:
        model.generate(
            prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    with torch.inference_mode():
        return median_seconds(run, repeat) / new_tokens


MEMORY_KINDS = ("imports", "FP32", "BF16", "int8", "w8a8", "int4")
"""What :func:`process_memory` can load: nothing but the libraries, the model as loaded (FP32),
cast to BF16, or with its decoder linears swapped for ``qlearn.kernels`` layers."""

# Run in a fresh interpreter by process_memory: argv = kind, model name, int4 group size.
_MEMORY_SCRIPT = """
import gc, json, sys
import psutil
import torch
from qlearn import kernels, models, roofline

kind, name, group_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
weights = 0
if kind != "imports":
    model, tokenizer = models.load_model(name)
    if kind == "BF16":
        model.to(torch.bfloat16)
    elif kind != "FP32":
        kernels.quantize_model_(model, kind=kind, group_size=group_size)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    peak = roofline.peak_memory()
    weights = roofline.weight_bytes(model)
    for tensor in [*model.parameters(), *model.buffers()]:  # off the mapped file
        tensor.data = tensor.data.clone()
    gc.collect()
    if sys.platform.startswith("linux"):  # hand freed pages back (glibc keeps them)
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
else:
    peak = roofline.peak_memory()
print(json.dumps({"resident": psutil.Process().memory_info().rss, "peak": peak,
                  "weights": weights}))
"""


def peak_memory() -> int:
    """The largest resident memory this process has had, in bytes.

    ``VmHWM`` on Linux: ``ru_maxrss`` there keeps the parent's high-water mark across ``exec``,
    so a child started from a large notebook kernel would report the kernel's. ``ru_maxrss``
    (bytes) on macOS, ``peak_wset`` on Windows.
    """
    if sys.platform.startswith("linux"):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return 1024 * int(line.split()[1])
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass(frozen=True)
class ProcessMemory:
    """Memory of a fresh Python process that loaded a model of one kind and decoded 8 tokens:
    ``resident`` (RSS at the end), ``peak`` (the largest RSS while it loaded, converted and
    decoded) and ``weights`` (the bytes of the model's parameters and buffers,
    :func:`weight_bytes`), all in bytes."""

    kind: str
    resident: int
    peak: int
    weights: int


def process_memory(
    kind: str, *, model: str | None = None, group_size: int = 64, timeout: float = 600
) -> ProcessMemory:
    """Load ``model`` as ``kind`` (:data:`MEMORY_KINDS`) in a fresh interpreter; its memory.

    A fresh process, because memory once taken is rarely given back to the system: in the
    notebook's own process the peak is that of everything run before. The model is loaded in
    FP32 and then converted, as ``load_model`` then ``quantize_model_`` do, so the peak holds the
    FP32 model even when the end state does not. transformers reads the weights from a
    memory-mapped safetensors file, whose pages count in the resident memory for as long as any
    tensor still points into it (here the FP32 embedding would hold all of it): the process
    copies the tensors it keeps and lets the file go, and on Linux hands freed memory back
    (``malloc_trim``), so ``resident`` is what the model really occupies. ``model``: a name
    for ``qlearn.models.load_model`` (default: the course's model).
    """
    from qlearn.models import DEFAULT_MODEL

    kind = check_choice(kind, "kind", MEMORY_KINDS)
    group_size = check_int(group_size, "group_size", minimum=1)
    name = DEFAULT_MODEL if model is None else model
    if not isinstance(name, str):
        raise TypeError(f"model: expected a model name (str) or None, got {type(name).__name__}")
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, kind, name, str(group_size)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the process that loaded {kind!r} failed:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return ProcessMemory(kind, int(figures["resident"]), int(figures["peak"]), figures["weights"])


def _config_int(config: object, name: str) -> int:
    value = getattr(config, name, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(
            f"config: expected a model config with a positive integer {name}, got "
            f"{type(config).__name__} with {name}={value!r}"
        )
    return value


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
