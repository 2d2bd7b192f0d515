"""The step-level training pass on word problems: packed_forward over the
training search's rollouts equals a plain forward of the committed sequences
(checkpoint /tmp/wp1 step 2000).

  python experiments/word_problems/packed_check.py
"""
import jax
import jax.numpy as jnp
import numpy as np

from rollouts import training_search
from train import packing

task, fns, params, _, l, r = training_search(8)
seq, length = r.seq, r.length
start = jnp.asarray(l)[:, None] + r.offset
out, lps, vals = jax.jit(lambda pr: packing.packed_forward(fns.apply, pr, seq, length, start, r.children_actions, pad_id=task.pad_id, max_seq_len=fns.config.max_seq_len))(params)
b, L = seq.shape
pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (b, L))
plain = jax.jit(lambda pr: fns.apply(pr, seq, pos, jnp.arange(L)[None] < length[:, None]))(params)
valid = np.arange(L)[None] < np.asarray(length)[:, None]
d = np.abs(np.asarray(out.logits) - np.asarray(plain.logits)).max(-1)
print("max |packed - plain| logits on valid positions:", d[valid].max())
dv = np.abs(np.asarray(out.value) - np.asarray(plain.value))
print("max value diff:", dv[valid].max())
