"""tsearch PUCT / Gumbel vs mctx muzero_policy / gumbel_muzero_policy.

Problems are random table MDPs (tsearch._toy_mdp) over 300 states, so trees
reach depth >= 4. mctx masks only the root, so the problems here have no
interior masks and no terminal states (tsearch's extras are tested in
test_search.py); with the same key both libraries must give the same visit
counts (exactly), action weights (1e-5) and actions.

mctx distinguishes ``invalid_actions=None`` from a mask; both paths are
compared ("none" below). Hyperparameters and the MDP are traced arguments, so
each (policy, A) compiles once; that keeps this file fast.
"""
import functools

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest

import tsearch
from tsearch._src import toy_mdp as toy

B = 8
NUM_STATES = 300
NUM_SIMULATIONS = 40
# Gumbel's max_num_considered_actions per A (2 < 16: all considered).
CONSIDERED = {2: 16, 5: 4, 16: 8}
_COMPILED = {}


def _policies(policy, num_actions, mctx_none, max_depth):
  """(mctx_fn, tsearch_fn), jitted once per static configuration."""
  cache_key = (policy, num_actions, mctx_none, max_depth)
  if cache_key in _COMPILED:
    return _COMPILED[cache_key]
  expand = tsearch.from_mctx_recurrent_fn(toy.mctx_recurrent_fn)
  if policy == "puct":
    m_policy, t_policy = mctx.muzero_policy, tsearch.puct_search
    static = {}
  else:
    m_policy, t_policy = mctx.gumbel_muzero_policy, tsearch.gumbel_search
    static = {"max_num_considered_actions": CONSIDERED[num_actions]}

  @jax.jit
  def run_mctx(mdp, key, invalid, hp):
    root = toy.mctx_root(mdp, jnp.arange(B))
    return m_policy(mdp, key, root, toy.mctx_recurrent_fn, NUM_SIMULATIONS,
                    invalid_actions=None if mctx_none else invalid,
                    max_depth=max_depth, **static, **hp)

  @jax.jit
  def run_tsearch(mdp, key, invalid, hp):
    root = tsearch.root_from_mctx(toy.mctx_root(mdp, jnp.arange(B)), invalid)
    return t_policy(mdp, key, root, expand, num_simulations=NUM_SIMULATIONS,
                    max_depth=max_depth, **static, **hp)

  if mctx_none:  # tsearch has no such path: reuse its compiled function.
    run_tsearch = _policies(policy, num_actions, False, max_depth)[1]
  _COMPILED[cache_key] = run_mctx, run_tsearch
  return run_mctx, run_tsearch


def _compare(policy, num_actions, *, invalid_root, discount, seed,
             max_depth=None, **hp):
  """Runs both searches; asserts equal visits, weights, actions and trees."""
  mdp = toy.make_toy_mdp(jax.random.key(seed), NUM_STATES, num_actions,
                         discount=discount)
  invalid = jax.random.uniform(jax.random.key(seed + 1),
                               (B, num_actions)) < 0.4
  invalid = invalid.at[:, 0].set(False)
  if invalid_root != "mask":
    invalid = jnp.zeros_like(invalid)
  invalid = invalid.astype(jnp.float32)
  # Always the full set, so that the jitted functions see one structure.
  defaults = dict(PUCT_DEFAULTS if policy == "puct" else GUMBEL_DEFAULTS)
  defaults.update(hp)
  hp = {name: jnp.float32(v) for name, v in defaults.items()}
  run_mctx, run_tsearch = _policies(policy, num_actions, invalid_root == "none",
                                    max_depth)
  key = jax.random.key(seed + 2)
  m = run_mctx(mdp, key, invalid, hp)
  t = run_tsearch(mdp, key, invalid, hp)
  m_visits = np.asarray(m.search_tree.children_visits[:, 0])
  t_visits = np.asarray(t.search_tree.children_visits[:, 0])
  np.testing.assert_array_equal(t_visits, m_visits)
  assert t_visits.sum(-1).tolist() == [NUM_SIMULATIONS] * B
  np.testing.assert_allclose(t.action_weights, m.action_weights, atol=1e-5)
  np.testing.assert_array_equal(t.action, m.action)
  illegal = np.asarray(invalid) > 0
  assert np.all(t_visits[illegal] == 0)
  assert np.all(np.asarray(t.action_weights)[illegal] == 0)
  if invalid_root == "mask":
    assert illegal.any()
  if max_depth is None:
    # Same node indices (one new node per simulation, in the same order), so
    # the whole trees agree node by node.
    np.testing.assert_array_equal(t.search_tree.node_visits,
                                  m.search_tree.node_visits)
    np.testing.assert_array_equal(t.search_tree.parents,
                                  m.search_tree.parents)
    np.testing.assert_allclose(t.search_tree.node_values,
                               m.search_tree.node_values, atol=1e-5)
    assert int(t.search_tree.node_depth.max()) >= 4
  return m, t


PUCT_DEFAULTS = dict(dirichlet_fraction=0.25, dirichlet_alpha=0.3,
                     pb_c_init=1.25, pb_c_base=19652.0, temperature=1.0)
GUMBEL_DEFAULTS = dict(gumbel_scale=1.0)
PUCT_HP = dict(dirichlet_fraction=0.5, dirichlet_alpha=0.7, pb_c_init=2.0,
               pb_c_base=100.0, temperature=0.5)
CASES = [
    # policy, A, invalid root actions ("zeros", "none", "mask"), discount, hp
    ("puct", 2, "zeros", 1.0, {}),
    ("puct", 2, "mask", -1.0, PUCT_HP),
    ("puct", 5, "none", 1.0, {}),
    ("puct", 5, "mask", -1.0, {}),
    ("puct", 16, "mask", 1.0, {}),
    ("puct", 16, "zeros", -1.0, dict(temperature=0.0)),
    ("gumbel", 2, "zeros", -1.0, {}),
    ("gumbel", 5, "none", 1.0, {}),
    ("gumbel", 5, "mask", -1.0, dict(gumbel_scale=0.5)),
    ("gumbel", 16, "mask", 1.0, {}),
    ("gumbel", 16, "zeros", -1.0, dict(gumbel_scale=0.0)),
]


@pytest.mark.parametrize("policy,num_actions,invalid_root,discount,hp", CASES)
def test_parity(policy, num_actions, invalid_root, discount, hp):
  for seed in (0, 10):
    _compare(policy, num_actions, invalid_root=invalid_root,
             discount=discount, seed=seed + num_actions, **hp)


def test_parity_max_depth():
  # mctx re-evaluates a node at max_depth; tsearch backs up its stored value.
  # For a deterministic model both give the same statistics.
  _, t = _compare("puct", 5, invalid_root="mask", discount=1.0, seed=5,
                  max_depth=3)
  assert int(t.search_tree.node_depth.max()) == 3
