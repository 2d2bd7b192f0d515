"""PUCT and Gumbel MCTS over steps (``tsearch.lm_search``) as answer searches.

One :func:`tsearch.lm_search` in step mode (K sampled steps per node, the
tree as the KV cache) with ``budget`` simulations; the answer follows the
most visited child from the root down and, where that path ends before the
answer does, is finished by greedy decoding from the path's cached keys and
values (nothing is re-encoded).

Compute is counted as in :mod:`tsearch.algorithms.rows`, recounted from the
tree so that it matches the rest of the family: the prompt once, every token
the step sampler forwarded for a live candidate (all but the last token of
each sampled step), every expanded node's own step (forwarded once more at
expansion: that re-forward is what lm_search's design costs), and the greedy
completion. ``lm_search``'s own counters count the fixed-shape positions
instead (padding included), so they are larger.

Note: like every ``lm_search`` tree, terminal nodes earn the task's verifier
reward (the value head scores the rest); compare with the family's
``terminal_score='verifier'``. For puzzles, ``terminal_lookahead`` and
``prune_terminal_slots`` search as the training rollouts do (every sampled
step that ends the answer is scored by the verifier when its node is
expanded; no simulation is spent on such known leaves), and
``act_on_solved`` answers with the shallowest verified solution the tree
holds (a visited terminal node, or a sampled step the lookahead scored)
instead of the most visited path.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import models
from tsearch import kv_arena
from tsearch._src import tree as tree_lib
from tsearch._src import lm_search as lm
from tsearch._src.lm_search import LMSearchConfig, lm_search
from tsearch._src.algorithms import family
from tsearch._src.algorithms import rows as rows_lib
from tsearch._src.tree import ROOT_INDEX



def _step_len(actions):
  return (actions >= 0).sum(-1)  # [..., S] -> [...]


def recount(tree, prompt_lengths):
  """Per-problem ``Counters`` of an lm_search step-mode tree (see above)."""
  used = jnp.arange(tree.capacity)[None] < tree.num_nodes[:, None]  # [B, N]
  lens = _step_len(tree.children_actions)  # [B, N, K]
  decode = jnp.maximum(lens - 1, 0)  # tokens forwarded while sampling
  own = tree.embeddings["kv"]["length"]  # [B, N], 0 at the root
  tokens = prompt_lengths + jnp.sum(jnp.where(used, decode.sum(-1) + own, 0),
                                    axis=1)
  calls = jnp.sum(jnp.where(used, 1 + decode.max(-1), 0), axis=1)
  return rows_lib.Counters(model_calls=calls.astype(jnp.int32),
                           tokens_forwarded=tokens.astype(jnp.int32))


def most_visited_leaf(tree, max_depth: int):
  """``[B]`` node reached by following the most visited child from the root
  until a node without visited children (at most ``max_depth`` edges)."""
  b = jnp.arange(tree.batch_size)

  def walk(node, _):
    visits = jnp.where(tree.children_mask[b, node],
                       tree.children_visits[b, node], -1)
    best = jnp.argmax(visits, -1)
    child = tree.children_index[b, node, best]
    go = (visits[b, best] > 0) & (child >= 0)
    return jnp.where(go, child, node), None

  node, _ = jax.lax.scan(walk, jnp.full((tree.batch_size,), ROOT_INDEX,
                                        jnp.int32), None, length=max_depth)
  return node


@functools.partial(jax.jit, static_argnames=("graphdef", "task", "config",
                                             "act_on_solved"))
def _mcts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
          config, act_on_solved=False):
  b = prompt_tokens.shape[0]
  out = lm_search(graphdef, state, task, prompt_tokens, prompt_lengths,
                     rng_key, config=config)
  tree = out.search_tree
  leaf = most_visited_leaf(tree, config.max_depth)
  rb = jnp.arange(b)
  emb = tree.embeddings
  slot = jnp.full((b,), -1, jnp.int32)
  if act_on_solved:
    found, node, slot = tree_lib.solved_node(
        tree, solved_children=lm.solved_children(tree))
    leaf = jnp.where(found, node, leaf)
  env_state = jax.tree.map(lambda x: x[rb, leaf], emb["env_state"])
  if act_on_solved:  # a solved step not expanded yet: step it (it ends)
    step = tree.children_actions[rb, leaf, jnp.maximum(slot, 0)]  # [B, S]
    env_state = lm._step_tokens(task, env_state, jnp.where(  # pylint: disable=protected-access
        (slot >= 0)[:, None], step, -1))
  ctx = kv_arena.path_context(tree, leaf, config.max_depth, out.prompt_cache)
  t = task.max_answer_length
  pad = ((0, 0), (0, 0), (0, t), (0, 0), (0, 0))
  rows = rows_lib.Rows(
      keys=jnp.pad(ctx.keys, pad), values=jnp.pad(ctx.values, pad),
      mask=jnp.pad(ctx.mask, ((0, 0), (0, t))),
      prompt_length=prompt_lengths, tokens=env_state.tokens,
      length=env_state.length, task_state=env_state,
      logits=emb["logits"][rb, leaf], value=tree.raw_values[rb, leaf])
  counters = recount(tree, prompt_lengths)
  rows, counters = rows_lib.sample(
      graphdef, state, task, rows, counters, jax.random.split(rng_key, b),
      max_tokens=t, stop_at_step=False, greedy=True)
  vr = tuple(models.model_config_of(graphdef, state).value_range)
  return family._output(task, rows, counters, b, aggregate="best_value",  # pylint: disable=protected-access
                        value_range=vr, terminal_score="verifier")


def _search(policy, graphdef, state, task, prompt_tokens, prompt_lengths,
            rng_key, *, budget, num_children, step_length, max_depth, capacity,
            act_on_solved=False, **options):
  n = family.check_budget(budget)
  if act_on_solved and getattr(task, "num_players", 1) != 1:
    raise ValueError(
        f"act_on_solved is for single-player puzzles (a terminal the verifier "
        f"accepts is a solution); {task.name} has {task.num_players} players. "
        "Leave act_on_solved=False.")
  prompt_tokens, prompt_lengths = family._check_inputs(  # pylint: disable=protected-access
      graphdef, state, task, prompt_tokens, prompt_lengths)
  mcfg = models.model_config_of(graphdef, state)
  s = step_length or min(task.max_answer_length, 12)
  room = (mcfg.max_seq_len - task.max_prompt_length) // s
  d = max_depth or min(room, -(-task.max_answer_length // s))
  if d < 1:
    raise ValueError(f"step_length={s} leaves no room for one step after the "
                     f"{task.max_prompt_length}-token prompt in max_seq_len="
                     f"{mcfg.max_seq_len}; use a smaller step_length.")
  config = LMSearchConfig(
      mode="step", policy=policy, num_simulations=n,
      num_children=int(num_children), step_length=int(s), max_depth=int(d),
      capacity=capacity, keep_logits=True, **options)
  return _mcts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
               config=config, act_on_solved=bool(act_on_solved))


def mcts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
         budget: int, num_children: int = 4, step_length: int | None = None,
         max_depth: int | None = None, capacity: int | None = None,
         dirichlet_fraction: float = 0.0, pb_c_init: float = 1.25,
         step_temperature: float = 1.0, terminal_lookahead: bool = False,
         prune_terminal_slots: bool = False,
         act_on_solved: bool = False) -> family.SearchOutput:
  """Step-level PUCT MCTS with ``budget`` simulations (see module docstring).

  Args:
    budget: simulations (node expansions) per problem.
    num_children: ``K`` sampled steps per expanded node.
    step_length: ``S``, most tokens per step (default ``min(T, 12)``; a
      longer step continues in the next node).
    max_depth: deepest node; default as deep as the context allows, at most
      ``ceil(T / S)``.
    capacity: tree nodes; fewer than ``budget + 1`` is a ValueError.
    dirichlet_fraction: root noise (0 for evaluation).
    terminal_lookahead: score every sampled step that ends the answer with
      the verifier when its node is expanded (``LMSearchConfig``).
    prune_terminal_slots: puzzles, with ``terminal_lookahead``: spend no
      simulation on those known leaves.
    act_on_solved: puzzles: answer with the shallowest verified solution in
      the tree where it holds one (see the module docstring).
  """
  return _search("puct", graphdef, state, task, prompt_tokens, prompt_lengths,
                 rng_key, budget=budget, num_children=num_children,
                 step_length=step_length, max_depth=max_depth,
                 capacity=capacity, dirichlet_fraction=dirichlet_fraction,
                 pb_c_init=pb_c_init, step_temperature=step_temperature,
                 terminal_lookahead=terminal_lookahead,
                 prune_terminal_slots=prune_terminal_slots,
                 act_on_solved=act_on_solved)


def gumbel(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
           budget: int, num_children: int = 4, step_length: int | None = None,
           max_depth: int | None = None, capacity: int | None = None,
           gumbel_scale: float = 1.0,
           step_temperature: float = 1.0, terminal_lookahead: bool = False,
           act_on_solved: bool = False) -> family.SearchOutput:
  """Step-level Gumbel MuZero search with ``budget`` simulations; as
  :func:`mcts` (the answer still follows the most visited children, or
  with ``act_on_solved`` a verified solution in the tree)."""
  return _search("gumbel", graphdef, state, task, prompt_tokens,
                 prompt_lengths, rng_key, budget=budget,
                 num_children=num_children, step_length=step_length,
                 max_depth=max_depth, capacity=capacity,
                 max_num_considered_actions=int(num_children),
                 gumbel_scale=gumbel_scale, step_temperature=step_temperature,
                 terminal_lookahead=terminal_lookahead,
                 act_on_solved=act_on_solved)

