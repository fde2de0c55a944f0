"""qlearn: the package behind the qlearn course on LLM weight quantization.

One module per concept, in course order:

- :mod:`qlearn.floats`   — float bit layouts (FP32, FP16, BF16, FP8, FP4). Chapter 01.
- :mod:`qlearn.affine`   — absmax and zero-point quantization, granularity. Chapter 02.
- :mod:`qlearn.calibration` — clipping, range setting, observers, static/dynamic. Chapter 03.
- :mod:`qlearn.int8`     — outlier features and LLM.int8(). Chapter 04.
- :mod:`qlearn.gptq`     — GPTQ: inverse-Hessian error feedback, layer by layer. Chapter 05.
- :mod:`qlearn.gguf`     — GGUF blocks (Q8_0…Q5_1) and k-quants (Q2_K…Q6_K), byte-identical to
  llama.cpp; GGUF files. Chapter 06.
- :mod:`qlearn.qat`      — fake quantization with a straight-through estimator. Chapter 07.
- :mod:`qlearn.bitnet`   — BitNet 1-bit and b1.58: BitLinear, ternary packing. Chapter 07.
- :mod:`qlearn.awq`      — AWQ: activation-aware scales folded into the model. Chapter 08.
- :mod:`qlearn.nf4`      — NF4 and FP4 with double quantization (bitsandbytes). Chapter 08.
- :mod:`qlearn.kernels`  — real low-bit linears on the CPU: weight-only int8, W8A8 with int32
  sums, weight-only int4 (tinygemm). Chapter 10.
- :mod:`qlearn.roofline` — what a decoded token costs: bytes read, bandwidth, the roofline,
  arithmetic intensity, KV-cache bytes, a process's memory. Chapter 10.
- :mod:`qlearn.offload`  — models bigger than memory: accelerate-offloaded layers loaded one at
  a time for GPTQ and AWQ. Chapter 10.
- :mod:`qlearn.smoothquant` — SmoothQuant: activation outliers moved into the weights by a
  per-channel scale folded into the norms, then W8A8. Chapter 11.
- :mod:`qlearn.rotation` — Hadamard and random orthogonal rotations folded into the model
  (QuaRot): the same logits, no outlier channels. Chapter 11.
- :mod:`qlearn.kvcache`  — KIVI: the KV cache quantized, keys per channel and values per token,
  a recent window in full precision, as a transformers ``Cache``. Chapter 11.
- :mod:`qlearn.models`   — the default model, walking linear layers, footprint.
- :mod:`qlearn.evaluate` — perplexity, KL divergence from the original, greedy generation.
- :mod:`qlearn.plot`     — weight histograms and the course's other figures.
- :mod:`qlearn.data`     — the course's texts and calibration windows.
- :mod:`qlearn.widgets`  — interactive explorers (ipywidgets) over tested functions.
- :mod:`qlearn.exercises` — the checks of every chapter's exercises.
- :mod:`qlearn.claims`   — what a notebook asserts about numbers that vary from CPU to CPU.
- :mod:`qlearn.reuse`    — results kept on disk under the key of all that decides them, so a
  later chapter reads back what an earlier one measured.

Every quantized result of every method is a :class:`Quantized`: ``dequantize()``, ``nbytes()``
(the bytes it stores) and ``bits_per_weight()``.

Import the modules you need (``from qlearn import affine``); nothing heavy is imported here.
"""

from qlearn._quantized import Quantized

__all__ = ["Quantized"]
__version__ = "0.1.0"
