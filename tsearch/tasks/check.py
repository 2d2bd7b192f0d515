"""Checks an answer checker against a dataset's own reference solutions.

Every reference solution must score 1 and every corrupted copy of it 0::

  python -m tsearch.tasks.check gsm8k --split test --data_dir /tmp/tsearch_data
  python -m tsearch.tasks.check gsm8k --split train            # the shipped files
  python -m tsearch.tasks.check math --split test --file math500.jsonl

The last line is ``check task=<task> split=<split> n=<n> gold_reward=<g>
wrong_reward=<w>`` (means over problems and over corruptions, 3 decimals);
the exit status is 0 when ``gold_reward=1.000 wrong_reward=0.000``, else 1.

Sources: ``gsm8k`` reads the TFDS dataset under ``--data_dir`` (built by
``python -m tsearch.data build gsm8k``), or with no ``--data_dir`` the
shipped files, or ``--file`` a GSM8K-format jsonl (``question``,
``answer``). ``math`` reads ``--file``, a MATH-500-format jsonl (``problem``,
``solution`` with ``\\boxed{answer}``, ``answer``); ``--split`` only labels it.

Gold completions: the reference solution with and without calculator
annotations (GSM8K), the ``solution`` field (MATH). Corruptions of each:

* ``wrong``: the final answer replaced by a wrong one (GSM8K: the answer
  plus 1; MATH: another problem's answer that math-verify finds different).
* ``missing``: no final answer (GSM8K: the ``####`` line and any "The answer
  is N" line removed; MATH: ``\\boxed{x}`` unwrapped to ``x``).
* ``two``: two different final answers: a second ``#### <wrong>`` line
  (GSM8K) or a second ``\\boxed{<wrong>}`` (MATH) after the right one.
* ``garbage_answer``: the final answer replaced by unparsable text.
* ``garbage``: the whole completion replaced by random characters.
"""
from __future__ import annotations

import argparse
import dataclasses
import fractions
import random
import re
import sys
from typing import Sequence

from tsearch.tasks import gsm8k
from tsearch.tasks import math_answers

TASKS = {"gsm8k": "gsm8k", "math": "math"}  # task -> answer kind
CORRUPTIONS = ("wrong", "missing", "two", "garbage_answer", "garbage")
_GARBAGE_CHARS = "{}()[]\\$^_#%&*!?<>|~`'\",.;:=+-/ 0123456789abcxyz\u2205\u00a7\u00bd"


@dataclasses.dataclass(frozen=True)
class Reference:
  """One problem to check: its reference completions and gold answer."""
  completions: tuple[str, ...]  # reference solutions (all must score 1)
  gold: str  # the final answer they state


@dataclasses.dataclass
class CheckResult:
  n: int
  gold_reward: float
  wrong_reward: float
  by_corruption: dict[str, float]
  failures: list[str]  # a few descriptions of what scored wrong

  def line(self, task: str, split: str) -> str:
    return (f"check task={task} split={split} n={self.n} gold_reward="
            f"{self.gold_reward:.3f} wrong_reward={self.wrong_reward:.3f}")


def _format_number(x: fractions.Fraction) -> str:
  return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _garbage(rng: random.Random) -> str:
  return "".join(rng.choices(_GARBAGE_CHARS, k=rng.randint(5, 40)))


