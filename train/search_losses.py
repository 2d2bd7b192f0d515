"""Search-and-learn losses as small terms, combined by the config's weights.

A loss is a *forward* ``(params, batch) -> outputs`` (one model pass over
each committed trajectory; at step level it packs the trajectory with every
move's candidate steps, :func:`train.packing.packed_forward`) and a dict of
*terms* ``(outputs, batch) -> LossTerm`` (:class:`train.losses.LossTerm`).
The train step weighs each term's global mean by ``search.<name>_weight``
(:func:`weights`) and logs every term as ``loss/<name>``.

``batch`` holds a rollout's fields (:class:`tsearch.RolloutOutput`, those in
:data:`KEEP` and the extras the terms ask for) and ``prompt_length``.
``outputs`` holds ``logits [B, L, V]`` and ``value [B, L]`` on the committed
positions and, at step level, ``step_logprobs`` and ``step_values`` ``[B, M,
K]`` (the candidates' summed log-probabilities and the value head after
each), plus what an extension's forward adds.

The terms (see each function): ``policy`` (the search's action weights),
``value`` (outcome, tree value or a mix), ``sft`` (language model on solved
answers), ``value_policy`` (step level, the value head's one-step lookahead
as a policy target). An experiment adds its own terms through an
:class:`Extension` (e.g. :mod:`train.retract_terms`), in its own module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from train import losses as losses_lib
from train import packing
from train import targets as targets_lib

Array = chex.Array
Outputs = dict  # name -> array, see the module docstring
Batch = Mapping[str, Array]
TermFn = Callable[[Outputs, Batch], losses_lib.LossTerm]
ForwardFn = Callable[[Any, Batch], Outputs]

# The rollout fields every loss reads (and a replay buffer stores).
KEEP = ("seq", "length", "prompt_length", "outcome", "weights",
        "children_actions", "children_mask", "root_value", "offset",
        "active")


@dataclasses.dataclass(frozen=True)
class Extension:
  """An experiment's terms, opted into by its config (see
  :mod:`train.retract_terms`).

  Attributes:
    terms: ``{name: TermFn}``, after the generic terms.
    weights: ``{name: weight}`` of those terms.
    keep: extra rollout fields its terms read (``record_q`` fields: set
      ``record_q``).
    record_q: the rollout records ``children_q`` / ``children_visits``.
    end_token: the forward also returns ``end_logprobs [B, M, K]``, the
      log-probability of this token after each candidate step.
    forward: ``(params, outputs, batch) -> outputs``, run after the main
      forward (e.g. one more model pass over other sequences), or None.
    prepare: ``(reference, rows) -> rows``, run once per search on the
      rollout's rows (outside the gradient; a replay buffer stores what it
      adds), with ``reference`` a frozen copy of the parameters the search
      steps started from (:mod:`train.preference_terms`); or None.
    stats: ``rows -> {name: scalar}`` logged with the search's statistics,
      or None.
  """
  terms: Mapping[str, TermFn]
  weights: Mapping[str, float]
  keep: tuple[str, ...] = ()
  record_q: bool = False
  end_token: int | None = None
  forward: Callable | None = None
  prepare: Callable | None = None
  stats: Callable | None = None


# ------------------------------------------------------------------ forward


def make_forward(apply_fn, *, level: str, pad_id: int, max_seq_len: int = 0,
                 end_token: int | None = None) -> ForwardFn:
  """``forward(params, batch) -> outputs`` (see the module docstring).

  A batch with ``children_choice`` (``experimental.choice_tokens_only``): the
  steps' log-probabilities count their choice tokens only, as the search's
  prior does.
  """
  def forward(params, batch):
    seq, length = batch["seq"], batch["length"]
    b, l = seq.shape
    if level == "token":
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
      out = apply_fn(params, seq, positions,
                     jnp.arange(l)[None, :] < length[:, None])
      return {"logits": out.logits, "value": out.value}
    out, lps, step_values, *end_lp = packing.packed_forward(
        apply_fn, params, seq, length, node_start(batch),
        batch["children_actions"], pad_id=pad_id, max_seq_len=max_seq_len,
        choice=batch.get("children_choice"), end_token=end_token)
    outputs = {"logits": out.logits, "value": out.value,
               "step_logprobs": lps, "step_values": step_values}
    if end_token is not None:
      outputs["end_logprobs"] = end_lp[0]
    return outputs
  return forward


def node_start(batch: Batch) -> Array:
  """``[B, M]``: position of each move's first token (after its prefix)."""
  return batch["prompt_length"][:, None] + batch["offset"]


def searched(batch: Batch) -> Array:
  """``[B, M]``: moves with a policy target (active, some valid slot)."""
  return batch["active"] & jnp.any(batch["children_mask"], -1)


def visited(batch: Batch) -> Array:
  """``[B, M, K]``: root candidates of searched moves that the search
  visited (they have a tree Q: ``record_q`` rows)."""
  return (batch["children_mask"] & (batch["children_visits"] > 0)
          & searched(batch)[..., None])


def _at_node(batch: Batch) -> Array:
  """``[B, M]``: the last token of each move's prefix."""
  return jnp.minimum(node_start(batch) - 1, batch["seq"].shape[1] - 1)


# -------------------------------------------------------------------- terms


