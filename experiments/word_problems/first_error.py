"""Where do greedy answers go wrong? The first line whose result differs
from the reference solution's line at the same place, by split.

  python experiments/word_problems/first_error.py WORKDIR STEP SPLIT N \
      [--config.key=value ...]

(the config overrides of the run, e.g. variant G's task options). Prints,
per number of operations, how many answers are right, how many break at
each line (1-based), and how many of the broken lines are arithmetic slips
(``a op b = c`` false) rather than a wrong operand or operation.
"""
import ast
import collections
import re
import sys

import jax
import numpy as np

import tsearch
from train import config as config_lib
from train import evaluate as ev

LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
       "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def results(text):
  return [m.groups() for m in LINE.finditer(text)]


def main(workdir, step, split, n, *overrides):
  c = config_lib.load_config_file("configs/word_problems.py")
  for item in overrides:  # --config.a.b=value
    key, _, raw = item.removeprefix("--config.").partition("=")
    *path, last = key.split(".")
    node = c
    for k in path:
      node = node[k]
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    if isinstance(node, dict):
      node[last] = value
    else:
      setattr(node, last, value)
  task, fns, [(_, params)] = ev.restore(c, workdir, [int(step)])
  problems = task.eval_problems(int(n), split=split)
  prompts, lengths = task.encode_prompts(problems)
  out = tsearch.get_algorithm("greedy")(fns.graphdef, fns.state(params), task,
                                        prompts, lengths, jax.random.key(0))
  table = collections.defaultdict(collections.Counter)
  slips = wrong = 0
  for i, p in enumerate(problems):
    text = task.decode(np.asarray(out.answers[i]))
    gold, got = results(p.solution), results(text)
    ops = len(gold)
    first = next((j for j, (g, x) in enumerate(zip(gold, got)) if g != x),
                 None if len(got) == ops else min(len(got), ops))
    if first is None:
      table[ops]["right"] += 1
      continue
    table[ops][first + 1] += 1
    if first < len(got):
      a, op, b, r = got[first]
      wrong += 1
      slips += OPS[op](int(a), int(b)) != int(r)
  for ops in sorted(table):
    row = table[ops]
    lines = ", ".join(f"line {k}: {v}" for k, v in sorted(
        (k, v) for k, v in row.items() if k != "right"))
    print(f"{ops} operations: {sum(row.values())} answers, "
          f"{row['right']} with every line right; first wrong {lines}")
  print(f"first wrong lines that are arithmetic slips: {slips}/{wrong}")


if __name__ == "__main__":
  main(*sys.argv[1:])
