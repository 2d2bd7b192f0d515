"""Compute-matched comparison of the search family on one model and task.

:func:`run_algorithms` runs each algorithm at each budget over a set of
problems, scores the chosen answers with the task's exact verifier and
reports the solve rate next to the compute spent (mean model calls and
tokens forwarded per problem, see :mod:`tsearch.algorithms.rows`) and the
wall time. :func:`write_comparison` writes the table as JSON and a PNG plot
(solve rate against tokens forwarded, log x). ``train/evaluate.py --algos
... --budgets ...`` is the command-line entry point.
"""
from __future__ import annotations

import ast
import inspect
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from tsearch._src import algorithms

# Algorithms whose answer does not depend on the budget: run once.
_FIXED_COST = ("greedy", "sampling")


def parse_list(text: str, kind=str) -> list:
  """``"a,b"`` -> ``['a', 'b']`` (``kind`` converts each item)."""
  items = [x.strip() for x in str(text).split(",") if x.strip()]
  try:
    return [kind(x) for x in items]
  except ValueError:
    raise ValueError(f"Could not read {text!r} as a comma-separated list of "
                     f"{kind.__name__}.") from None


def parse_options(text: str, algos: Sequence[str] = ()) -> dict[str, dict]:
  """``"beam.beam_width=2,mcts.num_children=8"`` -> ``{'beam':
  {'beam_width': 2}, 'mcts': {'num_children': 8}}``.

  An item ``*.key=value`` sets ``key`` for every algorithm of ``algos`` that
  takes it (e.g. ``*.terminal_score=verifier``). Values are Python literals
  (numbers, booleans, ``None``) or plain strings. A key that the algorithm
  does not take, or an algorithm not in :data:`tsearch.ALGORITHMS`, raises.
  """
  options: dict[str, dict] = {}
  for item in parse_list(text or ""):
    name, _, rest = item.partition(".")
    key, eq, raw = rest.partition("=")
    if not (name and key and eq):
      raise ValueError(f"Option {item!r} is not of the form algo.key=value "
                       "(or *.key=value).")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    names = list(algos) if name == "*" else [name]
    taken = False
    for n in names:
      params = inspect.signature(algorithms.get_algorithm(n)).parameters
      if key in params and params[key].kind == inspect.Parameter.KEYWORD_ONLY:
        options.setdefault(n, {})[key] = value
        taken = True
      elif name != "*":
        raise ValueError(
            f"Algorithm {n!r} has no option {key!r}; it takes "
            f"{sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != 'budget')}.")
    if not taken:
      raise ValueError(f"No algorithm of {list(algos)} takes option {key!r}.")
  return options


