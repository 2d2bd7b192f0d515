"""Playing an answer move by move with search and subtree reuse.

Each move runs ``config.num_simulations`` simulations of :func:`tsearch.
puct_search` or :func:`tsearch.gumbel_search` over the language model (the
tree as its KV cache: :func:`tsearch.make_lm_root`,
:func:`tsearch.make_lm_expand_fn`), commits the chosen root slot, keeps the
subtree below it and moves the committed tokens into the prompt cache
(:func:`tsearch.lm_reroot`), then steps the task; rows whose answer ended
stay put. The same function makes the training targets of search-and-learn,
the evaluation's MCTS answers and the search family's ``mcts`` / ``gumbel``.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

import models
from tsearch._src import lm_search as lm
from tsearch._src.search import gumbel_search, puct_search
from tsearch._src.tree import ROOT_INDEX

Array = chex.Array


@chex.dataclass(frozen=True)
class RolloutOutput:
  """What :func:`rollout` played, and per move what the search saw.

  ``M`` moves (``num_moves``), ``K`` child slots, ``S`` tokens per action,
  ``P`` prompt and ``T`` answer tokens (``task.max_answer_length``). A move
  made after a row's answer ended is inactive (``active`` false, zero
  weights and masks). Optional fields are None unless asked for.
  """
  seq: Array  # [B, P + T] int32 prompt then committed answer, PAD after
  length: Array  # [B] int32 tokens in seq
  answers: Array  # [B, T] int32 committed answer, PAD after answer_length
  answer_length: Array  # [B] int32
  finished: Array  # [B] bool, the answer ended (EOS / the task's end)
  outcome: Array  # [B] float32 reward, for the player who moved last
  attempts: Array  # [B] float32, 1 + the take-backs (task.attempts)
  model_calls: Array  # [B] int32 sequential forward calls (see compute)
  tokens_forwarded: Array  # [B] int32 tokens through the model (see compute)
  overflowed: Array  # [B] bool, a tree or the prompt cache ran out of room
  weights: Array  # [B, M, K] float32 search's action weights (policy target)
  children_actions: Array  # [B, M, K, S] int32 root slots' actions, -1 pad
  children_mask: Array  # [B, M, K] bool valid root slots of active moves
  root_value: Array  # [B, M] float32 tree value at the root, player to move
  offset: Array  # [B, M] int32 answer tokens committed before the move
  active: Array  # [B, M] bool, the row's answer had not ended
  found: Array  # [B, M] bool, the move followed a verified solution
  children_choice: Any = None  # [B, M, K, S] bool (record_choices)
  children_q: Any = None  # [B, M, K] float32 tree Q of root slots (record_q)
  children_visits: Any = None  # [B, M, K] int32 their visits (record_q)


def rollout(graphdef, state, task, prompt_tokens: Array,
            prompt_lengths: Array, rng_key: Array, *,
            config: lm.LMSearchConfig, num_moves: int,
            act_on_solved: bool = False, solved_by_prior: bool = False,
            record_choices: bool = False,
            record_q: bool = False) -> RolloutOutput:
  """Searches and commits actions until every answer ends (or ``num_moves``).

  Jittable, with ``graphdef``, ``task``, ``config`` and the keyword options
  static; the same key gives the same rollout.

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    task: a :class:`tsearch.Task` (one or two players).
    prompt_tokens: ``[B, P]`` int32, right-padded.
    prompt_lengths: ``[B]`` int32 in ``[1, P]``.
    rng_key: a JAX key.
    config: :class:`tsearch.LMSearchConfig`; ``reserve_tokens`` must hold
      every committed token (``task.max_answer_length``). ``temperature
      0`` acts on the most visited root slot (PUCT).
    num_moves: ``M``, moves made (enough for the longest answer: one per
      answer token, or one per step where steps are whole).
    act_on_solved: single-player puzzles: when the tree holds a terminal
      node the verifier accepted (or a sampled child slot it accepted,
      visited or not: :func:`tsearch.lm_search.solved_slot`), commit the
      root slot on its path instead of the search's choice, and make it
      the move's policy target (one-hot).
    solved_by_prior: with ``act_on_solved``, of several root slots that lead
      to a verified solution take the one the policy's prior favours, not
      the shallowest solution's.
    record_choices: also return ``children_choice``
      (:func:`choice_tokens` of each move's candidate steps).
    record_q: also return ``children_q`` and ``children_visits``.

  Returns:
    :class:`RolloutOutput`.
  """
  prompt = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_length = jnp.asarray(prompt_lengths, jnp.int32)
  b, _ = prompt.shape
  t = task.max_answer_length
  if config.reserve_tokens < t:
    raise ValueError(f"config.reserve_tokens={config.reserve_tokens} cannot "
                     f"hold the {t} answer tokens a rollout commits.")
  root_key, key = jax.random.split(rng_key)
  root, cache = lm.make_lm_root(graphdef, state, task, prompt, prompt_length,
                                root_key, config=config)
  expand_fn = lm.make_lm_expand_fn(graphdef, task, config=config)
  # With config.page_size > 0 the tree carries its page pool.
  tree = lm.new_lm_tree(root, config, models.model_config_of(graphdef, state))
  tree = tree.replace(nonfinite=jnp.zeros((b,), bool))
  env_state = task.init_state(prompt)
  k = config.num_children

  def search(key, tree, cache):
    kw = dict(num_simulations=config.num_simulations,
              max_depth=config.max_depth, tree=tree,
              leaves_per_step=config.leaves_per_step,
              store_fn=lm.search_store_fn(config))
    if config.policy == "gumbel":
      out = gumbel_search(
          (state, cache), key, root, expand_fn,
          max_num_considered_actions=config.max_num_considered_actions,
          gumbel_scale=config.gumbel_scale, **kw)
    else:
      out = puct_search(
          (state, cache), key, root, expand_fn,
          dirichlet_fraction=config.dirichlet_fraction,
          dirichlet_alpha=config.dirichlet_alpha, pb_c_init=config.pb_c_init,
          curiosity_weight=config.curiosity_weight,
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
    before_c, before_t = compute(tree)
    action, weights, tree = jax.lax.cond(jnp.any(active), search, skip, key,
                                         tree, cache)
    # A root whose slots were all pruned (their outcomes known) was not
    # searched: commit its best scored step (the first of equals).
    if "child_terminal" in tree.embeddings:  # scores kept (see lm_search)
      root_live = jnp.any(tree.children_mask[:, ROOT_INDEX], -1)
      action = jnp.where(root_live, action, best_scored_root_slot(tree))
    found = jnp.zeros((b,), bool)
    if act_on_solved:
      found, slot = lm.solved_slot(tree, config.max_depth,
                                   by_prior=solved_by_prior)
      action = jnp.where(found, slot, action)
      # A proven solution is the policy target (MCTS-Solver), not the
      # visits, which an exhausting search spreads over what it has not
      # explored yet.
      weights = jnp.where(found[:, None], jax.nn.one_hot(slot, k), weights)
    after_c, after_t = compute(tree)
    calls, toks = calls + after_c - before_c, toks + after_t - before_t
    rows = jnp.arange(b)
    children = tree.children_actions[:, ROOT_INDEX]  # [B, K, S]
    mask = tree.children_mask[:, ROOT_INDEX] & active[:, None]
    record = dict(weights=jnp.where(mask, weights, 0.0),
                  children_actions=children, children_mask=mask,
                  **({"children_choice": choice_tokens(task, env_state,
                                                       children)
                      & mask[..., None]} if record_choices else {}),
                  **({"children_q": tree.qvalues(jnp.full(
                      (b,), ROOT_INDEX, jnp.int32)),
                      "children_visits": tree.root_visit_counts()}
                     if record_q else {}),
                  root_value=tree.node_values[:, ROOT_INDEX],
                  offset=env_state.length.astype(jnp.int32), active=active,
                  found=found & active)
    tokens = jnp.where(active[:, None], children[rows, action], -1)
    env_state = lm.step_tokens(task, env_state, tokens)
    overflowed = overflowed | (active & tree.overflowed)
    new_tree, new_cache = lm.lm_reroot(tree, cache, action)
    tree = lm.select_rows(active, new_tree, tree)
    cache = cache.replace(  # keys/values are [L, B, C, H, Dh]
        keys=jnp.where(active[None, :, None, None, None], new_cache.keys,
                       cache.keys),
        values=jnp.where(active[None, :, None, None, None], new_cache.values,
                         cache.values),
        mask=lm.select_rows(active, new_cache.mask, cache.mask),
        num_used=lm.select_rows(active, new_cache.num_used, cache.num_used),
        overflowed=lm.select_rows(active, new_cache.overflowed,
                                  cache.overflowed))
    return (tree, cache, env_state, calls, toks, overflowed), record

  zeros = jnp.zeros((b,), jnp.int32)
  carry = (tree, cache, env_state, zeros, prompt_length,
           jnp.zeros((b,), bool))
  (tree, cache, env_state, calls, toks, overflowed), records = jax.lax.scan(
      move, carry, jax.random.split(key, num_moves))
  records = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
  answer_length = jnp.minimum(env_state.length, t).astype(jnp.int32)
  answers = jnp.where(jnp.arange(t)[None] < answer_length[:, None],
                      env_state.tokens, task.pad_id).astype(jnp.int32)
  seq = answer_sequence(prompt, prompt_length, env_state.tokens,
                        answer_length, pad_id=task.pad_id)
  return RolloutOutput(
      seq=seq, length=prompt_length + answer_length, answers=answers,
      answer_length=answer_length,
      finished=jnp.asarray(task.is_terminal(env_state), bool),
      outcome=task.reward(env_state).astype(jnp.float32),
      attempts=jnp.asarray(task.attempts(env_state), jnp.float32),
      model_calls=calls, tokens_forwarded=toks,
      overflowed=overflowed | cache.overflowed, **records)


def best_scored_root_slot(tree) -> Array:
  """``[B]`` int32: the root slot whose step ends the episode with the
  highest score (``child_reward``: the verifier's, or the value head's
  without it), the first of equals; 0 where no root slot is scored."""
  terminal = tree.embeddings["child_terminal"][:, ROOT_INDEX]
  reward = tree.embeddings["child_reward"][:, ROOT_INDEX]
  return jnp.argmax(jnp.where(terminal, reward, -jnp.inf),
                    -1).astype(jnp.int32)


def compute(tree) -> tuple[Array, Array]:
  """``(model_calls, tokens_forwarded)`` ``[B]`` that the used nodes of a
  tree made by :func:`tsearch.lm_search` cost, counted as the search
  family counts (:mod:`tsearch.algorithms`): per node one forward of its
  own tokens plus, in step mode, one call per token of its longest sampled
  step but the last, and every token of its sampled steps but the last;
  no fixed-shape padding. The prompt is not included."""
  used = jnp.arange(tree.capacity)[None] < tree.num_nodes[:, None]  # [B, N]
  decode = jnp.maximum((tree.children_actions >= 0).sum(-1) - 1, 0)  # [B, N, K]
  own = tree.embeddings["kv"]["length"]  # [B, N], 0 at the root
  tokens = jnp.sum(jnp.where(used, decode.sum(-1) + own, 0), axis=1)
  calls = jnp.sum(jnp.where(used, 1 + decode.max(-1), 0), axis=1)
  return calls.astype(jnp.int32), tokens.astype(jnp.int32)


def choice_tokens(task, state, steps: Array) -> Array:
  """``[B, K, S]``: which tokens of the steps ``[B, K, S]`` (``-1``
  padded), each taken from ``state``, were a choice: one of several legal
  tokens.

  A forced token (the only legal one, e.g. the exact result of an
  arithmetic step under a rules mask) has probability 1 under the policy
  the search samples from (:func:`tsearch.lm_search` masks illegal tokens),
  so a step's log-probability under that policy sums its choice tokens only
  (``experimental.choice_tokens_only`` in training).
  """
  b, k, s = steps.shape
  st = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), state)
  _, choice = lm.step_tokens(task, st, steps.reshape(b * k, s),
                             with_choices=True)
  return choice.reshape(b, k, s)


def answer_sequence(prompt: Array, prompt_length: Array, answer: Array,
                    answer_length: Array, *, pad_id: int) -> Array:
  """``[B, P + T]``: each row's prompt ``[B, P]`` then its answer ``[B, T]``,
  PAD after."""
  _, p = prompt.shape
  t = answer.shape[1]
  pos = jnp.arange(p + t)[None, :]
  rel = pos - prompt_length[:, None]
  from_answer = jnp.take_along_axis(
      answer, jnp.clip(rel, 0, t - 1), axis=1)
  from_prompt = jnp.pad(prompt, ((0, 0), (0, t)))
  seq = jnp.where(rel < 0, from_prompt,
                  jnp.where(rel < answer_length[:, None], from_answer, pad_id))
  return seq.astype(jnp.int32)
