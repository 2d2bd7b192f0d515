"""Search-and-learn: search, commit moves, score, build targets, train — in
one jitted, data-parallel step.

On each device's share of prompts, :func:`rollout` runs a token-level tree
search (``tsearch.puct_search`` or ``tsearch.gumbel_search``) at the current
position, commits the chosen token, keeps the subtree below it
(``tsearch.reroot``) and repeats until every trajectory has ended. The task's
verifier scores each trajectory. The targets are, per committed position:

* policy: the search's action weights (visit distribution for PUCT, improved
  policy for Gumbel) over the K children; the loss is the cross-entropy of
  the model's distribution over those K tokens (renormalised);
* value: the outcome, the tree's value at the node, or a mix (AlphaMath);
* optional SFT: the LM loss on the answer tokens of solved trajectories.

Node evaluation here recomputes the whole (short) prefix with the model for
each new node; it is exact and simple, and fine for the small tasks it is
used on. ``tsearch.lm_search`` (the tree as KV cache) is the fast path.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import tsearch
from train import losses as losses_lib
from train import step as step_lib
from train import targets as targets_lib

Array = chex.Array


@chex.dataclass(frozen=True)
class Position:
  """Where each row of a rollout stands."""
  seq: Array  # [B, L] int32, prompt then answer tokens, PAD after length
  length: Array  # [B] int32, tokens in seq
  task_state: Any  # the task's state, leaves [B, ...]


def _evaluate(task, apply_fn, params, pos: Position, num_children: int):
  """Model logits/value at the last token of ``pos``; top-K legal children."""
  b, l = pos.seq.shape
  rows = jnp.arange(b)
  positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  out = apply_fn(params, pos.seq, positions,
                 jnp.arange(l)[None, :] < pos.length[:, None])
  last = pos.length - 1
  logits = out.logits[rows, last]  # [B, V]
  value = out.value[rows, last]  # [B]
  legal = task.legal_mask(pos.task_state)  # [B, V]
  terminal = task.is_terminal(pos.task_state)
  masked = jnp.where(legal, logits, -jnp.inf)
  top_logits, top_tokens = jax.lax.top_k(masked, num_children)
  children_mask = jnp.isfinite(top_logits) & ~terminal[:, None]
  prior = jnp.where(children_mask, top_logits, 0.0)
  return prior, value, top_tokens.astype(jnp.int32), children_mask, terminal


def _advance(task, pos: Position, token: Array) -> Position:
  active = ~task.is_terminal(pos.task_state)
  rows = jnp.arange(pos.seq.shape[0])
  at = jnp.minimum(pos.length, pos.seq.shape[1] - 1)
  seq = jnp.where(active[:, None], pos.seq.at[rows, at].set(token), pos.seq)
  return Position(seq=seq, length=pos.length + active.astype(jnp.int32),
                  task_state=task.step(pos.task_state, token))


def rollout(task, apply_fn, params, prompt: Array, prompt_length: Array,
            key: Array, *, seq_len: int, algorithm: str, num_simulations: int,
            num_children: int, capacity: int, temperature: float = 1.0):
  """Searches and commits tokens until every answer ends.

  Args:
    task: a one-player task (``num_players == 1``).
    apply_fn: ``(params, tokens, positions, token_mask) -> ModelOutput``.
    params: model parameters.
    prompt: ``[B, P]`` prompt tokens; ``prompt_length`` ``[B]``.
    key: random key.
    seq_len: ``L >= P + task.max_answer_length``.

  Returns:
    A dict: ``seq [B, L]``, ``length [B]``, ``outcome [B]``, and per move
    ``M = task.max_answer_length``: ``weights``, ``children_tokens``,
    ``children_mask`` ``[B, M, K]``, ``root_value [B, M]`` (tree value at the
    committed node), ``active [B, M]``; and ``overflowed [B]``.
  """
  b, p = prompt.shape
  m = task.max_answer_length
  seq = jnp.zeros((b, seq_len), jnp.int32).at[:, :p].set(prompt)
  pos = Position(seq=seq, length=prompt_length.astype(jnp.int32),
                 task_state=task.init_state(prompt))

  def root_of(params, pos):
    prior, value, tokens, mask, _ = _evaluate(task, apply_fn, params, pos,
                                              num_children)
    return tsearch.RootOutput(prior_logits=prior, value=value, embedding=pos,
                              children_actions=tokens[..., None],
                              children_mask=mask)

  def expand_fn(params, key, tree, parent, slot):
    del key
    rows = jnp.arange(b)
    parent_pos = jax.tree.map(lambda x: x[rows, parent], tree.embeddings)
    token = tree.children_actions[rows, parent, slot, 0]
    child = _advance(task, parent_pos, token)
    prior, value, tokens, mask, terminal = _evaluate(task, apply_fn, params,
                                                     child, num_children)
    reward = jnp.where(terminal, task.reward(child.task_state), 0.0)
    return tsearch.ExpandOutput(
        reward=reward, discount=task.discount(child.task_state),
        prior_logits=prior, value=jnp.where(terminal, 0.0, value),
        terminal=terminal, children_actions=tokens[..., None],
        children_mask=mask, embedding=child)

  def search(key, root, tree):
    kw = dict(num_simulations=num_simulations, tree=tree)
    if algorithm == "gumbel":
      return tsearch.gumbel_search(params, key, root, expand_fn,
                                   max_num_considered_actions=num_children,
                                   **kw)
    return tsearch.puct_search(params, key, root, expand_fn,
                               temperature=temperature, **kw)

  tree = tsearch.empty_tree(batch_size=b, capacity=capacity,
                            num_children=num_children, action_length=1,
                            embedding_example=pos)
  tree = tree.replace(nonfinite=jnp.zeros((b,), bool))

  def move(carry, key):
    tree, pos, overflowed = carry
    active = ~task.is_terminal(pos.task_state)
    out = search(key, root_of(params, pos), tree)
    t = out.search_tree
    token = t.children_actions[:, tsearch.ROOT_INDEX, :, 0][
        jnp.arange(b), out.action]
    record = dict(weights=out.action_weights,
                  children_tokens=t.children_actions[:, tsearch.ROOT_INDEX,
                                                     :, 0],
                  children_mask=t.children_mask[:, tsearch.ROOT_INDEX],
                  root_value=t.node_values[:, tsearch.ROOT_INDEX],
                  active=active)
    carry = (tsearch.reroot(t, out.action), _advance(task, pos, token),
             overflowed | t.overflowed)
    return carry, record

  (_, pos, overflowed), records = jax.lax.scan(
      move, (tree, pos, jnp.zeros((b,), bool)), jax.random.split(key, m))
  records = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
  outcome = task.reward(pos.task_state)
  return dict(seq=pos.seq, length=pos.length, outcome=outcome,
              overflowed=overflowed, **records)


def search_loss_fn(apply_fn, *, value_target: str, outcome_weight: float):
  """Loss on a rollout's targets (see the module docstring)."""
  def loss_fn(params, batch, key):
    del key
    seq, length = batch["seq"], batch["length"]
    b, l = seq.shape
    positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    out = apply_fn(params, seq, positions,
                   jnp.arange(l)[None, :] < length[:, None])
    m = batch["weights"].shape[1]
    # Move j was chosen at the node whose last token sits at P_len - 1 + j.
    at = batch["prompt_length"][:, None] - 1 + jnp.arange(m)[None, :]
    at = jnp.minimum(at, l - 1)
    vocab_logits = jnp.take_along_axis(out.logits, at[..., None], axis=1)
    child_logits = losses_lib.children_logits(vocab_logits,
                                              batch["children_tokens"])
    active = batch["active"] & jnp.any(batch["children_mask"], -1)
    policy = losses_lib.policy_loss(child_logits, batch["weights"],
                                    batch["children_mask"], active)
    values = jnp.take_along_axis(out.value, at, axis=1)
    target = targets_lib.value_targets(
        batch["outcome"], batch["root_value"], mode=value_target,
        outcome_weight=outcome_weight)
    value = losses_lib.value_loss(values, target, batch["active"])
    answer = ((jnp.arange(l)[None] >= batch["prompt_length"][:, None])
              & (jnp.arange(l)[None] < length[:, None]))
    sft_mask = targets_lib.sft_mask(answer.astype(jnp.float32),
                                    batch["outcome"] > 0.5)
    sft = losses_lib.lm_loss(out.logits[:, :-1], seq[:, 1:], sft_mask[:, 1:])
    return {"policy": policy, "value": value, "sft": sft}
  return loss_fn


