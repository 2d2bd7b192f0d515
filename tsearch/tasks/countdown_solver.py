"""The exact Countdown / Game of 24 solver, and warm-start traces from it.

Exact arithmetic over fractions in the tasks' notation (:func:`apply_op`,
:func:`writable`, :func:`format_number`); :func:`solve` finds one solution
(the reference answer ``Countdown.solution_text`` writes), :func:`all_solutions`
every derivation, :func:`solvable` whether numbers can still reach a target.

Warm-start traces (``Countdown.solver_traces``, ``warm_start.data =
"solver"``): each batch row is a training problem with its numbers in a
random order (the task's ``sample_problems``; the strict rules,
:mod:`tsearch.tasks.countdown_rules`, shuffle them), and either

* one of *all* its solutions, drawn at random (:func:`all_solutions`): a
  policy target (LM loss on the answer) whose every step boundary has value
  target 1; or
* a random legal derivation (random available pair, random operator with a
  writable result, ``num_numbers - 1`` steps): no policy loss; the value
  target at each step boundary is whether the numbers left can still reach
  the target (the reference solver decides; exact).

Values are trained at the boundaries the step-level search reads: the last
prompt token and the token that ends each step. Every row is a function of
(seed, step), so a resumed run sees the same data.
"""
from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

MAX_NUMBER_DIGITS = 4
MAX_NUMBER = 10 ** MAX_NUMBER_DIGITS - 1


def format_number(x: Fraction) -> str:
  """``n`` or ``(n/d)`` for a non-negative rational in lowest terms."""
  if x < 0:
    raise ValueError(f"Only non-negative numbers can be written, got {x}.")
  return str(x.numerator) if x.denominator == 1 else f"({x.numerator}/{x.denominator})"


def apply_op(a: Fraction, op: str, b: Fraction):
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  return None if b == 0 else a / b


def writable(x) -> bool:
  return (x is not None and x >= 0 and x.numerator <= MAX_NUMBER
          and x.denominator <= MAX_NUMBER)


def solve(numbers, target, *, integer_only: bool = False):
  """Reference solver: depth-first search over exact fractions.

  Args:
    numbers: the input numbers.
    target: the number to reach using every input exactly once.
    integer_only: only allow integer intermediate results.

  Returns:
    A list of steps ``(a, op, b, c)`` of Fractions, or None if no solution
    exists in the task's notation (non-negative, writable results).
  """
  return exact_solve(tuple(sorted(Fraction(x) for x in numbers)), Fraction(target),
                integer_only)


@functools.lru_cache(maxsize=200_000)
def exact_solve(nums: tuple, target: Fraction, integer_only: bool):
  if len(nums) == 1:
    return [] if nums[0] == target else None
  n = len(nums)
  for i in range(n):
    for j in range(i + 1, n):
      big, small = nums[j], nums[i]  # nums is sorted
      rest = nums[:i] + nums[i + 1:j] + nums[j + 1:]
      cands = [(big, "+", small), (big, "*", small), (big, "-", small),
               (big, "/", small), (small, "/", big)]
      for a, op, b in cands:
        c = apply_op(a, op, b)
        if not writable(c) or (integer_only and c.denominator != 1):
          continue
        sub = exact_solve(tuple(sorted(rest + (c,))), target, integer_only)
        if sub is not None:
          return [(a, op, b, c)] + sub
  return None


def steps_text(steps) -> str:
  """The answer text of solver steps (no EOS)."""
  return "\n".join(f"{format_number(a)}{op}{format_number(b)}={format_number(c)}"
                   for a, op, b, c in steps)





@functools.lru_cache(maxsize=100_000)
def _derivations(pool: tuple, target: Fraction) -> tuple:
  """All step lists ``((a, op, b, c), ...)`` from sorted ``pool`` to target."""
  if len(pool) == 1:
    return ((),) if pool[0] == target else ()
  out = []
  n = len(pool)
  for i in range(n):
    for j in range(n):
      if i == j or (j < i and pool[i] == pool[j]):
        continue
      a, b = pool[i], pool[j]
      rest = tuple(p for k, p in enumerate(pool) if k not in (i, j))
      for op in "+-*/":
        c = apply_op(a, op, b)
        if not writable(c):
          continue
        for tail in _derivations(tuple(sorted(rest + (c,))), target):
          out.append(((a, op, b, c),) + tail)
  return tuple(out)


