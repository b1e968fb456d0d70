"""
The answer verifier: finds the final integer answer in a model's response, safely.

Model output is untrusted text, so this file is a security boundary. It never hands that text
to Python (no exec, eval, compile, nor ast.parse, which compiles and can crash on deep nesting):
the code formats run in a tiny interpreter over a whitelist, and any input outside it gives
"no answer" (None), quickly; nothing here raises or hangs.

Formats, detected in this order (extract_answer returns (format, answer)):
  omi1     text has `<llm-code>`: run the FIRST `<llm-code>...</llm-code>` block (no closing
           tag: the rest of the text) as statements; the answer is the value of the last line
           (an expression, `print(expr)`, or the value of an assignment). The model's own
           `<llm-code-output>` and `\\boxed{}` are ignored: the verifier computes the value.
  tinygsm  a line starts with `def `: `def name():` or `def name() -> int:`, then an indented
           body (a docstring and `#` comments are skipped); the answer is the first `return`.
  omi2     text has `\\boxed{`: the LAST `\\boxed{...}` must hold an integer such as `17`,
           ` -5 `, `$1,234` or `12.0`. Here the model did the arithmetic itself, in tokens.
  none     anything else.
The answer is an int or None; a value that is not an integer (7/2) is None.

Grammar of the interpreter (one statement per line, evaluated while it is parsed):
  stmt  := NAME '=' expr | 'return' expr | 'print' '(' expr ')' | expr
  expr  := term (('+' | '-') term)*
  term  := unary (('*' | '/' | '//' | '%') unary)*
  unary := ('-' | '+') unary | power
  power := atom ['**' unary]                  # right-assoc, -2**2 == -4 as in Python
  atom  := INT | DECIMAL | NAME | '(' expr ')'
Values are exact Fractions (0.1 + 0.2 == 0.3 here, unlike Python floats); `/` is true division,
`//` and `%` floor as in Python; x/0 and unassigned names give no answer, and so does all that
is not in the grammar: strings, calls but print, attributes, brackets, loops, lambdas, imports.
As in Python, omi1 code starts at column 0 and a function body keeps one indentation.

Bounds (the constants below): code length, statements, nesting depth, literal digits, size of
every intermediate value (numerator and denominator), and `**` only with a small exponent whose
result size is estimated from bit lengths BEFORE it is computed, so `9**9**9**9` is instant.
Extraction uses str.find / rfind only (no regexes): 1 MB of text takes linear time.
"""

import keyword
import operator
from fractions import Fraction

FORMATS = ("tinygsm", "omi1", "omi2")
NO_FORMAT = "none"

MAX_CODE_CHARS = 4000    # longest code block / function we will look at
MAX_STATEMENTS = 64      # statements per block or function body
MAX_DEPTH = 32           # nesting of parentheses, unary signs and `**`
MAX_DIGITS = 30          # digits in one literal (int or decimal)
MAX_VALUE = 10**18       # bound on |numerator| and denominator of every intermediate value
MAX_EXPONENT = 64        # largest exponent allowed on the right of `**`
MAX_BOXED_CHARS = 100    # longest `\boxed{...}` content or `#### N` line we parse

_DIGITS = "0123456789"
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + _DIGITS
_SPACE = " \t\r\f"  # what Python's tokenizer treats as blanks inside a line
_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul,
           "/": operator.truediv, "//": operator.floordiv, "%": operator.mod}

class VerifyError(Exception):
    """Any reason to give no answer. Raised inside, caught at the public boundary only."""

# ----------------------------------------------------------------------------- values

def _check(v):
    # every value passes here, so a chain of * or + can never build a huge integer
    if abs(v.numerator) > MAX_VALUE or v.denominator > MAX_VALUE:
        raise VerifyError("value too large")
    return v

def _number(s):
    # ASCII digits with an optional '.', built by hand (Fraction(str) would accept 1e5, 1/2)
    whole, _, frac = s.partition(".")
    if len(whole) + len(frac) > MAX_DIGITS or (not frac and whole[:1] == "0" and whole.strip("0")):
        raise VerifyError("literal too long, or a leading zero (Python rejects 012)")
    return _check(Fraction(int(whole + frac or "0"), 10 ** len(frac)))

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

