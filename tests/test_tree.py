"""Tree contracts: empty_tree, path_to_root, reroot (+ search after reroot)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tsearch
from tsearch._src import toy_mdp as toy

B, K, SIMS = 3, 3, 10


def _empty(b=B, n=SIMS + 1):
  return tsearch.empty_tree(batch_size=b, capacity=n, num_children=K,
                            action_length=1,
                            embedding_example=jnp.zeros(b, jnp.int32))


def test_empty_tree_fill_values_and_errors():
  t = _empty()
  assert (t.batch_size, t.capacity, t.num_children, t.action_length) == (
      B, SIMS + 1, K, 1)
  assert np.all(np.asarray(t.parents) == tsearch.Tree.NO_PARENT)
  assert np.all(np.asarray(t.children_index) == tsearch.Tree.UNVISITED)
  assert t.embeddings.shape == (B, SIMS + 1)
  assert not np.any(np.asarray(t.nonfinite))
  with pytest.raises(ValueError, match="must be positive"):
    tsearch.empty_tree(batch_size=1, capacity=0, num_children=1,
                       action_length=1, embedding_example=jnp.zeros(1))
  with pytest.raises(ValueError, match="leading batch dimension 2"):
    tsearch.empty_tree(batch_size=2, capacity=3, num_children=1,
                       action_length=1, embedding_example=jnp.zeros(3))


@jax.jit
def _search(mdp, key, tree):
  return tsearch.puct_search(mdp, key, toy.root(mdp, jnp.arange(B)),
                             toy.expand_fn, num_simulations=SIMS, tree=tree,
                             dirichlet_fraction=0.0)


def _mdp():
  return toy.make_toy_mdp(jax.random.key(0), 25, K)


def _first_search(mdp):
  return _search(mdp, jax.random.key(1), _empty(n=2 * SIMS + 1))


def test_path_to_root():
  t = _first_search(_mdp()).search_tree
  deepest = jnp.argmax(t.node_depth, axis=1)
  path = np.asarray(tsearch._src.tree.path_to_root(t, deepest, max_depth=SIMS))
  for b in range(B):
    depth = int(t.node_depth[b, deepest[b]])
    assert path[b, depth] == 0 and np.all(path[b, depth + 1:] == -1)
    for i in range(depth):
      assert path[b, i + 1] == int(t.parents[b, path[b, i]])


def _solved_fixture():
  """A searched tree, its structure as numpy, and blank terminal marks."""
  t = _first_search(_mdp()).search_tree
  return (t, np.asarray(t.parents), np.asarray(t.node_depth),
          np.asarray(t.action_from_parent), np.asarray(t.num_nodes),
          np.zeros_like(np.asarray(t.node_terminal)),
          np.zeros_like(np.asarray(t.children_rewards)))


def _root_slot(parents, depth, slot, b, node):
  """The root slot above ``node`` of row ``b`` (numpy walk up)."""
  while depth[b, node] > 1:
    node = parents[b, node]
  return slot[b, node]


def test_solved_root_slot_follows_the_shallowest_verified_terminal():
  t, parents, depth, slot, n, terminal, rewards = _solved_fixture()

  def mark(b, node, reward):
    terminal[b, node] = True
    rewards[b, parents[b, node], slot[b, node]] = reward

  root_slot = functools.partial(_root_slot, parents, depth, slot)

  nodes = [sorted(range(1, n[b]), key=lambda i: -depth[b, i]) for b in range(B)]
  deep0 = nodes[0][0]
  assert depth[0, deep0] >= 2  # the walk up matters
  mark(0, deep0, 1.0)                      # row 0: one solved leaf
  mark(1, nodes[1][0], 0.3)                # row 1: below the threshold
  deep2, shallow2 = nodes[2][0], nodes[2][-1]
  assert depth[2, shallow2] < depth[2, deep2]
  mark(2, deep2, 1.0)                      # row 2: two solved, the
  mark(2, shallow2, 1.0)                   # shallowest wins
  t = t.replace(node_terminal=jnp.asarray(terminal),
                children_rewards=jnp.asarray(rewards))
  found, got = jax.jit(tsearch.solved_root_slot, static_argnums=1)(t, SIMS)
  np.testing.assert_array_equal(found, [True, False, True])
  assert int(got[0]) == root_slot(0, deep0)
  assert int(got[1]) == 0
  assert int(got[2]) == root_slot(2, shallow2)
  found, _ = tsearch.solved_root_slot(t, SIMS, threshold=0.25)
  assert bool(found[1])


def test_solved_root_slot_with_solved_child_slots():
  t, parents, depth, slot, n, terminal, rewards = _solved_fixture()
  mask = np.array(t.children_mask)
  sc = np.zeros_like(mask)

  root_slot = functools.partial(_root_slot, parents, depth, slot)

  # Row 0: a deep node has a solved (unvisited) child slot.
  deep0 = max(range(1, n[0]), key=lambda i: depth[0, i])
  assert depth[0, deep0] >= 2
  sc[0, deep0, np.argmax(mask[0, deep0])] = True
  # Row 1: a solved slot of the root itself, and a deeper solved terminal.
  k1 = int(np.nonzero(mask[1, 0])[0][-1])
  sc[1, 0, k1] = True
  deep1 = max(range(1, n[1]), key=lambda i: depth[1, i])
  terminal[1, deep1] = True
  rewards[1, parents[1, deep1], slot[1, deep1]] = 1.0
  # Row 2: a solved slot pruned from the mask counts; one on a free node
  # (beyond num_nodes) does not.
  d1 = next(i for i in range(1, n[2]) if depth[2, i] == 1)
  mask[2, d1, 1] = False
  sc[2, d1, 1] = True
  assert n[2] < t.capacity
  sc[2, n[2], 0] = True
  t = t.replace(node_terminal=jnp.asarray(terminal),
                children_rewards=jnp.asarray(rewards),
                children_mask=jnp.asarray(mask))
  found, got = jax.jit(lambda t, s: tsearch.solved_root_slot(
      t, SIMS, solved_children=s))(t, jnp.asarray(sc))
  np.testing.assert_array_equal(found, [True, True, True])
  assert int(got[0]) == root_slot(0, deep0)
  assert int(got[1]) == k1  # shallowest: depth 1 beats the deep terminal
  assert int(got[2]) == slot[2, d1]
  sc[2, d1, 1] = False  # only the free node's slot is left
  found, _ = tsearch.solved_root_slot(t, SIMS, solved_children=jnp.asarray(sc))
  assert not bool(found[2])
  # Without the slots, row 1 falls back to the terminal's root slot.
  found, got = tsearch.solved_root_slot(t, SIMS)
  np.testing.assert_array_equal(found, [False, True, False])
  assert int(got[1]) == root_slot(1, deep1)


def test_solved_root_slots_and_prefer():
  """Every root slot with a proven solution below it is found, and
  ``prefer`` picks the best-scored of them, not the shallowest."""
  t, parents, depth, slot, n, terminal, rewards = _solved_fixture()
  sc = np.zeros(t.children_mask.shape, bool)

  root_slot = functools.partial(_root_slot, parents, depth, slot)

  want = np.zeros((B, K), bool)
  # Row 0: solved leaves under two different root slots, one shallow and
  # one deep.
  by_slot = {}
  for i in range(1, n[0]):
    by_slot.setdefault(root_slot(0, i), []).append(i)
  assert len(by_slot) >= 2
  deep = max(range(1, n[0]), key=lambda i: depth[0, i])
  s_b = root_slot(0, deep)
  s_a = min(s for s in by_slot if s != s_b)
  shallow = min(by_slot[s_a], key=lambda i: depth[0, i])  # depth 1
  for node in (shallow, deep):
    terminal[0, node] = True
    rewards[0, parents[0, node], slot[0, node]] = 1.0
  want[0, [s_a, s_b]] = True
  # Row 1: a solved slot of the root itself and one of a deeper node.
  sc[1, 0, 0] = True
  d = max(range(1, n[1]), key=lambda i: depth[1, i])
  sc[1, d, 0] = True
  want[1, [0, root_slot(1, d)]] = True
  # Row 2: only a terminal below the threshold: nothing.
  leaf = max(range(1, n[2]), key=lambda i: depth[2, i])
  terminal[2, leaf] = True
  rewards[2, parents[2, leaf], slot[2, leaf]] = 0.3
  t = t.replace(node_terminal=jnp.asarray(terminal),
                children_rewards=jnp.asarray(rewards))
  got = jax.jit(lambda t, s: tsearch._src.tree.solved_root_slots(
      t, SIMS, solved_children=s))(t, jnp.asarray(sc))
  np.testing.assert_array_equal(got, want)
  # prefer: the best-scored solving slot, whatever the depths.
  for scores in (np.array([[0., 1., 2.]] * B), np.array([[2., 1., 0.]] * B)):
    found, got = jax.jit(lambda t, s, p: tsearch.solved_root_slot(
        t, SIMS, solved_children=s, prefer=p))(
            t, jnp.asarray(sc), jnp.asarray(scores, jnp.float32))
    np.testing.assert_array_equal(found, [True, True, False])
    for b in range(2):
      assert int(got[b]) == int(np.argmax(np.where(want[b], scores[b],
                                                   -np.inf)))
    assert int(got[2]) == 0
  # Without prefer row 0 follows the shallowest solution.
  assert depth[0, shallow] < depth[0, deep]
  _, got = tsearch.solved_root_slot(t, SIMS, solved_children=jnp.asarray(sc))
  assert int(got[0]) == s_a


def test_reroot_then_continue_search():
  mdp = _mdp()
  first = _first_search(mdp)
  old = first.search_tree
  slots = jnp.argmax(old.children_visits[:, 0], axis=1)  # Expanded slots.
  rerooted = jax.jit(tsearch.reroot)(old, slots)
  b = np.arange(B)
  child = np.asarray(old.children_index)[b, 0, np.asarray(slots)]
  np.testing.assert_array_equal(rerooted.node_visits[:, 0],
                                np.asarray(old.node_visits)[b, child])
  np.testing.assert_array_equal(rerooted.embeddings[:, 0],
                                np.asarray(old.embeddings)[b, child])
  assert np.all(np.asarray(rerooted.node_depth[:, 0]) == 0)
  assert np.all(np.asarray(rerooted.parents[:, 0]) == tsearch.Tree.NO_PARENT)
  # A continued search adds SIMS visits to the kept root's children.
  kept = np.asarray(rerooted.children_visits[:, 0]).sum(-1)
  more = _search(mdp, jax.random.key(2), rerooted).search_tree
  np.testing.assert_array_equal(
      np.asarray(more.children_visits[:, 0]).sum(-1), kept + SIMS)
  assert np.all(np.asarray(more.num_nodes)
                == np.asarray(rerooted.num_nodes) + SIMS)
  # The new root's embedding is the committed child's state, not a root's.
  np.testing.assert_array_equal(more.embeddings[:, 0],
                                np.asarray(old.embeddings)[b, child])


def test_reroot_unexpanded_child_gives_empty_tree_and_search_restarts():
  mdp = _mdp()
  old = _first_search(mdp).search_tree
  visits = np.asarray(old.children_visits[:, 0])
  # Row 0: an expanded slot; rows 1, 2: an unvisited slot or out of range.
  slots = np.argmax(visits, axis=1)
  unvisited = np.flatnonzero(visits[1] == 0)
  slots[1] = unvisited[0] if unvisited.size else K
  slots[2] = -1
  t = jax.jit(tsearch.reroot)(old, jnp.asarray(slots))
  empty = _empty(n=2 * SIMS + 1)
  assert int(t.num_nodes[0]) > 0
  for row in (1, 2):
    assert int(t.num_nodes[row]) == 0
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[row], t),
                                jax.tree.map(lambda x: x[row], empty))
  # Searching again starts rows 1 and 2 from the given roots.
  more = _search(mdp, jax.random.key(3), t).search_tree
  np.testing.assert_array_equal(more.embeddings[1:, 0], [1, 2])
  np.testing.assert_array_equal(
      np.asarray(more.children_visits[1:, 0]).sum(-1), [SIMS, SIMS])
  assert np.all(np.asarray(more.num_nodes[1:]) == SIMS + 1)


def test_reroot_bad_slot_shape():
  with pytest.raises(ValueError, match=r"action_slot must have shape"):
    tsearch.reroot(_empty(), jnp.zeros((B, 1), jnp.int32))


def test_terminal_root_after_reroot_is_not_searched():
  mdp = toy.make_toy_mdp(jax.random.key(0), 25, K, terminal_fraction=1.0)
  old = _search(mdp, jax.random.key(1), _empty(n=2 * SIMS + 1)).search_tree
  slots = jnp.argmax(old.children_visits[:, 0], axis=1)
  rerooted = jax.jit(tsearch.reroot)(old, slots)
  assert np.all(np.asarray(rerooted.node_terminal[:, 0]))
  more = _search(mdp, jax.random.key(2), rerooted).search_tree
  # Only the root prior is rewritten (PUCT stores it as noised log-probs).
  chex.assert_trees_all_equal(
      more.replace(children_prior_logits=rerooted.children_prior_logits),
      rerooted)
