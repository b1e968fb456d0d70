"""Tests for nanorl/verifier.py: the formats, exact answers, the arithmetic, GSM8K golds, and
hostile input."""

import operator
import random
import time
from fractions import Fraction
from pathlib import Path

import pytest

from nanorl import verifier
from nanorl.verifier import (FORMATS, NO_FORMAT, extract_answer, is_correct, parse_gsm8k_answer,
                             run_block, run_function)

TINYGSM = ("def simple_math_problem() -> int:\n"
           "    apples = 12\n"
           "    bought = 5\n"
           "    result = apples + bought\n"
           "    return result\n")

TINYGSM_DOC = ("Question: Tom has 12 apples and buys 5 more. How many?\n\n"
               "def simple_math_problem() -> int:\n"
               '    """\n'
               "    Tom has 12 apples and buys 5 more. How many apples does he have?\n"
               '    """\n'
               "    apples = 12  # he starts with these\n"
               "\n"
               "    # then he buys some\n"
               "    bought = 5\n"
               "    result = apples + bought\n"
               "    return result\n"
               "\n"
               "print(simple_math_problem())\n")

OMI1 = ("Let's use Python.\n<llm-code>\napples = 12\nsold = 5\napples - sold\n</llm-code>\n"
        "<llm-code-output>\n7\n</llm-code-output>\nSo the answer is \\boxed{7}.")


# ----------------------------------------------------------------------------- formats

def test_constants():
    assert FORMATS == ("tinygsm", "omi1", "omi2", "gsm8k")
    assert NO_FORMAT == "none"


@pytest.mark.parametrize("text, expected", [
    (TINYGSM, ("tinygsm", 17)),
    (TINYGSM_DOC, ("tinygsm", 17)),
    ("def f():\n    '''One line.'''\n    x = 3 * 4\n    return x // 5\n", ("tinygsm", 2)),
    ("def f() -> int:\n    total = 10 / 4\n    return total * 2\n", ("tinygsm", 5)),  # 5.0
    ("def f():\n    return 7 / 2\n", ("tinygsm", Fraction(7, 2))),  # exact, not 3.5
    ("def f():\n    x = 1\n", ("tinygsm", None)),                     # no return
    ("def f():\n    x = crayons\n    return x\n", ("tinygsm", None)),  # unknown name
    ("def f():\n    return 1\n    return 2\n", ("tinygsm", 1)),      # first return wins
    ("def f():\n    for = 3\n    return for\n", ("tinygsm", None)),  # keywords are not names
    ("def f():\r\n\tx = 8\r\n\treturn x\r\n", ("tinygsm", 8)),          # CRLF and tabs
    ("def f():\n    x = 8\n\treturn x\n", ("tinygsm", None)),        # mixed indentation
    ("def f():\n    x = 1\n      y = 2\n    return x\n", ("tinygsm", None)),  # bad indent
    ("def f(x):\n    return 1\n", ("tinygsm", None)),                 # arguments not allowed
    ('def f():\n    """never closed\n    return 1\n', ("tinygsm", None)),
])
def test_tinygsm(text, expected):
    assert extract_answer(text) == expected


def test_tinygsm_docstring_lines_at_column_zero():
    # legal Python: lines inside a docstring may start at column 0
    code = 'def f():\n    """\nDocstring at column 0.\n    """\n    return 4\n'
    assert run_function(code) == 4


def test_tinygsm_ends_at_first_unindented_line():
    code = "def f():\n    a = 2\nb = 3\n    return a\n"
    assert run_function(code) is None  # body is just `a = 2`: no return


