"""Search-and-learn: search, commit moves, score, build targets, train — in
one jitted, data-parallel step.

On each device's share of prompts, :func:`rollout` runs MCTS over the model
with the tree as its KV cache (``tsearch.make_lm_root`` /
``tsearch.make_lm_expand_fn``: every node forwards only its own tokens
against the prompt cache and its ancestors' arena entries, so no prefix is
ever encoded twice), commits the chosen action, keeps the subtree below it
and moves the committed tokens into the prompt cache (``tsearch.lm_reroot``)
and repeats until every trajectory has ended. An action is one token
(``search.level='token'``, children = top-K legal tokens) or one step
(``'step'``: K steps sampled up to the task's step delimiter, e.g. one
``a op b = c`` line). The task's verifier scores each trajectory. The
targets are, per committed node:

* policy: the search's action weights (visit distribution for PUCT, improved
  policy for Gumbel) over the K children. Token level: cross-entropy of the
  model's distribution over the K tokens (renormalised). Step level: the
  weighted negative log-likelihood of the K sampled steps
  (:func:`train.losses.weighted_step_nll`);
* value: the outcome, the tree's value at the node, or a mix (AlphaMath).
  For two-player games (discount -1) the outcome is seen from the player to
  move at each node: its sign flips every move;
* optional SFT: the LM loss on the answer tokens of solved trajectories.

With ``search.replay_size > 0`` the targets go into an on-device replay
buffer and each search is followed by ``search.updates_per_search`` updates
on batches drawn from it (:func:`train.step.make_replay_train_step`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import tsearch
from tsearch._src import lm_search as lm

from train import losses as losses_lib
from train import step as step_lib
from train import targets as targets_lib

Array = chex.Array


# ---------------------------------------------------------------------------
# Plain decoding helpers (full-prefix forward; used by train.evaluate's
# greedy/sampling baselines).


@chex.dataclass(frozen=True)
class Position:
  """Where each row of a decode stands."""
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


# ---------------------------------------------------------------------------
# Search configuration.


def num_moves(search: ml_collections.ConfigDict, task) -> int:
  """Moves a rollout makes: ``search.max_moves``, else one per answer token
  (token level / one-token steps) or one per step of a task whose answers
  have a known number of steps (``task.num_moves``), else one per answer
  token."""
  if search.get("max_moves", 0):
    return int(search.max_moves)
  if (search.level == "step" and task.step_delimiter >= 0
      and task.num_moves):
    # A rollout that commits a take-back (``task.retract_token``: the search
    # found the first step dead) ends unfinished: the trainer packs every
    # move's candidates, so moves are not added for what is rare.
    return int(task.num_moves)
  return int(task.max_answer_length)


def eval_num_children(config) -> int | None:
  """``eval.mcts_num_children`` (0 or absent: the training search's K)."""
  return int(config.eval.get("mcts_num_children", 0)) or None


def eval_search_config(config: ml_collections.ConfigDict, task,
                       num_simulations: int) -> lm.LMSearchConfig:
  """Evaluation MCTS of a run (``train.evaluate``, ``train.solve_rates``):
  the training search's options with PUCT, no root noise, acting on the
  most visited child, and ``eval.mcts_num_children`` slots per node."""
  cfg = lm_search_config(config.search, task, num_simulations=num_simulations,
                         acting_temperature=0.0, noise=False,
                         num_children=eval_num_children(config))
  return dataclasses.replace(cfg, policy="puct")


def lm_search_config(search: ml_collections.ConfigDict, task, *,
                     num_simulations: int | None = None,
                     num_children: int | None = None,
                     acting_temperature: float | None = None,
                     noise: bool = True) -> lm.LMSearchConfig:
  """The :class:`tsearch.LMSearchConfig` of a run's ``search`` section.

  Args:
    search: the config's ``search`` section.
    task: the task (sets the reserve for committed tokens).
    num_simulations: overrides ``search.num_simulations`` (evaluation).
    num_children: overrides ``search.num_children`` (evaluation).
    acting_temperature: overrides ``search.temperature`` (0: act on the most
      visited child).
    noise: Dirichlet noise at the root (PUCT); off for evaluation.
  """
  step = search.level == "step"
  s = int(search.get("step_length", 16)) if step else 1
  moves = num_moves(search, task)
  sims = int(search.num_simulations if num_simulations is None
             else num_simulations)
  depth = int(search.get("max_depth", 0)) or (moves if step else
                                               min(moves, sims))
  capacity = max(int(search.capacity), sims + 1)
  return lm.LMSearchConfig(
      mode=search.level, policy=search.algorithm, num_simulations=sims,
      num_children=int(num_children or search.num_children), step_length=s,
      max_depth=max(depth, 1), capacity=capacity,
      reserve_tokens=int(task.max_answer_length),
      step_temperature=float(search.get("step_temperature", 1.0)),
      dedupe_steps=bool(search.get("dedupe_steps", True)),
      terminal_lookahead=bool(search.get("terminal_lookahead", False)),
      prune_terminal_slots=bool(search.get("prune_terminal_slots", False)),
      dirichlet_fraction=(float(search.get("dirichlet_fraction", 0.25))
                          if noise else 0.0),
      pb_c_init=float(search.get("pb_c_init", 1.25)),
      temperature=float(search.temperature if acting_temperature is None
                        else acting_temperature),
      max_num_considered_actions=int(num_children or search.num_children))


def _select(cond, new, old):
  def sel(n, o):
    return jnp.where(cond.reshape(cond.shape + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(sel, new, old)


def _used_sum(tree, x):
  used = jnp.arange(tree.capacity)[None] < tree.num_nodes[:, None]
  return jnp.sum(jnp.where(used, x, 0), axis=1).astype(jnp.int32)


# ---------------------------------------------------------------------------
# Rollout.


def rollout(graphdef, task, model_state, prompt: Array, prompt_length: Array,
            key: Array, *, config: lm.LMSearchConfig, num_moves: int,
            act_on_solved: bool = False, solved_by_prior: bool = False,
            record_choices: bool = False, record_q: bool = False):
  """Searches and commits actions until every answer ends.

  Jittable (``graphdef``, ``task`` and ``config`` static). Each move runs
  ``config.num_simulations`` simulations on the kept subtree, commits the
  chosen root slot with :func:`tsearch.lm_reroot` (its tokens join the
  prompt cache) and steps the task. Rows that ended stay put.

  Args:
    graphdef, model_state: a split :class:`models.Transformer`.
    task: the environment (a ``tsearch.tasks`` task).
    prompt: ``[B, P]`` prompt tokens; ``prompt_length`` ``[B]``.
    key: random key.
    config: :class:`tsearch.LMSearchConfig`; ``reserve_tokens`` must hold
      every committed token (``task.max_answer_length``).
    num_moves: ``M``, moves made (enough for the longest answer).
    act_on_solved: single-player puzzles: when the tree holds a terminal
      node the verifier accepted, commit the root slot on its path instead
      of the search's choice (:func:`tsearch.lm_search.solved_slot`: also
      a sampled child slot the verifier accepted, visited or not), and make
      it the move's policy target (one-hot).
    solved_by_prior: with ``act_on_solved``, of several root slots that
      lead to a verified solution take the one the policy's prior favours
      (``solved_slot(by_prior=True)``), not the shallowest solution's:
      the targets then sharpen the policy's own choice among solutions.
    record_choices: also return ``children_choice [B, M, K, S]``
      (:func:`choice_tokens` of each move's candidate steps).
    record_q: also return ``children_q`` and ``children_visits`` ``[B, M,
      K]``, the tree's Q value and visit count of each move's root slots.

  Returns:
    A dict: ``seq [B, P + T]`` (prompt, then the committed answer),
    ``length [B]``, ``answer_length [B]``, ``outcome [B]`` (the verifier's
    reward, for the player who made the last move), ``model_calls [B]``,
    ``tokens_forwarded [B]``, ``overflowed [B]``, and per move
    ``weights``, ``children_mask`` ``[B, M, K]``, ``children_actions
    [B, M, K, S]``, ``root_value [B, M]`` (tree value at the node where the
    move was chosen, for its player to move), ``offset [B, M]`` (answer
    tokens before the move), ``active [B, M]`` and ``found [B, M]`` (the
    tree held a verified solution and the move followed it;
    ``act_on_solved`` only).
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  prompt_length = jnp.asarray(prompt_length, jnp.int32)
  b, p = prompt.shape
  t = task.max_answer_length
  if config.reserve_tokens < t:
    raise ValueError(f"config.reserve_tokens={config.reserve_tokens} cannot "
                     f"hold the {t} answer tokens a rollout commits.")
  root_key, key = jax.random.split(key)
  root, cache = lm.make_lm_root(graphdef, model_state, task, prompt,
                                prompt_length, root_key, config=config)
  expand_fn = lm.make_lm_expand_fn(graphdef, task, config=config)
  tree = tsearch.empty_tree(batch_size=b, capacity=config.capacity,
                            num_children=config.num_children,
                            action_length=config.step_length,
                            embedding_example=root.embedding)
  tree = tree.replace(nonfinite=jnp.zeros((b,), bool))
  env_state = task.init_state(prompt)
  k = config.num_children

  def search(key, tree, cache):
    kw = dict(num_simulations=config.num_simulations,
              max_depth=config.max_depth, tree=tree)
    if config.policy == "gumbel":
      out = tsearch.gumbel_search(
          (model_state, cache), key, root, expand_fn,
          max_num_considered_actions=config.max_num_considered_actions,
          gumbel_scale=config.gumbel_scale, **kw)
    else:
      out = tsearch.puct_search(
          (model_state, cache), key, root, expand_fn,
          dirichlet_fraction=config.dirichlet_fraction,
          dirichlet_alpha=config.dirichlet_alpha, pb_c_init=config.pb_c_init,
          temperature=config.temperature,
          skip_dead_ends=config.prune_terminal_slots, **kw)
    return (out.action.astype(jnp.int32),
            out.action_weights.astype(jnp.float32), out.search_tree)

  def skip(key, tree, cache):
    del key, cache
    return jnp.zeros((b,), jnp.int32), jnp.zeros((b, k), jnp.float32), tree

  def move(carry, key):
    tree, cache, env_state, calls, toks, overflowed = carry
    active = ~task.is_terminal(env_state)
    before_c = _used_sum(tree, tree.embeddings["model_calls"])
    before_t = _used_sum(tree, tree.embeddings["tokens_forwarded"])
    action, weights, tree = jax.lax.cond(jnp.any(active), search, skip, key,
                                         tree, cache)
    # A root whose slots were all pruned (their outcomes known) was not
    # searched: commit one of its scored steps.
    if "child_terminal" in tree.embeddings:  # scores kept (see lm_search)
      root_live = jnp.any(tree.children_mask[:, tsearch.Tree.ROOT_INDEX], -1)
      scored = jnp.argmax(tree.embeddings["child_terminal"][
          :, tsearch.Tree.ROOT_INDEX], -1).astype(jnp.int32)
      action = jnp.where(root_live, action, scored)
    found = jnp.zeros((b,), bool)
    if act_on_solved:
      found, slot = lm.solved_slot(tree, config.max_depth,
                                   by_prior=solved_by_prior)
      action = jnp.where(found, slot, action)
      # A proven solution is the policy target (MCTS-Solver), not the
      # visits, which an exhausting search spreads over what it has not
      # explored yet.
      weights = jnp.where(found[:, None], jax.nn.one_hot(slot, k), weights)
    calls = calls + _used_sum(tree, tree.embeddings["model_calls"]) - before_c
    toks = toks + (_used_sum(tree, tree.embeddings["tokens_forwarded"])
                   - before_t)
    rows = jnp.arange(b)
    children = tree.children_actions[:, tsearch.Tree.ROOT_INDEX]  # [B, K, S]
    mask = tree.children_mask[:, tsearch.Tree.ROOT_INDEX] & active[:, None]
    record = dict(weights=jnp.where(mask, weights, 0.0),
                  children_actions=children, children_mask=mask,
                  **({"children_choice": choice_tokens(task, env_state,
                                                       children)
                      & mask[..., None]} if record_choices else {}),
                  **({"children_q": tree.qvalues(jnp.full(
                      (b,), tsearch.Tree.ROOT_INDEX, jnp.int32)),
                      "children_visits": tree.root_visit_counts()}
                     if record_q else {}),
                  root_value=tree.node_values[:, tsearch.Tree.ROOT_INDEX],
                  offset=env_state.length.astype(jnp.int32), active=active,
                  found=found & active)
    tokens = jnp.where(active[:, None], children[rows, action], -1)
    env_state = lm._step_tokens(task, env_state, tokens)  # pylint: disable=protected-access
    overflowed = overflowed | (active & tree.overflowed)
    new_tree, new_cache = lm.lm_reroot(tree, cache, action)
    tree = _select(active, new_tree, tree)
    cache = cache.replace(  # keys/values are [L, B, C, H, Dh]
        keys=jnp.where(active[None, :, None, None, None], new_cache.keys,
                       cache.keys),
        values=jnp.where(active[None, :, None, None, None], new_cache.values,
                         cache.values),
        mask=_select(active, new_cache.mask, cache.mask),
        num_used=_select(active, new_cache.num_used, cache.num_used),
        overflowed=_select(active, new_cache.overflowed, cache.overflowed))
    return (tree, cache, env_state, calls, toks, overflowed), record

  zeros = jnp.zeros((b,), jnp.int32)
  carry = (tree, cache, env_state, zeros, zeros, jnp.zeros((b,), bool))
  (tree, cache, env_state, calls, toks, overflowed), records = jax.lax.scan(
      move, carry, jax.random.split(key, num_moves))
  records = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
  answer_length = jnp.minimum(env_state.length, t).astype(jnp.int32)
  seq = answer_sequence(prompt, prompt_length, env_state.tokens,
                        answer_length, pad_id=task.pad_id)
  return dict(seq=seq, length=prompt_length + answer_length,
              answer_length=answer_length,
              outcome=task.reward(env_state).astype(jnp.float32),
              model_calls=calls, tokens_forwarded=toks,
              overflowed=overflowed | cache.overflowed, **records)


def choice_tokens(task, state, steps: Array) -> Array:
  """``[B, K, S]``: which tokens of the steps ``[B, K, S]`` (``-1``
  padded), each taken from ``state``, were a choice: one of several legal
  tokens.

  A forced token (the only legal one: in the strict Game of 24, the ``=``,
  the exact result and the numbers left) has probability 1 under the
  policy the search samples from (``tsearch.lm_search`` masks illegal
  tokens), so a step's log-probability under that policy sums its choice
  tokens only (``search.choice_tokens_only``).
  """
  b, k, s = steps.shape
  st = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), state)
  _, choice = lm._step_tokens(task, st, steps.reshape(b * k, s),  # pylint: disable=protected-access
                              with_choices=True)
  return choice.reshape(b, k, s)


def answer_sequence(prompt, prompt_length, answer, answer_length, *, pad_id):
  """``[B, P + T]``: each row's prompt then its answer, PAD after."""
  b, p = prompt.shape
  t = answer.shape[1]
  pos = jnp.arange(p + t)[None, :]
  rel = pos - prompt_length[:, None]
  from_answer = jnp.take_along_axis(
      answer, jnp.clip(rel, 0, t - 1), axis=1)
  from_prompt = jnp.pad(prompt, ((0, 0), (0, t)))
  seq = jnp.where(rel < 0, from_prompt,
                  jnp.where(rel < answer_length[:, None], from_answer, pad_id))
  return seq.astype(jnp.int32)


def retraction_sequence(seq, length, prompt_length, step, *, pad_id: int,
                        retract_token: int, delimiter: int):
  """``[B, L + S + 2]``: each row's prompt, ``step`` (``[B, S]``, ``-1``
  padded), ``retract_token`` and ``delimiter`` (taking it back:
  ``task.retract_token``, ``task.step_delimiter``), then the row's answer;
  and the row lengths ``[B]``."""
  b, l = seq.shape
  s = step.shape[1]
  slen = jnp.sum(step >= 0, -1).astype(jnp.int32)
  j = jnp.arange(s + 2)[None]
  pre = jnp.pad(jnp.where(step >= 0, step, pad_id), ((0, 0), (0, 2)))
  pre = jnp.where(j == slen[:, None], retract_token,
                  jnp.where(j == slen[:, None] + 1, delimiter, pre))
  answer = jnp.take_along_axis(seq, jnp.clip(
      prompt_length[:, None] + jnp.arange(l)[None], 0, l - 1), 1)
  answer_length = length - prompt_length
  tail = answer_sequence(pre, slen + 2, answer, answer_length, pad_id=pad_id)
  out = answer_sequence(seq, prompt_length, tail, slen + 2 + answer_length,
                        pad_id=pad_id)
  return out[:, :l + s + 2], length + slen + 2


def value_outcomes(outcome: Array, active: Array, *, two_player: bool
                   ) -> Array:
  """``[B, M]`` outcome seen from the player to move at each committed node.

  One player: the outcome at every node. Two players: ``outcome`` is the
  result for the player who made the last move (``tsearch.tasks``
  convention), so node ``j`` of a game of ``n`` moves gets it with sign
  ``(-1) ** (n - 1 - j)``.
  """
  m = active.shape[1]
  outcome = jnp.broadcast_to(outcome[:, None], (outcome.shape[0], m))
  if not two_player:
    return outcome.astype(jnp.float32)
  n = jnp.sum(active, axis=1, keepdims=True)
  sign = jnp.where((n - 1 - jnp.arange(m)[None]) % 2 == 0, 1.0, -1.0)
  return (outcome * sign).astype(jnp.float32)


# ---------------------------------------------------------------------------
# Loss.


def step_logprobs(apply_fn, params, seq: Array, start: Array, steps: Array,
                  *, pad_id: int) -> Array:
  """Log-likelihood of candidate steps after a committed prefix.

  Args:
    apply_fn: ``(params, tokens, positions, token_mask) -> ModelOutput``.
    params: model parameters.
    seq: ``[B, L]`` committed sequences (prompt + answer).
    start: ``[B, M]`` position of each node's first new token (its prefix
      is ``seq[:, :start]``).
    steps: ``[B, M, K, S]`` candidate steps, ``-1`` padded.

  Returns:
    ``[B, M, K]`` sum of the model's token log-probabilities of each step
    (one forward over ``B * M * K`` sequences of ``L + S`` tokens).
  """
  b, l = seq.shape
  _, m, k, s = steps.shape
  lc = l + s
  pos = jnp.arange(lc)
  rel = pos[None, None, None, :] - start[:, :, None, None]  # [B, M, 1, Lc]
  rel = jnp.broadcast_to(rel, (b, m, k, lc))
  step_tok = jnp.take_along_axis(steps, jnp.clip(rel, 0, s - 1), axis=-1)
  in_step = (rel >= 0) & (rel < s) & (step_tok >= 0)
  base = jnp.pad(seq, ((0, 0), (0, s)), constant_values=pad_id)
  base = jnp.broadcast_to(base[:, None, None, :], (b, m, k, lc))
  tokens = jnp.where(rel < 0, base, jnp.where(in_step, step_tok, pad_id))
  valid = (rel < 0) | in_step
  flat = lambda x: x.reshape(b * m * k, lc)  # noqa: E731
  positions = jnp.broadcast_to(pos.astype(jnp.int32), (b * m * k, lc))
  out = apply_fn(params, flat(tokens), positions, flat(valid))
  logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), -1)
  tok_lp = jnp.take_along_axis(logp, flat(tokens)[:, 1:, None], -1)[..., 0]
  tok_lp = jnp.where(flat(in_step)[:, 1:], tok_lp, 0.0)
  return tok_lp.sum(-1).reshape(b, m, k)


def packed_forward(apply_fn, params, seq: Array, length: Array,
                   start: Array, steps: Array, *, pad_id: int,
                   max_seq_len: int, choice: Array | None = None,
                   end_token: int | None = None):
  """One forward over each committed sequence and all its candidate steps.

  Row ``b`` packs ``seq[b]`` (causal) followed by the ``M * K`` candidate
  steps, each attending to the committed prefix before its node
  (``seq[b, :start[b, m]]``) and to its own earlier tokens, at the positions
  it would have after that prefix. So the committed sequence and every
  sibling step are forwarded once, with no prefix repeated.

  Args:
    apply_fn: ``(params, tokens, positions, token_mask, attention_mask)``.
    params: model parameters.
    seq: ``[B, L]`` committed sequences; ``length [B]`` their lengths.
    start: ``[B, M]`` first position after each node's prefix.
    steps: ``[B, M, K, S]`` candidate steps, ``-1`` padded.
    choice: optional ``[B, M, K, S]`` bool (:func:`choice_tokens`): a step's
      log-probability sums only these tokens (forced ones count as 0).
    end_token: optional token id: also return ``[B, M, K]`` its
      log-probability right after each step (read at the step's last token;
      0 for an empty slot).

  Returns:
    ``(out, step_logprobs, step_values)``: the model output on the ``L``
    committed positions (``logits [B, L, V]``, ``value [B, L]``), ``[B, M,
    K]`` summed token log-probabilities of each step (as
    :func:`step_logprobs`) and ``[B, M, K]`` the value head at each step's
    last token (the position after the step, which the step-level search
    reads; 0 for an empty slot).
  """
  b, l = seq.shape
  _, m, k, s = steps.shape
  n = m * k * s
  flat = steps.reshape(b, n)
  tokens = jnp.concatenate([seq, jnp.where(flat >= 0, flat, pad_id)], 1)
  j = jnp.arange(n)
  group, sj = j // s, j % s  # [n]
  node = group // k  # [n] move of each step token
  step_start = start[:, node]  # [B, n]
  positions = jnp.concatenate([
      jnp.broadcast_to(jnp.arange(l), (b, l)),
      jnp.minimum(step_start + sj[None], max_seq_len - 1)], 1)
  valid = jnp.concatenate([jnp.arange(l)[None] < length[:, None],
                           flat >= 0], 1)
  # Attention: committed part causal; a step sees its prefix and itself.
  i_seq = jnp.arange(l)
  seq_q = jnp.concatenate([
      jnp.broadcast_to(i_seq[:, None] >= i_seq[None, :], (l, l)),
      jnp.zeros((l, n), bool)], 1)  # [L, L + n]
  step_to_seq = i_seq[None, None, :] < step_start[:, :, None]  # [B, n, L]
  step_to_step = (group[:, None] == group[None, :]) & (
      sj[None, :] <= sj[:, None])  # [n, n]
  step_q = jnp.concatenate([step_to_seq, jnp.broadcast_to(
      step_to_step, (b, n, n))], 2)  # [B, n, L + n]
  attn = jnp.concatenate([jnp.broadcast_to(seq_q, (b, l, l + n)), step_q], 1)
  out = apply_fn(params, tokens, positions.astype(jnp.int32), valid, attn)
  logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), -1)
  # Token sj of a step is predicted at its previous token, or for sj == 0
  # at the last token of its prefix (in the committed part).
  pred = jnp.where(sj[None] == 0, step_start - 1, l + j[None] - 1)  # [B, n]
  pred = jnp.clip(pred, 0, l + n - 1)
  lp = jnp.take_along_axis(
      jnp.take_along_axis(logp, pred[..., None], 1),
      jnp.maximum(flat, 0)[..., None], -1)[..., 0]
  counted = flat >= 0
  if choice is not None:
    counted = counted & choice.reshape(b, n)
  lp = jnp.where(counted, lp, 0.0).reshape(b, m, k, s).sum(-1)
  steps_len = (steps >= 0).sum(-1)  # [B, M, K]
  last = l + (jnp.arange(m * k) * s).reshape(m, k)[None] + steps_len - 1
  values = jnp.take_along_axis(out.value, jnp.clip(last, 0, l + n - 1)
                               .reshape(b, m * k), 1).reshape(b, m, k)
  values = jnp.where(steps_len > 0, values, 0.0)
  committed = out.replace(logits=out.logits[:, :l], value=out.value[:, :l])
  if end_token is None:
    return committed, lp, values
  end_lp = jnp.take_along_axis(logp[..., end_token], jnp.clip(
      last, 0, l + n - 1).reshape(b, m * k), 1).reshape(b, m, k)
  return committed, lp, values, jnp.where(steps_len > 0, end_lp, 0.0)


