"""Chapter 12's exercises: shared scales and non-uniform grids (an MX block's E8M0 scale, the bytes
of a GGUF MXFP4 block, one step of k-means, a layer's importance matrix). Taught in
notebooks/12_shared_scales.ipynb."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qlearn import codebook, gguf, mx
from qlearn.exercises import _course
from qlearn.exercises._compare import as_bytes, compare_number, compare_tensor
from qlearn.exercises._runner import Case, Draw, Spec


def _mx_blocks(draw: Draw) -> list[Case]:
    """Blocks of 32 of very different sizes in four element formats: one whose largest magnitude
    is an exact power of two, one just below one, one negative, one all zeros, one so small
    that the scale reaches E8M0's floor."""
    cases = []
    for spread, element, note in [
        (1.0, "fp4_e2m1", ""),
        (0.02, "fp8_e4m3", ""),
        (300.0, "fp6_e3m2", ""),
        (1.0, "int8", ""),
        (1.0, "fp4_e2m1", "largest magnitude exactly 4"),
        (1.0, "fp4_e2m1", "largest magnitude just below 8"),
        (3.0, "fp8_e4m3", "largest magnitude negative"),
        (0.0, "fp4_e2m1", "all zeros"),
        (1e-38, "fp4_e2m1", "tiny: the scale is clamped"),
    ]:
        x = torch.randn(32, generator=draw.torch) * spread
        k = int(x.abs().argmax())
        if note.endswith("exactly 4"):
            x = x / x.abs().max() * 3.5
            x[k] = 4.0
        elif note.endswith("below 8"):
            x = x / x.abs().max() * 7
            x[k] = float(np.nextafter(np.float32(8), np.float32(0)))
        elif note.endswith("negative"):
            x[k] = -3 * x.abs().max()
        cases.append(Case((x, element), note or element))
    return cases


def _e8m0(x: torch.Tensor, element: str) -> int:
    return int(mx.mx_quantize(x[None], element).scale_codes[0, 0])


def _ceil_rounding(got: Any, expected: int, case: Case) -> bool:
    x, element = case.args
    ceil = int(mx.mx_quantize(x[None], element, scale_rounding="ceil").scale_codes[0, 0])
    return ceil != expected and compare_number(got, ceil) is None


def _no_bias(got: Any, expected: int, case: Case) -> bool:
    return compare_number(got, expected - mx.E8M0_BIAS) is None


def _no_emax(got: Any, expected: int, case: Case) -> bool:
    _, element = case.args
    emax = mx.element_format(element).emax
    return emax != 0 and expected > 0 and compare_number(got, expected + emax) is None