@pytest.mark.parametrize("text, expected", [
    (OMI1, ("omi1", 7)),
    # the model's own (wrong) output and boxed value are ignored
    (OMI1.replace("\n7\n", "\n9\n").replace("{7}", "{9}"), ("omi1", 7)),
    ("<llm-code>\nx = 6 * 7\n</llm-code>\n", ("omi1", 42)),                # last line assigns
    ("<llm-code>\nx = 6\nprint(x * 7)\n</llm-code>", ("omi1", 42)),         # print(expr)
    ("<llm-code>\nx = 6\nx + 1", ("omi1", 7)),                              # no closing tag
    ("<llm-code>\n1 + 1\n</llm-code> <llm-code>\n5\n</llm-code>", ("omi1", 2)),  # the first
    ("<llm-code>\n  x = 1\n  x\n</llm-code>", ("omi1", None)),             # unexpected indent
    ("<llm-code>\nreturn 3\n</llm-code>", ("omi1", None)),                 # return in a block
    ("<llm-code>\n</llm-code>\n\\boxed{3}", ("omi1", None)),               # empty block
    ("<llm-code>\nx = 1 # one\n# a comment\nx * 3\n</llm-code>", ("omi1", 3)),
])
def test_omi1(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Tom has 12 + 5 = 17 apples. The answer is \\boxed{17}.", 17),
    ("\\boxed{1,234}", 1234),
    ("\\boxed{ -5 }", -5),
    ("\\boxed{$18}", 18),
    ("\\boxed{\\$18}", 18),
    ("\\boxed{12.0}", 12),
    ("first \\boxed{3} then \\boxed{4}", 4),      # the last one counts
    ("\\boxed{x}", None),
    ("\\boxed{3.5}", Fraction(7, 2)), ("\\boxed{-2.5}", Fraction(-5, 2)), ("\\boxed{.25}", Fraction(1, 4)),
    ("\\boxed{3/4}", Fraction(3, 4)), ("\\boxed{-3/4}", Fraction(-3, 4)), ("\\boxed{6/4}", Fraction(3, 2)),
    ("\\boxed{1,234.5}", Fraction(2469, 2)), ("\\boxed{24/2}", 12), ("\\boxed{3/0}", None),
    ("\\boxed{12,34}", None), ("\\boxed{,123}", None), ("\\boxed{1,2345}", None),
    ("\\boxed{$-5}", -5), ("\\boxed{-$5}", -5), ("\\boxed{--5}", None), ("\\boxed{12.}", 12),
    ("\\boxed{\\frac{1}{2}}", Fraction(1, 2)), ("\\boxed{-\\dfrac{6}{4}}", Fraction(-3, 2)),
    ("\\boxed{\\frac{1}{x}}", None), ("\\boxed{1.5.}", None), ("\\boxed{1/2/3}", None),
    ("\\boxed{1e5}", None), ("\\boxed{1_000}", None), ("\\boxed{+5}", None),
    ("\\boxed{17", None),                          # never closed
    ("\\boxed{" + "9" * 40 + "}", None),           # too many digits
])
def test_omi2(text, expected):
    assert extract_answer(text) == ("omi2", expected)


@pytest.mark.parametrize("text, expected", [
    ("So she has 5 + 7 = 12.\n#### 12", 12),
    ("#### 1,234.5", Fraction(2469, 2)), ("#### -3/4", Fraction(-3, 4)), ("#### $5", 5),
    ("#### 3\n#### 4", 4),                        # the last one counts
    ("#### 12 apples", None), ("####", None),
])
def test_gsm8k(text, expected):
    assert extract_answer(text) == ("gsm8k", expected)


def test_answers_are_int_when_integral_else_fraction():
    assert type(extract_answer("\\boxed{12.0}")[1]) is int
    assert type(run_block("10 / 5")) is int and run_block("10 / 4") == Fraction(5, 2)
    assert extract_answer("<llm-code>\nx = 7\nx / 2\n</llm-code>") == ("omi1", Fraction(7, 2))
    assert extract_answer("<llm-code>\n0.1 + 0.2\n</llm-code>") == ("omi1", Fraction(3, 10))


def test_none_format():
    assert extract_answer("Tom has 17 apples, I think.") == ("none", None)
    assert extract_answer("") == ("none", None)
    assert extract_answer("prose\n  def f(): indented, not a def line") == ("none", None)


def test_format_order():
    # <llm-code> beats def beats \boxed{} beats ####
    assert extract_answer("def f():\n    return 1\n<llm-code>\n2\n</llm-code>") == ("omi1", 2)
    assert extract_answer("\\boxed{5}\ndef f():\n    return 1\n") == ("tinygsm", 1)
    assert extract_answer("#### 6\nso \\boxed{5}") == ("omi2", 5)
    assert extract_answer("#### 6\n<llm-code>\n2\n</llm-code>") == ("omi1", 2)


