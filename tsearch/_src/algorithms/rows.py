"""Sequences ("rows") with their own KV cache, sampled token by token.

The test-time search family (best-of-N, step-level beam search, DVTS,
particle filtering) works on a frontier of ``R = B * M`` rows: ``M``
sequences per problem. Each row holds an ordinary KV cache laid out as

  slots ``[0, P)``: the problem's prompt (encoded ONCE per problem by
  :func:`prefill`, then copied to the problem's rows), and
  slots ``[P, P + T)``: the row's own answer tokens, slot ``P + j`` for
  answer token ``j``.

Keys are stored already rotated at their positions, so slot order only
matters through the mask. Beam search and particle filtering reorder rows
with :func:`take_rows` (a copy of caches; no model compute). This is the
library's one decoder: greedy and sampled decoding (the family's ``greedy``
and ``sampling``) are rows too. MCTS (:func:`tsearch.rollout`) keeps its KV
in the tree instead and counts compute the same way: every prompt token
forwarded once per problem and every sampled token once.

Randomness is counter based: answer token ``j`` of a row is drawn with
``fold_in(row_key, j)``. So a row gives the same tokens whether it is
generated in one go or step by step with pauses in between (which is what
makes particle filtering with equal weights equal independent sampling).

Compute accounting, per problem ``[B]``:

* ``tokens_forwarded``: prompt tokens (once) plus every token fed through the
  model for a live row. Rows that have finished are not counted (the
  fixed-shape program still computes them; a server would not).
* ``model_calls``: forward passes in which the problem had at least one live
  row (the prefill is one). Rows of one problem are batched into one call,
  so this is the number of *sequential* model calls (a latency proxy), while
  ``tokens_forwarded`` is the compute.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

import models
from models import sharding
from tsearch._src.base import step_ended

Array = chex.Array
_NEG = -1e30


@chex.dataclass(frozen=True)
class Rows:
  """``R`` sequences, each with its cache, task state and last outputs."""
  keys: Array  # [L, R, C, Hkv, Dh], C = P + T
  values: Array  # [L, R, C, Hkv, Dh]
  mask: Array  # [R, C] bool, cache slots in use
  prompt_length: Array  # [R] int32
  tokens: Array  # [R, T] int32 answer tokens, PAD after ``length``
  length: Array  # [R] int32 answer tokens written
  task_state: Any  # the task's state, leaves [R, ...]
  logits: Array  # [R, V] float32 next-token logits after the last token
  value: Array  # [R] float32 value head after the last token


@chex.dataclass(frozen=True)
class Counters:
  """Compute spent per problem (see the module docstring)."""
  model_calls: Array  # [B] int32
  tokens_forwarded: Array  # [B] int32


def check_model_fits(graphdef, state, task) -> None:
  """Raises ValueError if prompt + answer do not fit the model's context."""
  cfg = models.model_config_of(graphdef, state)
  need = task.max_prompt_length + task.max_answer_length
  if need > cfg.max_seq_len:
    raise ValueError(
        f"The {task.name} task needs {need} positions (max_prompt_length "
        f"{task.max_prompt_length} + max_answer_length "
        f"{task.max_answer_length}) but the model's max_seq_len is "
        f"{cfg.max_seq_len}; use a model with a longer context.")
  if cfg.vocab_size < task.vocab.size:
    raise ValueError(
        f"The model's vocab_size {cfg.vocab_size} is smaller than the "
        f"{task.name} task's vocabulary ({task.vocab.size}).")


def _constrain(cache: Array) -> Array:
  """Rows' caches ``[L, R, C, Hkv, Dh]``: rows over ``data``, KV heads over
  ``model`` under a mesh (:func:`models.sharding.constrain_kv`)."""
  return sharding.constrain_kv(cache, batch_dim=1, heads_dim=3)


