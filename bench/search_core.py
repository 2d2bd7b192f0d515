"""Search-core speed and memory: tsearch vs mctx on the same toy MDP.

Both run the same cheap ``recurrent_fn`` (table lookups in a random MDP of
1000 states, tsearch through ``tsearch.from_mctx_recurrent_fn``), jitted, on
the same roots and keys. Reports simulations per second (B * num_simulations
per wall second of one call; compilation excluded, one warm-up call, then the
best of ``--repeats`` timed calls, one timed call where a call takes over 20
s) and the peak memory estimate of each compiled search from XLA's
``memory_analysis()`` (argument + output + temp bytes; on CPU there are no
device memory_stats).

  python bench/search_core.py            # (A, sims, B) in (8, 64, 256),
                                         # (64, 64, 256), (512, 256, 64)
  python bench/search_core.py --quick    # small smoke version

The last line is ``search_core speedup_vs_mctx min=<x> max=<y>`` (tsearch
sims/s over mctx sims/s, min and max over the configurations).

The 512-action row uses B=64 on both sides: on a 2-core CPU one mctx call at
B=256 takes about 20 minutes (mctx's vmapped while-loops select over the whole
``[B, N, A]`` tree at every step), too long for a warm-up plus a timed call.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import mctx

import tsearch
from tsearch._src import toy_mdp as toy

NUM_STATES = 1000
# (num_actions, num_simulations, batch) per row.
FULL = [(8, 64, 256), (64, 64, 256), (512, 256, 64)]
QUICK = [(8, 16, 32), (64, 16, 32), (128, 32, 32)]


def _functions(policy, batch, num_simulations):
  expand = tsearch.from_mctx_recurrent_fn(toy.mctx_recurrent_fn)
  states = jnp.arange(batch) % NUM_STATES

  def run_mctx(mdp, key):
    root = toy.mctx_root(mdp, states)
    fn = (mctx.muzero_policy if policy == "puct"
          else mctx.gumbel_muzero_policy)
    out = fn(mdp, key, root, toy.mctx_recurrent_fn, num_simulations)
    return out.action, out.action_weights

  def run_tsearch(mdp, key):
    root = tsearch.root_from_mctx(toy.mctx_root(mdp, states))
    fn = tsearch.puct_search if policy == "puct" else tsearch.gumbel_search
    out = fn(mdp, key, root, expand, num_simulations=num_simulations)
    return out.action, out.action_weights

  return {"mctx": run_mctx, "tsearch": run_tsearch}


def _measure(fn, mdp, key, repeats):
  compiled = jax.jit(fn).lower(mdp, key).compile()
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
          + mem.temp_size_in_bytes)
  start = time.perf_counter()
  jax.block_until_ready(compiled(mdp, key))  # Warm up (not timed).
  if time.perf_counter() - start > 20.0:  # Slow: one timed call is enough.
    repeats = 1
  best = float("inf")
  for i in range(max(repeats, 1)):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(mdp, jax.random.fold_in(key, i)))
    best = min(best, time.perf_counter() - start)
  return best, peak, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--policy", choices=["puct", "gumbel"], default="puct")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  configs = QUICK if args.quick else FULL
  print(f"search_core: policy={args.policy} "
        f"backend={jax.default_backend()} jax={jax.__version__} "
        f"mctx={mctx.__version__}")
  header = (f"{'A':>5} {'sims':>5} {'B':>4} | {'mctx sims/s':>12} {'tsearch sims/s':>15}"
            f" {'speedup':>8} | {'mctx MiB':>9} {'tsearch MiB':>12}")
  print(header)
  print("-" * len(header))
  speedups = []
  for num_actions, num_simulations, batch in configs:
    mdp = toy.make_toy_mdp(jax.random.key(num_actions), NUM_STATES,
                           num_actions)
    key = jax.random.key(0)
    fns = _functions(args.policy, batch, num_simulations)
    rates, mems = {}, {}
    for name, fn in fns.items():
      seconds, peak, _ = _measure(fn, mdp, key, args.repeats)
      rates[name] = batch * num_simulations / seconds
      mems[name] = peak / 2**20
    speedup = rates["tsearch"] / rates["mctx"]
    speedups.append(speedup)
    print(f"{num_actions:>5} {num_simulations:>5} {batch:>4} | "
          f"{rates['mctx']:>12.0f} "
          f"{rates['tsearch']:>15.0f} {speedup:>7.2f}x | "
          f"{mems['mctx']:>9.1f} {mems['tsearch']:>12.1f}", flush=True)
  print("peak memory = XLA memory_analysis() argument + output + temp bytes")
  print(f"search_core speedup_vs_mctx min={min(speedups):.2f} "
        f"max={max(speedups):.2f}")


if __name__ == "__main__":
  main()
