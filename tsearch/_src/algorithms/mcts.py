"""PUCT and Gumbel MCTS over steps as answer searches: :func:`tsearch.rollout`.

The answer is played move by move: each move runs ``budget`` simulations of
:func:`tsearch.lm_search` in step mode (K sampled steps per node, the tree as
the KV cache) on the subtree kept from the previous move, and commits the
most visited root slot (PUCT) or Gumbel's choice. This is the search the
trainer's rollouts and the evaluation's MCTS rows run.

Compute is counted as in :mod:`tsearch.algorithms.rows` (the rollout's
counters, :func:`tsearch._src.rollout.compute`): the prompt once, every
token the step sampler forwarded for a sampled step (all but the last token
of each), and every expanded node's own step (forwarded once more at
expansion: that re-forward is what lm_search's design costs). A subtree
kept from one move to the next is not paid for twice.

Note: like every ``lm_search`` tree, terminal nodes earn the task's verifier
reward (the value head scores the rest); compare with the family's
``terminal_score='verifier'``. For puzzles, ``terminal_lookahead`` and
``prune_terminal_slots`` search as the training rollouts do (every sampled
step that ends the answer is scored by the verifier when its node is
expanded; no simulation is spent on such known leaves), and
``act_on_solved`` commits the root slot on the path to a verified solution
where the tree holds one (a visited terminal node, or a sampled step the
lookahead scored) instead of the search's choice. With
``verifier_in_search=False`` the value head is the judge instead, in all
three (the value at a finished step's last token, read while it is
sampled): the search then uses no answer key and acts on what the model
itself judges a solution.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import models
from models import sharding
from tsearch._src.lm_search import LMSearchConfig
from tsearch._src.algorithms import family
from tsearch._src.rollout import rollout


@sharding.on_params_mesh
@functools.partial(jax.jit, static_argnames=("graphdef", "task", "config",
                                             "num_moves", "act_on_solved"))
def _mcts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
          config, num_moves, act_on_solved=False):
  r = rollout(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
              config=config, num_moves=num_moves, act_on_solved=act_on_solved)
  lo, hi = models.model_config_of(graphdef, state).value_range
  # An unfinished answer is scored by the tree's value at its last move.
  last = jnp.maximum(jnp.sum(r.active, -1) - 1, 0)
  value = jnp.take_along_axis(r.root_value, last[:, None], 1)[:, 0]
  score = jnp.where(r.finished, lo + r.outcome * (hi - lo), value)
  return family.SearchOutput(
      answers=r.answers, answer_lengths=r.answer_length, answer_scores=score,
      candidates=r.answers[:, None], candidate_lengths=r.answer_length[:, None],
      candidate_scores=score[:, None], candidate_finished=r.finished[:, None],
      model_calls=r.model_calls, tokens_forwarded=r.tokens_forwarded)


def _search(policy, graphdef, state, task, prompt_tokens, prompt_lengths,
            rng_key, *, budget, num_children, step_length, max_depth, capacity,
            max_moves=None, act_on_solved=False, **options):
  n = family.check_budget(budget)
  if act_on_solved and getattr(task, "num_players", 1) != 1:
    raise ValueError(
        f"act_on_solved is for single-player puzzles (a terminal the verifier "
        f"accepts is a solution); {task.name} has {task.num_players} players. "
        "Leave act_on_solved=False.")
  prompt_tokens, prompt_lengths = family.check_inputs(
      graphdef, state, task, prompt_tokens, prompt_lengths)
  mcfg = models.model_config_of(graphdef, state)
  t = task.max_answer_length
  # The committed answer (T tokens) joins the prompt cache; the tree's
  # paths take the rest of the context (a step cut short continues in the
  # next move).
  free = mcfg.max_seq_len - task.max_prompt_length - t
  s = step_length or max(1, min(t, 12, free))
  room = free // s
  d = max_depth or min(room, -(-t // s))
  moves = int(max_moves or t)
  if moves < 1:
    raise ValueError(f"max_moves must be a positive int or None; got "
                     f"{max_moves!r}.")
  config = LMSearchConfig(
      mode="step", policy=policy, num_simulations=n,
      num_children=int(num_children), step_length=int(s),
      max_depth=max(int(d), 1), capacity=capacity, reserve_tokens=t,
      temperature=0.0, **options)
  if d < 1:
    raise ValueError(
        f"MCTS needs the {task.max_prompt_length}-token prompt, the "
        f"{t}-token answer it commits and at least one step_length={s} step "
        f"in max_seq_len={mcfg.max_seq_len}; use a smaller step_length or a "
        "longer-context model.")
  return _mcts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key,
               config=config, num_moves=moves,
               act_on_solved=bool(act_on_solved))


def mcts(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
         budget: int, num_children: int = 4, step_length: int | None = None,
         max_depth: int | None = None, capacity: int | None = None,
         max_moves: int | None = None,
         dirichlet_fraction: float = 0.0, pb_c_init: float = 1.25,
         step_temperature: float = 1.0, terminal_lookahead: bool = False,
         prune_terminal_slots: bool = False,
         act_on_solved: bool = False,
         verifier_in_search: bool = True) -> family.SearchOutput:
  """Step-level PUCT MCTS, ``budget`` simulations per move (see the module
  docstring); each move commits the most visited root slot.

  Args:
    budget: simulations (node expansions) per move.
    num_children: ``K`` sampled steps per expanded node.
    step_length: ``S``, most tokens per step (default ``min(T, 12)``, less
      where the context has less room after the prompt and the answer; a
      longer step continues in the next move).
    max_depth: deepest node below the current root; default as deep as the
      context allows after the prompt and the committed answer, at most
      ``ceil(T / S)``.
    capacity: tree nodes; fewer than ``budget + 1`` is a ValueError.
    max_moves: moves at most (default ``T``, one per answer token; a
      finished answer stops searching).
    dirichlet_fraction: root noise (0 for evaluation).
    terminal_lookahead: score every sampled step that ends the answer with
      the verifier when its node is expanded (``LMSearchConfig``).
    prune_terminal_slots: puzzles, with ``terminal_lookahead``: spend no
      simulation on those known leaves.
    act_on_solved: puzzles: commit a move toward a verified solution where
      the tree holds one (see the module docstring).
    verifier_in_search: False: no answer key inside the search; finished
      answers in the tree (and, with ``terminal_lookahead``, sampled steps
      that finish one) earn the value head's estimate
      (``LMSearchConfig.verifier_in_search``).
  """
  return _search("puct", graphdef, state, task, prompt_tokens, prompt_lengths,
                 rng_key, budget=budget, num_children=num_children,
                 step_length=step_length, max_depth=max_depth,
                 capacity=capacity, max_moves=max_moves,
                 dirichlet_fraction=dirichlet_fraction,
                 pb_c_init=pb_c_init, step_temperature=step_temperature,
                 terminal_lookahead=terminal_lookahead,
                 prune_terminal_slots=prune_terminal_slots,
                 act_on_solved=act_on_solved,
                 verifier_in_search=verifier_in_search)


def gumbel(graphdef, state, task, prompt_tokens, prompt_lengths, rng_key, *,
           budget: int, num_children: int = 4, step_length: int | None = None,
           max_depth: int | None = None, capacity: int | None = None,
           max_moves: int | None = None, gumbel_scale: float = 1.0,
           step_temperature: float = 1.0, terminal_lookahead: bool = False,
           act_on_solved: bool = False,
           verifier_in_search: bool = True) -> family.SearchOutput:
  """Step-level Gumbel MuZero search, ``budget`` simulations per move; as
  :func:`mcts`, but each move commits Gumbel's choice (sequential halving
  over the root's ``num_children`` slots)."""
  return _search("gumbel", graphdef, state, task, prompt_tokens,
                 prompt_lengths, rng_key, budget=budget,
                 num_children=num_children, step_length=step_length,
                 max_depth=max_depth, capacity=capacity, max_moves=max_moves,
                 max_num_considered_actions=int(num_children),
                 gumbel_scale=gumbel_scale, step_temperature=step_temperature,
                 terminal_lookahead=terminal_lookahead,
                 act_on_solved=act_on_solved,
                 verifier_in_search=verifier_in_search)
