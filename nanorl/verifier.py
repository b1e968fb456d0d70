"""The answer verifier: finds the final numeric answer in a model's response, safely.

Model output is untrusted text, so this file is a security boundary: that text never reaches
Python (no exec, eval, compile, nor ast.parse, which can crash on deep nesting). The code formats
run in a tiny interpreter over a whitelist, within the bounds below; anything else gives None, quickly.

Formats, detected in this order (extract_answer returns (format, answer)):
  omi1     `<llm-code>`: the value of the last line of the FIRST code block (the model's output ignored)
  tinygsm  a line starts with `def name():` or `def name() -> int:`: the body's first `return`
  omi2     `\\boxed{`: the number in the LAST `\\boxed{...}`
  gsm8k    `####`: the number on the rest of the LAST `####` line (checked last)
Answers are exact: an int when integral, else a Fraction in lowest terms, never a float. A written
number may be `-$1,234.5`, `\\$5`, `.5`, `12.`, `3/4` or `\\frac{3}{4}` (also `\\dfrac`).

Grammar of the interpreter (one statement per line, evaluated while it is parsed; values are exact
Fractions, `//` and `%` floor as in Python, x/0 and unassigned names give no answer):
  stmt  := NAME '=' expr | 'return' expr | 'print' '(' expr ')' | expr
  expr  := term (('+' | '-') term)*
  term  := unary (('*' | '/' | '//' | '%') unary)*
  unary := ('-' | '+') unary | power
  power := atom ['**' unary]                  # right-assoc, -2**2 == -4 as in Python
  atom  := INT | DECIMAL | NAME | '(' expr ')'
"""

import keyword
import operator
from fractions import Fraction

FORMATS = ("tinygsm", "omi1", "omi2", "gsm8k")
NO_FORMAT = "none"
ALL_FORMATS = (*FORMATS, NO_FORMAT)  # what a response's format can come out as

MAX_CODE_CHARS = 4000    # longest code block / function we will look at
MAX_STATEMENTS = 64      # statements per block or function body
MAX_DEPTH = 32           # nesting of parentheses, unary signs and `**`
MAX_DIGITS = 30          # digits in one literal (int or decimal)
MAX_VALUE = 10**18       # bound on |numerator| and denominator of every intermediate value
MAX_EXPONENT = 64        # largest exponent allowed on the right of `**`
MAX_BOXED_CHARS = 100    # longest `\boxed{...}` content or `#### N` line we parse

Answer = int | Fraction  # see the docstring: an int when integral, else a Fraction

_DIGITS = "0123456789"
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + _DIGITS
_SPACE = " \t\r\f"  # what Python's tokenizer treats as blanks inside a line
_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul,
           "/": operator.truediv, "//": operator.floordiv, "%": operator.mod}

class VerifyError(Exception):
    """Any reason to give no answer. Raised inside, caught at the public boundary only."""

def _check(v):
    # every value passes here, so a chain of * or + can never build a huge integer
    if abs(v.numerator) > MAX_VALUE or v.denominator > MAX_VALUE:
        raise VerifyError("value too large")
    return v

def _decimal(whole, frac):
    # built by hand from ASCII digits: int() would take '1_000' or '١٢', Fraction(str) '1e5'
    if (whole + frac).strip(_DIGITS) or not 0 < len(whole + frac) <= MAX_DIGITS:
        raise VerifyError("not a decimal number, or too many digits")
    return Fraction(int(whole + frac), 10 ** len(frac))

def _number(s):
    """A literal of the interpreter: digits with an optional '.' (12, 1.5, .5, 12.)."""
    whole, _, frac = s.partition(".")
    if not frac and whole[:1] == "0" and whole.strip("0"):
        raise VerifyError("a leading zero (Python rejects 012)")
    return _check(_decimal(whole, frac))

def _arith(op, a, b):
    if op in ("/", "//", "%") and b == 0:
        raise VerifyError("division by zero")
    return _check(Fraction(_BINOPS[op](a, b)))  # Fraction(): a // b comes back as an int

def _pow(a, b):
    if b.denominator != 1 or not 0 <= b <= MAX_EXPONENT:
        raise VerifyError("exponent must be a small non-negative integer")
    # |x| >= 2**(bit_length - 1), so this proves the overflow without computing anything
    bits = max(abs(a.numerator).bit_length(), a.denominator.bit_length()) - 1
    if bits * int(b) > MAX_VALUE.bit_length():
        raise VerifyError("power too large")
    return _check(a ** int(b))

def _exact(v: Fraction) -> Answer:
    return v.numerator if v.denominator == 1 else v

def _is_name(s):
    return s[:1].isidentifier() and not s.strip(_NAME_CHARS) and not keyword.iskeyword(s)

def _skip(line, j, chars):
    while j < len(line) and line[j] in chars:
        j += 1
    return j

