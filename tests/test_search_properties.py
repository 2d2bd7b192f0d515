"""Property tests of the search and reroot on random toy MDPs (hypothesis).

Shapes are fixed (the MDP tables, discount and masks are traced), so each
policy compiles once and hypothesis only varies data.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

import tsearch
from tsearch._src import toy_mdp as toy

B, K, SIMS, STATES = 4, 3, 12, 40
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


@functools.partial(jax.jit, static_argnames=("policy",))
def _search(mdp, key, *, policy):
  fn = tsearch.puct_search if policy == "puct" else tsearch.gumbel_search
  return fn(mdp, key, toy.root(mdp, jnp.arange(B)), toy.expand_fn,
            num_simulations=SIMS)


_reroot = jax.jit(tsearch.reroot)

problems = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16),
    "policy": st.sampled_from(["puct", "gumbel"]),
    "discount": st.sampled_from([1.0, -1.0, 0.9]),
    "illegal_fraction": st.sampled_from([0.0, 0.5]),
    "terminal_fraction": st.sampled_from([0.0, 0.3]),
})


def _run(p):
  mdp = toy.make_toy_mdp(jax.random.key(p["seed"]), STATES, K,
                         discount=p["discount"],
                         illegal_fraction=p["illegal_fraction"],
                         terminal_fraction=p["terminal_fraction"])
  key = jax.random.key(p["seed"] + 1)
  return mdp, key, _search(mdp, key, policy=p["policy"])


def _np(tree):
  return jax.tree.map(np.asarray, tree)


@SETTINGS
@given(problems)
def test_tree_invariants(p):
  mdp, _, out = _run(p)
  t = _np(out.search_tree)
  assert np.all(t.children_visits[:, 0].sum(-1) == SIMS)
  assert not t.overflowed.any() and not t.nonfinite.any()
  r_max = float(jnp.abs(mdp.rewards).max())
  v_max = float(jnp.abs(mdp.values).max())
  for b in range(B):
    n = int(t.num_nodes[b])
    assert np.all(t.parents[b, n:] == -1) and np.all(t.node_visits[b, n:] == 0)
    for i in range(n):
      kids = t.children_index[b, i]
      expanded = kids >= 0
      if i > 0:
        parent = t.parents[b, i]
        assert parent < i
        assert t.children_index[b, parent, t.action_from_parent[b, i]] == i
        assert t.node_depth[b, i] == t.node_depth[b, parent] + 1
      if t.node_terminal[b, i]:
        assert not expanded.any() and t.raw_values[b, i] == 0
        assert t.node_values[b, i] == 0
      else:
        # Each visit of a non-terminal node either expanded it (the first)
        # or went on to one of its children.
        assert t.node_visits[b, i] == 1 + t.children_visits[b, i].sum()
      # Interior masks: no illegal slot is ever expanded or visited.
      assert np.all(t.children_mask[b, i][expanded])
      assert np.all(t.children_visits[b, i][~t.children_mask[b, i]] == 0)
      np.testing.assert_array_equal(t.children_visits[b, i][expanded],
                                    t.node_visits[b, kids[expanded]])
      np.testing.assert_allclose(t.children_values[b, i][expanded],
                                 t.node_values[b, kids[expanded]], atol=1e-6)
    # Every return is a sum of <= depth rewards plus a leaf value.
    depth = int(t.node_depth[b, :n].max())
    bound = depth * r_max + v_max + 1e-4
    assert np.all(np.abs(t.node_values[b, :n]) <= bound)
  assert np.all(np.asarray(out.action_weights)[~t.children_mask[:, 0]] == 0)
  np.testing.assert_allclose(np.asarray(out.action_weights).sum(-1), 1.0,
                             rtol=1e-5)


@SETTINGS
@given(problems)
def test_same_key_same_tree(p):
  mdp, key, out = _run(p)
  again = _search(mdp, key, policy=p["policy"])
  chex.assert_trees_all_equal(out, again)


def _subtree(t, b, child):
  """Old indices of the subtree under ``child``, ascending."""
  keep = [child]
  for i in range(child + 1, int(t.num_nodes[b])):
    if t.parents[b, i] in keep:
      keep.append(i)
  return keep


@SETTINGS
@given(problems)
def test_reroot_keeps_subtree_statistics(p):
  _, _, out = _run(p)
  old = _np(out.search_tree)
  new = _np(_reroot(out.search_tree, out.action))
  for b in range(B):
    child = int(old.children_index[b, 0, int(out.action[b])])
    if child < 0:
      assert new.num_nodes[b] == 0
      continue
    keep = _subtree(old, b, child)
    n = len(keep)
    assert new.num_nodes[b] == n
    remap = {o: j for j, o in enumerate(keep)}
    for name in ("node_visits", "node_values", "raw_values", "node_terminal",
                 "children_visits", "children_values", "children_rewards",
                 "children_prior_logits", "children_mask", "embeddings"):
      np.testing.assert_array_equal(getattr(new, name)[b, :n],
                                    getattr(old, name)[b, keep], err_msg=name)
    np.testing.assert_array_equal(new.node_depth[b, :n],
                                  old.node_depth[b, keep] - 1)
    expected_kids = np.vectorize(lambda o: remap.get(o, -1))(
        old.children_index[b, keep])
    np.testing.assert_array_equal(new.children_index[b, :n], expected_kids)
    expected_parents = [-1] + [remap[old.parents[b, o]] for o in keep[1:]]
    np.testing.assert_array_equal(new.parents[b, :n], expected_parents)
    # Freed nodes hold the empty-tree fill values.
    assert np.all(new.node_visits[b, n:] == 0)
    assert np.all(new.children_index[b, n:] == -1)
    assert np.all(new.parents[b, n:] == -1)
