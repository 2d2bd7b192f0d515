"""Unit tests of tsearch.puct_search / gumbel_search: golden tree, options,
bad input."""
import functools

import chex
import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest

import tsearch
from tsearch._src import toy_mdp as toy
from tsearch._src import search
from tsearch._src import search as search_lib

_ACTIONS_K2 = jnp.zeros((1, 2, 1), jnp.int32).at[0, 1, 0].set(1)


def _golden_expand(params, rng_key, tree, parent_index, action_slot):
  """Zero rewards; the new node n gets value ``params[n]``."""
  del rng_key, parent_index, action_slot
  return tsearch.ExpandOutput(
      reward=jnp.zeros(1), discount=jnp.ones(1),
      prior_logits=jnp.array([[1.0, 0.0]]),
      value=params[tree.num_nodes], terminal=jnp.zeros(1, bool),
      children_actions=_ACTIONS_K2, children_mask=jnp.ones((1, 2), bool),
      embedding=jnp.zeros(1))


def test_golden_puct_three_simulations():
  # Priors softmax([1, 0]) = [0.731, 0.269] at every node; no Dirichlet noise.
  # Sim 1: all Q equal, prior wins: root.0 -> node 1 (v=-1).
  #   root value (0 + -1) / 2 = -0.5.
  # Sim 2: at the root, normalized Q of slot 0 (-1) equals the unvisited fill
  #   (min = -1), PUCT 1.414*c*0.731/2 = 0.517c > 1.414*c*0.269 = 0.380c:
  #   slot 0 again; node 1 is fresh, prior wins: node1.0 -> node 2 (v=+1).
  #   node 1: (-1 + 1) / 2 = 0; root: (-0.5 * 2 + 1) / 3 = 0.
  # Sim 3: Q all 0, PUCT 1.732*c*0.731/3 = 0.422c < 1.732*c*0.269 = 0.466c:
  #   root.1 -> node 3 (v=2); root: (0 * 3 + 2) / 4 = 0.5.
  root = tsearch.RootOutput(
      prior_logits=jnp.array([[1.0, 0.0]]), value=jnp.zeros(1),
      embedding=jnp.zeros(1), children_actions=_ACTIONS_K2,
      children_mask=jnp.ones((1, 2), bool))
  values = jnp.array([0.0, -1.0, 1.0, 2.0])
  out = jax.jit(functools.partial(
      tsearch.puct_search, expand_fn=_golden_expand, num_simulations=3,
      dirichlet_fraction=0.0))(values, jax.random.key(0), root)
  t = out.search_tree
  np.testing.assert_array_equal(t.parents[0], [-1, 0, 1, 0])
  np.testing.assert_array_equal(t.action_from_parent[0], [-1, 0, 0, 1])
  np.testing.assert_array_equal(t.node_visits[0], [4, 2, 1, 1])
  np.testing.assert_array_equal(t.node_depth[0], [0, 1, 2, 1])
  np.testing.assert_allclose(t.node_values[0], [0.5, 0.0, 1.0, 2.0])
  np.testing.assert_array_equal(t.children_visits[0, 0], [2, 1])
  np.testing.assert_array_equal(t.children_index[0, 0], [1, 3])
  np.testing.assert_allclose(out.action_weights[0], [2 / 3, 1 / 3])
  assert int(t.num_nodes[0]) == 4


# A compiled search over toy MDPs with B=4, K=3 shared by the tests below.
B, K, SIMS = 4, 3, 12


@functools.partial(jax.jit, static_argnames=("policy", "num_simulations",
                                             "capacity", "max_depth"))
def _search(mdp, key, tree=None, *, policy="puct", num_simulations=SIMS,
            capacity=None, max_depth=None):
  fn = tsearch.puct_search if policy == "puct" else tsearch.gumbel_search
  return fn(mdp, key, toy.root(mdp, jnp.arange(B)), toy.expand_fn,
            num_simulations=num_simulations, capacity=capacity,
            max_depth=max_depth, tree=tree)


def _mdp(seed=0, **kw):
  return toy.make_toy_mdp(jax.random.key(seed), 30, K, **kw)