def prefill(graphdef, state, task, prompt_tokens: Array,
            prompt_lengths: Array) -> tuple[Rows, Counters]:
  """Encodes each prompt once; one row per problem.

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    task: a :class:`tsearch.tasks.Task`.
    prompt_tokens: ``[B, P]`` right-padded prompts.
    prompt_lengths: ``[B]`` real prompt tokens.

  Returns:
    ``(rows [B], counters)``; counters hold one call and ``prompt_lengths``
    tokens per problem.
  """
  b, p = prompt_tokens.shape
  t = task.max_answer_length
  valid = jnp.arange(p)[None, :] < prompt_lengths[:, None]
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  out = models.forward(graphdef, state, prompt_tokens, positions,
                       token_mask=valid)
  last = prompt_lengths - 1
  rb = jnp.arange(b)
  pad = ((0, 0), (0, 0), (0, t), (0, 0), (0, 0))
  rows = Rows(
      keys=_constrain(jnp.pad(out.keys, pad)),
      values=_constrain(jnp.pad(out.values, pad)),
      mask=jnp.pad(valid, ((0, 0), (0, t))),
      prompt_length=prompt_lengths.astype(jnp.int32),
      tokens=jnp.full((b, t), task.pad_id, jnp.int32),
      length=jnp.zeros((b,), jnp.int32),
      task_state=task.init_state(prompt_tokens),
      logits=out.logits[rb, last], value=out.value[rb, last])
  counters = Counters(model_calls=jnp.ones((b,), jnp.int32),
                      tokens_forwarded=prompt_lengths.astype(jnp.int32))
  return rows, counters


def _map_rows(fn, rows: Rows) -> Rows:
  """Applies ``fn(x, axis)`` to every leaf along its row axis."""
  def leaf(path, x):
    name = getattr(path[0], "key", getattr(path[0], "name", None))
    return fn(x, 1 if name in ("keys", "values") else 0)
  return jax.tree_util.tree_map_with_path(leaf, rows)


def repeat_rows(rows: Rows, m: int) -> Rows:
  """Each row ``m`` times in a row: ``[R] -> [R * m]``."""
  return _map_rows(lambda x, ax: jnp.repeat(x, m, axis=ax), rows)


def take_rows(rows: Rows, index: Array) -> Rows:
  """Rows ``index`` (``[R']`` int) of ``rows``; copies caches."""
  return _map_rows(lambda x, ax: jnp.take(x, index, axis=ax), rows)


def is_done(task, rows: Rows) -> Array:
  return task.is_terminal(rows.task_state)


def token_step(graphdef, state, task, rows: Rows, active: Array,
               row_keys: Array, *, greedy: bool, temperature: float
               ) -> tuple[Rows, Array]:
  """Draws one answer token per ``active`` row and forwards it.

  Inactive rows are left unchanged (the forward runs on them too, for fixed
  shapes, but its results are dropped).

  Returns:
    ``(rows, token [R])``; ``token`` is PAD on inactive rows.
  """
  r = rows.length.shape[0]
  p = rows.mask.shape[1] - rows.tokens.shape[1]
  t = rows.tokens.shape[1]
  legal = task.legal_mask(rows.task_state)
  v = legal.shape[-1]
  logits = jnp.where(legal, rows.logits[:, :v], _NEG)
  if greedy:
    tok = jnp.argmax(logits, axis=-1)
  else:
    keys = jax.vmap(jax.random.fold_in)(row_keys, rows.length)
    tok = jax.vmap(jax.random.categorical)(keys, logits / temperature)
  tok = jnp.where(active, tok.astype(jnp.int32), task.pad_id)
  cfg = models.model_config_of(graphdef, state)
  positions = jnp.minimum(rows.prompt_length + rows.length,
                          cfg.max_seq_len - 1)[:, None]
  out = models.forward(graphdef, state, tok[:, None], positions,
                       kv_context=models.KVContext(
                           keys=rows.keys, values=rows.values, mask=rows.mask,
                           positions=_slot_positions(rows, p)))
  ridx = jnp.arange(r)
  c = rows.mask.shape[1]
  slot = jnp.where(active, p + rows.length, c)  # c: out of range, dropped
  tslot = jnp.where(active, rows.length, t)
  new_state = task.step(rows.task_state, tok)

  def select(n, o):
    return jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)

  rows = rows.replace(
      keys=_constrain(rows.keys.at[:, ridx, slot].set(out.keys[:, :, 0],
                                                      mode="drop")),
      values=_constrain(rows.values.at[:, ridx, slot].set(out.values[:, :, 0],
                                                          mode="drop")),
      mask=rows.mask.at[ridx, slot].set(True, mode="drop"),
      tokens=rows.tokens.at[ridx, tslot].set(tok, mode="drop"),
      length=rows.length + active.astype(jnp.int32),
      task_state=jax.tree.map(select, new_state, rows.task_state),
      logits=select(out.logits[:, 0], rows.logits),
      value=select(out.value[:, 0], rows.value))
  return rows, tok