def _mxfp4_blocks(draw: Draw) -> list[Case]:
    """Random blocks of 32 of very different sizes, one with values halfway between two levels,
    one all zeros, and 32 consecutive weights of a row of a layer of the course's model
    (SmolLM2-135M-Instruct, its weights a Q4_1 reconstruction) drawn by the seed."""
    cases = [
        Case(((draw.np.standard_normal(32) * s).astype(np.float32),)) for s in (1.0, 0.01, 50.0)
    ]
    halves = (draw.np.standard_normal(32) * 1.5).clip(-3.9, 3.9).astype(np.float32)
    halves[:8] = [4.0, 0.75, 1.75, 3.5, -0.75, -1.75, -3.5, 0.25]  # d = ½: ties of the grid
    cases.append(Case((halves,), "values halfway between two levels"))
    cases.append(Case((np.zeros(32, np.float32),), "all zeros"))
    (name,) = _course.drawn_names(draw, 1)
    w = _course.weight(name)
    row, start = draw.py.randrange(w.shape[0]), 32 * draw.py.randrange(w.shape[1] // 32)
    block = w[row, start : start + 32].numpy().copy()
    shown = {"x": f"weights {start}–{start + 31} of row {row} of {name}, {_course.MODEL_NOTE}"}
    cases.append(Case((block,), name, shown=shown))
    return cases


def _mxfp4(x: np.ndarray) -> np.ndarray:
    return gguf.quantize(x, "MXFP4").reshape(-1)


def _compare_mxfp4(got: Any, expected: np.ndarray, case: Case) -> str | None:
    """17 bytes: equal, or whether the scale byte or which code differs first."""
    data = as_bytes(got)
    if isinstance(data, str):
        return data
    if data.size != expected.size:
        return (
            f"expected {expected.size} bytes (one MXFP4 block: e, then 16 bytes of codes), "
            f"got {data.size}"
        )
    differ = np.flatnonzero(data != expected)
    if not differ.size:
        return None
    first = int(differ[0])
    if first == 0:
        return f"the scale byte e differs: expected {int(expected[0])}, got {int(data[0])}"
    j = first - 1
    return (
        f"{differ.size} bytes differ; the first is byte {first} (byte {j} of the codes): expected "
        f"0x{int(expected[first]):02x}, got 0x{int(data[first]):02x} (low nibble: code {j}, high "
        f"nibble: code {j + 16})"
    )


def _codes_of(raw: np.ndarray) -> np.ndarray:
    return np.concatenate([raw[1:] & 15, raw[1:] >> 4])


def _neighbours(got: Any, expected: np.ndarray, case: Case) -> bool:
    data, codes = as_bytes(got), _codes_of(expected)
    packed = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
    return not isinstance(data, str) and np.array_equal(data[1:], packed)


def _ties_to_even(got: Any, expected: np.ndarray, case: Case) -> bool:
    """The codes of the OCP rounding (ties to even), with or without -0 for small negatives."""
    data = as_bytes(got)
    if isinstance(data, str) or data.size != expected.size or data[0] != expected[0]:
        return False
    ocp = mx.mx_quantize(torch.from_numpy(case.args[0])[None], "fp4_e2m1").codes[0].numpy()
    for codes in (ocp, np.where(ocp == 8, 0, ocp)):
        packed = (codes[:16] | (codes[16:] << 4)).astype(np.uint8)
        if not np.array_equal(packed, _codes_of(expected)) and np.array_equal(data[1:], packed):
            return True
    return False


def _kmeans_sets(draw: Draw) -> list[Case]:
    """Values and starting centroids none of whose clusters comes out empty: Gaussian values
    with 4 and 8 centroids, uniform ones with 3, a heavy-tailed set with 16, and a row of a layer
    of the course's model (SmolLM2-135M-Instruct, its weights a Q4_1 reconstruction) with 8."""
    sets = [
        (torch.randn(200, generator=draw.torch, dtype=torch.float64), 4, "Gaussian"),
        (torch.randn(500, generator=draw.torch, dtype=torch.float64) * 0.05, 8, "Gaussian"),
        (torch.rand(100, generator=draw.torch, dtype=torch.float64) * 10 - 5, 3, "uniform"),
        (_heavy_tailed(draw), 16, "heavy-tailed (Student's t, 3 degrees of freedom)"),
    ]
    (name,) = _course.drawn_names(draw, 1, "mlp.up_proj")
    row = draw.py.randrange(1536)
    sets.append((_course.weight(name)[row].double(), 8, f"row {row} of {name}"))
    cases = []
    for values, k, note in sets:
        centroids = _starting_centroids(values, k, draw)
        shown = {"values": f"{note}, {values.numel()} values"}
        if note.startswith("row"):
            shown["values"] = f"{note} (576 weights), {_course.MODEL_NOTE}"
        cases.append(Case((values, centroids), f"{note}, k = {k}", shown=shown))
    return cases


def _heavy_tailed(draw: Draw) -> torch.Tensor:
    return torch.from_numpy(draw.np.standard_t(3, 400))


def _starting_centroids(values: torch.Tensor, k: int, draw: Draw) -> torch.Tensor:
    """k values drawn from the set, each moved by a tiny random amount (so that no value lies
    exactly halfway between two), redrawn until every cluster of the first step is non-empty."""
    while True:
        picked = values[torch.randperm(values.numel(), generator=draw.torch)[:k]]
        centroids = picked + torch.randn(k, generator=draw.torch, dtype=torch.float64) * 1e-6
        labels = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
        if torch.bincount(labels, minlength=k).min() > 0 and centroids.unique().numel() == k:
            return centroids


def _kmeans_step(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return codebook.kmeans(values, centroids.numel(), init=centroids, max_iter=1).centroids[0]


def _compare_centroids(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=1e-9, atol=1e-12)


def _signed_distance(got: Any, expected: torch.Tensor, case: Case) -> bool:
    values, centroids = case.args
    labels = (values[:, None] - centroids[None, :]).argmin(dim=1)
    means = torch.stack([
        values[labels == j].mean() if (labels == j).any() else centroids[j]
        for j in range(centroids.numel())
    ])  # fmt: skip
    return isinstance(got, torch.Tensor) and compare_tensor(got, means, rtol=1e-9) is None


def _sorted_centroids(got: Any, expected: torch.Tensor, case: Case) -> bool:
    return (
        isinstance(got, torch.Tensor)
        and compare_tensor(got, expected.sort().values, rtol=1e-9, atol=1e-12) is None
    )


_IMATRIX_LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def _layer_inputs(draw: Draw) -> list[Case]:
    """Three decoder linears of the course's model (SmolLM2-135M-Instruct, its weights a Q4_1
    reconstruction) drawn by the seed from q_proj, o_proj, gate_proj and down_proj, with what
    each receives on 2 windows of 128 tokens of *Emma* drawn by the seed (X [256, in])."""
    names = [n for suffix in _IMATRIX_LAYERS for n in _course.layer_names(suffix)]
    windows = _course.emma_windows(draw, 2, 128)
    return [
        Case((X,), name, shown={"X": s["X"]}, context={"windows": windows, "name": name})
        for name, _, X, s in _course.drawn_layers_and_inputs(draw, names, 3, 2, 128)
    ]


def _importance(X: torch.Tensor, *, windows: torch.Tensor, name: str) -> torch.Tensor:
    model, _ = _course.course_model()
    return gguf.importance_matrix(model, windows, batch_size=1)[name]


def _compare_importance(got: Any, expected: torch.Tensor, case: Case) -> str | None:
    return compare_tensor(got, expected, rtol=1e-4, atol=1e-7 * float(expected.max()))


def _summed(got: Any, expected: torch.Tensor, case: Case) -> bool:
    (X,) = case.args
    return (
        isinstance(got, torch.Tensor)
        and compare_tensor(got, expected * X.shape[0], rtol=1e-4) is None
    )


def _absolute(got: Any, expected: torch.Tensor, case: Case) -> bool:
    (X,) = case.args
    return isinstance(got, torch.Tensor) and compare_tensor(got, X.abs().mean(0), rtol=1e-4) is None


SPECS = [
    Spec(
        signature="e8m0_scale(block, element)",
        title="The E8M0 scale of an MX block",
        doc="""→ the E8M0 byte (an int, 0–254) that an OCP MX block of 32 values stores as its
        scale, for the element format ``element`` — ``"fp4_e2m1"`` (emax_elem = 2),
        ``"fp6_e3m2"`` (4), ``"fp8_e4m3"`` (8) or ``"int8"`` (0): shared_exp = ⌊log₂ max|x|⌋ −
        emax_elem, clamped to [−127, 127] (−127 for a block of zeros), stored as 127 +
        shared_exp. Reference: ``qlearn.mx.mx_quantize(block[None], element).scale_codes``
        (OCP Microscaling Formats v1.0, §6.3), exactly.""",
        inputs=_mx_blocks,
        reference=_e8m0,
        mistakes=[
            (_no_bias, "that is shared_exp itself: E8M0 stores 127 + shared_exp"),
            (_no_emax, "emax_elem is missing: subtract the element's largest exponent"),
            (
                _ceil_rounding,
                "that is the scale that clips nothing (⌈log₂(max|x| / max_elem)⌉): the spec "
                "takes ⌊log₂ max|x|⌋ − emax_elem",
            ),
        ],
        hint="""amax = float(block.abs().max()); if amax == 0: return 0; shared =
        math.floor(math.log2(amax)) - emax_elem (math.frexp(amax)[1] - 1 is ⌊log₂⌋ exactly);
        return 127 + max(-127, min(127, shared)).""",
        passed="agrees with qlearn.mx.mx_quantize on {n} blocks",
    ),
    Spec(
        signature="quantize_mxfp4(x)",
        title="Write a GGUF MXFP4 block",
        doc="""→ the 17 bytes of llama.cpp's MXFP4 block of 32 float32 values ``x``: e =
        ⌊log₂ max|x|⌋ − 2 + 127 clipped to [0, 255] (0 for a block of zeros), d = 2^(e − 128);
        each code q is the index (0–15) of ``kvalues_mxfp4`` = [0, 1, 2, 3, 4, 6, 8, 12, 0, −1,
        −2, −3, −4, −6, −8, −12] whose kvalue · d is nearest to x, the *first* such index on a
        tie; byte 0 is e, byte 1 + j holds q[j] in its low nibble and q[j + 16] in its high one.
        Reference: ``qlearn.gguf.quantize(x, "MXFP4")`` (ggml's ``quantize_row_mxfp4_ref``),
        byte for byte.""",
        inputs=_mxfp4_blocks,
        reference=_mxfp4,
        compare=_compare_mxfp4,
        mistakes=[
            (
                _neighbours,
                "codes 2j and 2j + 1 share a byte: GGUF puts codes j and j + 16 there",
            ),
            (
                _ties_to_even,
                "ties go to the even code, as the OCP spec rounds: ggml takes the first index, "
                "the smaller magnitude",
            ),
        ],
        hint="""kv = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]);
        amax = np.abs(x).max(); e = 0 if amax == 0 else int(np.clip(np.floor(np.log2(amax)) - 2
        + 127, 0, 255)); d = 2.0 ** (e - 128); q = np.abs(kv[None, :] * d - x[:, None]).argmin(1)
        (argmin takes the first on a tie); return np.concatenate([[e], q[:16] | (q[16:] << 4)])
        .astype(np.uint8).""",
        passed="gives qlearn.gguf.quantize's MXFP4 bytes on {n} blocks",
    ),
    Spec(
        signature="kmeans_step(values, centroids)",
        title="One step of k-means",
        doc="""→ the k centroids [k] after one step of Lloyd's algorithm on ``values`` [n]
        (float64) from ``centroids`` [k]: assign every value to its nearest centroid, then move
        each centroid to the mean of the values assigned to it (the inputs leave none empty).
        Keep the centroids in their given order. Reference: ``qlearn.codebook.kmeans(values,
        k, init=centroids, max_iter=1).centroids`` (Lloyd 1982; scikit-learn's
        ``KMeans(init=centroids, max_iter=1)``), within 10⁻⁹ relative.""",
        inputs=_kmeans_sets,
        reference=_kmeans_step,
        compare=_compare_centroids,
        mistakes=[
            (_sorted_centroids, "sorted: keep the centroids in their given order"),
            (_signed_distance, "the nearest centroid is the one of smallest |x − c|, not x − c"),
        ],
        hint="""labels = (values[:, None] - centroids[None, :]).abs().argmin(dim=1); return
        torch.stack([values[labels == j].mean() for j in range(len(centroids))]).""",
        passed="agrees with qlearn.codebook.kmeans on {n} sets",
    ),
    Spec(
        signature="layer_imatrix(X)",
        title="The importance matrix of a layer",
        doc="""→ [in_features]: for each input column j of a linear layer, the mean of x_j² over
        every token of ``X`` [tokens, in_features], what the layer received. This is what
        ``llama-imatrix`` stores per column and ``llama-quantize --imatrix`` hands to the
        quantizers. Reference: ``qlearn.gguf.importance_matrix`` of the course's model on the
        same windows of *Emma*, that layer's entry (llama.cpp's ``tools/imatrix``), within
        10⁻⁴ relative.""",
        inputs=_layer_inputs,
        reference=_importance,
        compare=_compare_importance,
        mistakes=[
            (_summed, "that is the sum over the tokens: divide by their number"),
            (_absolute, "that is the mean |x|: the importance is the mean of x²"),
        ],
        hint="""return (X.double() ** 2).mean(dim=0) — the mean over the tokens (dim 0), one
        value per input column.""",
        passed="agrees with qlearn.gguf.importance_matrix on {n} layers of the course's model",
    ),
]
