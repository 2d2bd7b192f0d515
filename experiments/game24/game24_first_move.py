"""Where a first-move Game of 24 search spends its simulations.

Run (a trained configs/game24_plain.py workdir; ~1-4 min on a 2-core CPU):
  python experiments/game24/game24_first_move.py --workdir /tmp/g24 --step 3000 \\
      --config.search.num_children=32

One ``tsearch.lm_search`` from the prompt of each of the 100 ToT test
puzzles with the config's search (``--config.*`` overrides, e.g.
``--config.search.prune_terminal_slots=False``) at 64 simulations, no root
noise. Prints: the share of trees that hold a verified solution (what
``search.act_on_solved`` follows), the share whose K sampled root steps
include one that leaves a solvable position (the exact solver decides: the
search's ceiling), and per tree the expanded depth-1 / depth-2 nodes and
the simulations that ended on a terminal node. Then, for comparison, where
greedy decoding (``tsearch.algorithms`` ``greedy``) loses the puzzles: the
share whose position is still solvable after its first and second step,
beside the share of all legal first steps that leave a solvable position
(what a uniformly random first step would keep).
"""
from __future__ import annotations

import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from train import config as config_lib
from train import loop, search_config
from tsearch.tasks import countdown_solver
from tsearch._src import algorithms
from tsearch._src import lm_search as lm
from tsearch.tasks import countdown as cd
from tsearch.tasks import game24_splits

_CONFIG = config_flags.DEFINE_config_file("config", "configs/game24_plain.py",
                                          "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint (default latest).")
_SIMS = flags.DEFINE_integer("simulations", 64, "Simulations.")
flags.mark_flags_as_required(["workdir"])
_STEP_RE = re.compile(r"\s*(\(?[\d/]+\)?)\s*([-+*/])\s*(\(?[\d/]+\)?)\s*=")


def _left_after(numbers, step_text):
  """The numbers left after one ``a op b = c`` step (None: no full step);
  a ``left_first`` prefix (the numbers left, then ``:``) is skipped."""
  m = _STEP_RE.match(step_text.split(":")[-1])
  if m is None:
    return None
  a, op, b = m.groups()
  fa, fb = Fraction(a.strip("()")), Fraction(b.strip("()"))
  pool = [Fraction(x) for x in numbers]
  pool.remove(fa)
  pool.remove(fb)
  return pool + [countdown_solver.apply_op(fa, op, fb)]


def main(argv):
  del argv
  config = _CONFIG.value
  task, fns, params, step = loop.latest_params(config, _WORKDIR.value,
                                               _STEP.value)
  base = task.base
  # train.evaluate's problems (task.eval_problems: the test split in order).
  problems = [(nums, 24) for _, nums in game24_splits()["test"]]
  prompts, plen = base.encode_prompts(problems)
  sc = search_config.lm_search_config(
      config.search, task, num_simulations=_SIMS.value,
      acting_temperature=0.0, noise=False)
  out = lm.lm_search(fns.graphdef, fns.state(params), task,
                     jnp.asarray(prompts), jnp.asarray(plen),
                     jax.random.key(0), config=sc)
  t = jax.device_get(out.search_tree)
  found = np.asarray(lm.solved_slot(out.search_tree, sc.max_depth)[0])
  ceiling, d1, d2, tv = [], [], [], []
  for i, (numbers, target) in enumerate(problems):
    n = int(t.num_nodes[i])
    depth, term = t.node_depth[i, :n], t.node_terminal[i, :n]
    d1.append(int((depth == 1).sum()))
    d2.append(int(((depth == 2) & ~term).sum()))
    tv.append(int(t.node_visits[i, :n][term].sum()))
    ok = False
    for k in np.nonzero(t.children_mask[i, 0])[0]:
      text = base.decode([int(x) for x in t.children_actions[i, 0, k]
                          if x >= 0])
      left = _left_after(numbers, text)
      ok |= left is not None and countdown_solver.solvable(
          tuple(sorted(left)), Fraction(target))
    ceiling.append(ok)
  print(f"checkpoint {step}, K={sc.num_children}, {_SIMS.value} simulations, "
        f"lookahead={sc.terminal_lookahead}, prune={sc.prune_terminal_slots}")
  print(f"trees holding a verified solution: {found.mean():.0%}")
  print(f"root steps include a solvable one: {np.mean(ceiling):.0%}")
  print(f"per tree: depth-1 nodes {np.mean(d1):.1f}, depth-2 nodes "
        f"{np.mean(d2):.1f}, simulations ending on a terminal {np.mean(tv):.1f}")
  _greedy_steps(fns, params, task, problems, prompts, plen)


def _greedy_steps(fns, params, task, problems, prompts, plen):
  greedy = algorithms.get_algorithm("greedy")
  out = jax.jit(lambda s, p, l: greedy(fns.graphdef, s, task, p, l,
                                       jax.random.key(0), budget=1))(
      fns.state(params), jnp.asarray(prompts), jnp.asarray(plen))
  answers = np.asarray(out.answers)
  solved = np.asarray(task.verify(jnp.asarray(prompts), out.answers))
  alive = np.zeros((len(problems), 2), bool)
  random_keeps = []
  for i, (numbers, target) in enumerate(problems):
    goal = Fraction(target)
    left = list(numbers)
    lines = task.base.decode([int(x) for x in answers[i] if x > 0]).split("\n")
    for j, line in enumerate(lines[:2]):
      left = _left_after(left, line) if left is not None else None
      alive[i, j] = left is not None and countdown_solver.solvable(
          tuple(sorted(left)), goal)
      if not alive[i, j]:
        break
    random_keeps.append(countdown_solver.random_step_keeps(numbers, goal))
  print(f"greedy: solved {solved.mean():.0%}; solvable after its first step "
        f"{alive[:, 0].mean():.0%}, after its second {alive[:, 1].mean():.0%}; "
        f"a random legal first step keeps {np.mean(random_keeps):.0%}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
