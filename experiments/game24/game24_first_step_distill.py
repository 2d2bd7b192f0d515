"""Can the policy learn the value head's ranking of *every* legal first step?

Run (a trained ``configs/game24_left.py`` warm start; about 7.5 s per update
on a 2-core CPU shared with a training run, 3-4 s alone):
  python experiments/game24/game24_first_step_distill.py --config configs/game24_left.py \\
      --workdir /tmp/g24l --step 3000 --updates 300 --beta 10 --prior 0

Every failure of greedy decoding on the warm start is its first step
(``bench/game24_value_greedy.py``: greedy first step keeps), while the value
head ranks first steps almost perfectly. The search-and-learn value
lookahead (``search.value_policy_weight``) teaches the policy that ranking on
the K=8 steps the search samples; this probe asks what the policy would
learn from the ranking of *all* of them (at most 48 per puzzle,
``countdown_solver.step_candidates``), outside the search step: on each update,
16 training puzzles (numbers shuffled) with every legal first step written
out, the cross-entropy of the policy renormalised over those steps
(choice tokens only: the tokens before ``=``) against
``softmax(beta * v + prior * log p)``, ``v`` the *frozen* warm start's value
after each step, plus ``--sft`` times the warm start's own loss (one of all
solutions of 32 training puzzles, ``countdown_solver.solver_batch``) as an
anchor. Every ``--eval_every`` updates, on 100 training, the 100 validation
and the 100 test puzzles: greedy's solve rate, the policy's probability
mass on the first steps that keep a solution (renormalised over the legal
ones; the exact solver decides) and how often its most probable complete
first step keeps one.
"""
from __future__ import annotations

import time
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from train import loop
from tsearch.tasks import countdown_solver
from tsearch._src import algorithms
from tsearch.tasks import game24_splits

_CONFIG = config_flags.DEFINE_config_file("config", "configs/game24_left.py",
                                          "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Warm-start run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint (default latest).")
_UPDATES = flags.DEFINE_integer("updates", 300, "Updates.", lower_bound=1)
_BETA = flags.DEFINE_float("beta", 10.0, "Scale of the value in the target.")
_PRIOR = flags.DEFINE_float("prior", 0.0, "Weight of log p in the target "
                            "(1: the search's softmax(log p + beta v)).")
_SFT = flags.DEFINE_float("sft", 1.0, "Weight of the warm-start loss.")
_LR = flags.DEFINE_float("learning_rate", 1e-4, "AdamW learning rate.")
_EVAL = flags.DEFINE_integer("eval_every", 100, "Greedy every N updates.",
                             lower_bound=1)
flags.mark_flags_as_required(["workdir"])
_PUZZLES, _CANDS, _WIDTH = 16, 48, 48


def _shuffled_puzzles(train, rng) -> list[tuple[int, ...]]:
  """16 random training puzzles, each with its numbers shuffled."""
  return [tuple(int(x) for x in rng.permutation(train[rng.integers(
      len(train))])) for _ in range(_PUZZLES)]


def _candidates(task, puzzles):
  """Every legal first step of each puzzle written out after its prompt:
  tokens ``[N, C, W]``, their choice-token targets, lengths ``[N, C]``,
  legal slots ``[N, C]`` and each step's numbers left (``N`` puzzles)."""
  base = task.base
  eq = base.encode("=")[0]
  toks = np.full((len(puzzles), _CANDS, _WIDTH), base.pad_id, np.int32)
  choice = np.zeros(toks.shape, np.float32)
  lens = np.ones(toks.shape[:2], np.int32)
  legal = np.zeros(toks.shape[:2], bool)
  lefts = []
  for b, nums in enumerate(puzzles):
    pool = [Fraction(x) for x in nums]
    prefix = [int(t) for t in base.encode_prompt((nums, 24))
              if t != base.pad_id]
    cands = countdown_solver.step_candidates(pool)
    if len(cands) > _CANDS:
      raise ValueError(f"{nums} has {len(cands)} first steps > {_CANDS}.")
    for c, (text, _) in enumerate(cands):
      step = base.encode(task.annotate(pool, text, complete=False))
      seq = prefix + step + [base.step_delimiter]
      toks[b, c, :len(seq)] = seq
      lens[b, c], legal[b, c] = len(seq), True
      # Target positions of the choice tokens (those before "=").
      choice[b, c, len(prefix):len(prefix) + step.index(eq)] = 1.0
    lefts.append([left for _, left in cands])
  return toks, choice, lens, legal, lefts


