"""train.results: headline rows over seeds and the protocol's row check."""
import json
import os
import subprocess
import sys

import pytest

from train import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(seed, rate, **kw):
  r = dict(stage="search_and_learn", step=100, algo="greedy", simulations=None,
           budget=None, solve_rate=rate, model_calls=10.0 + seed,
           tokens_forwarded=20.0, seconds=1.0, verifier_in_search=False,
           attempts_mean=1.0, split="test", seed=seed, num_problems=100,
           options="")
  r.update(kw)
  return r


def test_aggregate_means_seeds_and_keeps_configurations_apart():
  rows = [_row(0, 0.50), _row(1, 0.60), _row(2, 0.70),
          _row(2, 0.90),  # seed 2 evaluated again: the last row counts
          _row(0, 0.20, algo="mcts", simulations=16, attempts_mean=1.0),
          _row(1, 0.30, algo="mcts", simulations=16, attempts_mean=1.5),
          # With the verifier inside, another configuration.
          _row(0, 0.80, algo="mcts", simulations=16, verifier_in_search=True)]
  # Under another config override, another configuration.
  other = _row(0, 0.10, overrides="task.options.retract=0")
  assert len(results.aggregate(rows + [other])) == 4
  assert "greedy (task.options.retract=0)" in results.format_table(
      results.aggregate([other]))
  groups = {(g["algo"], g["verifier_in_search"]): g
            for g in results.aggregate(rows)}
  assert len(groups) == 3
  assert groups[("mcts", True)]["n"] == 1
  groups = {k[0]: g for k, g in groups.items() if k[1] is False}
  g = groups["greedy"]
  assert (g["n"], g["seeds"], g["headline"]) == (3, [0, 1, 2], True)
  assert g["mean"] == pytest.approx(2.0 / 3)
  assert g["std"] == pytest.approx(0.2081666, rel=1e-5)  # sample std
  assert (g["min"], g["max"]) == (0.5, 0.9)
  assert g["model_calls"] == pytest.approx(11.0)
  m = groups["mcts"]
  assert (m["n"], m["headline"], m["attempts_mean"]) == (2, False, "mixed")
  assert m["mean"] == pytest.approx(0.25)
  table = results.format_table(results.aggregate(rows))
  assert "66.7% ± 20.8 [50-90]" in table and "3 seeds" in table
  assert "2 seeds" in table and "mixed" in table


def test_check_names_rows_without_what_the_protocol_needs():
  rows = [_row(0, 0.5), _row(1, 0.5, attempts_mean=None),
          dict(_row(2, 0.5, verifier_in_search=None), seed=None)]
  problems = results.check(rows)
  assert len(problems) == 2
  assert problems[0].startswith("row 1") and "attempts_mean" in problems[0]
  assert "verifier_in_search, seed" in problems[1]
  # A match row (a game against an opponent) has no split or attempts; it
  # must say its seed, its games and whether the rules were in the search.
  match = dict(opponent="random", simulations=32, games=32, win_rate=0.9,
               stage="search_and_learn", step=300)
  problems = results.check([dict(match, seed=0, verifier_in_search=True),
                            match])
  assert len(problems) == 1 and problems[0].startswith("row 1")
  assert "against random" in problems[0]
  assert problems[0].endswith("no verifier_in_search, seed")


def test_cli_table_check_and_bad_files(tmp_path):
  good, bad = tmp_path / "good.json", tmp_path / "bad.json"
  good.write_text(json.dumps({"rows": [_row(s, 0.1 * s) for s in range(3)]}))
  bad.write_text(json.dumps({"rows": [_row(0, 0.5, attempts_mean=None)]}))

  def run(*args):
    return subprocess.run([sys.executable, "-m", "train.results", *args],
                          cwd=REPO, capture_output=True, text=True)
  out = run(str(good))
  assert out.returncode == 0 and "10.0% ± 10.0 [0-20]" in out.stdout
  assert run("--check", str(good)).returncode == 0
  out = run("--check", str(bad))
  assert out.returncode == 1 and "no attempts_mean" in out.stdout
  # A compare_*.json curve file beside the results files is skipped, named.
  curve = tmp_path / "compare_x.json"
  curve.write_text(json.dumps({"task": "x", "results": [{"algorithm": "greedy"}]}))
  out = run("--check", str(good), str(curve))
  assert out.returncode == 0 and "compare_x.json: skipped" in out.stdout
  assert "good.json: 3 rows" in out.stdout
  (tmp_path / "junk.json").write_text("[1, 2]")
  out = run(str(tmp_path / "junk.json"))
  assert out.returncode == 1 and "not a results file" in out.stderr
