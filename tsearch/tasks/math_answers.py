"""Final answers of math word problems: extraction and exact equivalence.

Two kinds of answers, one entry point, :func:`score`:

* ``kind="gsm8k"``: a number. A completion states its final answer after
  ``####`` (the rest of that line, GSM8K's own format), in ``\\boxed{...}``, or
  as "The answer is N" / "The final answer is N". Numbers are compared
  exactly as rationals (:class:`fractions.Fraction`), after removing
  thousands separators (``1,000``), ``$``, ``%``, trailing unit words
  (``18 dollars``), LaTeX dressing (``\\$``, ``\\text{...}``,
  ``\\frac{a}{b}``), so ``18 == 18.0 == $18.00`` and ``1/2 == 0.5``.
* ``kind="math"``: a LaTeX expression in ``\\boxed{...}`` (MATH, MATH-500),
  compared with math-verify (fractions, roots, intervals, tuples, sets,
  matrices, units, degrees, percent, plain text answers).

**Two final answers** score 0: a completion whose final answers (every
``####`` line, every ``\\boxed{}``, every "The answer is N", in the kinds
that read them) are not all equivalent to each other states two different
answers and earns nothing, even if one of them is right. Repeating the same
answer (``The answer is 18.`` then ``#### 18``) is fine. A completion with
no final answer, an unparsable one (``#### eighteen``, ``\\boxed{`` without
its ``}``) or anything that makes a parser fail scores 0; :func:`score`
never raises on its inputs.

Threads: everything here is pure Python and thread-safe. math-verify's own
timeouts use ``signal.alarm``, which only works on the main thread, so on
the main thread each parse and comparison gets ``timeout_s`` seconds and off
it (a JAX host callback, a thread pool) they run without an alarm. Either
way, expressions that could make sympy compute for minutes (a power tower
such as ``10^{10^{10}}``, an exponent over 9999, the factorial of a number
over 999 or of a bracket, more than 500 characters, unbalanced or deeply
nested brackets) are refused and score 0
before math-verify sees them; an alarm cannot interrupt sympy's big-integer
arithmetic, so this guard is what bounds the time off the main thread too.

Example::

  from tsearch.tasks import math_answers as ma

  ma.score("She makes 9 * 2 = $18.\\n#### 18", "18")             # 1.0
  ma.score("The answer is $1,000.00.", "1000")                  # 1.0
  ma.score("#### 18\\n#### 19", "18")                            # 0.0 (two answers)
  ma.score("so $x = \\\\boxed{\\\\dfrac{\\\\sqrt2}{2}}$", "\\\\frac{1}{\\\\sqrt{2}}",
           kind="math")                                         # 1.0
  ma.score("\\\\boxed{(1,2]}", "[1,2]", kind="math")                # 0.0
"""
from __future__ import annotations

import fractions
import functools
import logging
import re
import threading

KINDS = ("gsm8k", "math")
MAX_ANSWER_CHARS = 500
DEFAULT_TIMEOUT_S = 5

# A numeric "The answer is N" (only numbers: prose after "the answer is" is
# not a final answer in GSM8K's sense).
_NUMBER = r"[-+\u2212]?\s*(?:\\\$|\$)?\s*[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_ANSWER_IS = re.compile(
    r"\bthe\s+(?:final\s+)?answer\s+is\s*[:=]?\s*(?:\\\(|\$\$?)?\s*(" + _NUMBER + r"(?:\s*\\?%)?)"
    # then at most unit words and the end of the sentence: not '15 gallons * 8'
    r"(?=[ \t]*(?:[A-Za-z][A-Za-z \t]*)?(?:[.!?;,)$\n]|\\\)|$))",
    re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_PLAIN_NUMBER = re.compile(
    r"(?P<sign>[-+])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?%?\s*(?P<unit>[A-Za-z][A-Za-z\s.'/\u00b2\u00b3-]*)?")


def _check_kind(kind):
  if kind not in KINDS:
    raise ValueError(f"Unknown answer kind {kind!r}; use one of {KINDS} "
                     "('gsm8k': numbers, 'math': LaTeX in \\boxed{}).")


# ---------------------------------------------------------------- extraction
def _braced(text: str, start: int) -> tuple[str | None, int]:
  """Content of the ``{...}`` opening at ``text[start]``, and the end index.

  Returns ``(None, len(text))`` when the braces never close.
  """
  depth, i = 0, start
  while i < len(text):
    c = text[i]
    if c == "\\":  # an escaped character (\\{, \\}) opens or closes nothing
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return text[start + 1:i], i + 1
    i += 1
  return None, len(text)