def policy_term(*, level: str, step_policy_loss: str = "nll",
                policy_on_solved: bool = False) -> TermFn:
  """The search's action weights (visit distribution for PUCT, improved
  policy for Gumbel) as the policy target at every searched move.

  Token level: cross-entropy of the model's distribution over the K tokens
  (renormalised). Step level, ``step_policy_loss``: ``"nll"``, the weighted
  log-likelihood of the K sampled steps (raises every step with weight >
  0, :func:`train.losses.weighted_step_nll`); ``"candidates"``, the
  cross-entropy against the model's distribution renormalised over the K
  candidates (a better step gains at the expense of the worse ones).

  ``policy_on_solved``: only the moves of trajectories the verifier
  accepted (expert iteration: an unsolved rollout's visits, spread by a
  search that found nothing, are not a target).
  """
  if step_policy_loss not in ("nll", "candidates"):
    raise ValueError(f"step_policy_loss must be 'nll' or 'candidates', got "
                     f"{step_policy_loss!r}.")

  def term(outputs, batch):
    legal, active = batch["children_mask"], searched(batch)
    if policy_on_solved:
      active = active & (batch["outcome"] > 0.5)[:, None]
    if level == "token":
      vocab_logits = jnp.take_along_axis(outputs["logits"],
                                         _at_node(batch)[..., None], axis=1)
      child_logits = losses_lib.children_logits(
          vocab_logits, jnp.maximum(batch["children_actions"][..., 0], 0))
      return losses_lib.policy_loss(child_logits, batch["weights"], legal,
                                    active)
    lps = outputs["step_logprobs"]
    if step_policy_loss == "candidates":
      return losses_lib.policy_loss(lps, batch["weights"], legal, active)
    return losses_lib.weighted_step_nll(lps, batch["weights"], legal, active)
  return term


def value_term(*, value_target: str, outcome_weight: float,
               two_player: bool) -> TermFn:
  """The value head at each committed node against the outcome (for the
  player to move there: its sign flips every move with two players), the
  tree's value there, or a mix (:func:`train.targets.value_targets`)."""
  def term(outputs, batch):
    values = jnp.take_along_axis(outputs["value"], _at_node(batch), axis=1)
    outcome = targets_lib.value_outcomes(batch["outcome"], batch["active"],
                                         two_player=two_player)
    target = targets_lib.value_targets(outcome, batch["root_value"],
                                       mode=value_target,
                                       outcome_weight=outcome_weight)
    return losses_lib.value_loss(values, target, batch["active"])
  return term


def sft_term() -> TermFn:
  """The language-model loss on the answer tokens of solved trajectories."""
  def term(outputs, batch):
    seq, length = batch["seq"], batch["length"]
    l = seq.shape[1]
    answer = ((jnp.arange(l)[None] >= batch["prompt_length"][:, None])
              & (jnp.arange(l)[None] < length[:, None]))
    mask = targets_lib.sft_mask(answer.astype(jnp.float32),
                                batch["outcome"] > 0.5)
    return losses_lib.lm_loss(outputs["logits"][:, :-1], seq[:, 1:],
                              mask[:, 1:])
  return term


def value_policy_term(*, scale: float, two_player: bool,
                      step_policy_loss: str = "nll") -> TermFn:
  """Step level, on every searched move: the model's distribution over the
  K candidates against the one-step lookahead ``softmax(log p(step) +
  scale * v(step))``, ``v`` the value head after each step (for the player
  who wrote it; stop-gradient): the policy learns the value head's ranking
  of the steps it samples (as Gumbel MuZero's improved policy does with
  completed Q values), also from rollouts that found no solution. A loss of
  the form ``step_policy_loss`` names."""
  step_loss = (losses_lib.policy_loss if step_policy_loss == "candidates"
               else losses_lib.weighted_step_nll)

  def term(outputs, batch):
    lps, step_values = outputs["step_logprobs"], outputs["step_values"]
    legal = batch["children_mask"]
    # Two players: the value after a step is the opponent's.
    mover = -step_values if two_player else step_values
    lookahead = jax.lax.stop_gradient(losses_lib.masked_log_softmax(
        lps + scale * mover, legal))
    return step_loss(lps, jnp.exp(lookahead), legal, searched(batch))
  return term


# -------------------------------------------------------------- composition


def terms(search, switches: Mapping[str, Any], *, two_player: bool
          ) -> dict[str, TermFn]:
  """The generic terms a run's ``search`` section and experiment switches
  (``train.experimental.values``) ask for, in the order the total sums
  them."""
  step_loss = switches["step_policy_loss"]
  out = {
      "policy": policy_term(
          level=search.level, step_policy_loss=step_loss,
          policy_on_solved=bool(search.get("policy_on_solved", False))),
      "value": value_term(value_target=search.value_target,
                          outcome_weight=search.value_mix,
                          two_player=two_player),
      "sft": sft_term(),
  }
  if search.level == "step" and switches["value_policy_weight"] > 0:
    out["value_policy"] = value_policy_term(
        scale=float(switches["value_policy_scale"]), two_player=two_player,
        step_policy_loss=step_loss)
  return out


def weights(search, switches: Mapping[str, Any]) -> dict[str, float]:
  """``{term: weight}`` of the generic terms (``search.<term>_weight``,
  ``experimental.value_policy_weight``)."""
  return {"policy": search.policy_weight, "value": search.value_weight,
          "sft": search.sft_weight,
          "value_policy": float(switches["value_policy_weight"])}


def make_loss_fn(forward: ForwardFn, term_fns: Mapping[str, TermFn],
                 extensions: tuple[Extension, ...] = ()):
  """``loss_fn(params, batch, key) -> {name: LossTerm}`` for
  :mod:`train.step`: the forward, each extension's forward, then every
  term (``term_fns``, then the extensions')."""
  all_terms = dict(term_fns)
  for ext in extensions:
    all_terms.update(ext.terms)

  def loss_fn(params, batch, key):
    del key  # deterministic
    outputs = forward(params, batch)
    for ext in extensions:
      if ext.forward is not None:
        outputs = ext.forward(params, outputs, batch)
    return {name: term(outputs, batch) for name, term in all_terms.items()}
  return loss_fn
