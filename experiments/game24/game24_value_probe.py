"""Can the Game of 24 model learn which first steps leave a solvable position?

Run (~10 min per representation on a 2-core CPU at the default 3000 steps):
  python experiments/game24/game24_value_probe.py --steps 3000 --layers 3

A value-only probe, side by side in one run: a fresh model of the
``configs/game24_plain.py`` size (``--layers`` to change the depth) is trained on
the value head alone, on 3-number positions only (a training puzzle with
its numbers shuffled, one of its legal first steps, and whether the numbers
left can still make 24, as the exact solver decides), with two ways of
writing the position:

* ``step``: the task's own text, ``prompt + "a op b = c\\n"`` (the model
  must work out which numbers are left);
* ``left``: the same followed by the numbers left, sorted
  (``prompt + "a op b = c x y z\\n"``), so the position is written out.

Every legal first step of three shuffles of each of the 1,162 training
puzzles is the pool the batches draw from (64 rows a step, AdamW, warmup
cosine 2e-3 -> 2e-4, the warm start's optimiser). Prints the value head's
AUC on 3-number positions (every legal first step of 100 training puzzles
and of the 100 test puzzles; 0.5 is chance) for each representation and
their ratio. If the training AUC stays low the model cannot fit the
function at this size and budget, whatever the data; if ``left`` is far
above ``step`` the task's notation is what stands in the way.
"""
from __future__ import annotations

import time
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

import models
import tsearch
from tsearch.tasks import countdown_solver
from tsearch.tasks import countdown as cd
from tsearch.tasks import game24_splits

_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per probe.")
_LAYERS = flags.DEFINE_integer("layers", 3, "Decoder layers.")
_MODES = flags.DEFINE_list("modes", ["step", "left"], "Representations.")
_WIDTH = 64
_TARGET = Fraction(24)


def _row(task, numbers, step_text, left, mode):
  """Tokens of one 3-number position and whether it can still make 24."""
  text = task.prompt_text((numbers, 24)) + step_text
  if mode == "left":
    text += " " + " ".join(cd.format_number(x) for x in sorted(left))
  label = countdown_solver.solvable(tuple(sorted(left)), _TARGET)
  return task.encode(text) + [task.step_delimiter], label


def _arrays(task, rows):
  tokens = np.full((len(rows), _WIDTH), task.pad_id, np.int32)
  for r, (seq, _) in enumerate(rows):
    tokens[r, :len(seq)] = seq
  lengths = np.array([len(seq) for seq, _ in rows], np.int32)
  return tokens, lengths, np.array([y for _, y in rows], np.float32)


def _first_steps(task, numbers, mode):
  pool = [Fraction(x) for x in numbers]
  return [_row(task, numbers, t, left, mode)
          for t, left in countdown_solver.step_candidates(pool)]


def probe(mode: str, *, steps: int, layers: int, seed: int = 0) -> dict:
  """Trains one value-only model; ``{split: AUC}`` on 3-number positions."""
  task = tsearch.get_task("game24")
  splits = game24_splits()
  rng = np.random.default_rng(seed)
  rows = []
  for _, numbers in splits["train"]:
    for _ in range(3):
      shuffled = tuple(int(x) for x in rng.permutation(numbers))
      rows += _first_steps(task, shuffled, mode)
  tokens, lengths, labels = _arrays(task, rows)
  config = models.ModelConfig(
      vocab_size=task.vocab.size, num_layers=layers, d_model=128,
      num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384,
      max_seq_len=_WIDTH)
  graphdef, state = nnx.split(models.Transformer(config,
                                                 rngs=nnx.Rngs(seed)))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, 2e-3, min(100, steps // 2), steps, 2e-4)
  optimizer = optax.adamw(schedule, weight_decay=0.01)
  opt_state = optimizer.init(state)

  def values(state, tokens, lengths):
    out = models.forward(
        graphdef, state, tokens, jnp.broadcast_to(jnp.arange(_WIDTH),
                                                  tokens.shape),
        token_mask=jnp.arange(_WIDTH)[None] < lengths[:, None])
    return out.value[jnp.arange(tokens.shape[0]), lengths - 1]

  @jax.jit
  def update(state, opt_state, tokens, lengths, labels):
    loss, grads = jax.value_and_grad(lambda s: jnp.mean(
        (values(s, tokens, lengths) - labels) ** 2))(state)
    updates, opt_state = optimizer.update(grads, opt_state, state)
    return optax.apply_updates(state, updates), opt_state, loss

  start = time.time()
  for step in range(steps):
    pick = rng.integers(len(rows), size=64)
    state, opt_state, loss = update(state, opt_state, tokens[pick],
                                    lengths[pick], labels[pick])
    if step % 500 == 0 or step == steps - 1:
      print(f"  {mode} step {step}: loss {float(loss):.4f} "
            f"({time.time() - start:.0f} s)", flush=True)
  evaluate = jax.jit(values)
  out = {}
  for split in ("train", "test"):
    puzzles = splits[split][::11][:100] if split == "train" else splits[split]
    ys, vs = [], []
    for _, numbers in puzzles:
      t, l, y = _arrays(task, _first_steps(task, numbers, mode))
      vs += list(np.asarray(evaluate(state, jnp.asarray(t), jnp.asarray(l))))
      ys += list(y)
    out[split] = countdown_solver.ranking_auc(ys, vs)
  return out


def main(argv):
  del argv
  results = {m: probe(m, steps=_STEPS.value, layers=_LAYERS.value)
             for m in _MODES.value}
  print(f"value AUC on 3-number positions after {_STEPS.value} steps, "
        f"{_LAYERS.value} layers")
  print("representation | train | test")
  for m, r in results.items():
    print(f"{m} | {r['train']:.3f} | {r['test']:.3f}")
  if "step" in results and "left" in results:
    for split in ("train", "test"):
      print(f"left / step AUC above chance, {split}: "
            f"{(results['left'][split] - 0.5) / max(results['step'][split] - 0.5, 1e-9):.2f}")


if __name__ == "__main__":
  app.run(main)
