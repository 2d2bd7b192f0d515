"""LM search: every node's logits/value equal a plain forward over its prefix."""
import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import tsearch
from tsearch._src import lm_search as lm
from tests.lm_toy_env import ToyEnv

ENV = ToyEnv(vocab_size=16, max_len=10)
_fwd = jax.jit(models.forward)


def make_model(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
               vocab_size=20, tie=False, seed=0):
  cfg = models.ModelConfig(
      vocab_size=vocab_size, num_layers=num_layers, d_model=32,
      num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
      mlp_dim=40, max_seq_len=48, tie_embeddings=tie)
  return nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(seed)))


def prompts(b=2, p=6, seed=1):
  toks = jax.random.randint(jax.random.key(seed), (b, p), 3, 16)
  lengths = jnp.array([p, p - 2, 3, p - 1][:b])
  return toks, lengths


def node_sequences(tree, prompt, lengths, committed=None):
  """Python reference: prompt + committed + the tokens on each node's path."""
  t = jax.device_get(tree)
  seqs = []
  for b in range(t.batch_size):
    head = list(np.asarray(prompt[b, :lengths[b]]))
    head += list(committed[b]) if committed is not None else []
    for n in range(int(t.num_nodes[b])):
      toks, m = [], n
      while t.parents[b, m] >= 0:
        p, a = t.parents[b, m], t.action_from_parent[b, m]
        toks = [int(x) for x in t.children_actions[b, p, a] if x >= 0] + toks
        m = p
      seqs.append((b, n, head + toks))
  return seqs


def assert_tree_exact(graphdef, state, tree, prompt, lengths, committed=None,
                      mode="token"):
  seqs = node_sequences(tree, prompt, lengths, committed)
  width = 48
  batch = np.zeros((len(seqs), width), np.int32)
  for i, (_, _, seq) in enumerate(seqs):
    batch[i, :len(seq)] = seq
  out = _fwd(graphdef, state, jnp.asarray(batch),
             jnp.broadcast_to(jnp.arange(width), batch.shape))
  emb = tree.embeddings
  worst_logit = worst_value = 0.0
  for i, (b, n, seq) in enumerate(seqs):
    ref_logits = np.asarray(out.logits[i, len(seq) - 1])
    worst_logit = max(worst_logit, np.abs(
        np.asarray(emb["logits"][b, n]) - ref_logits).max())
    if not tree.node_terminal[b, n]:
      worst_value = max(worst_value, abs(
          float(tree.raw_values[b, n]) - float(out.value[i, len(seq) - 1])))
      if mode == "token" and n > 0:
        # Priors are the logits of the child tokens (the search mixes noise
        # into the root's).
        legal = np.asarray(tree.children_mask[b, n])
        ids = np.asarray(tree.children_actions[b, n, :, 0])
        np.testing.assert_allclose(
            np.asarray(tree.children_prior_logits[b, n])[legal],
            ref_logits[ids][legal], atol=1e-4)
  assert worst_logit <= 1e-4, worst_logit
  assert worst_value <= 1e-4, worst_value
  if mode == "step":
    assert_step_priors(graphdef, state, tree, seqs, lengths, committed)
  return len(seqs)