def search_loss_fn(apply_fn, *, level: str, value_target: str,
                   outcome_weight: float, two_player: bool, pad_id: int,
                   max_seq_len: int = 0, step_policy_loss: str = "nll",
                   policy_on_solved: bool = False,
                   value_policy_scale: float | None = None,
                   retract_token: int | None = None,
                   delimiter: int = -1):
  """Loss on a rollout's targets (see the module docstring).

  ``policy_on_solved``: the policy loss covers only the moves of
  trajectories the verifier accepted (expert iteration: an unsolved
  rollout's visit counts, spread by a search that found nothing, are not a
  target); the value loss still covers every move.

  Step level with ``value_policy_scale`` set (``search.value_policy_weight
  > 0``), also the term ``"value_policy"``: on every move, the cross-entropy of
  the model's distribution over the K candidates against the one-step
  lookahead ``softmax(log p(step) + value_policy_scale * v(step))``, ``v``
  the value head after each step (stop-gradient): the policy learns the
  value head's ranking of the steps it samples (as Gumbel MuZero's
  improved policy does with completed Q values), also from rollouts that
  found no solution. It is a loss of the form ``step_policy_loss`` names.

  Step level with ``retract_token`` set (``search.retract_weight > 0``,
  ``task.retract``), also the term ``"retract"``: after each candidate of
  the first move, the binary cross-entropy of the probability of that
  token (taking the step back) against ``1 - q``, ``q`` the tree's Q value
  of the candidate (searched slots; the value head after the step for the
  others; clipped to [0, 1]): the policy learns to take back first steps
  the search found dead. And ``"retract_sft"``: on solved trajectories
  whose first move had a candidate the search found dead (``1 - q >
  0.5``, the deadest one other than the move made), the language-model
  loss on that candidate, ``:``, ``\\n``, then the answer, from ``:`` on
  (:func:`retraction_sequence`): what to write after taking a step back.

  A batch with ``children_choice`` (``search.choice_tokens_only``): the
  steps' log-probabilities count their choice tokens only
  (:func:`choice_tokens`), as the search's prior does.

  ``step_policy_loss`` (step level): ``"nll"``, the weighted log-likelihood
  of the K sampled steps (:func:`train.losses.weighted_step_nll`: raises
  every step with weight > 0); ``"candidates"``, the cross-entropy of the
  search's weights against the model's distribution renormalised over the K
  candidates (:func:`train.losses.policy_loss` on the steps' log-probs: a
  better step gains at the expense of the worse ones; with
  ``search.dedupe_steps`` the candidates are distinct).
  """
  if step_policy_loss not in ("nll", "candidates"):
    raise ValueError(f"step_policy_loss must be 'nll' or 'candidates', got "
                     f"{step_policy_loss!r}.")
  def loss_fn(params, batch, key):
    del key
    seq, length = batch["seq"], batch["length"]
    b, l = seq.shape
    start = batch["prompt_length"][:, None] + batch["offset"]  # [B, M]
    if level == "token":
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
      out = apply_fn(params, seq, positions,
                     jnp.arange(l)[None, :] < length[:, None])
    else:
      out, lps, step_values, *end_lp = packed_forward(
          apply_fn, params, seq, length, start, batch["children_actions"],
          pad_id=pad_id, max_seq_len=max_seq_len,
          choice=batch.get("children_choice"), end_token=retract_token)
    at = jnp.minimum(start - 1, l - 1)  # last token of each node's prefix
    legal = batch["children_mask"]
    active = batch["active"] & jnp.any(legal, -1)
    terms = {}
    if level == "step" and value_policy_scale is not None:
      # One-step lookahead: the policy over the K candidates against
      # softmax(log-prob + scale * value after the step), on every move
      # (two players: the value after a step is the opponent's).
      mover = -step_values if two_player else step_values
      lookahead = jax.lax.stop_gradient(losses_lib.masked_log_softmax(
          lps + value_policy_scale * mover, legal))
      step_loss = (losses_lib.policy_loss if step_policy_loss == "candidates"
                   else losses_lib.weighted_step_nll)
      terms["value_policy"] = step_loss(
          lps, jnp.exp(lookahead), legal, active)  # it zeroes illegal slots
    if level == "step" and retract_token is not None:
      q = jax.lax.stop_gradient(jnp.clip(jnp.where(
          batch["children_visits"] > 0, batch["children_q"], step_values),
                                             0.0, 1.0))
      first = legal & active[..., None] & (batch["offset"] == 0)[..., None]
      terms["retract"] = losses_lib.binary_loss(end_lp[0], 1.0 - q, first)
      # A solved answer after taking back the first move's deadest other
      # candidate (1 - q > 0.5): language-model loss from ":" on, so the
      # policy learns what to write once it has taken a step back.
      dead = jnp.where(first[:, 0], 1.0 - q[:, 0], -1.0)  # [B, K]
      kept = jnp.argmax(batch["weights"][:, 0], -1)
      dead = jnp.where(jnp.arange(dead.shape[1])[None] == kept[:, None],
                       -1.0, dead)
      slot = jnp.argmax(dead, -1)
      use = (jnp.max(dead, -1) > 0.5) & (batch["outcome"] > 0.5)
      step = batch["children_actions"][jnp.arange(b), 0, slot]  # [B, S]
      seq2, len2 = retraction_sequence(seq, length, batch["prompt_length"],
                                       step, pad_id=pad_id,
                                       retract_token=retract_token,
                                       delimiter=delimiter)
      l2 = seq2.shape[1]
      out2 = apply_fn(params, seq2, jnp.broadcast_to(
          jnp.arange(l2, dtype=jnp.int32), seq2.shape),
                      jnp.arange(l2)[None] < len2[:, None])
      from_colon = batch["prompt_length"] + jnp.sum(step >= 0, -1)
      mask2 = ((jnp.arange(l2)[None] >= from_colon[:, None])
               & (jnp.arange(l2)[None] < len2[:, None]) & use[:, None])
      terms["retract_sft"] = losses_lib.lm_loss(
          out2.logits[:, :-1], seq2[:, 1:], mask2[:, 1:].astype(jnp.float32))
    if policy_on_solved:
      active = active & (batch["outcome"] > 0.5)[:, None]
    if level == "token":
      vocab_logits = jnp.take_along_axis(out.logits, at[..., None], axis=1)
      child_logits = losses_lib.children_logits(
          vocab_logits, jnp.maximum(batch["children_actions"][..., 0], 0))
      policy = losses_lib.policy_loss(child_logits, batch["weights"], legal,
                                      active)
    elif step_policy_loss == "candidates":
      policy = losses_lib.policy_loss(lps, batch["weights"], legal, active)
    else:
      policy = losses_lib.weighted_step_nll(lps, batch["weights"], legal,
                                            active)
    values = jnp.take_along_axis(out.value, at, axis=1)
    outcome = value_outcomes(batch["outcome"], batch["active"],
                             two_player=two_player)
    if value_target == "outcome":
      target = outcome
    elif value_target == "q":
      target = batch["root_value"]
    else:
      target = outcome_weight * outcome + (1 - outcome_weight) * batch[
          "root_value"]
    value = losses_lib.value_loss(values, target, batch["active"])
    answer = ((jnp.arange(l)[None] >= batch["prompt_length"][:, None])
              & (jnp.arange(l)[None] < length[:, None]))
    sft_mask = targets_lib.sft_mask(answer.astype(jnp.float32),
                                    batch["outcome"] > 0.5)
    sft = losses_lib.lm_loss(out.logits[:, :-1], seq[:, 1:], sft_mask[:, 1:])
    return {"policy": policy, "value": value, "sft": sft, **terms}
  return loss_fn


