"""Run mctx problems with tsearch: root and recurrent_fn adapters.

mctx describes a problem by a ``RootFnOutput(prior_logits [B, A], value [B],
embedding)``, an optional root mask ``invalid_actions [B, A]`` and a
``recurrent_fn(params, rng_key, action [B], embedding) ->
(RecurrentFnOutput(reward, discount, prior_logits, value), new_embedding)``.

The mapping to tsearch is slot k == action k (``K == A``, ``S == 1``):

=========================  ==================================================
mctx                       tsearch
=========================  ==================================================
``root.prior_logits``      ``RootOutput.prior_logits``
``root.value``             ``RootOutput.value``
``root.embedding``         ``RootOutput.embedding`` (stored per node)
``invalid_actions``        ``RootOutput.children_mask = ~invalid_actions``
(action ids)               ``children_actions[b, k, 0] = k``
``recurrent_fn``           ``expand_fn``: gathers the parent's embedding from
                           ``tree.embeddings`` and calls ``recurrent_fn`` with
                           ``action = action_slot``; all slots of new nodes
                           are legal and no node is terminal (as in mctx).
=========================  ==================================================
"""
from __future__ import annotations

from typing import Any, Optional

import chex
import jax
import jax.numpy as jnp
import mctx

from tsearch._src.base import ExpandFn, ExpandOutput, RootOutput
from tsearch._src.tree import Tree

Array = chex.Array


def _slot_actions(batch_size: int, num_actions: int,
                  action_length: int) -> Array:
  actions = jnp.zeros((batch_size, num_actions, action_length), jnp.int32)
  return actions.at[:, :, 0].set(jnp.arange(num_actions, dtype=jnp.int32))


def root_from_mctx(root: mctx.RootFnOutput,
                   invalid_actions: Optional[Array] = None,
                   *, action_length: int = 1) -> RootOutput:
  """Converts an mctx root (and its root mask) to a :class:`RootOutput`.

  Args:
    root: ``mctx.RootFnOutput`` with ``prior_logits [B, A]``, ``value [B]``.
    invalid_actions: mctx's root mask ``[B, A]``, nonzero = invalid.
    action_length: ``S`` of the action payload (1 for mctx problems).

  Returns:
    A ``RootOutput`` with ``K = A`` slots, slot ``k`` carrying action ``k``.

  Example::

    import jax, jax.numpy as jnp, mctx, tsearch

    def recurrent_fn(params, rng_key, action, embedding):
      del params, rng_key
      out = mctx.RecurrentFnOutput(
          reward=action.astype(jnp.float32), discount=jnp.ones_like(
              action, jnp.float32),
          prior_logits=jnp.zeros((action.shape[0], 3)),
          value=jnp.zeros(action.shape[0]))
      return out, embedding + 1

    mroot = mctx.RootFnOutput(prior_logits=jnp.zeros((2, 3)),
                              value=jnp.zeros(2), embedding=jnp.zeros(2))
    out = jax.jit(lambda key: tsearch.gumbel_search(
        (), key, tsearch.root_from_mctx(mroot),
        tsearch.from_mctx_recurrent_fn(recurrent_fn), num_simulations=8))(
            jax.random.key(0))
    assert out.action_weights.shape == (2, 3)
  """
  logits = jnp.asarray(root.prior_logits)
  if logits.ndim != 2:
    raise ValueError(
        f"root.prior_logits must be [B, A]; got shape {logits.shape}.")
  b, a = logits.shape
  if invalid_actions is None:
    mask = jnp.ones((b, a), bool)
  else:
    if jnp.shape(invalid_actions) != (b, a):
      raise ValueError(
          f"invalid_actions must have the shape of prior_logits {(b, a)}; "
          f"got {jnp.shape(invalid_actions)}.")
    mask = jnp.asarray(invalid_actions) == 0
  return RootOutput(prior_logits=logits, value=root.value,
                    embedding=root.embedding,
                    children_actions=_slot_actions(b, a, action_length),
                    children_mask=mask)


def from_mctx_recurrent_fn(recurrent_fn: Any) -> ExpandFn:
  """Wraps an mctx ``recurrent_fn`` as a tsearch ``expand_fn`` (``K == A``).

  The returned function gathers each row's parent embedding from
  ``tree.embeddings``, calls ``recurrent_fn(params, rng_key, action_slot,
  parent_embedding)`` (slot k is action k) and returns an
  :class:`ExpandOutput` with all child slots legal and ``terminal`` False.
  See :func:`root_from_mctx` for a runnable example.
  """

  def expand_fn(params, rng_key, tree: Tree, parent_index: Array,
                action_slot: Array) -> ExpandOutput:
    b = jnp.arange(tree.batch_size)
    embedding = jax.tree.map(lambda x: x[b, parent_index], tree.embeddings)
    out, new_embedding = recurrent_fn(params, rng_key, action_slot, embedding)
    num_actions = jnp.shape(out.prior_logits)[-1]
    if num_actions != tree.num_children:
      raise ValueError(
          f"recurrent_fn returned prior_logits over {num_actions} actions but "
          f"the tree has K={tree.num_children} slots; from_mctx_recurrent_fn "
          "needs K == number of actions.")
    return ExpandOutput(
        reward=out.reward, discount=out.discount,
        prior_logits=out.prior_logits, value=out.value,
        terminal=jnp.zeros((tree.batch_size,), bool),
        children_actions=_slot_actions(tree.batch_size, tree.num_children,
                                       tree.action_length),
        children_mask=jnp.ones((tree.batch_size, tree.num_children), bool),
        embedding=new_embedding)

  return expand_fn
