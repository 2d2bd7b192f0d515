"""Loss and target functions on hand-checked values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import losses, targets


def test_lm_loss_masks_and_sums():
  # probs of position 0: [1/4, 2/4, 1/4]; target 1 -> nll = log 2.
  logits = jnp.log(jnp.array([[[1., 2., 1.], [1., 1., 1.]]]))
  term = losses.lm_loss(logits, jnp.array([[1, 0]]), jnp.array([[1, 0]]))
  np.testing.assert_allclose(term.total, math.log(2), rtol=1e-6)
  assert term.count == 1
  term = losses.lm_loss(logits, jnp.array([[0, 2]]), jnp.array([[1, 1]]))
  np.testing.assert_allclose(term.total, math.log(4) + math.log(3), rtol=1e-6)
  np.testing.assert_allclose(losses.mean(term),
                             (math.log(4) + math.log(3)) / 2, rtol=1e-6)


def test_value_loss():
  term = losses.value_loss(jnp.array([0.5, 1.0]), jnp.array([1.0, 0.0]),
                           jnp.array([1, 0]))
  np.testing.assert_allclose(term.total, 0.25)
  assert term.count == 1
  # No gradient flows into the target.
  g = jax.grad(lambda t: losses.value_loss(jnp.zeros(2), t, jnp.ones(2)).total)
  np.testing.assert_array_equal(g(jnp.ones(2)), 0.0)


def test_policy_loss_over_legal_children():
  logits = jnp.zeros((1, 3))
  target = jnp.array([[0.75, 0.25, 0.0]])
  legal = jnp.array([[True, True, False]])
  term = losses.policy_loss(logits, target, legal, jnp.ones(1))
  # log-softmax over the two legal slots is log(1/2) for each.
  np.testing.assert_allclose(term.total, math.log(2), rtol=1e-6)
  # All legal: uniform over 3 -> log 3.
  term = losses.policy_loss(logits, target, jnp.ones((1, 3), bool), jnp.ones(1))
  np.testing.assert_allclose(term.total, math.log(3), rtol=1e-6)
  # Gradient pushes logits toward the target: d/dlogit = softmax - target.
  g = jax.grad(lambda l: losses.policy_loss(l, target, legal,
                                            jnp.ones(1)).total)(logits)
  np.testing.assert_allclose(g, [[0.5 - 0.75, 0.5 - 0.25, 0.0]], atol=1e-6)
  # Masked node contributes nothing.
  term = losses.policy_loss(logits, target, legal, jnp.zeros(1))
  assert term.total == 0 and term.count == 0


def test_children_logits_and_step_nll():
  vocab_logits = jnp.array([[10., 11., 12., 13.]])
  np.testing.assert_array_equal(
      losses.children_logits(vocab_logits, jnp.array([[3, 1]])), [[13., 11.]])
  term = losses.weighted_step_nll(
      jnp.array([[-1., -2., -3.]]), jnp.array([[0.5, 0.5, 0.0]]),
      jnp.array([[True, True, False]]), jnp.ones(1))
  np.testing.assert_allclose(term.total, 1.5)


def test_value_targets_modes():
  # Two players: the outcome is for the player who moved last; each node
  # sees it from its player to move. Row 0 made 3 moves, row 1 two.
  active = jnp.array([[1, 1, 1], [1, 1, 0]], bool)
  outcome = targets.value_outcomes(jnp.array([1.0, 0.5]), active,
                                   two_player=True)
  np.testing.assert_allclose(outcome, [[1, -1, 1], [-0.5, 0.5, -0.5]])
  np.testing.assert_allclose(
      targets.value_outcomes(jnp.array([1.0, 0.5]), active, two_player=False),
      [[1, 1, 1], [0.5, 0.5, 0.5]])
  q = jnp.array([[0.5, 0.2, 0.0], [0.4, -0.2, 0.0]])
  np.testing.assert_allclose(targets.value_targets(outcome, q, mode="outcome"),
                             outcome)
  np.testing.assert_allclose(targets.value_targets(outcome, q, mode="q"), q)
  np.testing.assert_allclose(
      targets.value_targets(outcome, q, mode="mix", outcome_weight=0.25),
      [[0.625, -0.1, 0.25], [0.175, -0.025, -0.125]], rtol=1e-6)
  with pytest.raises(ValueError, match="value target mode"):
    targets.value_targets(outcome, q, mode="median")
  np.testing.assert_array_equal(
      targets.sft_mask(jnp.ones((2, 2)), jnp.array([True, False])),
      [[1, 1], [0, 0]])