def test_terminal_nodes_are_revisited_not_expanded():
  mdp = _mdp(1, terminal_fraction=1.0)  # Every child is terminal.
  mdp = mdp.replace(rewards=jnp.broadcast_to(jnp.arange(K, dtype=jnp.float32),
                                             mdp.rewards.shape))
  out = _search(mdp, jax.random.key(0), policy="gumbel")
  t = out.search_tree
  # Only the root's (legal) children exist; each was reached possibly often.
  assert np.all(np.asarray(t.num_nodes) <= 1 + K)
  assert np.all(np.asarray(t.children_visits[:, 0]).sum(-1) == SIMS)
  terminal = np.asarray(t.node_terminal)
  assert terminal[:, 1:].sum() == np.asarray(t.num_nodes).sum() - B
  assert np.all(np.asarray(t.children_index)[terminal] == -1)
  assert np.all(np.asarray(t.node_values)[terminal] == 0)
  # Root value = mean of its own value and the rewards backed up (discount 0).
  cv = np.asarray(t.children_visits[:, 0], np.float32)
  expected = (np.asarray(mdp.values[:B]) + cv @ np.arange(K)) / (SIMS + 1)
  np.testing.assert_allclose(t.node_values[:, 0], expected, rtol=1e-5)


def test_interior_masks_are_respected():
  mdp = _mdp(2, illegal_fraction=0.6)
  for policy in ("puct", "gumbel"):
    t = _search(mdp, jax.random.key(3), policy=policy).search_tree
    used = np.arange(t.capacity)[None] < np.asarray(t.num_nodes)[:, None]
    expanded = np.asarray(t.children_index) >= 0
    assert np.all(np.asarray(t.children_mask)[expanded])
    assert np.all(np.asarray(t.children_visits)[~np.asarray(t.children_mask)]
                  == 0)
    assert used.sum() == B * (SIMS + 1)


def test_max_depth_bounds_the_tree():
  t = _search(_mdp(3), jax.random.key(0), max_depth=2).search_tree
  assert int(t.node_depth.max()) == 2
  assert np.all(np.asarray(t.children_visits[:, 0]).sum(-1) == SIMS)


def test_same_key_same_tree_and_different_key_differs():
  mdp = _mdp(4)
  a = _search(mdp, jax.random.key(7))
  b = _search(mdp, jax.random.key(7))
  c = _search(mdp, jax.random.key(8))
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a.search_tree.children_visits,
                            c.search_tree.children_visits) or not (
                                np.array_equal(a.action, c.action))


def test_continue_search_from_tree():
  mdp = _mdp(5)
  first = _search(mdp, jax.random.key(0), capacity=2 * SIMS + 1)
  more = _search(mdp, jax.random.key(1), first.search_tree)
  t0, t1 = first.search_tree, more.search_tree
  assert np.all(np.asarray(t1.children_visits[:, 0]).sum(-1) == 2 * SIMS)
  assert np.all(np.asarray(t1.num_nodes) == 2 * SIMS + 1)
  # Old nodes keep their place and payload.
  np.testing.assert_array_equal(t1.parents[:, :SIMS + 1],
                                t0.parents[:, :SIMS + 1])
  np.testing.assert_array_equal(t1.embeddings[:, :SIMS + 1],
                                t0.embeddings[:, :SIMS + 1])
  assert not np.any(np.asarray(t1.overflowed))
  # Gumbel continues too, with sequential halving over the new visits.
  g = _search(mdp, jax.random.key(1), first.search_tree, policy="gumbel")
  assert np.all(np.asarray(g.search_tree.children_visits[:, 0]).sum(-1)
                == 2 * SIMS)


def test_full_tree_records_overflow_without_writing():
  mdp = _mdp(6)
  # capacity == SIMS + 1: full. (Gumbel: PUCT would re-noise the root prior.)
  first = _search(mdp, jax.random.key(0), policy="gumbel")
  more = _search(mdp, jax.random.key(1), first.search_tree, policy="gumbel",
                 num_simulations=3)
  t0, t1 = first.search_tree, more.search_tree
  assert np.all(np.asarray(t1.overflowed))
  chex.assert_trees_all_equal(t1.replace(overflowed=t0.overflowed), t0)


