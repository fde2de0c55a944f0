"""Chapter 13's exercises: the capstone, every method in one table, and its design task.
Taught in notebooks/13_capstone.ipynb."""

from __future__ import annotations

import copy
import math
import operator
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn

from qlearn import affine, awq, bitnet, evaluate, gguf, gptq, models, nf4
from qlearn._checks import check_int
from qlearn.data import calibration_windows, load_text
from qlearn.exercises import _course
from qlearn.exercises._compare import show
from qlearn.exercises._runner import Case, Draw, Spec

Table = dict[str, tuple[float, float]]

_METHODS: Final = {
    "FP32": 32.0,
    "FP16": 16.0,
    "INT8 absmax": 8.06,
    "INT8 zero-point": 8.1,
    "LLM.int8": 8.6,
    "GPTQ 4-bit": 4.2,
    "GPTQ 3-bit": 3.2,
    "AWQ 4-bit": 4.25,
    "NF4": 4.13,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q4_K_M": 4.9,
    "Q4_0": 4.5,
    "Q3_K": 3.44,
    "Q2_K": 2.63,
    "BitNet b1.58": 1.7,
}
"""Method labels and roughly what they cost in bits per weight, for made-up result tables."""


def _every_format(draw: Draw) -> list[Case]:
    """Weights [rows, 256 · k] in every format."""
    cases = []
    for fmt in ("F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "NF4", "NF4+DQ"):
        rows, columns = draw.py.choice((1, 2, 4, 6)), 256 * draw.py.randint(1, 3)
        cases.append(Case((torch.randn(rows, columns, generator=draw.torch) * 0.02, fmt), fmt))
    return cases


def _stored_bits(w: torch.Tensor, fmt: str) -> float:
    if fmt.startswith("NF4"):
        return nf4.nf4_quantize(w, blocksize=64, double_quant=fmt == "NF4+DQ").bits_per_weight()
    return 8 * gguf.quantize(w.numpy(), fmt).nbytes / w.numel()


def _table(rng: random.Random, n: int) -> Table:
    """n of :data:`_METHODS`, made-up (bits, perplexity): the perplexity grows as bits fall."""
    results = {}
    for label in rng.sample(list(_METHODS), n):
        bits = _METHODS[label]
        if bits < 16:
            bits = round(bits + rng.uniform(-0.1, 0.1), 3)
        noise = 1 + rng.uniform(0, 0.4) if bits < 16 else 1 + rng.uniform(0, 0.002)
        results[label] = (bits, round(20.3 * (1 + 40 * 2.0 ** (-1.4 * bits)) * noise, 2))
    return results


def _case(args: tuple, note: str) -> Case:
    table = ", ".join(f"{k!r}: ({b}, {p})" for k, (b, p) in args[0].items())
    return Case(args, note, shown={"results": "{" + table + "}"})


def _budgets(draw: Draw) -> list[Case]:
    """Random tables of a dozen methods, a budget met exactly by the best method, and a budget
    nothing fits."""
    rng, cases = draw.py, []
    for kind in ("random", "exact", "random", "none"):
        results = _table(rng, 12)
        if kind == "exact":
            best = min(results, key=lambda k: results[k][1] if results[k][0] < 16 else math.inf)
            budget, note = results[best][0], "the best method takes exactly max_bits"
        elif kind == "none":
            budget, note = round(min(b for b, _ in results.values()) - 0.5, 3), "nothing fits"
        else:
            budget, note = round(rng.uniform(3.0, 9.0), 3), ""
        cases.append(_case((results, budget), note))
    return cases


def _best_under(results: Table, max_bits: float, fits: Any = operator.le) -> str | None:
    fitting = [k for k, (b, _) in results.items() if fits(b, max_bits)]
    return min(fitting, key=lambda k: results[k][1]) if fitting else None


def _compare_best(got: Any, expected: str | None, case: Case) -> str | None:
    results, max_bits = case.args
    if expected is None:
        return None if got is None else f"nothing takes ≤ {max_bits} bits; expected None"
    if got is None:
        return f"{expected!r} takes {results[expected][0]} ≤ {max_bits} bits"
    if not isinstance(got, str) or got not in results:
        return f"expected one of the labels of results, got {show(got)}"
    bits, ppl = results[got]
    if bits > max_bits:
        return f"{got!r} takes {bits} bits, more than max_bits = {max_bits}"
    if ppl > results[expected][1]:
        return f"{got!r} has perplexity {ppl}; {expected!r} has {results[expected][1]}"
    return None


def _tables(draw: Draw) -> list[Case]:
    """Random tables of 6 to 16 methods, one with two methods at the same bits per weight."""
    cases = []
    for n, tie in [(6, False), (12, True), (16, False), (10, True)]:
        results = _table(draw.py, n)
        if tie:  # a second method at the bits of the best 4-ish-bit one, with a worse perplexity
            label = min(results, key=lambda k: abs(results[k][0] - 4.5))
            bits, ppl = results[label]
            results[f"{label} (variant)"] = (bits, round(ppl * 1.1, 2))
        cases.append(_case((results,), "two methods at the same bits" if tie else ""))
    return cases


def _beaten_by(results: Table, a: str) -> str | None:  # no more bits, no higher perplexity
    ba, pa = results[a]
    beats = (
        k for k, (b, p) in results.items() if k != a and b <= ba and p <= pa and (b, p) != (ba, pa)
    )
    return next(beats, None)


def _compare_front(got: Any, expected: list[str], case: Case) -> str | None:
    (results,) = case.args
    if isinstance(got, (str, dict)) or not isinstance(got, (list, tuple)):
        return f"expected a list of labels, got {show(got)}"
    unknown = [k for k in got if k not in results]
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if unknown:
        return f"{unknown[0]!r} is not a label of results"
    if missing:
        return f"{missing[0]!r} {results[missing[0]]} is on the front: nothing beats it"
    if extra:
        by = _beaten_by(results, extra[0])
        return f"{extra[0]!r} {results[extra[0]]} is beaten by {by!r} {results[by]}"
    if len(got) != len(expected):
        return "a label appears twice"
    if [results[k][0] for k in got] != sorted(results[k][0] for k in got):
        return "the labels are not in order of increasing bits per weight"
    return None


# --------------------------------------------------------------------------------------------
# The design task: beat Q4_K_M at 4.5 bits per weight, counted from the bytes
# --------------------------------------------------------------------------------------------

DESIGN_MAX_BITS: Final = 4.5
"""The design task's budget: bits per decoder weight, from the bytes the stored tensors hold."""
DESIGN_EVAL_TOKENS: Final = 2048  # the capstone's evaluation: its table's perplexities
STORED_FORMATS: Final = (
    gguf.GGUFTensor,
    gptq.QuantizedWeight,
    awq.GroupQuantized,
    nf4.Quantized4bit,
    affine.QuantizedTensor,
    bitnet.BitNetQuantized,
)
"""The classes the design check counts bytes from: every stored weight of the course."""


@dataclass(frozen=True)
class DesignTarget:
    """What a design must do: at most ``max_bits`` bits per weight and a perplexity below
    Q4_K_M's (``q4_k_m_perplexity``, at ``q4_k_m_bits`` bits per weight)."""

    max_bits: float
    q4_k_m_bits: float
    q4_k_m_perplexity: float

    def __repr__(self) -> str:
        return (
            f"≤ {self.max_bits} bits per weight, perplexity < {self.q4_k_m_perplexity:.3f} "
            f"(Q4_K_M's, at {self.q4_k_m_bits:.3f} bits)"
        )


@dataclass(frozen=True)
class DesignResult:
    """What a design measured: bits per decoder weight from its stored bytes, and perplexity
    on the capstone's 2048 tokens of *Pride and Prejudice*."""

    bits_per_weight: float
    perplexity: float

    def __repr__(self) -> str:
        return f"{self.bits_per_weight:.4f} bits per weight, perplexity {self.perplexity:.3f}"


def _design_inputs(draw: Draw) -> list[Case]:
    """The course's model (SmolLM2-135M-Instruct, whose weights are a Q4_1 reconstruction) and
    8 calibration windows of 128 tokens of *Emma*, drawn from the seed (the capstone's
    calibration at seed 0); the perplexity is measured on the capstone's 2048 tokens of
    *Pride and Prejudice*, which the calibration never sees."""
    model, tokenizer = _course.course_model()
    emma = load_text("emma")
    windows = calibration_windows(tokenizer, emma, n_samples=8, seqlen=128, seed=draw.seed)
    shown = {
        "model": "the course's model, SmolLM2-135M-Instruct (its weights a Q4_1 reconstruction)",
        "calibration": f"8 windows of 128 tokens of Emma, seed {draw.seed}",
    }
    return [Case((model, windows), f"calibration seed {draw.seed}", shown=shown)]


def _with_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """``model`` with its decoder linear weights set to ``weights``, in place."""
    for name, layer in models.linear_layers(model):
        original = models.get_weight(layer)
        models.set_weight_(layer, weights[name].reshape(original.shape).to(original.dtype))
    return model


def _perplexity(model: nn.Module) -> float:
    _, tokenizer = _course.course_model()
    text = load_text("pride_and_prejudice")
    return evaluate.perplexity(model, tokenizer, text, max_tokens=DESIGN_EVAL_TOKENS, cache=True)


def _q4_k_m_target(model: nn.Module, calibration: torch.Tensor) -> DesignTarget:
    """Q4_K_M (chapter 06's recipe) on the same model, measured as the capstone measures it."""
    tensors = gguf.quantize_tensors(model, "Q4_K_M")
    n_weights = sum(math.prod(t.shape) for t in tensors.values())
    bits = 8 * sum(t.nbytes() for t in tensors.values()) / n_weights
    stored = {name: t.dequantize() for name, t in tensors.items()}
    return DesignTarget(
        DESIGN_MAX_BITS, bits, _perplexity(_with_weights(copy.deepcopy(model), stored))
    )


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _unchanged_outside(model: nn.Module, original: nn.Module) -> str | None:
    """What the design changed besides decoder linear weights and norms (AWQ folds its scales
    into the norms), or None."""
    linear = {id(models.get_weight(layer)) for _, layer in models.linear_layers(model)}
    norms = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    ours, theirs = dict(model.named_parameters()), dict(original.named_parameters())
    if ours.keys() != theirs.keys() or [type(m) for m in model.modules()] != [
        type(m) for m in original.modules()
    ]:
        return "the model's modules were replaced: return stored weights, keep the model's layers"
    for name, value in ours.items():
        if id(value) in linear or id(value) in norms:
            continue
        if value.shape != theirs[name].shape or not torch.equal(value, theirs[name]):
            return f"{name} changed: only decoder linear weights (and norms) are the design's"
    return None


def _measure_design(answer: Any, model: nn.Module, calibration: torch.Tensor) -> Any:
    """Run the design on a copy of the model; return its DesignResult, or what is wrong."""
    ours = copy.deepcopy(model)
    stored = answer(ours, calibration.clone())
    names = [name for name, _ in models.linear_layers(model)]
    if not isinstance(stored, Mapping):
        return f"expected a dict {{layer name: stored weight}}, got {show(stored)}"
    missing = [n for n in names if n not in stored]
    extra = [k for k in stored if k not in names]
    if missing or extra:
        first = missing[0] if missing else extra[0]
        return (
            f"the keys must be the {len(names)} names of models.linear_layers(model): "
            f"{len(missing)} missing, {len(extra)} not among them (first: {first!r})"
        )
    weights, nbytes, n_weights = {}, 0.0, 0
    for name, layer in models.linear_layers(model):
        value, size = stored[name], models.get_weight(layer).numel()
        if not isinstance(value, STORED_FORMATS):
            kinds = ", ".join(k.__name__ for k in STORED_FORMATS)
            return f"{name}: a {type(value).__name__}; the check counts bytes only of {kinds}"
        weights[name] = value.dequantize().detach().float()
        if weights[name].numel() != size or not torch.isfinite(weights[name]).all():
            return f"{name}: its values are not {size} finite numbers"
        nbytes, n_weights = nbytes + float(value.nbytes()), n_weights + size
    if problem := _unchanged_outside(ours, model):
        return problem
    return DesignResult(8 * nbytes / n_weights, _perplexity(_with_weights(ours, weights)))


def measure_design(design: Any, *, seed: int = 0) -> DesignResult:
    """Run ``design(model, calibration)`` exactly as :func:`check_design` does and return what
    it measured: bits per weight from the stored bytes and the perplexity. Raises ValueError
    saying what is wrong with a design the check would refuse. ``seed`` draws the calibration
    windows. Taught in notebooks/13_capstone.ipynb (the answer to the design task)."""
    if not callable(design):
        raise TypeError(f"design: expected a function, got {show(design)}")
    (case,) = _design_inputs(Draw(check_int(seed, "seed", minimum=0)))
    result = _measure_design(design, *case.args)
    if isinstance(result, str):
        raise ValueError(f"design: {result}")
    return result


def _compare_design(got: Any, expected: DesignTarget, case: Case) -> str | None:
    if isinstance(got, str):
        return got
    if got.bits_per_weight > expected.max_bits:
        return f"{got.bits_per_weight:.4f} bits per weight: over the budget of {expected.max_bits}"
    if got.perplexity >= expected.q4_k_m_perplexity:
        return (
            f"perplexity {got.perplexity:.3f}: not below Q4_K_M's {expected.q4_k_m_perplexity:.3f}"
        )
    return None


SPECS = [
    Spec(
        signature="bits_from_bytes(w, fmt)",
        title="Bits per weight from the bytes",
        doc="""→ the bits per weight of ``w`` stored in ``fmt``, measured from the bytes qlearn
        writes: a GGUF type ("F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K": ``qlearn.gguf.quantize``),
        "NF4" or "NF4+DQ" (``qlearn.nf4.nf4_quantize``, blocks of 64, without and with double
        quantization). Reference: 8 · bytes / weights of those very calls
        (``Quantized4bit.bits_per_weight`` for NF4), within 10⁻⁹ relative.""",
        inputs=_every_format,
        reference=_stored_bits,
        rtol=1e-9,
        mistakes=[
            (
                lambda got, expected, case: float(got) == round(float(got)),
                "a whole number of bits: the scales stored beside the codes are missing",
            )
        ],
        hint="""measure, don't recall: 8 * gguf.quantize(w.numpy(), fmt).nbytes / w.numel() counts
        the scales too (Q4_K is 4.5, not 4); for NF4, nf4.nf4_quantize(w, blocksize=64,
        double_quant=...).bits_per_weight().""",
        passed="agrees with the bytes of qlearn.gguf and qlearn.nf4 in {n} formats",
    ),
    Spec(
        signature="best_under_budget(results, max_bits)",
        title="The best method within a budget",
        doc="""→ the label of the method with the lowest perplexity among those that take at most
        ``max_bits`` bits per weight, or None if none fits; ``results`` maps a label to (bits
        per weight, perplexity). Reference: a plain search over the table (any label with the
        lowest perplexity is right).""",
        inputs=_budgets,
        reference=_best_under,
        compare=_compare_best,
        mistakes=[
            (
                lambda got, expected, case: got == _best_under(*case.args, fits=operator.lt),
                "a method exactly at the budget fits: compare with <=, not <",
            )
        ],
        hint="""keep the methods with bits <= max_bits (a method exactly at the budget fits), then
        take the one with the smallest perplexity; return None when none is left.""",
        passed="finds the best method within budget in {n} tables",
    ),
    Spec(
        signature="pareto_front(results)",
        title="The Pareto front",
        doc="""→ the labels of the methods that no other method beats on both counts, in order of
        increasing bits per weight; ``results`` maps a label to (bits per weight, perplexity),
        and B beats A if B takes no more bits, has no higher perplexity, and is better in one.
        Reference: every pair compared (Pareto optimality), exactly.""",
        inputs=_tables,
        reference=lambda results: sorted(
            (k for k in results if _beaten_by(results, k) is None), key=lambda k: results[k]
        ),
        compare=_compare_front,
        hint="""sort the labels by (bits, perplexity); walk through them and keep a label when its
        perplexity is lower than every one kept so far.""",
        passed="finds the Pareto front of {n} tables",
    ),
    Spec(
        signature="design(model, calibration)",
        title="Design task: beat Q4_K_M in 4.5 bits per weight",
        doc="""→ ``{layer name: stored weight}`` for every decoder linear layer of ``model`` (the
        names of ``qlearn.models.linear_layers``), each stored by a method of the course: a
        ``GGUFTensor``, ``gptq.QuantizedWeight``, ``awq.GroupQuantized``, ``nf4.Quantized4bit``,
        ``affine.QuantizedTensor`` or ``bitnet.BitNetQuantized``, holding as many values as the
        layer's weight (read row by row). ``calibration``: [8, 128] tokens of *Emma* for methods
        that calibrate. The design may change ``model``'s norms (AWQ folds into them), nothing
        else. Reference: the check counts 8 · Σ ``nbytes()`` over the decoder's weights, puts
        the stored values into the model and measures its perplexity on the capstone's 2048
        tokens of *Pride and Prejudice*; it must take at most 4.5 bits per weight and beat
        Q4_K_M (``gguf.quantize_tensors(model, "Q4_K_M")``, measured the same way).""",
        inputs=_design_inputs,
        reference=_q4_k_m_target,
        compare=_compare_design,
        call=_measure_design,
        mistakes=[
            (
                lambda got, expected, case: abs(got.bits_per_weight - expected.q4_k_m_bits) < 1e-9,
                "that is Q4_K_M's own size: its fallback types for rows of 576 cost the extra bit",
            ),
        ],
        hint="""look at where Q4_K_M's bits go (section 6 prints each type's share): most of its
        weights are not in a k-quant at all. Which rule puts them elsewhere, and could the same
        bytes be laid out so that it does not apply? Section 9's front shows what each bit buys.""",
        passed="stores the decoder in at most 4.5 bits per weight and beats Q4_K_M's perplexity",
        points=3,
    ),
]
