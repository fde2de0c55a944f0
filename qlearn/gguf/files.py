"""GGUF files and models: which type each tensor gets (recipes), and writing and reading files.

A GGUF file (``ggml/docs/gguf.md``) holds metadata and named tensors, each in one type of
:mod:`qlearn.gguf.formats`. :func:`recipe_types` gives llama.cpp's type of every tensor for a
recipe ("Q4_K", "Q4_K_M" or a mapping per tensor kind), with llama.cpp's fallbacks
(``src/llama-quant.cpp``); :func:`save_gguf` and :func:`load_gguf` write and read whole models
through the ``gguf`` package (gguf-py); :func:`quantize_model` / :func:`quantize_model_` give a
model whose decoder weights went through the round trip in memory, and :func:`quantize_tensors`
their bytes. Gerganov et al., ggml and llama.cpp (2023). Taught in notebooks/06_gguf.ipynb.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qlearn import _layers
from qlearn._checks import check_choice
from qlearn.gguf.formats import BLOCKS, GGUFTensor, fallback_type, quantize, quantize_tensor

__all__ = [
    "RECIPES",
    "load_gguf",
    "quantize_model",
    "quantize_model_",
    "quantize_tensors",
    "recipe_types",
    "save_gguf",
    "tensor_shapes",
]

RECIPES: dict[str, str] = {
    "<type>": "every linear weight of the decoder in that type (token embedding: see below)",
    "Q4_K_M": "llama.cpp's Q4_K_M: Q4_K, and Q6_K for attn_v and ffn_down in the layers "
    "use_more_bits picks (the first and last eighth, every third between)",
    "{kind: type}": "a type per tensor kind ('attn_q', 'ffn_down', 'token_embd', ...); "
    "'default' for the other 2-D tensors (F32 without it)",
}
"""What :func:`recipe_types` accepts. With a type name or "Q4_K_M", the token embedding (and a
separate output matrix) gets Q6_K as llama.cpp gives its output tensor (the type itself for F32,
F16, BF16 and Q8_0); 1-D tensors (norms) always stay F32; then :data:`~qlearn.gguf.FALLBACK`
applies."""

_KEYS_WRITTEN_HERE = {"general.architecture", "general.file_type", "general.quantization_version"}


def recipe_types(model: Any, recipe: str | Mapping[str, str]) -> dict[str, str]:
    """``{GGUF tensor name: type}`` for every tensor a GGUF file of ``model`` holds.

    Names are llama.cpp's (``blk.3.attn_v.weight``), from the ``gguf`` package's name map as
    transformers' GGUF loader uses it; see :data:`RECIPES` for ``recipe`` and
    :data:`FALLBACK` for rows that do not fit. Taught in notebooks/06_gguf.ipynb.
    """
    rule = _recipe_rule(recipe)
    tensors = _gguf_tensors(model)
    n_layers = int(model.config.num_hidden_layers)
    types = {}
    for name, (_, tensor) in tensors.items():
        if tensor.ndim < 2:
            types[name] = "F32"
            continue
        kind, layer = _kind(name)
        types[name] = fallback_type(rule(kind, layer, n_layers), int(tensor.shape[-1]))
    return types


def tensor_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """``{GGUF tensor name: shape}`` of the tensors a GGUF file of ``model`` holds (numpy
    order: rows last; a tied LM head is not stored twice). Taught in notebooks/06_gguf.ipynb."""
    return {name: tuple(t.shape) for name, (_, t) in _gguf_tensors(model).items()}


def quantize_model(
    model: Any, recipe: str | Mapping[str, str], *, imatrix: Mapping[str, Any] | None = None
) -> Any:
    """A copy of ``model`` whose decoder linear weights are quantized to ``recipe``'s types and
    dequantized again (GGUF's round trip, in memory); ``model`` is left untouched.
    See :func:`quantize_model_`. Taught in notebooks/06_gguf.ipynb."""
    from qlearn.offload import require_in_memory

    _recipe_rule(recipe)
    require_in_memory(model, "quantize it in place, layer by layer, with gguf.quantize_model_")
    return quantize_model_(copy.deepcopy(model), recipe, imatrix=imatrix)


def quantize_model_(
    model: Any, recipe: str | Mapping[str, str], *, imatrix: Mapping[str, Any] | None = None
) -> Any:
    """In place: replace every decoder linear weight by ``dequantize(quantize(W, t), t)`` with
    ``t`` its type under ``recipe`` (see :func:`recipe_types`); return ``model``.

    Embeddings, norms and the LM head are kept, as in the course's anchor figures; the values
    are those a GGUF file written by :func:`save_gguf` holds (:func:`quantize_tensors`' bytes).
    A model that accelerate offloads is quantized one decoder layer in memory at a time
    (``qlearn.offload.linear_layers_onloaded``). ``imatrix``: ``{layer name: one value per
    input column}`` (:func:`qlearn.gguf.importance_matrix`), used as ``llama-quantize --imatrix``
    uses it: the legacy types but Q8_0, the k-quants and IQ4_NL / IQ4_XS take it (their
    ``quantize_*`` importance paths, byte for byte); F32, F16, BF16, Q8_0, MXFP4 and NVFP4 are
    quantized without it, as ggml's quantizers ignore it. Taught in notebooks/06_gguf.ipynb
    (perplexity per type).
    """
    from qlearn.offload import linear_layers_onloaded

    types = _layer_types(model, recipe)
    _check_model_imatrix(imatrix, model)
    for layer_name, layer in linear_layers_onloaded(model):
        tensor = _quantize_layer(layer, types[layer_name], _importance_of(imatrix, layer_name))
        _layers.set_weight_(layer, tensor.dequantize())
    return model


def quantize_tensors(
    model: Any, recipe: str | Mapping[str, str], *, imatrix: Mapping[str, Any] | None = None
) -> dict[str, GGUFTensor]:
    """``{layer name: GGUFTensor}`` for every decoder linear layer of ``model`` (the names
    :func:`qlearn.models.linear_layers` yields, e.g. ``model.layers.0.mlp.down_proj``): its
    [out, in] weight in its type under ``recipe`` (:func:`recipe_types`), the bytes a GGUF
    file holds. Sum their ``nbytes()`` for the decoder's size; ``model`` is left untouched.
    ``imatrix`` as for :func:`quantize_model_`. Taught in notebooks/13_capstone.ipynb.
    """
    from qlearn.models import linear_layers

    types = _layer_types(model, recipe)
    _check_model_imatrix(imatrix, model)
    return {
        name: _quantize_layer(layer, types[name], _importance_of(imatrix, name))
        for name, layer in linear_layers(model)
    }


def _layer_types(model: Any, recipe: str | Mapping[str, str]) -> dict[str, str]:
    """``{decoder linear layer name: GGUF type}`` under ``recipe`` (from the shapes only)."""
    types = recipe_types(model, recipe)
    return {
        hf_name.removesuffix(".weight"): types[gguf_name]
        for gguf_name, (hf_name, _) in _gguf_tensors(model).items()
        if gguf_name in types and hf_name.endswith(".weight")
    }


def _quantize_layer(layer: Any, qtype: str, importance: Any = None) -> GGUFTensor:
    """The layer's [out, in] weight as a GGUF tensor of type ``qtype`` (with its importance for
    the types that take one; ggml's other types ignore it)."""
    values = _layers.weight_of(layer).detach().float().cpu().numpy()
    if importance is not None and not BLOCKS[qtype].takes_importance:
        importance = None
    return quantize_tensor(values, qtype, imatrix=importance)


def _check_model_imatrix(imatrix: Any, model: Any) -> None:
    """An importance for every decoder linear layer (the types that ignore it get none)."""
    from qlearn.models import linear_layers

    if imatrix is None:
        return
    if not isinstance(imatrix, Mapping):
        raise TypeError(f"imatrix: expected {{layer name: tensor}}, got {type(imatrix).__name__}")
    for name, _ in linear_layers(model):
        if name not in imatrix:
            raise ValueError(
                f"imatrix: no importance for {name}; importance_matrix gives every layer"
            )


def _importance_of(imatrix: Mapping[str, Any] | None, name: str) -> Any:
    return None if imatrix is None else imatrix[name]


def save_gguf(
    path: str | os.PathLike[str],
    model: Any,
    recipe: str | Mapping[str, str],
    *,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model`` as a GGUF file with tensors typed by ``recipe``; return the path.

    Metadata (architecture, hyper-parameters, tokenizer, chat template) are copied from
    ``source``, the GGUF the model came from (default: the course's model file), whose tensor
    list the model must match. Tensors get llama.cpp's names and, for Llama, llama.cpp's
    interleaved row order of attn_q/attn_k (``convert_hf_to_gguf.py``'s ``permute``, which
    transformers undoes on load). Written with ``gguf.GGUFWriter``. Taught in
    notebooks/06_gguf.ipynb.
    """
    from gguf import (
        GGML_QUANT_VERSION,
        GGMLQuantizationType,
        GGUFValueType,
        GGUFWriter,
        LlamaFileType,
    )

    path = Path(os.fspath(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the folder {path.parent} does not exist")
    types = recipe_types(model, recipe)
    tensors = _gguf_tensors(model)
    permute = _permutation(model)
    if source is None:
        from qlearn.models import default_gguf_path

        source = default_gguf_path()
    reader = _open_gguf(source, "source")
    arch = str(reader.fields["general.architecture"].contents())
    source_names = [t.name for t in reader.tensors]
    missing = sorted(set(source_names) - set(tensors))
    extra = sorted(set(tensors) - set(source_names))
    if missing or extra:
        raise ValueError(
            f"model: its tensors do not match those of {source} (missing {missing[:3]}, "
            f"not in the source {extra[:3]}); pass the GGUF it was loaded from as source"
        )

    writer = GGUFWriter(path, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _KEYS_WRITTEN_HERE:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
    if any(t not in {"F32", "F16", "BF16"} for t in types.values()):
        writer.add_quantization_version(GGML_QUANT_VERSION)
    if isinstance(recipe, str):  # llama.cpp's name for the mix, where it has one
        ftype = "ALL_F32" if recipe == "F32" else f"MOSTLY_{recipe}"
        if ftype in LlamaFileType.__members__:
            writer.add_file_type(LlamaFileType[ftype])
    for name in source_names:
        values = tensors[name][1].detach().float().cpu().numpy()
        values = permute.get(_kind(name)[0], lambda w: w)(values)
        qtype = types[name]
        if qtype == "F32":
            writer.add_tensor(name, np.ascontiguousarray(values, dtype=np.float32))
        elif qtype == "F16":
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=GGMLQuantizationType[qtype])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def load_gguf(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Read a GGUF file back into a transformers model (dequantized to FP32) and its tokenizer.

    The file is checked first (magic, header, every tensor's bytes inside the file), so a
    corrupt or truncated file gives a clear ``ValueError``. Taught in notebooks/06_gguf.ipynb.
    """
    from qlearn.models import load_model

    path = Path(os.fspath(path))
    _open_gguf(path, "path")
    return load_model(str(path))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _recipe_rule(recipe: Any) -> Callable[[str, int | None, int], str]:
    """``recipe`` → rule(kind, layer, n_layers) giving each 2-D tensor's type."""
    if isinstance(recipe, str):
        if recipe == "Q4_K_M":
            return _q4_k_m
        check_choice(recipe, "recipe", [*BLOCKS, "Q4_K_M"])
        output = recipe if recipe in ("F32", "F16", "BF16", "Q8_0") else "Q6_K"
        return lambda kind, layer, n: output if kind in ("token_embd", "output") else recipe
    if isinstance(recipe, Mapping):
        for kind, qtype in recipe.items():
            if not isinstance(kind, str):
                raise TypeError(f"recipe: expected tensor kinds as keys, got {kind!r}")
            check_choice(qtype, f"recipe[{kind!r}]", list(BLOCKS))
        table = dict(recipe)
        return lambda kind, layer, n: table.get(kind, table.get("default", "F32"))
    raise TypeError(
        f"recipe: expected a type name, 'Q4_K_M' or a mapping {{kind: type}}, "
        f"got {type(recipe).__name__}"
    )


def _q4_k_m(kind: str, layer: int | None, n_layers: int) -> str:
    """llama.cpp's Q4_K_M (``llama_tensor_get_type``, no importance matrix)."""
    if kind in ("token_embd", "output"):
        return "Q6_K"
    if kind in ("attn_v", "ffn_down") and layer is not None and _use_more_bits(layer, n_layers):
        return "Q6_K"
    if kind == "attn_qkv":
        return "Q5_K"
    return "Q4_K"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: first and last eighth of the layers, every third between."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _kind(gguf_name: str) -> tuple[str, int | None]:
    """``blk.3.attn_v.weight`` → ("attn_v", 3); ``token_embd.weight`` → ("token_embd", None)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return parts[2], int(parts[1])
    return parts[0], None


def _gguf_tensors(model: Any) -> dict[str, tuple[str, Any]]:
    """``{GGUF name: (HF name, tensor)}`` through the ``gguf`` package's ``TensorNameMap`` (as
    transformers' GGUF loader maps them); a tied LM head (the same tensor as the embedding) is
    left out, as llama.cpp does."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise TypeError(
            f"model: expected a transformers model with a config, got {type(model).__name__}"
        )
    name_map = _name_map(config.model_type, int(config.num_hidden_layers))
    tensors = {}
    for hf_name, tensor in model.state_dict().items():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            tensors[f"{gguf_name}.{suffix}"] = (hf_name, tensor)
    out, embd = tensors.get("output.weight"), tensors.get("token_embd.weight")
    if out is not None and embd is not None and out[1].data_ptr() == embd[1].data_ptr():
        del tensors["output.weight"]
    return tensors


@functools.lru_cache(maxsize=8)
def _name_map(model_type: str, n_layers: int) -> Any:
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = {name: arch for arch, name in MODEL_ARCH_NAMES.items()}.get(model_type)
    if arch is None:
        raise ValueError(f"model: the gguf package has no architecture {model_type!r}")
    return get_tensor_name_map(arch, n_layers)


def _permutation(model: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Row orders llama.cpp expects but transformers' loader undoes: for Llama, attn_q and
    attn_k with each head's two rotary halves interleaved (``convert_hf_to_gguf.py``)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    config = model.config
    processor = TENSOR_PROCESSORS.get(config.model_type, TensorProcessor)
    if processor.__name__ == "LlamaTensorProcessor":
        n_head = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_head
        return {"attn_q": lambda w: _permute(w, n_head), "attn_k": lambda w: _permute(w, n_kv)}
    if processor is not TensorProcessor:
        raise ValueError(
            f"model: save_gguf writes Llama-like models; {config.model_type!r} needs "
            f"transformers' {processor.__name__}, which it does not invert"
        )
    return {}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` of convert_hf_to_gguf.py (inverse of transformers'
    ``_reverse_permute_weights``)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _open_gguf(path: Any, name: str):
    """A ``gguf.GGUFReader`` on ``path`` after checking that it is a whole GGUF file."""
    from gguf import GGUFReader

    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ValueError(
            f"{name}: {path} is not a GGUF file (it starts with {magic!r}, expected b'GGUF')"
        )
    try:
        reader = GGUFReader(path)
    except Exception as error:  # any parse failure inside gguf-py/numpy means a bad file
        raise ValueError(
            f"{name}: {path} is a corrupt or truncated GGUF file ({type(error).__name__}: {error})"
        ) from None
    for tensor in reader.tensors:
        if tensor.data_offset + int(tensor.n_bytes) > size:
            raise ValueError(
                f"{name}: {path} is truncated: tensor {tensor.name!r} needs bytes up to "
                f"{tensor.data_offset + int(tensor.n_bytes)}, the file has {size}"
            )
    return reader