def boxed_answers(text: str) -> list[str | None]:
  """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order.

  ``\\boxed 5`` (no braces) gives ``"5"``; a box whose braces never close
  gives ``None`` (an unparsable answer).

  >>> boxed_answers(r"so \\boxed{\\frac{1}{2}} or \\boxed 3")
  ['\\\\frac{1}{2}', '3']
  """
  out, pos = [], 0
  while True:
    m = _BOXED.search(text, pos)
    if m is None:
      return out
    i = m.end()
    while i < len(text) and text[i] in " \t":
      i += 1
    if i < len(text) and text[i] == "{":
      content, pos = _braced(text, i)
      out.append(content)
    else:
      tail = re.match(r"[^\s$]+", text[i:])
      out.append(tail.group(0) if tail else None)
      pos = i + (tail.end() if tail else 0)
      if tail is None:
        return out


def final_answers(text: str, *, kind: str = "gsm8k") -> list[str | None]:
  """Every final answer a completion states, in order of appearance.

  ``gsm8k``: ``####`` lines, ``\\boxed{}`` and numeric "The answer is N";
  ``math``: ``\\boxed{}`` only. ``None`` marks a box that never closes.

  >>> final_answers("The answer is 18.\\n#### 18")
  ['18', '18']
  """
  _check_kind(kind)
  if kind == "math":
    return boxed_answers(text)
  found = [(m.start(), m.group(1)) for m in _HASHES.finditer(text)]
  found += [(m.start(), m.group(1)) for m in _ANSWER_IS.finditer(text)]
  pos = 0
  boxes = boxed_answers(text)
  for content in boxes:  # positions of boxes, for the order only
    m = _BOXED.search(text, pos)
    found.append((m.start(), content))
    pos = m.end()
  return [a for _, a in sorted(found, key=lambda t: t[0])]


# ------------------------------------------------------------ GSM8K numbers
_LATEX_SUBS = (
    (re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)"), r"\1/\2"),  # \frac12
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\(?:text|textbf|mathrm|mbox|textit|mathbf)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,;:! ]|~|\\quad|\\qquad"), " "),
    (re.compile(r"\\(?:left|right)\b"), ""),
    (re.compile(r"\\?\$|\\\(|\\\)|\\\[|\\\]|\*\*|\\%"), lambda m: "%" if m.group(0) == "\\%" else ""),
    (re.compile(r"\^\s*\{?\\circ\}?|\u00b0"), ""),
)


_SIMPLE_INT = re.compile(r"\s*(-?\d{1,18})\s*")


@functools.lru_cache(maxsize=1 << 16)
def parse_number(text: str | None) -> fractions.Fraction | None:
  """The exact value of a GSM8K-style number, or None if it is not one.

  >>> parse_number("$1,000.50 dollars"), parse_number(r"\\frac{3}{4}")
  (Fraction(2001, 2), Fraction(3, 4))
  >>> parse_number("18 or 19") is None
  True
  """
  if text is None or len(text) > MAX_ANSWER_CHARS:
    return None
  simple = _SIMPLE_INT.fullmatch(text)
  if simple:
    return fractions.Fraction(int(simple.group(1)))
  s = text.replace("\u2212", "-")
  for pattern, repl in _LATEX_SUBS:
    s = pattern.sub(repl, s)
  s = s.strip().rstrip(".").strip()
  s = re.sub(r"\(\s*([-+]?[\d.,]+)\s*\)/\(\s*([\d.]+)\s*\)", r"\1/\2", s)  # from \frac
  s = re.sub(r"^\((.*)\)$", r"\1", s)  # a bracketed whole
  s = re.sub(r"\s*([-+/%])\s*", r"\1", s)
  s = re.sub(r"^([-+])?\s*([-+])", lambda m: "-" if (m.group(1) == "-") != (m.group(2) == "-") else "+", s)
  m = _PLAIN_NUMBER.fullmatch(s.strip())
  if m is None:
    return None
  try:
    value = fractions.Fraction(m.group("num").replace(",", ""))
    if m.group("den") is not None:
      den = fractions.Fraction(m.group("den"))
      if den == 0:
        return None
      value /= den
  except (ValueError, ZeroDivisionError):
    return None
  return -value if m.group("sign") == "-" else value


# ----------------------------------------------------------- MATH (LaTeX)
def is_safe_latex(expr: str) -> bool:
  """False for expressions that could keep sympy busy for minutes.

  Power towers, exponents with more than 4 digits, more than 8 powers, the
  factorial of a bracket or of a number over 999, more than 500 characters,
  unbalanced or over 12 deep brackets, nothing at all.

  >>> is_safe_latex(r"2^{2023}"), is_safe_latex(r"10^{10^{10}}")
  (True, False)
  """
  if len(expr) > MAX_ANSWER_CHARS or expr.count("^") > 8 or not expr.strip():
    return False
  # Brackets: intervals mix ( and ], but opened and closed must balance.
  depth = 0
  for c in expr:
    depth += (c in "([{") - (c in ")]}")
    if depth < 0 or depth > 12:
      return False
  if depth:
    return False
  s = expr.replace("**", "^")
  for m in re.finditer(r"\^\s*", s):
    i = m.end()
    if i < len(s) and s[i] == "{":
      exponent, _ = _braced(s, i)
      if exponent is None:
        return False
    else:
      exponent = s[i:i + 1]
      tail = re.match(r"\d+", s[i:])
      if tail:
        exponent = tail.group(0)
    if "^" in exponent or sum(map(len, re.findall(r"\d+", exponent))) > 4:
      return False
  if re.search(r"(\d{4,}|[)}\]])\s*!", s):
    return False
  return True