def _nan_expand(mdp, rng_key, tree, parent_index, action_slot):
  out = toy.expand_fn(mdp, rng_key, tree, parent_index, action_slot)
  # Row 1 returns a NaN value for every new node.
  return out.replace(value=out.value.at[1].set(jnp.nan))


def test_nonfinite_expansion_is_dropped_and_flagged_under_jit():
  mdp = _mdp(7)
  out = jax.jit(lambda m, k: tsearch.puct_search(
      m, k, toy.root(m, jnp.arange(B)), _nan_expand,
      num_simulations=SIMS))(mdp, jax.random.key(0))
  t = out.search_tree
  np.testing.assert_array_equal(t.nonfinite, [False, True, False, False])
  assert np.all(np.isfinite(np.asarray(t.node_values)))
  assert np.all(np.isfinite(np.asarray(out.action_weights)))
  assert int(t.num_nodes[1]) == 1 and int(t.num_nodes[0]) == SIMS + 1


def test_nonfinite_root_under_jit_is_flagged_and_not_searched():
  mdp = _mdp(8)
  root = toy.root(mdp, jnp.arange(B))
  root = root.replace(value=root.value.at[2].set(jnp.nan))
  out = jax.jit(lambda m, k, r: tsearch.gumbel_search(
      m, k, r, toy.expand_fn, num_simulations=SIMS))(mdp, jax.random.key(0),
                                                     root)
  np.testing.assert_array_equal(out.search_tree.nonfinite,
                                [False, False, True, False])
  np.testing.assert_array_equal(out.action_weights[2], np.zeros(K))
  assert np.all(np.isfinite(np.asarray(out.action_weights)))
  assert int(out.search_tree.children_visits[0, 0].sum()) == SIMS


def test_from_mctx_docstring_example_runs():
  # The runnable example in tsearch.root_from_mctx's docstring.
  doc = tsearch.root_from_mctx.__doc__
  code = doc[doc.index("Example::") + len("Example::"):]
  lines = [l[4:] for l in code.splitlines() if l.strip()]
  exec("\n".join(lines), {})  # pylint: disable=exec-used


# Bad input.


def _good_root(b=2, k=3, s=1):
  return tsearch.RootOutput(
      prior_logits=jnp.zeros((b, k)), value=jnp.zeros(b),
      embedding=jnp.zeros(b, jnp.int32),
      children_actions=jnp.zeros((b, k, s), jnp.int32),
      children_mask=jnp.ones((b, k), bool))


def _call(root, policy=tsearch.puct_search, **kw):
  kw.setdefault("num_simulations", 4)
  return policy(None, jax.random.key(0), root, lambda *a: None, **kw)


@pytest.mark.parametrize("field,value,match", [
    ("value", jnp.zeros(3), r"value must have shape \(2,\)"),
    ("children_mask", jnp.ones((2, 4), bool), r"children_mask must have"),
    ("children_actions", jnp.zeros((2, 4, 1), jnp.int32),
     r"K \(child slots\) must equal"),
    ("prior_logits", jnp.zeros((2, 3, 1)), r"prior_logits must have shape"),
    ("embedding", jnp.zeros(5), r"leading batch dimension 2"),
])
def test_mismatched_root_shapes(field, value, match):
  with pytest.raises(ValueError, match=match):
    _call(_good_root().replace(**{field: value}))


def test_capacity_too_small():
  with pytest.raises(ValueError, match=r"capacity must be >= 5"):
    _call(_good_root(), capacity=4)
  with pytest.raises(ValueError, match=r"capacity must be >= 9"):
    _call(_good_root(), policy=tsearch.gumbel_search, capacity=8,
          num_simulations=8)


def test_capacity_disagrees_with_given_tree():
  tree = tsearch.empty_tree(batch_size=2, capacity=6, num_children=3,
                            action_length=1,
                            embedding_example=jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r"differs from the given tree"):
    _call(_good_root(), capacity=10, tree=tree)
  with pytest.raises(ValueError, match=r"root has \[B, K, S\]"):
    _call(_good_root(k=4), tree=tree)


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="max_num_considered_actions"):
    _call(_good_root(), policy=tsearch.gumbel_search,
          max_num_considered_actions=0)
  with pytest.raises(ValueError, match="num_simulations"):
    _call(_good_root(), num_simulations=2.5)
  with pytest.raises(ValueError, match="max_depth"):
    _call(_good_root(), max_depth=0)