def test_is_correct():
    assert is_correct(TINYGSM, 17)
    assert not is_correct(TINYGSM, 18)
    assert is_correct(OMI1, 7)
    assert not is_correct("no answer here", 0)
    assert not is_correct("\\boxed{x}", 0)
    assert is_correct("\\boxed{3.5}", Fraction(7, 2)) and is_correct("#### 7/2", Fraction(7, 2))
    assert is_correct("\\boxed{5.0}", Fraction(5)) and is_correct("\\boxed{5}", Fraction(5))
    assert not is_correct("\\boxed{3.5}", 3.5)  # a float gold is not exact: refused
    assert not is_correct("\\boxed{0.33}", Fraction(1, 3))


# ----------------------------------------------------------------------------- arithmetic

@pytest.mark.parametrize("code, expected", [
    ("7 // 2", 3), ("-7 // 2", -4), ("7 % 3", 1), ("-7 % 3", 2), ("7 % -3", -2),
    ("14 / 2", 7), ("7 / 2", Fraction(7, 2)), ("7 / 2 * 2", 7), ("7.5 // 2", 3), ("0.1 + 0.2 - 0.3", 0),
    ("2 ** 10", 1024), ("2 ** 3 ** 2", 512), ("-2 ** 2", -4), ("(-2) ** 2", 4), ("2 ** 0", 1),
    ("2 ** -1", None), ("2 ** 0.5", None), ("4 ** (1/2)", None),
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("100 / 10 / 5", 2),
    ("- - 3", 3), ("+4", 4), ("-(2 + 3)", -5), ("2 * -3", -6),
    ("1 / 0", None), ("1 // 0", None), ("1 % 0", None), ("1 / (2 - 2)", None),
    ("x", None), ("x = 1\nx + y", None), ("a = 3\nb = a * a\nb - 1", 8),
    ("012", None), ("1 +", None), ("(1", None), ("1)", None), ("2 3", None), ("1e5", None),
    ("10 ** 18", 10 ** 18), ("10 ** 18 + 1", None), ("10 ** 19 // 10", None),
])
def test_arithmetic(code, expected):
    assert run_block(code) == expected


def test_differential_against_python_integer_semantics():
    # random expression trees whose value is computed alongside their text with Python's own
    # integer operators (floor division and modulo included); no text is ever evaluated
    rng = random.Random(0)
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "%": operator.mod}

    def gen(depth):
        if depth == 0 or rng.random() < 0.3:
            n = rng.randint(0, 20)
            return str(n), n
        op = rng.choice(list(ops))
        (left, a), (right, b) = gen(depth - 1), gen(depth - 1)
        if a is None or b is None or (op in ("//", "%") and b == 0):
            value = None
        else:
            value = ops[op](a, b)
        text = f"({left} {op} {right})" if rng.random() < 0.5 else f"(({left}){op}({right}))"
        if rng.random() < 0.2:
            text, value = f"-{text}", None if value is None else -value
        return text, value

    for _ in range(300):
        code, expected = gen(3)
        assert run_block(code) == expected, code


def test_nesting_bounds():
    assert run_block("(" * 20 + "1" + ")" * 20) == 1
    assert run_block("(" * 40 + "1" + ")" * 40) is None
    assert run_block("-" * 31 + "1") == -1
    assert run_block("-" * 40 + "1") is None


def test_statement_and_length_bounds():
    ok = "\n".join(f"x{i} = {i}" for i in range(verifier.MAX_STATEMENTS - 1)) + "\nx1 + x2"
    assert run_block(ok) == 3
    too_many = "\n".join(f"x{i} = {i}" for i in range(verifier.MAX_STATEMENTS + 1))
    assert run_block(too_many) is None
    assert run_block("1" + " " * verifier.MAX_CODE_CHARS) is None


# ----------------------------------------------------------------------------- GSM8K golds

@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72", 72),
    ("#### 1,000", 1000), ("#### -5", -5), ("#### $5", 5), ("####  42 \n", 42), ("#### 72.", 72),
    ("#### 1687.5", Fraction(3375, 2)), ("#### 0.25", Fraction(1, 4)), ("#### .5", Fraction(1, 2)),
    ("#### -2.5", Fraction(-5, 2)), ("#### 3/4", Fraction(3, 4)), ("#### -3/4", Fraction(-3, 4)),
    ("#### 1,234", 1234), ("#### 1,234,567.5", Fraction(2469135, 2)), ("#### $1,234.50", Fraction(2469, 2)),
    ("#### \\$-5", -5), ("#### 12.0", 12),
    ("no marker here", None), ("#### ", None), ("#### 1/0", None), ("#### 12,34", None),
    ("#### " + "9" * 19, None),  # beyond MAX_VALUE
])
def test_parse_gsm8k_answer(text, expected):
    assert parse_gsm8k_answer(text) == expected


