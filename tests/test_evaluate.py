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
