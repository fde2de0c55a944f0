"""qlearn.data: the course's texts are in the repository, and calibration ≠ evaluation."""

from __future__ import annotations

import pytest

from qlearn import data


def test_texts_load_and_differ():
    evaluation = data.load_text(data.EVALUATION_TEXT)
    calibration = data.load_text(data.CALIBRATION_TEXT)
    assert evaluation.startswith("PRIDE AND PREJUDICE")
    assert calibration.startswith("EMMA")
    assert len(evaluation) > 500_000 and len(calibration) > 500_000
    assert evaluation[:5000] not in calibration


def test_unknown_text_is_refused():
    with pytest.raises(ValueError, match="name"):
        data.load_text("ulysses")


def test_data_dir_can_be_overridden(tmp_path, monkeypatch):
    monkeypatch.setenv("QLEARN_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="QLEARN_DATA"):
        data.load_text("emma")


def test_calibration_windows_are_the_gptq_loaders(char_tokenizer):
    """Same draws as the GPTQ authors' datautils: random.seed(seed); randint(0, N - seqlen - 1)."""
    import random

    text = data.load_text("emma")[:20_000]
    windows = data.calibration_windows(char_tokenizer, text, n_samples=4, seqlen=64, seed=3)
    ids = char_tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    random.seed(3)
    expected = []
    for _ in range(4):
        i = random.randint(0, ids.shape[1] - 64 - 1)
        expected.append(ids[:, i : i + 64])
    assert windows.shape == (4, 64)
    assert windows.tolist() == [e[0].tolist() for e in expected]


def test_calibration_windows_leave_the_global_random_state_alone(char_tokenizer):
    import random

    random.seed(1)
    before = random.getstate()
    data.calibration_windows(char_tokenizer, "abc " * 100, n_samples=2, seqlen=8)
    assert random.getstate() == before


def test_calibration_windows_bad_input(char_tokenizer):
    with pytest.raises(ValueError, match="text"):
        data.calibration_windows(char_tokenizer, "short", seqlen=64)
    with pytest.raises(ValueError, match="n_samples"):
        data.calibration_windows(char_tokenizer, "abc " * 100, n_samples=0)
    with pytest.raises(ValueError, match="seqlen"):
        data.calibration_windows(char_tokenizer, "abc " * 100, seqlen=1)


def test_token_batches_one_pass_per_window_or_item(char_tokenizer):
    import torch

    windows = torch.arange(12).reshape(3, 4)
    assert [b.tolist() for b in data.token_batches(windows)] == [
        [[0, 1, 2, 3]],
        [[4, 5, 6, 7]],
        [[8, 9, 10, 11]],
    ]
    assert [tuple(b.shape) for b in data.token_batches([windows, torch.arange(5)])] == [
        (3, 4),
        (1, 5),
    ]
    texts = data.token_batches(["a cat", "a dog"], char_tokenizer)
    assert [b.shape[0] for b in texts] == [1, 1]
    with pytest.raises(ValueError, match="tokenizer"):
        data.token_batches(["a cat"])
