"""Reuse what an earlier notebook computed: results kept on disk, keyed by all that decides them.

The chapters measure the same things more than once: every one evaluates the FP32 model, and the
capstone (13, the last) evaluates again the models that chapters 01–08 built, and reruns chapter
08's GPTQ and AWQ with the same settings. On one machine such a result is a pure function of its
inputs: the model's tensors, the tokens, the settings, the code of qlearn, torch and
transformers, and the CPU kernels torch picks (``torch.backends.cpu.get_cpu_capability()``,
``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``) and its thread count.
:func:`fingerprint` hashes all of them (SHA-256), so a result stored under a key is bit for bit
what computing it again here would give: reading it back changes no output, only the time.
Another CPU, thread count or code version makes another key, so the second nbval pass of
``make test`` (kernels one instruction set lower) computes everything afresh.

The results live in ``results/`` under :func:`qlearn.models.model_cache_dir` (``QLEARN_CACHE``;
``off`` turns reuse off, and every call then computes). Numbers are JSON files; models are the
tensors that differ from the model they were computed from, in safetensors, with their report in
JSON. Only models built from torch's and transformers' own modules are fingerprinted: a module
class of qlearn's (``Int8Linear``, ``BitLinear``) may behave by attributes that no tensor holds,
so a model containing one is always computed. Used from notebooks/01_float_formats.ipynb on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "MAX_STORED_MODELS",
    "environment",
    "fingerprint",
    "plain_model",
    "quantized_copy",
    "remember_model",
    "remember_number",
    "results_dir",
    "tokenizer_identity",
]

R = TypeVar("R")
MAX_STORED_MODELS = 4  # each is ~0.4 GB for the default model: the oldest beyond this go
_PLAIN_PACKAGES = ("torch.", "transformers.")
_KERNEL_SETTINGS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)


def results_dir() -> Path | None:
    """The folder of stored results, or None when ``QLEARN_CACHE`` turns the cache off."""
    from qlearn.models import model_cache_dir

    base = model_cache_dir()
    return None if base is None else base / "results"


def environment() -> dict[str, Any]:
    """What besides the inputs decides a float result here: code versions, kernels, threads."""
    import transformers

    return {
        "qlearn": _source_digest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "kernel_settings": {name: os.environ.get(name, "") for name in _KERNEL_SETTINGS},
    }


def plain_model(model: nn.Module) -> bool:
    """True if ``model`` computes only what its tensors and its classes say: every module is
    one of torch's or transformers' own classes, in eval or training mode as recorded, with no
    forward hook (chapter 03 quantizes activations with hooks), no replaced ``forward`` and no
    global module hook. Anything else is computed every time."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for m in model.modules():
        if not type(m).__module__.startswith(_PLAIN_PACKAGES) or "forward" in vars(m):
            return False
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    return True


def fingerprint(*parts: Any) -> str:
    """SHA-256 of ``parts``: strings, numbers, None, bytes, tensors (dtype, shape, bytes),
    modules (every class name and every tensor of the state dict, by name), and lists, tuples
    and dicts of these. Raises TypeError for anything else, so that nothing is keyed by its
    ``repr``."""
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


def remember_number(kind: str, parts: tuple[Any, ...], compute: Callable[[], float]) -> float:
    """The number ``compute()`` returns for ``parts``, read back if it was stored before.

    ``kind`` names the computation (a file name prefix); the key is :func:`fingerprint` of
    ``kind``, ``parts`` and :func:`environment`. Without a results folder, just ``compute()``.
    """
    folder = results_dir()
    if folder is None:
        return float(compute())
    path = folder / f"{kind}-{fingerprint(kind, parts, environment())}.json"
    if path.is_file():
        return float(json.loads(path.read_text(encoding="utf-8"))["value"])
    value = float(compute())
    with contextlib.suppress(OSError):  # a read-only or full disk: only slower
        _write_atomically(path, json.dumps({"value": value}).encode("utf-8"))
    return value


def remember_model(
    kind: str,
    model: nn.Module,
    parts: tuple[Any, ...],
    compute: Callable[[], tuple[nn.Module, R]],
    report_from_dict: Callable[[dict[str, Any]], R],
) -> tuple[nn.Module, R]:
    """``compute()`` → (a changed copy of ``model``, its report), read back if stored before.

    The key is :func:`fingerprint` of ``kind``, ``model``, ``parts`` and :func:`environment`.
    What is stored: every tensor of the copy's state dict that differs from ``model``'s
    (safetensors) and the report as JSON (``dataclasses.asdict``); read back, a deep copy of
    ``model`` gets those tensors and ``report_from_dict`` rebuilds the report. The copy must
    have ``model``'s structure (same tensor names and shapes). Without a results folder, or
    for a model that is not :func:`plain_model`, just ``compute()``.
    """
    import dataclasses

    from safetensors.torch import load_file, save_file

    folder = results_dir()
    if folder is None or not plain_model(model):
        return compute()
    stem = folder / f"{kind}-{fingerprint(kind, model, parts, environment())}"
    tensors, report = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if tensors.is_file() and report.is_file():
        changed = load_file(tensors)
        result = copy.deepcopy(model)
        result.load_state_dict(changed, strict=False, assign=False)
        os.utime(tensors)  # the newest are kept when old ones are pruned
        return result, report_from_dict(json.loads(report.read_text(encoding="utf-8")))
    result, result_report = compute()
    before = model.state_dict()
    after = result.state_dict()
    if set(before) != set(after) or any(before[n].shape != after[n].shape for n in before):
        raise ValueError(f"compute: expected a copy of model with its tensors, got another {kind}")
    changed = {
        n: t.detach().contiguous().clone() for n, t in after.items() if not _same(before[n], t)
    }
    with contextlib.suppress(OSError):  # a read-only or full disk: only slower
        _write_atomically(report, json.dumps(dataclasses.asdict(result_report)).encode("utf-8"))
        partial = tensors.with_suffix(".partial")
        save_file(changed, str(partial))
        partial.replace(tensors)
        _prune(folder)
    return result, result_report


