"""qlearn.evaluate: perplexity equals transformers' own loss; greedy generation is argmax."""

from __future__ import annotations

import math

import pytest
import torch

from qlearn import evaluate

TEXT = (
    "it is a truth universally acknowledged, that a single man in possession "
    "of a good fortune, must be in want of a wife.\n"
) * 3


def reference_perplexity(model, tokenizer, text, max_tokens, window):
    """transformers computes the mean NLL itself (labels=...): weight each window by its count."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :max_tokens]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[1], window):
            chunk = ids[:, start : start + window]
            if chunk.shape[1] < 2:
                continue
            nll += model(chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


@pytest.mark.parametrize(("max_tokens", "window"), [(300, 64), (301, 100), (50, 1024)])
def test_perplexity_equals_transformers_loss(tiny_model, char_tokenizer, max_tokens, window):
    ours = evaluate.perplexity(
        tiny_model, char_tokenizer, TEXT, max_tokens=max_tokens, window=window
    )
    ref = reference_perplexity(tiny_model, char_tokenizer, TEXT, max_tokens, window)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_random_model_perplexity_is_near_vocabulary_size(tiny_llama, char_tokenizer):
    ppl = evaluate.perplexity(tiny_llama, char_tokenizer, TEXT, max_tokens=200, window=50)
    assert 0.5 * tiny_llama.config.vocab_size < ppl < 2 * tiny_llama.config.vocab_size


def test_token_windows_cut_without_overlap(char_tokenizer):
    windows = evaluate.token_windows(char_tokenizer, TEXT, max_tokens=201, window=50)
    assert [len(w) for w in windows] == [50, 50, 50, 50]  # the last window of 1 token is dropped
    all_ids = char_tokenizer(TEXT, add_special_tokens=False).input_ids[:200]
    assert torch.cat(windows).tolist() == all_ids


def test_generate_is_greedy_argmax(tiny_model, char_tokenizer):
    prompt = "a single man"
    text = evaluate.generate(tiny_model, char_tokenizer, prompt, max_new_tokens=8)
    ids = char_tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(8):
            next_id = tiny_model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    expected = char_tokenizer.decode(ids[0, -8:], skip_special_tokens=True)
    assert text == expected
    assert text == evaluate.generate(tiny_model, char_tokenizer, prompt, max_new_tokens=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"text": ""}, "text"),
        ({"text": 3}, "text"),
        ({"max_tokens": 1}, "max_tokens"),
        ({"window": 1}, "window"),
        ({"window": 2.5}, "window"),
        ({"text": "a"}, "text"),
    ],
)
def test_perplexity_bad_input(tiny_llama, char_tokenizer, kwargs, match):
    args = {"text": TEXT, **kwargs}
    text = args.pop("text")
    with pytest.raises((ValueError, TypeError), match=match):
        evaluate.perplexity(tiny_llama, char_tokenizer, text, **args)


def test_generate_bad_input(tiny_llama, char_tokenizer):
    with pytest.raises(ValueError, match="prompt"):
        evaluate.generate(tiny_llama, char_tokenizer, "")
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate.generate(tiny_llama, char_tokenizer, "a", max_new_tokens=0)


@pytest.mark.slow
def test_default_model_perplexity_on_pride_and_prejudice(default_model):
    """The evaluation behind the anchors of docs/design.md, on 2048 tokens: checked against
    transformers."""
    from qlearn.data import load_text

    model, tokenizer = default_model
    text = load_text("pride_and_prejudice")
    ours = evaluate.perplexity(model, tokenizer, text, max_tokens=2048, window=1024)
    ref = reference_perplexity(model, tokenizer, text, 2048, 1024)
    assert ours == pytest.approx(ref, rel=1e-4)
    assert 10 < ours < 40  # a working 135M model on Austen, not a broken load (random: ~49k)


@pytest.mark.parametrize("name", ["pride_and_prejudice", "emma"])
@pytest.mark.parametrize("max_tokens", [2, 1000, 2048, 4096, 10**7])
def test_token_windows_of_a_novel_are_its_whole_tokenization_cut(default_model, name, max_tokens):
    """Tokenized from a prefix (much faster), the windows hold exactly the first tokens of the
    whole text as the model's tokenizer cuts it; past the text's end, all of them."""
    from qlearn.data import load_text

    _, tokenizer = default_model
    text = load_text(name)
    whole = tokenizer(text, add_special_tokens=False).input_ids
    windows = evaluate.token_windows(tokenizer, text, max_tokens=max_tokens, window=1024)
    assert torch.cat(windows).tolist() == whole[:max_tokens]


# --- KL divergence (chapter 10) ---------------------------------------------------------------


def _perturbed(model, scale=0.05, seed=1):
    """A copy of ``model`` with noise added to every weight: a stand-in for a quantized model."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return other


