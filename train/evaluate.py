"""Evaluate the latest checkpoint of a run on the test split.

  python -m train.evaluate --config configs/<name>.py --workdir <dir>

  python -m train.evaluate --config ... --workdir ... \
      --algos greedy,best_of_n,beam,mcts --budgets 4,16,64

With ``--algos`` it runs the search family (:mod:`tsearch.evaluation`) at
each budget and writes ``compare_step<step>.json|png``; otherwise:

Methods: greedy decoding, sampling, best-of-N (solved if any of N samples is
accepted by the verifier, i.e. pass@N with the exact verifier) and MCTS
(PUCT, acting on the most visited child) at each budget in
``eval.mcts_budgets``. Decoding is grammar-constrained by the task's legal
mask. Prints a table and writes ``<workdir>/eval_step<step>.json``.
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import tsearch
from train import config as config_lib
from train import data as data_lib
from train import loop
from train import search_config


def sample_answers(task, graphdef, state, prompt, prompt_length, key, *,
                   temperature: float):
  """Decodes one answer per row (the search family's ``greedy``, or
  ``sampling`` at ``temperature > 0``). Returns the verifier's reward
  ``[B]``."""
  if temperature == 0:
    out = tsearch.get_algorithm("greedy")(graphdef, state, task, prompt,
                                          prompt_length, key)
  else:
    out = tsearch.get_algorithm("sampling")(
        graphdef, state, task, prompt, prompt_length, key,
        temperature=temperature)
  return task.verify(prompt, out.answers)


def evaluate(config, workdir: str, *, seed: int = 0,
             step: int | None = None) -> dict:
  """Solve rates of each method on ``eval.num_examples`` test problems."""
  task, fns, params, step = loop.latest_params(config, workdir, step)
  e = config.eval
  stream = data_lib.ExampleStream(
      task, e.batch_size, source=config.data.source, seed=seed,
      split=e.split, data_dir=config.data.data_dir or os.path.join(
          workdir, "data"), auto_build=config.data.auto_build)
  methods = {
      "greedy": lambda p, l, k: sample_answers(
          task, fns.graphdef, fns.state(params), p, l, k, temperature=0.0),
      f"sample(t={e.temperature})": lambda p, l, k: sample_answers(
          task, fns.graphdef, fns.state(params), p, l, k,
          temperature=e.temperature),
  }
  for n in e.best_of_n:
    def best_of(p, l, k, n=n):
      keys = jax.random.split(k, n)
      r = jnp.stack([sample_answers(task, fns.graphdef, fns.state(params),
                                    p, l, kk, temperature=e.temperature)
                     for kk in keys])
      return jnp.max(r, 0)
    methods[f"best_of_{n}"] = best_of
  for budget in e.mcts_budgets:
    cfg = search_config.eval_search_config(config, task, budget)
    methods[f"mcts_{budget}"] = lambda p, l, k, cfg=cfg: (
        tsearch.rollout(
            fns.graphdef, fns.state(params), task, p, l, k, config=cfg,
            num_moves=search_config.num_moves(config.search, task),
            act_on_solved=bool(config.search.get("act_on_solved", False))
        ).outcome)
  jitted = {name: jax.jit(f) for name, f in methods.items()}
  solved = {name: [] for name in methods}
  seconds = {name: 0.0 for name in methods}
  done, key = 0, jax.random.key(seed)
  while done < e.num_examples:
    ex = stream.next()
    take = min(e.batch_size, e.num_examples - done)
    for name, f in jitted.items():
      key, sub = jax.random.split(key)
      t0 = time.time()
      r = np.asarray(f(ex["prompt"], ex["prompt_length"], sub))
      seconds[name] += time.time() - t0
      solved[name].extend((r[:take] > 0.5).tolist())
    done += take
  results = {"step": int(step), "task": task.name, "split": e.split,
             "num_examples": done,
             "solve_rate": {k: float(np.mean(v)) for k, v in solved.items()},
             "seconds": seconds}
  return results


def compare(config, workdir: str, algos: str, budgets: str, *,
            seed: int = 0, step: int | None = None, options: str = ""
            ) -> list:
  """``--algos/--budgets``: the search family, compute-matched (see
  :mod:`tsearch.evaluation`); writes ``compare_step<step>.json|png``."""
  from tsearch._src import evaluation  # pylint: disable=import-outside-toplevel
  algo_list = evaluation.parse_list(algos)
  budget_list = evaluation.parse_list(budgets or "1", int)
  opts = evaluation.parse_options(options, algo_list)
  task, fns, params, step = loop.latest_params(config, workdir, step)
  e = config.eval
  stream = data_lib.ExampleStream(
      task, e.num_examples, source=config.data.source, seed=seed,
      split=e.split, data_dir=config.data.data_dir or os.path.join(
          workdir, "data"), auto_build=config.data.auto_build)
  ex = stream.next()
  rows = evaluation.run_algorithms(
      fns.graphdef, fns.state(params), task, ex["prompt"][:e.num_examples],
      ex["prompt_length"][:e.num_examples], jax.random.key(seed),
      algos=algo_list, budgets=budget_list, batch_size=e.batch_size,
      options=opts, progress=True)
  print(evaluation.format_table(rows))
  if jax.process_index() == 0:
    paths = evaluation.write_comparison(
        rows, workdir, f"compare_step{step}",
        meta=dict(task=task.name, split=e.split, step=int(step),
                  options=opts),
        title=f"{task.name} ({e.split} split, step {step})")
    print("wrote", *paths)
  return rows


_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_ALGOS = flags.DEFINE_string(
    "algos", None, "Comma-separated tsearch.ALGORITHMS to compare at equal "
    "compute (e.g. greedy,best_of_n,beam,mcts); unset: the default table.")
_BUDGETS = flags.DEFINE_string("budgets", "4,16,64",
                               "Comma-separated budgets for --algos.")
_OPTIONS = flags.DEFINE_string(
    "options", "", "Comma-separated algo.key=value hyperparameters for "
    "--algos, e.g. mcts.num_children=8,*.terminal_score=verifier ('*': every "
    "algorithm that takes the key).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the "
                             "latest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if _ALGOS.value:
    try:
      compare(_CONFIG.value, _WORKDIR.value, _ALGOS.value, _BUDGETS.value,
              step=_STEP.value, options=_OPTIONS.value)
    except (ValueError, FileNotFoundError) as err:
      print(f"FATAL: {type(err).__name__}: {err}", file=sys.stderr)
      sys.exit(1)
    return
  try:
    results = evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
  except (ValueError, FileNotFoundError) as err:
    print(f"FATAL: {type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(1)
  print(f"{results['task']} {results['split']} split, checkpoint step "
        f"{results['step']}, {results['num_examples']} problems")
  print(f"{'method':<18}{'solve rate':>12}{'seconds':>10}")
  for name, rate in results["solve_rate"].items():
    print(f"{name:<18}{rate:>12.3f}{results['seconds'][name]:>10.1f}")
  path = os.path.join(_WORKDIR.value, f"eval_step{results['step']}.json")
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