def _on_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def _norm_text(s: str) -> str:
  s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = re.sub(r"\\(?:left|right)\b|\\[,;:! ]|\s|\$", "", s)
  return s.strip(".").lower()


@functools.lru_cache(maxsize=4096)
def _parse_latex(expr: str, timeout_s: int | None) -> tuple:
  import math_verify  # pylint: disable=g-import-not-at-top  (import is slow)
  from math_verify import LatexExtractionConfig  # pylint: disable=g-import-not-at-top
  _quiet_math_verify()
  return tuple(math_verify.parse(
      "\\boxed{" + expr + "}", extraction_config=[LatexExtractionConfig()],
      parsing_timeout=timeout_s))


@functools.cache
def _quiet_math_verify():
  # math-verify warns once that no timeout is set; that is by design here.
  for name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(name).setLevel(logging.ERROR)


def math_equal(gold: str, answer: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
  """Whether two LaTeX answers (contents of ``\\boxed{}``) are equivalent.

  math-verify decides; answers it cannot parse into mathematics (plain
  words) are compared as normalised text. Never raises.

  >>> math_equal(r"\\frac{1}{2}", "0.5"), math_equal("(1,2)", "(2,1)")
  (True, False)
  """
  try:
    if not (is_safe_latex(gold) and is_safe_latex(answer)):
      return False
    if _norm_text(gold) == _norm_text(answer):
      return bool(_norm_text(gold))
    import math_verify  # pylint: disable=g-import-not-at-top
    timeout = timeout_s if _on_main_thread() else None
    g, a = _parse_latex(gold, timeout), _parse_latex(answer, timeout)
    if not g or not a:
      return False
    return bool(math_verify.verify(list(g), list(a), timeout_seconds=timeout))
  except BaseException as e:  # pylint: disable=broad-except
    # math-verify's TimeoutException derives from BaseException.
    if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
      raise
    return False


# ------------------------------------------------------------------ scoring
def _same(a, b, kind, timeout_s):
  if kind == "gsm8k":
    x, y = parse_number(a), parse_number(b)
    return x is not None and x == y
  if a is None or b is None:
    return False
  return math_equal(a, b, timeout_s=timeout_s)


def extract_answer(completion: str, *, kind: str = "gsm8k",
                   timeout_s: int = DEFAULT_TIMEOUT_S) -> str | None:
  """The completion's one final answer, or None (no answer, two different
  answers, or an unparsable one).

  >>> extract_answer("so 9 * 2 = 18.\\n#### 18"), extract_answer("#### 1\\n#### 2")
  ('18', None)
  """
  _check_kind(kind)
  answers = final_answers(completion, kind=kind)
  if not answers or any(a is None for a in answers):
    return None
  last = answers[-1]
  if kind == "gsm8k" and parse_number(last) is None:
    return None
  for other in answers[:-1]:
    if other != last and not _same(other, last, kind, timeout_s):
      return None
  return last


def score(completion: str, gold: str, *, kind: str = "gsm8k",
          timeout_s: int = DEFAULT_TIMEOUT_S) -> float:
  """1.0 if ``completion`` states exactly one final answer, equal to ``gold``.

  Args:
    completion: model text (or a reference solution).
    gold: the reference final answer: a number for ``gsm8k`` (``"1,080"``),
      the LaTeX ``answer`` field for ``math`` (``"\\frac{\\sqrt2}{2}"``).
    kind: ``"gsm8k"`` or ``"math"`` (see the module docstring).
    timeout_s: math-verify's per-call limit on the main thread.

  Returns:
    1.0 or 0.0. Never raises for any strings (a ValueError only for an
    unknown ``kind``).
  """
  _check_kind(kind)
  try:
    if not isinstance(completion, str) or not isinstance(gold, str):
      return 0.0
    answer = extract_answer(completion, kind=kind, timeout_s=timeout_s)
    if answer is None:
      return 0.0
    gold = gold.strip()
    if kind == "math":
      gold = gold.strip("$").strip()
    return 1.0 if _same(gold, answer, kind, timeout_s) else 0.0
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
      raise
    return 0.0
