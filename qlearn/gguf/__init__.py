"""GGUF: llama.cpp's block formats, byte for byte, and the files that hold them.

llama.cpp stores a weight matrix row by row, each row cut into blocks of 32 (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1) or super-blocks of 256 (the k-quants Q2_K … Q6_K): an fp16 scale per block (and a
min), a small integer code per weight; a super-block's sub-block scales are themselves quantized
under an fp16 super-scale. The modules, in reading order:

- :mod:`qlearn.gguf.formats`: what a tensor type is (:class:`BlockFormat` and its registry;
  :data:`BLOCKS`, :data:`LAYOUTS`, :data:`FALLBACK` are views of it), the float types and the
  array functions :func:`quantize`, :func:`dequantize`, :func:`unpack_block`,
  :func:`pack_block`, :func:`quantize_tensor` (a :class:`GGUFTensor`, which counts its own
  bytes);
- :mod:`qlearn.gguf.legacy`: one class per block of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1);
- :mod:`qlearn.gguf.kquants`: one class per super-block of 256 (Q2_K … Q6_K), whose
  sub-block searches (``make_qkx2_quants`` …) are in :mod:`qlearn.gguf._kquant_search` and
  whose bit packing, shared with the legacy types, is in :mod:`qlearn.gguf._packing`;
- :mod:`qlearn.gguf.microscaling`: MXFP4 and NVFP4, E2M1 codes under an E8M0 or UE4M3 scale
  per block, with ggml's own rounding (the formats themselves: :mod:`qlearn.mx`);
- :mod:`qlearn.gguf.iquants`: IQ4_NL and IQ4_XS, a fixed non-uniform grid of 16 levels under
  a searched scale, with or without an importance matrix;
- :mod:`qlearn.gguf.imatrix`: llama.cpp's importance matrix (:func:`importance_matrix`), the
  mean x² per input column that ``imatrix=`` hands to the types that use it;
- :mod:`qlearn.gguf.files`: recipes, :func:`save_gguf`, :func:`load_gguf` and the model-level
  :func:`quantize_model` / :func:`quantize_model_` / :func:`quantize_tensors`.

A block drawn byte by byte: :func:`qlearn.plot.draw_block`.

Gerganov et al., ggml and llama.cpp (2023), ``ggml/src/ggml-common.h`` and ``ggml/docs/gguf.md``;
Kawrakow, "k-quants", llama.cpp pull request #1684 (2023). Legacy quantizers as gguf-py's
``gguf/quants.py``. Taught in notebooks/06_gguf.ipynb.
"""

from qlearn.gguf import iquants, kquants, legacy, microscaling  # noqa: F401  (defining the types registers them)
from qlearn.gguf.files import (
    RECIPES,
    load_gguf,
    quantize_model,
    quantize_model_,
    quantize_tensors,
    recipe_types,
    save_gguf,
    tensor_shapes,
)
from qlearn.gguf.formats import (
    BLOCKS,
    FALLBACK,
    LAYOUTS,
    BlockFormat,
    Field,
    GGUFTensor,
    dequantize,
    fallback_type,
    pack_block,
    quantize,
    quantize_tensor,
    sub_block_scales,
    tensor_bytes,
    unpack_block,
)
from qlearn.gguf.imatrix import importance_matrix

__all__ = [
    "BLOCKS",
    "FALLBACK",
    "LAYOUTS",
    "RECIPES",
    "BlockFormat",
    "Field",
    "GGUFTensor",
    "dequantize",
    "fallback_type",
    "importance_matrix",
    "load_gguf",
    "pack_block",
    "quantize",
    "quantize_model",
    "quantize_model_",
    "quantize_tensor",
    "quantize_tensors",
    "recipe_types",
    "save_gguf",
    "sub_block_scales",
    "tensor_bytes",
    "tensor_shapes",
    "unpack_block",
]
