"""qlearn.exercises: every check accepts right answers written independently of qlearn (numpy,
ml_dtypes, gguf-py, PyTorch's fake quantizer, plain loops), rejects typical wrong ones with a
message that names the input, what was expected and what came back, reports stubs as "not
implemented yet", and prints the same thing on every run.

The notebooks' own solutions are run against the checks in tests/test_labs.py.
"""

from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from qlearn import calibration, exercises, floats
from qlearn.exercises import EXERCISES, ExerciseFailed

# --------------------------------------------------------------------------------------------
# Right answers, each written without qlearn
# --------------------------------------------------------------------------------------------


def memory_gb(n_params, bits):
    return math.ceil(n_params * bits / 8) / 1e9


def decode_fp16(code):
    return float(np.array([code], dtype=np.uint16).view(np.float16)[0])


def format_limits(exponent_bits, mantissa_bits):
    # Brute force: the largest finite code is the one just below the all-ones exponent.
    bias = 2 ** (exponent_bits - 1) - 1
    values = [
        (1 + m / 2**mantissa_bits) * 2.0 ** (e - bias)
        for e in range(1, 2**exponent_bits - 1)
        for m in (0, 2**mantissa_bits - 1)
    ]
    return max(values), min(values) / 2**mantissa_bits  # smallest normal / 2^M


def round_to_bf16(x):
    return torch.from_numpy(x.numpy().astype(ml_dtypes.bfloat16).astype(np.float32))


def dequantize(codes, scale, zero_point):
    values = (codes.numpy().astype(np.float64) - zero_point.numpy()) * scale.numpy()
    return torch.from_numpy(values.astype(np.float32))


def absmax_codes(x, bits):
    a = x.numpy().astype(np.float64)
    return torch.from_numpy(np.round(a / (np.abs(a).max() / (2 ** (bits - 1) - 1))))


def zeropoint_quantize(x, bits):
    a = x.numpy()
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
    scale = np.float32((hi - lo) / (qmax - qmin))
    zero_point = qmin - int(np.round(lo / scale))
    return np.clip(np.round(a / scale) + zero_point, qmin, qmax), scale, zero_point


def group_absmax(w, bits, group_size):
    qmax = 2 ** (bits - 1) - 1
    out = []
    for row in w.tolist():
        new_row = []
        for start in range(0, len(row), group_size):
            group = row[start : start + group_size]
            scale = max(abs(v) for v in group) / qmax
            new_row += [round(v / scale) * scale for v in group]
        out.append(new_row)
    return torch.tensor(out)


def bits_per_weight(bits, group_size, zero_point):
    n = group_size * 10
    return (n * bits + 10 * 16 + (10 * bits if zero_point else 0)) / n


def clipped_absmax(x, clip, bits):
    qmax = 2 ** (bits - 1) - 1
    a = np.clip(x.numpy().astype(np.float64), -clip, clip)
    return torch.from_numpy(np.round(a / (clip / qmax)) * (clip / qmax))


class RangeObserver:
    def __init__(self):
        self.batches = []

    def observe(self, x):
        self.batches.append(x.numpy().ravel())

    def range(self):
        everything = np.concatenate(self.batches)
        return float(everything.min()), float(everything.max())


def best_clip(x, bits, candidates):
    a = x.numpy().astype(np.float64)
    errors = [float(((a - clipped_absmax(x, c, bits).numpy()) ** 2).sum()) for c in candidates]
    return candidates[int(np.argmin(errors))]


def outlier_columns(X, threshold):
    return [j for j in range(X.shape[1]) if any(abs(v) >= threshold for v in X[:, j].tolist())]


def vectorwise_quantize(X):
    a = X.numpy()
    absmax = np.abs(a).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.nan_to_num(np.round(a * 127 / absmax[:, None]))
    return torch.from_numpy(codes), torch.from_numpy(absmax)