def _replace_last_box(text: str, content: str) -> str:
  starts = [m.start() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
  if not starts:
    return text + f" \\boxed{{{content}}}"
  i = text.index("{", starts[-1])
  _, end = math_answers._braced(text, i)  # pylint: disable=protected-access
  return text[:i] + "{" + content + "}" + text[end:]


def _unbox(text: str) -> str:
  out = text
  while True:
    m = re.search(r"\\(?:boxed|fbox)\s*\{", out)
    if m is None:
      return out
    inner, end = math_answers._braced(out, m.end() - 1)  # pylint: disable=protected-access
    out = out[:m.start()] + (inner or "") + out[end:]


def _wrong_math(golds: Sequence[str], i: int) -> str:
  gold = golds[i]
  for j in range(1, min(len(golds), 8)):
    cand = golds[(i + j) % len(golds)]
    if cand.strip() and not math_answers.math_equal(gold, cand):
      return cand
  return f"{gold}+1"  # a one-problem file: a different (or unparsable) answer


def corruptions(ref: Reference, *, kind: str, wrong: str, rng: random.Random) -> dict[str, str]:
  """The corrupted completions of one reference (see the module docstring)."""
  text = ref.completions[0]
  if kind == "gsm8k":
    lines = text.split("\n")
    body = [l for l in lines if not math_answers.final_answers(l, kind="gsm8k")]
    return dict(
        wrong="\n".join(body + [f"#### {wrong}"]),
        missing="\n".join(body),
        two="\n".join(body + [f"#### {ref.gold}", f"#### {wrong}"]),
        garbage_answer="\n".join(body + [f"#### {_garbage(rng)}x"]),
        garbage=_garbage(rng))
  return dict(
      wrong=_replace_last_box(text, wrong),
      missing=_unbox(text),
      two=text + f"\nOr: $\\boxed{{{wrong}}}$",
      garbage_answer=_replace_last_box(text, "\\frac{}{)(" + _garbage(rng).replace("}", "")),
      garbage=_garbage(rng))


def check(refs: Sequence[Reference], *, kind: str, seed: int = 0,
          max_failures: int = 5) -> CheckResult:
  """Scores every reference and its corruptions with :func:`math_answers.score`.

  >>> r = check([Reference(("2 + 3 = 5\\n#### 5",), "5")], kind="gsm8k")
  >>> r.gold_reward, r.wrong_reward
  (1.0, 0.0)
  """
  rng = random.Random(seed)
  golds = [r.gold for r in refs]
  gold_sum, wrong_sum = 0.0, 0.0
  by = {c: 0.0 for c in CORRUPTIONS}
  failures = []
  for i, ref in enumerate(refs):
    g = [math_answers.score(c, ref.gold, kind=kind) for c in ref.completions]
    gold_sum += sum(g) / len(g)
    if min(g) < 1 and len(failures) < max_failures:
      failures.append(f"problem {i}: a reference scored {min(g)}: "
                      f"{ref.completions[g.index(min(g))][-200:]!r} (gold {ref.gold!r})")
    if kind == "gsm8k":
      value = math_answers.parse_number(ref.gold)
      wrong = _format_number(value + 1) if value is not None else "0"
    else:
      wrong = _wrong_math(golds, i)
    bad = corruptions(ref, kind=kind, wrong=wrong, rng=rng)
    for name, text in bad.items():
      s = math_answers.score(text, ref.gold, kind=kind)
      by[name] += s
      wrong_sum += s / len(bad)
      if s > 0 and len(failures) < max_failures:
        failures.append(f"problem {i}: corruption {name!r} scored {s}: {text[-200:]!r}")
  n = len(refs)
  if n == 0:
    raise ValueError("Nothing to check: the split or file has no problems.")
  return CheckResult(n=n, gold_reward=gold_sum / n, wrong_reward=wrong_sum / n,
                     by_corruption={k: v / n for k, v in by.items()}, failures=failures)


# ------------------------------------------------------------------ sources
def gsm8k_references(problems: Sequence[gsm8k.Problem]) -> list[Reference]:
  return [Reference((gsm8k.target_text(p), p.solution.strip()), p.answer)
          for p in problems]


def math_references(path: str) -> list[Reference]:
  """References of a MATH-500-format jsonl (``problem``, ``solution``, ``answer``)."""
  rows = gsm8k.load_jsonl(path, fields=("problem", "solution", "answer"))
  return [Reference((r["solution"],), r["answer"]) for r in rows]


def _gsm8k_from_tfds(data_dir: str, split: str) -> list[gsm8k.Problem]:
  from tsearch import text_data  # pylint: disable=g-import-not-at-top  (tfds is slow)
  source = text_data.data_source("gsm8k", data_dir, split)
  records = source.__getitems__(list(range(len(source))))
  return [gsm8k.Problem(r["question"].decode(), r["solution"].decode(),
                        r["answer"].decode(), int(r["index"])) for r in records]


def load_references(task: str, split: str, *, data_dir: str | None = None,
                    file: str | None = None) -> list[Reference]:
  """The references ``python -m tsearch.tasks.check`` scores."""
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; checkable tasks: {', '.join(TASKS)}.")
  if task == "math":
    if file is None:
      raise ValueError("Task 'math' needs --file: a MATH-500-format jsonl "
                       "(one {\"problem\", \"solution\", \"answer\"} object a line).")
    return math_references(file)
  if file is not None:
    return gsm8k_references(gsm8k.load_file(file))
  if data_dir is not None:
    return gsm8k_references(_gsm8k_from_tfds(data_dir, split))
  return gsm8k_references(gsm8k.load_split(split))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tsearch.tasks.check", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("task", help=f"one of {', '.join(TASKS)}")
  parser.add_argument("--split", default="test")
  parser.add_argument("--data_dir", default=None, help="where the TFDS dataset was built")
  parser.add_argument("--file", default=None, help="a jsonl file to check instead")
  parser.add_argument("--seed", type=int, default=0, help="seed of the garbage texts")
  args = parser.parse_args(argv)
  try:
    refs = load_references(args.task, args.split, data_dir=args.data_dir, file=args.file)
    result = check(refs, kind=TASKS[args.task], seed=args.seed)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for f in result.failures:
    print(f"  {f}")
  print("corruptions: " + " ".join(f"{k}={v:.3f}" for k, v in result.by_corruption.items()))
  print(result.line(args.task, args.split))
  return 0 if (result.gold_reward == 1.0 and result.wrong_reward == 0.0) else 1


if __name__ == "__main__":
  sys.exit(main())
