"""Solve rates of a trained checkpoint for the results tables.

  python -m train.solve_rates --config configs/game24.py --workdir <dir> \\
      --stage warm_start --step 1000 --out results/game24.json

Problems: Game of 24 — the Tree-of-Thoughts test split (ranks 901-1000, 100
puzzles, numbers in the file's order); other tasks — ``--num_problems``
problems from the task's sampler with a seed no training step uses.
Methods (all under the run's environment, e.g. the strict rules):

* ``greedy``: ``tsearch.algorithms.greedy`` (KV-cached argmax decoding);
* ``best_of_n``: ``tsearch.algorithms.best_of_n`` with ``budget=N`` samples,
  the answer picked by the value head (no verifier);
* ``mcts``: the trainer's rollout (:func:`tsearch.rollout`):
  PUCT without root noise, ``simulations`` per move, acting on the most
  visited child, the kept subtree reused after each move. Terminal nodes
  inside the tree earn the verifier's reward (as in ``tsearch.lm_search``).

``model_calls`` is the mean number of sequential model forward calls per
problem (each call runs a batch of tokens; the search's step sampler counts
one call per sampled token position); ``tokens_forwarded`` the mean number
of token positions those calls computed (K sampled steps of S tokens per
expanded node: the cost that grows with K). Rows are merged into ``--out``
(replacing rows with the same stage/algo/simulations/budget).
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
from train import loop
from train import search_config



def test_problems(task, num_problems: int):
  """The evaluation problems of a task (``task.eval_problems``)."""
  return task.eval_problems(num_problems, split="test")


def load(config, workdir: str, step: int | None):
  """``(task, fns, params, step)`` of checkpoint ``step`` (default latest)."""
  return loop.latest_params(config, workdir, step)


_JITTED = {}


def _method_fn(config, task, fns, algo: str, n: int):
  """Jitted ``(model_state, prompts, lengths, key) -> (reward, calls,
  tokens)``,
  built once per method (so several checkpoints share the compile)."""
  cache_key = (algo, n, id(task), id(fns.graphdef),
                config.search.to_json_best_effort(),
                search_config.eval_num_children(config))
  if cache_key in _JITTED:
    return _JITTED[cache_key]
  from tsearch._src import algorithms  # pylint: disable=import-outside-toplevel
  if algo in ("greedy", "best_of_n"):
    fn = algorithms.get_algorithm(algo)

    def run(s, p, l, k):
      out = fn(fns.graphdef, s, task, p, l, k, budget=n)
      return (task.verify(p, out.answers), out.model_calls,
              out.tokens_forwarded)
  elif algo == "mcts":
    cfg = search_config.eval_search_config(config, task, n)
    moves = search_config.num_moves(config.search, task)

    def run(s, p, l, k):
      r = tsearch.rollout(
          fns.graphdef, s, task, p, l, k, config=cfg, num_moves=moves,
          act_on_solved=bool(config.search.get("act_on_solved", False)))
      return r.outcome, r.model_calls, r.tokens_forwarded
  else:
    raise ValueError(f"Unknown method {algo!r}; use greedy, best_of_n or "
                     "mcts.")
  _JITTED[cache_key] = jax.jit(run)
  return _JITTED[cache_key]


def evaluate(config, task, fns, params, problems, *, methods, seed: int = 0
             ) -> list[dict]:
  """One row per method: ``algo, simulations, budget, solve_rate,
  model_calls, seconds``."""
  prompts, plen = task.encode_prompts(problems)
  state = fns.state(params)
  rows = []
  for algo, n in methods:
    key = jax.random.key(seed)
    t0 = time.time()
    reward, calls, tokens = _method_fn(config, task, fns, algo, n)(
        state, prompts, plen, key)
    reward = np.asarray(jax.device_get(reward))
    rows.append(dict(
        algo=algo, simulations=n if algo == "mcts" else None,
        budget=n if algo == "best_of_n" else None,
        solve_rate=float(np.mean(reward > 0.5)),
        model_calls=float(np.mean(jax.device_get(calls))),
        tokens_forwarded=float(np.mean(jax.device_get(tokens))),
        seconds=round(time.time() - t0, 1)))
    print(f"{algo:<10} n={n:<4} solve_rate={rows[-1]['solve_rate']:.3f} "
          f"model_calls={rows[-1]['model_calls']:.1f} "
          f"tokens={rows[-1]['tokens_forwarded']:.0f} "
          f"({rows[-1]['seconds']}s)", flush=True)
  return rows


def merge_rows(path: str, new: list[dict]) -> dict:
  """Merges ``new`` into ``path``'s ``"rows"``, replacing same-keyed rows;
  the file's other keys (``command``, ``machine``, ``diagnostics``) are
  kept."""
  key = lambda r: (r["stage"], r["algo"], r.get("simulations"),  # noqa: E731
                   r.get("budget"))
  data = {}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("rows", []),
                                                    list):
      raise ValueError(f"{path} is not a results file ({{\"rows\": [...], "
                       "...}): pass another --out or move that file away.")
  keys = {key(r) for r in new}
  data["rows"] = [r for r in data.get("rows", []) if key(r) not in keys] + new
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(data, f, indent=1)
  return data


_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default latest).")
_STAGE = flags.DEFINE_string("stage", "search_and_learn",
                             "Label of the checkpoint in the rows.")
_OUT = flags.DEFINE_string("out", None, "JSON file to merge the rows into.")
_METHODS = flags.DEFINE_list(
    "methods", ["greedy:1", "best_of_n:8", "mcts:8", "mcts:16", "mcts:32",
                "mcts:64"], "algo:N list (N: samples or simulations/move).")
_STAGES = flags.DEFINE_list(
    "stages", [], "stage:step list (step 'latest' allowed); overrides "
    "--stage/--step, all checkpoints share one compile per method.")
_NUM = flags.DEFINE_integer("num_problems", 100, "Problems (at most; a fixed-list task's test split may have fewer).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(_WORKDIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  methods = [(m.split(":")[0], int(m.split(":")[1])) for m in _METHODS.value]
  stages = _STAGES.value or [f"{_STAGE.value}:{_STEP.value or 'latest'}"]
  for item in stages:
    stage, step = item.split(":")
    try:
      task, fns, params, step = load(
          _CONFIG.value, _WORKDIR.value, None if step == "latest" else
          int(step))
    except (ValueError, FileNotFoundError) as err:
      print(f"FATAL: {type(err).__name__}: {err}", file=sys.stderr)
      sys.exit(1)
    problems = test_problems(task, _NUM.value)
    print(f"{stage} (checkpoint {step}), {len(problems)} problems:",
          flush=True)
    rows = evaluate(_CONFIG.value, task, fns, params, problems,
                    methods=methods)
    for r in rows:
      r.update(stage=stage, step=int(step), num_problems=len(problems))
    if _OUT.value:
      try:
        merge_rows(_OUT.value, rows)
      except ValueError as err:
        print(f"FATAL: {err}", file=sys.stderr)
        sys.exit(1)
      print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