def int8_matmul(X, W):
    (Xq, cx), (Wq, cw) = vectorwise_quantize(X), vectorwise_quantize(W)
    product = Xq.numpy().astype(np.int64) @ Wq.numpy().astype(np.int64).T
    return torch.from_numpy(product * cx.numpy()[:, None] * cw.numpy()[None, :] / 127**2)


def llm_int8_matmul(X, W, threshold):
    a = X.numpy()
    outlier = np.abs(a) >= threshold
    columns = outlier.any(axis=0)
    Xq, cx = vectorwise_quantize(torch.from_numpy(np.where(outlier, 0, a)))
    Xq = Xq.numpy().astype(np.int64)
    Xq[:, columns] = 0
    Wq, cw = vectorwise_quantize(W)
    Wq = Wq.numpy().astype(np.int64)
    cx, cw = cx.numpy(), cw.numpy()
    result = (Xq @ Wq.T) * cx[:, None] * cw[None, :] / 127**2
    result += a[:, columns] @ (Wq[:, columns] * cw[:, None] / 127).T
    return torch.from_numpy(result)


def layer_hessian(X):
    a = X.reshape(-1, X.shape[-1]).numpy().astype(np.float64)
    return torch.from_numpy(2 * a.T @ a / a.shape[0])


def layer_error(W, W_hat, H):
    d = (W.double() - W_hat.double()).numpy()
    return sum(0.5 * row @ H.double().numpy() @ row for row in d)


def gptq_step(W, Hinv, scale, zero, bits):
    W, Hi = W.numpy().copy(), Hinv.numpy()
    for r in range(W.shape[0]):
        s, z = float(scale[r]), float(zero[r])
        w_hat = s * (min(max(np.round(W[r, 0] / s) + z, 0), 2**bits - 1) - z)
        W[r, 1:] -= (W[r, 0] - w_hat) / Hi[0, 0] * Hi[0, 1:]
        W[r, 0] = w_hat
    return torch.from_numpy(W)


def gptq_layer(W, H, bits):
    # Every row alone, with its own min/max grid and the eliminations of eq. 3 (Frantar et al.).
    out = []
    for row in W.numpy():
        lo, hi = min(row.min(), 0.0), max(row.max(), 0.0)
        scale = (hi - lo) / (2**bits - 1)
        zero = np.round(-lo / scale)
        w, Hinv, done = row.copy(), np.linalg.inv(H.numpy()), []
        for _ in range(len(row)):
            q = scale * (np.clip(np.round(w[0] / scale) + zero, 0, 2**bits - 1) - zero)
            w = w[1:] - (w[0] - q) / Hinv[0, 0] * Hinv[0, 1:]
            Hinv = Hinv[1:, 1:] - np.outer(Hinv[1:, 0], Hinv[0, 1:]) / Hinv[0, 0]
            done.append(q)
        out.append(done)
    return torch.tensor(out, dtype=torch.float64)


def dequantize_q8_0(raw):
    return gguf_quants.dequantize(raw[None], GGMLQuantizationType.Q8_0)[0]


def quantize_q8_0(x):
    return gguf_quants.quantize(x[None], GGMLQuantizationType.Q8_0)[0]


def quantize_q4_0(x):
    return gguf_quants.quantize(x[None], GGMLQuantizationType.Q4_0)[0]


def quantize_q4_1(x):
    return gguf_quants.quantize(x[None], GGMLQuantizationType.Q4_1)[0]


def fake_quantize_ste(x, bits, scale):  # PyTorch's own fake quantizer, STE included
    return torch.fake_quantize_per_tensor_affine(
        x, scale, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    )


def absmean_ternary(w):
    a = w.numpy().astype(np.float64)
    gamma = np.abs(a).mean()
    return torch.from_numpy(np.clip(np.round(a / gamma), -1, 1)), gamma


