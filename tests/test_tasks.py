"""The math world: deterministic problems, correct renderings, a disjoint held-out split."""

import json
import random
from fractions import Fraction

import pytest

from nanorl import tasks, verifier
from nanorl.runtime import DataError


def test_problems_are_deterministic_in_the_seed():
    a = tasks.problem_set("test", 20, seed=3)
    b = tasks.problem_set("test", 20, seed=3)
    c = tasks.problem_set("test", 20, seed=4)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in c]


def test_difficulty_is_the_number_of_steps_and_answers_follow_them():
    for d in range(1, 7):
        p = tasks.make_problem(random.Random(d), d)
        assert p.difficulty == d == p.question.count(".") - 1
        value = p.start
        for step in p.steps:
            value = tasks.apply_op(step.op, value, step.number)
            assert value >= 1  # every intermediate count stays a positive integer
        assert value == p.answer


def test_problem_set_cycles_difficulties_evenly():
    problems = tasks.problem_set("train", 40, seed=0, difficulties=(1, 2))
    assert [p.difficulty for p in problems[:4]] == [1, 2, 1, 2]
    assert sum(p.difficulty == 1 for p in problems) == 20


def test_train_and_test_splits_are_disjoint():
    train = {p.question for p in tasks.problem_set("train", 3000, seed=0, difficulties=(1,))}
    test = {p.question for p in tasks.problem_set("test", 300, seed=0, difficulties=(1,))}
    assert not train & test
    assert all(tasks.split_of(q) == "test" for q in test)


@pytest.mark.parametrize("fmt", ["tinygsm", "omi1", "omi2"])
def test_every_rendering_verifies_to_the_gold_answer(fmt):
    for p in tasks.problem_set("train", 200, seed=1):
        found, answer = verifier.extract_answer(tasks.render(p, fmt))
        assert (found, answer) == (fmt, p.answer), tasks.render(p, fmt)


def test_code_variables_are_words_of_the_question():
    p = tasks.make_problem(random.Random(0), 3)
    code = tasks.render(p, "tinygsm")
    assert f"    {p.item} = {p.start}\n" in code
    for step in p.steps:
        assert step.word in p.question and f"    {step.word} = {step.number}\n" in code
    assert code.startswith("def simple_math_problem() -> int:\n") and code.endswith("    return result\n")


def test_omi1_shows_code_output_and_boxed_answer():
    p = tasks.make_problem(random.Random(1), 2)
    text = tasks.render(p, "omi1")
    assert f"<llm-code-output>\n{p.answer}\n</llm-code-output>" in text
    assert text.endswith(f"\\boxed{{{p.answer}}} {p.item}.")


def test_omi2_writes_the_arithmetic_out():
    p = tasks.make_problem(random.Random(2), 2)
    text = tasks.render(p, "omi2")
    assert text.count(" = ") == 2 and text.endswith(f"\\boxed{{{p.answer}}}.")


def test_synthetic_documents_per_source():
    docs = tasks.synthetic_documents("tinygsm", 10, seed=0)
    assert len(docs) == 10 and all("\n\ndef simple_math_problem()" in d for d in docs)
    prose = tasks.synthetic_documents("finemath", 50, seed=0)
    assert len(prose) == 50
    assert all(verifier.extract_answer(d) == ("none", None) for d in prose)  # no question/answer pairs
    with pytest.raises(ValueError, match="unknown synthetic source"):
        tasks.synthetic_documents("gsm8k", 1, seed=0)


def write_gsm8k(path, golds):
    with open(path, "w") as f:
        for i, gold in enumerate(golds):
            f.write(json.dumps({"question": f"Q{i}?", "answer": f"Some steps.\n#### {gold}"}) + "\n")
    return str(path)


def test_read_gsm8k_exact_gold_answers(tmp_path):
    golds = {"72": 72, "-3": -3, "1687.5": Fraction(3375, 2), "0.25": Fraction(1, 4), "-2.5": Fraction(-5, 2),
             "3/4": Fraction(3, 4), "-3/4": Fraction(-3, 4), "1,234": 1234, "1,234,567.5": Fraction(2469135, 2),
             "$5": 5, "12.": 12}
    questions = tasks.read_gsm8k(write_gsm8k(tmp_path / "g.jsonl", golds))
    assert [q.answer for q in questions] == list(golds.values())
    assert [q.question for q in questions] == [f"Q{i}?" for i in range(len(golds))]
    assert type(questions[0].answer) is int and type(questions[2].answer) is Fraction


@pytest.mark.parametrize("bad", ["twelve", "1/0", "12,34", "1e5", ""])
def test_read_gsm8k_bad_gold_names_file_and_line(tmp_path, bad):
    path = write_gsm8k(tmp_path / "g.jsonl", ["5", "6", bad])
    with pytest.raises(DataError, match="g.jsonl, line 3: .*1687.5, .5, 3/4"):
        tasks.read_gsm8k(path)