# ----------------------------------------------------------------------------- hostile input

FORBIDDEN = [
    "__import__('os')", "open('x')", "[1]*10**9", "while True: pass", "lambda: 0", "x.y",
    "import os", "exec('1')", "eval('1')", "globals()", "x = 1; x", "True", "None",
    "print('hi')", "(1).real", "{1: 2}", "x = 1\nif x: 2", "f\"{1}\"", "\\", "1 if 1 else 2",
    "x += 1", "a = b = 1", "1 == 1", "2 ** 100", "10**10**10", "9**9**9**9", "9 ** 9 ** 9",
]


def _check_all_formats(code):
    """Put one piece of code in every format; each answer must be None, without raising."""
    body = "".join(f"    {line}\n" for line in code.split("\n"))
    texts = [f"<llm-code>\n{code}\n</llm-code>", f"def f():\n{body}    return 1\n",
             f"\\boxed{{{code}}}"]
    if "\n" not in code:
        texts.append(f"def f():\n    return {code}\n")
    for text in texts:
        fmt, answer = extract_answer(text)
        assert fmt in FORMATS and answer is None, (text, answer)
    assert run_block(code) is None


def test_hostile_inputs_return_none_fast():
    t0 = time.perf_counter()
    for code in FORBIDDEN:
        _check_all_formats(code)
    for text in ["(" * 100000, "-" * 100000 + "1", "<llm-code>" + "(" * 100000,
                 "<llm-code>\n" + "-" * 100000 + "1", "def f():\n    return " + "(" * 100000,
                 "\\boxed{" + "(" * 100000]:
        fmt, answer = extract_answer(text)
        assert answer is None
    assert run_block("(" * 100000) is None and run_function("def f():\n" + " " * 10**6) is None
    # one megabyte mixing every marker, including code that would be valid if it were short
    chunk = "\\boxed{<llm-code>\ndef f():\n    return 1 + \n</llm-code-output>\\boxed{7}" * 8
    megabyte = (chunk * (10**6 // len(chunk) + 1))[:10**6]
    for text in [megabyte, "def " * 250000, "\\boxed{" * 150000, "<llm-code>" * 100000,
                 "\n    def f():" * 80000, "#### " * 200000, "1" * 10**6]:
        fmt, answer = extract_answer(text)
        assert fmt in FORMATS + (NO_FORMAT,) and answer is None
        assert parse_gsm8k_answer(text) is None
    # valid short program followed by a megabyte of junk: still found, still fast
    assert extract_answer(TINYGSM + "x" * 10**6) == ("tinygsm", 17)
    assert extract_answer(OMI1 + "\\boxed{" * 10**5) == ("omi1", 7)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"hostile inputs took {elapsed:.2f}s"


def test_random_bytes_and_fragments_never_raise():
    rng = random.Random(1234)
    fragments = ["<llm-code>", "</llm-code>", "\ndef f():\n", "    ", "return ", "\\boxed{", "}",
                 "(", ")", "**", "9", "-", "/", "%", "=", "x", "\n", '"""', "#", ".", ",", "$"]
    t0 = time.perf_counter()
    for i in range(2000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        text = raw.decode("utf-8", errors="replace")
        if i % 2:  # half of them are stitched from markers so the parsers are really reached
            text = "".join(rng.choice(fragments) for _ in range(rng.randrange(60)))
        fmt, answer = extract_answer(text)
        assert fmt in FORMATS + (NO_FORMAT,)
        assert answer is None or type(answer) is int or (type(answer) is Fraction and answer.denominator > 1)
        assert isinstance(is_correct(text, 1), bool)
        assert type(parse_gsm8k_answer(text)) in (type(None), int, Fraction)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"fuzz took {elapsed:.2f}s"


def test_non_string_input():
    assert extract_answer(None) == ("none", None)
    assert parse_gsm8k_answer(None) is None


def test_source_never_runs_python():
    # the verifier must not hand text to Python's own compiler or use backtracking regexes
    src = Path(verifier.__file__).read_text()
    for banned in ("exec(", "eval(", "compile(", "import ast", "import re", "__import__"):
        assert banned not in src, banned
    assert len(src.splitlines()) < 400
