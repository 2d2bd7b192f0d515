"""Where a step-level LM search spends its time, by XLA op kind.

Runs the search of ``bench/lm_scale.py`` (4-layer d_model=256 model, or a
1-layer d_model=16 one with ``--size tiny``: the tree and sampling work with
almost no model) at one B and L under ``jax.profiler.trace`` and sums the
trace's leaf ops by name (numbers stripped), so the matmul share
(``ynn_fusion`` on CPU, ``*gemm*``/``cutlass*`` kernels on GPU) can be read
against the rest.

  python experiments/scale/profile_ops.py --batch 4 --leaves 8 [--size tiny]
  python experiments/scale/profile_ops.py --mode token --batch 16 --prompt 256
      (the tsearch arm of bench/lm_search.py)
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, __file__.rsplit("/experiments/", 1)[0])
import models  # noqa: E402
import tsearch  # noqa: E402
from bench.lm_search import MODEL, OpenEnv, timed  # noqa: E402

SIZES = {
    "tiny": models.ModelConfig(vocab_size=256, num_layers=1, d_model=16,
                               num_heads=1, num_kv_heads=1, head_dim=16,
                               mlp_dim=16, max_seq_len=512),
    "big": MODEL,
}
# Containers whose time is their children's.
_NESTED = ("$", "Thunk", "while", "Slinky", "conditional", "call")


def op_times(trace_dir: str) -> collections.Counter:
  """Microseconds per leaf-op kind in the trace written under trace_dir."""
  path = glob.glob(trace_dir + "/**/*.trace.json.gz", recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  times = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_NESTED):
      times[re.sub(r"[.\d]+$", "", e["name"])] += e["dur"]
  return times


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--leaves", type=int, default=1)
  ap.add_argument("--size", choices=sorted(SIZES), default="big")
  ap.add_argument("--mode", choices=("step", "token"), default="step")
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--top", type=int, default=8)
  args = ap.parse_args(argv)
  cfg = SIZES[args.size]
  g, s = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
  env = OpenEnv(cfg.vocab_size, step_delimiter=1)
  # Step level as bench/lm_scale.py; token level as bench/lm_search.py.
  shape = (dict(step_length=8, max_depth=8) if args.mode == "step"
           else dict(step_length=1, max_depth=64))
  config = tsearch.LMSearchConfig(
      mode=args.mode, policy="puct", num_simulations=64, num_children=8,
      leaves_per_step=args.leaves, **shape)
  prompt = jax.random.randint(jax.random.key(args.prompt),
                              (args.batch, args.prompt), 1, cfg.vocab_size)
  lengths = jnp.full((args.batch,), args.prompt, jnp.int32)
  fn = jax.jit(lambda st, p, n, key: tsearch.lm_search(
      g, st, env, p, n, key, config=config))
  _, dt = timed(fn, s, prompt, lengths, jax.random.key(0))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      jax.block_until_ready(fn(s, prompt, lengths, jax.random.key(0)))
    times = op_times(d)
  total = sum(times.values())
  print(f"{args.mode} level, prompt {args.prompt}, size={args.size} "
        f"B={args.batch} L={args.leaves}: {dt:.2f} s, "
        f"{args.batch * 64 / dt:.1f} sims/s; traced ops {total / 1e6:.2f} s")
  for name, t in times.most_common(args.top):
    print(f"  {t / 1e3:9.1f} ms {100 * t / total:5.1f}%  {name}")


if __name__ == "__main__":
  main()