def assert_step_priors(graphdef, state, tree, seqs, lengths, committed):
  """A sampled step's prior is the sum of its tokens' log-probs under the
  legal-masked policy (ToyEnv: no PAD, no repeat of the previous answer
  token), recomputed by a full forward over prefix + step."""
  rows, want = [], []
  for b, n, seq in seqs:
    if tree.node_terminal[b, n] or n == 0:  # the search may noise roots
      continue
    head = int(lengths[b])  # the answer starts after the prompt
    for k in np.nonzero(np.asarray(tree.children_mask[b, n]))[0]:
      step = [int(x) for x in tree.children_actions[b, n, k] if x >= 0]
      rows.append(seq + step)
      want.append((b, n, k, len(seq), step, seq[head:]))
  if not rows:
    return
  batch = np.zeros((len(rows), 48), np.int32)
  for i, r in enumerate(rows):
    batch[i, :len(r)] = r
  out = _fwd(graphdef, state, jnp.asarray(batch),
             jnp.broadcast_to(jnp.arange(48), batch.shape))
  logits = np.asarray(out.logits)
  for i, (b, n, k, start, step, answer) in enumerate(want):
    total = 0.0
    for j, tok in enumerate(step):
      ans = answer + step[:j]
      legal = np.arange(ENV.vocab_size) != 0
      if ans:
        legal &= np.arange(ENV.vocab_size) != ans[-1]
      x = logits[i, start + j - 1, :ENV.vocab_size]
      x = np.where(legal, x, -np.inf)
      total += x[tok] - (x.max() + np.log(np.exp(x - x.max()).sum()))
    np.testing.assert_allclose(float(tree.children_prior_logits[b, n, k]),
                               total, atol=1e-4)


CASES = [
    # (model kwargs, mode, policy, step_length, answer length of the env)
    (dict(num_layers=1, num_heads=2, num_kv_heads=1), "token", "puct", 1, 2),
    (dict(num_layers=1, num_heads=4, num_kv_heads=2, tie=True), "token",
     "gumbel", 1, 10),
    (dict(num_layers=1, num_heads=4, num_kv_heads=4), "step", "puct", 3, 10),
]


@pytest.mark.parametrize("model_kw,mode,policy,s,max_len", CASES)
def test_search_matches_full_forward(model_kw, mode, policy, s, max_len):
  g, st = make_model(**model_kw)
  env = ToyEnv(vocab_size=16, max_len=max_len)
  prompt, lengths = prompts()
  config = tsearch.LMSearchConfig(
      mode=mode, policy=policy, num_simulations=10, num_children=3,
      step_length=s, max_depth=4, keep_logits=True)
  out = tsearch.lm_search(g, st, env, prompt, lengths, jax.random.key(3),
                          config=config)
  tree = out.search_tree
  assert int(tree.num_nodes.sum()) >= 5
  assert int(tree.node_depth.max()) >= 2  # paths through several ancestors
  n = assert_tree_exact(g, st, tree, prompt, lengths, mode=mode)
  assert n == int(tree.num_nodes.sum())
  # Compute accounting: one call per node, plus prompt prefill and the
  # (S-1)-token candidate decodes of step-level search.
  nodes = np.asarray(tree.num_nodes)
  np.testing.assert_array_equal(out.model_calls, nodes * s)
  p = prompt.shape[1]
  np.testing.assert_array_equal(
      out.tokens_forwarded, p + (nodes - 1) * s + nodes * (s - 1) * 3)
  # The same key gives the same tree.
  again = tsearch.lm_search(g, st, env, prompt, lengths, jax.random.key(3),
                            config=config)
  np.testing.assert_array_equal(again.search_tree.children_actions,
                                tree.children_actions)
  # Terminal nodes (EOS, or the 2-token answer limit of the first case).
  num_terminal = assert_terminal_rewards(tree, env)
  if mode == "step" or max_len == 2:
    assert num_terminal >= 1
  if mode == "step":
    acts = np.asarray(tree.children_actions)
    used = np.asarray(tree.children_mask)
    # Steps end at the delimiter / EOS or run S tokens, padded with -1.
    for b, nn, k in zip(*np.nonzero(used)):
      step = acts[b, nn, k]
      real = step[step >= 0]
      assert len(real) >= 1 and (step[len(real):] == -1).all()
      assert all(x not in (ENV.eos_id, ENV.step_delimiter) for x in real[:-1])
    # dedupe_steps (the default): the valid slots of a node are distinct.
    for b, nn in zip(*np.nonzero(np.asarray(tree.num_nodes)[:, None]
                                 > np.arange(tree.capacity)[None])):
      steps = [tuple(acts[b, nn, k]) for k in range(3) if used[b, nn, k]]
      assert len(steps) == len(set(steps))