def tokenizer_identity(tokenizer: Any) -> str | None:
    """A fingerprint of a fast tokenizer (its whole JSON definition), None for another kind."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    return fingerprint(backend.to_str())


def quantized_copy(
    kind: str,
    quantize_in_place: Callable[..., tuple[nn.Module, R]],
    model: nn.Module,
    calibration_texts: Any,
    tokenizer: Any,
    options: dict[str, Any],
    report_from_dict: Callable[[dict[str, Any]], R],
) -> tuple[nn.Module, R]:
    """``quantize_in_place(copy.deepcopy(model), calibration_texts, tokenizer, **options)``,
    through :func:`remember_model`: a calibrated method's ``quantize_model(..., cache=True)``.

    The key holds the calibration (texts or token tensors; a text needs a fast tokenizer, whose
    definition is hashed) and every setting but ``progress``, defaults filled in from
    ``quantize_in_place``'s signature (so ``act_order=False`` given or left out is one key);
    when the calibration cannot be fingerprinted the copy is simply computed.
    """

    def compute() -> tuple[nn.Module, R]:
        return quantize_in_place(copy.deepcopy(model), calibration_texts, tokenizer, **options)

    settings = _settings(quantize_in_place, options)
    texts = [calibration_texts] if isinstance(calibration_texts, str) else calibration_texts
    needs_tokenizer = isinstance(texts, (list, tuple)) and any(isinstance(t, str) for t in texts)
    identity = tokenizer_identity(tokenizer) if needs_tokenizer else None
    try:
        fingerprint(calibration_texts, settings)
    except TypeError:
        return compute()
    if needs_tokenizer and identity is None:
        return compute()
    return remember_model(
        kind, model, (calibration_texts, identity, settings), compute, report_from_dict
    )


def _settings(quantize_in_place: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every keyword default of ``quantize_in_place`` filled in, minus
    ``progress`` (it changes no result). An unknown option raises TypeError, as the call would."""
    signature = inspect.signature(quantize_in_place)
    bound = signature.bind_partial(None, None, None, **options)
    bound.apply_defaults()
    first_three = list(signature.parameters)[:3]
    return {
        name: value
        for name, value in bound.arguments.items()
        if name not in first_three and name != "progress"
    }


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


def _feed(digest: Any, part: Any) -> None:
    """Add one part to the hash, with a type tag and lengths so that no two encodings collide."""
    if part is None or isinstance(part, (bool, int, float, str)):
        text = f"{type(part).__name__}:{part!r}".encode()
        digest.update(struct.pack("<Q", len(text)) + text)
    elif isinstance(part, bytes):
        digest.update(b"bytes" + struct.pack("<Q", len(part)) + part)
    elif isinstance(part, torch.Tensor):
        tensor = part.detach().cpu().contiguous()
        header = f"tensor:{tensor.dtype}:{tuple(tensor.shape)}".encode()
        digest.update(struct.pack("<Q", len(header)) + header)
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(part, nn.Module):
        classes = [
            f"{name}:{type(m).__module__}.{type(m).__qualname__}:{m.training}"
            for name, m in part.named_modules()
        ]
        _feed(digest, ("module", classes, dict(part.state_dict())))
    elif isinstance(part, Mapping):
        items = sorted(part.items(), key=lambda item: str(item[0]))
        _feed(digest, ("dict", [(str(k), v) for k, v in items]))
    elif isinstance(part, (list, tuple)):
        digest.update(f"{type(part).__name__}:{len(part)}".encode())
        for item in part:
            _feed(digest, item)
    else:
        raise TypeError(f"parts: cannot fingerprint a {type(part).__name__} ({part!r:.60})")


def _source_digest() -> str:
    """SHA-256 of every .py file of the qlearn package: any change of code makes new keys."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def _prune(folder: Path) -> None:
    """Delete the oldest stored models beyond :data:`MAX_STORED_MODELS` (with their reports)."""
    stored = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in stored[MAX_STORED_MODELS:]:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
