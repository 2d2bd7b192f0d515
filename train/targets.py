"""Training targets built on device from search trees and committed moves.

All functions are pure and jittable; they read a :class:`tsearch.Tree` (or
arrays gathered from one) and return fixed-shape arrays with masks.
"""
from __future__ import annotations

import chex
import jax.numpy as jnp

from tsearch._src.tree import Tree

Array = chex.Array


def visit_policy(tree: Tree, node_index: Array) -> tuple[Array, Array]:
  """Normalised visit counts over the child slots of one node per row.

  Args:
    tree: searched trees, ``B`` rows.
    node_index: ``[B]`` node whose children to read (0 for the root).

  Returns:
    ``(probs [B, K], valid [B])``: visit distribution over legal slots, and
    whether the node had any child visits (rows without are all zeros and
    must be masked out of the loss).
  """
  b = jnp.arange(tree.batch_size)
  visits = tree.children_visits[b, node_index].astype(jnp.float32)
  visits = jnp.where(tree.children_mask[b, node_index], visits, 0.0)
  total = jnp.sum(visits, axis=-1)
  probs = visits / jnp.maximum(total, 1.0)[:, None]
  return probs, total > 0


def node_value(tree: Tree, node_index: Array) -> Array:
  """The tree's backed-up value (mean return) at ``node_index``, ``[B]``.

  From the point of view of the player to move at that node, as the tree
  stores it.
  """
  b = jnp.arange(tree.batch_size)
  return tree.node_values[b, node_index]


def value_targets(outcome: Array, tree_values: Array, *, mode: str,
                  outcome_weight: float = 0.5) -> Array:
  """Value targets along committed trajectories (AlphaMath-style choice).

  Args:
    outcome: ``[B]`` the verifier's score of each finished trajectory
      (e.g. 1 solved, 0 not), from the point of view of the player to move
      at the root.
    tree_values: ``[B, M]`` the tree's value at each committed node.
    mode: ``"outcome"`` (every node regresses to the outcome), ``"q"``
      (to the tree's value) or ``"mix"``.
    outcome_weight: weight of the outcome in ``"mix"``.

  Returns:
    ``[B, M]`` float32 targets.
  """
  outcome = jnp.broadcast_to(outcome[:, None], tree_values.shape).astype(
      jnp.float32)
  if mode == "outcome":
    return outcome
  if mode == "q":
    return tree_values.astype(jnp.float32)
  if mode == "mix":
    return outcome_weight * outcome + (1.0 - outcome_weight) * tree_values
  raise ValueError(f"Unknown value target mode {mode!r}; use 'outcome', 'q' "
                   "or 'mix'.")


def two_player_outcome(outcome: Array, num_moves: int) -> Array:
  """Per-move outcome for alternating players: sign flips each move.

  Args:
    outcome: ``[B]`` result from the point of view of the player to move at
      the root.
    num_moves: ``M``.

  Returns:
    ``[B, M]``: ``outcome * (-1) ** m``.
  """
  sign = jnp.where(jnp.arange(num_moves) % 2 == 0, 1.0, -1.0)
  return outcome[:, None].astype(jnp.float32) * sign[None, :]


def sft_mask(token_mask: Array, solved: Array) -> Array:
  """Keeps the answer-token mask only on solved trajectories.

  Args:
    token_mask: ``[B, T]`` answer tokens of each trajectory.
    solved: ``[B]`` bool, the verifier accepted the trajectory.
  """
  return token_mask * solved[:, None].astype(token_mask.dtype)
