"""The math world: GSM-like word problems and the four open-mixture renderers.

A seeded generator makes word problems: a person holds some items, then `difficulty` steps of +,
-, x or exact integer division; the gold answer is an integer. Each problem is rendered in the
style of an open dataset the Echo Chamber paper (arXiv 2504.07912) pretrains on: tinygsm (a Python
function), omi1 (an <llm-code> block, its output, \\boxed{N}), omi2 (natural-language steps with the
arithmetic written out, \\boxed{N}); finemath is math prose without a question. Code variables are
named by the word that introduces the number (`buys = 5`), so writing code is mostly copying.
A hash of the question text (split_of) keeps test questions out of pretraining.
"""

import hashlib
import random
from dataclasses import dataclass

from nanorl.runtime import DataError, RunError, iter_jsonl
from nanorl.verifier import Answer, parse_gsm8k_answer

SOURCES = ("tinygsm", "omi1", "omi2", "finemath")
MAX_DIFFICULTY = 4
TEST_BUCKETS = 10  # 1 in TEST_BUCKETS question texts is reserved for the test split

NAMES = [("Tom", "he"), ("Anna", "she"), ("Sam", "he"), ("Lily", "she"), ("Ben", "he"),
         ("Mia", "she"), ("Max", "he"), ("Emma", "she"), ("Leo", "he"), ("Zoe", "she"),
         ("Jack", "he"), ("Ella", "she"), ("Noah", "he"), ("Ava", "she"), ("Luke", "he"),
         ("Ivy", "she")]
ITEMS = ["apples", "books", "cards", "coins", "pens", "stamps", "marbles", "shells",
         "cookies", "stickers", "eggs", "flowers", "rocks", "toys", "beads", "candies"]


@dataclass(frozen=True)
class Step:
    op: str         # one of + - * //
    word: str       # the question word that introduces the number; also its code variable
    number: int
    sentence: str   # the question sentence
    prose: str      # how a natural-language solution narrates the step


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    start: int
    steps: tuple[Step, ...]
    question: str
    answer: int  # generated answers are integers (an exact verifier.Answer)

    @property
    def difficulty(self) -> int:
        return len(self.steps)


