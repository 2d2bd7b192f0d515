"""Countdown and the Game of 24, with an exact rational verifier on device.

Prompt: the numbers, a colon, the target, a newline::

    <bos>4 9 10 13:24\\n

Answer: ``num_numbers - 1`` steps ``a op b = c`` (no spaces), separated by
the step delimiter ``"\\n"`` and ended by EOS; every input number and every
earlier result is used exactly once, and the last result must equal the
target::

    13-9=4\\n10-4=6\\n4*6=24<eos>

Number notation: a non-negative rational in lowest terms, written ``n`` when
it is an integer and ``(n/d)`` (parentheses, ``d >= 2``, ``gcd(n, d) = 1``)
otherwise, with no leading zeros and at most ``MAX_NUMBER_DIGITS`` digits per
part, e.g. ``6/(1/4)=24`` or ``1-(3/4)=(1/4)``. A step whose true result is
negative or does not fit this notation can therefore never be verified, and
division by zero is an invalid step (never a crash).

The verifier works on int32 numerator/denominator pairs normalised by a gcd
(``lax.while_loop``); parts of written numbers are at most 9999, so every
product in a step stays below 2**31.

Problems are tuples ``(numbers: tuple[int, ...], target: int)``.
"""
from __future__ import annotations

import csv
import functools
import importlib.resources
import itertools
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tsearch.tasks import base
from tsearch.tasks import countdown_solver
from tsearch.tasks.countdown_solver import (MAX_NUMBER, MAX_NUMBER_DIGITS, apply_op,
                                            exact_solve, format_number, solve, steps_text,
                                            writable)
from tsearch.tasks import vocab as V

_OPS = "+-*/"
_OP_TOKENS = (V.PLUS, V.MINUS, V.TIMES, V.DIVIDE)


@chex.dataclass(frozen=True)
class CountdownState:
  tokens: chex.Array  # [B, T] int32
  length: chex.Array  # [B] int32
  valid: chex.Array  # [B] bool
  done: chex.Array  # [B] bool
  num_n: chex.Array  # [B, M] int32 numerators, M = 2 * num_numbers - 1
  num_d: chex.Array  # [B, M] int32 denominators (>= 1)
  avail: chex.Array  # [B, M] bool, not yet used
  target: chex.Array  # [B] int32
  prompt_ok: chex.Array  # [B] bool, the prompt parsed
  steps: chex.Array  # [B] int32 completed steps
  field: chex.Array  # [B] int32 0: first operand, 1: second, 2: result
  lex: chex.Array  # [B] int32 number lexer, see _grammar_mask
  cur_n: chex.Array  # [B] int32 number being read: integer or numerator
  cur_d: chex.Array  # [B] int32 denominator being read
  ndig: chex.Array  # [B] int32 digits in the current part
  a_n: chex.Array  # [B] int32
  a_d: chex.Array  # [B] int32
  op: chex.Array  # [B] int32 operator token
  b_n: chex.Array  # [B] int32
  b_d: chex.Array  # [B] int32
  last_n: chex.Array  # [B] int32 last written result
  last_d: chex.Array  # [B] int32


def gcd(a: chex.Array, b: chex.Array) -> chex.Array:
  """Elementwise gcd of non-negative int32 arrays (``gcd(0, 0) == 0``)."""
  def cond(c):
    return jnp.any(c[1] != 0)

  def body(c):
    x, y = c
    safe = jnp.where(y == 0, 1, y)
    # x, y >= 0: lax.rem is ``%`` without jnp's sign fix-ups.
    return jnp.where(y == 0, x, y), jnp.where(y == 0, 0, jax.lax.rem(x, safe))
  return jax.lax.while_loop(cond, body, (jnp.abs(a), jnp.abs(b)))[0]


