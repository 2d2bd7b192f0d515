"""Several leaves per tree per step (``leaves_per_step``): every node still
holds exactly what its expansion returned, visit counts add up and values
stay bounded (hypothesis, toy MDPs). L = 1 runs the same loop with one leaf,
held to mctx exactly by tests/test_mctx_parity.py."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tsearch
from tsearch._src import toy_mdp as toy

B, K, SIMS, STATES = 4, 3, 12, 40
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True)


@functools.partial(jax.jit, static_argnames=("policy", "leaves"))
def _search(mdp, key, *, policy, leaves):
  fn = tsearch.puct_search if policy == "puct" else tsearch.gumbel_search
  return fn(mdp, key, toy.root(mdp, jnp.arange(B)), toy.expand_fn,
            num_simulations=SIMS, leaves_per_step=leaves)


def _mdp(seed, **kw):
  return toy.make_toy_mdp(jax.random.key(seed), STATES, K, **kw)


problems = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16),
    "policy": st.sampled_from(["puct", "gumbel"]),
    "leaves": st.just(5),  # 12 simulations: the last step runs 2
    "discount": st.sampled_from([1.0, -1.0]),
    "illegal_fraction": st.sampled_from([0.0, 0.5]),
    "terminal_fraction": st.sampled_from([0.0, 0.3]),
})


@SETTINGS
@given(problems)
def test_several_leaves_keep_the_tree_exact(p):
  mdp = _mdp(p["seed"], discount=p["discount"],
             illegal_fraction=p["illegal_fraction"],
             terminal_fraction=p["terminal_fraction"])
  out = _search(mdp, jax.random.key(p["seed"] + 1), policy=p["policy"],
                leaves=p["leaves"])
  t = jax.tree.map(np.asarray, out.search_tree)
  m = jax.tree.map(np.asarray, mdp)
  # Every simulation is counted once at the root, none lost or doubled.
  assert np.all(t.children_visits[:, 0].sum(-1) == SIMS)
  assert np.all(t.node_visits[:, 0] == SIMS + 1)
  assert not t.overflowed.any() and not t.nonfinite.any()
  assert np.all(t.num_nodes <= SIMS + 1)
  bound = (int(t.node_depth.max()) * float(np.abs(m.rewards).max())
           + float(np.abs(m.values).max()) + 1e-4)
  for b in range(B):
    n = int(t.num_nodes[b])
    assert np.all(t.node_visits[b, n:] == 0)
    for i in range(1, n):
      # The node is what expanding its edge returned (mctx-style
      # exactness): state, prior logits, value, reward.
      parent, slot = t.parents[b, i], t.action_from_parent[b, i]
      assert t.children_index[b, parent, slot] == i
      assert t.children_mask[b, parent, slot]
      state = m.transitions[t.embeddings[b, parent], slot]
      assert t.embeddings[b, i] == state
      legal = m.legal[state]
      np.testing.assert_allclose(t.children_prior_logits[b, i][legal],
                                 m.prior_logits[state][legal], rtol=1e-6,
                                 atol=1e-6)
      value = 0. if m.terminal[state] else m.values[state]
      np.testing.assert_allclose(t.raw_values[b, i], value, rtol=1e-6)
      np.testing.assert_allclose(t.children_rewards[b, parent, slot],
                                 m.rewards[t.embeddings[b, parent], slot],
                                 rtol=1e-6)
    for i in range(n):
      kids = t.children_index[b, i]
      expanded = kids >= 0
      # Visits: a node's first visit expanded it; a leaf picked twice in
      # one step is backed up twice.
      assert t.node_visits[b, i] >= 1 + t.children_visits[b, i].sum()
      np.testing.assert_array_equal(t.children_visits[b, i][expanded],
                                    t.node_visits[b, kids[expanded]])
      np.testing.assert_allclose(t.children_values[b, i][expanded],
                                 t.node_values[b, kids[expanded]], atol=1e-5)
      assert np.all(t.children_visits[b, i][~t.children_mask[b, i]] == 0)
    assert np.all(np.abs(t.node_values[b, :n]) <= bound)


def test_several_leaves_spread_over_the_tree_and_same_key_same_tree():
  """Virtual loss sends the leaves of a step to different edges: with 5
  leaves per step and 3 root slots, the first step opens every root slot."""
  mdp = _mdp(7)
  key = jax.random.key(8)
  out = _search(mdp, key, policy="puct", leaves=5)
  chex.assert_trees_all_equal(out, _search(mdp, key, policy="puct",
                                           leaves=5))
  one_step = jax.jit(lambda m, k: tsearch.puct_search(
      m, k, toy.root(m, jnp.arange(B)), toy.expand_fn, num_simulations=3,
      leaves_per_step=5))(mdp, key)
  t = jax.tree.map(np.asarray, one_step.search_tree)
  assert np.all(t.num_nodes == 4)  # root + 3 distinct children
  assert np.all((t.children_index[:, 0] >= 0).sum(-1) == 3)


def test_bad_leaves_per_step_is_a_clear_error():
  mdp = _mdp(0)
  with pytest.raises(ValueError, match="leaves_per_step must be a positive"):
    tsearch.puct_search(mdp, jax.random.key(0), toy.root(mdp, jnp.arange(B)),
                        toy.expand_fn, num_simulations=4, leaves_per_step=0)


def test_lm_search_with_several_leaves_matches_full_forward():
  """Step-level LM search (Gumbel), 4 leaves per model call: every node's
  logits and value equal a full forward of its sequence, and the visits add
  up to the simulations. (Token level is the same code with S = 1;
  bench/lm_scale.py runs both.)"""
  mode, policy, s = "step", "gumbel", 3
  from tests import test_lm_search as lm  # pylint: disable=import-outside-toplevel
  g, state = lm.make_model(num_layers=1, num_heads=2, num_kv_heads=1)
  env = lm.ToyEnv(vocab_size=16, max_len=10)
  prompt, lengths = lm.prompts()
  config = tsearch.LMSearchConfig(
      mode=mode, policy=policy, num_simulations=12, num_children=3,
      step_length=s, max_depth=4, keep_logits=True, leaves_per_step=4)
  out = tsearch.lm_search(g, state, env, prompt, lengths, jax.random.key(3),
                          config=config)
  tree = out.search_tree
  assert int(tree.node_depth.max()) >= 2
  assert lm.assert_tree_exact(g, state, tree, prompt, lengths,
                              mode=mode) == int(tree.num_nodes.sum())
  np.testing.assert_array_equal(tree.children_visits[:, 0].sum(-1), 12)
  np.testing.assert_array_equal(out.model_calls,
                                np.asarray(tree.num_nodes) * s)


def test_config_leaves_per_step_reaches_the_lm_search():
  from train import config as config_lib  # pylint: disable=import-outside-toplevel
  from train import search_config  # pylint: disable=import-outside-toplevel
  from tsearch.tasks import get_task  # pylint: disable=import-outside-toplevel
  c = config_lib.default_config()
  task = get_task("arithmetic")
  assert search_config.lm_search_config(c.search, task).leaves_per_step == 1
  c.search.leaves_per_step = 4
  assert search_config.lm_search_config(c.search, task).leaves_per_step == 4
  c.search.leaves_per_step = 0
  with pytest.raises(ValueError, match="leaves_per_step must be >= 1"):
    search_config.lm_search_config(c.search, task)
  # The paged arena's keys reach it too (token level: pages of 1 token).
  c.search.update(leaves_per_step=1, page_size=1, num_pages=40)
  cfg = search_config.lm_search_config(c.search, task)
  assert (cfg.page_size, cfg.num_pages) == (1, 40)


def test_rollout_searches_with_the_configs_leaves_per_step(monkeypatch):
  """tsearch.rollout (training targets, evaluation's MCTS) passes
  ``leaves_per_step`` on to the search (traced only: the search records
  its arguments and stops the trace)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import models  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from tsearch._src import rollout as rollout_lib  # pylint: disable=import-outside-toplevel
  from tsearch.tasks import get_task  # pylint: disable=import-outside-toplevel
  task = get_task("arithmetic", max_digits=1)
  model = models.Transformer(models.ModelConfig(
      vocab_size=task.vocab.size, num_layers=1, d_model=16, num_heads=2,
      num_kv_heads=1, head_dim=8, mlp_dim=32, max_seq_len=48),
      rngs=nnx.Rngs(0))
  g, state = nnx.split(model)
  prompt, plen = task.encode_prompts(task.sample_problems(0, 2))
  base = tsearch.LMSearchConfig(num_simulations=8, num_children=3,
                                capacity=16,
                                reserve_tokens=task.max_answer_length)
  seen = []

  class Traced(Exception):
    pass

  def record(*args, **kwargs):
    del args
    seen.append(kwargs["leaves_per_step"])
    raise Traced

  for name in ("puct_search", "gumbel_search"):
    monkeypatch.setattr(rollout_lib, name, record)
  for policy, leaves in (("puct", 4), ("gumbel", 2)):
    cfg = dataclasses.replace(base, policy=policy, leaves_per_step=leaves)
    with pytest.raises(Traced):
      jax.eval_shape(lambda s, p, n, k, cfg=cfg: tsearch.rollout(
          g, s, task, p, n, k, config=cfg, num_moves=1),
          state, prompt, plen, jax.random.key(0))
  assert seen == [4, 2]
