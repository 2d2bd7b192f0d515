"""How far greedy decoding could go by learning the value head's ranking.

Run (a trained configs/game24.py workdir; ~1 min per checkpoint on a 2-core
CPU):
  python bench/game24_value_greedy.py --workdir /tmp/g24 --steps 3000,3065

On 100 training puzzles, the 100 validation and the 100 test puzzles, side
by side per checkpoint:

* greedy: the policy's own greedy decoding (``tsearch.algorithms`` greedy,
  the strict env);
* greedy first step keeps: the share of puzzles whose greedy first step
  leaves a solvable position (the exact solver decides;
  ``puzzle_data.first_step_keeps``): on these checkpoints nearly every
  greedy failure is its first step;
* value-greedy: at each step every legal step ``a op b = c`` is written
  after the answer so far and the one whose end the value head rates
  highest is taken (the last step: any that makes 24). This is what a
  policy that had learned the value head's ranking of all legal steps
  perfectly would decode, so it bounds what distilling the value head into
  the policy (``search.value_policy_weight``) can give greedy;
* the share of puzzles whose value-greedy first step leaves a solvable
  position (the exact solver decides) beside that of a uniformly random
  legal first step;
* the value head's AUC on 3-number positions: over every legal first step
  of every puzzle, how often it rates a step that leaves a solvable
  position above one that does not (0.5: chance, 1: perfect). The train
  row (100 training puzzles, every 11th of the split) tells fitting from
  generalising: a value head that had learned its training positions would
  score far higher there than on the held-out ones.
"""
from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from train import loop, puzzle_data
from tsearch import algorithms
from tsearch.tasks import countdown as cd
from tsearch.tasks import game24_splits

_CONFIG = config_flags.DEFINE_config_file("config", "configs/game24.py",
                                          "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STEPS = flags.DEFINE_list("steps", None, "Checkpoints (default latest).")
_SPLITS = flags.DEFINE_list(
    "splits", ["train", "validation", "test"], "Rows: train (every 11th "
    "training puzzle), validation, test, extended (100 of the puzzles with "
    "a number in 14..20 that search.problem_split='extended' draws).")
_VALUE = flags.DEFINE_bool("value", True, "Also value-greedy and the value "
                           "AUC (--novalue: greedy columns only, faster).")
flags.mark_flags_as_required(["workdir"])
_TARGET = Fraction(24)


def _prompt_ids(base, numbers) -> list[int]:
  """The prompt's tokens as the model reads them (BOS first), unpadded."""
  ids = base.encode_prompt((numbers, 24))
  return [int(t) for t in ids[ids != base.pad_id]]


def _step_values(task, apply, params, prefix, pool, step_texts):
  """The value head at the end of ``prefix + step + "\\n"`` for each step
  on ``pool`` (in the environment's notation: ``task.annotate``)."""
  base = task.base
  seqs = [prefix + base.encode(task.annotate(pool, t, complete=False))
          + [base.step_delimiter] for t in step_texts]
  width = 96
  tokens = np.full((len(seqs), width), base.pad_id, np.int32)
  for r, s in enumerate(seqs):
    tokens[r, :len(s)] = s
  lengths = np.array([len(s) for s in seqs])
  positions = np.broadcast_to(np.arange(width), tokens.shape)
  out = apply(params, jnp.asarray(tokens), jnp.asarray(positions, jnp.int32),
              jnp.asarray(np.arange(width)[None] < lengths[:, None]))
  return seqs, np.asarray(out.value)[np.arange(len(seqs)), lengths - 1]


def _value_greedy(task, apply, params, numbers):
  """``(solved, first step keeps a solvable position)`` for one puzzle."""
  pool = [Fraction(x) for x in numbers]
  prefix = _prompt_ids(task.base, numbers)
  first_ok = None
  while len(pool) > 1:
    cands = puzzle_data.step_candidates(pool)
    if len(pool) == 2:  # the last step: the verifier's choice
      pool = next((r for _, r in cands if r[0] == _TARGET), cands[0][1])
      break
    seqs, values = _step_values(task, apply, params, prefix, pool,
                                [t for t, _ in cands])
    best = int(np.argmax(values))
    prefix, pool = seqs[best], cands[best][1]
    if first_ok is None:
      first_ok = puzzle_data.solvable(tuple(sorted(pool)), _TARGET)
  return pool == [_TARGET], bool(first_ok)


def _first_step_auc(task, apply, params, puzzles) -> float:
  """The value head's AUC over every legal first step of ``puzzles``."""
  labels, scores = [], []
  for numbers in puzzles:
    pool = [Fraction(x) for x in numbers]
    cands = puzzle_data.step_candidates(pool)
    _, values = _step_values(
        task, apply, params,
        _prompt_ids(task.base, numbers), pool,
        [t for t, _ in cands])
    labels += [puzzle_data.solvable(tuple(sorted(r)), _TARGET)
               for _, r in cands]
    scores += list(values)
  return puzzle_data.ranking_auc(labels, scores)


def main(argv):
  del argv
  config = _CONFIG.value
  splits = game24_splits()
  steps = [int(s) for s in _STEPS.value] if _STEPS.value else [None]
  print("checkpoint | split | greedy | greedy first step keeps | "
        "value-greedy | value-greedy first step keeps | random first step "
        "keeps | value AUC, 3 numbers left")
  for step in steps:
    task, fns, params, step = loop.latest_params(config, _WORKDIR.value, step)
    base = task.base
    apply = jax.jit(fns.apply)
    for split in _SPLITS.value:
      if split == "extended":
        ext = cd.game24_extended_puzzles()
        problems = [(nums, 24) for nums in ext[::len(ext) // 100][:100]]
      else:
        # 100 training puzzles spread over the ranks.
        rows = splits[split][::11][:100] if split == "train" else splits[split]
        problems = [(nums, 24) for _, nums in rows]
      prompts, plen = base.encode_prompts(problems)
      out = algorithms.get_algorithm("greedy")(
          fns.graphdef, fns.state(params), task, jnp.asarray(prompts),
          jnp.asarray(plen), jax.random.key(0), budget=1)
      greedy = float(np.mean(np.asarray(task.verify(jnp.asarray(prompts),
                                                    out.answers)) > 0.5))
      keeps = np.mean([bool(puzzle_data.first_step_keeps(
          nums, task.decode(np.asarray(a)), 24)) for (nums, _), a in zip(
              problems, np.asarray(out.answers))])
      rand = np.mean([puzzle_data.random_step_keeps(nums, 24)
                      for nums, _ in problems])
      if not _VALUE.value:
        print(f"{step} | {split} | {greedy:.0%} | {keeps:.0%} | - | - | "
              f"{rand:.0%} | -", flush=True)
        continue
      vg = [_value_greedy(task, apply, params, nums) for nums, _ in problems]
      print(f"{step} | {split} | {greedy:.0%} | {keeps:.0%} | "
            f"{np.mean([s for s, _ in vg]):.0%} | "
            f"{np.mean([f for _, f in vg]):.0%} | {rand:.0%} | "
            f"{_first_step_auc(task, apply, params, [n for n, _ in problems]):.2f}",
            flush=True)


if __name__ == "__main__":
  app.run(main)
