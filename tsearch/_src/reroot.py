"""Keep the subtree of a committed move: :func:`reroot`."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsearch._src.tree import NO_PARENT, ROOT_INDEX, UNVISITED, Tree

Array = chex.Array


def reroot(tree: Tree, action_slot: Array) -> Tree:
  """Keeps the subtree under root slot ``action_slot[b]`` of each tree.

  The chosen child becomes node 0; its descendants are re-indexed compactly
  in their old order (so a node's index stays larger than its parent's), with
  all statistics, action payloads and embeddings moved along; every other
  node is freed to the fill values of :func:`tsearch.empty_tree`. The new
  root keeps its visits, values and priors (but not the reward of the edge
  that led to it). Jittable; one fixed-shape pass over the nodes plus
  ``log2(N)`` pointer-jumping steps.

  If the chosen slot was never expanded (or is out of range), that row
  becomes an empty tree (``num_nodes == 0``); :func:`tsearch.puct_search`
  and :func:`tsearch.gumbel_search` with ``tree=`` start such rows from the
  ``root`` they are given. ``overflowed`` and ``nonfinite`` are cleared.

  Args:
    tree: ``B`` trees of capacity ``N``.
    action_slot: ``[B]`` int, the root slot committed in each tree.

  Returns:
    A tree with the same shapes.
  """
  action_slot = jnp.asarray(action_slot, jnp.int32)
  batch, n, k = tree.batch_size, tree.capacity, tree.num_children
  if action_slot.shape != (batch,):
    raise ValueError(
        f"action_slot must have shape [B] = ({batch},); got "
        f"{action_slot.shape}.")
  b = jnp.arange(batch)
  in_range = (action_slot >= 0) & (action_slot < k)
  child = tree.children_index[b, ROOT_INDEX, jnp.clip(action_slot, 0, k - 1)]
  child = jnp.where(in_range & (tree.num_nodes > 0), child, UNVISITED)

  # The ancestor at depth 1 of every node, by pointer jumping.
  nodes = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
  used = nodes < tree.num_nodes[:, None]
  jump = jnp.where(used & (tree.node_depth > 1), tree.parents, nodes)
  for _ in range(max(1, (n - 1).bit_length())):
    jump = jnp.take_along_axis(jump, jump, axis=1)
  keep = used & (jump == child[:, None]) & (tree.node_depth >= 1)
  new_index = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, n)  # [B, N]
  count = jnp.sum(keep, axis=1).astype(jnp.int32)
  # src[b, j]: old index of new node j (0 where j >= count).
  src = jnp.zeros((batch, n), jnp.int32).at[b[:, None], new_index].set(
      nodes, mode="drop")
  valid = nodes < count[:, None]  # [B, N]

  def take(x, fill):
    moved = x[b[:, None], src]
    shape = valid.shape + (1,) * (moved.ndim - 2)
    return jnp.where(valid.reshape(shape), moved, jnp.asarray(fill, x.dtype))

  def remap(old):  # old node indices -> new ones, UNVISITED if not kept
    safe = jnp.clip(old, 0, n - 1)
    flat = new_index[b.reshape((batch,) + (1,) * (old.ndim - 1)), safe]
    return jnp.where((old >= 0) & (flat < n), flat, UNVISITED).astype(
        jnp.int32)

  is_root = nodes == ROOT_INDEX
  parents = jnp.where(is_root, NO_PARENT, remap(take(tree.parents, -1)))
  parents = jnp.where(valid, parents, NO_PARENT)
  action_from_parent = jnp.where(is_root | ~valid, -1,
                                 take(tree.action_from_parent, -1))
  children_index = remap(take(tree.children_index, UNVISITED))
  return tree.replace(
      node_visits=take(tree.node_visits, 0),
      raw_values=take(tree.raw_values, 0.),
      node_values=take(tree.node_values, 0.),
      parents=parents,
      action_from_parent=action_from_parent,
      node_depth=jnp.where(valid, take(tree.node_depth, 0) - 1, 0),
      node_terminal=take(tree.node_terminal, False),
      children_index=children_index,
      children_prior_logits=take(tree.children_prior_logits, 0.),
      children_visits=take(tree.children_visits, 0),
      children_values=take(tree.children_values, 0.),
      children_rewards=take(tree.children_rewards, 0.),
      children_discounts=take(tree.children_discounts, 0.),
      children_mask=take(tree.children_mask, False),
      children_actions=take(tree.children_actions, 0),
      num_nodes=count,
      overflowed=jnp.zeros((batch,), bool),
      nonfinite=jnp.zeros((batch,), bool),
      embeddings=jax.tree.map(lambda x: take(x, 0), tree.embeddings),
  )
