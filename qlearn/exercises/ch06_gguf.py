"""Chapter 06's exercises: GGUF blocks, byte for byte. Taught in notebooks/06_gguf.ipynb."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from qlearn import gguf
from qlearn.exercises import _course
from qlearn.exercises._compare import as_bytes, as_tensor, show, show_bytes
from qlearn.exercises._runner import Case, Draw, Spec


def _blocks(draw: Draw, *spreads: float) -> list[np.ndarray]:
    return [(draw.np.standard_normal(32) * s).astype(np.float32) for s in spreads]


def _q8_0_blocks(draw: Draw) -> list[Case]:
    """The bytes of random blocks of very different sizes, one of them all zeros."""
    raws = [gguf.quantize(x, "Q8_0") for x in _blocks(draw, 1.0, 0.01, 300.0, 0.0)]
    return [Case((raw,), shown={"raw": show_bytes(raw)}) for raw in raws]


def _blocks_with_halves(draw: Draw) -> list[Case]:
    """Random blocks, one all zeros, one whose values are exact halves of its step."""
    blocks = _blocks(draw, 1.0, 0.02, 50.0)
    halves = np.arange(32, dtype=np.float32) - 15.5  # d = 127 / 127 = 1: values k + 0.5
    halves[0] = 127.0
    zeros = Case((np.zeros(32, np.float32),), "all zeros")
    return [*(Case((x,)) for x in blocks), zeros, Case((halves,), "exact halves of the step")]


def _signed_blocks(draw: Draw) -> list[Case]:
    """Random blocks whose largest magnitude is positive or negative, and one of zeros."""
    cases = []
    for x, sign in zip(_blocks(draw, 1.0, 0.05, 20.0, 1.0, 0.0), (1, -1, 1, -1, 1), strict=True):
        k = int(np.abs(x).argmax())
        x[k] = sign * abs(x[k]) * 1.5
        note = f"largest magnitude {'positive' if sign > 0 else 'negative'}"
        cases.append(Case((x,), note if x.any() else "all zeros"))
    return cases


def _constant_blocks(draw: Draw) -> list[Case]:
    """Random blocks, an all-positive one, a constant one."""
    blocks = _blocks(draw, 1.0, 0.03, 8.0)
    positive = Case(((draw.np.random(32) * 2 + 1).astype(np.float32),), "all positive")
    constant = Case((np.full(32, 0.75, np.float32),), "constant")
    return [*(Case((x,)) for x in blocks), positive, constant]


def _compare_bytes(got: Any, expected: np.ndarray, case: Case, *, qtype: str) -> str | None:
    """The bytes of one block of ``qtype``: equal, or which field of the block differs first."""
    data, expected = as_bytes(got), expected.reshape(-1)
    if isinstance(data, str):
        return data
    if data.size != expected.size:
        return f"expected {expected.size} bytes (one {qtype} block), got {data.size}"
    differ = np.flatnonzero(data != expected)
    if not differ.size:
        return None
    first, start, name = int(differ[0]), 0, ""
    for name, size in gguf.LAYOUTS[qtype]:  # noqa: B007 (the field that holds byte `first`)
        if first < start + size:
            break
        start += size
    if name in ("d", "m"):
        want, have = (float(b[start : start + 2].view(np.float16)[0]) for b in (expected, data))
        what = "scale d" if name == "d" else "min m"
        return (
            f"the {what} (bytes {start}–{start + 1}, fp16) differs: expected {want!r}, got {have!r}"
        )
    j = first - start
    text = (
        f"{differ.size} bytes differ; the first is byte {first} (byte {j} of the codes): "
        f"expected 0x{int(expected[first]):02x}, got 0x{int(data[first]):02x}"
    )
    if qtype == "Q8_0":
        return text + f" (code {j}: expected {int(expected[first : first + 1].view(np.int8)[0])})"
    return text + f" (low nibble: code {j}, high nibble: code {j + 16})"


def _neighbours(got: Any, expected: np.ndarray, case: Case) -> bool:
    start = expected.size - 16  # the codes packed as neighbours (2j, 2j + 1) in one byte
    codes = np.concatenate([expected[start:] & 15, expected[start:] >> 4])
    return np.array_equal(
        as_bytes(got)[start:], (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
    )


_NEIGHBOURS = (_neighbours, "codes 2j and 2j + 1 share a byte: GGUF puts codes j and j + 16 there")

TYPES_BY_SIZE = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
"""The types the real-weight exercise chooses from, fewest bits per weight first."""


def _rmse(w: torch.Tensor, qtype: str) -> float:
    a = w.numpy()
    back = gguf.dequantize(gguf.quantize(a, qtype), qtype, a.shape)
    return float(np.sqrt(np.mean((back.astype(np.float64) - a) ** 2)))


def _real_rows(draw: Draw) -> list[Case]:
    """16 rows (1536 weights each, six super-blocks) of three mlp.down_proj weights of the
    course's model (SmolLM2-135M-Instruct, its weights a Q4_1 reconstruction) drawn by the
    seed, each with a budget between two types' errors; one budget nothing meets and one
    every type meets."""
    cases = []
    for i, name in enumerate(_course.drawn_names(draw, 3, "mlp.down_proj")):
        start = draw.py.randrange(0, 576 - 16)
        w = _course.weight(name)[start : start + 16].contiguous()
        errors = [_rmse(w, t) for t in TYPES_BY_SIZE]
        k = draw.py.randrange(len(errors) - 1)
        budget = [
            (errors[k] * errors[k + 1]) ** 0.5,
            errors[-1] * 0.5,
            errors[0] * 1.01,
        ][i]
        note = ["between two types", "nothing meets it", "every type meets it"][i]
        shown = {"w": f"rows {start}–{start + 15} of {name} [576, 1536], {_course.MODEL_NOTE}"}
        cases.append(Case((w, float(f"{budget:.4g}")), f"{name}, {note}", shown=shown))
    return cases


def _smallest_type(w: torch.Tensor, max_rmse: float) -> str | None:
    return next((t for t in TYPES_BY_SIZE if _rmse(w, t) <= max_rmse), None)


def _largest_meeting(got: Any, expected: str | None, case: Case) -> bool:
    w, max_rmse = case.args
    return got == next((t for t in reversed(TYPES_BY_SIZE) if _rmse(w, t) <= max_rmse), None)


SPECS = [
    Spec(
        signature="dequantize_q8_0(raw)",
        title="Read a Q8_0 block",
        doc="""→ the 32 float32 values of one Q8_0 block of 34 bytes (an fp16 scale d, then 32
        int8 codes q; value = d · q); a numpy array or a torch tensor. Reference:
        ``qlearn.gguf.dequantize(raw, "Q8_0")`` (gguf-py's, llama.cpp's ``block_q8_0``),
        exactly.""",
        inputs=_q8_0_blocks,
        reference=lambda raw: torch.from_numpy(gguf.dequantize(raw, "Q8_0")),
        mistakes=[
            (
                lambda got, expected, case: bool(
                    (expected < 0).any() and (as_tensor(got) >= 0).all()
                ),
                "the codes are signed int8: byte 0xff is -1, not 255",
            )
        ],
        hint="""d = raw[:2].view(np.float16) as float32, q = raw[2:].view(np.int8) (the codes are
        signed: 0xff is -1, not 255); values = d * q.""",
        passed="agrees with qlearn.gguf.dequantize on {n} blocks",
    ),
    Spec(
        signature="quantize_q8_0(x)",
        title="Write a Q8_0 block",
        doc="""→ the 34 bytes of the Q8_0 block of 32 float32 values: d = max|x| / 127 as fp16,
        then q = roundf(x · (1/d)) as int8 (d and 1/d float32, 0 for a block of zeros; C's
        ``roundf`` rounds halves away from zero). Reference: ``qlearn.gguf.quantize(x,
        "Q8_0")`` (gguf-py's bytes, equal to llama.cpp's), byte for byte.""",
        inputs=_blocks_with_halves,
        reference=lambda x: gguf.quantize(x, "Q8_0"),
        compare=partial(_compare_bytes, qtype="Q8_0"),
        hint="""d = np.abs(x).max() / 127 (float32); q = x * (1 / d) rounded half away from zero:
        np.sign(v) * np.floor(np.abs(v) + 0.5); bytes = d as np.float16 .view(np.uint8), then
        q.astype(np.int8).view(np.uint8).""",
        passed="gives qlearn.gguf.quantize's bytes on {n} blocks",
    ),
    Spec(
        signature="quantize_q4_0(x)",
        title="Pack a Q4_0 block",
        doc="""→ the 18 bytes of the Q4_0 block of 32 float32 values: m = the value of largest
        magnitude (the first such, with its sign), d = m / −8 (float32), q = min(15, trunc(x ·
        (1/d) + 8.5)); d as fp16, then byte j holding q[j] in its low nibble and q[j + 16] in
        its high one. Reference: ``qlearn.gguf.quantize(x, "Q4_0")`` (gguf-py's bytes,
        llama.cpp's ``block_q4_0``), byte for byte.""",
        inputs=_signed_blocks,
        reference=lambda x: gguf.quantize(x, "Q4_0"),
        compare=partial(_compare_bytes, qtype="Q4_0"),
        mistakes=[_NEIGHBOURS],
        hint="""m = x[np.abs(x).argmax()] keeps its sign; d = m / -8; q = np.minimum(15,
        np.trunc(x * (1 / d) + 8.5)).astype(np.uint8); the codes are packed q[:16] | (q[16:] <<
        4) — the first half in the low nibbles, not neighbours in one byte.""",
        passed="gives qlearn.gguf.quantize's bytes on {n} blocks",
    ),
    Spec(
        signature="quantize_q4_1(x)",
        title="Pack a Q4_1 block",
        doc="""→ the 20 bytes of the Q4_1 block of 32 float32 values: d = (max − min) / 15, m =
        min (float32), q = min(15, trunc((x − m) · (1/d) + 0.5)) (1/d = 0 for a constant
        block); d and m as fp16, then the codes packed as in Q4_0. Reference:
        ``qlearn.gguf.quantize(x, "Q4_1")`` (gguf-py's bytes, llama.cpp's ``block_q4_1``), byte
        for byte.""",
        inputs=_constant_blocks,
        reference=lambda x: gguf.quantize(x, "Q4_1"),
        compare=partial(_compare_bytes, qtype="Q4_1"),
        mistakes=[_NEIGHBOURS],
        hint="""lo, hi = x.min(), x.max(); d = (hi - lo) / 15; q = np.minimum(15, np.trunc((x -
        lo) * (1 / d) + 0.5)); bytes: d, then lo, as fp16, then q[:16] | (q[16:] << 4).""",
        passed="gives qlearn.gguf.quantize's bytes on {n} blocks",
    ),
    Spec(
        signature="smallest_type(w, max_rmse)",
        title="The smallest type that meets a budget, on real weights",
        doc="""→ the GGUF type of ``TYPES_BY_SIZE`` ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
        "Q8_0", fewest bits per weight first) with the fewest bits per weight whose root mean
        squared error on ``w`` (rows of 1536 real weights) is at most ``max_rmse``, or None if
        none is. Reference: ``qlearn.gguf.quantize`` and ``dequantize`` (llama.cpp's reference
        k-quants), the RMSE in float64; exactly.""",
        inputs=_real_rows,
        reference=_smallest_type,
        compare=lambda got, expected, case: (
            None if got == expected else f"expected {expected!r}, got {show(got)}"
        ),
        mistakes=[
            (
                _largest_meeting,
                "the largest type that meets the budget; the question is the smallest",
            )
        ],
        hint="""for qtype in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"): back =
        gguf.dequantize(gguf.quantize(w.numpy(), qtype), qtype, tuple(w.shape)); return the first
        whose np.sqrt(np.mean((back - w.numpy()) ** 2)) <= max_rmse; None after the loop.""",
        passed="picks the smallest type within budget for {n} slices of the course model's weights",
    ),
]
