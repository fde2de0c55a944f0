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