def test_repeated_slots():
  acts = jnp.array([[[1, 2, -1], [1, 2, -1], [3, -1, -1], [1, 2, -1]],
                    [[5, -1, -1], [5, 6, -1], [5, -1, -1], [5, 6, -1]]])
  mask = jnp.array([[True, True, True, True], [False, True, True, True]])
  rep = lm.repeated_slots(acts, mask)
  # Row 0: slots 1 and 3 repeat slot 0. Row 1: slot 0 is masked, so slot 2
  # is the first valid [5]; slot 3 repeats slot 1.
  np.testing.assert_array_equal(rep, [[False, True, False, True],
                                      [False, False, False, True]])


def test_dedupe_steps_off_keeps_repeats():
  # A nearly deterministic model (large logits) samples the same step K
  # times: deduped, one valid slot; without dedupe, K.
  g, st = make_model(num_layers=1)
  st = jax.tree.map(lambda x: x * 30.0, st)
  prompt, lengths = prompts()
  kw = dict(mode="step", policy="puct", num_simulations=2, num_children=4,
            step_length=3, max_depth=2)
  on = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(0),
                         config=tsearch.LMSearchConfig(**kw))
  off = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(0),
                          config=tsearch.LMSearchConfig(dedupe_steps=False,
                                                        **kw))
  root_on = np.asarray(on.search_tree.children_mask[:, 0]).sum(-1)
  root_off = np.asarray(off.search_tree.children_mask[:, 0]).sum(-1)
  np.testing.assert_array_equal(root_off, [4, 4])
  assert (root_on < root_off).all()
  np.testing.assert_array_equal(on.search_tree.children_actions[:, 0],
                                off.search_tree.children_actions[:, 0])


def test_search_after_reroot_matches_full_forward():
  g, st = make_model(num_layers=1)
  prompt, lengths = prompts()
  config = tsearch.LMSearchConfig(
      mode="step", policy="gumbel", num_simulations=8, num_children=3,
      step_length=2, max_depth=3, keep_logits=True, reserve_tokens=2)
  out = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(5),
                          config=config)
  # Commit the most visited non-terminal root child.
  t = out.search_tree
  child = np.asarray(t.children_index[:, 0])
  live = (child > 0) & ~np.take_along_axis(np.asarray(t.node_terminal),
                                           np.maximum(child, 0), axis=1)
  assert live.any(-1).all()
  visits = np.where(live, np.asarray(t.children_visits[:, 0]), -1)
  slot = jnp.asarray(visits.argmax(-1), jnp.int32)
  acts = np.asarray(out.search_tree.children_actions)
  committed = [[int(x) for x in acts[b, 0, int(slot[b])] if x >= 0]
               for b in range(2)]
  tree, cache = jax.jit(tsearch.lm_reroot)(out.search_tree, out.prompt_cache,
                                           slot)
  assert (np.asarray(tree.embeddings["kv"]["length"][:, 0]) == 0).all()
  np.testing.assert_array_equal(cache.num_used,
                                prompt.shape[1] + np.array(
                                    [len(c) for c in committed]))
  assert not cache.overflowed.any()
  assert_tree_exact(g, st, tree, prompt, lengths, committed, mode="step")
  kept = np.asarray(tree.num_nodes)
  more = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(6),
                           config=config, tree=tree, prompt_cache=cache)
  assert (np.asarray(more.search_tree.num_nodes) > kept).all()
  assert_tree_exact(g, st, more.search_tree, prompt, lengths, committed,
                    mode="step")


def _slot_answer(t, b, n, k):
  """Answer tokens of node ``n``'s child slot ``k`` (path + the slot)."""
  seq, m = [], n
  while t.parents[b, m] >= 0:
    pm, am = t.parents[b, m], t.action_from_parent[b, m]
    seq = [int(x) for x in t.children_actions[b, pm, am] if x >= 0] + seq
    m = pm
  return seq + [int(x) for x in t.children_actions[b, n, k] if x >= 0]