def all_solutions(numbers, target) -> list[str]:
  """Answer texts (no EOS) of every derivation of ``target``; a step's
  operands appear in both orders where the result is the same number."""
  pool = tuple(sorted(Fraction(x) for x in numbers))
  texts = [steps_text(steps) for steps in _derivations(pool,
                                                          Fraction(target))]
  return list(dict.fromkeys(texts))  # equal numbers give equal texts


@functools.lru_cache(maxsize=200_000)
def solvable(pool: tuple, target: Fraction) -> bool:
  return exact_solve(pool, target, False) is not None


def legal_steps(pool) -> list[tuple[int, int, str, Fraction]]:
  """Every legal step ``(i, j, op, c)`` on ``pool``: ``pool[i] op pool[j] =
  c`` with a writable result, in (i, j, op) order."""
  out = []
  for i in range(len(pool)):
    for j in range(len(pool)):
      if i == j:
        continue
      for op in "+-*/":
        c = apply_op(pool[i], op, pool[j])
        if writable(c):
          out.append((i, j, op, c))
  return out


def after_step(pool, i: int, j: int, c) -> list:
  """The numbers left after the step ``pool[i] op pool[j] = c``."""
  return [p for k, p in enumerate(pool) if k not in (i, j)] + [c]


def step_candidates(pool) -> list[tuple[str, list]]:
  """``(step text, numbers left)`` of every legal step on ``pool``, in
  :func:`legal_steps` order."""
  return [(steps_text([(pool[i], op, pool[j], c)]),
           after_step(pool, i, j, c)) for i, j, op, c in legal_steps(pool)]


def first_step_keeps(numbers, answer: str, target) -> bool | None:
  """Whether the first step of ``answer`` (``"a op b=c"``, anything after
  a space or newline ignored and anything up to a colon: the numbers
  left; a first step taken back by a ``:`` line, ``task.retract``, is
  skipped) leaves ``target`` reachable; None if it is no legal step on
  ``numbers``."""
  pool = [Fraction(x) for x in numbers]
  lines = answer.split("\n")
  while len(lines) > 1 and lines[1] == ":":
    lines = lines[2:]
  first = lines[0].split(":")[-1].split(" ")[0]
  for text, left in step_candidates(pool):
    if text == first:
      return solvable(tuple(sorted(left)), Fraction(target))
  return None


def ranking_auc(labels, scores) -> float:
  """How often a positive's score is above a negative's (ties count half):
  0.5 is chance, 1 a perfect ranking."""
  labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
  if labels.all() or not labels.any():
    raise ValueError("ranking_auc needs both positive and negative labels.")
  pos, neg = scores[labels][:, None], scores[~labels][None]
  return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def random_step_keeps(numbers, target) -> float:
  """The share of legal first steps after which ``target`` is still
  reachable (what a uniformly random first step keeps)."""
  pool = [Fraction(x) for x in numbers]
  return float(np.mean([
      solvable(tuple(sorted(after_step(pool, i, j, c))), Fraction(target))
      for i, j, _, c in legal_steps(pool)]))


def random_derivation(numbers, target, rng):
  """A random legal derivation: ``(text, [solvable after each step])``."""
  pool = [Fraction(x) for x in numbers]
  steps, labels = [], []
  while len(pool) > 1:
    choices = legal_steps(pool)
    if not choices:  # e.g. two fractions whose results cannot be written
      return random_derivation(numbers, target, rng)
    i, j, op, c = choices[rng.integers(len(choices))]
    steps.append((pool[i], op, pool[j], c))
    pool = after_step(pool, i, j, c)
    labels.append(solvable(tuple(sorted(pool)), Fraction(target)))
  return steps_text(steps), labels


def _as_written(numbers, text: str) -> str:
  del numbers
  return text


