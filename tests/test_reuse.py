"""qlearn.reuse: results read back only under the key of everything that decides them."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from qlearn import awq, evaluate, gptq, reuse
from qlearn.data import calibration_windows
from qlearn.models import linear_layers

TEXT = "it is a truth universally acknowledged, that a single man in possession of a good fortune"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QLEARN_CACHE", str(tmp_path))
    return tmp_path / "results"


def test_fingerprint_changes_with_every_bit_dtype_shape_and_class(tiny_llama):
    x = torch.arange(12, dtype=torch.float32)
    assert reuse.fingerprint(x, "a", 1) == reuse.fingerprint(x.clone(), "a", 1)
    flipped = x.clone()
    flipped.view(torch.int32)[5] ^= 1  # one last bit
    keys = {
        reuse.fingerprint(x),
        reuse.fingerprint(flipped),
        reuse.fingerprint(x.double()),
        reuse.fingerprint(x.reshape(3, 4)),
        reuse.fingerprint([x]),
        reuse.fingerprint(1),
        reuse.fingerprint(1.0),
        reuse.fingerprint("1"),
        reuse.fingerprint(True),
        reuse.fingerprint({"a": 1}),
        reuse.fingerprint({"a": 2}),
    }
    assert len(keys) == 11
    model = tiny_llama
    key = reuse.fingerprint(model)
    assert reuse.fingerprint(copy.deepcopy(model)) == key
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-6
    assert reuse.fingerprint(changed) != key
    training = copy.deepcopy(model).train()
    assert reuse.fingerprint(training) != key


def test_fingerprint_refuses_what_it_cannot_hash():
    with pytest.raises(TypeError, match="cannot fingerprint a object"):
        reuse.fingerprint(object())


def test_remember_number_computes_once_per_key(cache, monkeypatch):
    calls = []

    def compute():
        calls.append(1)
        return 2.5

    assert reuse.remember_number("demo", ("a", 1), compute) == 2.5
    assert reuse.remember_number("demo", ("a", 1), compute) == 2.5
    assert len(calls) == 1
    assert reuse.remember_number("demo", ("a", 2), compute) == 2.5  # other parts: computed
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)  # another thread count: computed
        reuse.remember_number("demo", ("a", 1), compute)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # other kernels: computed
    reuse.remember_number("demo", ("a", 1), compute)
    assert len(calls) == 4
    monkeypatch.setenv("QLEARN_CACHE", "off")  # no cache: computed every time
    reuse.remember_number("demo", ("a", 1), compute)
    reuse.remember_number("demo", ("a", 1), compute)
    assert len(calls) == 6


def test_perplexity_reads_back_what_it_measured(cache, tiny_llama, char_tokenizer):
    measured = evaluate.perplexity(tiny_llama, char_tokenizer, TEXT, max_tokens=64, window=32)
    first = evaluate.perplexity(
        tiny_llama, char_tokenizer, TEXT, max_tokens=64, window=32, cache=True
    )
    assert first == measured
    (stored,) = cache.glob("perplexity-*.json")
    stored.write_text(json.dumps({"value": 123.0}))  # what is read back is the stored value
    again = evaluate.perplexity(
        tiny_llama, char_tokenizer, TEXT, max_tokens=64, window=32, cache=True
    )
    assert again == 123.0
    other = evaluate.perplexity(  # other tokens: another key
        tiny_llama, char_tokenizer, TEXT, max_tokens=48, window=32, cache=True
    )
    assert other != 123.0


def test_perplexity_of_a_hooked_or_custom_model_is_always_measured(
    cache, tiny_llama, char_tokenizer
):
    plain = evaluate.perplexity(tiny_llama, char_tokenizer, TEXT, max_tokens=64, cache=True)
    layer = tiny_llama.model.layers[0].self_attn.q_proj
    handle = layer.register_forward_pre_hook(lambda m, args: (args[0].round(),))
    try:
        assert not reuse.plain_model(tiny_llama)
        hooked = evaluate.perplexity(tiny_llama, char_tokenizer, TEXT, max_tokens=64, cache=True)
    finally:
        handle.remove()
    assert hooked != plain
    assert len(list(cache.glob("perplexity-*.json"))) == 1
    layer.forward = lambda x: torch.zeros(*x.shape[:-1], layer.out_features)
    assert not reuse.plain_model(tiny_llama)


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", [gptq, awq], ids=["gptq", "awq"])
def test_quantize_model_with_cache_reads_back_the_same_model_and_report(
    cache, tiny_llama, char_tokenizer, method
):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=4, seqlen=32, seed=0)
    options = {"bits": 3, "group_size": 16, "batch_size": 4}
    fresh, fresh_report = method.quantize_model(tiny_llama, windows, **options)
    first, first_report = method.quantize_model(tiny_llama, windows, cache=True, **options)
    assert _same_model(first, fresh)
    (report_file,) = cache.glob(f"{method.__name__.split('.')[-1]}-*.json")
    stored = json.loads(report_file.read_text())
    stored["seconds"] = -1.0  # what is read back is the stored report
    report_file.write_text(json.dumps(stored))
    again, again_report = method.quantize_model(tiny_llama, windows, cache=True, **options)
    assert _same_model(again, fresh)
    assert again is not tiny_llama and not _same_model(again, tiny_llama)
    assert again_report.seconds == -1.0
    expected = dataclasses.replace(first_report, seconds=-1.0)
    assert again_report == expected
    assert again_report.nbytes() == fresh_report.nbytes()
    other, _ = method.quantize_model(tiny_llama, windows, cache=True, **{**options, "bits": 4})
    assert not _same_model(other, fresh)  # other options: another key


def test_awq_cache_keeps_the_folded_norms(cache, tiny_llama, char_tokenizer):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=4, seqlen=32, seed=0)
    fresh, _ = awq.quantize_model(tiny_llama, windows, bits=3, group_size=16, batch_size=4)
    awq.quantize_model(tiny_llama, windows, bits=3, group_size=16, batch_size=4, cache=True)
    again, _ = awq.quantize_model(
        tiny_llama, windows, bits=3, group_size=16, batch_size=4, cache=True
    )
    norm = "model.layers.0.input_layernorm.weight"
    assert not torch.equal(fresh.state_dict()[norm], tiny_llama.state_dict()[norm])
    assert torch.equal(again.state_dict()[norm], fresh.state_dict()[norm])


def test_quantize_model_from_text_keys_by_the_tokenizer(cache, tiny_llama, char_tokenizer):
    options = {"bits": 3, "nsamples": 4, "seqlen": 24, "batch_size": 4}
    fresh, _ = gptq.quantize_model(tiny_llama, TEXT * 4, char_tokenizer, **options)
    cached, _ = gptq.quantize_model(tiny_llama, TEXT * 4, char_tokenizer, cache=True, **options)
    assert _same_model(cached, fresh)
    assert len(list(cache.glob("gptq-*.safetensors"))) == 1
    for (_, a), (_, b) in zip(linear_layers(cached), linear_layers(fresh), strict=True):
        assert torch.equal(a.weight, b.weight)


def test_an_option_at_its_default_and_the_option_left_out_share_one_key(
    cache, tiny_llama, char_tokenizer
):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=4, seqlen=32, seed=0)
    plain = {"bits": 3, "group_size": 16, "batch_size": 4}
    gptq.quantize_model(tiny_llama, windows, cache=True, **plain)
    spelled_out = {**plain, "act_order": False, "static_groups": False, "progress": False}
    gptq.quantize_model(tiny_llama, windows, cache=True, **spelled_out)
    assert len(list(cache.glob("gptq-*.safetensors"))) == 1
    gptq.quantize_model(tiny_llama, windows, cache=True, **{**plain, "act_order": True})
    assert len(list(cache.glob("gptq-*.safetensors"))) == 2
    with pytest.raises(TypeError):
        gptq.quantize_model(tiny_llama, windows, cache=True, bitz=3)


def test_only_the_newest_models_are_kept(cache, tiny_llama, char_tokenizer):
    windows = calibration_windows(char_tokenizer, TEXT * 4, n_samples=4, seqlen=32, seed=0)
    for seed in range(reuse.MAX_STORED_MODELS + 2):
        torch.manual_seed(seed)
        model = copy.deepcopy(tiny_llama)
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight.mul_(1 + seed / 10)
        gptq.quantize_model(model, windows, bits=3, batch_size=4, cache=True)
    assert len(list(cache.glob("gptq-*.safetensors"))) == reuse.MAX_STORED_MODELS
    assert len(list(cache.glob("gptq-*.json"))) == reuse.MAX_STORED_MODELS


def test_cache_argument_is_checked(tiny_llama, char_tokenizer):
    with pytest.raises(TypeError, match="cache"):
        evaluate.perplexity(tiny_llama, char_tokenizer, TEXT, cache="yes")
    with pytest.raises(TypeError, match="cache"):
        gptq.quantize_model(tiny_llama, TEXT, char_tokenizer, cache=1)
