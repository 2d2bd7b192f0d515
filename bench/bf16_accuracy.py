"""How far bfloat16 moves a loaded model's outputs from float32.

bfloat16 end to end means parameters, activations and the KV caches (the
prompt cache and the search tree's arena) in bfloat16, with logits, values
and losses accumulated and returned in float32. This measures what that
costs in accuracy, per family, on the tiny reference checkpoints of
``tests/goldens`` (their reference batch, padded) and on a random model shaped
like Qwen2.5-0.5B (24 layers; deeper models accumulate more rounding):

* logits: max and mean absolute difference, and the same relative to the
  float32 logits' standard deviation;
* next-token agreement: how often the argmax is the same;
* KL(float32 || bfloat16) of the next-token distributions, in nats;
* greedy decoding: the first step at which 32 KV-cached greedy tokens differ
  (32 = never).

::

  python bench/bf16_accuracy.py              # goldens + the 0.5B-shaped model
  python bench/bf16_accuracy.py --skip_large

Last line, exactly::

  bf16_accuracy worst_top1_agree_pct=<a> worst_kl=<k>
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from models import hf

GOLDENS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests", "goldens")
FAMILIES = ("llama3", "qwen2", "qwen3", "gemma3")
_forward = jax.jit(models.forward, static_argnums=0)


def _greedy(graphdef, state, prompt, n):
  p, cap = len(prompt), len(prompt) + n
  out = _forward(graphdef, state, jnp.asarray([prompt]), jnp.arange(p)[None])
  pad = ((0, 0), (0, 0), (0, cap - p), (0, 0), (0, 0))
  keys, values = jnp.pad(out.keys, pad), jnp.pad(out.values, pad)
  toks = [int(jnp.argmax(out.logits[0, -1]))]
  for i in range(n - 1):
    ctx = models.KVContext(keys=keys, values=values,
                           mask=(jnp.arange(cap) < p + i)[None],
                           positions=jnp.arange(cap)[None])
    out = _forward(graphdef, state, jnp.asarray([[toks[-1]]]),
                   jnp.asarray([[p + i]]), ctx)
    keys = keys.at[:, :, p + i].set(out.keys[:, :, 0])
    values = values.at[:, :, p + i].set(out.values[:, :, 0])
    toks.append(int(jnp.argmax(out.logits[0, -1])))
  return toks


def compare(split32, split16, ids, mask, greedy_prompts, n_greedy=32):
  """Metrics of bfloat16 against float32 on one batch."""
  b, p = ids.shape
  pos = jnp.broadcast_to(jnp.arange(p), (b, p))
  a = np.asarray(_forward(*split32, ids, pos, None, jnp.asarray(mask)).logits)
  c = np.asarray(_forward(*split16, ids, pos, None, jnp.asarray(mask)).logits)
  a, c = a[mask], c[mask]
  diff = np.abs(a - c)
  la = a - a.max(-1, keepdims=True)
  la = la - np.log(np.exp(la).sum(-1, keepdims=True))
  lc = c - c.max(-1, keepdims=True)
  lc = lc - np.log(np.exp(lc).sum(-1, keepdims=True))
  kl = (np.exp(la) * (la - lc)).sum(-1)
  first = []
  for prompt in greedy_prompts:
    g32 = _greedy(*split32, prompt, n_greedy)
    g16 = _greedy(*split16, prompt, n_greedy)
    same = [x == y for x, y in zip(g32, g16)]
    first.append(same.index(False) if False in same else n_greedy)
  return dict(max_abs=float(diff.max()), mean_abs=float(diff.mean()),
              rel=float(diff.mean() / a.std()),
              top1=100.0 * float((a.argmax(-1) == c.argmax(-1)).mean()),
              kl=float(kl.mean()), greedy_first_diff=min(first))


def _split(cfg, params):
  return nnx.split(hf.to_model(cfg, params))


def golden_rows():
  rows = []
  for fam in FAMILIES:
    path = os.path.join(GOLDENS, fam)
    ref = np.load(os.path.join(path, "reference.npz"))
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    mask = np.asarray(ref["attention_mask"], bool)
    s32 = _split(*hf.load(path))
    s16 = _split(*hf.load(path, dtype="bfloat16"))
    prompts = [ref["input_ids"][r][mask[r]].tolist() for r in range(len(ids))]
    rows.append((fam, compare(s32, s16, ids, mask, prompts)))
  return rows


def large_row(layers: int):
  import sys
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from load_checkpoint import QWEN25_05B
  hf_cfg = dict(QWEN25_05B, num_hidden_layers=layers)
  cfg32 = hf.model_config(hf_cfg, max_seq_len=256)
  model = models.Transformer(cfg32, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  cfg16 = hf.model_config(hf_cfg, max_seq_len=256, dtype="bfloat16")
  params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, 151000, (2, 64)), jnp.int32)
  mask = np.ones((2, 64), bool)
  mask[1, 40:] = False
  return (f"qwen2.5-0.5B-shaped random ({layers} layers)",
          compare(_split(cfg32, params), _split(cfg16, params16), ids, mask,
                  [ids[0, :16].tolist()], n_greedy=16))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--skip_large", action="store_true")
  ap.add_argument("--layers", type=int, default=24)
  args = ap.parse_args()
  rows = golden_rows()
  if not args.skip_large:
    rows.append(large_row(args.layers))
  print(f"backend: {jax.default_backend()}")
  print(f"{'model':42s} {'max|dl|':>8s} {'mean|dl|':>9s} {'mean/std':>9s} "
        f"{'top1 %':>7s} {'KL nats':>9s} {'greedy':>7s}")
  for name, r in rows:
    print(f"{name:42s} {r['max_abs']:8.4f} {r['mean_abs']:9.5f} "
          f"{r['rel']:9.5f} {r['top1']:7.2f} {r['kl']:9.2e} "
          f"{r['greedy_first_diff']:7d}")
  print(f"bf16_accuracy worst_top1_agree_pct="
        f"{min(r['top1'] for _, r in rows):.2f} "
        f"worst_kl={max(r['kl'] for _, r in rows):.2e}")


if __name__ == "__main__":
  main()
