"""Teaching take-backs (``experimental.retract_weight > 0``): an opt-in
:class:`train.search_losses.Extension` for tasks whose rules let an answer
take back its first step (``task.retract_token``, then the task's step
delimiter).

Two terms, at step level:

* ``retract``: after each candidate of the first move, the binary
  cross-entropy of the probability of ``retract_token`` (taking the step
  back) against ``1 - q``, ``q`` the tree's Q value of the candidate
  (searched slots; the value head after the step for the others; clipped to
  [0, 1]): the policy learns to take back first steps the search found dead.
  Weight ``experimental.retract_weight``.
* ``retract_sft``: on solved trajectories whose first move had a candidate
  the search found dead (``1 - q > 0.5``, the deadest one other than the
  move made), the language-model loss on that candidate, ``retract_token``,
  the delimiter, then the answer, from ``retract_token`` on
  (:func:`retraction_sequence`): what to write after taking a step back.
  Weight ``experimental.retract_weight * search.sft_weight``.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsearch._src.rollout import answer_sequence

from train import losses as losses_lib
from train import search_losses

Array = chex.Array


def extension(apply_fn, task, *, weight: float, sft_weight: float
              ) -> search_losses.Extension:
  """The take-back terms of a run (``experimental.retract_weight`` is
  ``weight`` > 0; the config checks that the task has a ``retract_token``),
  ``retract_sft`` at ``weight * sft_weight``."""
  token, delimiter, pad_id = (int(task.retract_token),
                              int(task.step_delimiter), task.pad_id)

  def forward(params, outputs, batch):
    """Adds the forward over each row's retraction sequence."""
    seq, length = batch["seq"], batch["length"]
    b = seq.shape[0]
    q, first = _first_move_q(outputs, batch)
    # The first move's deadest candidate other than the move made.
    dead = jnp.where(first[:, 0], 1.0 - q[:, 0], -1.0)  # [B, K]
    kept = jnp.argmax(batch["weights"][:, 0], -1)
    dead = jnp.where(jnp.arange(dead.shape[1])[None] == kept[:, None],
                     -1.0, dead)
    slot = jnp.argmax(dead, -1)
    use = (jnp.max(dead, -1) > 0.5) & (batch["outcome"] > 0.5)
    step = batch["children_actions"][jnp.arange(b), 0, slot]  # [B, S]
    seq2, len2 = retraction_sequence(seq, length, batch["prompt_length"],
                                     step, pad_id=pad_id, retract_token=token,
                                     delimiter=delimiter)
    l2 = seq2.shape[1]
    out2 = apply_fn(params, seq2, jnp.broadcast_to(
        jnp.arange(l2, dtype=jnp.int32), seq2.shape),
                    jnp.arange(l2)[None] < len2[:, None])
    from_token = batch["prompt_length"] + jnp.sum(step >= 0, -1)
    mask2 = ((jnp.arange(l2)[None] >= from_token[:, None])
             & (jnp.arange(l2)[None] < len2[:, None]) & use[:, None])
    return {**outputs, "retraction_logits": out2.logits,
            "retraction_seq": seq2, "retraction_mask": mask2}

  return search_losses.Extension(
      terms={"retract": retract_term, "retract_sft": retract_sft_term},
      weights={"retract": weight,
               "retract_sft": weight * sft_weight},
      keep=("children_q", "children_visits"), record_q=True,
      end_token=token, forward=forward)


def _first_move_q(outputs, batch):
  """``q [B, M, K]`` (stop-gradient) and the first move's valid slots
  ``first [B, M, K]``."""
  legal = batch["children_mask"]
  q = jax.lax.stop_gradient(jnp.clip(jnp.where(
      batch["children_visits"] > 0, batch["children_q"],
      outputs["step_values"]), 0.0, 1.0))
  active = search_losses.searched(batch)
  first = legal & active[..., None] & (batch["offset"] == 0)[..., None]
  return q, first


def retract_term(outputs, batch) -> losses_lib.LossTerm:
  """``retract`` (see the module docstring)."""
  q, first = _first_move_q(outputs, batch)
  return losses_lib.binary_loss(outputs["end_logprobs"], 1.0 - q, first)


def retract_sft_term(outputs, batch) -> losses_lib.LossTerm:
  """``retract_sft`` (see the module docstring)."""
  del batch
  seq2, mask2 = outputs["retraction_seq"], outputs["retraction_mask"]
  return losses_lib.lm_loss(outputs["retraction_logits"][:, :-1], seq2[:, 1:],
                            mask2[:, 1:].astype(jnp.float32))


def retraction_sequence(seq, length, prompt_length, step, *, pad_id: int,
                        retract_token: int, delimiter: int):
  """``[B, L + S + 2]``: each row's prompt, ``step`` (``[B, S]``, ``-1``
  padded), ``retract_token`` and ``delimiter`` (taking it back:
  ``task.retract_token``, ``task.step_delimiter``), then the row's answer;
  and the row lengths ``[B]``."""
  _, l = seq.shape
  s = step.shape[1]
  slen = jnp.sum(step >= 0, -1).astype(jnp.int32)
  j = jnp.arange(s + 2)[None]
  pre = jnp.pad(jnp.where(step >= 0, step, pad_id), ((0, 0), (0, 2)))
  pre = jnp.where(j == slen[:, None], retract_token,
                  jnp.where(j == slen[:, None] + 1, delimiter, pre))
  answer = jnp.take_along_axis(seq, jnp.clip(
      prompt_length[:, None] + jnp.arange(l)[None], 0, l - 1), 1)
  answer_length = length - prompt_length
  tail = answer_sequence(pre, slen + 2, answer, answer_length, pad_id=pad_id)
  out = answer_sequence(seq, prompt_length, tail, slen + 2 + answer_length,
                        pad_id=pad_id)
  return out[:, :l + s + 2], length + slen + 2
