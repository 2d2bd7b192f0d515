"""Search-and-learn: rollouts commit legal tokens, targets are consistent,
and a short run with search steps trains."""
import os

import jax
import jax.numpy as jnp
import numpy as np

import models
from train import config as config_lib
from train import loop
from train import model as model_lib
from train import search_learn
from tsearch.tasks import get_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rollout_commits_verified_trajectories():
  task = get_task("arithmetic", max_digits=1)
  cfg = models.ModelConfig(vocab_size=task.vocab.size, num_layers=1,
                           d_model=16, num_heads=2, num_kv_heads=1,
                           head_dim=8, mlp_dim=32, max_seq_len=16)
  fns, params = model_lib.create_model(cfg, seed=0)
  problems = task.sample_problems(0, 4)
  prompt, plen = task.encode_prompts(problems)
  seq_len = task.max_prompt_length + task.max_answer_length
  run = jax.jit(lambda p, k: search_learn.rollout(
      task, fns.apply, p, prompt, plen, k, seq_len=seq_len, algorithm="puct",
      num_simulations=6, num_children=3, capacity=48))
  r = jax.device_get(run(params, jax.random.key(0)))
  again = jax.device_get(run(params, jax.random.key(0)))
  jax.tree.map(np.testing.assert_array_equal, r, again)  # same key, same run
  m = task.max_answer_length
  assert r["weights"].shape == (4, m, 3)
  for i in range(4):
    pl, n = int(plen[i]), int(r["length"][i])
    np.testing.assert_array_equal(r["seq"][i, :pl], prompt[i, :pl])
    answer = r["seq"][i, pl:n]
    moves = int(r["active"][i].sum())
    assert moves == n - pl  # one committed token per active move
    # The outcome is the verifier's score of the committed answer.
    padded = np.zeros((1, m), np.int32)
    padded[0, :len(answer)] = answer
    assert r["outcome"][i] == float(task.verify(prompt[i:i + 1], padded)[0])
    for j in range(moves):
      w = r["weights"][i, j]
      np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
      assert np.all(w[~r["children_mask"][i, j]] == 0)
      # The committed token is one of the searched children with weight > 0.
      k = list(r["children_tokens"][i, j]).index(answer[j])
      assert w[k] > 0
  # Constrained decoding: every answer ends with EOS within the budget.
  assert all(r["seq"][i, int(r["length"][i]) - 1] == task.eos_id
             for i in range(4))


def test_warm_start_then_search_steps(tmp_path):
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  c.warm_start.steps = 2
  c.search.update(steps=2, num_simulations=4, num_children=3, capacity=32,
                  algorithm="gumbel", value_target="mix", sft_weight=0.5)
  c.batch_size = 8
  c.log_every_steps = 1
  c.progress_bar = False
  last = loop.train(c, str(tmp_path / "run"))
  assert 0.0 <= last["search/solve_rate"] <= 1.0
  assert last["search/answer_tokens"] >= 2  # at least a digit and EOS
  assert last["loss/policy"] > 0 and np.isfinite(last["loss"])
  np.testing.assert_allclose(
      last["loss"], last["loss/policy"] + 0.5 * last["loss/value"]
      + 0.5 * last["loss/sft"], rtol=1e-5)
