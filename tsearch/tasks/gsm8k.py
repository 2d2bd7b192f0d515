"""GSM8K: grade-school math word problems in natural language (host side).

The official files ship with the package (``tsearch/tasks/data/gsm8k/``,
MIT license beside them): ``train.jsonl`` (7,473 problems) and
``test.jsonl`` (1,319), one ``{"question", "answer"}`` object a line, where
``answer`` is the reference solution: one reasoning step a line, calculator
annotations ``<<48/2=24>>``, and a last line ``#### <final answer>``.

Splits: ``test`` is the official test file; ``validation`` is
``num_validation`` (default 500) problems of the official train file chosen
by ``seed``, and ``train`` is the rest of it, so the two never share a
problem and together are the whole file. Every split keeps the file's order.

Training targets drop the calculator annotations by default
(:func:`target_text`, ``keep_calculator=True`` keeps them). Prompts:
:func:`fewshot_prompt` (plain text, ``k`` train examples fixed by ``seed``)
and :func:`chat_messages` (for ``models.Tokenizer.apply_chat_template``).
Scoring is :func:`tsearch.tasks.math_answers.score` with ``kind="gsm8k"``.
Everything here is pure Python and thread-safe (loads are cached).

Example::

  from tsearch.tasks import gsm8k, math_answers

  test = gsm8k.load_split("test")                  # 1319 Problems
  p = test[0]
  p.answer                                         # '18'
  gsm8k.target_text(p).splitlines()[-1]            # '#### 18'
  prompt = gsm8k.fewshot_prompt(p.question, k=4)   # ends with 'Answer:'
  messages = gsm8k.chat_messages(p.question, k=2)  # [{'role': 'system', ...}, ...]
  math_answers.score(gsm8k.target_text(p), p.answer)   # 1.0
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
import re
from typing import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
NUM_VALIDATION = 500
DEFAULT_SYSTEM = ("Solve the math word problem. Reason step by step, one step "
                  "a line, and end with a last line '#### <number>' that gives "
                  "the final answer as a number.")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One GSM8K problem."""
  question: str
  solution: str  # reference solution as in the file (annotations, '#### a')
  answer: str  # the final answer after '####', e.g. '1,080'
  index: int  # 0-based line number in its official file


def data_path(name: str) -> str:
  """Path of a shipped file: ``train.jsonl``, ``test.jsonl`` or ``LICENSE``."""
  return os.fspath(importlib.resources.files("tsearch.tasks") / "data" / "gsm8k" / name)


def load_jsonl(path: str, *, fields: Sequence[str]) -> list[dict]:
  """Objects of a jsonl file, each checked to have string ``fields``.

  Raises:
    FileNotFoundError: no file at ``path`` (the message names it).
    ValueError: a line that is not a JSON object with those fields; the
      message names the file and the 1-based line number.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No data file at {path!r}. Pass the path of a jsonl file (one JSON "
        f"object a line with fields {list(fields)}), or reinstall tsearch if "
        "this is one of its shipped GSM8K files.")
  rows = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column "
                         f"{e.colno}); each line must be one JSON object.") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object with fields "
                         f"{list(fields)}, got {type(row).__name__}.")
      missing = [k for k in fields if not isinstance(row.get(k), str)]
      if missing:
        raise ValueError(f"{path}:{lineno}: missing or non-string field(s) "
                         f"{missing}; each object needs {list(fields)}.")
      rows.append(row)
  return rows


def final_answer_of(solution: str) -> str:
  """The text after the reference solution's ``####`` (one, on its own line)."""
  hits = re.findall(r"^####[ \t]*(.*?)\s*$", solution, re.MULTILINE)
  if len(hits) != 1:
    raise ValueError(f"A GSM8K reference solution needs exactly one '#### <answer>' "
                     f"line, found {len(hits)} in {solution!r}.")
  return hits[0]


def load_file(path: str) -> list[Problem]:
  """Problems of a GSM8K-format jsonl file (``question``, ``answer``)."""
  rows = load_jsonl(path, fields=("question", "answer"))
  out = []
  for i, row in enumerate(rows):
    try:
      answer = final_answer_of(row["answer"])
    except ValueError as e:
      raise ValueError(f"{os.fspath(path)}: problem {i}: {e}") from None
    out.append(Problem(row["question"], row["answer"], answer, i))
  return out


