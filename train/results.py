"""Results files under the evaluation protocol (docs/protocol.md): headline
rows over seeds, and a check of what each row must say.

  python -m train.results results/word_problems.json [--split test]
  python -m train.results results/*.json --check

prints, for every (stage, method, budget, options, config overrides of the
evaluation, split), the mean solve
rate over seeds with its spread (sample standard deviation, min and max)
and the number of seeds; a group with fewer than 3 seeds is marked
``one seed`` / ``2 seeds``, never reported as a headline. ``--check``
lists the rows that break the protocol (no ``verifier_in_search``, no
``attempts_mean``, no split or seed) and exits 1 if there are any.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Sequence

from absl import app, flags

# A headline is the mean of at least this many seeds.
HEADLINE_SEEDS = 3
# Rows with the same values here are seeds of one configuration.
GROUP = ("stage", "algo", "simulations", "budget", "options", "overrides",
         "verifier_in_search", "split", "num_problems")
# What every row must say (None is not an answer).
REQUIRED = ("verifier_in_search", "attempts_mean", "split", "seed")
# What a match row (a game against an ``opponent``, e.g.
# experiments/connect_four/play.py) must say: it has no split or attempts.
REQUIRED_MATCH = ("verifier_in_search", "seed", "games")


def _group_key(row: dict) -> tuple:
  opts = row.get("options") or ""
  if isinstance(opts, dict):
    opts = ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
  fixed = {"options": opts, "overrides": row.get("overrides") or ""}
  return tuple(fixed.get(k, row.get(k)) for k in GROUP)


def aggregate(rows: Sequence[dict]) -> list[dict]:
  """One dict per configuration (:data:`GROUP`): its fields, ``seeds``
  (sorted), ``n``, ``mean``, ``std`` (sample; 0 for one seed), ``min``,
  ``max`` of the solve rate, ``model_calls`` and ``tokens_forwarded`` means,
  ``verifier_in_search`` and ``attempts_mean`` (the rows', or ``"mixed"``
  when seeds disagree) and ``headline`` (n >= :data:`HEADLINE_SEEDS`).

  A seed evaluated twice (same key) counts once: the last row is used.
  """
  groups: dict[tuple, dict[int | None, dict]] = {}
  for r in rows:
    groups.setdefault(_group_key(r), {})[r.get("seed")] = r
  out = []
  for key, by_seed in groups.items():
    seeds = sorted(by_seed, key=lambda s: (s is None, s))
    rates = [float(by_seed[s]["solve_rate"]) for s in seeds]
    n = len(rates)
    mean = sum(rates) / n
    std = (math.sqrt(sum((x - mean) ** 2 for x in rates) / (n - 1))
           if n > 1 else 0.0)

    def common(field):
      values = {json.dumps(by_seed[s].get(field)) for s in seeds}
      return by_seed[seeds[0]].get(field) if len(values) == 1 else "mixed"

    def mean_of(field):
      values = [by_seed[s].get(field) for s in seeds]
      return (sum(values) / n if all(v is not None for v in values)
              else None)

    out.append(dict(zip(GROUP, key), seeds=seeds, n=n, mean=mean, std=std,
                    min=min(rates), max=max(rates),
                    model_calls=mean_of("model_calls"),
                    tokens_forwarded=mean_of("tokens_forwarded"),
                    verifier_in_search=common("verifier_in_search"),
                    attempts_mean=common("attempts_mean"),
                    headline=n >= HEADLINE_SEEDS))
  return out


def check(rows: Sequence[dict]) -> list[str]:
  """The protocol's complaints about ``rows``, one line each (empty: none)."""
  problems = []
  for i, r in enumerate(rows):
    need = REQUIRED_MATCH if "opponent" in r else REQUIRED
    missing = [f for f in need if r.get(f) is None]
    if missing:
      what = (f"against {r['opponent']}" if "opponent" in r else
              f"{r.get('algo')}")
      problems.append(
          f"row {i} ({r.get('stage')} {what} step {r.get('step')} "
          f"split {r.get('split')} seed {r.get('seed')}): no "
          f"{', '.join(missing)}")
  return problems