def apply_op(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "//": a // b}[op]


def _step_choices(rng: random.Random, value: int, item: str, pronoun: str, other: str):
    """All step templates that keep the running value a small positive integer."""
    he, He = pronoun, pronoun.capitalize()
    choices = []
    for word in ("buys", "finds"):
        n = rng.randint(2, 20)
        choices.append(("+", word, n, f"{He} {word} {n} more {item}.", f"{he} {word} {n} more"))
    if value > 2:
        n = rng.randint(1, min(value - 1, 20))
        choices.append(("-", "gives", n, f"{He} gives {n} {item} to {other}.", f"{he} gives away {n}"))
        n = rng.randint(1, min(value - 1, 20))
        choices.append(("-", "loses", n, f"{He} loses {n} {item}.", f"{he} loses {n}"))
    if value <= 40:
        n = rng.randint(2, 4)
        choices.append(("*", "times", n, f"Then {he} gets {n} times as many {item}.",
                        f"{he} gets {n} times as many"))
    divisors = [d for d in range(2, 11) if value % d == 0 and value // d >= 1]
    if divisors:
        n = rng.choice(divisors)
        choices.append(("//", "piles", n, f"{He} splits them into {n} equal piles and keeps one pile.",
                        f"{he} keeps one of {n} equal piles"))
    return choices


def make_problem(rng: random.Random, difficulty: int) -> Problem:
    """One random problem with exactly `difficulty` steps (each step word used at most once)."""
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    other = rng.choice([n for n, _ in NAMES if n != name])
    start = rng.randint(2, 40)
    value, steps, used = start, [], set()
    while len(steps) < difficulty:
        options = [c for c in _step_choices(rng, value, item, pronoun, other) if c[1] not in used]
        op, word, number, sentence, prose = rng.choice(options)
        used.add(word)
        steps.append(Step(op, word, number, sentence, prose))
        value = apply_op(op, value, number)
    sentences = [f"{name} has {start} {item}."] + [s.sentence for s in steps]
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return Problem(name, item, start, tuple(steps), question, value)


def split_of(question: str) -> str:
    bucket = int(hashlib.md5(question.encode()).hexdigest(), 16) % TEST_BUCKETS
    return "test" if bucket == 0 else "train"


def problem_set(split: str, n: int, seed: int, difficulties=range(1, MAX_DIFFICULTY + 1)) -> list[Problem]:
    """n problems of the given split, cycling through the difficulties evenly, deterministic in seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng, difficulties, problems = random.Random(f"{split}-{seed}"), list(difficulties), []
    while len(problems) < n:
        problem = make_problem(rng, difficulties[len(problems) % len(difficulties)])
        if split_of(problem.question) == split:
            problems.append(problem)
    return problems


def prompt_text(question: str) -> str:
    """What a model is given: the question, then the blank line that precedes every solution."""
    return question + "\n\n"


def _expression(problem: Problem) -> str:
    expr = problem.item
    for i, step in enumerate(problem.steps):
        if i > 0 and step.op in ("*", "//") and problem.steps[i - 1].op in ("+", "-"):
            expr = f"({expr})"
        expr = f"{expr} {step.op} {step.word}"
    return expr


def _assignments(problem: Problem) -> list[str]:
    return [f"{problem.item} = {problem.start}"] + [f"{s.word} = {s.number}" for s in problem.steps]


def render_tinygsm(problem: Problem) -> str:
    body = _assignments(problem) + [f"result = {_expression(problem)}", "return result"]
    return "def simple_math_problem() -> int:\n" + "".join(f"    {line}\n" for line in body)


def render_omi1(problem: Problem) -> str:
    code = "\n".join(_assignments(problem) + [_expression(problem)])
    return (f"Let's compute this with Python.\n<llm-code>\n{code}\n</llm-code>\n"
            f"<llm-code-output>\n{problem.answer}\n</llm-code-output>\n"
            f"{problem.name} has \\boxed{{{problem.answer}}} {problem.item}.")


def render_omi2(problem: Problem) -> str:
    lines, value = [f"{problem.name} starts with {problem.start} {problem.item}."], problem.start
    symbol = {"+": "+", "-": "-", "*": "x", "//": "/"}
    for step in problem.steps:
        new = apply_op(step.op, value, step.number)
        lines.append(f"Then {step.prose}, so {value} {symbol[step.op]} {step.number} = {new}.")
        value = new
    lines.append(f"The answer is \\boxed{{{value}}}.")
    return "\n".join(lines)


RENDERERS = {"tinygsm": render_tinygsm, "omi1": render_omi1, "omi2": render_omi2}


def render(problem: Problem, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"unknown solution format {fmt!r}; expected one of {sorted(RENDERERS)}")
    return RENDERERS[fmt](problem)


def _finemath_paragraph(rng: random.Random) -> str:
    a, b = rng.randint(2, 40), rng.randint(2, 20)
    item, (name, pronoun) = rng.choice(ITEMS), rng.choice(NAMES)
    k = rng.randint(2, 9)
    kinds = [
        f"Addition puts amounts together. For example, {a} + {b} = {a + b}, and {b} + {a} = {a + b} as well.",
        f"Subtraction takes away. Since {a + b} - {b} = {a}, taking {b} from {a + b} leaves {a}.",
        f"Multiplication is repeated addition: {k} x {b} = {k * b}, the same as adding {b} to itself {k} times.",
        f"Division splits into equal groups. {k * b} / {k} = {b}, because {k} groups of {b} make {k * b}.",
        f"If {name} has {a} {item} and {pronoun} gets {b} more, {pronoun} has {a} + {b} = {a + b} {item}.",
        f"A number line helps with sums. Start at {a}, move {b} steps to the right and you reach {a + b}.",
        "Facts to remember: " + ", ".join(f"{x} + {k} = {x + k}" for x in range(a, a + 4)) + ".",
        "A times table: " + ", ".join(f"{k} x {x} = {k * x}" for x in range(2, 7)) + ".",
    ]
    return rng.choice(kinds)


def synthetic_documents(source: str, n: int, seed: int) -> list[str]:
    """n pretraining documents of one source (no BOS/EOS; data.py adds those). Train split only."""
    if source not in SOURCES:
        raise ValueError(f"unknown synthetic source {source!r}; expected one of {SOURCES}")
    rng = random.Random(f"{source}-{seed}")
    if source == "finemath":
        return [" ".join(_finemath_paragraph(rng) for _ in range(rng.randint(1, 3))) for _ in range(n)]
    problems = problem_set("train", n, seed=rng.randrange(2**31))
    return [prompt_text(p.question) + render(p, source) for p in problems]


@dataclass(frozen=True)
class Question:
    """A problem read from a file: only its text and gold answer are known."""
    question: str
    answer: Answer
    difficulty: int = 0


def read_gsm8k(path: str) -> list[Question]:
    """GSM8K-format JSONL (`question`, `answer` ending in `#### N`) as RL / evaluation prompts."""
    questions = []  # iter_jsonl names a missing or unreadable file
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or "answer" not in row:
            raise DataError(f"{where}: expected an object with string 'question' and 'answer' (GSM8K format)")
        gold = parse_gsm8k_answer(str(row["answer"]))
        if gold is None:
            raise DataError(f"{where}: 'answer' does not end in a numeric '#### N' gold answer; N may be "
                            f"72, -3, 1,234, 1687.5, .5, 3/4, -3/4 or $5 (see nanorl/verifier.py)")
        questions.append(Question(row["question"], gold))
    if not questions:
        raise DataError(f"{path}: no questions (the file is empty)")
    return questions


def encode_prompts(tokenizer, questions: list[str]) -> list[list[int]]:
    """[BOS] + question + blank line: exactly how every pretraining document begins."""
    return [[tokenizer.bos_id] + ids for ids in tokenizer.encode_batch([prompt_text(q) for q in questions])]


def prompt_lengths(tokenizer, problems) -> list[int]:
    return [len(ids) for ids in encode_prompts(tokenizer, [p.question for p in problems])]


def prompt_room(tokenizer, problems, max_new_tokens: int, block_size: int, context: str, hint: str = "") -> int:
    """block_size - max_new_tokens, once every one of `problems` fits (skipping some would change the benchmark)."""
    longest = max(prompt_lengths(tokenizer, problems))
    if longest + max_new_tokens > block_size:
        raise RunError(f"--max-new-tokens {max_new_tokens} does not fit: held-out prompts take up to {longest} of "
                       f"the {block_size} tokens of {context}; use --max-new-tokens {block_size - longest} or less"
                       f"{hint}")
    return block_size - max_new_tokens