def _slot_positions(rows: Rows, p: int) -> Array:
  """``[R, P + T]`` absolute position of each KV slot: the prompt's slots are
  their index; answer token ``i`` (slot ``P + i``) follows the row's prompt."""
  c = rows.mask.shape[1]
  slot = jnp.arange(c, dtype=jnp.int32)[None]
  return jnp.where(slot < p, slot, rows.prompt_length[:, None] + slot - p)


def sample(graphdef, state, task, rows: Rows, counters: Counters,
           row_keys: Array, *, max_tokens: int, stop_at_step: bool,
           greedy: bool = False, temperature: float = 1.0,
           with_logprob: bool = False):
  """Extends every unfinished row by up to ``max_tokens`` tokens.

  A row stops at the end of its answer and, with ``stop_at_step``, where
  ``task.step_ended`` says a step ended (after the task's step delimiter
  token; after every token where the task has none).

  Args:
    rows: ``R = B * M`` rows, problem-major (row ``i`` is problem ``i // M``).
    counters: per-problem counters ``[B]``; updated.
    row_keys: ``[R]`` keys (see the module docstring).
    with_logprob: also return, per row, the summed log-probability of the
      tokens drawn (under the legal mask, temperature 1).

  Returns:
    ``(rows, counters)``, and ``logprob [R]`` with ``with_logprob``.
  """
  b = counters.model_calls.shape[0]
  active = ~is_done(task, rows)

  def cond(carry):
    i, _, active, _, _ = carry
    return (i < max_tokens) & jnp.any(active)

  def body(carry):
    i, rows, active, cnt, logprob = carry
    per_problem = active.reshape(b, -1)
    cnt = Counters(
        model_calls=cnt.model_calls + jnp.any(per_problem, -1).astype(
            jnp.int32),
        tokens_forwarded=cnt.tokens_forwarded + per_problem.sum(-1).astype(
            jnp.int32))
    if with_logprob:
      legal = task.legal_mask(rows.task_state)
      log_p = jax.nn.log_softmax(
          jnp.where(legal, rows.logits[:, :legal.shape[-1]], -jnp.inf), -1)
    rows, tok = token_step(graphdef, state, task, rows, active, row_keys,
                           greedy=greedy, temperature=temperature)
    if with_logprob:
      drawn = jnp.take_along_axis(log_p, tok[:, None], -1)[:, 0]
      logprob = logprob + jnp.where(active, drawn, 0.0)
    ended = is_done(task, rows)
    if stop_at_step:
      ended = ended | step_ended(task, rows.task_state, tok)
    return i + 1, rows, active & ~ended, cnt, logprob

  r = rows.length.shape[0]
  _, rows, _, counters, logprob = jax.lax.while_loop(
      cond, body, (jnp.int32(0), rows, active, counters,
                   jnp.zeros((r,), jnp.float32)))
  if with_logprob:
    return rows, counters, logprob
  return rows, counters