def main(argv):
  del argv
  config = _CONFIG.value
  task, fns, params0, step0 = loop.latest_params(config, _WORKDIR.value,
                                                 _STEP.value)
  base = task.base
  splits = game24_splits()
  train = [n for _, n in splits["train"]]

  def forward(p, toks):
    t = toks.reshape(-1, toks.shape[-1])
    pos = jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape)
    return fns.apply(p, t, pos, t != base.pad_id)

  def token_logprobs(out, toks):
    logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32))
    return jnp.take_along_axis(logp, toks[:, 1:, None], -1)[..., 0]

  def loss_fn(p, toks, choice, lens, legal, sft):
    flat = toks.reshape(-1, _WIDTH)
    lp = token_logprobs(forward(p, toks), flat)
    step_lp = jnp.sum(lp * choice.reshape(-1, _WIDTH)[:, 1:], -1).reshape(
        legal.shape)
    v0 = forward(params0, toks).value.reshape(toks.shape)
    v = jnp.take_along_axis(v0, (lens - 1)[..., None], -1)[..., 0]
    target = jax.nn.softmax(jnp.where(
        legal, _BETA.value * v + _PRIOR.value * jax.lax.stop_gradient(
            step_lp), -1e9), -1)
    cand = jax.nn.log_softmax(jnp.where(legal, step_lp, -1e9), -1)
    policy = -jnp.mean(jnp.sum(jnp.where(legal, target * cand, 0.0), -1))
    slp = token_logprobs(forward(p, sft["tokens"]), sft["tokens"])
    m = sft["loss_mask"][:, 1:]
    anchor = -jnp.sum(slp * m) / jnp.maximum(m.sum(), 1.0)
    return policy + _SFT.value * anchor, (policy, anchor)

  opt = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(_LR.value, weight_decay=0.01))

  @jax.jit
  def update(p, o, toks, choice, lens, legal, sft):
    (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(
        p, toks, choice, lens, legal, sft)
    u, o = opt.update(g, o, p)
    return optax.apply_updates(p, u), o, aux

  greedy_fn = algorithms.get_algorithm("greedy")
  step_lps = jax.jit(lambda p, toks, choice: jnp.sum(token_logprobs(
      forward(p, toks), toks) * choice[:, 1:], -1))

  def first_step_policy(p, numbers):
    """(mass on keeping first steps, whether the most probable keeps)."""
    toks, choice, _, legal, (lefts,) = _candidates(task, [numbers])
    n = int(legal[0].sum())
    lp = np.asarray(step_lps(p, jnp.asarray(toks[0, :n]),
                             jnp.asarray(choice[0, :n])))
    keeps = np.array([countdown_solver.solvable(tuple(sorted(left)), Fraction(24))
                      for left in lefts])
    prob = np.exp(lp - lp.max())
    return float((prob * keeps).sum() / prob.sum()), bool(keeps[lp.argmax()])

  def evaluate(p):
    cols = []
    for split in ("train", "validation", "test"):
      rows = splits[split][::11][:100] if split == "train" else splits[split]
      prompts, plen = base.encode_prompts([(n, 24) for _, n in rows])
      res = greedy_fn(fns.graphdef, fns.state(p), task, jnp.asarray(prompts),
                      jnp.asarray(plen), jax.random.key(0), budget=1)
      solved = np.mean(np.asarray(task.verify(jnp.asarray(prompts),
                                              res.answers)) > 0.5)
      mass, top = np.mean([first_step_policy(p, n) for _, n in rows], 0)
      cols.append(f"{solved:.0%} / {mass:.0%} / {top:.0%}")
    return " | ".join(cols)

  print(f"checkpoint {step0}, beta {_BETA.value}, prior {_PRIOR.value}, "
        f"sft {_SFT.value}, learning rate {_LR.value}")
  print("update | policy loss | anchor loss | seconds | train: greedy / mass "
        "on keeping first steps / most probable keeps | validation | test")
  print(f"0 | - | - | 0 | {evaluate(params0)}", flush=True)
  params, state = params0, opt.init(params0)
  rng = np.random.default_rng(0)
  t0 = time.time()
  for i in range(1, _UPDATES.value + 1):
    sft = countdown_solver.solver_traces(task, 10_000 + i, 32, max_len=96,
                                   negative_fraction=0.0)
    params, state, (pol, anchor) = update(
        params, state, *map(jnp.asarray, _candidates(
            task, _shuffled_puzzles(train, rng))[:4]),
        {k: jnp.asarray(v) for k, v in sft.items()})
    if i % _EVAL.value == 0:
      print(f"{i} | {float(pol):.3f} | {float(anchor):.3f} | "
            f"{time.time() - t0:.0f} | {evaluate(params)}", flush=True)


if __name__ == "__main__":
  app.run(main)