def pack_trits(codes):
    n = len(codes)
    m = -(-n // 5)
    values = codes.tolist()
    return torch.tensor(
        [
            sum((values[j + k * m] + 1 if j + k * m < n else 0) * 3**k for k in range(5))
            for j in range(m)
        ],
        dtype=torch.uint8,
    )


def ternary_matmul(x_codes, w_codes):
    return x_codes.long() @ w_codes.long().T


NF4_TABLE = [  # QLoRA, appendix E
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


def nf4_codes(x):
    scaled = x.numpy() / np.abs(x.numpy()).max()
    return torch.from_numpy(np.abs(scaled[:, None] - np.array(NF4_TABLE)[None, :]).argmin(1))


def nf4_bits_per_weight(n, blocksize, double_quant):
    blocks = n // blocksize
    constants = blocks + 4 * math.ceil(blocks / 256) + 4 if double_quant else 4 * blocks
    return 8 * (n / 2 + constants) / n


def awq_scales(x_mean, alpha):
    s = np.maximum(x_mean.numpy().astype(np.float64) ** alpha, 1e-4)
    return torch.from_numpy(s / np.sqrt(s.max() * s.min()))


def _group_rtn(w, bits, group_size):  # the AWQ authors' min/max quantizer, per group
    g = w.reshape(w.shape[0], -1, group_size)
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    scale = np.maximum(hi - lo, 1e-5) / (2**bits - 1)
    zero = np.clip(-np.round(lo / scale), 0, 2**bits - 1)
    q = np.clip(np.round(g / scale) + zero, 0, 2**bits - 1)
    return ((q - zero) * scale).reshape(w.shape)


def best_alpha(W, X, alphas, bits, group_size):
    w, x = W.numpy().astype(np.float64), X.numpy().astype(np.float64)
    errors = []
    for alpha in alphas:
        s = awq_scales(torch.from_numpy(np.abs(x).mean(0)), alpha).numpy()
        w_hat = _group_rtn(w * s, bits, group_size) / s
        errors.append(((x @ w_hat.T - x @ w.T) ** 2).mean())
    return alphas[int(np.argmin(errors))]


def bits_from_bytes(w, fmt):
    n = w.numel()
    if fmt == "NF4":
        return 4 + 32 / 64
    if fmt == "NF4+DQ":
        return nf4_bits_per_weight(n, 64, True)
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]
    return 8 * type_size / block


def best_under_budget(results, max_bits):
    best = None
    for label, (bits, ppl) in results.items():
        if bits <= max_bits and (best is None or ppl < results[best][1]):
            best = label
    return best


def pareto_front(results):
    front, lowest = [], math.inf
    for label in sorted(results, key=lambda k: results[k]):
        if results[label][1] < lowest:
            front.append(label)
            lowest = results[label][1]
    return front


RIGHT = {
    "memory_gb": memory_gb,
    "decode_fp16": decode_fp16,
    "format_limits": format_limits,
    "round_to_bf16": round_to_bf16,
    "dequantize": dequantize,
    "absmax_codes": absmax_codes,
    "zeropoint_quantize": zeropoint_quantize,
    "group_absmax": group_absmax,
    "bits_per_weight": bits_per_weight,
    "clipped_absmax": clipped_absmax,
    "range_observer": RangeObserver,
    "best_clip": best_clip,
    "outlier_columns": outlier_columns,
    "vectorwise_quantize": vectorwise_quantize,
    "int8_matmul": int8_matmul,
    "llm_int8_matmul": llm_int8_matmul,
    "layer_hessian": layer_hessian,
    "layer_error": layer_error,
    "gptq_step": gptq_step,
    "gptq_layer": gptq_layer,
    "dequantize_q8_0": dequantize_q8_0,
    "quantize_q8_0": quantize_q8_0,
    "quantize_q4_0": quantize_q4_0,
    "quantize_q4_1": quantize_q4_1,
    "fake_quantize_ste": fake_quantize_ste,
    "absmean_ternary": absmean_ternary,
    "pack_trits": pack_trits,
    "ternary_matmul": ternary_matmul,
    "nf4_codes": nf4_codes,
    "nf4_bits_per_weight": nf4_bits_per_weight,
    "awq_scales": awq_scales,
    "best_alpha": best_alpha,
    "bits_from_bytes": bits_from_bytes,
    "best_under_budget": best_under_budget,
    "pareto_front": pareto_front,
}

# --------------------------------------------------------------------------------------------
# Typical mistakes, each of which a check must catch
# --------------------------------------------------------------------------------------------


class LastBatchOnly(RangeObserver):
    def observe(self, x):
        self.batches = [x.numpy().ravel()]


def gptq_rtn(W, bits):  # each row on its grid, nothing moves
    return torch.stack(
        [gptq_layer(row[None], torch.eye(len(row), dtype=row.dtype), bits)[0] for row in W]
    )


def gptq_without_elimination(W, H, bits):  # the rows of the full H⁻¹, never reduced (no eq. 3)
    out = W.clone()
    Hinv = torch.linalg.inv(H)
    for row in range(W.shape[0]):
        w = W[row]
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        s = torch.tensor([(hi - lo) / (2**bits - 1)], dtype=W.dtype)
        z = torch.round(torch.tensor([-lo], dtype=W.dtype) / s)
        r = w.clone()[None]
        for j in range(W.shape[1]):
            r[:, j:] = gptq_step(r[:, j:], Hinv[j:, j:], s, z, bits)
        out[row] = r[0]
    return out


def gptq_step_undivided(W, Hinv, scale, zero, bits):
    Hi = Hinv.clone()
    Hi[0, 0] = 1.0
    return gptq_step(W, Hi, scale, zero, bits)


def pack_trits_consecutive(codes):  # codes 5j … 5j + 4 in byte j, not the five planes
    digits = (codes.long() + 1).tolist()
    digits += [0] * (-len(digits) % 5)
    return torch.tensor(
        [sum(d * 3**k for k, d in enumerate(digits[i : i + 5])) for i in range(0, len(digits), 5)],
        dtype=torch.uint8,
    )


def _q8_0_bytes(x, rounding):
    d = np.abs(x).max() / np.float32(127)
    with np.errstate(all="ignore"):  # a block of zeros: 0 / 0, cast to 0
        q = rounding(x * (np.float32(1) / d)).astype(np.int8)
    return np.concatenate([np.float16(d).reshape(1).view(np.uint8), q.view(np.uint8)])


def _neighbour_nibbles(raw, start):  # codes 2j, 2j + 1 in one byte
    qs = raw[start:]
    codes = np.concatenate([qs & 15, qs >> 4])
    return np.concatenate([raw[:start], (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)])


def best_alpha_by_weight_error(W, X, alphas, bits, group_size):
    w = W.numpy().astype(np.float64)
    errors = []
    for alpha in alphas:
        s = awq_scales(X.abs().mean(0), alpha).numpy()
        errors.append(((_group_rtn(w * s, bits, group_size) / s - w) ** 2).mean())
    return alphas[int(np.argmin(errors))]


WRONG = {
    "memory_gb": [lambda n, b: n * b / 8 / 2**30],  # GiB, not GB
    "decode_fp16": [  # no subnormals: the implicit 1 everywhere
        lambda c: (-1) ** (c >> 15) * 2.0 ** (((c >> 10) & 31) - 15) * (1 + (c & 1023) / 1024)
    ],
    "format_limits": [  # forgets that the all-ones exponent is inf/NaN
        lambda e, m: ((2 - 2.0**-m) * 2.0 ** (2**e - 1 - (2 ** (e - 1) - 1)), 2.0 ** (2 - 2**e - m))
    ],
    "round_to_bf16": [
        lambda x: (x.view(torch.int32) & ~0xFFFF).view(torch.float32),  # truncation
        lambda x: ((x.view(torch.int32) + 0x8000) & ~0xFFFF).view(torch.float32),  # half up
    ],
    "dequantize": [lambda codes, scale, zp: (codes - zp) * scale],  # int8 wraps around
    "absmax_codes": [lambda x, bits: torch.round(x / (x.abs().max() / (2**bits - 1)))],
    "zeropoint_quantize": [  # the range is not stretched to hold 0
        lambda x, bits: (
            torch.round((x - x.min()) / ((x.max() - x.min()) / (2**bits - 1))) - 2 ** (bits - 1),
            float((x.max() - x.min()) / (2**bits - 1)),
            int(-(2 ** (bits - 1)) - torch.round(x.min() / ((x.max() - x.min()) / (2**bits - 1)))),
        )
    ],
    "group_absmax": [  # one scale per row instead of per group
        lambda w, bits, g: (
            torch.round(w / (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)))
            * (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1))
        )
    ],
    "bits_per_weight": [lambda bits, g, zp: bits + 16 / g],  # forgets the zero point
    "clipped_absmax": [  # the scale from max|x|: clipping never happens
        lambda x, c, bits: (
            torch.round(x / (x.abs().max() / (2 ** (bits - 1) - 1)))
            * (x.abs().max() / (2 ** (bits - 1) - 1))
        )
    ],
    "range_observer": [LastBatchOnly],
    "best_clip": [lambda x, bits, candidates: candidates[-1]],  # no clipping
    "outlier_columns": [  # > instead of >=
        lambda X, t: (X.abs() > t).any(0).nonzero().flatten()
    ],
    "vectorwise_quantize": [  # a row of zeros gives NaN
        lambda X: (torch.round(X * 127 / X.abs().amax(1, keepdim=True)), X.abs().amax(1))
    ],
    "int8_matmul": [lambda X, W: X @ W.T],  # no quantization at all
    "llm_int8_matmul": [lambda X, W, t: int8_matmul(X, W)],  # no outlier path
    "layer_hessian": [
        lambda X: X.reshape(-1, X.shape[-1]).T @ X.reshape(-1, X.shape[-1]) / X.shape[0]
    ],
    "layer_error": [lambda W, W_hat, H: float(((W - W_hat) @ H * (W - W_hat)).sum())],  # no ½
    "gptq_step": [
        lambda W, Hinv, s, z, bits: torch.cat(  # round-to-nearest: nothing moves
            [
                s[:, None]
                * (
                    (torch.round(W[:, :1] / s[:, None]) + z[:, None]).clamp(0, 2**bits - 1)
                    - z[:, None]
                ),
                W[:, 1:],
            ],
            1,
        ),
        gptq_step_undivided,  # the error not divided by [H⁻¹]_qq
    ],
    "gptq_layer": [
        lambda W, H, bits: gptq_rtn(W, bits),
        lambda W, H, bits: gptq_without_elimination(W, H, bits),
    ],
    "dequantize_q8_0": [  # the codes read as unsigned
        lambda raw: raw[2:].astype(np.float32) * raw[:2].view(np.float16).astype(np.float32)
    ],
    "quantize_q8_0": [
        lambda x: _q8_0_bytes(x, np.trunc),  # truncation
        lambda x: _q8_0_bytes(x, np.round),  # halves to even
    ],
    "quantize_q4_0": [lambda x: _neighbour_nibbles(quantize_q4_0(x), 2)],
    "quantize_q4_1": [lambda x: _neighbour_nibbles(quantize_q4_1(x), 4)],
    "fake_quantize_ste": [
        lambda x, bits, scale: (
            torch.round(x / scale).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
        ),
        lambda x, bits, scale: x + (fake_quantize_ste(x, bits, scale) - x).detach(),  # no clip mask
    ],
    "absmean_ternary": [  # absmax, not absmean
        lambda w: (torch.clamp(torch.round(w / w.abs().max()), -1, 1), float(w.abs().max()))
    ],
    "pack_trits": [pack_trits_consecutive],
    "ternary_matmul": [lambda x, w: x.long() @ w.abs().long().T],  # −1 added, not subtracted
    "nf4_codes": [lambda x: torch.round((x / x.abs().max() + 1) * 7.5)],  # a uniform grid
    "nf4_bits_per_weight": [  # QLoRA's rounded formula: no offset, no partial block of 256
        lambda n, b, dq: 4 + 8 / b + 32 / (b * 256) if dq else 4 + 32 / b
    ],
    "awq_scales": [
        lambda x_mean, a: x_mean.pow(a) / (x_mean.pow(a).max() * x_mean.pow(a).min()).sqrt(),
        lambda x_mean, a: x_mean.pow(a).clamp(min=1e-4),  # not normalised
    ],
    "best_alpha": [best_alpha_by_weight_error],
    "bits_from_bytes": [
        lambda w, fmt: {"F16": 16, "Q8_0": 8, "Q4_0": 4, "Q4_K": 4, "Q6_K": 6}.get(fmt[:4], 4)
    ],
    "best_under_budget": [
        lambda r, m: min((k for k in r if r[k][0] < m), key=lambda k: r[k][1], default=None)
    ],
    "pareto_front": [
        lambda r: sorted(r, key=lambda k: r[k][0]),  # every method
        lambda r: [k for i, k in enumerate(r) if all(r[k][1] < r[j][1] for j in list(r)[:i])],
    ],
}


