"""Tests for nanorl/evals.py: pass@k and maj@k on hand-made cases with known answers."""

from fractions import Fraction

import pytest

from nanorl.evals import majority_correct, pass_at_k, completion_metrics
from nanorl.tasks import Question


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),          # pass@1 is the fraction correct
    (4, 1, 2, 0.5),          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),        # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (3, 0, 3, 0.0), (3, 3, 1, 1.0), (3, 1, 3, 1.0),
])
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n, c, k", [(2, 0, 3), (2, 2, 3), (4, 1, 0), (4, -1, 1), (4, 5, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("answers, gold, expected", [
    ([5, 5, 7], 5, True),
    ([5, 7, 7, 5], 5, False),       # a tie is no majority, whichever answer came first
    ([7, 5, 5, 7], 5, False),
    ([7, 5, 5, 7], 7, False),
    ([None, None, 5], 5, True),     # samples without an answer do not vote
    ([None, None], 5, False), ([], 5, False),
    ([7, 7, 5], 5, False),
    ([Fraction(5), 5, 7], 5, True),                        # one vote: Fraction(5) == 5
    ([Fraction(7, 2), Fraction(7, 2), 3], Fraction(7, 2), True),
])
def test_majority_correct(answers, gold, expected):
    assert majority_correct(answers, gold) is expected


def test_score_compares_exact_answers():
    problems = [Question("Half of 7?", Fraction(7, 2)), Question("2 + 3?", 5)]
    completions = [["\\boxed{3.5}", "#### 7/2", "\\boxed{3}"],
                   ["#### 5.0", "def f():\n    return 10 / 2\n", "\\boxed{4}"]]
    result = completion_metrics(problems, completions)
    assert result["k"] == 3
    assert result["pass@1"] == pytest.approx(2 / 3)
    assert result["pass@k"] == 1.0 and result["maj@k"] == 1.0
    assert result["format_share"]["gsm8k"] == pytest.approx(2 / 6)
    assert result["pass@1_by_format"] == pytest.approx({"gsm8k": 1.0, "omi2": 1 / 3, "tinygsm": 1.0})


def test_score_rejects_k_above_the_samples():
    with pytest.raises(ValueError):
        completion_metrics([Question("2 + 3?", 5)], [["\\boxed{5}"]], k=2)