def independent_divergence(reference, model, tokenizer, text, max_tokens, window):
    """KL(P_ref ‖ P_q) per token, same-top share, Δp and both perplexities, written out in
    float64 from transformers' logits and its own loss, window by window."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    ids = ids[:max_tokens]
    kl, same, dp, nll_ref, nll_q, count = [], 0, 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window].unsqueeze(0)
            if chunk.shape[1] < 2:
                continue
            lp = torch.log_softmax(reference(chunk).logits[0, :-1].double(), dim=-1)
            lq = torch.log_softmax(model(chunk).logits[0, :-1].double(), dim=-1)
            kl.append((lp.exp() * (lp - lq)).sum(-1))
            same += int((lp.argmax(-1) == lq.argmax(-1)).sum())
            target = chunk[0, 1:]
            rows = torch.arange(len(target))
            dp += float((lq[rows, target].exp() - lp[rows, target].exp()).sum())
            n = chunk.shape[1] - 1
            nll_ref += reference(chunk, labels=chunk).loss.item() * n
            nll_q += model(chunk, labels=chunk).loss.item() * n
            count += n
    values = torch.cat(kl)
    return values, same / count, dp / count, math.exp(nll_q / count), math.exp(nll_ref / count)


@pytest.mark.parametrize(("max_tokens", "window"), [(300, 64), (301, 100), (120, 1024)])
def test_kl_divergence_equals_an_independent_computation(
    tiny_model, char_tokenizer, max_tokens, window
):
    other = _perturbed(tiny_model, scale=0.5)
    ours = evaluate.kl_divergence(
        tiny_model, other, char_tokenizer, TEXT, max_tokens=max_tokens, window=window
    )
    values, same, dp, ppl_q, ppl_ref = independent_divergence(
        tiny_model, other, char_tokenizer, TEXT, max_tokens, window
    )
    assert ours.n_tokens == values.numel()
    # float32 log-softmax: about 1e-7 nats of rounding per token, beside float64 here
    torch.testing.assert_close(ours.values, values, rtol=1e-4, atol=1e-6)
    assert ours.mean == pytest.approx(float(values.mean()), rel=1e-4, abs=1e-7)
    assert ours.median == pytest.approx(float(torch.quantile(values, 0.5)), rel=1e-4, abs=1e-7)
    assert ours.p99 == pytest.approx(float(torch.quantile(values, 0.99)), rel=1e-4, abs=1e-7)
    assert ours.top1_agreement == pytest.approx(same)
    assert ours.delta_p == pytest.approx(dp, rel=1e-4, abs=1e-7)
    # the two perplexities are transformers' own loss, and the ratio is theirs
    assert ours.perplexity == pytest.approx(ppl_q, rel=1e-5)
    assert ours.reference_perplexity == pytest.approx(ppl_ref, rel=1e-5)
    assert ours.perplexity_ratio == pytest.approx(ppl_q / ppl_ref, rel=1e-5)
    assert ours.mean > 1e-3  # the noise is felt


def test_kl_divergence_of_a_model_from_itself_is_zero(tiny_llama, char_tokenizer):
    same = evaluate.kl_divergence(tiny_llama, tiny_llama, char_tokenizer, TEXT, max_tokens=200)
    assert same.mean == pytest.approx(0, abs=1e-6) and same.p99 == pytest.approx(0, abs=1e-6)
    assert same.top1_agreement == 1 and same.delta_p == 0 and same.perplexity_ratio == 1


@pytest.mark.parametrize("scale", [0.02, 0.2])
def test_kl_divergence_is_nonnegative_and_grows_with_the_damage(tiny_llama, char_tokenizer, scale):
    small = evaluate.kl_divergence(
        tiny_llama, _perturbed(tiny_llama, scale), char_tokenizer, TEXT, max_tokens=200
    )
    large = evaluate.kl_divergence(
        tiny_llama, _perturbed(tiny_llama, 2 * scale), char_tokenizer, TEXT, max_tokens=200
    )
    assert float(small.values.min()) >= -1e-6
    assert small.median <= small.p99
    assert small.mean < large.mean


def test_kl_divergence_bad_input(tiny_llama, tiny_gpt2, char_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(TypeError, match="reference"):
        evaluate.kl_divergence("model", tiny_llama, char_tokenizer, TEXT)
    with pytest.raises(TypeError, match="model"):
        evaluate.kl_divergence(tiny_llama, None, char_tokenizer, TEXT)
    bigger = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=tiny_llama.config.vocab_size + 5,
        )
    )
    with pytest.raises(ValueError, match="model: expected the reference's vocabulary"):
        evaluate.kl_divergence(tiny_llama, bigger, char_tokenizer, TEXT)
    with pytest.raises(ValueError, match="tokenizer: expected at most"):
        evaluate.kl_divergence(bigger, bigger, _WiderTokenizer(char_tokenizer, 100), TEXT)
    with pytest.raises(ValueError, match="text"):
        evaluate.kl_divergence(tiny_llama, tiny_gpt2, char_tokenizer, "")


class _WiderTokenizer:
    """The character tokenizer, claiming a vocabulary ``extra`` tokens larger than it has."""

    def __init__(self, tokenizer, extra):
        self.tokenizer, self.extra = tokenizer, extra

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __len__(self):
        return len(self.tokenizer) + self.extra


def test_kl_per_token_equals_the_definition_in_float64():
    g = torch.Generator().manual_seed(3)
    p, q = torch.randn(5, 40, generator=g) * 4, torch.randn(5, 40, generator=g) * 4
    log_p, log_q = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1)
    got = evaluate.kl_per_token(p, q)
    assert got.dtype == torch.float64 and got.shape == (5,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(evaluate.kl_per_token(p, p), torch.zeros(5, dtype=torch.float64))
    assert evaluate.kl_per_token(p[0].bfloat16(), q[0]).shape == ()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, "logits"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), ValueError, "logits"),
        (([0.0, 1.0], torch.zeros(2)), TypeError, "reference_logits"),
        ((torch.zeros(2), torch.zeros(2, dtype=torch.long)), TypeError, "logits"),
        ((torch.tensor([0.0, float("nan")]), torch.zeros(2)), ValueError, "reference_logits"),
    ],
)
def test_kl_per_token_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        evaluate.kl_per_token(*args)


def test_a_kl_baseline_gives_the_figures_of_the_reference_model(tiny_llama, char_tokenizer):
    other = _perturbed(tiny_llama, scale=0.3)
    kwargs = {"max_tokens": 150, "window": 64}
    direct = evaluate.kl_divergence(tiny_llama, other, char_tokenizer, TEXT, **kwargs)
    baseline = evaluate.kl_baseline(tiny_llama, char_tokenizer, TEXT, **kwargs)
    assert baseline.n_tokens == direct.n_tokens == 150 - 3  # windows of 64, 64, 22
    stored = evaluate.kl_divergence(baseline, other, char_tokenizer, TEXT, **kwargs)
    assert torch.equal(stored.values, direct.values)
    for field in ("top1_agreement", "delta_p", "perplexity", "reference_perplexity"):
        assert getattr(stored, field) == getattr(direct, field)


def test_a_kl_baseline_of_other_tokens_is_refused(tiny_llama, char_tokenizer):
    baseline = evaluate.kl_baseline(tiny_llama, char_tokenizer, TEXT, max_tokens=100, window=50)
    for kwargs in ({"max_tokens": 120, "window": 50}, {"max_tokens": 100, "window": 40}):
        with pytest.raises(ValueError, match="reference: expected a KLBaseline of these"):
            evaluate.kl_divergence(baseline, tiny_llama, char_tokenizer, TEXT, **kwargs)
    with pytest.raises(TypeError, match="reference"):
        evaluate.kl_baseline("model", char_tokenizer, TEXT)