def _lex(line):
    """One line -> tokens ('num', Fraction) | ('name', str) | ('op', str)."""
    toks, i = [], 0
    while i < len(line):
        c, j = line[i], i + 1
        if c in _DIGITS or (c == "." and j < len(line) and line[j] in _DIGITS):
            j = _skip(line, i, _DIGITS)
            if line[j:j + 1] == ".":
                j = _skip(line, j + 1, _DIGITS)
            toks.append(("num", _number(line[i:j])))
        elif c in _NAME_START:
            j = _skip(line, i, _NAME_CHARS)
            toks.append(("name", line[i:j]))
        elif c in "+-*/%()=":
            j += line[i:i + 2] in ("**", "//")  # the two-character operators
            toks.append(("op", line[i:j]))
        elif c not in _SPACE:  # strings, brackets, dots, colons, commas, unicode: not allowed
            raise VerifyError(f"unexpected character {c!r}")
        i = j
    return toks

class _Expr:
    """Recursive descent over one line's tokens; evaluates as it parses (no AST needed)."""

    def __init__(self, toks, env):
        self.toks, self.i, self.env, self.depth = toks, 0, env, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take_op(self, ops):
        kind, val = self.peek()
        if kind == "op" and val in ops:
            self.i += 1
            return val
        return None

    def expr(self):
        v = self.term()
        while (op := self.take_op(("+", "-"))):
            v = _arith(op, v, self.term())
        return v

    def term(self):
        v = self.unary()
        while (op := self.take_op(("*", "/", "//", "%"))):
            v = _arith(op, v, self.unary())
        return v

    def unary(self):
        # every nesting (parentheses, signs, **) passes through here: one place for the bound
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise VerifyError("nesting too deep")
        op = self.take_op(("-", "+"))
        v = (-self.unary() if op == "-" else self.unary()) if op else self.power()
        self.depth -= 1
        return v

    def power(self):
        base = self.atom()
        return _pow(base, self.unary()) if self.take_op(("**",)) else base

    def atom(self):
        kind, val = self.peek()
        self.i += 1
        if kind == "num":
            return val
        if kind == "name" and val in self.env:
            return self.env[val]
        if (kind, val) == ("op", "("):
            v = self.expr()
            if self.take_op((")",)):
                return v
        raise VerifyError(f"unexpected token {val!r} (or unknown name, or missing ')')")

    def finish(self, v):
        if self.i != len(self.toks):
            raise VerifyError("unexpected trailing tokens")
        return v

def _strip_comment(line):
    return line.partition("#")[0]  # there are no strings in the whitelist: any '#' is a comment

def _statement(line, env, in_function):
    """Run one statement; returns (kind, value), kind in return / assign / print / expr."""
    p = _Expr(_lex(_strip_comment(line)), env)
    first, second = p.toks[:1], p.toks[1:2]
    if in_function and first == [("name", "return")]:  # elsewhere `return` is an unknown name
        p.i = 1
        return "return", p.finish(p.expr())
    if second == [("op", "=")] and first[0][0] == "name":
        if not _is_name(first[0][1]):
            raise VerifyError("cannot assign to a keyword")
        p.i = 2
        env[first[0][1]] = v = p.finish(p.expr())
        return "assign", v
    if first == [("name", "print")] and second == [("op", "(")]:
        p.i = 1
        return "print", p.finish(p.atom())  # atom() reads exactly '(' expr ')'
    return "expr", p.finish(p.expr())

def _run_block(code):
    # split("\n"), not splitlines(): Python does not end a line on \x0c, \x1c, \u2028...
    lines = [l for l in code[:MAX_CODE_CHARS + 1].split("\n") if _strip_comment(l).strip(_SPACE)]
    if len(code) > MAX_CODE_CHARS or not lines or len(lines) > MAX_STATEMENTS:
        raise VerifyError("code too long, empty, or too many statements")
    env = {}
    for line in lines:
        if line[0] in _SPACE:
            raise VerifyError("unexpected indent")
        _, last = _statement(line, env, in_function=False)
    return last

def _function_body(code):
    """The statements of the function that `code` starts with (docstring and comments out)."""
    lines = code[:MAX_CODE_CHARS + 1].split("\n")  # the slice bounds the work on huge text
    h = _strip_comment(lines[0]).strip(_SPACE)  # the def line: `def name():` or `def name() -> NAME:`
    paren = h.find("(")
    name, rest = h[4:paren].strip(_SPACE), h[paren:-1].replace(" ", "")
    ok_rest = rest == "()" or (rest.startswith("()->") and _is_name(rest[4:]))
    if not (h.startswith("def ") and h.endswith(":") and paren > 4 and _is_name(name) and ok_rest):
        raise VerifyError("bad def line")
    body, indent, doc, first = [], None, None, True
    for line in lines[1:]:
        raw = line.strip(_SPACE)
        if not doc:  # (inside a docstring any text and any indentation is fine)
            if raw == "" or raw[0] == "#":  # Python ignores the indentation of these lines
                continue
            if line[0] not in _SPACE:  # back at column 0: the function has ended
                break
            ind = line[:len(line) - len(line.lstrip(_SPACE))]
            indent = indent or ind
            if ind != indent:
                raise VerifyError("inconsistent indentation")
            if not (first and raw[:3] in ('"""', "'''")):
                body.append(raw)
                first = False
                continue
            doc, line, first = raw[:3], raw[3:], False  # a docstring opens; may close below
        if doc in line:  # it closes on the first quote; only a comment may follow
            if _strip_comment(line[line.find(doc) + 3:]).strip(_SPACE):
                raise VerifyError("text after docstring")
            doc = None
    else:  # never back at column 0: all of the (sliced) text is the function
        if len(code) > MAX_CODE_CHARS:
            raise VerifyError("function too long")
    if doc or len(body) > MAX_STATEMENTS:
        raise VerifyError("unclosed docstring or too many statements")
    return body