def _anchored(loss_fn, supervised_fn):
  """``loss_fn`` plus the warm-start loss on the batch's anchor rows, as the
  terms ``"anchor"`` (language model) and ``"anchor_value"``."""
  def anchored(params, batch, key):
    terms = loss_fn(params, batch, key)
    sup = supervised_fn(params, batch[step_lib.ANCHOR], key)
    return {**terms, "anchor": sup["policy"], "anchor_value": sup["value"]}
  return anchored


_KEEP = ("seq", "length", "prompt_length", "outcome", "weights",
         "children_actions", "children_mask", "root_value", "offset",
         "active")


class SearchLearn:
  """The jitted search-and-learn step of a run (used by :mod:`train.loop`).

  ``step(state, examples, key) -> (state, metrics)``; with a replay buffer
  (``search.replay_size > 0``) the buffer is :attr:`replay`, a pytree that
  the loop checkpoints and restores.
  """

  def __init__(self, config: ml_collections.ConfigDict, task, fns, optimizer,
               mesh, *, max_len: int):
    del max_len  # rollouts use P + T, the task's own bound
    s = config.search
    if s.capacity < s.num_simulations + 1:
      raise ValueError(
          f"search.capacity={s.capacity} must be >= search.num_simulations+1"
          f"={s.num_simulations + 1}.")
    if task.num_players not in (1, 2):
      raise ValueError(f"{task.name} has {task.num_players} players; "
                       "search-and-learn supports 1 or 2.")
    two_player = task.num_players == 2
    self.task, self.mesh = task, mesh
    self.search_config = lm_search_config(s, task)
    self.moves = num_moves(s, task)
    mcfg = fns.config
    need = (task.max_prompt_length + self.search_config.reserve_tokens
            + self.search_config.max_depth * self.search_config.step_length)
    if need > mcfg.max_seq_len:
      raise ValueError(
          f"Search needs {need} positions (prompt {task.max_prompt_length} + "
          f"{self.search_config.reserve_tokens} committed + max_depth "
          f"{self.search_config.max_depth} x step_length "
          f"{self.search_config.step_length}) but model.max_seq_len="
          f"{mcfg.max_seq_len}; raise --config.model.max_seq_len to {need}.")
    if s.level == "step":
      packed = (task.max_prompt_length + task.max_answer_length + self.moves
                * s.num_children * self.search_config.step_length)
      if packed > mcfg.max_seq_len:
        raise ValueError(
            f"Step-level training packs each trajectory with its {self.moves}"
            f" x {s.num_children} candidate steps of {s.step_length} tokens "
            f"into {packed} positions, more than model.max_seq_len="
            f"{mcfg.max_seq_len}; raise --config.model.max_seq_len to "
            f"{packed} (RoPE: no parameters change).")
    cfg, moves = self.search_config, self.moves
    choices = s.level == "step" and bool(s.get("choice_tokens_only", False))
    # config.validate_config: > 0 only with task.retract at step level.
    retract = float(s.get("retract_weight", 0.0))

    def prepare(params, batch, key):
      r = rollout(fns.graphdef, task, fns.state(params), batch["prompt"],
                  batch["prompt_length"], key, config=cfg, num_moves=moves,
                  act_on_solved=bool(s.get("act_on_solved", False)),
                  solved_by_prior=bool(s.get("solved_by_prior", False)),
                  record_choices=choices, record_q=bool(retract))
      r["prompt_length"] = batch["prompt_length"]
      active = r["active"].astype(jnp.float32)
      stats = {"search/solve_rate": jnp.mean(r["outcome"] > 0.5),
               "search/mean_outcome": jnp.mean(r["outcome"]),
               "search/overflow_rate": jnp.mean(r["overflowed"]),
               "search/moves": jnp.mean(jnp.sum(active, -1)),
               "search/answer_tokens": jnp.mean(r["answer_length"]),
               "search/model_calls": jnp.mean(r["model_calls"])}
      keep = _KEEP + (("children_choice",) if choices else ()) + (
          ("children_q", "children_visits") if retract else ())
      return {k: r[k] for k in keep}, stats

    loss_fn = search_loss_fn(
        fns.apply, level=s.level, value_target=s.value_target,
        outcome_weight=s.value_mix, two_player=two_player, pad_id=task.pad_id,
        max_seq_len=mcfg.max_seq_len,
        step_policy_loss=s.get("step_policy_loss", "nll"),
        policy_on_solved=bool(s.get("policy_on_solved", False)),
        value_policy_scale=(float(s.value_policy_scale)
                            if s.get("value_policy_weight", 0.0) > 0
                            else None),
        retract_token=task.retract_token if retract else None,
        delimiter=task.step_delimiter)
    weights = {"policy": s.policy_weight, "value": s.value_weight,
               "sft": s.sft_weight,
               "value_policy": float(s.get("value_policy_weight", 0.0)),
               "retract": retract, "retract_sft": retract * s.sft_weight}
    self.anchor_weight = float(s.get("anchor_weight", 0.0))
    if self.anchor_weight:
      loss_fn = _anchored(loss_fn, step_lib.supervised_loss_fn(fns.apply))
      weights["anchor"] = (self.anchor_weight
                           * float(config.warm_start.policy_weight))
      weights["anchor_value"] = (self.anchor_weight
                                 * float(config.warm_start.value_weight))
    self.replay = None
    if s.replay_size:
      self._step = step_lib.make_replay_train_step(
          loss_fn, optimizer, mesh, prepare_fn=prepare, loss_weights=weights,
          updates=s.updates_per_search)
      local = config.batch_size // jax.process_count()
      example = {"prompt": np.zeros((local, task.max_prompt_length),
                                    np.int32),
                 "prompt_length": np.ones((local,), np.int32)}
      self.replay = step_lib.init_replay(
          prepare, fns_params_example(fns), example, mesh,
          size=s.replay_size)
    else:
      self._step = step_lib.make_train_step(
          loss_fn, optimizer, mesh, prepare_fn=prepare, loss_weights=weights)

  def step(self, state, examples, key, anchor=None):
    """One search-and-learn step on ``examples`` (this process's prompts);
    ``anchor``: with ``search.anchor_weight > 0``, this process's rows of a
    warm-start batch (``step.supervised_loss_fn``'s), trained on in every
    update of the step."""
    if (anchor is None) != (not self.anchor_weight):
      raise ValueError(
          f"search.anchor_weight={self.anchor_weight} needs a warm-start "
          "batch in every search step (and 0 none); got "
          f"{'none' if anchor is None else 'one'}.")
    batch = {"prompt": np.asarray(examples["prompt"], np.int32),
             "prompt_length": np.asarray(examples["prompt_length"], np.int32)}
    batch = step_lib.shard_batch(batch, self.mesh)
    if anchor is not None:
      batch[step_lib.ANCHOR] = step_lib.shard_batch(anchor, self.mesh)
    if self.replay is None:
      return self._step(state, batch, key)
    state, self.replay, metrics = self._step(state, self.replay, batch, key)
    return state, metrics


def fns_params_example(fns):
  """Abstract parameters (``ShapeDtypeStruct`` pure dict) of a model."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return nnx.to_pure_dict(fns.abstract_state)
