"""Countdown / Game of 24 under the game's rules: ``get_task(..., strict=True)``.

``get_task("game24", strict=True, notation="left", retract=2)`` (also
``"countdown"``) returns a :class:`StrictCountdown` wrapping the task.
Its ``legal_mask`` allows, token by token, only answers that follow the
rules of the game, not just the syntax of ``a op b = c`` lines:

* an operand is one of the numbers still available (inputs not used yet and
  results of earlier steps; the second operand is not the first one again);
* an operator is allowed only if some available second operand gives a
  result the notation can write (non-negative, no division by zero, parts
  of at most ``MAX_NUMBER_DIGITS`` digits);
* the result is the exact value of ``a op b`` (so a step can never be
  wrong arithmetic), then ``\\n`` (or EOS after the last step).

So an answer is always a valid derivation and only the final value decides
the reward (the verifier is the wrapped task's).

``notation="left"`` (``show_left=True``) writes the position out after every step but the last:
the result is followed by the numbers left, sorted, each after a space
(``13-9=4 4 4 10\n``). These tokens are forced (one legal token each),
so the policy chooses exactly what it chose before, but the value read at
the step's end sees the numbers left instead of having to work them out
from the prompt and the steps (``experiments/game24/game24_value_probe.py``: the same
model ranks 3-number positions with AUC 0.87 instead of 0.69 on the test
puzzles). The wrapped task needs room for the longer answers
(``max_answer_length``); :meth:`StrictCountdown.annotate` writes the
suffixes into solver texts.

``notation="left_first"`` writes the same numbers *before* each step that leaves
more than one number, then a colon (``4 4 10:13-9=4\n4 6:10-4=6\n4*6=24``).
These tokens are choices: the legal mask allows only the positions some
legal step reaches (it enumerates every step on the numbers available,
``_afterstates``), and after the colon only the steps that reach the
position written. So the policy first chooses the position it moves to (an
afterstate: a few numbers, the same across puzzles) and then how to get
there, instead of choosing a step whose consequence it has to work out.
``retract=R`` (with ``show_left``) lets an answer take back its first step
up to ``R`` times: right after the first step's line, ``:`` then ``\n``
returns to the puzzle's numbers, and that step (and, for ``+`` and ``*``,
its operands swapped) is barred from then on
(``13-9=4 4 4 10\n:\n10-4=6 6 9 13\n...``). The tokens stay in the
answer; the verifier reads the steps that were kept. This is the move a
policy needs to recover from a first step whose position it judges dead
(``experiments/game24/game24_value_greedy.py``, "retracting first step keeps").

A state where no token is
legal (possible only if no operator fits) is terminal with reward 0. The
wrapper is a drop-in environment for ``tsearch.lm_search``, the search
family and the trainer; everything else (tokenizer, prompts, problems,
reference solutions) is the wrapped task's. ``sample_problems`` shuffles
the order of the input numbers (augmentation).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tsearch.tasks import base as tasks_base
from tsearch.tasks import countdown as cd
from tsearch.tasks import countdown_solver
from tsearch.tasks import vocab as V

Array = chex.Array
W = 2 * cd.MAX_NUMBER_DIGITS + 3  # tokens of "(nnnn/dddd)"
_OP_TOKENS = (V.PLUS, V.MINUS, V.TIMES, V.DIVIDE)


def _ops() -> jax.Array:
  """The four operator tokens (an array made when traced, not at import:
  ``jax.distributed.initialize`` must come before any backend use)."""
  return jnp.array(_OP_TOKENS, jnp.int32)

_NUM = r"(\d+|\(\d+/\d+\))"
_STEP_RE = re.compile(_NUM + r"([-+*/])" + _NUM + "=" + _NUM)


def _parse_number(text: str) -> Fraction:
  return Fraction(text.strip("()"))


@chex.dataclass(frozen=True)
class StrictState:
  inner: Any  # the wrapped task's CountdownState, leaves [B, ...]
  buf: Array  # [B, W] int32 tokens of the number being written
  blen: Array  # [B] int32 tokens in buf
  spos: Array  # [B] int32 tokens of the numbers-left suffix written
  # left_first: which of the C = n * 4 * n steps on the numbers available
  # still agree with the numbers-left prefix written so far (all True at a
  # step's start; [B, 0] otherwise), and whether the prefix is complete.
  alive: Array  # [B, C] bool
  chosen: Array  # [B] bool
  # retract: first steps taken back so far, whether a ``:`` awaits its
  # ``\n``, and the barred steps ``[B, R, 5]`` (a_n, a_d, op, b_n, b_d).
  nret: Array  # [B] int32
  colon: Array  # [B] bool
  barred: Array  # [B, R, 5] int32

  # The trainer and the search family read these two.
  @property
  def length(self):
    return self.inner.length

  @property
  def tokens(self):
    return self.inner.tokens


def _int_tokens(x):
  """Digits of ``x`` in ``[0, 9999]``: tokens ``[..., 4]`` and count."""
  # lax ops, not ``10 ** e`` and ``//``/``%``: with a traced exponent jnp's
  # power unrolls a square-and-multiply loop and its floor division adds
  # sign fixes, which for x >= 0 change nothing. This runs in every rules
  # mask the search traces; the jnp form was a quarter of a step rollout's
  # program and its compile time.
  x = jnp.asarray(x, jnp.int32)
  nd = (1 + (x >= 10).astype(jnp.int32) + (x >= 100).astype(jnp.int32)
        + (x >= 1000).astype(jnp.int32))
  e = jax.lax.clamp(0, nd[..., None] - 1 - jnp.arange(
      cd.MAX_NUMBER_DIGITS, dtype=jnp.int32), cd.MAX_NUMBER_DIGITS - 1)
  power = jax.lax.select_n(e, *[jnp.full(e.shape, 10 ** k, jnp.int32)
                                for k in range(cd.MAX_NUMBER_DIGITS)])
  digit = jax.lax.rem(jax.lax.div(x[..., None], power), 10)
  return V.DIGIT0 + digit, nd


def number_tokens(n, d):
  """Tokens ``[..., W]`` (PAD after) and length of ``n/d`` in the task's
  notation (``n``, or ``(n/d)`` with ``d >= 2``); ``n, d`` in lowest terms."""
  dn, ln = _int_tokens(n)
  dd, ld = _int_tokens(d)
  w = jnp.arange(W)
  frac = d != 1
  lnx, ldx = ln[..., None], ld[..., None]
  def take(digits, j):
    j = jnp.broadcast_to(j, lnx.shape[:-1] + (W,))
    return jnp.take_along_axis(
        digits, jnp.clip(j, 0, cd.MAX_NUMBER_DIGITS - 1), axis=-1)
  int_tok = jnp.where(w < lnx, take(dn, w), V.PAD)
  frac_tok = jnp.select(
      [w == 0, w <= lnx, w == lnx + 1, w <= lnx + ldx + 1,
       w == lnx + ldx + 2],
      [V.LPAREN, take(dn, w - 1), V.DIVIDE, take(dd, w - lnx - 2), V.RPAREN],
      V.PAD)
  tokens = jnp.where(frac[..., None], frac_tok, int_tok).astype(jnp.int32)
  return tokens, jnp.where(frac, ln + ld + 3, ln).astype(jnp.int32)


def sorted_tokens(nn, dd, keep):
  """The kept numbers of each row, ascending, each after a space.

  Args:
    nn, dd: ``[R, K]`` int32 numerators / denominators in lowest terms.
    keep: ``[R, K]`` bool, the numbers to write.
  Returns:
    tokens ``[R, K * (W + 1)]`` (PAD after) and their count ``[R]``.
  """
  r, k = nn.shape
  rows = jnp.arange(r)
  # Exact order (parts <= 9999: the cross products fit in int32); equal
  # numbers keep their slot order.
  less = nn[:, :, None] * dd[:, None, :] < nn[:, None, :] * dd[:, :, None]
  equal = nn[:, :, None] * dd[:, None, :] == nn[:, None, :] * dd[:, :, None]
  idx = jnp.arange(k)
  before = keep[:, :, None] & (less | (equal & (idx[:, None] < idx[None, :])[None]))
  rank = jnp.sum(before, 1)  # [R, K]: kept numbers before each one
  tok, tlen = number_tokens(nn, dd)  # [R, K, W], [R, K]
  piece = jnp.where(keep, tlen + 1, 0)  # " " + number
  # Offset of each piece: the pieces of the numbers ranked before it.
  ranked_before = keep[:, None, :] & (rank[:, None, :] < rank[:, :, None])
  offset = jnp.sum(jnp.where(ranked_before, piece[:, None, :], 0), -1)
  width = k * (W + 1)
  j = jnp.arange(W + 1)
  pos = jnp.where(keep[..., None] & (j < piece[..., None]),
                  offset[..., None] + j, width)  # width: dropped
  val = jnp.where(j[None, None] == 0, V.SPACE, jnp.take_along_axis(
      tok, jnp.broadcast_to(jnp.clip(j - 1, 0, W - 1), tok.shape[:2] + (
          W + 1,)), -1))
  out = jnp.full((r, width), V.PAD, jnp.int32).at[
      rows[:, None, None], pos].set(val.astype(jnp.int32), mode="drop")
  return out, jnp.sum(piece, 1).astype(jnp.int32)


def _combine(an, ad, op, bn, bd):
  """Exact ``a op b`` in lowest terms and whether the notation can write it."""
  rn, rd = cd.exact_step(an, ad, op, bn, bd)
  ok = (rd > 0) & (rn >= 0) & (rn <= cd.MAX_NUMBER) & (rd <= cd.MAX_NUMBER)
  return jnp.where(ok, rn, 0), jnp.where(ok, rd, 1), ok


_NOTATIONS = ("plain", "left", "left_first")


def make(task_cls, *, strict: bool = False, notation: str = "plain",
         retract: int = 0, **options):
  """``task_cls(**options)``, under the game's rules if ``strict``
  (``get_task("game24", strict=True, notation="left", retract=2)``)."""
  task = task_cls(**options)
  if notation not in _NOTATIONS:
    raise ValueError(f"notation must be one of {_NOTATIONS}, got "
                     f"{notation!r}.")
  if not strict:
    if notation != "plain" or retract:
      raise ValueError(
          f"notation={notation!r} and retract={retract!r} are written by the "
          "game's rules; pass strict=True with them (config: "
          "--config.task.options.strict=True).")
    return task
  return StrictCountdown(task, show_left=notation == "left",
                         left_first=notation == "left_first",
                         retract=retract)


class StrictCountdown:
  """See the module docstring. ``task``: a Countdown or Game24 task."""

  def __init__(self, task, *, show_left: bool = False,
               left_first: bool = False, retract: int = 0):
    if not isinstance(task, cd.Countdown):
      raise ValueError(f"StrictCountdown wraps a Countdown or Game24 task, "
                       f"got {task!r}.")
    if show_left and left_first:
      raise ValueError("show_left and left_first are two notations of the "
                       "numbers left (after a step / before it); set one.")
    if int(retract) != retract or retract < 0:
      raise ValueError(f"retract must be a non-negative integer, got "
                       f"{retract!r}.")
    if retract and not show_left:
      raise ValueError("retract takes back a first step whose numbers left "
                       "were written after it; set show_left=True with it.")
    self.base = task
    self.show_left = bool(show_left)
    self.left_first = bool(left_first)
    self.retract = int(retract)
    n = task.num_numbers
    # The steps the left_first prefix chooses among, on the (at most n)
    # available numbers in slot order: first operand i, operator, second j,
    # and the other n - 2 numbers.
    i, op, j = (x.reshape(-1) for x in np.meshgrid(
        np.arange(n), np.arange(4), np.arange(n), indexing="ij"))
    self._cand = (i, op, j, np.array(
        [[k for k in range(n) if k not in (a, b)][:n - 2] if a != b
         else list(range(n - 2)) for a, b in zip(i, j)], np.int32).reshape(
             len(i), n - 2))

  def __getattr__(self, name):  # tokenizer, sizes, problems, ...
    if name == "base":
      raise AttributeError(name)
    return getattr(self.base, name)

  def __hash__(self):
    return hash(("strict", self.base, self.show_left, self.left_first,
                 self.retract))

  def __eq__(self, other):
    return (isinstance(other, StrictCountdown) and self.base == other.base
            and self.show_left == other.show_left
            and self.left_first == other.left_first
            and self.retract == other.retract)

  def __repr__(self):
    left = ", show_left=True" if self.show_left else ""
    left += ", left_first=True" if self.left_first else ""
    left += f", retract={self.retract}" if self.retract else ""
    return f"StrictCountdown({self.base!r}{left})"

  def options(self) -> dict:
    return dict(self.base.options(), strict=True, notation=self.notation,
                retract=self.retract)

  @property
  def notation(self) -> str:
    return ("left" if self.show_left else "left_first" if self.left_first
            else "plain")

  @property
  def retract_token(self) -> int | None:
    """``:``, which takes back the first step (``retract > 0``)."""
    return V.COLON if self.retract else None

  def attempts(self, state: StrictState) -> Array:
    """``[B]``: 1 + the first steps each answer took back."""
    return 1.0 + state.nret.astype(jnp.float32)

  def solver_traces(self, seed: int, batch_size: int, *, max_len: int,
                    negative_fraction: float = 0.5,
                    split: str = "train") -> dict:
    """The wrapped task's solver traces in this notation, numbers shuffled."""
    return countdown_solver.solver_traces(
        self, seed, batch_size, max_len=max_len,
        negative_fraction=negative_fraction, split=split)

  @property
  def writes_left(self) -> bool:
    """Whether answers carry the numbers left (either notation)."""
    return self.show_left or self.left_first

  # ---------------------------------------------------------------- host side
  @property
  def fixed_splits(self) -> bool:
    return self.base.fixed_splits

  def sample_problems(self, seed: int, num: int, **kw) -> list:
    problems = self.base.sample_problems(seed, num, **kw)
    rng = np.random.default_rng([int(seed), 7])
    return [(tuple(int(x) for x in rng.permutation(nums)), t)
            for nums, t in problems]

  def annotate(self, numbers, text: str, *, complete: bool = True) -> str:
    """``text`` (the wrapped task's answer notation, ``a op b = c`` lines)
    as this environment writes it: with ``show_left``, each step but the
    last followed by the numbers left, sorted, each after a space
    (``13-9=4 4 4 10``); with ``left_first``, each step that leaves more
    than one number preceded by them and a colon (``4 4 10:13-9=4``).
    ``complete=False``: ``text`` is the start of an answer, so (show_left)
    its last step is followed by the numbers left too."""
    if not self.writes_left:
      return text
    pool = [Fraction(x) for x in numbers]
    lines = text.split("\n")
    out = []
    for n, line in enumerate(lines):
      m = _STEP_RE.fullmatch(line)
      if m is None:
        raise ValueError(f"Cannot annotate {text!r}: line {line!r} is not "
                         "one 'a op b=c' step.")
      for x in (m.group(1), m.group(3)):
        value = _parse_number(x)
        if value not in pool:
          raise ValueError(f"Cannot annotate {text!r}: {x} is not among the "
                           f"numbers left {pool}.")
        pool.remove(value)
      pool.append(_parse_number(m.group(4)))
      left = " ".join(cd.format_number(x) for x in sorted(pool))
      if self.left_first and len(pool) > 1:
        line = left + ":" + line
      elif self.show_left and (n < len(lines) - 1 or not complete):
        line += " " + left
      out.append(line)
    return "\n".join(out)

  def solution_text(self, problem) -> str:
    """The wrapped task's reference solution in this notation; with
    ``show_left``, if that is too long, the shortest of all solutions."""
    text = self.annotate(problem[0], self.base.solution_text(problem))
    if len(self.encode(text)) < self.base.max_answer_length:
      return text
    return min((self.annotate(problem[0], t) for t in countdown_solver.all_solutions(
        *problem)), key=lambda t: len(self.encode(t)))

  # The base Task's, reading this class's solution_text.
  solution_tokens = tasks_base.Task.solution_tokens

  # --------------------------------------------------------------- device side
  def init_state(self, prompt_tokens):
    inner = self.base.init_state(prompt_tokens)
    b = inner.length.shape[0]
    c = len(self._cand[0]) if self.left_first else 0
    return StrictState(inner=inner, buf=jnp.zeros((b, W), jnp.int32),
                       blen=jnp.zeros((b,), jnp.int32),
                       spos=jnp.zeros((b,), jnp.int32),
                       alive=jnp.ones((b, c), bool),
                       chosen=jnp.zeros((b,), bool),
                       nret=jnp.zeros((b,), jnp.int32),
                       colon=jnp.zeros((b,), bool),
                       barred=jnp.zeros((b, self.retract, 5), jnp.int32))

  def _afterstates(self, s):
    """Every step on the numbers available (``left_first``).

    Returns ``(ok, a_n, a_d, op, b_n, b_d, prefix, plen)``: ``[B, C]``
    whether the step is legal, its operands and operator token, and the
    tokens ``[B, C, S]`` (PAD after) and length ``[B, C]`` of its prefix:
    the numbers left after it, ascending, space-separated, then ``:``.
    """
    b = s.num_n.shape[0]
    n = self.base.num_numbers
    ci, cop, cj, cother = (jnp.asarray(x) for x in self._cand)
    # The available numbers (at most n) first, in slot order.
    order = jnp.argsort(~s.avail, axis=1, stable=True)[:, :n]
    take = lambda x: jnp.take_along_axis(x, order, 1)  # noqa: E731
    nn, dd, av = take(s.num_n), take(s.num_d), take(s.avail)  # [B, n]
    an, ad, bn, bd = nn[:, ci], dd[:, ci], nn[:, cj], dd[:, cj]  # [B, C]
    op = _ops()[cop][None]
    rn, rd, ok = _combine(an, ad, op, bn, bd)
    ok = ok & av[:, ci] & av[:, cj] & (ci != cj)[None]
    left_n = jnp.concatenate([nn[:, cother], rn[..., None]], -1)  # [B,C,n-1]
    left_d = jnp.concatenate([dd[:, cother], rd[..., None]], -1)
    keep = jnp.concatenate([av[:, cother], ok[..., None]], -1)
    c = ci.shape[0]
    tok, length = sorted_tokens(left_n.reshape(b * c, n - 1),
                                left_d.reshape(b * c, n - 1),
                                keep.reshape(b * c, n - 1))
    # " x y z" -> "x y z:"
    tok, length = tok.reshape(b, c, -1), length.reshape(b, c)
    prefix = jnp.concatenate([tok[..., 1:], tok[..., :1] * 0 + V.PAD], -1)
    prefix = jnp.where(jnp.arange(prefix.shape[-1]) == length[..., None] - 1,
                       V.COLON, prefix)
    return ok, an, ad, jnp.broadcast_to(_ops()[cop], ok.shape), bn, bd, \
        prefix, length

  def _left_suffix(self, state: StrictState):
    """Tokens ``[B, S]`` (PAD after) and length ``[B]`` of the numbers left
    after the step being written (each after a space, ascending), and
    whether the state is at or in that suffix: the result written, not the
    last step."""
    s = state.inner
    rn, rd, r_ok = _combine(s.a_n, s.a_d, s.op, s.b_n, s.b_d)
    _, avail = cd.take_first(s.avail, s.num_n, s.num_d, s.a_n, s.a_d)
    _, avail = cd.take_first(avail, s.num_n, s.num_d, s.b_n, s.b_d)
    nn = jnp.concatenate([s.num_n, rn[:, None]], 1)  # [B, M+1]
    dd = jnp.concatenate([s.num_d, rd[:, None]], 1)
    keep = jnp.concatenate([avail, r_ok[:, None]], 1)
    suffix, length = sorted_tokens(nn, dd, keep)
    _, res_len = number_tokens(rn, rd)
    last = s.steps + 1 == self.base.num_numbers - 1
    at = (s.field == 2) & (state.blen == res_len) & r_ok & ~last & \
        self.show_left
    return suffix, length, at

  def _barred(self, state: StrictState, an, ad, op, bn, bd) -> Array:
    """Whether the first step ``a op b`` (arrays broadcasting to ``[B,
    ...]``) was taken back (``retract``), or its operands swapped for ``+``
    and ``*``; later steps are never barred."""
    an, ad, op, bn, bd = jnp.broadcast_arrays(an, ad, op, bn, bd)
    b, k = state.nret.shape[0], an.ndim - 1
    col = lambda i: state.barred[..., i].reshape(  # noqa: E731
        (b, self.retract) + (1,) * k)
    x = lambda v: v[:, None]  # noqa: E731
    same_op = x(op) == col(2)
    same = (x(an) == col(0)) & (x(ad) == col(1)) & (x(bn) == col(3)) & (
        x(bd) == col(4))
    swapped = ((col(2) == V.PLUS) | (col(2) == V.TIMES)) & (
        x(an) == col(3)) & (x(ad) == col(4)) & (x(bn) == col(0)) & (
            x(bd) == col(1))
    used = (jnp.arange(self.retract)[None] < state.nret[:, None]) & (
        state.inner.steps == 0)[:, None]
    return jnp.any(used.reshape((b, self.retract) + (1,) * k)
                   & same_op & (same | swapped), 1)

  def _retract_start(self, state: StrictState) -> Array:
    """``[B]``: right after the first step's line, a retraction left."""
    s = state.inner
    return ((s.steps == 1) & (s.field == 0) & (state.blen == 0)
            & ~state.colon & (state.nret < self.retract))

  def _rules_mask(self, state: StrictState) -> Array:
    """``[B, V]`` tokens the rules allow (ignoring terminal states)."""
    return self._rules(state)[0]

  def _rules(self, state: StrictState):
    """``(_rules_mask, _left_suffix or None)``: :meth:`step` reuses the
    suffix rather than computing it twice."""
    s = state.inner
    b, m = s.num_n.shape
    vsize = self.base.vocab.size
    rows = jnp.arange(b)
    cand_tok, cand_len = number_tokens(s.num_n, s.num_d)  # [B, M, W], [B, M]
    # Candidates whose string extends what was typed.
    w = jnp.arange(W)
    typed = w[None, None] < state.blen[:, None, None]
    prefix = jnp.all(~typed | (cand_tok == state.buf[:, None]), -1) & (
        state.blen[:, None] <= cand_len)
    # Operand candidates: field 0 any available slot; field 1 available
    # slots without the first slot holding a's value (as the verifier).
    field = s.field[:, None]
    cands = jnp.where(field == 0, s.avail, cd.take_first(
        s.avail, s.num_n, s.num_d, s.a_n, s.a_d)[1])  # [B, M]
    # b-side results: a (field 0: each candidate slot) op b (each slot).
    an = jnp.where(field == 0, s.num_n, s.a_n[:, None])  # [B, Ma]
    ad = jnp.where(field == 0, s.num_d, s.a_d[:, None])
    res_ok = _combine(an[:, :, None, None], ad[:, :, None, None],
                      _ops()[None, None, :, None], s.num_n[:, None, None],
                      s.num_d[:, None, None])[2]  # [B, Ma, 4, Mb]
    pair = s.avail[:, :, None] & s.avail[:, None, :] & ~jnp.eye(
        m, dtype=bool)[None]  # [B, Ma, Mb]
    if self.retract:  # a barred first step is no result
      res_ok = res_ok & ~self._barred(
          state, an[:, :, None, None], ad[:, :, None, None],
          _ops()[None, None, :, None], s.num_n[:, None, None],
          s.num_d[:, None, None])
    op_ok = jnp.any(res_ok & pair[:, :, None, :], -1)  # [B, Ma, 4]
    last = s.steps + 1 == self.base.num_numbers - 1
    pre = None
    if self.left_first:
      # The prefix chose the numbers left: a, op and b must be one of the
      # steps that leave them (the ones still alive).
      ok, can, cad, cop, cbn, cbd, pre_tok, plen = self._afterstates(s)
      alive = state.alive & ok  # [B, C]
      same = lambda xn, xd, yn, yd: (xn == yn) & (xd == yd)  # noqa: E731
      a_is = same(can[:, :, None], cad[:, :, None], s.num_n[:, None],
                  s.num_d[:, None])  # [B, C, M]: candidate's a is slot k's
      op_is = cop[..., None] == _ops()  # [B, C, 4]
      a_ok = jnp.any(alive[..., None] & a_is, 1)  # [B, M]
      aop_ok = jnp.any((alive[..., None, None] & a_is[..., None]
                        & op_is[:, :, None]), 1)  # [B, M, 4]
      typed = alive & same(can, cad, s.a_n[:, None], s.a_d[:, None]) & (
          cop == s.op[:, None])
      b_ok = jnp.any(typed[..., None] & same(
          cbn[:, :, None], cbd[:, :, None], s.num_n[:, None],
          s.num_d[:, None]), 1)  # [B, M]
      chosen = state.chosen[:, None]
      cands = cands & (~chosen | jnp.where(field == 0, a_ok, b_ok))
      op_ok = op_ok & (~chosen[..., None] | aop_ok)
      # Writing the prefix: a step's start, before its first operand.
      in_pre = ~last & ~state.chosen & (s.field == 0) & (
          state.blen == 0)
      live = alive & (state.spos[:, None] < plen)
      here = jnp.take_along_axis(pre_tok, jnp.minimum(
          state.spos, pre_tok.shape[-1] - 1)[:, None, None], -1)[..., 0]
      pre = (in_pre, live, here)
    b_free = True
    if self.retract:
      # Field 1: no second operand that makes a barred step; field 0: no
      # first operand without an operator and second operand left.
      b_free = ~self._barred(state, s.a_n[:, None], s.a_d[:, None],
                             s.op[:, None], s.num_n, s.num_d)  # [B, M]
      cands = cands & jnp.where(field == 0, jnp.any(op_ok, -1), b_free)
    # Field 2: the one exact result.
    rn, rd, r_ok = _combine(s.a_n, s.a_d, s.op, s.b_n, s.b_d)
    res_tok, res_len = number_tokens(rn, rd)
    res_prefix = jnp.all((w[None] >= state.blen[:, None])
                         | (res_tok == state.buf), -1) & (
                             state.blen <= res_len) & r_ok
    # Next digit/paren of a number.
    in_num = jnp.where(field == 2, False, cands & prefix) & (
        state.blen[:, None] < cand_len)
    nxt = jnp.take_along_axis(cand_tok, jnp.minimum(
        state.blen, W - 1)[:, None, None], -1)[..., 0]  # [B, M]
    mask = jnp.zeros((b, vsize), bool)
    mask = mask.at[rows[:, None], jnp.where(in_num, nxt, 0)].max(in_num)
    res_more = (s.field == 2) & res_prefix & (state.blen < res_len)
    res_next = res_tok[rows, jnp.minimum(state.blen, W - 1)]
    mask = mask.at[rows, jnp.where(res_more, res_next, 0)].max(res_more)
    # Terminators of a complete number.
    full = cands & prefix & (state.blen[:, None] == cand_len)  # [B, M]
    ops_allowed = jnp.any(full[:, :, None] & op_ok, 1) & (field == 0)  # [B,4]
    mask = mask.at[:, _ops()].max(ops_allowed)
    b_res_ok = _combine(s.a_n[:, None], s.a_d[:, None], s.op[:, None],
                        s.num_n, s.num_d)[2] & b_free  # [B, M]
    eq = (s.field == 1) & jnp.any(full & b_res_ok, 1)
    mask = mask.at[:, V.EQUALS].max(eq)
    end = (s.field == 2) & res_prefix & (state.blen == res_len)
    mask = mask.at[:, V.EOS].max(end & last)
    left = None
    if self.show_left:  # the numbers left, one forced token at a time
      left = self._left_suffix(state)
      suffix, slen, _ = left
      in_suffix = end & ~last & (state.spos < slen)
      forced = suffix[rows, jnp.minimum(state.spos, suffix.shape[1] - 1)]
      mask = mask.at[rows, jnp.where(in_suffix, forced, 0)].max(in_suffix)
      end = end & (state.spos >= slen)
    mask = mask.at[:, V.NEWLINE].max(end & ~last)
    if self.retract:  # ":" after the first step's line, then only "\n"
      mask = mask.at[:, V.COLON].max(self._retract_start(state))
      mask = jnp.where(state.colon[:, None], jax.nn.one_hot(
          V.NEWLINE, vsize, dtype=bool)[None], mask)
    if self.left_first:
      in_pre, live, here = pre
      pre_mask = jnp.zeros((b, vsize), bool).at[
          rows[:, None], jnp.where(live, here, 0)].max(live)
      mask = jnp.where(in_pre[:, None], pre_mask, mask)
      return mask, pre
    return mask, left

  def is_terminal(self, state: StrictState) -> Array:
    return self._terminal(state, self._rules_mask(state))

  def _terminal(self, state: StrictState, mask: Array) -> Array:
    dead = ~jnp.any(mask, -1) | ~state.inner.valid
    return self.base.is_terminal(state.inner) | dead

  def legal_mask(self, state: StrictState) -> Array:
    mask = self._rules_mask(state)
    terminal = self._terminal(state, mask)
    pad_only = jax.nn.one_hot(self.base.pad_id, self.base.vocab.size,
                              dtype=bool)
    return jnp.where(terminal[:, None], pad_only[None], mask)

  def step(self, state: StrictState, token: Array) -> StrictState:
    token = jnp.asarray(token, jnp.int32)
    mask, left = self._rules(state)
    active = ~self._terminal(state, mask)
    old = state.inner
    new = self.base.step(old, token)
    moved = (new.field != old.field) | (new.steps != old.steps)
    rows = jnp.arange(token.shape[0])
    at = jnp.minimum(state.blen, W - 1)
    buf = jnp.where(moved[:, None], 0, state.buf.at[rows, at].set(token))
    blen = jnp.where(moved, 0, jnp.minimum(state.blen + 1, W))
    spos = jnp.zeros_like(state.spos)
    alive, chosen = state.alive, state.chosen
    # Numbers-left tokens (a suffix, or a left_first prefix) are recorded
    # in the answer but not parsed by the wrapped task.
    held = None
    if self.show_left:
      suffix, slen, at_suffix = left
      held = at_suffix & (state.spos < slen)
      ok = token == suffix[rows, jnp.minimum(state.spos, suffix.shape[1] - 1)]
    nret, colon, barred = state.nret, state.colon, state.barred
    if self.retract:  # ":" and its "\n" are held too
      start = self._retract_start(state) & (token == V.COLON)
      ok = jnp.where(state.colon, token == V.NEWLINE, ok | start)
      taken_back = state.colon & (token == V.NEWLINE)
      held = held | start | state.colon
      colon = start
    if self.left_first:
      in_pre, live, here = left
      held = in_pre
      match = live & (here == token[:, None])
      ok = jnp.any(match, 1)
      alive = jnp.where(held[:, None], match, alive)
      chosen = chosen | (held & (token == V.COLON))
    if held is not None:
      pos = jnp.minimum(old.length, self.base.max_answer_length - 1)
      recorded = old.replace(
          tokens=old.tokens.at[rows, pos].set(token), length=old.length + 1,
          valid=old.valid & ok)
      new = jax.tree.map(lambda r, n: jnp.where(
          held.reshape(held.shape + (1,) * (n.ndim - 1)), r, n),
                         recorded, new)
      buf = jnp.where(held[:, None], state.buf, buf)
      blen = jnp.where(held, state.blen, blen)
      spos = jnp.where(held, state.spos + 1, 0)
    if self.retract:  # back to the puzzle's numbers; bar the step
      n, m = self.base.num_numbers, old.avail.shape[1]
      new = new.replace(
          avail=jnp.where(taken_back[:, None], jnp.arange(m)[None] < n,
                          new.avail),
          steps=jnp.where(taken_back, 0, new.steps))
      slot = jnp.minimum(nret, self.retract - 1)
      step = jnp.stack([old.a_n, old.a_d, old.op, old.b_n, old.b_d], -1)
      barred = barred.at[rows, slot].set(jnp.where(
          taken_back[:, None], step, barred[rows, slot]))
      nret = nret + taken_back
      spos = jnp.where(start | state.colon, 0, spos)
    if self.left_first:  # a new step chooses its numbers left afresh
      next_step = new.steps != old.steps
      alive = alive | next_step[:, None]
      chosen = chosen & ~next_step
    out = StrictState(inner=new, buf=buf, blen=blen, spos=spos, alive=alive,
                      chosen=chosen, nret=nret, colon=colon, barred=barred)
    return tasks_base.select_rows(active, out, state)

  def reward(self, state: StrictState) -> Array:
    return self.base.reward(state.inner)

  def discount(self, state: StrictState) -> Array:
    return jnp.where(self.is_terminal(state), 0.0, 1.0).astype(jnp.float32)

  def run(self, prompt_tokens, answer_tokens):
    answer_tokens = jnp.asarray(answer_tokens, jnp.int32)
    state = self.init_state(prompt_tokens)
    state, _ = jax.lax.scan(lambda s, t: (self.step(s, t), None), state,
                            answer_tokens.T)
    return state

  def verify(self, prompt_tokens, answer_tokens) -> Array:
    """The wrapped task's verifier (the rules only restrict answers); with
    ``show_left`` / ``left_first`` the numbers left written must be the
    right ones (and, left_first, the step must reach them)."""
    if self.writes_left:
      return self.reward(self.run(prompt_tokens, answer_tokens))
    return self.base.verify(prompt_tokens, answer_tokens)