def _stub(*args):
    raise NotImplementedError


class StubObserver:
    def __init__(self):
        raise NotImplementedError


@pytest.mark.parametrize("key", list(EXERCISES))
def test_check_accepts_an_independent_right_answer(key, capsys):
    EXERCISES[key].check(RIGHT[key])
    out = capsys.readouterr().out
    assert out.startswith(f"✓ {EXERCISES[key].name} ") and out.count("\n") == 1


@pytest.mark.parametrize("key", list(EXERCISES))
def test_check_rejects_typical_mistakes_saying_input_expected_and_got(key):
    for wrong in WRONG[key]:
        with pytest.raises(ExerciseFailed) as info:
            EXERCISES[key].check(wrong)
        message = str(info.value)
        assert message.startswith(f"✗ {EXERCISES[key].name} gave a wrong answer on input ")
        assert "\n  expected: " in message and "\n  got:      " in message
        assert "\n  hint: " in message
        assert re.search(r"\n    \w+ = ", message), message  # the inputs, by name


@pytest.mark.parametrize("key", list(EXERCISES))
def test_check_reports_a_stub_as_not_implemented_yet(key):
    stub = StubObserver if key == "range_observer" else _stub
    with pytest.raises(ExerciseFailed, match="is not implemented yet") as info:
        EXERCISES[key].check(stub)
    assert type(info.value) is ExerciseFailed and isinstance(info.value, AssertionError)
    assert "raises NotImplementedError" in str(info.value)


