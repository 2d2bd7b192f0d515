"""How far greedy decoding could go by learning the value head's ranking.

Run (a trained configs/game24.py workdir; ~1 min per checkpoint on a 2-core
CPU):
  python experiments/game24/game24_value_greedy.py --workdir /tmp/g24 --steps 3000,3065

On 100 training puzzles, the 100 validation and the 100 test puzzles, side
by side per checkpoint:

* greedy: the policy's own greedy decoding (``tsearch.algorithms`` greedy,
  the strict env);
* greedy first step keeps: the share of puzzles whose greedy first step
  leaves a solvable position (the exact solver decides;
  ``countdown_solver.first_step_keeps``): on these checkpoints nearly every
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
  score far higher there than on the held-out ones;
* retracting first step keeps, r = 0, 1, 2, ... (``--retracts``): legal
  first steps in the order of the policy's probability (choice tokens);
  one the value head rates below 0.5 is retracted and the next tried, at
  most r times, then the next is kept; the share of puzzles whose kept
  first step leaves a solvable position. This bounds what a policy that
  learned to take back a dead-end step in its own answer (a retraction
  token, as in Stream of Search) could give greedy, if it judged dead ends
  as well as the value head: on these checkpoints greedy finishes from
  nearly every solvable 3-number position, so the column is close to a
  solve rate. r = 0 is the policy's most probable first step.
"""
from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from train import loop
from tsearch.tasks import countdown_solver
from tsearch._src import algorithms
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
_RETRACTS = flags.DEFINE_list(
    "retracts", ["0", "1", "2", "3"], "Retraction budgets r for the "
    "'retracting first step keeps' columns.")
flags.mark_flags_as_required(["workdir"])
_TARGET = Fraction(24)


def _prompt_ids(base, numbers) -> list[int]:
  """The prompt's tokens as the model reads them (BOS first), unpadded."""
  ids = base.encode_prompt((numbers, 24))
  return [int(t) for t in ids[ids != base.pad_id]]


def _step_values(task, apply, params, prefix, pool, step_texts):
  """The value head at the end of ``prefix + step + "\\n"`` for each step
  on ``pool`` (in the environment's notation: ``task.annotate``), and the
  policy's log-probability of each step's choice tokens (those before
  ``=``; the rest are forced by the rules)."""
  base = task.base
  eq = base.encode("=")[0]
  steps = [base.encode(task.annotate(pool, t, complete=False))
           for t in step_texts]
  seqs = [prefix + st + [base.step_delimiter] for st in steps]
  width = 96
  tokens = np.full((len(seqs), width), base.pad_id, np.int32)
  choice = np.zeros((len(seqs), width), bool)
  for r, (seq, st) in enumerate(zip(seqs, steps)):
    tokens[r, :len(seq)] = seq
    choice[r, len(prefix):len(prefix) + st.index(eq)] = True
  lengths = np.array([len(s) for s in seqs])
  positions = np.broadcast_to(np.arange(width), tokens.shape)
  out = apply(params, jnp.asarray(tokens), jnp.asarray(positions, jnp.int32),
              jnp.asarray(np.arange(width)[None] < lengths[:, None]))
  logp = np.asarray(jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32)))
  token_lp = np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  step_lp = (token_lp * choice[:, 1:]).sum(-1)
  values = np.asarray(out.value)[np.arange(len(seqs)), lengths - 1]
  return seqs, values, step_lp


def _value_greedy(task, apply, params, numbers):
  """``(solved, first step keeps a solvable position)`` for one puzzle."""
  pool = [Fraction(x) for x in numbers]
  prefix = _prompt_ids(task.base, numbers)
  first_ok = None
  while len(pool) > 1:
    cands = countdown_solver.step_candidates(pool)
    if len(pool) == 2:  # the last step: the verifier's choice
      pool = next((r for _, r in cands if r[0] == _TARGET), cands[0][1])
      break
    seqs, values, _ = _step_values(task, apply, params, prefix, pool,
                                   [t for t, _ in cands])
    best = int(np.argmax(values))
    prefix, pool = seqs[best], cands[best][1]
    if first_ok is None:
      first_ok = countdown_solver.solvable(tuple(sorted(pool)), _TARGET)
  return pool == [_TARGET], bool(first_ok)


def _first_steps(task, apply, params, puzzles, retracts):
  """The value head's AUC over every legal first step of ``puzzles``, and
  for each ``r`` in ``retracts`` the share of puzzles whose first step
  keeps a solvable position when the policy's most probable first step is
  retracted whenever the value head rates it below 0.5 and the next most
  probable is tried, at most ``r`` times (``r = 0``: the most probable)."""
  labels, scores, kept = [], [], []
  for numbers in puzzles:
    pool = [Fraction(x) for x in numbers]
    cands = countdown_solver.step_candidates(pool)
    _, values, step_lp = _step_values(
        task, apply, params,
        _prompt_ids(task.base, numbers), pool,
        [t for t, _ in cands])
    keeps = [countdown_solver.solvable(tuple(sorted(r)), _TARGET)
             for _, r in cands]
    labels += keeps
    scores += list(values)
    order = np.argsort(-step_lp, kind="stable")
    row = []
    for r in retracts:
      tried = [i for i in order[:r] if values[i] >= 0.5]
      row.append(keeps[tried[0] if tried else order[min(r, len(order) - 1)]])
    kept.append(row)
  return countdown_solver.ranking_auc(labels, scores), np.mean(kept, 0)


def main(argv):
  del argv
  config = _CONFIG.value
  if not all(r.isdigit() for r in _RETRACTS.value):
    raise app.UsageError(f"--retracts takes non-negative integers, got "
                         f"{','.join(_RETRACTS.value)}.")
  splits = game24_splits()
  steps = [int(s) for s in _STEPS.value] if _STEPS.value else [None]
  print("checkpoint | split | greedy | greedy first step keeps | "
        "value-greedy | value-greedy first step keeps | random first step "
        "keeps | value AUC, 3 numbers left | "
        + " | ".join(f"retracting first step keeps, r={r}"
                     for r in _RETRACTS.value))
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
      keeps = np.mean([bool(countdown_solver.first_step_keeps(
          nums, task.decode(np.asarray(a)), 24)) for (nums, _), a in zip(
              problems, np.asarray(out.answers))])
      rand = np.mean([countdown_solver.random_step_keeps(nums, 24)
                      for nums, _ in problems])
      if not _VALUE.value:
        print(f"{step} | {split} | {greedy:.0%} | {keeps:.0%} | - | - | "
              f"{rand:.0%} | -" + " | -" * len(_RETRACTS.value), flush=True)
        continue
      vg = [_value_greedy(task, apply, params, nums) for nums, _ in problems]
      auc, retracting = _first_steps(task, apply, params,
                                     [n for n, _ in problems],
                                     [int(r) for r in _RETRACTS.value])
      print(f"{step} | {split} | {greedy:.0%} | {keeps:.0%} | "
            f"{np.mean([s for s, _ in vg]):.0%} | "
            f"{np.mean([f for _, f in vg]):.0%} | {rand:.0%} | {auc:.2f} | "
            + " | ".join(f"{k:.0%}" for k in retracting), flush=True)


if __name__ == "__main__":
  app.run(main)
