"""Shared fixtures: tiny models built from configs (no download) and the default model."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QLEARN_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))

CHARS = list("abcdefghijklmnopqrstuvwxyz .,;'\n")


@pytest.fixture(scope="session")
def char_tokenizer():
    """A character-level fast tokenizer with an EOS token, built in memory."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", "<eos>", *CHARS])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(CHARS) + 2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(CHARS) + 2, n_positions=256)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture()
def tiny_llama():
    """A 2-layer Llama with random weights (nn.Linear layers, tied embeddings)."""
    return _tiny_llama()


@pytest.fixture()
def tiny_gpt2():
    """A 2-layer GPT-2 with random weights (transformers Conv1D layers, weight stored [in, out])."""
    return _tiny_gpt2()


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request):
    return _tiny_llama() if request.param == "llama" else _tiny_gpt2()


@pytest.fixture(scope="session")
def default_model():
    """The course's default model, loaded once per test session (about 15 s)."""
    from qlearn.models import load_model

    return load_model()
