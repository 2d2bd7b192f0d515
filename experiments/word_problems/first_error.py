"""Where do greedy answers go wrong? The first line whose result differs
from the reference solution's line at the same place, by split.

  PYTHONPATH=. python experiments/word_problems/first_error.py \
      --workdir /tmp/wpG --step 2000 --split validation_ood --num_problems 100 \
      "--config.task.options.train_ops=(2,6)" ...

(with the run's config overrides, e.g. variant G's task options). Prints,
per number of operations, how many answers are right, how many break at
each line (1-based), and how many of the broken lines are arithmetic slips
(``a op b = c`` false) rather than a wrong operand or operation, and how
many lines the answers write against the reference's (answers that stop
short of the reference's number of steps). With ``style="quote"``
solutions, also how many of the sentences the answers copy are exact
sentences of the question, and how many of the reference's are never
copied.
"""
import collections
import re

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import tsearch
from rollouts import LINE, arithmetic_ok
from train import evaluate as ev

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/word_problems.py", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step.")
_SPLIT = flags.DEFINE_string("split", "validation_ood", "Problem split.")
_NUM = flags.DEFINE_integer("num_problems", 100, "Problems decoded.")
flags.mark_flags_as_required(["workdir", "step"])

def results(text):
  return [m.groups() for m in LINE.finditer(text)]


def quotes(text):
  """The sentences a quote-style answer copies: each line up to the first
  sentence end followed by more text."""
  found = (re.search(r"[.?] ", line) for line in text.split("\n"))
  return [m.string[:m.start() + 1] for m in found if m]


def main(argv):
  del argv
  task, fns, [(_, params)] = ev.restore(_CONFIG.value, _WORKDIR.value,
                                        [_STEP.value])
  problems = task.eval_problems(_NUM.value, split=_SPLIT.value)
  prompts, lengths = task.encode_prompts(problems)
  out = tsearch.get_algorithm("greedy")(fns.graphdef, fns.state(params), task,
                                        prompts, lengths, jax.random.key(0))
  table = collections.defaultdict(collections.Counter)
  slips = wrong = 0
  written = collections.defaultdict(list)
  copied = exact = missed = gold_quotes = 0
  for i, p in enumerate(problems):
    text = task.decode(np.asarray(out.answers[i]))
    gold, got = results(p.solution), results(text)
    ops = len(gold)
    written[ops].append(len(got))
    got_quotes = quotes(text)
    copied += len(got_quotes)
    exact += sum(q in p.question for q in got_quotes)
    ref_quotes = quotes(p.solution)
    gold_quotes += len(ref_quotes)
    missed += sum(q not in got_quotes for q in ref_quotes)
    first = next((j for j, (g, x) in enumerate(zip(gold, got)) if g != x),
                 None if len(got) == ops else min(len(got), ops))
    if first is None:
      table[ops]["right"] += 1
      continue
    table[ops][first + 1] += 1
    if first < len(got):
      wrong += 1
      slips += not arithmetic_ok(*got[first])
  for ops in sorted(table):
    row = table[ops]
    lines = ", ".join(f"line {k}: {v}" for k, v in sorted(
        (k, v) for k, v in row.items() if k != "right"))
    print(f"{ops} operations: {sum(row.values())} answers, "
          f"{row['right']} with every line right; first wrong {lines}")
  print(f"first wrong lines that are arithmetic slips: {slips}/{wrong}")
  if gold_quotes:  # style="quote"
    print(f"quoted sentences: {exact}/{copied} copied exactly from the "
          f"question; {missed}/{gold_quotes} of the reference's never "
          "copied")
  for ops in sorted(written):
    n = np.asarray(written[ops])
    print(f"{ops} operations: {n.mean():.2f} lines written on average; "
          f"{np.mean(n < ops):.0%} fewer than {ops}, "
          f"{np.mean(n > ops):.0%} more")


if __name__ == "__main__":
  app.run(main)
