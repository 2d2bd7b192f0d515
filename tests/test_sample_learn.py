"""Sample-and-learn (search.method='sample'): rows built from N samples per
prompt carry the verifier's reward, SFT only on verified answers, and a run
trains, logs its terms and resumes exactly."""
import jax
import numpy as np
import pytest

from train import config as config_lib
from train import loop
from train import metrics as metrics_lib
from train import model as model_lib
from train import sample_learn
import models
from tsearch.tasks import get_task
from tests import test_train_search as train_search_tests


def _rows(task, key, n=6):
  cfg = models.ModelConfig(vocab_size=task.vocab.size, num_layers=1,
                           d_model=16, num_heads=2, num_kv_heads=1,
                           head_dim=8, mlp_dim=32, max_seq_len=48)
  fns, params = model_lib.create_model(cfg, seed=0)
  prompt, plen = task.encode_prompts(task.sample_problems(0, 5))
  rows, stats = jax.jit(
      lambda p, k: sample_learn.sample_rows(
          fns.graphdef, fns.state(p), task, prompt, plen, k, num_samples=n,
          temperature=1.0))(params, key)
  return prompt, plen, jax.device_get(rows), jax.device_get(stats)


def test_sample_rows_hold_each_sample_and_its_reward():
  task = get_task("arithmetic", max_digits=1)
  n = 6
  prompt, plen, rows, stats = _rows(task, jax.random.key(3), n)
  b, p = prompt.shape
  assert rows["tokens"].shape == (b * n, p + task.max_answer_length)
  answers = np.full((b * n, task.max_answer_length), task.pad_id, np.int32)
  for r in range(b * n):
    pl = int(plen[r // n])
    np.testing.assert_array_equal(rows["tokens"][r, :pl],
                                  prompt[r // n, :pl])
    body = rows["loss_mask"][r] > 0
    al = int(body.sum())
    assert al >= 1 and np.all(np.flatnonzero(body) == pl + np.arange(al))
    assert rows["token_mask"][r].sum() == pl + al
    # The value is regressed from the prompt's last token to the answer's.
    assert np.flatnonzero(rows["value_mask"][r]).tolist() == list(
        range(pl - 1, pl + al))
    answers[r, :al] = rows["tokens"][r, pl:pl + al]
  # The reward is the verifier's on the answer as written in the row.
  reward = np.asarray(task.verify(np.repeat(prompt, n, 0), answers))
  np.testing.assert_array_equal(rows["value_target"], reward)
  np.testing.assert_array_equal(rows["policy_weight"], reward > 0.5)
  np.testing.assert_allclose(stats["search/solve_rate"], reward.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(
      stats["search/pass_at_n"], (reward.reshape(b, n) > 0.5).any(1).mean(),
      rtol=1e-6)
  # Samples differ across the N of a prompt and repeat under the same key.
  assert len({rows["tokens"][r].tobytes() for r in range(n)}) > 1
  _, _, again, _ = _rows(task, jax.random.key(3), n)
  np.testing.assert_array_equal(again["tokens"], rows["tokens"])


def _tiny(tmp_path, **kw):
  """test_train_search's tiny run with 3 sample-and-learn steps."""
  c = train_search_tests._tiny(tmp_path, **{
      "steps": 3, "method": "sample", "num_samples": 4, "sft_weight": 1.0,
      "value_weight": 0.5, "replay_size": 0, **kw})
  c.eval.summary = False
  return c


@pytest.mark.slow
def test_sample_steps_train_log_and_resume_exactly(tmp_path):
  straight = str(tmp_path / "straight")
  last = loop.train(_tiny(tmp_path, anchor_weight=1.0), straight)
  assert 0.0 <= last["search/solve_rate"] <= last["search/pass_at_n"] <= 1.0
  assert last["search/answer_tokens"] >= 1
  assert last["loss/value"] > 0 and last["loss/anchor"] > 0
  c = _tiny(tmp_path, anchor_weight=1.0)
  vw, pw = c.warm_start.value_weight, c.warm_start.policy_weight
  np.testing.assert_allclose(
      last["loss"], last["loss/policy"] + 0.5 * last["loss/value"]
      + pw * last["loss/anchor"] + vw * last["loss/anchor_value"], rtol=1e-5)
  stopped = str(tmp_path / "stopped")
  c.debug.stop_after_steps = 3  # warm 2 + one sample step, then stop
  loop.train(c, stopped)
  loop.train(_tiny(tmp_path, anchor_weight=1.0), stopped)
  drop = lambda ms: [{k: v for k, v in m.items() if k != "steps_per_second"}  # noqa: E731
                     for m in ms]
  assert drop(metrics_lib.read_metrics(straight)) == drop(
      metrics_lib.read_metrics(stopped))
  _, _, p1, s1 = loop.latest_params(_tiny(tmp_path), straight)
  _, _, p2, s2 = loop.latest_params(_tiny(tmp_path), stopped)
  assert s1 == s2 == 5
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.parametrize("kw,key", [
    (dict(method="beam"), "search.method"),
    (dict(num_samples=0), "search.num_samples"),
    (dict(replay_size=8), "search.replay_size"),
    (dict(step_dpo_weight=1.0, level="step"), "experimental.step_dpo_weight"),
])
def test_bad_sample_config_names_the_key(tmp_path, kw, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    config_lib.validate_config(_tiny(tmp_path, **kw))