def method_name(row: dict) -> str:
  """``greedy``, ``best_of_n (N=16, aggregate=majority)``, ``mcts (64
  sims/move)``: a row's method as the tables print it."""
  extra = ", ".join(x for x in (row.get("options"), row.get("overrides"))
                    if x)
  extra = f", {extra}" if extra else ""
  if row.get("simulations") is not None:
    return f"{row['algo']} ({row['simulations']} sims/move{extra})"
  if row.get("budget") is not None:
    return f"{row['algo']} (N={row['budget']}{extra})"
  return f"{row['algo']} ({extra[2:]})" if extra else row["algo"]


def format_table(groups: Sequence[dict]) -> str:
  """Fixed-width table of :func:`aggregate`'s groups."""
  def fmt(v, spec):
    return "?" if v is None else ("mixed" if v == "mixed" else
                                  format(v, spec))
  ws = max([len("stage")] + [len(str(g.get("stage"))) for g in groups])
  wp = max([len("split")] + [len(str(g.get("split"))) for g in groups])
  wm = max([len("method")] + [len(method_name(g)) for g in groups])
  lines = [f"{'stage':<{ws}} {'split':<{wp}} {'method':<{wm}} "
           f"{'solve rate':>22} {'seeds':>9} {'calls':>7} {'verifier':>8} "
           f"{'attempts':>8}"]
  for g in sorted(groups, key=lambda g: tuple(str(g.get(k)) for k in GROUP)):
    rate = f"{100 * g['mean']:.1f}%"
    if g["n"] > 1:
      rate += (f" ± {100 * g['std']:.1f} [{100 * g['min']:.0f}-"
               f"{100 * g['max']:.0f}]")
    seeds = ({1: "one seed", 2: "2 seeds"}.get(g["n"], f"{g['n']} seeds"))
    vis = g["verifier_in_search"]
    vis = "?" if vis is None else vis if vis == "mixed" else (
        "yes" if vis else "no")
    lines.append(
        f"{str(g.get('stage')):<{ws}} {str(g.get('split')):<{wp}} "
        f"{method_name(g):<{wm}} {rate:>22} {seeds:>9} "
        f"{fmt(g['model_calls'], '.1f'):>7} {vis:>8} "
        f"{fmt(g['attempts_mean'], '.2f'):>8}")
  return "\n".join(lines)


class _CurveFile(ValueError):
  """A ``compare_*.json`` curve file, not a results file: skipped."""


def _read(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"No results file {path}.") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a JSON results file: {e}") from e
  if (isinstance(data, dict) and isinstance(data.get("results"), list)
      and "rows" not in data):
    raise _CurveFile(f"{path}: skipped, a comparison curve file (the plot "
                     "data of train.evaluate's compute-matched comparison); "
                     "its rows are in the results file given to --out.")
  if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
    raise ValueError(f"{path} is not a results file (a JSON object with a "
                     "'rows' list, as python -m train.evaluate writes).")
  return data["rows"]


def _define_flags():
  """The CLI's flags (defined only when run as a program: train.evaluate
  imports this module and has its own --split)."""
  flags.DEFINE_string("split", None, "Only rows of this split.")
  flags.DEFINE_bool("check", False, "List rows that break the protocol; "
                    "exit 1 if any.")


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more results files.")
  bad = 0
  for path in paths:
    try:
      rows = _read(path)
    except _CurveFile as e:
      print(e)
      continue
    except ValueError as e:
      print(f"FATAL: {e}", file=sys.stderr)
      sys.exit(1)
    if flags.FLAGS.split:
      rows = [r for r in rows if r.get("split") == flags.FLAGS.split]
    print(f"{path}: {len(rows)} rows")
    if flags.FLAGS.check:
      problems = check(rows)
      bad += len(problems)
      for p in problems:
        print("  " + p)
    else:
      print(format_table(aggregate(rows)))
  if bad:
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
