"""Process advantages from the searched tree (PAV, "Rewarding Progress",
Setlur et al. 2024): an opt-in :class:`train.search_losses.Extension`
(``experimental.pav_value_weight`` / ``pav_policy_weight > 0``, step
level).

A step's advantage under a prover policy is ``A(s, a) = Q(s, a) - V(s)``:
how much the step raises the prover's chance of success. Here the prover is
the search over the current policy and both are read from its tree at each
searched move: ``Q(s, a)`` of each visited root candidate and ``V(s)`` the
root's value (the mean over all its visits), for the player to move.

Two terms:

* ``pav_value``: the value head after each visited candidate step against
  ``Q(s, a)`` (squared error; for two players the head after the step is
  the opponent's, so its target is ``-Q``). Dense step-level value targets:
  the head learns the prover's value of every searched step, not only the
  outcome of the committed ones (``search.value_target='outcome'``). Its
  difference across a step, ``v(s a) - v(s)``, is then the process
  advantage the search and the family's value-guided searches read (in a
  tree over one value head, an edge reward ``alpha * (v(s a) - v(s))``
  would only rescale Q among siblings, so the search reads the value head
  as it is).
* ``pav_policy``: ``-sum_a A(s, a) log pi(a | s)`` over the visited
  candidates, divided by their number, ``A`` clipped to
  ``[-pav_clip, pav_clip]``: a policy gradient whose per-step reward is the
  tree's advantage (a dense reward, with the tree's value as baseline) in
  place of the outcome. Steps better than the node's value go up, worse
  ones down.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from train import losses as losses_lib
from train import search_losses


def advantages(batch) -> tuple[jax.Array, jax.Array]:
  """``(A [B, M, K], mask [B, M, K])``: ``Q(s, a) - V(s)`` of the visited
  root candidates of searched moves (stop-gradient)."""
  ok = search_losses.visited(batch)
  adv = batch["children_q"] - batch["root_value"][..., None]
  return jax.lax.stop_gradient(jnp.where(ok, adv, 0.0)), ok


def pav_value_term(*, two_player: bool):
  """``pav_value`` (see the module docstring)."""
  def term(outputs, batch):
    _, ok = advantages(batch)
    q = batch["children_q"]
    target = -q if two_player else q
    return losses_lib.value_loss(outputs["step_values"], target,
                                 ok.astype(jnp.float32))
  return term


def pav_policy_term(*, clip: float):
  """``pav_policy`` (see the module docstring)."""
  def term(outputs, batch):
    adv, ok = advantages(batch)
    adv = jnp.clip(adv, -clip, clip)
    per_step = -adv * outputs["step_logprobs"]
    return losses_lib.LossTerm(jnp.sum(jnp.where(ok, per_step, 0.0)),
                               jnp.sum(ok).astype(jnp.float32))
  return term


def extension(*, value_weight: float, policy_weight: float, clip: float,
              two_player: bool) -> search_losses.Extension:
  """The PAV terms at their weights (a weight of 0 leaves its term out)."""
  terms, weights = {}, {}
  if value_weight > 0:
    terms["pav_value"] = pav_value_term(two_player=two_player)
    weights["pav_value"] = value_weight
  if policy_weight > 0:
    terms["pav_policy"] = pav_policy_term(clip=clip)
    weights["pav_policy"] = policy_weight
  return search_losses.Extension(
      terms=terms, weights=weights, keep=("children_q", "children_visits"),
      record_q=True,
      stats=lambda rows: {"search/mean_abs_advantage": _mean_abs(rows)})


def _mean_abs(rows):
  adv, ok = advantages(rows)
  return jnp.sum(jnp.abs(adv)) / jnp.maximum(jnp.sum(ok), 1)
