"""Token-level MCTS over a language model: tsearch (tree = KV cache) vs baselines.

Run:  .venv/bin/python bench/lm_search.py            (full: B=16, 64 sims)
      .venv/bin/python bench/lm_search.py --quick    (smoke test, seconds)

Methods, all PUCT over the top-K legal next tokens, values from the value head:
  tsearch     tsearch.lm_search: each node stores only its own token's K/V;
              an expansion attends prompt cache + ancestors gathered by parent
              pointers.
  mctx_kv     mctx.muzero_policy whose embedding is the full KV cache of the
              node's prefix (every node holds a copy of its whole context).
  mctx_recomp mctx.muzero_policy whose recurrent_fn re-encodes the whole prefix
              (no cache; embedding = token ids).
  pyloop      Python MCTS over Python nodes calling a jitted model one node at
              a time, re-encoding the prefix (how most LLM-search code works);
              run on a subset of rows and reported per simulation.
Reports simulations/s, tokens forwarded per problem, memory, and model FLOP/s
as a percentage of a jitted float32 matmul measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import chex
import jax
import jax.numpy as jnp
import mctx
import numpy as np
from flax import nnx

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
import models  # noqa: E402
import tsearch  # noqa: E402

_NEG = -1e30

# The benchmark model (random weights): 4 layers, d_model 256, 1 KV head;
# bench/lm_scale.py and experiments/scale/profile_ops.py use it too.
MODEL = models.ModelConfig(vocab_size=256, num_layers=4, d_model=256,
                           num_heads=4, num_kv_heads=1, head_dim=64,
                           mlp_dim=1024, max_seq_len=512)


@chex.dataclass(frozen=True)
class _State:
  length: chex.Array  # [B]


@dataclasses.dataclass(frozen=True)
class OpenEnv:
  """Every token but 0 is legal; nothing ends (pure search throughput)."""
  vocab_size: int
  eos_id: int = -2
  step_delimiter: int = -1

  def init_state(self, prompt_tokens):
    return _State(length=jnp.zeros(prompt_tokens.shape[:1], jnp.int32))

  def step(self, state, token):
    return _State(length=state.length + 1)

  def legal_mask(self, state):
    return jnp.broadcast_to(jnp.arange(self.vocab_size) != 0,
                            state.length.shape + (self.vocab_size,))

  def is_terminal(self, state):
    return jnp.zeros(state.length.shape, bool)

  def reward(self, state):
    return jnp.zeros(state.length.shape, jnp.float32)

  def discount(self, state):
    return jnp.ones(state.length.shape, jnp.float32)


def top_k_children(logits, k):
  masked = logits.at[..., 0].set(_NEG)
  return jax.lax.top_k(masked, k)  # prior logits, tokens


def timed(fn, *args, repeats=1):
  out = jax.block_until_ready(fn(*args))  # compile + warm up
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = jax.block_until_ready(fn(*args))
  return out, (time.perf_counter() - t0) / repeats


def compiled_bytes(fn, *args) -> int:
  try:
    m = fn.lower(*args).compile().memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes
               + m.output_size_in_bytes)
  except Exception:  # noqa: BLE001  (not every backend reports it)
    return -1


def matmul_flops_per_s(n=1024, repeats=5, trials=3) -> float:
  """Best of ``trials`` timings of a jitted float32 ``n x n`` matmul."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  best = min(timed(f, a, repeats=repeats)[1] for _ in range(trials))
  return 2 * n ** 3 / best


def run_tsearch(g, s, env, prompt, lengths, sims, k, max_depth, leaves=1):
  config = tsearch.LMSearchConfig(mode="token", policy="puct",
                                  num_simulations=sims, num_children=k,
                                  max_depth=max_depth,
                                  leaves_per_step=leaves)
  fn = jax.jit(lambda st, p, l, key: tsearch.lm_search(
      g, st, env, p, l, key, config=config))
  out, dt = timed(fn, s, prompt, lengths, jax.random.key(0))
  tree_bytes = (tsearch.kv_arena.arena_bytes(out.search_tree)
                + tsearch.kv_arena.prompt_cache_bytes(out.prompt_cache))
  peak = compiled_bytes(fn, s, prompt, lengths, jax.random.key(0))
  return dict(dt=dt, tokens=float(np.mean(out.tokens_forwarded)),
              tree_bytes=tree_bytes, peak=peak,
              depth=int(out.search_tree.node_depth.max()))