class SearchLearn:
  """The jitted search-and-learn step of a run (used by :mod:`train.loop`)."""

  def __init__(self, config: ml_collections.ConfigDict, task, fns, optimizer,
               mesh, *, max_len: int):
    s = config.search
    if s.level != "token":
      raise ValueError(
          "search.level='step' needs tsearch.lm_search (step-level search), "
          "which this trainer does not use yet; use --config.search.level="
          "token.")
    if task.num_players != 1:
      raise ValueError(
          f"Search-and-learn supports one-player tasks; {task.name} has "
          f"{task.num_players} players. Set --config.search.steps=0.")
    if s.capacity < s.num_simulations + 1:
      raise ValueError(
          f"search.capacity={s.capacity} must be >= search.num_simulations+1"
          f"={s.num_simulations + 1}.")
    self.task = task

    def prepare(params, batch, key):
      r = rollout(task, fns.apply, params, batch["prompt"],
                  batch["prompt_length"], key, seq_len=max_len,
                  algorithm=s.algorithm, num_simulations=s.num_simulations,
                  num_children=s.num_children, capacity=s.capacity,
                  temperature=s.temperature)
      r["prompt_length"] = batch["prompt_length"]
      active = r["active"].astype(jnp.float32)
      stats = {"search/solve_rate": jnp.mean(r["outcome"] > 0.5),
               "search/overflow_rate": jnp.mean(r["overflowed"]),
               "search/answer_tokens": jnp.mean(jnp.sum(active, -1))}
      return r, stats

    self._step = step_lib.make_train_step(
        search_loss_fn(fns.apply, value_target=s.value_target,
                       outcome_weight=s.value_mix),
        optimizer, mesh, prepare_fn=prepare,
        loss_weights={"policy": s.policy_weight, "value": s.value_weight,
                      "sft": s.sft_weight})
    self.mesh = mesh

  def step(self, state, examples, key):
    batch = {"prompt": np.asarray(examples["prompt"], np.int32),
             "prompt_length": np.asarray(examples["prompt_length"], np.int32)}
    return self._step(state, step_lib.shard_batch(batch, self.mesh), key)
