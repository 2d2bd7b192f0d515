"""Value and SFT targets along a rollout's committed moves (pure, jittable).

Sign convention (``tsearch.tasks``): a rollout's ``outcome`` is the reward
for the player who made the last move; the tree stores each node's value
for the player to move there.
"""
from __future__ import annotations

import chex
import jax.numpy as jnp

Array = chex.Array

VALUE_TARGETS = ("outcome", "q", "mix")


def value_outcomes(outcome: Array, active: Array, *, two_player: bool
                   ) -> Array:
  """``[B, M]`` outcome seen from the player to move at each committed node.

  One player: the outcome at every node. Two players: ``outcome`` is the
  result for the player who made the last move, so node ``j`` of a game of
  ``n`` moves (``n`` = the row's active moves) gets it with sign
  ``(-1) ** (n - 1 - j)``.

  Args:
    outcome: ``[B]`` the verifier's reward of each trajectory.
    active: ``[B, M]`` bool, moves made before the trajectory ended.
  """
  m = active.shape[1]
  outcome = jnp.broadcast_to(outcome[:, None], (outcome.shape[0], m))
  if not two_player:
    return outcome.astype(jnp.float32)
  n = jnp.sum(active, axis=1, keepdims=True)
  sign = jnp.where((n - 1 - jnp.arange(m)[None]) % 2 == 0, 1.0, -1.0)
  return (outcome * sign).astype(jnp.float32)


def value_targets(outcome: Array, tree_values: Array, *, mode: str,
                  outcome_weight: float = 0.5) -> Array:
  """Value targets at each committed node (AlphaMath's choice).

  Args:
    outcome: ``[B, M]`` float32 outcome at each node, for the player to move
      there (:func:`value_outcomes`).
    tree_values: ``[B, M]`` the tree's value at each node (same player).
    mode: ``"outcome"`` (every node regresses to the outcome), ``"q"`` (to
      the tree's value) or ``"mix"`` (``outcome_weight * outcome + (1 -
      outcome_weight) * q``).
    outcome_weight: weight of the outcome in ``"mix"``.

  Returns:
    ``[B, M]`` float32 targets.
  """
  if mode == "outcome":
    return outcome
  if mode == "q":
    return tree_values.astype(jnp.float32)
  if mode == "mix":
    return outcome_weight * outcome + (1.0 - outcome_weight) * tree_values
  raise ValueError(f"Unknown value target mode {mode!r}; use one of "
                   f"{VALUE_TARGETS}.")


def sft_mask(token_mask: Array, solved: Array) -> Array:
  """Keeps the answer-token mask only on solved trajectories.

  Args:
    token_mask: ``[B, T]`` answer tokens of each trajectory.
    solved: ``[B]`` bool, the verifier accepted the trajectory.
  """
  return token_mask * solved[:, None].astype(token_mask.dtype)