def _as_int(v):
    if v.denominator != 1:
        raise VerifyError("answer is not an integer")
    return int(v.numerator)

# ----------------------------------------------------------------------------- lexer

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

# ----------------------------------------------------------------------------- parser

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

# ----------------------------------------------------------------------------- programs

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

def _check_header(line):
    h = _strip_comment(line).strip(_SPACE)
    paren = h.find("(")
    name, rest = h[4:paren].strip(_SPACE), h[paren:-1].replace(" ", "")
    ok_rest = rest == "()" or (rest.startswith("()->") and _is_name(rest[4:]))
    if not (h.startswith("def ") and h.endswith(":") and paren > 4 and _is_name(name) and ok_rest):
        raise VerifyError("bad def line")

def _function_body(code):
    """The statements of the function that `code` starts with (docstring and comments out)."""
    lines = code[:MAX_CODE_CHARS + 1].split("\n")  # the slice bounds the work on huge text
    _check_header(lines[0])
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

def _parse_int(s):
    """' -$1,234.00 ' -> -1234; anything that is not an integer raises."""
    s = s.strip()[:MAX_BOXED_CHARS + 1]
    neg, s = s[:1] == "-", s.removeprefix("-").lstrip()
    s = (s[2:] if s.startswith("\\$") else s.removeprefix("$")).lstrip()  # $5 or LaTeX \$5
    if not neg and s.startswith("-"):  # $-5
        neg, s = True, s[1:].lstrip()
    whole, dot, frac = s.partition(".")
    g = whole.split(",")  # thousands commas: 1,234 but not 12,34
    bad_commas = len(g) > 1 and (not 0 < len(g[0]) < 4 or {len(x) for x in g[1:]} != {3})
    bad_frac = dot and (frac == "" or frac.strip("0"))  # only a trailing .0 (or .00) is allowed
    digits = "".join(g)
    if bad_commas or bad_frac or digits.strip(_DIGITS) or not 0 < len(digits) <= MAX_DIGITS:
        raise VerifyError("not an integer")
    return -int(digits) if neg else int(digits)

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

# ----------------------------------------------------------------------------- public API

def _safe(fn):
    try:
        return fn()
    except (VerifyError, RecursionError):  # RecursionError: last resort, if called deep
        return None

def run_block(code: str) -> int | None:
    """Value of the last line of a block of statements (the omi1 rule), or None."""
    return _safe(lambda: _as_int(_run_block(code)))

def run_function(code: str) -> int | None:
    """Value of the first `return` of the function that `code` starts with, or None."""
    return _safe(lambda: _as_int(_run_function(code)))

def detect_format(text: str) -> str:
    if "<llm-code>" in text:
        return "omi1"
    if text.startswith("def ") or "\ndef " in text:
        return "tinygsm"
    return "omi2" if "\\boxed{" in text else NO_FORMAT

def extract_answer(text: str) -> tuple[str, int | None]:
    """(format, answer) of a model response; answer is an int or None, never raises."""
    fmt = detect_format(text) if isinstance(text, str) else NO_FORMAT
    if fmt == "omi1":
        return fmt, run_block(_llm_code(text))
    if fmt == "tinygsm":
        i = 0 if text.startswith("def ") else text.find("\ndef ") + 1
        return fmt, run_function(text[i:i + MAX_CODE_CHARS + 1])
    if fmt == "omi2":
        return fmt, _safe(lambda: _parse_int(_last_boxed(text)))
    return NO_FORMAT, None

def parse_gsm8k_answer(text: str) -> int | None:
    """GSM8K gold solutions end with `#### N`; returns N as an int, or None."""
    i = text.rfind("####") if isinstance(text, str) else -1
    line = text[i + 4:i + 4 + MAX_BOXED_CHARS + 1].partition("\n")[0] if i >= 0 else ""
    return _safe(lambda: _parse_int(line))

def is_correct(text: str, gold: int) -> bool:
    """The binary RL reward: the extracted answer equals the gold integer."""
    _, answer = extract_answer(text)
    return answer is not None and isinstance(gold, int) and answer == gold
