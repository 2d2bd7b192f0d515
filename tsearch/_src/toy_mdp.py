"""A random table MDP for tests and benchmarks of the search.

Every state ``s`` has, per action ``a``, a next state ``transitions[s, a]``,
a reward ``rewards[s, a]``, a prior logit and a legality bit, plus a value and
a terminal bit. The tables are the ``params`` of the functions below, so one
compiled search serves every random MDP of the same shape.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import mctx

from tsearch._src.base import ExpandOutput, RootOutput
from tsearch._src.tree import Tree

Array = chex.Array


@chex.dataclass(frozen=True)
class ToyMDP:
  transitions: Array  # [S, A] int32
  rewards: Array  # [S, A] float32
  prior_logits: Array  # [S, A] float32
  values: Array  # [S] float32
  legal: Array  # [S, A] bool
  terminal: Array  # [S] bool
  discount: Array  # [] float32, -1 for two players


def make_toy_mdp(key: Array, num_states: int, num_actions: int, *,
                 discount: float = 1.0, illegal_fraction: float = 0.0,
                 terminal_fraction: float = 0.0) -> ToyMDP:
  """A random MDP; state 0..B-1 are good roots. Action 0 is always legal."""
  k = jax.random.split(key, 6)
  legal = jax.random.uniform(k[4], (num_states, num_actions)) >= (
      illegal_fraction)
  return ToyMDP(
      transitions=jax.random.randint(k[0], (num_states, num_actions), 0,
                                     num_states),
      rewards=jax.random.normal(k[1], (num_states, num_actions)),
      prior_logits=jax.random.normal(k[2], (num_states, num_actions)),
      values=jax.random.normal(k[3], (num_states,)),
      legal=legal.at[:, 0].set(True),
      terminal=jax.random.uniform(k[5], (num_states,)) < terminal_fraction,
      discount=jnp.asarray(discount, jnp.float32))


def mctx_root(mdp: ToyMDP, states: Array) -> mctx.RootFnOutput:
  return mctx.RootFnOutput(prior_logits=mdp.prior_logits[states],
                           value=mdp.values[states], embedding=states)


def mctx_recurrent_fn(mdp: ToyMDP, rng_key, action, state):
  """An mctx ``recurrent_fn`` with ``params = mdp`` (no masks, no ends)."""
  del rng_key
  nxt = mdp.transitions[state, action]
  out = mctx.RecurrentFnOutput(
      reward=mdp.rewards[state, action],
      discount=jnp.broadcast_to(mdp.discount, state.shape),
      prior_logits=mdp.prior_logits[nxt], value=mdp.values[nxt])
  return out, nxt


def _slot_actions(batch, num_actions):
  return jnp.broadcast_to(jnp.arange(num_actions, dtype=jnp.int32)[None, :,
                                                                   None],
                          (batch, num_actions, 1))


def root(mdp: ToyMDP, states: Array) -> RootOutput:
  """A tsearch root with the MDP's legal mask."""
  a = mdp.prior_logits.shape[1]
  return RootOutput(prior_logits=mdp.prior_logits[states],
                    value=mdp.values[states], embedding=states,
                    children_actions=_slot_actions(states.shape[0], a),
                    children_mask=mdp.legal[states])


def expand_fn(mdp: ToyMDP, rng_key, tree: Tree, parent_index: Array,
              action_slot: Array) -> ExpandOutput:
  """A native tsearch ``expand_fn`` with masks and terminal states."""
  del rng_key
  b = jnp.arange(tree.batch_size)
  state = tree.embeddings[b, parent_index]
  nxt = mdp.transitions[state, action_slot]
  terminal = mdp.terminal[nxt]
  return ExpandOutput(
      reward=mdp.rewards[state, action_slot],
      discount=jnp.where(terminal, 0., mdp.discount),
      prior_logits=mdp.prior_logits[nxt], value=mdp.values[nxt],
      terminal=terminal,
      children_actions=_slot_actions(tree.batch_size, tree.num_children),
      children_mask=mdp.legal[nxt], embedding=nxt)
