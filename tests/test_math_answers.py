"""Final-answer extraction and equivalence (tsearch.tasks.math_answers)."""
import concurrent.futures
import fractions
import time

import pytest

from tsearch.tasks import math_answers as ma

F = fractions.Fraction


@pytest.mark.parametrize("text,value", [
    ("18", F(18)), ("-18", F(-18)), ("$18", F(18)), ("-$18", F(-18)), ("$-18", F(-18)),
    ("1,080", F(1080)), ("109,200,000", F(109200000)), ("18.0", F(18)),
    ("18.00", F(18)), ("0.5", F(1, 2)), (".5", F(1, 2)), ("1/2", F(1, 2)),
    ("25%", F(25)), (r"25\%", F(25)), (r"\$18.00", F(18)), ("18 dollars", F(18)),
    ("18 dollars per day", F(18)), ("3.5 hours", F(7, 2)), (r"\frac{3}{4}", F(3, 4)),
    (r"\dfrac12", F(1, 2)), (r"-\frac{3}{4}", F(-3, 4)), (r"\text{18 dollars}", F(18)),
    ("**18**", F(18)), ("18.", F(18)), ("(18)", F(18)), ("\u22127", F(-7)),
    (r"\$1{,}000", F(1000)), (r"5^\circ", F(5)),
])
def test_parse_number(text, value):
  assert ma.parse_number(text) == value


@pytest.mark.parametrize("text", [
    "", "eighteen", "18 or 19", "1,00", "1 000", "1/0", "18-19", "$", "--", "#### 18",
    "18 dollars and 5 cents", r"\frac{1}{", "x"])
def test_parse_number_rejects(text):
  assert ma.parse_number(text) is None


@pytest.mark.parametrize("completion,gold,want", [
    ("9 * 2 = 18.\n#### 18", "18", 1.0),
    ("#### 18.00", "18", 1.0),
    ("#### $1,080", "1080", 1.0),
    ("#### 1080", "1,080", 1.0),
    ("#### 0.5", "1/2", 1.0),
    ("The answer is 18.", "18", 1.0),
    ("So the final answer is $18 dollars.", "18", 1.0),
    (r"The answer is $\boxed{18}$.", "18", 1.0),
    (r"\boxed{\$18}", "18", 1.0),
    ("The answer is 18.\n#### 18", "18", 1.0),  # the same answer twice: fine
    ("#### 18\n#### 18.0", "18", 1.0),
    ("#### 17", "18", 0.0),
    ("9 * 2 = 18", "18", 0.0),  # no final answer
    ("#### 18\n#### 19", "18", 0.0),  # two final answers
    ("The answer is 17.\n#### 18", "18", 0.0),  # two final answers
    (r"#### 18 \boxed{19}", "18", 0.0),
    ("#### eighteen", "18", 0.0),
    ("#### ", "18", 0.0),
    (r"\boxed{18", "18", 0.0),  # the box never closes
    ("The final answer is 15 gallons * 8 pints = 120 pints\n#### 120", "120", 1.0),
    ("The answer is 18 because 9 * 2 = 18", "18", 0.0),  # not a plain final answer
])
def test_score_gsm8k(completion, gold, want):
  assert ma.score(completion, gold) == want


