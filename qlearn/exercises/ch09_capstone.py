"""Chapter 09's exercises: the capstone, every method in one table.
Taught in notebooks/09_capstone.ipynb."""

from __future__ import annotations

import math
import operator
import random
from typing import Any, Final

import torch

from qlearn import gguf, nf4
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
]