@pytest.mark.slow
@pytest.mark.parametrize("mode,s", [("step", 3), ("token", 1)])
def test_terminal_lookahead(mode, s):
  """Child slots are scored by the verifier at expansion; with lookahead a
  node's value is max(value head, its best terminal slot's reward), or that
  reward alone when every slot ends the answer."""
  g, st = make_model(num_layers=1)
  env = ToyEnv(vocab_size=16, max_len=4)
  prompt, lengths = prompts()
  config = tsearch.LMSearchConfig(
      mode=mode, policy="puct", num_simulations=12, num_children=4,
      step_length=s, max_depth=4, keep_logits=True, terminal_lookahead=True)
  tree = jax.device_get(tsearch.lm_search(
      g, st, env, prompt, lengths, jax.random.key(2), config=config
  ).search_tree)
  seqs = node_sequences(tree, prompt, lengths)
  batch = np.zeros((len(seqs), 48), np.int32)
  for i, (_, _, seq) in enumerate(seqs):
    batch[i, :len(seq)] = seq
  head = np.asarray(_fwd(g, st, jnp.asarray(batch), jnp.broadcast_to(
      jnp.arange(48), batch.shape)).value)
  emb = tree.embeddings
  raised = scored = 0
  for i, (b, n, seq) in enumerate(seqs):
    if tree.node_terminal[b, n]:
      continue
    best, every = -np.inf, bool(tree.children_mask[b, n].any())
    for k in range(4):
      ans = _slot_answer(tree, b, n, k)
      legal = bool(tree.children_mask[b, n, k])
      term = legal and (ans[-1] == env.eos_id or len(ans) >= env.max_len)
      want = float(sum(ans[:env.max_len]) % 3 == 0) if term else 0.0
      assert bool(emb["child_terminal"][b, n, k]) == term
      assert float(emb["child_reward"][b, n, k]) == want
      if term:
        scored += 1
        best = max(best, want)
      every &= term or not legal
    v = float(head[i, len(seq) - 1])
    # Every slot scored: the value is exact; else a lower bound on it.
    want_v = best if every else max(v, best)
    np.testing.assert_allclose(float(tree.raw_values[b, n]), want_v,
                               atol=1e-5)
    raised += best > v + 1e-3
  assert scored >= 3 and raised >= 1  # the lookahead did something
  # Off: the same kind of tree keeps the value head's values.
  off = tsearch.lm_search(g, st, env, prompt, lengths, jax.random.key(2),
                          config=dataclasses.replace(
                              config, terminal_lookahead=False))
  assert_tree_exact(g, st, off.search_tree, prompt, lengths, mode=mode)


def test_prune_terminal_slots():
  """Below the root no slot that ends the answer is offered; a node left
  without slots holds its best slot's reward exactly."""
  g, st = make_model(num_layers=1)
  env = ToyEnv(vocab_size=16, max_len=4)
  prompt, lengths = prompts()
  config = tsearch.LMSearchConfig(
      mode="step", policy="puct", num_simulations=12, num_children=4,
      step_length=2, max_depth=4, terminal_lookahead=True,
      prune_terminal_slots=True)
  tree = jax.device_get(tsearch.lm_search(
      g, st, env, prompt, lengths, jax.random.key(2), config=config
  ).search_tree)
  emb = tree.embeddings
  used = np.arange(tree.capacity)[None] < tree.num_nodes[:, None]
  below = used.copy()
  below[:, 0] = False
  assert not (tree.children_mask & emb["child_terminal"])[below].any()
  assert emb["child_terminal"][below].any()  # something was pruned
  # The root keeps its slots; only its children can be terminal nodes.
  assert (tree.node_terminal[used] <= (tree.node_depth[used] == 1)).all()
  leaves = below & ~tree.children_mask.any(-1) & emb["child_terminal"].any(-1)
  assert leaves.any()
  best = np.where(emb["child_terminal"], emb["child_reward"], -1).max(-1)
  np.testing.assert_array_equal(tree.raw_values[leaves], best[leaves])
  with pytest.raises(ValueError, match="needs terminal_lookahead"):
    tsearch.LMSearchConfig(mode="step", prune_terminal_slots=True)


