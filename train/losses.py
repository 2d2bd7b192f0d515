"""Loss functions: small, pure, masked.

Each returns a :class:`LossTerm` of a masked *sum* and the number of elements
it summed, rather than a mean: the data-parallel step divides by the count
summed over every device, so a step on 8 devices gives exactly the gradient
of the same global batch on 1 device even when devices hold different
numbers of answer tokens.
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

Array = chex.Array

# A logit that no legal slot reaches; finite so 0 * logit stays 0 (no NaNs).
_MASKED_LOGIT = -1e9


class LossTerm(NamedTuple):
  total: Array  # [] float32, masked sum
  count: Array  # [] float32, number of elements in the sum


def mean(term: LossTerm) -> Array:
  """The mean of one term on one device (0 where it summed nothing)."""
  return term.total / jnp.maximum(term.count, 1.0)


def lm_loss(logits: Array, targets: Array, mask: Array) -> LossTerm:
  """Next-token cross-entropy summed over masked positions.

  Args:
    logits: ``[B, T, V]`` the model's logits; position ``t`` predicts
      ``targets[:, t]``.
    targets: ``[B, T]`` int token ids.
    mask: ``[B, T]`` 1 where the target is an answer token to learn.

  Returns:
    LossTerm of ``-sum log p(target)`` over the mask and the mask's sum.
  """
  chex.assert_rank(logits, 3)
  chex.assert_equal_shape([targets, mask])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]
  mask = mask.astype(jnp.float32)
  return LossTerm(jnp.sum(nll * mask), jnp.sum(mask))


def value_loss(values: Array, targets: Array, mask: Array) -> LossTerm:
  """Squared error of the value head, summed over masked positions.

  Args:
    values: ``[...]`` value-head outputs.
    targets: ``[...]`` regression targets (same shape).
    mask: ``[...]`` 1 where the target counts.
  """
  chex.assert_equal_shape([values, targets, mask])
  mask = mask.astype(jnp.float32)
  err = (values.astype(jnp.float32) - jax.lax.stop_gradient(targets)) ** 2
  return LossTerm(jnp.sum(err * mask), jnp.sum(mask))


def masked_log_softmax(logits: Array, legal: Array) -> Array:
  """``log_softmax`` over legal slots; illegal slots get a very low value."""
  logits = jnp.where(legal, logits.astype(jnp.float32), _MASKED_LOGIT)
  return jax.nn.log_softmax(logits, axis=-1)


def policy_loss(logits: Array, target_probs: Array, legal: Array,
                mask: Array) -> LossTerm:
  """Cross-entropy of the policy over K child slots against a search target.

  ``-sum_k pi_k log softmax_legal(logits)_k`` per node, where ``pi`` is the
  visit distribution (PUCT) or the improved policy (Gumbel).

  Args:
    logits: ``[..., K]`` the model's logits of the K children.
    target_probs: ``[..., K]`` target distribution, zero on illegal slots,
      summing to 1 where ``mask``.
    legal: ``[..., K]`` bool, legal slots.
    mask: ``[...]`` 1 for nodes whose target counts.
  """
  chex.assert_equal_shape([logits, target_probs, legal])
  logp = masked_log_softmax(logits, legal)
  target = jax.lax.stop_gradient(
      jnp.where(legal, target_probs.astype(jnp.float32), 0.0))
  ce = -jnp.sum(target * logp, axis=-1)
  mask = mask.astype(jnp.float32)
  return LossTerm(jnp.sum(ce * mask), jnp.sum(mask))


def children_logits(vocab_logits: Array, children_tokens: Array) -> Array:
  """The model's logits of each child's token (token-level search).

  Args:
    vocab_logits: ``[..., V]`` logits over the vocabulary at a node.
    children_tokens: ``[..., K]`` int token of each child slot.

  Returns:
    ``[..., K]`` logits; renormalise with :func:`masked_log_softmax` to get
    the model's distribution over the K children.
  """
  return jnp.take_along_axis(vocab_logits, children_tokens.astype(jnp.int32),
                             axis=-1)


def weighted_step_nll(step_logprobs: Array, weights: Array, legal: Array,
                      mask: Array) -> LossTerm:
  """Weighted negative log-likelihood of K sampled steps (step-level search).

  Args:
    step_logprobs: ``[..., K]`` sum of the model's token log-probabilities of
      each sampled step.
    weights: ``[..., K]`` target weights (visit distribution or improved
      policy), zero on illegal slots.
    legal: ``[..., K]`` bool, slots that hold a real step.
    mask: ``[...]`` 1 for nodes whose target counts.
  """
  chex.assert_equal_shape([step_logprobs, weights, legal])
  w = jax.lax.stop_gradient(jnp.where(legal, weights, 0.0).astype(jnp.float32))
  nll = -jnp.sum(w * jnp.where(legal, step_logprobs, 0.0), axis=-1)
  mask = mask.astype(jnp.float32)
  return LossTerm(jnp.sum(nll * mask), jnp.sum(mask))


def binary_loss(log_p: Array, targets: Array, mask: Array) -> LossTerm:
  """Binary cross-entropy of probabilities given as logs ``log_p`` (<= 0)
  against ``targets`` in [0, 1], summed over ``mask``."""
  log_p = jnp.minimum(log_p, -1e-6)  # log(1 - p) finite
  bce = -(targets * log_p + (1.0 - targets) * jnp.log(-jnp.expm1(log_p)))
  return LossTerm(jnp.sum(bce * mask), jnp.sum(mask))
