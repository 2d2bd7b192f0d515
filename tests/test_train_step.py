"""The data-parallel step: 8 devices == 1 device on the same global batch."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import models
from train import model as model_lib
from train import step as step_lib

CFG = models.ModelConfig(vocab_size=12, num_layers=1, d_model=16, num_heads=2,
                         num_kv_heads=1, head_dim=8, mlp_dim=32, max_seq_len=16)
OPTIM = ml_collections.ConfigDict(dict(
    learning_rate=1e-2, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.98,
    grad_clip=1.0))


def _batch(b=8, t=10, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, t + 1, size=b)
  token_mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  loss_mask = token_mask * (np.arange(t)[None] >= 2)
  # Rows have different numbers of answer tokens: a per-device mean would
  # weigh them wrongly.
  return dict(
      tokens=rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32),
      token_mask=token_mask, loss_mask=loss_mask.astype(np.float32),
      value_mask=token_mask, value_target=rng.integers(0, 2, b).astype(
          np.float32),
      policy_weight=np.array([1.0] * (b - 2) + [0.0] * 2, np.float32))


def _run(num_devices, steps=2):
  fns, params = model_lib.create_model(CFG, seed=0)
  opt = step_lib.make_optimizer(OPTIM, total_steps=10)
  mesh = step_lib.make_mesh(num_devices)
  train_step = step_lib.make_train_step(
      step_lib.supervised_loss_fn(fns.apply), opt, mesh,
      loss_weights={"policy": 1.0, "value": 0.5})
  state = step_lib.replicate(step_lib.init_state(params, opt, seed=0), mesh)
  metrics = []
  for i in range(steps):
    batch = step_lib.shard_batch(_batch(seed=i), mesh)
    state, m = train_step(state, batch, jax.random.key(i))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_eight_devices_equal_one_device():
  assert jax.device_count() == 8
  s8, m8 = _run(8)
  s1, m1 = _run(1)
  assert int(s8.step) == int(s1.step) == 2
  for a, b in zip(m8, m1):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               s8.params, s1.params)
  # The step moved the parameters and the loss is the hand-weighted sum.
  s0 = model_lib.create_model(CFG, seed=0)[1]
  diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), s8.params, s0)
  assert max(jax.tree.leaves(diff)) > 1e-4
  np.testing.assert_allclose(
      m8[0]["loss"], m8[0]["loss/policy"] + 0.5 * m8[0]["loss/value"],
      rtol=1e-5)
  # An untrained model's answer-token loss is close to log(V).
  assert abs(m8[0]["loss/policy"] - np.log(CFG.vocab_size)) < 1.0


def test_batch_not_divisible_is_a_clear_error():
  mesh = step_lib.make_mesh(8)
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    step_lib.shard_batch(_batch(b=6), mesh)


def test_search_learning_rate_schedule_spans_the_warm_start_only():
  from ml_collections import ConfigDict
  optim = ConfigDict(dict(learning_rate=1e-2, warmup_steps=5))
  joined = step_lib.learning_rate_schedule(optim, 100, warm_steps=40,
                                           search_learning_rate=3e-4)
  warm_only = step_lib.learning_rate_schedule(optim, 40)
  one = step_lib.learning_rate_schedule(optim, 100)
  for i in (0, 3, 5, 20, 39):
    np.testing.assert_allclose(joined(i), warm_only(i), rtol=1e-6)
  for i in (40, 41, 99, 500):
    np.testing.assert_allclose(joined(i), 3e-4, rtol=1e-6)
  # The default keeps one schedule over all updates (differs at step 20).
  assert abs(float(one(20)) - float(warm_only(20))) > 1e-4
  np.testing.assert_allclose(
      step_lib.learning_rate_schedule(optim, 10, search_learning_rate=2e-3)(7),
      2e-3, rtol=1e-6)


def _anchored_run(num_devices):
  """One replay step whose rows are a supervised batch, plus a side batch
  with its own loss (the search-and-learn warm-start anchor)."""
  from train import search_learn  # pylint: disable=import-outside-toplevel
  fns, params = model_lib.create_model(CFG, seed=0)
  opt = step_lib.make_optimizer(OPTIM, total_steps=10)
  mesh = step_lib.make_mesh(num_devices)
  sup = step_lib.supervised_loss_fn(fns.apply)
  prepare = lambda p, batch, key: (dict(batch), {})  # noqa: E731
  rows = _batch(seed=1)
  replay = step_lib.init_replay(prepare, params, rows, mesh, size=8)
  train_step = step_lib.make_replay_train_step(
      sup, opt, mesh, prepare_fn=prepare,
      loss_weights={"policy": 1.0, "value": 0.5, "anchor": 2.0,
                    "anchor_value": 0.25}, updates=1,
      side_loss_fn=search_learn.anchor_loss_fn(fns.apply))
  state = step_lib.replicate(step_lib.init_state(params, opt, seed=0), mesh)
  batch = step_lib.shard_batch(rows, mesh)
  side = step_lib.shard_batch(_batch(seed=2), mesh)
  state, replay, m = train_step(state, replay, batch, jax.random.key(0), side)
  return fns, jax.device_get(m), replay


def test_side_batch_reaches_every_update_and_not_the_replay():
  fns, m8, replay = _anchored_run(8)
  _, m1, _ = _anchored_run(1)
  # Replayed rows are drawn per device; the side rows are not drawn, so
  # their terms are the same on 8 devices as on 1.
  for k in ("loss/anchor", "loss/anchor_value"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
  assert set(replay["data"]) == set(_batch())  # the prepared rows only
  # The anchor terms are the supervised loss of the anchor batch at the
  # parameters before the update, not of the replayed rows.
  sup = step_lib.supervised_loss_fn(fns.apply)
  params = model_lib.create_model(CFG, seed=0)[1]  # the step donated its own
  anchor = {k: jnp.asarray(v) for k, v in _batch(seed=2).items()}
  direct = {k: float(t.total / t.count)
            for k, t in sup(params, anchor, None).items()}
  np.testing.assert_allclose(m8["loss/anchor"], direct["policy"], rtol=1e-5)
  np.testing.assert_allclose(m8["loss/anchor_value"], direct["value"],
                             rtol=1e-5)
  assert abs(m8["loss/anchor"] - m8["loss/policy"]) > 1e-3
  np.testing.assert_allclose(
      m8["loss"], m8["loss/policy"] + 0.5 * m8["loss/value"]
      + 2.0 * m8["loss/anchor"] + 0.25 * m8["loss/anchor_value"], rtol=1e-5)