# (a, b, equivalent); each pair is checked in both directions.
MATH_PAIRS = [
    (r"\frac{1}{2}", "0.5", True),
    (r"\dfrac{1}{2}", r"\frac12", True),
    (r"\tfrac{1}{2}", "1/2", True),
    (r"\frac{1}{2}", r"\frac{2}{4}", True),
    (r"\frac{1}{2}", r"\frac{1}{3}", False),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", True),
    (r"\frac{\sqrt2}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"\sqrt{2}", r"\sqrt{3}", False),
    (r"(1,2]", r"(1, 2]", True),
    (r"(1,2]", r"[1,2]", False),
    (r"(-\infty, 3)", r"(-\infty,3)", True),
    (r"[0,\infty)", r"(0,\infty)", False),
    (r"(2,-1)", r"(2, -1)", True),
    (r"(2,-1)", r"(-1,2)", False),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    (r"5\text{ cm}", "5", True),
    (r"5\text{ cm}", "6", False),
    (r"3\text{ inches}^2", "3", True),
    (r"30^\circ", "30", True),
    (r"30^\circ", "60", False),
    (r"25\%", "25", True),
    (r"10\%", r"\frac{1}{10}", True),
    (r"25\%", "35", False),
    ("-3", "-3.0", True),
    ("-3", "3", False),
    ("-5", r"-\frac{10}{2}", True),
    (r"\{1,2\}", r"\{2,1\}", True),
    (r"\{1,2\}", r"\{1,3\}", False),
    (r"\text{Monday}", "Monday", True),
    (r"\text{Monday}", r"\text{Tuesday}", False),
    (r"\text{(A)}", "A", True),
    (r"\text{even}", r"\text{odd}", False),
    (r"\text{Evelyn}", "Evelyn", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    ("1024", "2^{10}", True),
    ("1000", "1,000", True),
    (r"\pi", "3.14159", False),
    ("2", "2.0000001", False),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}", False),
    ("x=5", "5", True),
]


def test_math_table_size():
  assert len(MATH_PAIRS) >= 40
  assert sum(e for *_, e in MATH_PAIRS) >= 15 and sum(not e for *_, e in MATH_PAIRS) >= 15


@pytest.mark.parametrize("a,b,equivalent", MATH_PAIRS)
def test_math_pairs_both_directions(a, b, equivalent):
  want = 1.0 if equivalent else 0.0
  assert ma.score(f"so the answer is $\\boxed{{{b}}}$.", a, kind="math") == want
  assert ma.score(f"so the answer is $\\boxed{{{a}}}$.", b, kind="math") == want


@pytest.mark.parametrize("completion,gold,want", [
    (r"First $\boxed{3}$, then again $\boxed{3}$.", "3", 1.0),
    (r"$\boxed{\frac12}$ i.e. $\boxed{0.5}$", r"\frac{1}{2}", 1.0),
    (r"$\boxed{3}$ or $\boxed{4}$", "3", 0.0),  # two final answers
    ("the answer is 3", "3", 0.0),  # no box: no final answer for MATH
    ("#### 3", "3", 0.0),
    (r"$\fbox{3}$", "3", 1.0),
    (r"$\boxed 3$", "3", 1.0),
    (r"\boxed{\frac{1}{2}", r"\frac{1}{2}", 0.0),  # never closes
])
def test_score_math_extraction(completion, gold, want):
  assert ma.score(completion, gold, kind="math") == want


BAD = ["", "\x00\x01", "}{", r"\boxed{}", r"\boxed{)(}", r"\boxed{\frac{}{}}",
       r"\boxed{\sqrt[}{}", r"\boxed{" + "(" * 300 + "}", r"\boxed{\begin{pmatrix}}",
       r"\boxed{10^{10^{10}}}", r"\boxed{9^{99999}}", r"\boxed{(10^9)!}", r"\boxed{100000!}",
       r"\boxed{" + "1+" * 400 + "1}", "#### " + "9" * 600, "\\" * 50, "$$$$", "####",
       r"\boxed{\text{}}", "\ud800"]


@pytest.mark.parametrize("kind", ma.KINDS)
def test_unparsable_scores_zero_fast(kind):
  start = time.perf_counter()
  for text in BAD:
    # (For 'math', a gold answer that is itself unparsable text equals the
    # same text: plain-text answers compare as text.)
    for gold in ("5", r"\frac{1}{2}", "x+1") + ((text,) if kind == "gsm8k" else ()):
      assert ma.score(text, gold, kind=kind) == 0.0, (text, gold)
  assert ma.score(None, "5", kind=kind) == 0.0  # not a string
  assert ma.score("#### 5", None, kind=kind) == 0.0
  assert time.perf_counter() - start < 5


def test_guard():
  assert ma.is_safe_latex(r"2^{2023}") and ma.is_safe_latex(r"\frac{\sqrt2}{2}")
  for s in (r"10^{10^{10}}", r"2^{99999}", r"3**99999", r"(10^9)!", "12345!", "x" * 501):
    assert not ma.is_safe_latex(s), s


def test_unknown_kind_is_a_clear_error():
  with pytest.raises(ValueError, match="'gsm8k': numbers"):
    ma.score("#### 1", "1", kind="gsm")


def test_math_off_the_main_thread():
  # math-verify's signal alarms only work on the main thread; off it the
  # checker runs without them (and the guard refuses power towers).
  jobs = [(r"$\boxed{\frac{\sqrt2}{2}}$", r"\frac{1}{\sqrt{2}}", 1.0),
          (r"$\boxed{(1,2]}$", "[1,2]", 0.0),
          (r"$\boxed{10^{10^{10}}}$", "1", 0.0),
          ("#### 1,000", "1000", 1.0)] * 3
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    got = list(pool.map(
        lambda j: ma.score(j[0], j[1], kind="gsm8k" if j[0].startswith("#") else "math"),
        jobs))
  assert got == [w for *_, w in jobs]
