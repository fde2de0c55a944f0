"""qlearn.exercises' runner: specs (data) in, checks out. Every check accepts a right answer
written independently of qlearn, rejects typical wrong ones naming the input, what was expected
and what came, reports stubs as "not implemented yet" and draws the same inputs for a seed: the
answers are in tests/test_exercises_chNN.py (each named as its exercise, ``WRONG``: the wrong
ones with the diagnosis they must get, ``STUBS``). Also: the registry in course order, chapter
and number from where a spec sits, points, seeds, known mistakes, the messages every check
shares, what Jupyter shows. The notebooks' own solutions are run in tests/test_labs.py."""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap

import pytest
import torch

from qlearn import exercises
from qlearn.exercises import EXERCISES, Case, Draw, ExerciseFailed, Spec, exercises_of
from qlearn.exercises._runner import collect, settings, tensors

CHAPTERS = sorted({e.chapter for e in EXERCISES.values()})


def _answers(chapter: int):
    """The chapter's test module: right answers named as the exercises, WRONG, STUBS."""
    return importlib.import_module(f"test_exercises_ch{chapter:02d}")


def _stub(*args):
    raise NotImplementedError


def _wrong(key: str) -> list[tuple]:
    """(wrong answer, the diagnosis it must get or None) for each typical mistake."""
    wrong = _answers(EXERCISES[key].chapter).WRONG[key]
    return [w if isinstance(w, tuple) else (w, None) for w in wrong]


def _right(key: str):
    return getattr(_answers(EXERCISES[key].chapter), EXERCISES[key].name)


def _values(cases: list[Case]) -> str:
    """The inputs as text, every value in full (numbers, lists of them, tensors, arrays)."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v.tolist() if hasattr(v, "tolist") else v

    return repr([plain(c.args) for c in cases])


@pytest.mark.parametrize("key", EXERCISES)
def test_check_accepts_an_independent_right_answer(key, capsys):
    EXERCISES[key].check(_right(key))
    out = capsys.readouterr().out
    assert out.startswith(f"✓ {EXERCISES[key].name} ") and out.count("\n") == 1


@pytest.mark.parametrize("key", EXERCISES)
def test_check_rejects_typical_mistakes_saying_input_expected_and_got(key):
    assert _wrong(key), f"{key}: no typical mistake is tried"
    for wrong, diagnosis in _wrong(key):
        with pytest.raises(ExerciseFailed) as info:
            EXERCISES[key].check(wrong)
        message = str(info.value)
        assert message.startswith(f"✗ {EXERCISES[key].name} gave a wrong answer on input ")
        assert "\n  expected: " in message and "\n  got:      " in message
        assert "\n  hint: " in message
        assert re.search(r"\n    \w+ = ", message), message  # the inputs, by name
        assert diagnosis is None or diagnosis in message.partition(" — ")[2], message  # known


@pytest.mark.parametrize("key", EXERCISES)
def test_check_reports_a_stub_as_not_implemented_yet(key):
    stub = getattr(_answers(EXERCISES[key].chapter), "STUBS", {}).get(key, _stub)
    with pytest.raises(ExerciseFailed, match="is not implemented yet") as info:
        EXERCISES[key].check(stub)
    assert type(info.value) is ExerciseFailed and isinstance(info.value, AssertionError)
    assert "raises NotImplementedError" in str(info.value)


@pytest.mark.parametrize("key", EXERCISES)
def test_a_seed_draws_the_same_inputs_and_another_seed_others(key, capsys):
    check, inputs = EXERCISES[key].check, EXERCISES[key].spec.inputs
    for seed in (0, 0, 1):
        check(_right(key), seed=seed)
    runs = capsys.readouterr().out.splitlines()
    assert runs[0] == runs[1] == runs[2]
    assert _values(inputs(Draw(0))) == _values(inputs(Draw(0))) != _values(inputs(Draw(1)))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_exercise_of_the_chapter_and_every_known_mistake_is_tried(chapter):
    answers = _answers(chapter)
    assert list(answers.WRONG) == [e.spec.key for e in exercises_of(chapter)]
    for exercise in exercises_of(chapter):
        assert callable(getattr(answers, exercise.name, None)), f"no right {exercise.name}"
        met = [d for _, d in _wrong(exercise.spec.key) if d]
        for _, diagnosis in exercise.spec.mistakes:
            assert any(m in diagnosis for m in met), f"{exercise.name}: none meets {diagnosis!r}"


TOY_CHAPTERS = {
    "ch01_first.py": '''
        import torch

        from qlearn.exercises import Case, Spec

        def _sizes(draw):
            """Three sizes drawn from the seed."""
            return [Case((draw.py.randint(1, 10**9),)) for _ in range(3)]

        SPECS = [
            Spec(
                signature="double(n)",
                title="Twice",
                doc="""→ 2n. Reference: ``2 * n``.""",
                inputs=_sizes,
                reference=lambda n: 2 * n,
                mistakes=[(lambda got, expected, case: got - case.args[0] == 0, "it is n")],
                hint="""multiply
                by two""",
                passed="doubles {n} sizes",
                points=3,
            ),
            Spec(
                signature="Halver",
                arg_names=("x",),
                title="Half, as a class",
                doc=""", a class whose ``half(x)`` is x / 2. Reference: ``x / 2``.""",
                inputs=lambda draw: [Case((torch.rand(4, generator=draw.torch),), "four")],
                reference=lambda x: x / 2,
                call=lambda cls, x: cls().half(x),
                rtol=1e-6,
                hint="x / 2",
                passed="halves {n} tensor",
            ),
        ]
    ''',
    "ch03_third.py": '''
        from qlearn.exercises import Case, Spec

        def _one(draw):
            """One case."""
            return [Case((draw.seed,))]

        SPECS = [
            Spec(
                signature="seed_of(seed)",
                title="The seed",
                doc="""→ the seed. Reference: itself.""",
                inputs=_one,
                reference=lambda seed: seed,
                hint="return it",
                passed="returns the seed",
            )
        ]
    ''',
    "helpers.py": "SPECS = 'not a chapter: no chNN_ prefix'\n",
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A package of two chapters' specs (01 and 03), collected as qlearn.exercises is."""
    package = tmp_path / "toy_exercises"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in TOY_CHAPTERS.items():
        (package / name).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return collect("toy_exercises", [str(package)])


