"""train.evaluate: rows agree with running each method directly; the schema,
the results file merge and the CLI's errors."""
import inspect
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import models
import tsearch
from train import config as config_lib
from train import evaluate
from train import model as model_lib
from train import search_config
from tsearch.tasks import get_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_rows_match_the_methods_run_directly(tmp_path, monkeypatch):
  task = get_task("countdown", num_numbers=3, max_number=9, max_target=20,
                  strict=True)
  cfg = models.ModelConfig(vocab_size=task.vocab.size, num_layers=1,
                           d_model=16, num_heads=2, num_kv_heads=1,
                           head_dim=8, mlp_dim=32, max_seq_len=160)
  fns, params = model_lib.create_model(cfg, seed=0)
  config = config_lib.default_config()
  config.search.update(level="step", num_children=3, capacity=16,
                       step_length=20, terminal_lookahead=True,
                       prune_terminal_slots=True, act_on_solved=True)
  problems = task.eval_problems(6)
  assert len(problems) == 6
  prompts, plen = task.encode_prompts(problems)
  key = jax.random.key(0)

  # The MCTS rollout is the biggest program here: rather than compile it a
  # second time to run it directly, record what evaluate's one calls
  # tsearch.rollout with (every argument, defaults filled in) and what that
  # rollout returns, from inside evaluate's own jitted function.
  real_rollout = tsearch.rollout
  signature = inspect.signature(real_rollout)
  arrays = ("state", "prompt_tokens", "prompt_lengths", "rng_key")
  calls = []

  def recording_rollout(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    r = real_rollout(*args, **kwargs)
    static = {k: v for k, v in a.items() if k not in arrays}
    jax.debug.callback(
        lambda *x: calls.append((static, *x)), jax.tree.leaves(a["state"]),
        a["prompt_tokens"], a["prompt_lengths"],
        jax.random.key_data(a["rng_key"]), r.outcome, r.model_calls,
        r.tokens_forwarded)
    return r
  monkeypatch.setattr(tsearch, "rollout", recording_rollout)
  # evaluate's functions are built here, with the recording rollout.
  monkeypatch.setattr(evaluate, "_JITTED", {})
  # All problems on one device (as with one device); the split over the 8
  # test devices is checked at the end.
  data_mesh = evaluate.data_mesh
  monkeypatch.setattr(evaluate, "data_mesh", lambda config: None)

  rows = evaluate.evaluate(config, task, fns, params, problems,
                           methods=[("greedy", 1), ("mcts", 3)])
  assert [(r["algo"], r["simulations"], r["budget"]) for r in rows] == [
      ("greedy", None, None), ("mcts", 3, None)]
  # The search consults the verifier in the tree; greedy never does.
  assert [r["verifier_in_search"] for r in rows] == [False, True]
  assert [r["attempts_mean"] for r in rows] == [1.0, 1.0]  # no take-backs
  assert all(r["seed"] == 0 and r["num_problems"] == 6 for r in rows)
  g = tsearch.get_algorithm("greedy")(fns.graphdef, fns.state(params), task,
                                      prompts, plen, key, budget=1)
  # Jitted: one compile instead of one per operation.
  solved = np.asarray(jax.jit(task.verify)(prompts, g.answers)) > 0.5
  assert rows[0]["solve_rate"] == float(solved.mean())
  assert rows[0]["tokens_forwarded"] == pytest.approx(
      np.mean(np.asarray(g.tokens_forwarded)))

  # MCTS: one rollout, over this model, these prompts and key, with the
  # evaluation's search options (no root noise, acting on the most visited
  # child), one move per step and acting on a verified slot ...
  assert len(calls) == 1
  static, leaves, p, l, k, outcome, model_calls, tokens = calls[0]
  sc = search_config.lm_search_config(config.search, task, num_simulations=3,
                                      acting_temperature=0.0, noise=False)
  expected = signature.bind(fns.graphdef, None, task, None, None, None,
                            config=sc, num_moves=2, act_on_solved=True)
  expected.apply_defaults()
  assert static == {k_: v for k_, v in expected.arguments.items()
                    if k_ not in arrays}
  want = jax.tree.leaves(fns.state(params))
  assert len(leaves) == len(want)
  for got, w in zip(leaves, want):
    np.testing.assert_array_equal(got, w)
  np.testing.assert_array_equal(p, prompts)
  np.testing.assert_array_equal(l, plen)
  np.testing.assert_array_equal(k, jax.random.key_data(key))
  # ... and its row is that rollout's solve rate, calls and tokens.
  assert rows[1]["solve_rate"] == float(np.mean(np.asarray(outcome) > .5))
  assert rows[1]["model_calls"] == pytest.approx(
      np.mean(np.asarray(model_calls)))
  assert rows[1]["tokens_forwarded"] == pytest.approx(
      np.mean(np.asarray(tokens)))
  assert rows[1]["tokens_forwarded"] > rows[0]["tokens_forwarded"]

  # Split over the 8 devices (6 problems padded to 8, results of the copies
  # dropped), greedy gives the same row; written rows are kept one by one.
  monkeypatch.setattr(evaluate, "data_mesh", data_mesh)
  assert evaluate.data_mesh(config).shape["data"] == 8
  seen = []
  split_rows = evaluate.evaluate(config, task, fns, params, problems,
                                 methods=[("greedy", 1)], on_row=seen.append)
  same = ("solve_rate", "model_calls", "tokens_forwarded", "num_problems")
  assert {k: split_rows[0][k] for k in same} == {k: rows[0][k] for k in same}
  assert seen == split_rows


def test_merge_rows_replaces_same_key_and_keeps_the_rest(tmp_path):
  row = dict(stage="s", step=3, algo="mcts", simulations=16, budget=None,
             solve_rate=0.5, split="test", seed=0)
  path = str(tmp_path / "r.json")
  with open(path, "w") as f:
    json.dump({"command": "c", "rows": [dict(row, stage="t")]}, f)
  out = evaluate.merge_rows(path, [row])
  again = evaluate.merge_rows(path, [dict(row, solve_rate=2.0)])
  assert len(out["rows"]) == len(again["rows"]) == 2
  assert again["rows"][1]["solve_rate"] == 2.0
  assert again["rows"][0]["stage"] == "t"  # another stage's row stays
  # Another split or seed is another row.
  more = evaluate.merge_rows(path, [dict(row, split="validation"),
                                    dict(row, seed=1)])
  assert len(more["rows"]) == 4
  # Other options are another row; a row without options (older files) or
  # with them as a dict (older family rows) is the same as "" / the string.
  vote = dict(row, algo="best_of_n", simulations=None, budget=16)
  more = evaluate.merge_rows(path, [dict(vote, options="aggregate=majority"),
                                    dict(vote, options={"aggregate": "x"})])
  assert len(more["rows"]) == 6
  more = evaluate.merge_rows(path, [dict(vote, options="aggregate=x"),
                                    dict(row, options="")])
  assert len(more["rows"]) == 6
  assert evaluate.format_options({"b": 1, "a": "x"}) == "a=x,b=1"
  # The same method under other config overrides is another row; "" is a
  # row written without the field.
  more = evaluate.merge_rows(path, [
      dict(row, overrides="task.options.retract=0"), dict(row, overrides="")])
  assert len(more["rows"]) == 7
  assert [r.get("overrides") for r in more["rows"]].count("") == 1
  assert "N=16, aggregate=majority" in evaluate.format_rows(
      [dict(vote, options="aggregate=majority", model_calls=1.0,
            tokens_forwarded=1.0, verifier_in_search=False,
            attempts_mean=1.0, seconds=1.0)])
  with open(path) as f:
    assert json.load(f)["command"] == "c"  # the file's other keys stay
  for name, text in (("list.json", "[1, 2]"), ("text.json", "not json")):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"{name} is not a results file"):
      evaluate.merge_rows(str(tmp_path / name), [row])