def test_nan_in_concrete_root_is_rejected():
  root = _good_root()
  with pytest.raises(ValueError, match=r"value is NaN or infinite in batch "
                     r"rows \[1\]"):
    _call(root.replace(value=jnp.array([0., jnp.nan])))
  with pytest.raises(ValueError, match=r"prior_logits are NaN"):
    _call(root.replace(prior_logits=root.prior_logits.at[0, 2].set(jnp.nan)))
  # -inf logits and NaN on an illegal slot are fine.
  ok = root.replace(
      prior_logits=root.prior_logits.at[0, 1].set(-jnp.inf).at[1, 2].set(
          jnp.nan),
      children_mask=root.children_mask.at[1, 2].set(False))
  search._check_root(ok)  # No error when concrete.
  expand = lambda p, k, t, i, a: toy.expand_fn(_mdp(), k, t, i, a)
  out = jax.jit(lambda r: tsearch.puct_search(
      None, jax.random.key(0), r, expand, num_simulations=4))(ok)
  assert np.all(np.isfinite(np.asarray(out.action_weights)))
  assert float(out.action_weights[1, 2]) == 0.0


def test_expand_fn_with_wrong_k_is_rejected():
  def expand(params, key, tree, parent, slot):
    out = toy.expand_fn(_mdp(), key, tree, parent, slot)
    return out.replace(prior_logits=jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match=r"prior_logits of shape \(2, 5\)"):
    tsearch.puct_search(None, jax.random.key(0), _good_root(), expand,
                        num_simulations=2)


def test_from_mctx_recurrent_fn_with_wrong_num_actions():
  def recurrent_fn(params, key, action, emb):
    return mctx.RecurrentFnOutput(
        reward=jnp.zeros(2), discount=jnp.ones(2),
        prior_logits=jnp.zeros((2, 7)), value=jnp.zeros(2)), emb
  with pytest.raises(ValueError, match=r"needs K == number of actions"):
    tsearch.gumbel_search(None, jax.random.key(0), _good_root(),
                          tsearch.from_mctx_recurrent_fn(recurrent_fn),
                          num_simulations=2)
  with pytest.raises(ValueError, match=r"invalid_actions must have"):
    tsearch.root_from_mctx(
        mctx.RootFnOutput(prior_logits=jnp.zeros((2, 3)), value=jnp.zeros(2),
                          embedding=jnp.zeros(2)), jnp.zeros((2, 4)))


def _exhausted_ref(t, b, n):
  if t.node_terminal[b, n] or not t.children_mask[b, n].any():
    return True
  kids = [int(t.children_index[b, n, k]) for k in range(t.num_children)
          if t.children_mask[b, n, k]]
  return all(c >= 0 and _exhausted_ref(t, b, c) for c in kids)


def test_skip_dead_ends():
  """With skip_dead_ends a simulation ends on an exhausted node only when
  every legal sibling slot is exhausted too; mctx's rule does not care."""
  mdp = toy.make_toy_mdp(jax.random.key(4), 30, 3, terminal_fraction=0.4,
                         illegal_fraction=0.3)
  violations = {}
  for skip in (False, True):
    out = jax.jit(lambda m, k, skip=skip: tsearch.puct_search(
        m, k, toy.root(m, jnp.arange(4)), toy.expand_fn, num_simulations=40,
        dirichlet_fraction=0.0, skip_dead_ends=skip))(mdp, jax.random.key(1))
    t = jax.device_get(out.search_tree)
    ex = np.asarray(search_lib._exhausted(t, None))
    bad = 0
    for b in range(4):
      for n in range(1, int(t.num_nodes[b])):
        assert bool(ex[b, n]) == _exhausted_ref(t, b, n)
        if t.node_terminal[b, n] and t.node_visits[b, n] > 1:
          p = int(t.parents[b, n])
          sib = [int(t.children_index[b, p, k]) for k in range(3)
                 if t.children_mask[b, p, k]]
          bad += not all(c >= 0 and ex[b, c] for c in sib)
    violations[skip] = bad
  assert violations[True] == 0
  assert violations[False] > 0  # the test tree does revisit dead ends