def test_an_error_inside_the_answer_is_reported_with_its_input_and_chained():
    def broken(code):
        return 1 / 0

    with pytest.raises(ExerciseFailed, match="raised ZeroDivisionError") as info:
        exercises.check_decode_fp16(broken)
    assert "code = 0x0000" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("answer", [3.0, None, "decode_fp16"])
def test_something_that_is_not_a_function_is_reported(answer):
    with pytest.raises(ExerciseFailed, match="expected a function"):
        exercises.check_decode_fp16(answer)


def test_wrong_return_types_are_described():
    with pytest.raises(ExerciseFailed, match="forget to return"):
        exercises.check_vectorwise_quantize(lambda X: None)
    with pytest.raises(ExerciseFailed, match="expected a tuple of 2 values"):
        exercises.check_vectorwise_quantize(lambda X: X)
    with pytest.raises(ExerciseFailed, match="expected shape"):
        exercises.check_round_to_bf16(lambda x: x[:1])
    with pytest.raises(ExerciseFailed, match="fractional part"):
        exercises.check_absmax_codes(lambda x, bits: x)
    with pytest.raises(ExerciseFailed, match="expected a number"):
        exercises.check_memory_gb(lambda n, b: "280 GB")


def test_an_answer_that_writes_to_its_input_does_not_change_the_next_reference():
    def vandal(x, bits):
        codes = absmax_codes(x, bits)
        x.zero_()
        return codes

    exercises.check_absmax_codes(vandal)


