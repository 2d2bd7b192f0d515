"""Several leaves per tree per model call: token- and step-level LM search
at B in {4, 16} trees and L in {1, 4, 8} leaves per step, side by side.

Run:  .venv/bin/python bench/lm_scale.py            (4-layer d_model=256)
      .venv/bin/python bench/lm_scale.py --reduced  (step level, B=4, L=1 and
                                                     8, and the paged row)
      .venv/bin/python bench/lm_scale.py --quick    (smoke test)

Model and environment as bench/lm_search.py (every token but 0 legal,
nothing ends; a step ends at token 1 or after S tokens). For each configuration: simulations per second, model
FLOP/s as a percentage of a jitted float32 matmul measured in the same run
(MFU), and the tree KV arena's use: key/value slots holding a token against
slots reserved (capacity x step length per tree). The step-level search at
B=4 and the largest L also runs with the paged arena (``LMSearchConfig.
page_size`` = S / 4, the default pool of capacity x S / page_size pages,
the slab's slots); its arena use is the pages in use over the pages of the
pool (token slots of the pages handed out over the pool's). The last line is

  lm_scale speedup_vs_one_leaf=<x> mfu_pct=<m> arena_used_over_reserved=<u>

x: step-level sims/s at B=4, L=8 over B=4, L=1; m: the best MFU; u: the
paged step-level search's arena use at B=4, L=8.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
import models  # noqa: E402
import tsearch  # noqa: E402
from bench.lm_search import MODEL, OpenEnv, matmul_flops_per_s, timed  # noqa: E402


def run(g, s, env, cfg, *, mode, b, leaves, sims, k, step_length, prompt_len,
        max_depth, page_size=0):
  config = tsearch.LMSearchConfig(
      mode=mode, policy="puct", num_simulations=sims, num_children=k,
      step_length=step_length, max_depth=max_depth, leaves_per_step=leaves,
      page_size=page_size)
  prompt = jax.random.randint(jax.random.key(prompt_len), (b, prompt_len), 1,
                              cfg.vocab_size)
  lengths = jnp.full((b,), prompt_len, jnp.int32)
  fn = jax.jit(lambda st, p, l, key: tsearch.lm_search(
      g, st, env, p, l, key, config=config))
  out, dt = timed(fn, s, prompt, lengths, jax.random.key(0))
  tree = out.search_tree
  # Tokens held by the nodes' K/V slots (a node holds the step that led to
  # it; the root holds none) against the arena's reserved slots.
  nodes = np.asarray(tree.num_nodes)
  held = int(np.sum(tsearch.kv_arena.tokens_held(tree)))
  reserved = b * tree.capacity * step_length
  used = held / reserved
  if page_size:  # pages handed out over the pool's pages
    assert not np.asarray(tree.overflowed).any()
    used = (float(np.sum(tsearch.kv_arena.pages_in_use(tree)))
            / (b * config.pages_per_tree))
  tokens = float(np.sum(out.tokens_forwarded))
  depth = int(np.asarray(tree.node_depth).max())
  flops = tokens * cfg.flops_per_token(prompt_len + depth * step_length // 2)
  return dict(dt=dt, sims_per_s=b * sims / dt, flops=flops,
              used=used, held=held / reserved, nodes=float(nodes.mean()))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny smoke run")
  ap.add_argument("--reduced", action="store_true",
                  help="only the rows the last line reads: step level, "
                       "B=4, the smallest and largest L, and the paged row")
  args = ap.parse_args(argv)
  if args.quick:
    sims, k, prompt_len, batches, leaves = 8, 4, 16, (4,), (1, 4)
    cfg = models.ModelConfig(vocab_size=64, num_layers=1, d_model=32,
                             num_heads=4, num_kv_heads=1, head_dim=8,
                             mlp_dim=64, max_seq_len=256)
  else:
    sims, k, prompt_len, batches, leaves = 64, 8, 64, (4, 16), (1, 4, 8)
    cfg = MODEL
  g, s = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
  # Steps end at token 1 (rare under the random model: steps of about S
  # tokens) or after S tokens.
  env = OpenEnv(cfg.vocab_size, step_delimiter=1)
  peak = matmul_flops_per_s()
  print(f"device={jax.devices()[0].device_kind} jax={jax.__version__} "
        f"sims={sims} K={k} prompt={prompt_len} model: L={cfg.num_layers} "
        f"D={cfg.d_model} V={cfg.vocab_size}; float32 matmul "
        f"{peak / 1e9:.1f} GFLOP/s")
  print(f"{'mode':<6} {'B':>3} {'L':>3} {'sims/s':>9} {'vs L=1':>7} "
        f"{'mfu %':>7} {'arena used':>11}")
  modes = {"token": dict(step_length=1, max_depth=16),
           "step": dict(step_length=4 if args.quick else 8, max_depth=8)}
  if args.reduced:
    del modes["token"]
    batches, leaves = batches[:1], (leaves[0], leaves[-1])
  results = {}
  for mode, kw in modes.items():
    for b in batches:
      for l in leaves:
        r = run(g, s, env, cfg, mode=mode, b=b, leaves=l, sims=sims, k=k,
                prompt_len=prompt_len, **kw)
        r["mfu"] = 100 * r["flops"] / r["dt"] / peak
        results[mode, b, l] = r
        base = results[mode, b, leaves[0]]["sims_per_s"]
        print(f"{mode:<6} {b:>3} {l:>3} {r['sims_per_s']:>9.1f} "
              f"{r['sims_per_s'] / base:>7.2f} {r['mfu']:>7.2f} "
              f"{r['used']:>11.2f}", flush=True)
  # The paged arena, step level at B=4 and the largest L.
  b0, lmax = batches[0], leaves[-1]
  kw = modes["step"]
  r = run(g, s, env, cfg, mode="step", b=b0, leaves=lmax, sims=sims, k=k,
          prompt_len=prompt_len, page_size=kw["step_length"] // 4, **kw)
  r["mfu"] = 100 * r["flops"] / r["dt"] / peak
  results["paged", b0, lmax] = r
  base = results["step", b0, lmax]["sims_per_s"]
  print(f"{'paged':<6} {b0:>3} {lmax:>3} {r['sims_per_s']:>9.1f} "
        f"{r['sims_per_s'] / base:>7.2f} {r['mfu']:>7.2f} "
        f"{r['used']:>11.2f}   (vs L={lmax} slab; pages: "
        f"{kw['step_length'] // 4} tokens; tokens held / pool slots "
        f"{r['held']:.2f})", flush=True)
  # A shared machine: the best matmul rate seen keeps MFU from being
  # inflated by one slow reference measurement.
  end = matmul_flops_per_s()
  if end > peak:
    for r in results.values():
      r["mfu"] *= peak / end
    print(f"float32 matmul at the end: {end / 1e9:.1f} GFLOP/s; MFU "
          "rescaled to it")
  x = (results["step", b0, lmax]["sims_per_s"]
       / results["step", b0, leaves[0]]["sims_per_s"])
  m = max(r["mfu"] for r in results.values())
  u = results["paged", b0, lmax]["used"]
  print(f"lm_scale speedup_vs_one_leaf={x:.2f} mfu_pct={m:.2f} "
        f"arena_used_over_reserved={u:.2f}")


if __name__ == "__main__":
  main()