def test_solved_slot_reads_unvisited_winning_slots():
  g, st = make_model(num_layers=1)
  env = ToyEnv(vocab_size=16, max_len=4)
  prompt, lengths = prompts()
  config = tsearch.LMSearchConfig(
      mode="token", policy="puct", num_simulations=3, num_children=4,
      max_depth=4)
  # Token mode without the lookahead keeps no slot scores (no extra env
  # step per expansion); solved_slot is then tsearch.solved_root_slot.
  plain = tsearch.lm_search(g, st, env, prompt, lengths, jax.random.key(0),
                            config=config).search_tree
  assert "child_terminal" not in plain.embeddings
  for got, want in zip(lm.solved_slot(plain, 4),
                       tsearch.solved_root_slot(plain, 4)):
    np.testing.assert_array_equal(got, want)
  config = dataclasses.replace(config, terminal_lookahead=True)
  tree = tsearch.lm_search(g, st, env, prompt, lengths, jax.random.key(0),
                           config=config).search_tree
  emb = tree.embeddings
  # Mark root slot 3 of row 0 a verified win, never visited; row 1: none.
  term = np.zeros(np.shape(emb["child_terminal"]), bool)
  term[0, 0, 3] = True
  tree = tree.replace(embeddings={**emb, "child_terminal": jnp.asarray(term),
                                  "child_reward": jnp.asarray(term * 1.0)})
  assert int(tree.children_index[0, 0, 3]) == tsearch.Tree.UNVISITED
  found, slot = jax.jit(lm.solved_slot, static_argnums=1)(tree, 4)
  np.testing.assert_array_equal(found, [True, False])
  np.testing.assert_array_equal(slot, [3, 0])


def test_solved_slot_by_prior_reads_the_prior_before_noise():
  g, st = make_model(num_layers=1)
  env = ToyEnv(vocab_size=16, max_len=4)
  prompt, lengths = prompts()
  config = tsearch.LMSearchConfig(
      mode="step", policy="puct", num_simulations=4, num_children=4,
      step_length=2, max_depth=4, dirichlet_fraction=0.5)
  key = jax.random.key(3)
  root, _ = lm.make_lm_root(g, st, env, prompt, lengths,
                            jax.random.split(key)[0], config=config)
  tree = tsearch.lm_search(g, st, env, prompt, lengths, key,
                           config=config).search_tree
  prior = np.asarray(tree.embeddings["child_prior"][:, 0])
  legal = np.asarray(tree.children_mask[:, 0])
  np.testing.assert_allclose(prior[legal], np.asarray(root.prior_logits)[legal],
                             rtol=1e-5)
  # The stored root prior has the root noise mixed in; child_prior has not.
  assert not np.allclose(np.asarray(tree.children_prior_logits[:, 0])[legal],
                         prior[legal], atol=1e-3)
  # Two verified root slots per row: by_prior takes the likelier one.
  order = np.argsort(-np.where(legal, prior, -np.inf), axis=-1)
  term = np.zeros(np.shape(tree.embeddings["child_terminal"]), bool)
  for b in range(2):
    term[b, 0, order[b, :2]] = True
  emb = {**tree.embeddings, "child_terminal": jnp.asarray(term),
         "child_reward": jnp.asarray(term * 1.0)}
  tree = tree.replace(embeddings=emb)
  found, slot = jax.jit(functools.partial(lm.solved_slot, by_prior=True),
                        static_argnums=1)(tree, 4)
  np.testing.assert_array_equal(found, [True, True])
  np.testing.assert_array_equal(slot, order[:, 0])
  # Without it, the lowest solved slot (all at depth 1).
  _, slot = lm.solved_slot(tree, 4)
  np.testing.assert_array_equal(slot, np.sort(order[:, :2], axis=-1)[:, 0])
  # (The plain token search of the test above: one compiled program.)
  token = tsearch.LMSearchConfig(mode="token", policy="puct",
                                 num_simulations=3, num_children=4,
                                 max_depth=4)
  plain = tsearch.lm_search(g, st, env, prompt, lengths, key,
                            config=token).search_tree
  with pytest.raises(ValueError, match="terminal_lookahead=True"):
    lm.solved_slot(plain, 4, by_prior=True)


