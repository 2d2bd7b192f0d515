"""train.solve_rates: rows agree with running each method directly."""
import json
import jax
import numpy as np
import pytest

import models
import tsearch
from train import config as config_lib
from train import model as model_lib
from train import search_config
from train import solve_rates
from tsearch.tasks.countdown_rules import StrictCountdown
from tsearch._src import algorithms
from tsearch.tasks import get_task


def test_rows_match_the_methods_run_directly(tmp_path):
  task = StrictCountdown(get_task("countdown", num_numbers=3, max_number=9,
                                  max_target=20))
  cfg = models.ModelConfig(vocab_size=task.vocab.size, num_layers=1,
                           d_model=16, num_heads=2, num_kv_heads=1,
                           head_dim=8, mlp_dim=32, max_seq_len=160)
  fns, params = model_lib.create_model(cfg, seed=0)
  config = config_lib.default_config()
  config.search.update(level="step", num_children=3, capacity=16,
                       step_length=20, terminal_lookahead=True,
                       prune_terminal_slots=True, act_on_solved=True)
  problems = solve_rates.test_problems(task, 6)
  assert len(problems) == 6
  rows = solve_rates.evaluate(config, task, fns, params, problems,
                              methods=[("greedy", 1), ("mcts", 3)])
  assert [(r["algo"], r["simulations"]) for r in rows] == [
      ("greedy", None), ("mcts", 3)]
  prompts, plen = task.base.encode_prompts(problems)
  key = jax.random.key(0)
  g = algorithms.greedy(fns.graphdef, fns.state(params), task, prompts, plen,
                        key, budget=1)
  solved = np.asarray(task.base.verify(prompts, g.answers)) > 0.5
  assert rows[0]["solve_rate"] == float(solved.mean())
  assert rows[0]["tokens_forwarded"] == pytest.approx(
      np.mean(np.asarray(g.tokens_forwarded)))
  sc = search_config.lm_search_config(config.search, task, num_simulations=3,
                                      acting_temperature=0.0, noise=False)

  # Jitted, as evaluate runs it, and named and shaped as evaluate's function
  # so that when both build the same program the compile is shared through
  # the test run's compilation cache (tests/conftest.py). A difference in
  # what evaluate passes (config, moves, act_on_solved) makes a different
  # program and different numbers below.
  def run(s, p, l, k):
    r = tsearch.rollout(fns.graphdef, s, task, p, l, k, config=sc,
                        num_moves=2, act_on_solved=True)
    return r.outcome, r.model_calls, r.tokens_forwarded
  outcome, calls, tokens = jax.jit(run)(fns.state(params), prompts, plen, key)
  assert rows[1]["solve_rate"] == float(np.mean(np.asarray(outcome) > .5))
  assert rows[1]["model_calls"] == pytest.approx(np.mean(np.asarray(calls)))
  assert rows[1]["tokens_forwarded"] == pytest.approx(
      np.mean(np.asarray(tokens)))
  assert rows[1]["tokens_forwarded"] > rows[0]["tokens_forwarded"]
  with open(tmp_path / "r.json", "w") as f:
    json.dump({"command": "c", "rows": [dict(rows[0], stage="t")]}, f)
  out = solve_rates.merge_rows(str(tmp_path / "r.json"),
                               [dict(rows[1], stage="s")])
  again = solve_rates.merge_rows(str(tmp_path / "r.json"),
                                 [dict(rows[1], stage="s", solve_rate=2.0)])
  assert len(out["rows"]) == len(again["rows"]) == 2
  assert again["rows"][1]["solve_rate"] == 2.0
  assert again["rows"][0]["stage"] == "t"  # another stage's row stays
  with open(tmp_path / "r.json") as f:
    assert json.load(f)["command"] == "c"  # the file's other keys stay
  with open(tmp_path / "bad.json", "w") as f:
    json.dump([1, 2], f)
  with pytest.raises(ValueError, match="bad.json is not a results file"):
    solve_rates.merge_rows(str(tmp_path / "bad.json"), [dict(rows[1])])
