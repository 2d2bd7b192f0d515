"""What the numbers-left notations cost: the strict environment per token,
and greedy decoding with the model, side by side in one run.

Run (about 2 minutes on a 2-core CPU; results in BENCHMARKS.md):
  python experiments/game24/strict_notations.py

The three Game of 24 notations of ``tsearch.tasks.countdown_rules.StrictCountdown``
(``configs/game24_plain.py``: the task's own steps; ``configs/game24_left.py``:
the numbers left after each step, forced tokens; ``configs/game24_left_first.py``:
the numbers left before each step, chosen tokens whose legal mask
enumerates every step on the numbers available). For each, on the 100 test
puzzles (``--batch`` rows, puzzles repeated):

* environment: one jitted ``lax.scan`` over the reference answers' tokens
  (the answer width, padding included) that calls ``legal_mask`` and
  ``step`` at every token, what decoding and the search ask of the
  environment per token (it also checks every reference token is legal);
* greedy: ``tsearch.algorithms`` greedy decoding with the config's model at
  its initial parameters (the model and the environment over the whole
  answer width).

Prints the time per call (``--batch`` answers), per token for the
environment, and each one's ratio to the task's own notation. Times are the
median of ``--repeats`` runs after a compile run.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from train import config as config_lib
from train import loop
from train import model as model_lib
from tsearch._src import algorithms
from tsearch.tasks import game24_splits

_BATCH = flags.DEFINE_integer("batch", 256, "Rows per call.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (median).",
                                lower_bound=1)
_NOTATIONS = (("task's steps", "configs/game24_plain.py"),
              ("numbers left after (show_left)", "configs/game24_left.py"),
              ("numbers left first (left_first)",
               "configs/game24_left_first.py"))


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _measure(path: str, problems, batch: int, repeats: int):
  config = config_lib.load_config_file(path)
  task = loop.setup_task(config)
  reps = -(-batch // len(problems))
  rows = (problems * reps)[:batch]
  prompts, plen = task.base.encode_prompts(rows)
  prompts, plen = jnp.asarray(prompts), jnp.asarray(plen)
  answers = jnp.asarray(task.solution_tokens(rows), jnp.int32)
  if not bool(np.all(np.asarray(task.verify(prompts, answers)) > 0.5)):
    raise RuntimeError(f"{path}: the reference answers do not verify.")
  num_tokens = answers.shape[1]

  @jax.jit
  def walk(prompts, answers):
    def body(state, token):
      mask = task.legal_mask(state)
      legal = jnp.take_along_axis(mask, token[:, None], 1)[:, 0]
      return task.step(state, token), legal | (token == task.pad_id)
    state, legal = jax.lax.scan(body, task.init_state(prompts), answers.T)
    return task.reward(state), legal

  reward, legal = walk(prompts, answers)
  if not (bool(jnp.all(legal)) and bool(jnp.all(reward > 0.5))):
    raise RuntimeError(f"{path}: a reference token is not legal.")
  env_s = _median_seconds(lambda: walk(prompts, answers), repeats)

  fns, params = model_lib.create_model(
      model_lib.model_config(config, task.vocab.size), seed=config.seed)
  greedy = algorithms.get_algorithm("greedy")
  state = fns.state(params)

  def decode():
    return greedy(fns.graphdef, state, task, prompts, plen,
                  jax.random.key(0), budget=1).answers

  greedy_s = _median_seconds(decode, repeats)
  return dict(tokens=num_tokens, env=env_s, greedy=greedy_s)


def main(argv):
  del argv
  problems = [(nums, 24) for _, nums in game24_splits()["test"]]
  print(f"{jax.devices()[0].platform}, batch {_BATCH.value}, "
        f"median of {_REPEATS.value}")
  print("notation | answer width (tokens) | environment ms per call | "
        "ratio | ms per token | ratio | greedy ms per call | ratio")
  base = None
  for name, path in _NOTATIONS:
    r = _measure(path, problems, _BATCH.value, _REPEATS.value)
    base = base or r
    per_token = r["env"] / r["tokens"]
    base_token = base["env"] / base["tokens"]
    print(f"{name} | {r['tokens']} | {1e3 * r['env']:.1f} | "
          f"{r['env'] / base['env']:.2f} | {1e3 * per_token:.3f} | "
          f"{per_token / base_token:.2f} | {1e3 * r['greedy']:.1f} | "
          f"{r['greedy'] / base['greedy']:.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