class Halver:
    def half(self, x):
        return x / 2


def test_chapter_and_number_come_from_the_module_and_the_place_in_its_list(toy):
    assert list(toy) == ["double", "halver", "seed_of"]
    assert [(e.name, e.chapter, e.number) for e in toy.values()] == [
        ("double", 1, 1),
        ("Halver", 1, 2),
        ("seed_of", 3, 1),
    ]
    assert toy["halver"].title == "Half, as a class" and toy["halver"].check.__name__ == (
        "check_halver"
    )
    doc = toy["halver"].check.__doc__
    assert doc.startswith("Chapter 01, exercise 2: ``Halver``, a class whose")
    assert toy["seed_of"].check.__doc__.startswith("Chapter 03, exercise 1: ``seed_of(seed)`` →")
    assert "Inputs: one case." in toy["seed_of"].check.__doc__


def test_a_spec_carries_its_points(toy):
    assert (toy["double"].points, toy["halver"].points) == (3, 1)
    assert "Worth 3 points." in toy["double"].check.__doc__
    assert "Worth 1 point." in toy["halver"].check.__doc__


def test_the_seed_reaches_the_inputs_and_is_checked(toy, capsys):
    seen = []
    toy["seed_of"].check(lambda seed: seen.append(seed) or seed, seed=7)
    toy["seed_of"].check(lambda seed: seen.append(seed) or seed)
    assert seen == [7, 0]
    assert capsys.readouterr().out == "✓ seed_of returns the seed.\n" * 2
    for bad in (-1, 1.5, True):
        with pytest.raises((TypeError, ValueError), match="seed"):
            toy["seed_of"].check(lambda seed: seed, seed=bad)


def test_the_pass_message_counts_the_cases_and_a_class_is_called_through_its_spec(toy, capsys):
    toy["double"].check(lambda n: 2 * n)
    toy["halver"].check(Halver)
    assert capsys.readouterr().out == "✓ double doubles 3 sizes.\n✓ Halver halves 1 tensor.\n"


def test_a_known_mistake_adds_its_diagnosis_and_the_hint_is_one_line(toy):
    with pytest.raises(ExerciseFailed) as info:
        toy["double"].check(lambda n: n)
    message = str(info.value)
    assert " — it is n\n" in message and message.endswith("\n  hint: multiply by two")
    assert "\n    n = " in message  # the input, by the name in the signature
    with pytest.raises(ExerciseFailed) as info:
        toy["double"].check(lambda n: 3 * n)
    assert " — " not in str(info.value)  # a wrong answer that is no known mistake