def exact_step(an, ad, op, bn, bd):
  """``a op b`` on int32 fractions ``an/ad``, ``bn/bd``, in lowest terms.

  ``op`` is a token id (``V.PLUS``, ``V.MINUS``, ``V.TIMES``, ``V.DIVIDE``).
  Returns ``(n, d)``: ``d == 0`` on a division by zero, ``n < 0`` for a
  negative result. The verifier's step check and the strict rules
  (``train.strict``) both compute results with it.
  """
  rn = jnp.select([op == V.PLUS, op == V.MINUS, op == V.TIMES],
                  [an * bd + bn * ad, an * bd - bn * ad, an * bn], an * bd)
  rd = jnp.where(op == V.DIVIDE, ad * bn, ad * bd)
  g = jnp.maximum(gcd(rn, rd), 1)
  # g divides both exactly, so truncating division is exact division.
  return jax.lax.div(rn, g), jax.lax.div(rd, g)


def take_first(avail, num_n, num_d, xn, xd):
  """Removes ``x = xn/xd`` ``[B]`` from the available slots ``avail [B, M]``
  of ``num_n/num_d [B, M]``: ``(found [B], avail without x's first
  available slot [B, M])``."""
  hit = avail & (num_n == xn[:, None]) & (num_d == xd[:, None])
  first = jax.nn.one_hot(jnp.argmax(hit, 1), hit.shape[1], dtype=bool)
  found = hit.any(1)
  return found, avail & ~(first & found[:, None])


# Lexer states of the number being read.
_START, _INT, _LPAREN, _NUMER, _SLASH, _DENOM, _CLOSED = range(7)