def test_config_overrides_are_the_evaluations_config_flags():
  argv = ["--config", "configs/game24.py", "--workdir=/w",
          "--config.task.options.retract=0", "--seed", "1",
          "--config.search.verifier_in_search", "False",
          "--config.experimental.retract_weight=0"]
  assert evaluate.config_overrides(argv) == (
      "experimental.retract_weight=0,search.verifier_in_search=False,"
      "task.options.retract=0")
  assert evaluate.config_overrides(["--config=configs/tiny.py"]) == ""


def test_methods_stages_and_verifier_flags():
  assert evaluate.parse_methods("greedy:1,best_of_n:8,mcts:16") == [
      ("greedy", 1), ("best_of_n", 8), ("mcts", 16)]
  for bad, match in (("beem:4", "Unknown method 'beem'"),
                     ("mcts:x", "integer N"), ("mcts:0", "N must be >= 1")):
    with pytest.raises(ValueError, match=match):
      evaluate.parse_methods(bad)
  c = config_lib.default_config()
  c.eval.update(best_of_n=(8,), mcts_budgets=(16, 64))
  assert evaluate.default_methods(c) == [("greedy", 1), ("best_of_n", 8),
                                         ("mcts", 16), ("mcts", 64)]
  assert evaluate.parse_stages(["warm_start:30", "s:latest"], []) == [
      ("warm_start", 30), ("s", None)]
  assert evaluate.parse_stages([], ["5", "latest"]) == [(None, 5),
                                                        (None, None)]
  assert evaluate.parse_stages([], []) == [(None, None)]
  with pytest.raises(ValueError, match="label:step"):
    evaluate.parse_stages(["30"], [])
  c.warm_start.steps = 30
  assert [evaluate.stage_of(c, s) for s in (30, 31)] == [
      "warm_start", "search_and_learn"]
  # From the method and its options, never from the task.
  assert evaluate.verifier_in_search("mcts")
  assert evaluate.verifier_in_search("gumbel")
  assert not evaluate.verifier_in_search("best_of_n")
  assert evaluate.verifier_in_search("best_of_n",
                                     {"terminal_score": "verifier"})
  assert not evaluate.verifier_in_search("greedy")
  assert evaluate.method_options(
      "*.terminal_score=verifier", [("greedy", 1), ("best_of_n", 8),
                                    ("mcts", 16)]) == {
                                        "best_of_n": {
                                            "terminal_score": "verifier"}}
  with pytest.raises(ValueError, match="trainer's rollout"):
    evaluate.method_options("mcts.num_children=8", [("mcts", 16)])


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "train.evaluate", "--config",
       os.path.join(REPO, "configs", "tiny.py"), *args], cwd=REPO,
      capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_fatal_line(tmp_path):
  # One layer: the model is built before the checkpoint is looked for.
  r = _cli("--workdir", str(tmp_path / "empty"), "--config.model.num_layers=1")
  assert r.returncode == 1
  assert "FATAL: FileNotFoundError: No checkpoint in" in r.stderr
  assert "Traceback" not in r.stderr
  r = _cli("--workdir", str(tmp_path), "--methods", "beem:4")
  assert r.returncode == 1 and "Unknown method 'beem'" in r.stderr
  assert "Traceback" not in r.stderr
  (tmp_path / "bad.json").write_text("[1, 2]")
  r = _cli("--workdir", str(tmp_path), "--out", str(tmp_path / "bad.json"))
  assert r.returncode == 1
  assert "bad.json is not a results file" in r.stderr
  assert "Traceback" not in r.stderr