def test_a_mistake_that_cannot_be_evaluated_does_not_hold(toy):
    with pytest.raises(ExerciseFailed, match="expected a number, got 'two'") as info:
        toy["double"].check(lambda n: "two")  # "two" - n raises in the predicate: no diagnosis
    assert " — " not in str(info.value)


def test_the_default_compare_takes_tensors_within_rtol(toy, capsys):
    class Close(Halver):
        def half(self, x):
            return x / 2 * (1 + 1e-7)

    class Far(Halver):
        def half(self, x):
            return x / 2 * (1 + 1e-4)

    toy["halver"].check(Close)
    with pytest.raises(ExerciseFailed, match=r"values differ; the first at \["):
        toy["halver"].check(Far)


def test_two_exercises_of_one_name_are_refused(tmp_path, monkeypatch):
    package = tmp_path / "twice"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = textwrap.dedent(TOY_CHAPTERS["ch03_third.py"])
    (package / "ch01_a.py").write_text(source)
    (package / "ch02_b.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="a second exercise named 'seed_of'"):
        collect("twice", [str(package)])


def test_every_spec_has_a_title_a_reference_a_hint_inputs_and_points():
    for key, exercise in EXERCISES.items():
        spec = exercise.spec
        assert isinstance(spec, Spec) and spec.key == key and spec.name.isidentifier()
        assert spec.title and callable(spec.reference) and callable(spec.inputs)
        assert spec.text("hint") and spec.text("passed") and "Reference:" in spec.doc
        assert (spec.inputs.__doc__ or "").strip(), f"{key}: say which inputs are drawn"
        assert isinstance(spec.points, int) and spec.points >= 1
        assert all(callable(p) and d for p, d in spec.mistakes)
        assert hash(exercise) == hash(exercise)  # a spec (and its exercise) can be a key
        cases = spec.inputs(Draw(0))
        assert cases and all(isinstance(c, Case) for c in cases)
        assert all(len(c.args) == len(spec.names) for c in cases), key


def test_checks_are_plain_functions_of_qlearn_exercises():
    for key, exercise in EXERCISES.items():
        check = getattr(exercises, f"check_{key}")
        assert check is exercise.check and check.__module__ == "qlearn.exercises"
        parameters = inspect.signature(check).parameters
        assert list(parameters) == ["answer", "seed"] and parameters["seed"].default == 0
        assert parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY


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
            assert exercise.number == k


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


def test_jupyter_shows_the_message_and_the_answers_own_frames_not_the_checker():
    def answer(code):
        return code / 0  # the learner's own bug

    with pytest.raises(ExerciseFailed) as info:
        exercises.check_decode_fp16(answer)
    shown = "\n".join(info.value._render_traceback_())  # IPython's protocol
    assert "return code / 0" in shown and "ZeroDivisionError" in shown
    assert "qlearn/exercises.py" not in shown and "qlearn/exercises/" not in shown
    assert shown.endswith(str(info.value)) and "ExerciseFailed: ✗ decode_fp16 raised" in shown
    with pytest.raises(ExerciseFailed) as info:
        exercises.check_decode_fp16(lambda code: 0.0)
    assert info.value._render_traceback_() == f"ExerciseFailed: {info.value}".splitlines()


def test_a_class_answer_is_run_through_the_specs_call(capsys):
    class Observer:  # the frames of a class's methods are the learner's too
        def observe(self, x):
            raise RuntimeError("mine")

    with pytest.raises(ExerciseFailed, match="raised RuntimeError: mine") as info:
        exercises.check_range_observer(Observer)
    assert "raise RuntimeError" in "\n".join(info.value._render_traceback_())
    assert "qlearn/exercises/" not in "\n".join(info.value._render_traceback_())
    assert torch.is_tensor(EXERCISES["range_observer"].spec.inputs(Draw(0))[0].args[0][0])


def test_inputs_from_a_table_keep_their_doc_and_draw_from_the_seed():
    table = tensors("Two kinds.", ((3,), "normal", 8), ((2, 2), "uniform", 4), scale=0.5)
    cases = table(Draw(0))
    assert table.__doc__ == "Two kinds." and [c.note for c in cases] == ["normal", "uniform"]
    assert [c.args[1] for c in cases] == [8, 4] and float(cases[1].args[0].abs().max()) <= 0.5
    drawn = settings("Fixed, then drawn.", [(1, 2)], lambda rng: (rng.random(),), 2)
    assert [len(c.args) for c in drawn(Draw(0))] == [2, 1, 1] and drawn.__doc__.startswith("Fix")
    assert _values(drawn(Draw(0))) == _values(drawn(Draw(0))) != _values(drawn(Draw(1)))