@functools.lru_cache(maxsize=50_000)
def _fitting_solutions(task, annotate, numbers: tuple, target,
                       budget: int) -> tuple[str, ...]:
  """Every solution of ``numbers`` (sorted: the notation writes the numbers
  left sorted, so it does not depend on their order) in ``annotate``'s
  notation that encodes to fewer than ``budget`` tokens. Cached: the
  warm start draws the same puzzles thousands of times, and annotating all
  their solutions was most of a batch's host time."""
  return tuple(a for a in (annotate(numbers, t) for t in all_solutions(
      numbers, target)) if len(task.encode(a)) < budget)


def solver_traces(task, seed: int, batch_size: int, *, max_len: int,
                 negative_fraction: float = 0.5,
                 split: str = "train") -> dict[str, np.ndarray]:
  """A warm-start batch (the format of ``train.data.supervised_batch``,
  with a per-token ``value_target [B, T]``) of ``split``'s problems (a
  ``sample_problems`` split; Game of 24 also ``"train+extended"``); see the
  module docstring."""
  rng = np.random.default_rng(seed)
  kw = {} if split == "train" else dict(split=split)
  problems = task.sample_problems(int(rng.integers(2 ** 31)), batch_size, **kw)
  prompts, prompt_lengths = task.encode_prompts(problems)
  tokens = np.full((batch_size, max_len), task.pad_id, np.int32)
  token_mask = np.zeros((batch_size, max_len), np.float32)
  loss_mask = np.zeros_like(token_mask)
  value_mask = np.zeros_like(token_mask)
  value_target = np.zeros_like(token_mask)
  policy_weight = np.zeros((batch_size,), np.float32)
  boundary = (task.step_delimiter, task.eos_id)
  # Answers (EOS included) fit both the task and the trace: a config may
  # pad warm-start traces shorter than P + T (``data.max_len``) when only
  # its search steps write longer answers (configs/game24.py).
  budget = min(task.max_answer_length, max_len - task.max_prompt_length)
  fits = lambda text: len(task.encode(text)) < budget  # noqa: E731
  # The environment's notation (countdown_rules: the numbers left after steps).
  annotate = getattr(task, "annotate", _as_written)
  for r, (numbers, target) in enumerate(problems):
    if rng.random() < negative_fraction:
      text = None
      for _ in range(1000):
        text, labels = random_derivation(numbers, target, rng)
        text = annotate(numbers, text)
        if fits(text):
          break
      else:
        raise ValueError(
            f"No derivation of {numbers} fits in {budget - 1} answer tokens "
            f"(max_len={max_len}, prompts up to {task.max_prompt_length}); "
            "raise --config.data.max_len.")
      solved = labels[-1]
      labels = [solvable(tuple(sorted(Fraction(x) for x in numbers)),
                         Fraction(target))] + labels
    else:
      sols = _fitting_solutions(task, annotate, tuple(sorted(numbers)),
                                target, budget)
      if not sols:
        raise ValueError(
            f"Problem {(numbers, target)} has no solution of at most "
            f"{budget - 1} answer tokens (max_len={max_len}); raise "
            "--config.data.max_len if it has longer ones.")
      text = sols[rng.integers(len(sols))]
      solved, labels = True, [True] * task.num_numbers
    answer = task.encode(text) + [task.eos_id]
    pl, al = int(prompt_lengths[r]), len(answer)
    if pl + al > max_len:
      raise ValueError(f"Trace of {pl + al} tokens > max_len={max_len}.")
    tokens[r, :pl] = prompts[r, :pl]
    tokens[r, pl:pl + al] = answer
    token_mask[r, :pl + al] = 1.0
    if solved:
      loss_mask[r, pl:pl + al] = 1.0
      policy_weight[r] = 1.0
    ends = [pl - 1] + [pl + i for i, t in enumerate(answer) if t in boundary]
    for pos, label in zip(ends, labels):
      value_mask[r, pos] = 1.0
      value_target[r, pos] = float(label)
  return dict(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask,
              value_mask=value_mask, value_target=value_target,
              policy_weight=policy_weight)
