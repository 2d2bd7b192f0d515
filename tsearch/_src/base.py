"""Data contracts shared by every search in tsearch.

A search is driven by two user functions, in the style of mctx:

* the *root* of each tree, given as a :class:`RootOutput` (what mctx calls
  ``RootFnOutput``), and
* an *expansion function* ``expand_fn(params, rng_key, tree, parent_index,
  action_slot) -> ExpandOutput`` that evaluates one new node per batch row.

Porting an mctx ``recurrent_fn``: mctx calls ``recurrent_fn(params, rng_key,
action, embedding) -> (RecurrentFnOutput, new_embedding)`` with the parent's
embedding and the chosen action. tsearch hands ``expand_fn`` the whole tree
instead (so a language model can gather the keys/values of every ancestor
from the tree's node storage), the parent's node index and the chosen child
slot. :func:`tsearch.from_mctx_recurrent_fn` wraps an mctx ``recurrent_fn``
unchanged; see its docstring for the mapping.

Shapes: ``B`` batch, ``N`` tree capacity (nodes), ``K`` children per node
(child slots), ``S`` tokens in one action's payload (1 for token-level search
and for plain MDPs, the maximum step length for step-level search).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax.numpy as jnp

Array = chex.Array
PyTree = Any


@chex.dataclass(frozen=True)
class RootOutput:
  """The evaluated root of each tree in the batch.

  Attributes:
    prior_logits: logits of the prior over the root's K child slots.
    value: the value head's estimate at the root, from the point of view of the
      player to move at the root.
    embedding: any pytree whose leaves have a leading batch dimension ``B``;
      stored as the root's per-node payload in ``Tree.embeddings``.
    children_actions: the action payload of each child slot (token ids, or the
      tokens of a sampled step, padded). For a plain MDP with K == A actions
      use ``children_actions[b, k, 0] == k``.
    children_mask: which child slots are legal. Illegal slots are never
      selected, never expanded and get zero weight in every policy output.
  """
  prior_logits: Array  # [B, K]
  value: Array  # [B]
  embedding: PyTree  # leaves [B, ...]
  children_actions: Array  # [B, K, S] int32
  children_mask: Array  # [B, K] bool


@chex.dataclass(frozen=True)
class ExpandOutput:
  """What ``expand_fn`` returns for the one new node of each batch row.

  The new node is the child at ``action_slot`` of ``parent_index``.

  Attributes:
    reward: reward on the edge parent -> new node, from the point of view of
      the player who chose the action (as in mctx).
    discount: discount on that edge; use -1 for two-player zero-sum games
      (values are always from the point of view of the player to move) and 0
      on an edge into a terminal state.
    prior_logits: prior over the new node's K child slots.
    value: value estimate at the new node (ignored where ``terminal``: a
      terminal node's value is 0 and only its reward is backed up).
    terminal: the new node ends the episode; it is never expanded.
    children_actions: action payload of the new node's child slots.
    children_mask: legal child slots of the new node.
    embedding: pytree with leaves ``[B, ...]`` matching the structure of the
      root's embedding; stored at the new node's index.
  """
  reward: Array  # [B]
  discount: Array  # [B]
  prior_logits: Array  # [B, K]
  value: Array  # [B]
  terminal: Array  # [B] bool
  children_actions: Array  # [B, K, S] int32
  children_mask: Array  # [B, K] bool
  embedding: PyTree  # leaves [B, ...]


# expand_fn(params, rng_key, tree, parent_index [B], action_slot [B]) -> ExpandOutput
ExpandFn = Callable[..., ExpandOutput]


@chex.dataclass(frozen=True)
class PolicyOutput:
  """The result of one search.

  Attributes:
    action: the chosen child slot at each root.
    action_weights: the policy target over root child slots (visit counts for
      PUCT, the completed-Q improved policy for Gumbel); zero on illegal slots.
    search_tree: the tree after the search.
  """
  action: Array  # [B] int32 (child slot index)
  action_weights: Array  # [B, K]
  search_tree: Any  # tsearch.Tree


def step_ended(env, state, token: Array) -> Array:
  """``[B]`` bool: ``token`` ``[B]`` (just stepped into ``state``) ends a step.

  ``env.step_ended(state, token)`` where the environment has it (every
  :class:`tsearch.tasks.Task`); otherwise ``token == env.step_delimiter``,
  or every token where ``step_delimiter`` is -1 (duck-typed environments).
  """
  fn = getattr(env, "step_ended", None)
  if fn is not None:
    return jnp.asarray(fn(state, token), bool)
  token = jnp.asarray(token)
  if env.step_delimiter < 0:
    return jnp.ones(token.shape, bool)
  return token == env.step_delimiter