def test_checks_are_deterministic_and_seed_changes_the_inputs(capsys):
    seen = {}

    def spy(seed):
        def record(x):
            seen.setdefault(seed, []).append(x.clone())
            return round_to_bf16(x)

        return record

    for seed in (0, 0, 1):
        exercises.check_round_to_bf16(spy(seed), seed=seed)
    runs = capsys.readouterr().out.splitlines()
    assert runs[0] == runs[1] == runs[2]
    first, second = seen[0][: len(seen[0]) // 2], seen[0][len(seen[0]) // 2 :]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(seen[0][0], seen[1][0])
    with pytest.raises(ValueError, match="seed"):
        exercises.check_round_to_bf16(round_to_bf16, seed=-1)


def test_ties_are_tested_and_round_half_to_even_is_required():
    half_up = WRONG["round_to_bf16"][1]
    with pytest.raises(ExerciseFailed, match="exact ties"):
        exercises.check_round_to_bf16(half_up)


def test_format_limits_reference_agrees_with_ml_dtypes_and_numpy():
    def limits(dtype):
        info = ml_dtypes.finfo(dtype)
        return float(info.max), float(info.smallest_subnormal)

    for (e, m), dtype in [
        ((5, 10), np.float16),
        ((8, 7), ml_dtypes.bfloat16),
        ((5, 2), ml_dtypes.float8_e5m2),
        ((8, 23), np.float32),
    ]:
        assert format_limits(e, m) == limits(dtype)


def test_registry_lists_checks_in_course_order_with_documented_chapters():
    assert len(EXERCISES) == len(set(EXERCISES))
    chapters = [e.chapter for e in EXERCISES.values()]
    assert chapters == sorted(chapters)
    public = {n.removeprefix("check_") for n in exercises.__all__ if n.startswith("check_")}
    assert public == set(EXERCISES)
    for chapter in sorted(set(chapters)):
        listed = exercises.exercises_of(chapter)
        assert 3 <= len(listed) <= 5
        for k, exercise in enumerate(listed, 1):
            doc = exercise.check.__doc__
            assert doc.startswith(f"Chapter {chapter:02d}, exercise {k}: ``{exercise.name}"), doc
            assert "Reference:" in doc


def test_decode_reference_covers_every_kind_of_fp16_code(capsys):
    exercises.check_decode_fp16(decode_fp16)
    kinds = {floats.decode(c, "fp16").kind for c in (0, 1, 0x3C00, 0x7C00, 0x7E00)}
    assert kinds == {"zero", "subnormal", "normal", "inf", "nan"}
    assert "zeros, subnormals, normals, inf and NaN" in capsys.readouterr().out


def test_best_clip_accepts_any_candidate_as_good_as_the_best():
    def close_enough(x, bits, candidates):  # the best candidate, as a float32 round trip
        return float(torch.tensor(best_clip(x, bits, candidates), dtype=torch.float32))

    exercises.check_best_clip(close_enough)
    x = torch.tensor([1.0, -1.0, 0.5])
    e = {
        c: float((x - calibration.clip_quantize(x, -c, c, bits=8).dequantize()).square().sum())
        for c in (1.0, 2.0)
    }
    assert e[1.0] < e[2.0]  # the reference's notion of "best" on a case checkable by hand


def test_jupyter_shows_the_message_and_the_answers_own_frames_not_the_checker():
    def answer(code):
        return code / 0  # the learner's own bug

    with pytest.raises(ExerciseFailed) as info:
        exercises.check_decode_fp16(answer)
    shown = "\n".join(info.value._render_traceback_())  # IPython's protocol
    assert "return code / 0" in shown and "ZeroDivisionError" in shown
    assert "qlearn/exercises.py" not in shown
    assert shown.endswith(str(info.value)) and "ExerciseFailed: ✗ decode_fp16 raised" in shown
    with pytest.raises(ExerciseFailed) as info:
        exercises.check_decode_fp16(lambda code: 0.0)
    assert info.value._render_traceback_() == f"ExerciseFailed: {info.value}".splitlines()
