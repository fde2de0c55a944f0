"""What the scripts that compare qlearn with llmcompressor share: one ``oneshot`` run of a recipe
on a model built from a config, with calibration token ids and a tokenizer built in memory.

Imported by scripts/compare_awq_llmcompressor.py and scripts/compare_smoothquant_llmcompressor.py,
which run in a throwaway environment with llmcompressor installed (see their docstrings).
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from torch import nn


def quiet() -> None:
    """Only llmcompressor's errors, and no progress bars."""
    os.environ["TQDM_DISABLE"] = "1"
    from loguru import logger  # llmcompressor logs through loguru

    logger.remove()
    logger.add(sys.stderr, level="ERROR")


def run_oneshot(model: nn.Module, ids: torch.Tensor, recipe: list, vocab_size: int) -> nn.Module:
    """``llmcompressor.oneshot`` of ``recipe`` on ``model`` over the rows of ``ids`` (every row a
    calibration sample, in order), layer by layer (the "sequential" pipeline)."""
    from datasets import Dataset
    from llmcompressor import oneshot

    folder = tempfile.mkdtemp()  # llmcompressor reads the model's config from disk
    model.config.save_pretrained(folder)
    model.config.name_or_path = folder
    dataset = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )
    return oneshot(
        model=model,
        tokenizer=word_tokenizer(vocab_size),
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False,
        pipeline="sequential",
    )


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over the ids, built in memory (llmcompressor asks for one)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", pad_token="t0")


VOCAB_SIZE = 512


def tiny_llama(num_key_value_heads: int):
    """A 2-layer Llama (hidden 256, MLP 512, 4 heads) with random weights, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def token_ids(held_out_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16 calibration rows of 128 random ids, then ``held_out_rows`` more, seeded."""
    g = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, VOCAB_SIZE, (16, 128), generator=g)
    return calibration, torch.randint(0, VOCAB_SIZE, (held_out_rows, 128), generator=g)
