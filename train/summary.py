"""The table ``python -m train`` ends with: what the run learned.

Greedy decoding and MCTS solve rates on held-out problems at the warm
start's last checkpoint and at the run's last, where the checkpoint is, and
one machine-readable line::

  summary task=<name> greedy=<x> search=<y> minutes=<m>

(rates of the last checkpoint, in [0, 1]; minutes: the whole command's wall
clock). The config's ``eval`` section sets it: ``eval.summary`` (False turns
it off), ``eval.num_examples`` problems of ``eval.split``
(``task.eval_problems``), MCTS at the first of ``eval.mcts_budgets``
simulations per move (:mod:`train.evaluate`'s ``mcts``, the trainer's
rollout). The rows also go into ``<workdir>/eval.json``.
"""
from __future__ import annotations

import os
import time

import jax

from train import evaluate
from train import loop


_LABELS = {"warm_start": "warm start", "search_and_learn":
           "after search-and-learn"}


def _steps(config, saved) -> list[int]:
  """The warm start's last step (when search steps follow and it was
  saved) and the run's last step."""
  warm = int(config.warm_start.steps)
  last = warm + int(config.search.steps)
  return ([warm] if warm and config.search.steps and warm in saved
          else []) + [last]


def run(config, workdir: str, *, started: float) -> str | None:
  """Evaluates the run's checkpoints, prints the table and the summary line;
  returns that line (None, with a note, where the run has not reached its
  last step, e.g. stopped by a signal, or runs on several processes).

  Args:
    config: the run's config.
    workdir: the run's directory.
    started: ``time.time()`` when the command started (for ``minutes``).
  """
  if jax.process_count() > 1:
    print("summary: skipped on a multi-process run; evaluate with python -m "
          "train.evaluate --config ... --workdir ...")
    return None
  ckpt = loop.checkpointer(config, workdir)
  saved = list(ckpt.all_steps())
  ckpt.close()
  last = int(config.warm_start.steps + config.search.steps)
  if last not in saved:
    print(f"summary: the run stopped at step {max(saved, default=0)} of "
          f"{last}; run the same command again to resume.")
    return None
  if not config.eval.mcts_budgets:
    print("summary: skipped, eval.mcts_budgets is empty (its first budget is "
          "the MCTS simulations per move).")
    return None
  sims = int(config.eval.mcts_budgets[0])
  steps = _steps(config, saved)
  print(f"summary: greedy decoding and MCTS ({sims} simulations/move) on "
        f"held-out problems at step{'s' if len(steps) > 1 else ''} "
        f"{', '.join(map(str, steps))} ...", flush=True)
  rows = evaluate.evaluate_checkpoints(
      config, workdir, [(None, step) for step in steps],
      methods=[("greedy", 1), ("mcts", sims)], progress=False)
  evaluate.merge_rows(os.path.join(workdir, "eval.json"), rows)
  table = {}  # checkpoint label -> {algo: solve rate}
  for r in rows:
    label = f"{_LABELS[r['stage']]} (step {r['step']})"
    table.setdefault(label, {})[r["algo"]] = r["solve_rate"]
  options = ", ".join(f"{k}={v}" for k, v in config.task.options.items())
  width = max(len(label) for label in table) + 2
  print()
  print(f"Task {config.task.name} ({options}): solve rate on "
        f"{rows[0]['num_problems']} held-out {rows[0]['split']} problems")
  print(f"  {'checkpoint':<{width}}{'greedy':>8}{'MCTS':>8}")
  for label, rate in table.items():
    print(f"  {label:<{width}}{rate['greedy']:>8.1%}{rate['mcts']:>8.1%}")
  print(f"greedy: argmax decoding, no verifier. MCTS: {sims} simulations per "
        "move over the model; the exact verifier scores finished answers "
        "inside the tree.")
  print(f"checkpoint: {os.path.join(workdir, 'checkpoints', str(last))} "
        f"(rows: {os.path.join(workdir, 'eval.json')})")
  final = list(table.values())[-1]
  line = (f"summary task={config.task.name} greedy={final['greedy']:.3f} "
          f"search={final['mcts']:.3f} "
          f"minutes={(time.time() - started) / 60:.1f}")
  print(line, flush=True)
  return line
