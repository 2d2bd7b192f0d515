"""Test-time search over answers: decoding, best-of-N, beam, DVTS, particles.

Every algorithm here has the same signature::

  algo(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
       budget, **hyperparameters) -> SearchOutput

and the same compute accounting (:mod:`tsearch.algorithms.rows`). They are
jitted (hyperparameters static) and batched over ``B`` problems; the same key
gives the same answers. What the budget means:

===============  ============================================================
greedy           one argmax answer (the budget is checked, not used)
sampling         one sampled answer (the budget is checked, not used)
best_of_n        ``N = budget`` independent samples, one answer chosen by
                 ``aggregate`` (``majority``, ``weighted`` or ``best_value``)
beam             step-level beam search guided by the value head (AlphaMath):
                 ``budget`` candidate steps per round, i.e. ``W`` beams x
                 ``K = budget // W`` sampled steps each, keep the top ``W`` by
                 value
dvts             diverse verifier tree search: ``budget // K`` independent
                 subtrees, each a width-1 beam with ``K`` sampled steps per
                 round
particle_filter  ``N = budget`` particles, one step each per round, weighted
                 by ``exp(value / temperature)`` and resampled (systematic,
                 explicit key) every round
best_first       best-first (A*-style) search over steps
                 (:mod:`tsearch._src.algorithms.best_first`): ``budget``
                 expansions, each popping the frontier entry of highest
                 ``value + cost_weight * logprob`` and sampling ``K`` steps
                 from it; the first finished answer popped is the answer
===============  ============================================================

By default the value head alone guides the search and chooses answers
(``terminal_score='value'``). With ``terminal_score='verifier'`` a finished
sequence is scored by the task's verifier instead (reward 1 -> the top of the
model's value range, 0 -> the bottom), as MCTS does at terminal nodes; use it
only where the verifier needs no reference answer (every task in
``tsearch.tasks`` checks an answer from its prompt alone).
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

import models
from models import sharding
from tsearch._src.algorithms import rows as rows_lib

Array = chex.Array
AGGREGATES = ("majority", "weighted", "best_value")
TERMINAL_SCORES = ("value", "verifier")


@chex.dataclass(frozen=True)
class SearchOutput:
  """The answers a search chose, its candidates and the compute it spent.

  ``M`` is the number of finished candidates the algorithm ends with (1 for
  greedy/sampling/MCTS/best-first, ``N`` for best-of-N and particle
  filtering, the beams for beam search and DVTS).
  """
  answers: Array  # [B, T] int32 chosen answer, PAD after its end
  answer_lengths: Array  # [B] int32
  answer_scores: Array  # [B] float32 score of the chosen answer
  candidates: Array  # [B, M, T] int32
  candidate_lengths: Array  # [B, M] int32
  candidate_scores: Array  # [B, M] float32 value head (see terminal_score)
  candidate_finished: Array  # [B, M] bool, ended by EOS / the task
  model_calls: Array  # [B] int32 sequential forward passes
  tokens_forwarded: Array  # [B] int32 tokens through the model


# ----------------------------------------------------------------- checks


def check_budget(budget) -> int:
  if (isinstance(budget, bool) or not isinstance(budget, (int, np.integer))
      or budget < 1):
    raise ValueError(
        f"budget must be a positive int (samples, candidate steps per round, "
        f"particles or simulations); got {budget!r}.")
  return int(budget)


def check_inputs(graphdef, state, task, prompt_tokens, prompt_lengths):
  if task.num_players != 1:
    raise ValueError(f"The search family needs a one-player task; "
                     f"{task.name} has {task.num_players} players.")
  rows_lib.check_model_fits(graphdef, state, task)
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  if (prompt_tokens.ndim != 2 or prompt_tokens.shape[1] != task.max_prompt_length
      or prompt_lengths.shape != prompt_tokens.shape[:1]):
    raise ValueError(
        f"prompt_tokens must be [B, P={task.max_prompt_length}] and "
        f"prompt_lengths [B]; got {prompt_tokens.shape} and "
        f"{prompt_lengths.shape}. Use task.encode_prompts(problems).")
  return prompt_tokens, prompt_lengths


def _check_temperature(temperature):
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0 (use greedy=True for argmax); "
                     f"got {temperature}.")


def _check_terminal_score(terminal_score):
  if terminal_score not in TERMINAL_SCORES:
    raise ValueError(f"terminal_score must be one of {TERMINAL_SCORES}; got "
                     f"{terminal_score!r}.")


def score_rows(task, rows, *, terminal_score: str,
               value_range: tuple[float, float]) -> Array:
  """``[R]`` score of each row: the value head, or for finished rows with
  ``terminal_score='verifier'`` the verifier's reward mapped onto the value
  range."""
  if terminal_score == "value":
    return rows.value
  lo, hi = value_range
  done = task.is_terminal(rows.task_state)
  return jnp.where(done, lo + task.reward(rows.task_state) * (hi - lo),
                   rows.value)


def _check_aggregate(aggregate):
  if aggregate not in AGGREGATES:
    raise ValueError(f"aggregate must be one of {AGGREGATES}; got "
                     f"{aggregate!r}.")


def _check_options(aggregate, terminal_score, temperature):
  _check_aggregate(aggregate)
  _check_terminal_score(terminal_score)
  _check_temperature(temperature)


def _check_capacity(n: int, capacity: int | None, what: str) -> int:
  """The capacity (default ``n``); an error if ``n`` sequences exceed it."""
  cap = n if capacity is None else capacity
  if n > cap:
    raise ValueError(f"budget={n} {what} exceed capacity={cap}; raise the "
                     "capacity or lower the budget.")
  return cap


# ------------------------------------------------------------ aggregation


def same_answers(candidates: Array, answer_ids: Array | None = None
                 ) -> Array:
  """``[B, M, M]`` bool: whether candidates ``i`` and ``j`` of a problem give
  the same answer (equal ``answer_ids`` ``[B, M]`` where the task extracts
  final answers, a negative id equal to nothing but itself; else equal
  answer tokens ``[B, M, T]``, PAD after the end)."""
  if answer_ids is None:
    return jnp.all(candidates[:, :, None] == candidates[:, None, :], -1)
  ids = jnp.asarray(answer_ids)
  same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)
  return same | jnp.eye(ids.shape[1], dtype=bool)[None]


def choose(candidates: Array, lengths: Array, values: Array, finished: Array,
           *, aggregate: str, answer_ids: Array | None = None) -> Array:
  """Index ``[B]`` of the chosen candidate per problem.

  Answers are compared by their full answer tokens, or by ``answer_ids``
  ``[B, M]`` where the task extracts a final answer from free text
  (``task.answer_ids``: equal ids, equal final answers; a negative id, no
  final answer, equals nothing). ``majority``: the most
  frequent finished answer; ``weighted``: the answer with the largest sum of
  values clipped to [0, 1] (a one-player value estimates the reward, 1 for a
  right answer and 0 for a wrong one, so a candidate valued 0 adds nothing;
  a verifier score of ``value_range[0]`` clips to 0); ``best_value``: the
  finished candidate with the largest value. Ties go to the lowest index;
  unfinished candidates count only when none finished.

  Args:
    candidates: ``[B, M, T]`` answer tokens.
    lengths: ``[B, M]``.
    values: ``[B, M]`` value head after each answer.
    finished: ``[B, M]`` bool.
  """
  del lengths  # PAD after the end makes whole-row equality exact.
  eligible = finished | ~jnp.any(finished, -1, keepdims=True)
  if aggregate == "best_value":
    score = values
  else:
    same = same_answers(candidates, answer_ids)
    if aggregate == "majority":
      w = jnp.ones_like(values)
    else:
      w = jnp.clip(values, 0.0, 1.0)
    w = jnp.where(eligible, w, 0.0)
    score = jnp.einsum("bij,bj->bi", same.astype(w.dtype), w)
  score = jnp.where(eligible, score, -jnp.inf)
  return jnp.argmax(score, axis=-1).astype(jnp.int32)


def _output(task, rows, counters, b, *, aggregate, value_range,
            terminal_score):
  m = rows.length.shape[0] // b
  cand = rows.tokens.reshape(b, m, -1)
  lengths = rows.length.reshape(b, m)
  values = score_rows(task, rows, terminal_score=terminal_score,
                      value_range=value_range).reshape(b, m)
  finished = task.is_terminal(rows.task_state).reshape(b, m)
  ids = task.answer_ids(rows.task_state) if hasattr(task,
                                                    "answer_ids") else None
  idx = choose(cand, lengths, values, finished, aggregate=aggregate,
               answer_ids=None if ids is None else ids.reshape(b, m))
  rb = jnp.arange(b)
  return SearchOutput(
      answers=cand[rb, idx], answer_lengths=lengths[rb, idx],
      answer_scores=values[rb, idx], candidates=cand,
      candidate_lengths=lengths, candidate_scores=values,
      candidate_finished=finished, model_calls=counters.model_calls,
      tokens_forwarded=counters.tokens_forwarded)


def _value_range(graphdef, state):
  return tuple(models.model_config_of(graphdef, state).value_range)


# ---------------------------------------------------- independent samples


@sharding.on_params_mesh
@functools.partial(jax.jit, static_argnames=(
    "graphdef", "task", "num_samples", "greedy", "temperature", "aggregate", "terminal_score"))
def _independent(graphdef, state, task, prompt_tokens, prompt_lengths,
                 rng_key, *, num_samples, greedy, temperature, aggregate,
                 terminal_score):
  b = prompt_tokens.shape[0]
  sample_key, _ = jax.random.split(rng_key)
  rows, counters = rows_lib.prefill(graphdef, state, task, prompt_tokens,
                                    prompt_lengths)
  rows = rows_lib.repeat_rows(rows, num_samples)
  row_keys = jax.random.split(sample_key, b * num_samples)
  rows, counters = rows_lib.sample(
      graphdef, state, task, rows, counters, row_keys,
      max_tokens=task.max_answer_length, stop_at_step=False, greedy=greedy,
      temperature=temperature)
  return _output(task, rows, counters, b, aggregate=aggregate,
                 value_range=_value_range(graphdef, state),
                 terminal_score=terminal_score)


def greedy(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
           budget: int = 1) -> SearchOutput:
  """Greedy (argmax) decoding under the task's legal mask. ``rng_key`` and
  ``budget`` are checked, not used. See the module docstring."""
  check_budget(budget)
  prompt_tokens, prompt_lengths = check_inputs(graphdef, state, task,
                                                prompt_tokens, prompt_lengths)
  return _independent(graphdef, state, task, prompt_tokens, prompt_lengths,
                      rng_key, num_samples=1, greedy=True, temperature=1.0,
                      aggregate="best_value", terminal_score="value")


def sampling(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
             budget: int = 1, temperature: float = 1.0) -> SearchOutput:
  """One sampled answer per problem (``budget`` is checked, not used)."""
  check_budget(budget)
  _check_temperature(temperature)
  prompt_tokens, prompt_lengths = check_inputs(graphdef, state, task,
                                                prompt_tokens, prompt_lengths)
  return _independent(graphdef, state, task, prompt_tokens, prompt_lengths,
                      rng_key, num_samples=1, greedy=False,
                      temperature=float(temperature), aggregate="best_value",
                      terminal_score="value")


def best_of_n(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
              *, budget: int, aggregate: str = "weighted",
              temperature: float = 1.0,
              terminal_score: str = "value") -> SearchOutput:
  """``budget`` independent samples; one chosen by ``aggregate``.

  With ``budget=1`` it is :func:`sampling` with the same key.

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    task: a one-player :class:`tsearch.tasks.Task`.
    prompt_tokens: ``[B, P]``; prompt_lengths: ``[B]``.
    rng_key: a JAX key.
    budget: ``N`` samples per problem.
    aggregate: ``majority``, ``weighted`` (value-weighted vote) or
      ``best_value``; see :func:`choose`.
    temperature: sampling temperature.

  Returns:
    :class:`SearchOutput` with ``M = N`` candidates; ``tokens_forwarded``
    is ``prompt_length + sum of the N answer lengths``.
  """
  n = check_budget(budget)
  _check_options(aggregate, terminal_score, temperature)
  prompt_tokens, prompt_lengths = check_inputs(graphdef, state, task,
                                                prompt_tokens, prompt_lengths)
  return _independent(graphdef, state, task, prompt_tokens, prompt_lengths,
                      rng_key, num_samples=n, greedy=False,
                      temperature=float(temperature), aggregate=aggregate,
                      terminal_score=terminal_score)


# ------------------------------------------------------- step-level beams


@sharding.on_params_mesh
@functools.partial(jax.jit, static_argnames=(
    "graphdef", "task", "groups", "width", "expansions", "greedy",
    "temperature", "max_step_tokens", "aggregate", "terminal_score"))
def _grouped_beam(graphdef, state, task, prompt_tokens, prompt_lengths,
                  rng_key, *, groups, width, expansions, greedy, temperature,
                  max_step_tokens, aggregate, terminal_score):
  """``groups`` independent beam searches of ``width`` beams per problem."""
  b = prompt_tokens.shape[0]
  g, w, k = groups, width, expansions
  m = g * w * k
  sample_key, _ = jax.random.split(rng_key)
  rows, counters = rows_lib.prefill(graphdef, state, task, prompt_tokens,
                                    prompt_lengths)
  rows = rows_lib.repeat_rows(rows, m)
  slot_k = jnp.tile(jnp.arange(k), b * g * w)  # [R] expansion index

  def cond(carry):
    r, rows, _ = carry
    return (r < task.max_answer_length) & ~jnp.all(rows_lib.is_done(task, rows))

  def body(carry):
    r, rows, counters = carry
    was_done = rows_lib.is_done(task, rows)
    row_keys = jax.random.split(jax.random.fold_in(sample_key, r), b * m)
    rows, counters = rows_lib.sample(
        graphdef, state, task, rows, counters, row_keys,
        max_tokens=max_step_tokens, stop_at_step=True, greedy=greedy,
        temperature=temperature)
    # A finished beam stays a candidate once, not K times.
    score = score_rows(task, rows, terminal_score=terminal_score,
                       value_range=_value_range(graphdef, state))
    score = jnp.where(was_done & (slot_k > 0), -jnp.inf, score)
    _, top = jax.lax.top_k(score.reshape(b, g, w * k), w)  # [B, G, W]
    base = (jnp.arange(b)[:, None, None] * m
            + jnp.arange(g)[None, :, None] * (w * k))
    chosen = (base + top).reshape(-1)  # [B * G * W]
    return r + 1, rows_lib.take_rows(rows, jnp.repeat(chosen, k)), counters

  _, rows, counters = jax.lax.while_loop(cond, body,
                                         (jnp.int32(0), rows, counters))
  beams = rows_lib.take_rows(rows, jnp.arange(0, b * m, k))  # one per beam
  return _output(task, beams, counters, b, aggregate=aggregate,
                 value_range=_value_range(graphdef, state),
                 terminal_score=terminal_score)


def _step_tokens(task, max_step_tokens):
  if max_step_tokens is None:
    return task.max_answer_length
  if not isinstance(max_step_tokens, (int, np.integer)) or max_step_tokens < 1:
    raise ValueError(f"max_step_tokens must be a positive int or None; got "
                     f"{max_step_tokens!r}.")
  return int(max_step_tokens)


def beam(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
         budget: int, beam_width: int | None = None,
         capacity: int | None = None, aggregate: str = "best_value",
         temperature: float = 1.0, greedy_tokens: bool = False,
         max_step_tokens: int | None = None,
         terminal_score: str = "value") -> SearchOutput:
  """Step-level beam search guided by the value head (AlphaMath).

  Each round expands each of the ``W`` beams into ``K = budget // W`` steps
  (tokens up to the task's step delimiter), scores every candidate by the
  value head after its step and keeps the top ``W`` per problem. The first
  round expands the prompt into all ``budget`` candidates. A finished beam
  is kept as one candidate (not re-expanded). Rounds go on until every beam
  has finished.

  Args:
    budget: candidate steps per round, ``W * K``.
    beam_width: ``W``; default ``max(1, budget // 4)``. Must divide
      ``budget``.
    capacity: sequences the search may hold per problem at once (its tree
      capacity per round); default ``budget``. ``W * K > capacity`` is an
      error.
    aggregate: how to choose among the ``W`` final beams.
    temperature: sampling temperature of the steps.
    greedy_tokens: decode each step by argmax (with ``W = K = 1`` this is
      greedy decoding).
    max_step_tokens: most tokens of one step (a longer step is cut there
      and continued next round); default the answer length.

  Returns:
    :class:`SearchOutput` with the ``W`` final beams as candidates.
  """
  n = check_budget(budget)
  w = max(1, n // 4) if beam_width is None else beam_width
  if not isinstance(w, (int, np.integer)) or w < 1:
    raise ValueError(f"beam_width must be a positive int; got {w!r}.")
  cap = n if capacity is None else capacity
  if w > cap or w > n:
    raise ValueError(
        f"beam_width={w} is wider than the search's capacity ({cap} "
        f"sequences per problem, budget={n}); use beam_width <= "
        f"{min(cap, n)} or raise the budget/capacity.")
  if n % w:
    raise ValueError(f"budget={n} must be a multiple of beam_width={w} "
                     f"(each beam expands into budget // beam_width steps).")
  if n > cap:
    raise ValueError(f"budget={n} candidates per round exceed capacity={cap}.")
  _check_options(aggregate, terminal_score, temperature)
  prompt_tokens, prompt_lengths = check_inputs(graphdef, state, task,
                                                prompt_tokens, prompt_lengths)
  return _grouped_beam(graphdef, state, task, prompt_tokens, prompt_lengths,
                       rng_key, groups=1, width=int(w), expansions=n // w,
                       greedy=bool(greedy_tokens),
                       temperature=float(temperature),
                       max_step_tokens=_step_tokens(task, max_step_tokens),
                       aggregate=aggregate, terminal_score=terminal_score)


def dvts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
         budget: int, expansions: int = 4, capacity: int | None = None,
         aggregate: str = "weighted", temperature: float = 1.0,
         max_step_tokens: int | None = None,
         terminal_score: str = "value") -> SearchOutput:
  """Diverse verifier tree search (Beeching et al., search-and-learn).

  ``budget // expansions`` independent subtrees; each round every subtree
  expands its one beam into ``expansions`` sampled steps and keeps the one
  with the highest value. The subtrees' final answers are aggregated.

  Args:
    budget: candidate steps per round over all subtrees; a multiple of
      ``expansions``.
    expansions: ``K``, steps sampled per subtree and round.
    capacity: sequences held per problem; default ``budget``.
  """
  n = check_budget(budget)
  if not isinstance(expansions, (int, np.integer)) or expansions < 1:
    raise ValueError(f"expansions must be a positive int; got {expansions!r}.")
  _check_capacity(n, capacity, "candidates per round")
  if n % expansions:
    raise ValueError(f"budget={n} must be a multiple of expansions="
                     f"{expansions} (one subtree per {expansions} candidates).")
  _check_options(aggregate, terminal_score, temperature)
  prompt_tokens, prompt_lengths = check_inputs(graphdef, state, task,
                                                prompt_tokens, prompt_lengths)
  return _grouped_beam(graphdef, state, task, prompt_tokens, prompt_lengths,
                       rng_key, groups=n // expansions, width=1,
                       expansions=int(expansions), greedy=False,
                       temperature=float(temperature),
                       max_step_tokens=_step_tokens(task, max_step_tokens),
                       aggregate=aggregate, terminal_score=terminal_score)


# ------------------------------------------------------ particle filtering


def systematic_resample(key: Array, log_weights: Array) -> Array:
  """Ancestor indices ``[B, N]`` by systematic resampling of ``[B, N]``.

  One uniform draw per problem. With equal weights every particle is its
  own ancestor (exactly: the unnormalised weights are then all 1 and the
  cumulative sums are exact integers).
  """
  b, n = log_weights.shape
  w = jnp.exp(log_weights - jnp.max(log_weights, -1, keepdims=True))
  cum = jnp.cumsum(w, -1) * (n / jnp.sum(w, -1, keepdims=True))  # [B, N]
  u = jax.random.uniform(key, (b, 1))
  points = jnp.arange(n)[None, :] + u  # [B, N]
  anc = jnp.sum(cum[:, None, :] <= points[:, :, None], -1)
  return jnp.minimum(anc, n - 1).astype(jnp.int32)


@sharding.on_params_mesh
@functools.partial(jax.jit, static_argnames=(
    "graphdef", "task", "num_particles", "temperature", "value_temperature",
    "max_step_tokens", "aggregate", "terminal_score"))
def _particles(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
               *, num_particles, temperature, value_temperature,
               max_step_tokens, aggregate, terminal_score):
  b, n = prompt_tokens.shape[0], num_particles
  sample_key, select_key = jax.random.split(rng_key)
  rows, counters = rows_lib.prefill(graphdef, state, task, prompt_tokens,
                                    prompt_lengths)
  rows = rows_lib.repeat_rows(rows, n)
  # The same row keys as best_of_n / sampling: slot i keeps its stream.
  row_keys = jax.random.split(sample_key, b * n)

  def cond(carry):
    r, rows, _ = carry
    return (r < task.max_answer_length) & ~jnp.all(rows_lib.is_done(task, rows))

  def body(carry):
    r, rows, counters = carry
    rows, counters = rows_lib.sample(
        graphdef, state, task, rows, counters, row_keys,
        max_tokens=max_step_tokens, stop_at_step=True,
        temperature=temperature)
    log_w = score_rows(task, rows, terminal_score=terminal_score,
                       value_range=_value_range(graphdef, state))
    log_w = log_w.reshape(b, n) / value_temperature
    anc = systematic_resample(jax.random.fold_in(select_key, r), log_w)
    # No resampling after the last round: the candidates stay the particles.
    anc = jnp.where(jnp.all(rows_lib.is_done(task, rows)), jnp.arange(n), anc)
    index = (jnp.arange(b)[:, None] * n + anc).reshape(-1)
    return r + 1, rows_lib.take_rows(rows, index), counters

  _, rows, counters = jax.lax.while_loop(cond, body,
                                         (jnp.int32(0), rows, counters))
  return _output(task, rows, counters, b, aggregate=aggregate,
                 value_range=_value_range(graphdef, state),
                 terminal_score=terminal_score)


def particle_filter(graphdef, state, task, prompt_tokens, prompt_lengths,
                    rng_key, *, budget: int, value_temperature: float = 0.1,
                    temperature: float = 1.0, aggregate: str = "weighted",
                    capacity: int | None = None,
                    max_step_tokens: int | None = None,
                    terminal_score: str = "value") -> SearchOutput:
  """Particle filtering over steps (Puri et al. 2025), value-head weights.

  Each round every unfinished particle samples one step; every particle
  (finished ones too) is weighted by ``exp(value / value_temperature)`` and
  all are resampled systematically with ``fold_in(select_key, round)``
  (except after the last round).
  With ``value_temperature=inf`` the weights are equal, resampling is the
  identity, and the particles are exactly :func:`best_of_n`'s samples for
  the same key.

  Args:
    budget: ``N`` particles per problem.
    value_temperature: softness of the weights (``inf``: equal weights).
    capacity: sequences held per problem; default ``budget``.
  """
  n = check_budget(budget)
  _check_capacity(n, capacity, "particles")
  if not value_temperature > 0:
    raise ValueError(f"value_temperature must be > 0 (inf for equal "
                     f"weights); got {value_temperature}.")
  _check_options(aggregate, terminal_score, temperature)
  prompt_tokens, prompt_lengths = check_inputs(graphdef, state, task,
                                                prompt_tokens, prompt_lengths)
  return _particles(graphdef, state, task, prompt_tokens, prompt_lengths,
                    rng_key, num_particles=n, temperature=float(temperature),
                    value_temperature=float(value_temperature),
                    max_step_tokens=_step_tokens(task, max_step_tokens),
                    aggregate=aggregate, terminal_score=terminal_score)
