"""The step-level training pass on word problems: packed_forward over the
training search's rollouts equals a plain forward of the committed sequences
(checkpoint /tmp/wp1 step 2000).

  python experiments/word_problems/packed_check.py
"""
import jax, jax.numpy as jnp, numpy as np
from train import config as config_lib, evaluate as ev, search_config, packing
import tsearch
c = config_lib.load_config_file("configs/word_problems.py")
task, fns, [(s, params)] = ev.restore(c, "/tmp/wp1", [2000])
probs = task.eval_problems(8, split="validation")
p, l = task.encode_prompts(probs)
cfg = search_config.lm_search_config(c.search, task)
r = jax.jit(lambda st, p, l, k: tsearch.rollout(fns.graphdef, st, task, p, l, k, config=cfg, num_moves=6))(fns.state(params), p, l, jax.random.key(0))
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
