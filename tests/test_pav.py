"""Process advantages from the tree (train.advantage_terms): A = Q - V of
visited candidates, the dense value targets and the advantage policy
gradient, by hand; and the switches' checks."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import advantage_terms as at
from train import config as config_lib
from train import experimental

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch():
  # Two moves, K=3; move 1 is inactive. Slot 2 of move 0 is unvisited.
  return {
      "children_q": jnp.array([[[0.9, 0.2, 0.0], [0.5, 0.5, 0.5]]]),
      "children_visits": jnp.array([[[4, 2, 0], [1, 1, 1]]]),
      "children_mask": jnp.ones((1, 2, 3), bool),
      "root_value": jnp.array([[0.6, 0.5]]),
      "active": jnp.array([[True, False]]),
  }


def test_advantages_are_q_minus_root_value_of_visited_candidates():
  adv, ok = at.advantages(_batch())
  np.testing.assert_array_equal(np.asarray(ok),
                                [[[True, True, False], [False] * 3]])
  np.testing.assert_allclose(np.asarray(adv)[0, 0], [0.3, -0.4, 0.0],
                             atol=1e-6)


@pytest.mark.parametrize("two_player", [False, True])
def test_pav_value_regresses_each_visited_step_to_its_q(two_player):
  step_values = jnp.array([[[0.5, 0.5, 0.9], [0.0, 0.0, 0.0]]])
  t = at.pav_value_term(two_player=two_player)(
      {"step_values": step_values}, _batch())
  sign = -1.0 if two_player else 1.0
  expected = (0.5 - sign * 0.9) ** 2 + (0.5 - sign * 0.2) ** 2
  assert float(t.count) == 2
  np.testing.assert_allclose(float(t.total), expected, rtol=1e-6)


def test_pav_policy_raises_steps_above_the_node_value():
  lps = jnp.array([[[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]]])

  def loss(lps, clip):
    t = at.pav_policy_term(clip=clip)({"step_logprobs": lps}, _batch())
    return t.total / t.count
  np.testing.assert_allclose(float(loss(lps, 1.0)),
                             (-0.3 * -1.0 + 0.4 * -2.0) / 2, rtol=1e-6)
  g = np.asarray(jax.grad(loss)(lps, 1.0))
  np.testing.assert_allclose(g[0, 0], [-0.15, 0.2, 0.0], atol=1e-6)
  assert not g[0, 1].any()  # an inactive move has no target
  g = np.asarray(jax.grad(loss)(lps, 0.25))  # clipped advantages
  np.testing.assert_allclose(g[0, 0], [-0.125, 0.125, 0.0], atol=1e-6)


def test_extension_has_the_weighted_terms_and_records_q():
  ext = at.extension(value_weight=0.5, policy_weight=0.0, clip=1.0,
                     two_player=False)
  assert set(ext.terms) == {"pav_value"} and ext.weights == {"pav_value": 0.5}
  assert ext.record_q and "children_q" in ext.keep
  stats = ext.stats(_batch())
  np.testing.assert_allclose(float(stats["search/mean_abs_advantage"]), 0.35,
                             rtol=1e-6)


def test_bad_pav_switches_are_clear_errors():
  c = config_lib.load_config_file(os.path.join(REPO, "configs",
                                               "countdown.py"))
  c.experimental = experimental.config(pav_value_weight=1.0)
  config_lib.validate_config(c)
  c.search.level = "token"
  with pytest.raises(ValueError, match="experimental.pav_value_weight"):
    config_lib.validate_config(c)
  c.search.level = "step"
  c.experimental.pav_clip = 0.0
  with pytest.raises(ValueError, match="experimental.pav_clip"):
    config_lib.validate_config(c)