@functools.lru_cache(maxsize=None)
def _official(name: str) -> tuple[Problem, ...]:
  return tuple(load_file(data_path(f"{name}.jsonl")))


def split_indices(num_examples: int, *, seed: int = 0,
                  num_validation: int = NUM_VALIDATION) -> dict[str, np.ndarray]:
  """``{"train": idx, "validation": idx}`` of the official train file, sorted."""
  if not 0 <= num_validation <= num_examples:
    raise ValueError(f"num_validation must be in [0, {num_examples}], got {num_validation}.")
  order = np.random.default_rng(seed).permutation(num_examples)
  return dict(train=np.sort(order[num_validation:]),
              validation=np.sort(order[:num_validation]))


def load_split(split: str, *, seed: int = 0,
               num_validation: int = NUM_VALIDATION) -> list[Problem]:
  """The shipped problems of ``split`` (``train``, ``validation``, ``test``)."""
  if split not in SPLITS:
    raise ValueError(f"Unknown GSM8K split {split!r}; use one of {SPLITS}.")
  if split == "test":
    return list(_official("test"))
  train = _official("train")
  idx = split_indices(len(train), seed=seed, num_validation=num_validation)[split]
  return [train[i] for i in idx]


def strip_calculator(text: str) -> str:
  """Removes calculator annotations: ``'2*3=<<2*3=6>>6'`` -> ``'2*3=6'``."""
  return _CALCULATOR.sub("", text)


def target_text(problem: Problem, *, keep_calculator: bool = False) -> str:
  """The training target: the reference solution, annotations removed."""
  text = problem.solution if keep_calculator else strip_calculator(problem.solution)
  return text.strip()


def solution_steps(solution: str) -> list[str]:
  """Steps of a solution: its non-empty lines (the ``####`` line is the last)."""
  return [line for line in solution.split("\n") if line.strip()]


def fewshot_examples(k: int, *, seed: int = 0) -> list[Problem]:
  """``k`` problems of the train split (never validation or test), fixed by
  ``seed``; the first ``k`` of the same seed's ``k + 1``."""
  train = _official("train")
  idx = split_indices(len(train), num_validation=NUM_VALIDATION)["train"]
  if not 0 <= k <= len(idx):
    raise ValueError(f"k must be in [0, {len(idx)}], got {k}.")
  # A fixed order per seed, so k examples are the first k of any larger k.
  order = np.random.default_rng([seed, 8]).permutation(idx)
  return [train[i] for i in order[:k]]


def fewshot_prompt(question: str, *, k: int = 8, seed: int = 0,
                   keep_calculator: bool = False,
                   examples: Sequence[Problem] | None = None) -> str:
  """Plain few-shot text ending with ``"Question: ...\\nAnswer:"``.

  >>> print(fewshot_prompt("What is 2 + 3?", k=0))
  Question: What is 2 + 3?
  Answer:
  """
  shots = fewshot_examples(k, seed=seed) if examples is None else list(examples)
  parts = [f"Question: {p.question}\nAnswer: "
           f"{target_text(p, keep_calculator=keep_calculator)}\n\n" for p in shots]
  return "".join(parts) + f"Question: {question}\nAnswer:"


def chat_messages(question: str, *, k: int = 0, seed: int = 0,
                  system: str | None = DEFAULT_SYSTEM, keep_calculator: bool = False,
                  examples: Sequence[Problem] | None = None) -> list[dict[str, str]]:
  """Messages for ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.

  A system message (None: none), ``k`` few-shot user/assistant turns, then
  the question as the last user turn.

  >>> [m["role"] for m in chat_messages("What is 2 + 3?", k=1)]
  ['system', 'user', 'assistant', 'user']
  """
  shots = fewshot_examples(k, seed=seed) if examples is None else list(examples)
  messages = [dict(role="system", content=system)] if system else []
  for p in shots:
    messages += [dict(role="user", content=p.question),
                 dict(role="assistant", content=target_text(p, keep_calculator=keep_calculator))]
  return messages + [dict(role="user", content=question)]