def _root(g, s, prompt, lengths, k, cache_len):
  b, p = prompt.shape
  pos = jnp.broadcast_to(jnp.arange(p), (b, p))
  valid = pos < lengths[:, None]
  out = models.forward(g, s, prompt, pos, token_mask=valid)
  rows = jnp.arange(b)
  logits = out.logits[rows, lengths - 1]
  prior, toks = top_k_children(logits, k)
  return out, prior, toks, out.value[rows, lengths - 1], valid


def run_mctx_kv(g, s, prompt, lengths, sims, k, cache_len):
  """mctx; embedding = the node's full KV cache (prefix copy per node)."""
  b, p = prompt.shape
  pad = ((0, 0), (0, 0), (0, cache_len - p), (0, 0), (0, 0))

  def recurrent_fn(params, key, action, emb):
    tok = emb["child_tokens"][jnp.arange(b), action]
    # mctx embeddings are batch-first: [B, L, C, Hkv, Dh].
    ctx = models.KVContext(keys=jnp.moveaxis(emb["keys"], 1, 0),
                           values=jnp.moveaxis(emb["values"], 1, 0),
                           mask=jnp.arange(cache_len)[None] < emb["length"][:, None])
    ctx = ctx.replace(mask=ctx.mask & emb["valid"])
    out = models.forward(g, params, tok[:, None], emb["pos"][:, None], ctx)
    slot = emb["length"]
    rows = jnp.arange(b)
    keys = emb["keys"].at[rows, :, slot].set(jnp.moveaxis(out.keys[:, :, 0], 0, 1))
    values = emb["values"].at[rows, :, slot].set(
        jnp.moveaxis(out.values[:, :, 0], 0, 1))
    prior, toks = top_k_children(out.logits[:, 0], k)
    new = dict(keys=keys, values=values, length=slot + 1, pos=emb["pos"] + 1,
               valid=emb["valid"].at[rows, slot].set(True), child_tokens=toks)
    return mctx.RecurrentFnOutput(
        reward=jnp.zeros((b,)), discount=jnp.ones((b,)), prior_logits=prior,
        value=out.value[:, 0]), new

  def search(params, prompt, lengths, key):
    out, prior, toks, value, valid = _root(g, params, prompt, lengths, k,
                                           cache_len)
    emb = dict(keys=jnp.moveaxis(jnp.pad(out.keys, pad), 0, 1),
               values=jnp.moveaxis(jnp.pad(out.values, pad), 0, 1),
               length=jnp.full((b,), p, jnp.int32), pos=lengths,
               valid=jnp.pad(valid, ((0, 0), (0, cache_len - p))),
               child_tokens=toks)
    root = mctx.RootFnOutput(prior_logits=prior, value=value, embedding=emb)
    po = mctx.muzero_policy(params, key, root, recurrent_fn,
                            num_simulations=sims)
    return po.search_tree.embeddings

  fn = jax.jit(search)
  embs, dt = timed(fn, s, prompt, lengths, jax.random.key(0))
  tree_bytes = int(embs["keys"].nbytes + embs["values"].nbytes)
  peak = compiled_bytes(fn, s, prompt, lengths, jax.random.key(0))
  return dict(dt=dt, tokens=float(p + sims), tree_bytes=tree_bytes, peak=peak)


