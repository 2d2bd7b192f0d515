"""Array-based search trees, batch first.

A :class:`Tree` holds ``B`` independent trees of fixed capacity ``N`` nodes.
Every node has ``K`` child *slots*; slot ``k`` of node ``n`` carries an action
payload ``children_actions[b, n, k]`` of ``S`` int32 tokens (a single token id
for token-level search, a padded multi-token step for step-level search, an
action id for plain MDPs).

Invariants (checked by the property tests):

* Node 0 is the root. Nodes ``0 .. num_nodes[b]-1`` are in use; the rest are
  free and hold the fill values of :func:`empty_tree`.
* ``parents[b, 0] == NO_PARENT``; for ``0 < n < num_nodes[b]``,
  ``children_index[b, parents[b, n], action_from_parent[b, n]] == n`` and
  ``node_depth[b, n] == node_depth[b, parents[b, n]] + 1``. A node's index is
  always larger than its parent's.
* ``children_index[b, n, k] == UNVISITED`` until slot ``k`` is expanded.
* ``node_visits[b, n] == 1 + sum_k children_visits[b, n, k]`` for every
  non-terminal node after a search (the first visit is the expansion itself;
  terminal nodes, and leaves at ``max_depth``, count every time a simulation
  ends on them), and
  ``children_visits[b, n, k] == node_visits[b, children_index[b, n, k]]``.
* ``node_values`` is the running mean of the backed-up returns at the node;
  ``children_values[b, n, k] == node_values[b, children_index[b, n, k]]``.
* Illegal slots (``children_mask`` False) are never expanded.
* Terminal nodes have ``raw_values == 0`` and no children.

Capacity ``N`` is chosen when the tree is made and does not depend on the
number of simulations, so a subtree kept by :func:`tsearch.reroot` can be
searched further. A search that would need more nodes than remain raises a
clear error before it runs (static shapes) or, where that depends on data,
records it in ``Tree.overflowed``. Non-finite model outputs are never backed
up; they are recorded in ``Tree.nonfinite``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp

Array = chex.Array

NO_PARENT = -1
UNVISITED = -1
ROOT_INDEX = 0


@chex.dataclass(frozen=True)
class Tree:
  """``B`` search trees of capacity ``N`` with ``K`` child slots per node."""
  # Index constants, as in ``mctx.Tree`` (``tsearch.Tree.ROOT_INDEX``).
  ROOT_INDEX: ClassVar[int] = ROOT_INDEX
  NO_PARENT: ClassVar[int] = NO_PARENT
  UNVISITED: ClassVar[int] = UNVISITED
  # Per node.
  node_visits: Array  # [B, N] int32
  raw_values: Array  # [B, N] float32, value head at expansion
  node_values: Array  # [B, N] float32, mean backed-up value
  parents: Array  # [B, N] int32, NO_PARENT for the root and free nodes
  action_from_parent: Array  # [B, N] int32, slot in the parent, -1 for root
  node_depth: Array  # [B, N] int32, root is 0
  node_terminal: Array  # [B, N] bool
  # Per child slot.
  children_index: Array  # [B, N, K] int32, UNVISITED until expanded
  children_prior_logits: Array  # [B, N, K] float32
  children_visits: Array  # [B, N, K] int32
  children_values: Array  # [B, N, K] float32
  children_rewards: Array  # [B, N, K] float32
  children_discounts: Array  # [B, N, K] float32
  children_mask: Array  # [B, N, K] bool, legal slots
  children_actions: Array  # [B, N, K, S] int32, action payload
  # Per tree.
  num_nodes: Array  # [B] int32
  overflowed: Array  # [B] bool, a search wanted more than N nodes
  # User payload per node (e.g. model state, KV references): leaves [B, N, ...].
  embeddings: Any
  # [B] bool: a root or an ``expand_fn`` output held a NaN/inf; that row's
  # simulation was dropped (nothing non-finite is backed up). Added after the
  # first contracts, hence the default: ``None`` on trees built by hand, always
  # an array on trees made by :func:`empty_tree` or returned by a search.
  nonfinite: Any = None
  # Per-tree payload (leaves ``[B, ...]``), e.g. the page pool of a paged KV
  # arena (:mod:`tsearch.kv_arena`). The search hands it to ``expand_fn``
  # with the tree and changes it only through a ``store_fn`` (see
  # :func:`tsearch.puct_search`); :func:`tsearch.reroot` leaves it as it is.
  # None for every tree that has none.
  arena: Any = None

  @property
  def batch_size(self) -> int:
    return self.node_visits.shape[0]

  @property
  def capacity(self) -> int:
    return self.node_visits.shape[1]

  @property
  def num_children(self) -> int:
    return self.children_index.shape[2]

  @property
  def action_length(self) -> int:
    return self.children_actions.shape[3]

  def qvalues(self, indices: Array) -> Array:
    """Q(s, a) = r + discount * V(child) for the slots of nodes ``indices``.

    Args:
      indices: node index per batch row, ``[B]``.

    Returns:
      ``[B, K]`` Q-values; unvisited slots give ``reward + discount * 0``.
    """
    b = jnp.arange(self.batch_size)
    return (self.children_rewards[b, indices]
            + self.children_discounts[b, indices]
            * self.children_values[b, indices])

  def root_visit_counts(self) -> Array:
    return self.children_visits[:, ROOT_INDEX]  # [B, K]


def empty_tree(*, batch_size: int, capacity: int, num_children: int,
               action_length: int, embedding_example: Any) -> Tree:
  """A tree with no nodes in use.

  Args:
    batch_size: ``B``.
    capacity: ``N``, the number of nodes each tree can hold.
    num_children: ``K``, child slots per node.
    action_length: ``S``, tokens in one action payload.
    embedding_example: a pytree with leaves ``[B, ...]``; the tree stores one
      such leaf per node, ``[B, N, ...]``, filled with zeros.
  """
  b, n, k, s = batch_size, capacity, num_children, action_length
  if min(b, n, k, s) < 1:
    raise ValueError(
        f"Tree sizes must be positive, got batch_size={b}, capacity={n}, "
        f"num_children={k}, action_length={s}.")
  i32, f32 = jnp.int32, jnp.float32

  def node_storage(x):
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] != b:
      raise ValueError(
          f"Every embedding leaf needs a leading batch dimension {b}; got a "
          f"leaf of shape {x.shape}.")
    return jnp.zeros((b, n) + x.shape[1:], x.dtype)

  return Tree(
      node_visits=jnp.zeros((b, n), i32),
      raw_values=jnp.zeros((b, n), f32),
      node_values=jnp.zeros((b, n), f32),
      parents=jnp.full((b, n), NO_PARENT, i32),
      action_from_parent=jnp.full((b, n), -1, i32),
      node_depth=jnp.zeros((b, n), i32),
      node_terminal=jnp.zeros((b, n), bool),
      children_index=jnp.full((b, n, k), UNVISITED, i32),
      children_prior_logits=jnp.zeros((b, n, k), f32),
      children_visits=jnp.zeros((b, n, k), i32),
      children_values=jnp.zeros((b, n, k), f32),
      children_rewards=jnp.zeros((b, n, k), f32),
      children_discounts=jnp.zeros((b, n, k), f32),
      children_mask=jnp.zeros((b, n, k), bool),
      children_actions=jnp.zeros((b, n, k, s), i32),
      num_nodes=jnp.zeros((b,), i32),
      overflowed=jnp.zeros((b,), bool),
      embeddings=jax.tree.map(node_storage, embedding_example),
      nonfinite=jnp.zeros((b,), bool),
  )


def path_to_root(tree: Tree, node_index: Array, max_depth: int) -> Array:
  """Ancestors of ``node_index`` (itself first), padded with NO_PARENT.

  Args:
    tree: the tree.
    node_index: ``[B]`` node per batch row.
    max_depth: static bound on the depth; the result has ``max_depth + 1``
      entries.

  Returns:
    ``[B, max_depth + 1]`` int32: entry ``i`` is the ancestor ``i`` levels up,
    or NO_PARENT beyond the root.
  """
  b = jnp.arange(tree.batch_size)

  def step(idx, _):
    safe = jnp.maximum(idx, 0)
    parent = jnp.where(idx >= 0, tree.parents[b, safe], NO_PARENT)
    return parent, idx

  _, path = jax.lax.scan(step, node_index.astype(jnp.int32), None,
                         length=max_depth + 1)
  return path.T


def _proven(tree: Tree, threshold: float, solved_children: Array | None
            ) -> tuple[Array, Array | None]:
  """``solved [B, N]``: nodes in use, at depth >= 1, that are terminals the
  verifier accepted (incoming reward >= threshold); and ``solved_children``
  restricted to nodes in use (None if not given)."""
  b = jnp.arange(tree.batch_size)[:, None]
  used = jnp.arange(tree.capacity)[None] < tree.num_nodes[:, None]
  parent = jnp.maximum(tree.parents, 0)
  slot = jnp.maximum(tree.action_from_parent, 0)
  reward = tree.children_rewards[b, parent, slot]  # [B, N]
  solved = (used & tree.node_terminal & (tree.node_depth >= 1)
            & (reward >= threshold))
  sc = None if solved_children is None else solved_children & used[..., None]
  return solved, sc


def _root_slot_above(tree: Tree, node: Array, max_depth: int) -> Array:
  """``[B]`` int32: the root slot on the path to ``node [B]`` (the node's
  own ``action_from_parent`` at depth 1; -1 for the root itself)."""
  b = jnp.arange(tree.batch_size)
  path = path_to_root(tree, node, max_depth)  # [B, D + 1], node first
  depths = jnp.where(path >= 0, tree.node_depth[b[:, None],
                                                jnp.maximum(path, 0)], -1)
  first = jnp.argmax(depths == 1, axis=1)  # the depth-1 ancestor
  return tree.action_from_parent[b, jnp.maximum(path[b, first], 0)]


def solved_node(tree: Tree, *, threshold: float = 0.5,
                solved_children: Array | None = None
                ) -> tuple[Array, Array, Array]:
  """The shallowest proven solution in the tree, if it has one.

  For single-player tasks whose only reward is the verifier's at the end
  (puzzles): a terminal node whose incoming reward is ``>= threshold`` is a
  proven solution (MCTS-Solver's rule, Winands et al. 2008); so is a child
  slot in ``solved_children``, one level below its node. Of several, the
  shallowest is taken (ties: lowest index). Jittable.

  Args:
    tree: the tree.
    threshold: reward at or above which a terminal counts as solved.
    solved_children: optional ``[B, N, K]`` bool, child slots known to be
      solved terminals before they are visited (e.g. scored by the verifier
      at expansion, ``tsearch.lm_search.solved_children``). Read on nodes in use
      only, and whether or not the slot is still in ``children_mask`` (a
      search may have pruned it because its outcome was known).

  Returns:
    ``found [B]`` bool, ``node [B]`` int32 (the solved terminal node, or the
    node holding the solved slot) and ``slot [B]`` int32 (that slot; ``-1``
    where the node itself is the solution or nothing is found).
  """
  b = jnp.arange(tree.batch_size)
  big = jnp.iinfo(jnp.int32).max
  solved, sc = _proven(tree, threshold, solved_children)
  # A node with a solved child slot: its solution is one level deeper.
  has_child = jnp.zeros_like(solved)
  child_slot = jnp.zeros(solved.shape, jnp.int32)
  if sc is not None:
    has_child = jnp.any(sc, axis=-1) & ~solved
    child_slot = jnp.argmax(sc, axis=-1).astype(jnp.int32)
  depth = jnp.where(solved, tree.node_depth,
                    jnp.where(has_child, tree.node_depth + 1, big))
  node = jnp.argmin(depth, axis=1).astype(jnp.int32)
  found = jnp.any(solved | has_child, axis=1)
  out_slot = jnp.where(found & has_child[b, node], child_slot[b, node], -1)
  return found, jnp.where(found, node, ROOT_INDEX), out_slot.astype(jnp.int32)


def solved_root_slot(tree: Tree, max_depth: int, *, threshold: float = 0.5,
                     solved_children: Array | None = None,
                     prefer: Array | None = None) -> tuple[Array, Array]:
  """The root slot that leads to a solved terminal node, if the tree has one.

  The root slot on the path to :func:`solved_node`'s solution: a move that
  solves the problem whatever the visit counts say (MCTS-Solver's rule).
  With ``prefer``, of all root slots whose subtree holds a proven solution
  (:func:`solved_root_slots`), the one ``prefer`` scores highest instead:
  with the policy's prior logits, the policy's own favourite among the
  moves that solve, so a policy target built from it sharpens the policy
  where it is already right instead of moving its argmax to another
  solution. Jittable.

  Args:
    tree: the tree.
    max_depth: static bound on node depth (as for :func:`path_to_root`).
    threshold, solved_children: as for :func:`solved_node`.
    prefer: optional ``[B, K]`` scores of the root slots (e.g. the prior
      logits before the search's root noise); the best-scored solving slot
      is taken (ties: lowest slot), not the shallowest solution's.

  Returns:
    ``found [B]`` bool and ``slot [B]`` int32 (0 where nothing is found).
  """
  if prefer is not None:
    solving = solved_root_slots(tree, max_depth, threshold=threshold,
                                solved_children=solved_children)
    slot = jnp.argmax(jnp.where(solving, prefer, -jnp.inf), axis=-1)
    found = jnp.any(solving, axis=-1)
    return found, jnp.where(found, slot, 0).astype(jnp.int32)
  found, node, child_slot = solved_node(tree, threshold=threshold,
                                        solved_children=solved_children)
  out = _root_slot_above(tree, node, max_depth)
  # A solved slot of the root itself is the move.
  out = jnp.where(node == ROOT_INDEX, child_slot, out)
  return found, jnp.where(found, out, 0).astype(jnp.int32)


def solved_root_slots(tree: Tree, max_depth: int, *, threshold: float = 0.5,
                      solved_children: Array | None = None) -> Array:
  """``[B, K]`` bool: the root slots whose subtree holds a proven solution.

  A proven solution is as for :func:`solved_node`: a terminal node at depth
  >= 1 whose incoming reward is ``>= threshold``, or a ``solved_children``
  slot of a node in use. Jittable.

  Args:
    tree: the tree.
    max_depth: static bound on node depth (as for :func:`path_to_root`).
    threshold, solved_children: as for :func:`solved_node`.
  """
  k = tree.num_children
  solved, sc = _proven(tree, threshold, solved_children)
  root_slots = jnp.zeros((tree.batch_size, k), bool)
  if sc is not None:
    solved = solved | (jnp.any(sc, axis=-1) & (tree.node_depth >= 1))
    root_slots = sc[:, ROOT_INDEX]  # the root's own solved slots
  nodes = jnp.broadcast_to(jnp.arange(tree.capacity, dtype=jnp.int32),
                           solved.shape)
  above = jax.vmap(lambda node: _root_slot_above(tree, node, max_depth),
                   in_axes=1, out_axes=1)(nodes)  # [B, N]
  hits = solved[..., None] & (above[..., None] == jnp.arange(k))  # [B, N, K]
  return root_slots | jnp.any(hits, axis=1)
