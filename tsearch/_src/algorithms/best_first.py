"""Best-first (A*-style) step-level search guided by the value head.

Each problem keeps a frontier of at most ``C = capacity`` partial answers
(rows with their own KV cache, :mod:`tsearch.algorithms.rows`). Every round
pops the entry of highest priority

  ``priority = score + cost_weight * logprob``

where ``score`` is the value head after the entry's last token (for a
finished answer with ``terminal_score='verifier'``: the verifier's reward
mapped onto the value range, :func:`family.score_rows`, as every family
member scores) and ``logprob`` is the log-probability of the entry's answer
tokens under the model's policy (legal mask, temperature 1). In A* terms,
``f = h - cost_weight * g``, maximised, with heuristic ``h`` the value head
and path cost ``g = -logprob`` in nats. The default ``cost_weight=0`` ranks
by the value alone, as beam, DVTS and particle filtering do: in these tasks
the reward comes only at the end, so the value already estimates the whole
outcome of a partial answer and there is no per-step cost to add; a
positive ``cost_weight`` adds the policy's likelihood, which prefers likely
and shallow paths (more breadth) and so spends more expansions before an
answer finishes.

A popped unfinished entry is expanded into ``K = expansions`` sampled steps
(tokens up to the task's step delimiter, as :func:`family.beam`), which are
pushed with their priorities. Popping a finished answer ends the problem's
search, and that answer is returned (A*: the first finished answer popped).

Budget: ``budget`` counts expansions (pops of unfinished entries), so the
search samples at most ``budget * K`` candidate steps; popping a finished
answer costs nothing. For comparison: ``beam:N`` and ``best_of_n:N`` sample
about ``N * D`` steps for ``D``-step answers, the same worst case as
``best_first:N`` with ``K = D``; the compute actually spent is counted as
for every family member (``model_calls``: sequential forward passes, one per
token position of each step sampled plus the prefill; ``tokens_forwarded``:
the prompt once plus every token of every live child), and comparisons
should be made at equal ``tokens_forwarded``. A search stops early when it
pops a finished answer, so it often spends far less than the budget. An
answer of ``D`` steps needs at least ``D`` expansions: with ``budget < D``
no answer can finish.

If the budget runs out first, the answer is the best finished answer (by
priority) the search generated, kept aside when it was generated (so the
capacity never loses it), else the best partial answer in the frontier,
marked unfinished (``candidate_finished`` False).

Frontier overflow: when the pushed children do not fit, the frontier keeps
the ``C`` entries of highest priority and drops the rest (ties keep the
older entry, then the lower child index), never overwriting a kept entry.
With the default ``capacity = budget`` nothing that matters is dropped: an
entry ranked below the expansions left can never be popped, so the search
pops, spends and answers exactly as with an unbounded frontier. A smaller
capacity saves memory (each entry holds a KV cache of ``P + T`` slots) at
the price of dropping entries; ``capacity=1`` is width-1 beam search with
``K`` steps per round.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from models import sharding
from tsearch._src.algorithms import family
from tsearch._src.algorithms import rows as rows_lib

Array = chex.Array


@chex.dataclass(frozen=True)
class Frontier:
  """``C`` slots per problem; slot ``c`` of problem ``b`` is row ``b*C+c``."""
  rows: rows_lib.Rows  # R = B * C rows
  priority: Array  # [B, C] float32, -inf marks an empty slot
  score: Array  # [B, C] float32 (family.score_rows)
  logprob: Array  # [B, C] float32 of the answer tokens so far


@chex.dataclass(frozen=True)
class Finished:
  """The best finished answer generated so far, per problem."""
  tokens: Array  # [B, T] int32
  length: Array  # [B] int32
  score: Array  # [B] float32
  priority: Array  # [B] float32, -inf while none has finished


def _put_rows(rows: rows_lib.Rows, new: rows_lib.Rows,
              index: Array) -> rows_lib.Rows:
  """``rows`` with row ``index[i]`` set to ``new``'s row ``i``; an index out
  of range drops row ``i``. The row axis is 1 for the caches, else 0
  (:class:`rows_lib.Rows`)."""
  def put(axis):
    def leaf(x, y):
      return (x.at[:, index].set(y, mode="drop") if axis
              else x.at[index].set(y, mode="drop"))
    return leaf

  return rows.replace(**{
      f.name: jax.tree.map(put(f.name in ("keys", "values")),
                           getattr(rows, f.name), getattr(new, f.name))
      for f in dataclasses.fields(rows)})


def _merge(priority: Array, child_priority: Array) -> tuple[Array, Array]:
  """Where the children go when pushed onto the frontier.

  The ``C`` entries of highest priority among the frontier's ``[B, C]`` and
  the children's ``[B, K]`` are kept (``-inf``: empty, never kept); kept
  children take the freed slots in order.

  Returns:
    ``(kept [B, C] bool, slot [B, K] int32)``: which frontier entries stay,
    and each child's slot (``C``: dropped).
  """
  b, c = priority.shape
  both = jnp.concatenate([priority, child_priority], 1)  # [B, C + K]
  _, best = jax.lax.top_k(both, c)  # ties keep the lower index
  kept = jnp.zeros(both.shape, bool).at[jnp.arange(b)[:, None], best].set(True)
  kept = kept & (both > -jnp.inf)
  stays, enters = kept[:, :c], kept[:, c:]
  free_first = jnp.argsort(stays, axis=1, stable=True)  # [B, C]
  rank = jnp.where(enters, jnp.cumsum(enters, 1) - 1, 0)
  slot = jnp.where(enters, jnp.take_along_axis(free_first, rank, 1), c)
  return stays, slot.astype(jnp.int32)


@sharding.on_params_mesh
@functools.partial(jax.jit, static_argnames=(
    "graphdef", "task", "expansions", "capacity",
    "greedy", "temperature", "max_step_tokens"))
def _best_first(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
                cost_weight, expansions_budget, use_verifier, *, expansions,
                capacity, greedy, temperature, max_step_tokens):
  """The search of :func:`best_first`. The budget, ``cost_weight`` and
  ``terminal_score`` (``use_verifier``) are traced: changing them does not
  compile it again."""
  b, k, c = prompt_tokens.shape[0], expansions, capacity
  rb = jnp.arange(b)
  # pylint: disable-next=protected-access
  value_range = family._value_range(graphdef, state)
  sample_key, _ = jax.random.split(rng_key)  # the same draws as beam's
  root, counters = rows_lib.prefill(graphdef, state, task, prompt_tokens,
                                    prompt_lengths)
  empty = jnp.full((b, c), -jnp.inf, jnp.float32)
  frontier = Frontier(
      rows=rows_lib.repeat_rows(root, c),  # slot 0 the root, the rest empty
      priority=empty.at[:, 0].set(0.0),
      score=empty.at[:, 0].set(root.value), logprob=jnp.zeros((b, c)))
  found = Finished(tokens=root.tokens, length=root.length,
                   score=jnp.zeros((b,), jnp.float32),
                   priority=jnp.full((b,), -jnp.inf, jnp.float32))

  def top(fr):
    """Slot ``[B]`` of the best entry and whether it is finished."""
    slot = jnp.argmax(fr.priority, -1)
    state_at = jax.tree.map(lambda x: x[rb * c + slot], fr.rows.task_state)
    return slot, task.is_terminal(state_at)

  def cond(carry):
    n, fr, _, _ = carry
    return (n < expansions_budget) & ~jnp.all(top(fr)[1])

  def body(carry):
    n, fr, found, counters = carry
    pop, popped_finished = top(fr)
    expand = ~popped_finished  # a finished pop ends the problem's search
    children = rows_lib.take_rows(fr.rows, jnp.repeat(rb * c + pop, k))
    row_keys = jax.random.split(jax.random.fold_in(sample_key, n), b * k)
    # Children of a finished pop are finished copies: no compute, no push.
    children, counters, step_logprob = rows_lib.sample(
        graphdef, state, task, children, counters, row_keys,
        max_tokens=max_step_tokens, stop_at_step=True, greedy=greedy,
        temperature=temperature, with_logprob=True)
    verifier, value = (family.score_rows(task, children, terminal_score=t,
                                         value_range=value_range)
                       for t in ("verifier", "value"))
    score = jnp.where(use_verifier, verifier, value).reshape(b, k)
    logprob = fr.logprob[rb, pop][:, None] + step_logprob.reshape(b, k)
    priority = jnp.where(expand[:, None], score + cost_weight * logprob,
                         -jnp.inf)
    # Pop (free the slot), then push.
    fr_priority = fr.priority.at[rb, pop].set(
        jnp.where(expand, -jnp.inf, fr.priority[rb, pop]))
    stays, slot = _merge(fr_priority, priority)

    def push(old, new):
      return jnp.where(stays, old, -jnp.inf).at[rb[:, None], slot].set(
          new, mode="drop")

    rows_at = jnp.where(slot < c, rb[:, None] * c + slot, b * c).reshape(-1)
    fr = Frontier(rows=_put_rows(fr.rows, children, rows_at),
                  priority=push(fr_priority, priority),
                  score=push(fr.score, score),
                  logprob=push(fr.logprob, logprob))
    # The best finished child, kept aside whatever the frontier drops.
    finished = rows_lib.is_done(task, children).reshape(b, k)
    cand = jnp.where(finished, priority, -jnp.inf)
    j = jnp.argmax(cand, -1)
    better = cand[rb, j] > found.priority
    tokens = children.tokens.reshape(b, k, -1)[rb, j]
    length = children.length.reshape(b, k)[rb, j]
    found = Finished(
        tokens=jnp.where(better[:, None], tokens, found.tokens),
        length=jnp.where(better, length, found.length),
        score=jnp.where(better, score[rb, j], found.score),
        priority=jnp.where(better, cand[rb, j], found.priority))
    return n + 1, fr, found, counters

  _, fr, found, counters = jax.lax.while_loop(
      cond, body, (jnp.int32(0), frontier, found, counters))
  slot, finished = top(fr)
  # A finished top was popped (or would be, at no cost); else the budget ran
  # out: the best finished answer generated, else the best partial one.
  use_found = ~finished & (found.priority > -jnp.inf)
  row = rb * c + slot
  answers = jnp.where(use_found[:, None], found.tokens, fr.rows.tokens[row])
  lengths = jnp.where(use_found, found.length, fr.rows.length[row])
  scores = jnp.where(use_found, found.score, fr.score[rb, slot])
  finished = finished | use_found
  return family.SearchOutput(
      answers=answers, answer_lengths=lengths, answer_scores=scores,
      candidates=answers[:, None], candidate_lengths=lengths[:, None],
      candidate_scores=scores[:, None], candidate_finished=finished[:, None],
      model_calls=counters.model_calls,
      tokens_forwarded=counters.tokens_forwarded)


def _positive_int(name, x):
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
    raise ValueError(f"{name} must be a positive int; got {x!r}.")
  return int(x)


def best_first(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
               *, budget: int, expansions: int = 4,
               capacity: int | None = None, cost_weight: float = 0.0,
               temperature: float = 1.0, greedy_tokens: bool = False,
               max_step_tokens: int | None = None,
               terminal_score: str = "value") -> family.SearchOutput:
  """Best-first (A*-style) step-level search; see the module docstring.

  Each expansion pops the frontier entry with the highest
  ``score + cost_weight * logprob`` and samples ``expansions`` steps from
  it; the search ends when it pops a finished answer (returned) or after
  ``budget`` expansions (then the best finished answer generated, else the
  best partial one, unfinished).

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    task: a one-player :class:`tsearch.tasks.Task`.
    prompt_tokens: ``[B, P]``; prompt_lengths: ``[B]``.
    rng_key: a JAX key; expansion ``n`` samples its ``B * K`` children with
      ``split(fold_in(split(rng_key)[0], n), B * K)`` (beam search's keys).
    budget: expansions (pops of unfinished entries) per problem; at most
      ``budget * expansions`` candidate steps are sampled.
    expansions: ``K``, steps sampled per expansion.
    capacity: frontier entries held per problem; default ``budget`` (which
      drops nothing that could change the answer). Fuller frontiers drop
      their entries of lowest priority.
    cost_weight: weight of the path cost ``-logprob`` (nats) against the
      value; ``>= 0``, default 0 (value alone).
    temperature: sampling temperature of the steps (the priority's logprob
      is at temperature 1).
    greedy_tokens: decode each step by argmax (``K = 1`` and
      ``budget >= D`` steps is then greedy decoding).
    max_step_tokens: most tokens of one step (a longer step is cut there
      and continued when popped again); default the answer length.
    terminal_score: ``'value'``, or ``'verifier'`` to score finished
      answers with the task's verifier (the verifier is then in the search).

  Returns:
    :class:`family.SearchOutput` with ``M = 1`` candidate, the answer.
  """
  n = family.check_budget(budget)
  k = _positive_int("expansions", expansions)
  cap = n if capacity is None else _positive_int("capacity", capacity)
  if (isinstance(cost_weight, bool)
      or not isinstance(cost_weight, (int, float, np.integer, np.floating))
      or not math.isfinite(cost_weight) or cost_weight < 0):
    raise ValueError(f"cost_weight must be a finite number >= 0 (0: rank by "
                     f"the value alone); got {cost_weight!r}.")
  # pylint: disable=protected-access
  family._check_terminal_score(terminal_score)
  family._check_temperature(temperature)
  step_tokens = family._step_tokens(task, max_step_tokens)
  # pylint: enable=protected-access
  prompt_tokens, prompt_lengths = family.check_inputs(
      graphdef, state, task, prompt_tokens, prompt_lengths)
  return _best_first(graphdef, state, task, prompt_tokens, prompt_lengths,
                     rng_key, jnp.float32(cost_weight), jnp.int32(n),
                     jnp.bool_(terminal_score == "verifier"), expansions=k,
                     capacity=cap, greedy=bool(greedy_tokens),
                     temperature=float(temperature),
                     max_step_tokens=step_tokens)