def run_mctx_recompute(g, s, prompt, lengths, sims, k, cache_len):
  """mctx; recurrent_fn re-encodes the whole prefix each time (no cache)."""
  b, p = prompt.shape
  pos_all = jnp.broadcast_to(jnp.arange(cache_len), (b, cache_len))

  def recurrent_fn(params, key, action, emb):
    rows = jnp.arange(b)
    tok = emb["child_tokens"][rows, action]
    seq = emb["tokens"].at[rows, emb["length"]].set(tok)
    length = emb["length"] + 1
    out = models.forward(g, params, seq, pos_all,
                         token_mask=pos_all < length[:, None])
    logits = out.logits[rows, length - 1]
    prior, toks = top_k_children(logits, k)
    return mctx.RecurrentFnOutput(
        reward=jnp.zeros((b,)), discount=jnp.ones((b,)), prior_logits=prior,
        value=out.value[rows, length - 1]), dict(tokens=seq, length=length,
                                                  child_tokens=toks)

  def search(params, prompt, lengths, key):
    _, prior, toks, value, _ = _root(g, params, prompt, lengths, k, cache_len)
    # Right-padded prompt: the prefix is tokens[:length] (positions 0..len-1).
    seq = jnp.pad(prompt, ((0, 0), (0, cache_len - p)))
    emb = dict(tokens=seq, length=lengths, child_tokens=toks)
    root = mctx.RootFnOutput(prior_logits=prior, value=value, embedding=emb)
    po = mctx.muzero_policy(params, key, root, recurrent_fn,
                            num_simulations=sims)
    return po.search_tree.node_visits

  fn = jax.jit(search)
  _, dt = timed(fn, s, prompt, lengths, jax.random.key(0))
  peak = compiled_bytes(fn, s, prompt, lengths, jax.random.key(0))
  return dict(dt=dt, tokens=float(p + sims * cache_len), tree_bytes=0,
              peak=peak)


class _Node:
  __slots__ = ("tokens", "prior", "children", "visits", "value_sum", "value")

  def __init__(self, tokens, prior, value):
    self.tokens, self.prior, self.value = tokens, prior, value
    self.children = {}
    self.visits, self.value_sum = 1, value


