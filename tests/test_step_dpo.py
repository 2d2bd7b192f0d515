"""Step-DPO (train.preference_terms): the pairs a searched tree gives, the
DPO and IPO losses on them, and a run whose reference policy is the warm
start's, kept in its checkpoints across a resume."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpoint as checkpoint_lib
from train import config as config_lib
from train import experimental
from train import loop
from train import metrics as metrics_lib
from train import preference_terms as pt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch():
  # One move, K=4: slot 3 repeats slot 0's action, slot 2 is unvisited.
  acts = np.array([[1, 2], [3, 4], [5, 6], [1, 2]], np.int32)
  return {
      "children_q": jnp.array([[[0.9, 0.5, 0.0, 0.3]]]),
      "children_visits": jnp.array([[[3, 2, 0, 1]]]),
      "children_mask": jnp.ones((1, 1, 4), bool),
      "children_actions": jnp.asarray(acts)[None, None],
      "active": jnp.ones((1, 1), bool),
      "ref_step_logprobs": jnp.array([[[-1.0, -2.0, -3.0, -1.0]]]),
  }


def test_pairs_are_visited_distinct_siblings_ranked_by_q():
  p = np.asarray(pt.pairs(_batch(), 0.1))[0, 0]
  expected = np.zeros((4, 4), bool)
  expected[0, 1] = True   # 0.9 > 0.5 + 0.1
  expected[1, 3] = True   # 0.5 > 0.3 + 0.1; (0, 3) is the same action
  np.testing.assert_array_equal(p, expected)
  # A larger margin drops the (1, 3) pair (0.2 apart); an inactive move
  # has none.
  assert np.asarray(pt.pairs(_batch(), 0.3)).sum() == 1
  b = dict(_batch(), active=jnp.zeros((1, 1), bool))
  assert np.asarray(pt.pairs(b, 0.1)).sum() == 0


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_dpo_and_ipo_losses_by_hand(loss):
  beta = 0.5
  lp = jnp.array([[[-0.5, -2.5, -4.0, -1.2]]])
  term = pt.dpo_term(beta=beta, margin=0.1, loss=loss)(
      {"step_logprobs": lp}, _batch())
  h = np.array([-0.5 + 1.0, -2.5 + 2.0, -4.0 + 3.0, -1.2 + 1.0])
  d = np.array([h[0] - h[1], h[1] - h[3]])
  if loss == "dpo":
    per = np.log1p(np.exp(-beta * d))
  else:
    per = (d - 1 / (2 * beta)) ** 2
  assert float(term.count) == 2
  np.testing.assert_allclose(float(term.total), per.sum(), rtol=1e-6)


def test_dpo_gradient_raises_the_preferred_step():
  def loss(lp):
    t = pt.dpo_term(beta=1.0, margin=0.1)({"step_logprobs": lp}, _batch())
    return t.total / t.count
  g = np.asarray(jax.grad(loss)(jnp.array([[[-1.0, -2.0, -3.0, -1.0]]])))
  # At the reference every pair's gradient is beta / 2 / pairs: slot 0
  # (preferred) goes up, slot 3 (beaten) down, slot 1 (beaten by 0, beats
  # 3) both ways, slot 2 (unvisited) is in no pair.
  np.testing.assert_allclose(g[0, 0], [-0.25, 0.0, 0.0, 0.25], atol=1e-7)


def test_bad_step_dpo_switches_are_clear_errors():
  with pytest.raises(ValueError, match="step_dpo_loss"):
    pt.dpo_term(beta=0.1, margin=0.0, loss="kto")
  c = _config()
  c.search.level = "token"
  with pytest.raises(ValueError, match="experimental.step_dpo_weight"):
    config_lib.validate_config(c)
  c = _config()
  c.experimental.step_dpo_beta = 0.0
  with pytest.raises(ValueError, match="experimental.step_dpo_beta"):
    config_lib.validate_config(c)


def _config():
  """configs/countdown.py, shrunk: 2 warm-start steps, then 2 search steps
  trained on step-DPO and the process-advantage terms."""
  c = config_lib.load_config_file(os.path.join(REPO, "configs",
                                               "countdown.py"))
  c.task.options = dict(num_numbers=3, max_target=30, strict=True)
  c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
                 head_dim=16, mlp_dim=64)
  c.batch_size = 8
  c.warm_start.steps = 2
  c.search.update(steps=2, num_simulations=6, num_children=4, capacity=16,
                  replay_size=0, policy_weight=0.0, sft_weight=0.0,
                  value_weight=0.0)
  c.experimental = experimental.config(
      search_learning_rate=1e-2, step_dpo_weight=1.0, step_dpo_margin=0.0,
      step_dpo_beta=0.5, pav_value_weight=0.5, pav_policy_weight=0.25)
  c.log_every_steps = 1
  c.checkpoint.update(every_steps=1, warm_start_every_steps=1, keep=10)
  c.progress_bar = False
  return c


@pytest.mark.slow
def test_step_dpo_run_keeps_the_warm_start_as_reference(tmp_path):
  workdir = str(tmp_path / "run")
  c = _config()
  c.search.steps = 0
  loop.train(c, workdir)  # the warm start alone (no reference saved)
  loop.train(_config(), workdir)  # continues into 2 search steps
  m = metrics_lib.read_metrics(workdir)
  assert [r["step"] for r in m] == [1, 2, 3, 4]
  first, second = m[2], m[3]
  assert first["search/dpo_pairs"] > 0 and second["search/dpo_pairs"] > 0
  # At the first search step the policy is the reference: every pair's
  # log-ratio difference is 0 and the DPO loss is log 2.
  np.testing.assert_allclose(first["loss/step_dpo"], np.log(2.0), atol=1e-5)
  assert abs(second["loss/step_dpo"] - np.log(2.0)) > 1e-4
  # The process-advantage terms (train.advantage_terms) ride along.
  assert first["search/mean_abs_advantage"] > 0
  np.testing.assert_allclose(
      first["loss"], first["loss/step_dpo"] + 0.5 * first["loss/pav_value"]
      + 0.25 * first["loss/pav_policy"], rtol=1e-5)
  # The reference saved with the search steps' checkpoints is the warm
  # start's last parameters, not the policy's.
  ckpt = loop.checkpointer(c, workdir)
  try:
    assert not ckpt.has_item(2, "reference")
    assert ckpt.has_item(4, "reference")
    state = loop.build(c, workdir, restoring=True)[2]
    tree = loop.state_to_tree(state, None, state.params)
    warm = ckpt.restore(2, loop.state_to_tree(state))[0]["params"]
    for step in (3, 4):
      saved = ckpt.restore(step, tree)[0]
      jax.tree.map(np.testing.assert_array_equal, saved["reference"], warm)
    assert not all(jax.tree.leaves(jax.tree.map(
        np.array_equal, saved["params"], warm)))
    # Evaluation reads the parameters and drops the reference.
    _, params = loop.read_params(ckpt, workdir, 4, loop.state_to_tree(state))
    jax.tree.map(np.testing.assert_array_equal, params["params"],
                 saved["params"])
  finally:
    ckpt.close()
  # A resumed run reads its checkpoint with the reference (no steps left).
  loop.train(_config(), workdir)


@pytest.mark.slow
def test_step_dpo_turned_on_mid_search_reads_the_warm_start(tmp_path):
  # Search steps first run without step-DPO (their checkpoint holds no
  # reference); resumed with it on, the reference is the warm start's last
  # checkpoint, or a clear error where that checkpoint is gone.
  workdir = str(tmp_path / "run")
  c = _config()
  c.search.update(steps=1, policy_weight=1.0)
  c.experimental.update(step_dpo_weight=0.0, pav_value_weight=0.0,
                        pav_policy_weight=0.0)
  loop.train(c, workdir)
  ckpt = loop.checkpointer(c, workdir)
  try:
    assert ckpt.latest_step() == 3 and not ckpt.has_item(3, "reference")
    state = loop.build(c, workdir, restoring=True)[2]
    warm = ckpt.restore(2, loop.state_to_tree(state))[0]["params"]
    third = ckpt.restore(3, loop.state_to_tree(state))[0]["params"]
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, third, warm)))
  finally:
    ckpt.close()
  gone = str(tmp_path / "gone")
  shutil.copytree(workdir, gone)
  loop.train(_config(), workdir)  # step 4, with step-DPO
  ckpt = loop.checkpointer(c, workdir)
  try:
    tree = loop.state_to_tree(state, None, state.params)
    saved = ckpt.restore(4, tree)[0]
    jax.tree.map(np.testing.assert_array_equal, saved["reference"], warm)
  finally:
    ckpt.close()
  shutil.rmtree(os.path.join(gone, "checkpoints", "2"))
  with pytest.raises(ValueError, match=r"step 2\) is gone"):
    loop.train(_config(), gone)


@pytest.mark.slow
def test_step_dpo_starts_from_a_warm_start_that_saved_another_buffer(tmp_path):
  # The warm-start checkpoint of a run with search steps holds an (empty)
  # replay buffer without step-DPO's fields. A run with step-DPO on starts
  # its search steps there with a fresh buffer; a checkpoint past the warm
  # start, whose buffer holds rows, is a clear error instead.
  workdir = str(tmp_path / "run")
  c = _config()
  c.search.update(replay_size=16, updates_per_search=1, policy_weight=1.0)
  c.experimental.update(step_dpo_weight=0.0, pav_value_weight=0.0,
                        pav_policy_weight=0.0)
  c.debug.stop_after_steps = 3  # warm start 2, one search step
  loop.train(c, workdir)
  ckpt = loop.checkpointer(c, workdir)
  assert ckpt.has_replay(2) and ckpt.latest_step() == 3
  ckpt.close()
  with_dpo = _config()
  with_dpo.search.update(replay_size=16, updates_per_search=1)
  with pytest.raises(checkpoint_lib.CheckpointShapeError,
                     match=r"(?s)other search options.*ref_step_logprobs"):
    loop.train(with_dpo, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
  loop.train(with_dpo, workdir)  # from step 2, with step-DPO
  m = metrics_lib.read_metrics(workdir)
  assert [r["step"] for r in m][-2:] == [3, 4]
  assert m[-2]["search/dpo_pairs"] > 0 and m[-2]["replay/size"] == 8.0
  np.testing.assert_allclose(m[-2]["loss/step_dpo"], np.log(2.0), atol=1e-5)