class Countdown(base.Task):
  """Reach a target with ``num_numbers`` numbers and ``+ - * /``.

  Args:
    num_numbers: numbers in a problem, 2..8 (default 4); the answer has
      ``num_numbers - 1`` steps.
    min_number, max_number: range of sampled input numbers (at most 9999).
    max_target: largest sampled target (at most 9999).
    integer_only: sampled problems have integer intermediate results (the
      verifier accepts fractional ones regardless).
    max_answer_length: ``T``; default ``16 * (num_numbers - 1)``.
    constrain: grammar-constrained ``legal_mask``.
  """
  _name = "countdown"

  def __init__(self, *, num_numbers: int = 4, min_number: int = 1,
               max_number: int = 99, max_target: int = 999,
               integer_only: bool = True, max_answer_length: int | None = None,
               constrain: bool = True):
    if not 2 <= num_numbers <= 8:
      raise ValueError(f"num_numbers must be in [2, 8], got {num_numbers}.")
    if not 1 <= min_number <= max_number <= MAX_NUMBER:
      raise ValueError(f"Need 1 <= min_number <= max_number <= {MAX_NUMBER}, got "
                       f"min_number={min_number}, max_number={max_number}.")
    if not 1 <= max_target <= MAX_NUMBER:
      raise ValueError(f"max_target must be in [1, {MAX_NUMBER}], got {max_target}.")
    if max_answer_length is None:
      max_answer_length = 16 * (num_numbers - 1)
    if max_answer_length < 6 * (num_numbers - 1):
      raise ValueError(f"max_answer_length={max_answer_length} is too short for "
                       f"{num_numbers - 1} steps; use at least {6 * (num_numbers - 1)}.")
    self.name = self._name
    self.vocab = V.ARITH_VOCAB
    self.num_numbers, self.min_number, self.max_number = num_numbers, min_number, max_number
    self.max_target, self.integer_only = max_target, integer_only
    self.constrain = constrain
    self.max_answer_length = max_answer_length
    self.max_prompt_length = 1 + (MAX_NUMBER_DIGITS + 1) * (num_numbers + 1)

  def options(self):
    return dict(num_numbers=self.num_numbers, min_number=self.min_number,
                max_number=self.max_number, max_target=self.max_target,
                integer_only=self.integer_only,
                max_answer_length=self.max_answer_length, constrain=self.constrain)

  @property
  def num_moves(self) -> int:
    return self.num_numbers - 1

  def solver_traces(self, seed: int, batch_size: int, *, max_len: int,
                    negative_fraction: float = 0.5,
                    split: str = "train") -> dict:
    """Warm-start traces from the exact solver; see
    :func:`tsearch.tasks.countdown_solver.solver_traces`."""
    return countdown_solver.solver_traces(
        self, seed, batch_size, max_len=max_len,
        negative_fraction=negative_fraction, split=split)

  # ---------------------------------------------------------------- host side
  def _check_problem(self, problem):
    numbers, target = problem
    if len(numbers) != self.num_numbers:
      raise ValueError(f"This task takes {self.num_numbers} numbers, got {numbers}.")
    for x in tuple(numbers) + (target,):
      if not 0 <= x <= MAX_NUMBER or int(x) != x:
        raise ValueError(f"Numbers and target must be integers in [0, {MAX_NUMBER}], "
                         f"got {x} in {problem}.")

  def prompt_text(self, problem) -> str:
    self._check_problem(problem)
    numbers, target = problem
    return " ".join(str(int(x)) for x in numbers) + f":{int(target)}\n"

  def solution_text(self, problem) -> str:
    self._check_problem(problem)
    steps = solve(problem[0], problem[1])
    if steps is None:
      raise ValueError(f"Problem {problem} has no solution.")
    return steps_text(steps)

  def sample_problems(self, seed: int, num: int) -> list:
    """Random problems that are solvable by construction (random steps)."""
    return [p for p, _ in self.sample_with_solutions(seed, num)]

  def sample_with_solutions(self, seed: int, num: int) -> list:
    """``num`` pairs ``(problem, answer_text)``; the answer is the trace that
    generated the problem (so it is a valid reference solution)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < num:
      numbers = [int(x) for x in rng.integers(self.min_number, self.max_number + 1,
                                              self.num_numbers)]
      pool = [Fraction(x) for x in numbers]
      steps = []
      while len(pool) > 1:
        i, j = rng.choice(len(pool), 2, replace=False)
        a, b = pool[i], pool[j]
        choices = []
        for op in _OPS:
          for x, y in ((a, b), (b, a)):
            c = apply_op(x, op, y)
            if writable(c) and not (self.integer_only and c.denominator != 1):
              choices.append((x, op, y, c))
        if not choices:
          break
        step = choices[rng.integers(len(choices))]
        steps.append(step)
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [step[3]]
      if len(pool) != 1 or pool[0].denominator != 1 or not 1 <= pool[0] <= self.max_target:
        continue
      out.append(((tuple(numbers), int(pool[0])), steps_text(steps)))
    return out

  # --------------------------------------------------------------- device side
  def _init(self, prompt, base_state):
    b, p = prompt.shape
    n = self.num_numbers
    zeros = jnp.zeros((b,), jnp.int32)
    tokens = jnp.concatenate([prompt, jnp.zeros((b, 1), jnp.int32)], 1)

    def scan_fn(c, tok):
      cur, ndig, count, colon, target, have_t, ok, nums = c
      is_digit = (tok >= V.DIGIT0) & (tok <= V.DIGIT0 + 9)
      end = ~is_digit & (ndig > 0)
      ok &= ~(end & (ndig > MAX_NUMBER_DIGITS))
      put = end & ~colon
      nums = jnp.where(put[:, None] & (jnp.arange(n)[None] == count[:, None]),
                       cur[:, None], nums)
      ok &= ~(put & (count >= n))
      count = count + put
      target = jnp.where(end & colon, cur, target)
      ok &= ~(end & colon & have_t)
      have_t |= end & colon
      ok &= ~((tok == V.COLON) & colon)
      colon |= tok == V.COLON
      ok &= is_digit | (tok == V.SPACE) | (tok == V.COLON) | (tok == V.NEWLINE) | (tok == V.PAD)
      cur = jnp.where(is_digit, jnp.minimum(cur, 10 ** 6) * 10 + tok - V.DIGIT0, 0)
      ndig = jnp.where(is_digit, ndig + 1, 0)
      return (cur, ndig, count, colon, target, have_t, ok, nums), None
    init = (zeros, zeros, zeros, jnp.zeros((b,), bool), zeros, jnp.zeros((b,), bool),
            prompt[:, 0] == V.BOS, jnp.zeros((b, n), jnp.int32))
    (_, _, count, _, target, have_t, ok, nums), _ = jax.lax.scan(
        scan_fn, init, tokens[:, 1:].T)
    m = 2 * n - 1
    num_n = jnp.zeros((b, m), jnp.int32).at[:, :n].set(nums)
    return CountdownState(
        **base_state, num_n=num_n, num_d=jnp.ones((b, m), jnp.int32),
        avail=jnp.broadcast_to(jnp.arange(m) < n, (b, m)), target=target,
        prompt_ok=ok & have_t & (count == n), steps=zeros, field=zeros,
        lex=zeros, cur_n=zeros, cur_d=zeros, ndig=zeros, a_n=zeros, a_d=zeros + 1,
        op=zeros, b_n=zeros, b_d=zeros + 1, last_n=zeros, last_d=zeros + 1)

  def _grammar_mask(self, s):
    v = self.vocab.size

    def toks(*ids):
      return jnp.zeros((v,), bool).at[jnp.array(ids)].set(True)[None]
    digits = toks(*range(V.DIGIT0, V.DIGIT0 + 10))
    nonzero = toks(*range(V.DIGIT0 + 1, V.DIGIT0 + 10))
    last_step = s.steps + 1 == self.num_numbers - 1
    terms = jnp.where((s.field == 0)[:, None], toks(*_OP_TOKENS),
                      jnp.where((s.field == 1)[:, None], toks(V.EQUALS),
                                jnp.where(last_step[:, None], toks(V.EOS),
                                          toks(V.NEWLINE))))
    more = (s.ndig < MAX_NUMBER_DIGITS)[:, None]
    lone_zero = ((s.lex == _INT) & (s.cur_n == 0))[:, None]
    lex = s.lex[:, None]
    return jnp.select(
        [lex == _START, lex == _INT, (lex == _LPAREN) | (lex == _SLASH),
         lex == _NUMER, lex == _DENOM],
        [digits | toks(V.LPAREN),
         (digits & more & ~lone_zero) | terms,
         nonzero,
         (digits & more) | toks(V.DIVIDE),
         (digits & more) | toks(V.RPAREN)],
        terms)

  def _update(self, s, tok):
    is_digit = (tok >= V.DIGIT0) & (tok <= V.DIGIT0 + 9)
    d = tok - V.DIGIT0
    in_int = (s.lex == _START) | (s.lex == _INT)
    in_num = (s.lex == _LPAREN) | (s.lex == _NUMER)
    in_den = (s.lex == _SLASH) | (s.lex == _DENOM)
    # Clamp so garbage after an error cannot overflow (the answer is already
    # invalid then: the grammar allows at most MAX_NUMBER_DIGITS digits).
    grow = lambda x: jnp.minimum(x, MAX_NUMBER) * 10 + d
    cur_n = jnp.where(is_digit & (in_int | in_num), grow(s.cur_n), s.cur_n)
    cur_d = jnp.where(is_digit & in_den, grow(s.cur_d), s.cur_d)
    lex = jnp.where(is_digit, jnp.where(in_int, _INT, jnp.where(in_num, _NUMER, _DENOM)),
                    s.lex)
    ndig = jnp.where(is_digit, s.ndig + 1, s.ndig)
    lex = jnp.where(tok == V.LPAREN, _LPAREN, lex)
    lex = jnp.where((tok == V.DIVIDE) & (s.lex == _NUMER), _SLASH, lex)
    lex = jnp.where(tok == V.RPAREN, _CLOSED, lex)
    ndig = jnp.where((tok == V.LPAREN) | (tok == V.DIVIDE), 0, ndig)
    cur_n = jnp.where(tok == V.LPAREN, 0, cur_n)
    cur_d = jnp.where(tok == V.LPAREN, 0, cur_d)

    # A complete number followed by its terminator.
    complete = (s.lex == _INT) | (s.lex == _CLOSED)
    is_op = (tok == V.PLUS) | (tok == V.MINUS) | (tok == V.TIMES) | (tok == V.DIVIDE)
    end_a = complete & (s.field == 0) & is_op
    end_b = complete & (s.field == 1) & (tok == V.EQUALS)
    end_c = complete & (s.field == 2) & ((tok == V.NEWLINE) | (tok == V.EOS))
    ended = end_a | end_b | end_c
    val_n = s.cur_n
    val_d = jnp.where(s.lex == _INT, 1, s.cur_d)
    canonical = (s.lex == _INT) | ((val_d >= 2) & (gcd(val_n, val_d) == 1))
    valid = s.valid & ~(ended & ~canonical)

    # Check a finished step: operands available, arithmetic exact.
    found_a, avail = take_first(s.avail, s.num_n, s.num_d, s.a_n, s.a_d)
    found_b, avail = take_first(avail, s.num_n, s.num_d, s.b_n, s.b_d)
    rn, rd = exact_step(s.a_n, s.a_d, s.op, s.b_n, s.b_d)
    match = (rn == val_n) & (rd == val_d) & (rn >= 0)
    step_ok = found_a & found_b & (rd != 0) & match
    valid = valid & ~(end_c & ~step_ok)
    m = s.num_n.shape[1]
    new_slot = end_c[:, None] & (jnp.arange(m)[None] == (self.num_numbers + s.steps)[:, None])
    return s.replace(
        valid=valid,
        lex=jnp.where(ended, _START, lex),
        cur_n=jnp.where(ended, 0, cur_n), cur_d=jnp.where(ended, 0, cur_d),
        ndig=jnp.where(ended, 0, ndig),
        field=jnp.where(end_a, 1, jnp.where(end_b, 2, jnp.where(end_c, 0, s.field))),
        a_n=jnp.where(end_a, val_n, s.a_n), a_d=jnp.where(end_a, val_d, s.a_d),
        op=jnp.where(end_a, tok, s.op),
        b_n=jnp.where(end_b, val_n, s.b_n), b_d=jnp.where(end_b, val_d, s.b_d),
        avail=jnp.where(end_c[:, None], avail, s.avail) | new_slot,
        num_n=jnp.where(new_slot, val_n[:, None], s.num_n),
        num_d=jnp.where(new_slot, val_d[:, None], s.num_d),
        steps=s.steps + end_c,
        last_n=jnp.where(end_c, val_n, s.last_n), last_d=jnp.where(end_c, val_d, s.last_d))

  def _reward(self, s):
    return (s.done & s.valid & s.prompt_ok & (s.steps == self.num_numbers - 1)
            & (s.last_n == s.target) & (s.last_d == 1))


# ------------------------------------------------------------------ Game of 24
@functools.lru_cache(maxsize=1)
def game24_puzzles() -> tuple[tuple[int, tuple[int, ...]], ...]:
  """The 1362 ranked puzzles of ``24.csv`` as ``(rank, numbers)``."""
  path = importlib.resources.files("tsearch.tasks") / "data" / "24.csv"
  with path.open() as f:
    rows = list(csv.DictReader(f))
  return tuple((int(r["Rank"]), tuple(int(x) for x in r["Puzzles"].split()))
               for r in rows)


def game24_splits(*, num_validation: int = 100, seed: int = 0) -> dict:
  """Tree-of-Thoughts splits of the puzzle list, as lists of ``(rank, numbers)``.

  ``test`` is ranks 901-1000 (100 puzzles); ``validation`` is a fixed random
  subset (from ``seed``) of the other ranks; ``train`` is the rest.
  """
  puzzles = game24_puzzles()
  test = [p for p in puzzles if 901 <= p[0] <= 1000]
  rest = [p for p in puzzles if not 901 <= p[0] <= 1000]
  if not 0 <= num_validation <= len(rest):
    raise ValueError(f"num_validation must be in [0, {len(rest)}], got {num_validation}.")
  pick = set(np.random.default_rng(seed).choice(len(rest), num_validation,
                                                replace=False).tolist())
  return dict(train=[p for i, p in enumerate(rest) if i not in pick],
              validation=[p for i, p in enumerate(rest) if i in pick], test=test)


@functools.lru_cache(maxsize=4)
def game24_extended_puzzles(max_number: int = 20) -> tuple[tuple[int, ...], ...]:
  """Solvable Game of 24 puzzles beyond the ranked list: every sorted
  4-number multiset of ``1..max_number`` with a number above 13 (so none of
  ``24.csv``, whose numbers are 1..13, and none of its test ranks) from
  which 24 can be made. Search-and-learn can draw from it
  (``split="extended"``): the verifier scores these puzzles, and no
  reference solution of them is ever used."""
  if not 14 <= max_number <= MAX_NUMBER:
    raise ValueError(f"max_number must be in [14, {MAX_NUMBER}], got {max_number}.")
  out = []
  for nums in itertools.combinations_with_replacement(range(1, max_number + 1), 4):
    if nums[-1] > 13 and exact_solve(tuple(Fraction(x) for x in nums),
                                Fraction(24), False) is not None:
      out.append(nums)
  return tuple(out)


class Game24(Countdown):
  """Countdown with 4 numbers (1..13) and target 24, over ``24.csv``.

  Problems are ``(numbers, 24)``; ``sample_problems`` draws from the train
  split by default; :func:`game24_splits` gives the Tree-of-Thoughts splits.
  """
  _name = "game24"
  fixed_splits = True
  # Splits beyond game24_splits' for search steps (train.data.ExampleStream):
  # puzzles outside the list, scored by the verifier only.
  extra_splits = ("extended", "train+extended")
  dataset_size_defaults = dict(num_validation=100)

  def __init__(self, *, max_answer_length: int | None = None, constrain: bool = True):
    super().__init__(num_numbers=4, min_number=1, max_number=13, max_target=24,
                     integer_only=False, max_answer_length=max_answer_length,
                     constrain=constrain)
    self.max_prompt_length = 1 + 3 * 4 + 3  # "13 13 13 13:24\n"

  def options(self):
    return dict(max_answer_length=self.max_answer_length, constrain=self.constrain)

  def sample_problems(self, seed: int, num: int, *, split: str = "train") -> list:
    """Puzzles drawn from one :func:`game24_splits` split (default ``train``,
    so training never sees the test ranks 901-1000); ``split="all"`` draws
    from the whole list; ``"extended"`` from :func:`game24_extended_puzzles`
    (none in the list), ``"train+extended"`` each row from either at even
    odds."""
    rng = np.random.default_rng(seed)
    if split == "train+extended":  # each row from either, with probability 1/2
      train = self.sample_problems(int(rng.integers(2**31)), num)
      extended = self.sample_problems(int(rng.integers(2**31)), num, split="extended")
      return [t if pick else e for t, e, pick in zip(train, extended, rng.random(num) < 0.5)]
    if split == "all":
      puzzles = [p for _, p in game24_puzzles()]
    elif split in ("train", "validation", "test"):
      puzzles = [p for _, p in game24_splits()[split]]
    elif split == "extended":
      puzzles = game24_extended_puzzles()
    else:
      raise ValueError("split must be train, validation, test, all, extended or "
                       f"train+extended, got {split!r}.")
    idx = rng.choice(len(puzzles), num, replace=num > len(puzzles))
    return [(tuple(puzzles[i]), 24) for i in idx]

  def eval_problems(self, num: int | None = None, *, split: str = "test") -> list:
    """The split's puzzles in the list's order (at most ``num``): for
    ``test`` the Tree-of-Thoughts test ranks 901-1000."""
    if split not in ("validation", "test"):
      raise ValueError(f"Evaluate on 'validation' or 'test', got {split!r}.")
    puzzles = [(tuple(nums), 24) for _, nums in game24_splits()[split]]
    return puzzles if num is None else puzzles[:num]

  def split_problems(self, *, seed: int, num_validation: int) -> dict:
    return {k: [(tuple(nums), 24) for _, nums in v] for k, v in game24_splits(
        num_validation=num_validation, seed=seed).items()}

  def sample_with_solutions(self, seed: int, num: int, *, split: str = "train") -> list:
    return [(p, self.solution_text(p)) for p in self.sample_problems(seed, num, split=split)]