def run_algorithms(graphdef, state, task, prompt_tokens, prompt_lengths,
                   rng_key, *, algos: Sequence[str], budgets: Sequence[int],
                   batch_size: int = 64,
                   options: dict[str, dict] | None = None,
                   progress: bool = False) -> list[dict[str, Any]]:
  """Runs every algorithm at every budget on the same problems.

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    task: the task (its verifier scores the answers).
    prompt_tokens: ``[E, P]`` prompts of the ``E`` problems.
    prompt_lengths: ``[E]``.
    rng_key: one key; every (algorithm, budget) gets the same batch keys.
    algos: names from :data:`tsearch.ALGORITHMS`; ``greedy`` and
      ``sampling`` run once (budget 1).
    budgets: positive ints.
    batch_size: problems per call (the last batch is padded by repeating
      problems; padded rows are not counted).
    options: per-algorithm keyword hyperparameters, e.g.
      ``{'beam': {'beam_width': 2}}``.
    progress: print a line per (algorithm, budget).

  Returns:
    One dict per (algorithm, budget): ``algorithm``, ``budget``,
    ``solve_rate``, ``model_calls`` and ``tokens_forwarded`` (means per
    problem), ``wall_s`` (seconds over all batches, compilation excluded:
    the first batch is run once before timing), ``compile_s``,
    ``num_problems``.
  """
  for name in algos:
    algorithms.get_algorithm(name)  # unknown names fail before any work
  budgets = [algorithms.check_budget(b) for b in budgets]
  if not budgets:
    raise ValueError("budgets must not be empty.")
  options = options or {}
  prompt_tokens = np.asarray(prompt_tokens, np.int32)
  prompt_lengths = np.asarray(prompt_lengths, np.int32)
  e = len(prompt_tokens)
  if e < 1 or batch_size < 1:
    raise ValueError(f"Need at least one problem and batch_size >= 1; got "
                     f"{e} problems, batch_size={batch_size}.")
  verify = jax.jit(task.verify)
  batches = []
  for start in range(0, e, batch_size):
    idx = np.arange(start, start + batch_size) % e
    batches.append((idx, min(batch_size, e - start)))
  results = []
  for name in algos:
    fn = algorithms.get_algorithm(name)
    for budget in ([1] if name in _FIXED_COST else budgets):
      kw = dict(options.get(name, {}), budget=budget)

      def call(i, idx):
        key = jax.random.fold_in(rng_key, i)
        out = fn(graphdef, state, task, prompt_tokens[idx],
                 prompt_lengths[idx], key, **kw)
        return jax.block_until_ready(out)

      t0 = time.time()
      call(0, batches[0][0])
      compile_s = time.time() - t0
      solved, calls, tokens, wall = [], [], [], 0.0
      for i, (idx, n) in enumerate(batches):
        t0 = time.time()
        out = call(i, idx)
        wall += time.time() - t0
        reward = np.asarray(verify(prompt_tokens[idx], out.answers))
        solved.append(reward[:n] > 0.5)
        calls.append(np.asarray(out.model_calls)[:n])
        tokens.append(np.asarray(out.tokens_forwarded)[:n])
      row = dict(algorithm=name, budget=budget,
                 solve_rate=float(np.concatenate(solved).mean()),
                 model_calls=float(np.concatenate(calls).mean()),
                 tokens_forwarded=float(np.concatenate(tokens).mean()),
                 wall_s=wall, compile_s=max(compile_s - wall / len(batches),
                                            0.0),
                 num_problems=e)
      results.append(row)
      if progress:
        print(format_table([row], header=False), flush=True)
  return results


def format_table(rows: Sequence[dict], header: bool = True) -> str:
  """A fixed-width text table of :func:`run_algorithms` rows."""
  lines = []
  if header:
    lines.append(f"{'algorithm':<16}{'budget':>7}{'solve rate':>12}"
                 f"{'model calls':>13}{'tokens fwd':>12}{'wall s':>9}")
  for r in rows:
    lines.append(f"{r['algorithm']:<16}{r['budget']:>7}{r['solve_rate']:>12.3f}"
                 f"{r['model_calls']:>13.1f}{r['tokens_forwarded']:>12.1f}"
                 f"{r['wall_s']:>9.2f}")
  return "\n".join(lines)


def write_comparison(rows: Sequence[dict], directory: str, name: str, *,
                     meta: dict | None = None, title: str = "") -> tuple[str,
                                                                         str]:
  """Writes ``<directory>/<name>.json`` and ``<name>.png``; returns paths.

  The plot has one line per algorithm: solve rate against mean tokens
  forwarded per problem (log x), each point labelled by its budget.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  os.makedirs(directory, exist_ok=True)
  json_path = os.path.join(directory, f"{name}.json")
  png_path = os.path.join(directory, f"{name}.png")
  with open(json_path, "w") as f:
    json.dump(dict(meta or {}, results=list(rows)), f, indent=2)
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for algo in dict.fromkeys(r["algorithm"] for r in rows):
    pts = sorted((r["tokens_forwarded"], r["solve_rate"], r["budget"])
                 for r in rows if r["algorithm"] == algo)
    xs, ys, bs = zip(*pts)
    ax.plot(xs, ys, marker="o", label=algo)
    for x, y, b in pts:
      if algo not in _FIXED_COST:
        ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(3, 3),
                    fontsize=7)
  ax.set_xscale("log")
  ax.set_xlabel("tokens forwarded per problem (mean, log scale)")
  ax.set_ylabel("solve rate (exact verifier)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(png_path, dpi=120)
  plt.close(fig)
  return json_path, png_path