def assert_terminal_rewards(tree, env):
  """Terminal edges carry the verifier's reward and discount 0."""
  t = jax.device_get(tree)
  term = np.asarray(t.node_terminal)
  for b, n in zip(*np.nonzero(term)):
    p, a = int(t.parents[b, n]), int(t.action_from_parent[b, n])
    seq, m = [], n
    while t.parents[b, m] >= 0:
      pm, am = t.parents[b, m], t.action_from_parent[b, m]
      seq = [int(x) for x in t.children_actions[b, pm, am] if x >= 0] + seq
      m = pm
    assert seq[-1] == env.eos_id or len(seq) >= env.max_len
    want = 1.0 if sum(seq[:env.max_len]) % 3 == 0 else 0.0
    assert float(t.children_rewards[b, p, a]) == want
    assert float(t.children_discounts[b, p, a]) == 0.0
    assert not t.children_mask[b, n].any()
  return int(term.sum())


def test_bad_inputs():
  g, st = make_model()  # max_seq_len 48, vocab 20
  prompt, lengths = prompts()
  cfg = tsearch.LMSearchConfig(num_simulations=4, num_children=3, max_depth=4)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="longer than the model's context"):
    tsearch.lm_search(g, st, ENV, jnp.ones((2, 49), jnp.int32), lengths, key,
                      config=cfg)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tsearch.lm_search(g, st, ENV, prompt.at[1, 2].set(20), lengths, key,
                      config=cfg)
  with pytest.raises(ValueError, match="larger than the vocabulary"):
    tsearch.lm_search(g, st, ENV, prompt, lengths, key,
                      config=tsearch.LMSearchConfig(num_children=21))
  with pytest.raises(ValueError, match="step_length"):
    tsearch.LMSearchConfig(mode="step", step_length=0)
  with pytest.raises(ValueError, match="deeper than the KV arena"):
    tsearch.lm_search(g, st, ENV, prompt, lengths, key,
                      config=tsearch.LMSearchConfig(mode="step", step_length=5,
                                                    max_depth=9))
  with pytest.raises(ValueError, match="prompt_lengths"):
    tsearch.lm_search(g, st, ENV, prompt, jnp.array([0, 3]), key, config=cfg)


def test_a_root_with_every_slot_pruned_commits_its_best_scored_step():
  # A rerooted root whose slots all end the episode was pruned below the
  # old root and is not searched: the rollout commits the slot with the
  # highest score (the verifier's, or the value head's without it), the
  # first of equals; unscored (non-terminal) slots never win.
  from tsearch._src import rollout as rollout_lib
  terminal = np.zeros((3, 2, 4), bool)
  reward = np.zeros((3, 2, 4), np.float32)
  terminal[0, 0] = True
  reward[0, 0] = [0.2, 0.9, -0.5, 0.9]  # judged values: slot 1
  terminal[1, 0, 2:] = True
  reward[1, 0] = [5.0, 5.0, 0.0, 1.0]  # slots 0-1 unscored: slot 3
  reward[2, 1] = 1.0  # nothing scored at the root: slot 0
  tree = types.SimpleNamespace(embeddings=dict(
      child_terminal=jnp.asarray(terminal), child_reward=jnp.asarray(reward)))
  np.testing.assert_array_equal(
      rollout_lib.best_scored_root_slot(tree), [1, 3, 0])
