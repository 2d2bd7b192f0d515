"""tsearch.evaluation: the compute-matched comparison table, JSON and plot."""
import json

import jax
import numpy as np
import pytest

from tests.test_family_helpers import FixedSteps, model_for
from tsearch._src import algorithms as A
from tsearch._src import evaluation

TASK = FixedSteps(steps=3, step_tokens=3)  # as in test_family_search
GD, ST = model_for(TASK)
PT, PL = TASK.encode_prompts([7, 42, 913, 8])
KEY = jax.random.key(5)


def test_run_algorithms_table_matches_direct_calls(tmp_path):
  rows = evaluation.run_algorithms(GD, ST, TASK, PT, PL, KEY,
                                   algos=["greedy", "best_of_n"],
                                   budgets=[4, 2], batch_size=3)
  assert [(r["algorithm"], r["budget"]) for r in rows] == [
      ("greedy", 1), ("best_of_n", 4), ("best_of_n", 2)]
  # Two batches (3 + 1 problems, the second padded); batch i uses
  # fold_in(KEY, i). Recompute the best-of-4 row by hand.
  solved, tokens = [], []
  for i, idx in enumerate([np.arange(3), np.array([3, 0, 1])]):
    out = A.best_of_n(GD, ST, TASK, PT[idx], PL[idx], jax.random.fold_in(KEY, i),
                      budget=4)
    n = 3 if i == 0 else 1
    solved += list(np.asarray(TASK.verify(PT[idx], out.answers))[:n] > 0.5)
    tokens += list(np.asarray(out.tokens_forwarded)[:n])
  assert rows[1]["solve_rate"] == pytest.approx(np.mean(solved))
  assert rows[1]["tokens_forwarded"] == pytest.approx(np.mean(tokens))
  assert rows[1]["tokens_forwarded"] == pytest.approx(np.mean(PL) + 4 * 9)
  assert rows[2]["tokens_forwarded"] == pytest.approx(np.mean(PL) + 2 * 9)
  assert rows[0]["model_calls"] == 10 and rows[0]["num_problems"] == 4

  js, png = evaluation.write_comparison(rows, str(tmp_path), "compare_x",
                                        meta=dict(task="fixed_steps"))
  data = json.load(open(js))
  assert data["task"] == "fixed_steps" and data["results"] == rows
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  table = evaluation.format_table(rows)
  assert "best_of_n" in table and len(table.splitlines()) == 4


def test_bad_arguments():
  with pytest.raises(ValueError, match="Unknown algorithm 'foo'"):
    evaluation.run_algorithms(GD, ST, TASK, PT, PL, KEY, algos=["foo"],
                              budgets=[1])
  with pytest.raises(ValueError, match="budget must be a positive int"):
    evaluation.run_algorithms(GD, ST, TASK, PT, PL, KEY, algos=["greedy"],
                              budgets=[4, 0])
  assert evaluation.parse_list("4, 16,64", int) == [4, 16, 64]
  with pytest.raises(ValueError, match="comma-separated list of int"):
    evaluation.parse_list("4,x", int)


def test_parse_options():
  algos = ["greedy", "best_of_n", "beam", "mcts"]
  opts = evaluation.parse_options(
      "mcts.num_children=8,*.terminal_score=verifier,beam.aggregate=majority",
      algos)
  assert opts == {"mcts": {"num_children": 8},
                  "best_of_n": {"terminal_score": "verifier"},
                  "beam": {"terminal_score": "verifier",
                           "aggregate": "majority"}}
  assert evaluation.parse_options("", algos) == {}
  assert evaluation.parse_options("mcts.step_temperature=1.5",
                                  algos)["mcts"]["step_temperature"] == 1.5
  with pytest.raises(ValueError, match="not of the form algo.key=value"):
    evaluation.parse_options("mcts.num_children", algos)
  with pytest.raises(ValueError, match="'mcts' has no option 'beam_width'"):
    evaluation.parse_options("mcts.beam_width=2", algos)
  with pytest.raises(ValueError, match="Unknown algorithm 'nope'"):
    evaluation.parse_options("nope.x=1", algos)
  with pytest.raises(ValueError, match="No algorithm of"):
    evaluation.parse_options("*.beam_width=2", ["greedy"])