def _run_function(code):
    env = {}
    for stmt in _function_body(code):
        kind, v = _statement(stmt, env, in_function=True)
        if kind == "return":
            return v
    raise VerifyError("no return")

def _unsigned(s):
    whole, _, frac = s.strip().partition(".")
    groups = whole.split(",")  # thousands commas: 1,234 but not 12,34 nor ,123
    if len(groups) > 1 and (not 0 < len(groups[0]) < 4 or {len(g) for g in groups[1:]} != {3}):
        raise VerifyError("misplaced thousands comma")
    return _decimal("".join(groups), frac)

def _parse_number(s):
    """' -$1,234.5 ', '3/4', '\\frac{3}{4}' -> an exact Answer (see the docstring), else raises."""
    s = s.strip()[:MAX_BOXED_CHARS + 1]
    neg, s = s[:1] == "-", s.removeprefix("-").lstrip()
    s = (s[2:] if s.startswith("\\$") else s.removeprefix("$")).lstrip()  # $5 or LaTeX \$5
    if not neg and s.startswith("-"):  # $-5
        neg, s = True, s[1:].lstrip()
    for latex in ("\\frac{", "\\dfrac{"):
        if s.startswith(latex) and s.endswith("}"):
            s = s[len(latex):-1].replace("}{", "/", 1)
    top, slash, bottom = s.partition("/")
    value = _arith("/", _unsigned(top), _unsigned(bottom)) if slash else _check(_unsigned(top))
    return _exact(-value if neg else value)

def _last_boxed(text):
    start, depth = text.rfind("\\boxed{") + len("\\boxed{"), 1
    for j in range(start, min(len(text), start + MAX_BOXED_CHARS)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:  # braces are matched, so \boxed{\frac{1}{2}} is read whole (and fails)
            return text[start:j]
    raise VerifyError("unclosed \\boxed{")

def _llm_code(text):
    start = text.find("<llm-code>") + len("<llm-code>")
    end = text.find("</llm-code>", start, start + MAX_CODE_CHARS + len("</llm-code>"))
    # no closing tag (near enough): take the rest, cut just past the length bound
    return text[start:end] if end >= 0 else text[start:start + MAX_CODE_CHARS + 1]

def _safe(fn):
    try:
        return fn()
    except (VerifyError, RecursionError):  # RecursionError: last resort, if called deep
        return None

def run_block(code: str) -> Answer | None:
    return _safe(lambda: _exact(_run_block(code)))

def run_function(code: str) -> Answer | None:
    return _safe(lambda: _exact(_run_function(code)))

def detect_format(text: str) -> str:
    if "<llm-code>" in text:
        return "omi1"
    if text.startswith("def ") or "\ndef " in text:
        return "tinygsm"
    if "\\boxed{" in text:
        return "omi2"
    return "gsm8k" if "####" in text else NO_FORMAT

def extract_answer(text: str) -> tuple[str, Answer | None]:
    """(format, answer) of a model response; answer is an exact Answer or None, never raises."""
    fmt = detect_format(text) if isinstance(text, str) else NO_FORMAT
    if fmt == "omi1":
        return fmt, run_block(_llm_code(text))
    if fmt == "tinygsm":
        i = 0 if text.startswith("def ") else text.find("\ndef ") + 1
        return fmt, run_function(text[i:i + MAX_CODE_CHARS + 1])
    if fmt == "omi2":
        return fmt, _safe(lambda: _parse_number(_last_boxed(text)))
    if fmt == "gsm8k":
        return fmt, parse_gsm8k_answer(text)
    return NO_FORMAT, None

def parse_gsm8k_answer(text: str) -> Answer | None:
    """The number N of the last `#### N` line (how GSM8K solutions end), or None."""
    i = text.rfind("####") if isinstance(text, str) else -1
    line = text[i + 4:i + 4 + MAX_BOXED_CHARS + 1].partition("\n")[0] if i >= 0 else ""
    return _safe(lambda: _parse_number(line))

def is_correct(text: str, gold: Answer) -> bool:
    """The binary RL reward: the extracted answer equals the gold one exactly."""
    _, answer = extract_answer(text)
    # a float gold is refused: it is not exact (0.1 is not 1/10)
    return answer is not None and isinstance(gold, (int, Fraction)) and answer == gold