def run_pyloop(g, s, prompt, lengths, sims, k, cache_len, rows):
  """Python MCTS, one jitted model call per node, prefix re-encoded."""
  fwd = jax.jit(lambda st, x, n: models.forward(
      g, st, x, jnp.arange(cache_len)[None],
      token_mask=(jnp.arange(cache_len) < n)[None]))

  def evaluate(tokens):
    x = np.zeros((1, cache_len), np.int32)
    x[0, :len(tokens)] = tokens
    out = fwd(s, jnp.asarray(x), len(tokens))
    logits = np.array(out.logits[0, len(tokens) - 1])
    logits[0] = _NEG
    top = np.argsort(-logits)[:k]
    z = logits[top] - logits[top].max()
    prior = np.exp(z) / np.exp(z).sum()
    return dict(zip(top.tolist(), prior.tolist())), float(out.value[0, len(tokens) - 1])

  evaluate(list(np.asarray(prompt[0, :lengths[0]])))  # compile
  t0 = time.perf_counter()
  for b in range(rows):
    prior, value = evaluate(list(np.asarray(prompt[b, :lengths[b]])))
    root = _Node(list(np.asarray(prompt[b, :lengths[b]])), prior, value)
    for _ in range(sims):
      node, path = root, [root]
      while True:
        best, best_score = None, -math.inf
        for tok, p in node.prior.items():
          child = node.children.get(tok)
          q = child.value_sum / child.visits if child else 0.0
          n = child.visits if child else 0
          score = q + 1.25 * p * math.sqrt(node.visits) / (1 + n)
          if score > best_score:
            best, best_score = tok, score
        if best in node.children:
          node = node.children[best]
          path.append(node)
          continue
        pr, v = evaluate(node.tokens + [best])
        child = _Node(node.tokens + [best], pr, v)
        node.children[best] = child
        break
      for n in path:
        n.visits += 1
        n.value_sum += v
  dt = (time.perf_counter() - t0) / rows * prompt.shape[0]  # per full batch
  # (rows == B by default: every row is run, nothing extrapolated)
  return dict(dt=dt, tokens=float(prompt.shape[1] + sims * cache_len),
              tree_bytes=0, peak=-1)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny smoke run")
  ap.add_argument("--pyloop_rows", type=int, default=0,
                  help="rows the Python loop runs (0: all B)")
  args = ap.parse_args(argv)
  if args.quick:
    b, sims, k, prompt_lens, py_rows = 2, 8, 4, (16, 32), 2
    cfg = models.ModelConfig(vocab_size=64, num_layers=2, d_model=32,
                             num_heads=4, num_kv_heads=1, head_dim=8,
                             mlp_dim=64, max_seq_len=128)
  else:
    b, sims, k, prompt_lens, py_rows = 16, 64, 8, (64, 256), 16
    cfg = MODEL
  py_rows = args.pyloop_rows or py_rows
  g, s = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
  env = OpenEnv(cfg.vocab_size)
  peak_flops = matmul_flops_per_s()
  print(f"device={jax.devices()[0].device_kind} jax={jax.__version__} "
        f"B={b} sims={sims} K={k} model: L={cfg.num_layers} D={cfg.d_model} "
        f"H={cfg.num_heads} Hkv={cfg.num_kv_heads} Dh={cfg.head_dim} "
        f"V={cfg.vocab_size}; float32 matmul {peak_flops / 1e9:.1f} GFLOP/s")
  results = {}
  for p in prompt_lens:
    prompt = jax.random.randint(jax.random.key(p), (b, p), 1, cfg.vocab_size)
    lengths = jnp.full((b,), p, jnp.int32)
    cache_len = p + sims + 1
    res = {
        "tsearch": run_tsearch(g, s, env, prompt, lengths, sims, k,
                               max_depth=sims),
        # Several leaves per model call (search.leaves_per_step).
        "tsearch_L4": run_tsearch(g, s, env, prompt, lengths, sims, k,
                                  max_depth=sims, leaves=4),
        "mctx_kv": run_mctx_kv(g, s, prompt, lengths, sims, k, cache_len),
        "mctx_recomp": run_mctx_recompute(g, s, prompt, lengths, sims, k,
                                          cache_len),
        "pyloop": run_pyloop(g, s, prompt, lengths, sims, k, cache_len,
                             py_rows),
    }
    for name, r in res.items():
      r["sims_per_s"] = b * sims / r["dt"]
      # FLOPs: prefill + one token per simulation attending ~p + depth keys
      # for the cached methods; full prefix re-encodes for the others.
      if name.startswith("tsearch") or name == "mctx_kv":
        flops = b * (p * cfg.flops_per_token(p // 2)
                     + sims * cfg.flops_per_token(p + sims // 2))
      else:
        flops = b * (p * cfg.flops_per_token(p // 2)
                     + sims * cache_len * cfg.flops_per_token(cache_len // 2))
      r["flops"] = flops
    results[p] = res
  # The machine is shared: the best matmul rate seen (start or end) is the
  # reference of both the table and the last line, so that MFU is not
  # inflated by one slow reference measurement.
  end_flops = matmul_flops_per_s()
  reference = max(peak_flops, end_flops)
  print(f"float32 matmul at the end: {end_flops / 1e9:.1f} GFLOP/s; MFU "
        f"against {reference / 1e9:.1f} GFLOP/s")
  print(f"{'P':>4} {'method':<12} {'sims/s':>9} {'tok/problem':>12} "
        f"{'tree MB':>9} {'peak MB':>9} {'mfu %':>7}")
  for p, res in results.items():
    for name, r in res.items():
      r["mfu"] = 100 * r["flops"] / r["dt"] / reference
      print(f"{p:>4} {name:<12} {r['sims_per_s']:>9.1f} {r['tokens']:>12.0f} "
            f"{r['tree_bytes'] / 2**20:>9.2f} {r['peak'] / 2**20:>9.1f} "
            f"{r['mfu']:>7.2f}")
  last = results[prompt_lens[-1]]
  best = max(("tsearch", "tsearch_L4"), key=lambda n: last[n]["sims_per_s"])
  x = last[best]["sims_per_s"] / last["mctx_recomp"]["sims_per_s"]
  y = last[best]["sims_per_s"] / last["pyloop"]["sims_per_s"]
  w = last[best]["sims_per_s"] / last["mctx_kv"]["sims_per_s"]
  z = last["tsearch"]["tree_bytes"] / last["mctx_kv"]["tree_bytes"]
  m = last[best]["mfu"]
  print(f"best tsearch arm: {best}")
  print(f"lm_search speedup_vs_recompute={x:.1f} speedup_vs_pyloop={y:.1f} "
        f"speedup_vs_mctx_kv={w:.1f} memory_vs_kv_copy={z:.4f} "
        f"mfu_pct={m:.2f}")


if __name__ == "__main__":
  main()
