"""Multi-digit addition and multiplication with an exact digit-level verifier.

Prompt ``"<bos>123*45="``, answer ``"5535<eos>"``: the decimal result without
leading zeros. The verifier recomputes the result digit by digit on device
(schoolbook product and carries in int32), so operands of up to
``MAX_SUPPORTED_DIGITS`` digits never overflow.

A problem is a tuple ``(a, op, b)`` of Python ints and ``"+"`` or ``"*"``.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tsearch.tasks import base
from tsearch.tasks import vocab as V

MAX_SUPPORTED_DIGITS = 32
OPS = ("+", "*")


@chex.dataclass(frozen=True)
class ArithmeticState:
  tokens: chex.Array  # [B, T] int32
  length: chex.Array  # [B] int32
  valid: chex.Array  # [B] bool
  done: chex.Array  # [B] bool
  expected: chex.Array  # [B, R] int32 correct result digits, least significant first
  expected_length: chex.Array  # [B] int32 digits in the correct result
  prompt_ok: chex.Array  # [B] bool, the prompt parsed as "a op b="


class Arithmetic(base.Task):
  """``a + b`` and ``a * b`` with operands of ``min_digits..max_digits`` digits.

  Args:
    max_digits: most digits of an operand, 1..32.
    min_digits: fewest digits of a sampled operand (sampling only).
    ops: the operations to sample, a subset of ``("+", "*")``.
    constrain: grammar-constrained ``legal_mask`` (digits, no leading zero,
      EOS after at least one digit).
  """

  def __init__(self, *, max_digits: int = 3, min_digits: int = 1,
               ops: tuple[str, ...] | str = OPS, constrain: bool = True):
    if not 1 <= max_digits <= MAX_SUPPORTED_DIGITS:
      raise ValueError(f"max_digits must be in [1, {MAX_SUPPORTED_DIGITS}], "
                       f"got {max_digits}.")
    if not 1 <= min_digits <= max_digits:
      raise ValueError(f"min_digits must be in [1, max_digits={max_digits}], "
                       f"got {min_digits}.")
    ops = tuple(ops)
    if not ops or any(o not in OPS for o in ops) or len(set(ops)) != len(ops):
      raise ValueError(f"ops must be distinct symbols from {OPS}, got {ops}.")
    self.name = "arithmetic"
    self.vocab = V.ARITH_VOCAB
    self.max_digits, self.min_digits, self.ops = max_digits, min_digits, ops
    self.constrain = constrain
    self.result_digits = 2 * max_digits if "*" in ops else max_digits + 1
    self.max_prompt_length = 2 * max_digits + 3  # BOS a op b =
    self.max_answer_length = self.result_digits + 1  # EOS

  def options(self):
    return dict(max_digits=self.max_digits, min_digits=self.min_digits,
                ops=self.ops, constrain=self.constrain)

  # ---------------------------------------------------------------- host side
  def _check_problem(self, problem):
    a, op, b = problem
    if op not in self.ops:
      raise ValueError(f"Operation {op!r} is not one of this task's ops {self.ops}.")
    for x in (a, b):
      if not 0 <= x < 10 ** self.max_digits:
        raise ValueError(f"Operand {x} is out of range: this task takes "
                         f"0 <= x < 10**max_digits={10 ** self.max_digits}.")

  def prompt_text(self, problem) -> str:
    self._check_problem(problem)
    a, op, b = problem
    return f"{a}{op}{b}="

  def solution_text(self, problem) -> str:
    self._check_problem(problem)
    a, op, b = problem
    return str(a + b if op == "+" else a * b)

  def sample_problems(self, seed: int, num: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
      op = self.ops[rng.integers(len(self.ops))]
      xs = []
      for _ in range(2):
        d = int(rng.integers(self.min_digits, self.max_digits + 1))
        # Digit by digit (uniform over d-digit numbers, any d, no int64 overflow).
        digits = rng.integers(0, 10, d)
        if d > 1:
          digits[0] = rng.integers(1, 10)
        xs.append(int("".join(map(str, digits))))
      out.append((xs[0], op, xs[1]))
    return out

  # --------------------------------------------------------------- device side
  def _init(self, prompt, base_state):
    b, p = prompt.shape
    d = self.max_digits
    pos = jnp.arange(p)
    is_digit = (prompt >= V.DIGIT0) & (prompt <= V.DIGIT0 + 9)
    is_op = (prompt == V.PLUS) | (prompt == V.TIMES)
    is_eq = prompt == V.EQUALS
    op_pos = jnp.argmax(is_op, axis=1)
    eq_pos = jnp.argmax(is_eq, axis=1)
    na, nb = op_pos - 1, eq_pos - op_pos - 1
    span_ok = jnp.where((pos >= 1) & (pos < eq_pos[:, None]) & (pos != op_pos[:, None]),
                        is_digit, True).all(1)
    after_ok = jnp.where(pos > eq_pos[:, None], prompt == V.PAD, True).all(1)
    prompt_ok = ((prompt[:, 0] == V.BOS) & (is_op.sum(1) == 1) & (is_eq.sum(1) == 1)
                 & (na >= 1) & (na <= d) & (nb >= 1) & (nb <= d) & span_ok & after_ok)
    digit = jnp.clip(prompt - V.DIGIT0, 0, 9)
    i = jnp.arange(d)

    def little_endian(last, n):  # digits at last, last-1, ..., n of them
      idx = jnp.clip(last[:, None] - i[None], 0, p - 1)
      return jnp.where(i[None] < n[:, None], jnp.take_along_axis(digit, idx, 1), 0)
    a = little_endian(op_pos - 1, na)
    bb = little_endian(eq_pos - 1, nb)
    r = self.result_digits
    is_mul = prompt[jnp.arange(b), op_pos] == V.TIMES
    prod = jnp.zeros((b, 2 * d), jnp.int32)
    for j in range(d):  # column sums of the schoolbook product, each <= 81 * d
      prod = prod.at[:, j:j + d].add(a * bb[:, j:j + 1])
    summ = jnp.zeros((b, 2 * d), jnp.int32).at[:, :d].set(a + bb)
    cols = jnp.where(is_mul[:, None], prod, summ)

    def carry_step(carry, col):
      total = col + carry
      return total // 10, total % 10
    _, digits = jax.lax.scan(carry_step, jnp.zeros((b,), jnp.int32), cols.T)
    digits = digits.T[:, :r]
    nonzero = digits > 0
    top = r - 1 - jnp.argmax(nonzero[:, ::-1], axis=1)
    length = jnp.where(nonzero.any(1), top + 1, 1)
    return ArithmeticState(**base_state, expected=digits, expected_length=length,
                           prompt_ok=prompt_ok)

  def _grammar_mask(self, state):
    n = state.length
    v = self.vocab.size
    digits = jnp.zeros((v,), bool).at[V.DIGIT0:V.DIGIT0 + 10].set(True)
    eos = jax.nn.one_hot(V.EOS, v, dtype=bool)
    lone_zero = (n == 1) & (state.tokens[:, 0] == V.DIGIT0)
    allow_digit = (n < self.result_digits) & ~lone_zero
    allow_eos = n >= 1
    return (allow_digit[:, None] & digits[None]) | (allow_eos[:, None] & eos[None])

  def _update(self, state, token):
    return state

  def _reward(self, state):
    t = self.result_digits
    n = state.length - 1  # digits before EOS
    i = jnp.arange(t)
    idx = jnp.clip(n[:, None] - 1 - i[None], 0, t - 1)
    want = jnp.take_along_axis(state.expected, idx, 1) + V.DIGIT0
    digits_ok = jnp.where(i[None] < n[:, None], state.tokens[:, :t] == want, True).all(1)
    return (state.done & state.valid & state.prompt_ok
            & (n == state.expected_length) & digits_ok)
