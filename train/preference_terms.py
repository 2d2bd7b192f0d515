"""Step-level preference learning from the searched tree (MCTS-IPL /
step-DPO): an opt-in :class:`train.search_losses.Extension`
(``experimental.step_dpo_weight > 0``, step level).

At every searched move, two candidate steps at the root (siblings) make a
pair when both were visited, their actions differ and the tree's Q values
differ by more than ``experimental.step_dpo_margin``; the step with the
higher Q is preferred (Q for the player to move, as the search ranks them).
With ``h(a) = log pi(a | s) - log pi_ref(a | s)`` (summed over the step's
tokens, or its choice tokens with ``experimental.choice_tokens_only``) and
``d = h(preferred) - h(other)``, the term ``step_dpo`` averages over all
pairs

* ``loss='dpo'`` (Rafailov et al. 2023): ``-log sigmoid(beta * d)``;
* ``loss='ipo'`` (Azar et al. 2023): ``(d - 1 / (2 * beta)) ** 2``.

The reference policy ``pi_ref`` is frozen: the parameters the search steps
started from (the warm start's last step), kept by the trainer next to the
run's state and saved in its checkpoints (``reference``). Its log-probs of
every candidate are computed once per search, next to the rollout
(``ref_step_logprobs``), so a replay buffer stores them with the rows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from train import losses as losses_lib
from train import search_losses

LOSSES = ("dpo", "ipo")


def pairs(batch, margin: float) -> jax.Array:
  """``[B, M, K, K]`` bool: root slot ``i`` of a move is preferred over slot
  ``j`` (both visited and valid, different actions, ``Q_i - Q_j >
  margin``)."""
  q = batch["children_q"]
  ok = search_losses.visited(batch)
  acts = batch["children_actions"]  # [B, M, K, S]
  same = jnp.all(acts[..., :, None, :] == acts[..., None, :, :], -1)
  return (ok[..., :, None] & ok[..., None, :] & ~same
          & (q[..., :, None] - q[..., None, :] > margin))


def dpo_term(*, beta: float, margin: float, loss: str = "dpo"):
  """The ``step_dpo`` term (see the module docstring)."""
  if loss not in LOSSES:
    raise ValueError(f"experimental.step_dpo_loss must be one of {LOSSES}, "
                     f"got {loss!r}.")

  def term(outputs, batch):
    h = outputs["step_logprobs"] - batch["ref_step_logprobs"]  # [B, M, K]
    d = h[..., :, None] - h[..., None, :]
    if loss == "dpo":
      per_pair = -jax.nn.log_sigmoid(beta * d)
    else:
      per_pair = jnp.square(d - 1.0 / (2.0 * beta))
    pair = pairs(batch, margin)
    return losses_lib.LossTerm(jnp.sum(jnp.where(pair, per_pair, 0.0)),
                               jnp.sum(pair).astype(jnp.float32))
  return term


def pair_stats(rows, margin: float) -> dict:
  """``search/dpo_pairs``: preference pairs per searched move."""
  pair = pairs(rows, margin)
  moves = jnp.sum(search_losses.searched(rows))
  return {"search/dpo_pairs": jnp.sum(pair) / jnp.maximum(moves, 1)}


def extension(forward, *, weight: float, beta: float, margin: float,
              loss: str) -> search_losses.Extension:
  """The ``step_dpo`` term at ``weight``; ``forward`` is the run's
  step-level forward (:func:`train.search_losses.make_forward`), run on the
  reference parameters to score the candidates once per search."""
  def prepare(reference, rows):
    ref = forward(reference, rows)["step_logprobs"]
    return dict(rows, ref_step_logprobs=jax.lax.stop_gradient(ref))

  return search_losses.Extension(
      terms={"step_dpo": dpo_term(beta=beta, margin=margin, loss=loss)},
      weights={"step_dpo": weight}, keep=("children_q", "children_visits"),
      record_q=True, prepare=prepare,
      stats=lambda rows: pair_stats(rows, margin))
