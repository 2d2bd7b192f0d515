"""train.summary: the table and the last line ``python -m train`` prints."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from train import config as config_lib
from train import evaluate
from train import loop
from train import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
LINE = re.compile(r"summary task=(\S+) greedy=(\d\.\d{3}) search=(\d\.\d{3}) "
                  r"minutes=(\d+\.\d)")


# A one-layer model: the summary does not depend on the size, and a smaller
# program compiles faster.
SMALL = dict(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
             head_dim=16, mlp_dim=64)


def _tiny():
  """configs/tiny.py, shortened: one-digit sums (so that some are solved),
  a smaller model, a few steps, a few problems."""
  c = config_lib.load_config_file(TINY)
  c.task.options = dict(max_digits=1, min_digits=1, ops=("+",))
  c.model.update(**SMALL)
  c.warm_start.steps = 30
  c.search.update(steps=1, num_simulations=4, capacity=32)
  c.batch_size = 8
  c.progress_bar = False
  c.eval.update(num_examples=24, mcts_budgets=(4,))
  return c


def _tiny_flags():
  """:func:`_tiny` on the command line, warm start only: the same model,
  train step (tiny's warm-start schedule depends on the warm start's steps
  only) and evaluation, so that the command's programs are those the
  in-process tests compile (shared where the test run's compilation cache
  is on, TSEARCH_TEST_JAX_CACHE=1 in tests/conftest.py)."""
  return ["--config.task.options.max_digits=1",
          "--config.task.options.min_digits=1",
          *[f"--config.model.{k}={v}" for k, v in SMALL.items()],
          "--config.warm_start.steps=30", "--config.search.steps=0",
          "--config.search.num_simulations=4", "--config.search.capacity=32",
          "--config.batch_size=8",
          "--config.progress_bar=False", "--config.eval.num_examples=24",
          "--config.eval.mcts_budgets=(4,)"]


@pytest.mark.slow
def test_summary_prints_the_evaluated_rates_last(tmp_path, monkeypatch):
  c, workdir = _tiny(), str(tmp_path / "run")
  loop.train(c, workdir)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    line = summary.run(c, workdir, started=time.time() - 90)
  printed = out.getvalue().splitlines()
  assert printed[-1] == line
  m = LINE.fullmatch(line)
  assert m, line
  task, greedy, search, minutes = m.groups()
  assert task == "arithmetic" and float(minutes) >= 1.5
  assert "warm start (step 30)" in out.getvalue()
  assert "after search-and-learn (step 31)" in out.getvalue()
  assert os.path.join(workdir, "checkpoints", "31") in out.getvalue()
  # The rates are those of the last checkpoint, evaluated again here.
  extra = str(tmp_path / "extra.json")
  rows = evaluate.evaluate_checkpoints(c, workdir, [(None, 31)],
                                       methods=[("greedy", 1), ("mcts", 4)],
                                       progress=False, out=extra,
                                       overrides="eval.temperature=0.5")
  assert (greedy, search) == tuple(f"{r['solve_rate']:.3f}" for r in rows)
  # Each row is written once, with its overrides, as its method finishes.
  with open(extra) as f:
    assert json.load(f)["rows"] == rows
  assert {r["overrides"] for r in rows} == {"eval.temperature=0.5"}
  assert float(search) > 0  # a real evaluation (an untrained 0 proves little)
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)["rows"]
  assert [(r["stage"], r["algo"]) for r in saved] == [
      ("warm_start", "greedy"), ("warm_start", "mcts"),
      ("search_and_learn", "greedy"), ("search_and_learn", "mcts")]
  assert [r["verifier_in_search"] for r in saved] == [False, True] * 2
  # Whatever the evaluation returns is what the line says.
  fake = [dict(r, solve_rate=v) for r, v in zip(saved, (.1, .2, .123, .456))]
  monkeypatch.setattr(evaluate, "evaluate_checkpoints",
                      lambda *a, **k: fake)
  with contextlib.redirect_stdout(io.StringIO()):
    line = summary.run(c, workdir, started=time.time())
  assert LINE.fullmatch(line).groups()[1:3] == ("0.123", "0.456")


def test_summary_waits_for_the_last_step(tmp_path, capsys):
  c = _tiny()
  c.debug.stop_after_steps = 5  # as a SIGTERM would
  workdir = str(tmp_path / "run")
  loop.train(c, workdir)
  assert summary.run(c, workdir, started=time.time()) is None
  assert "stopped at step 5 of 31" in capsys.readouterr().out


@pytest.mark.slow
def test_command_ends_with_the_summary_line(tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "train", "--config", TINY, "--workdir",
       str(tmp_path / "run"), *_tiny_flags()],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  last = r.stdout.strip().splitlines()[-1]
  assert LINE.fullmatch(last), r.stdout[-2000:]
  assert "warm start (step 30)" in r.stdout
  # The same command again over the finished run, with the summary off:
  # with it on, this run would evaluate its last checkpoint and print the
  # table and the line again (no training steps to repeat here).
  r = subprocess.run(
      [sys.executable, "-m", "train", "--config", TINY, "--workdir",
       str(tmp_path / "run"), *_tiny_flags(), "--config.eval.summary=False"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from step 30" in r.stdout
  assert "summary" not in r.stdout
