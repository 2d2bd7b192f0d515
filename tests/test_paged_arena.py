"""Paged KV arena (LMSearchConfig.page_size > 0): the same trees as the slab
layout, pages that follow the tokens held, reroot frees pages, overflow.

Three search programs are compiled (paged, slab, and the paged search
continued after a reroot, PUCT), which is most of this file's time."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tsearch
from tsearch import kv_arena
from tests.lm_toy_env import ToyEnv
from tests.test_lm_search import _fwd, make_model, node_sequences, prompts



@dataclasses.dataclass(frozen=True)
class ShortSteps(ToyEnv):
  """ToyEnv whose steps end at tokens 2-4 (short steps, as in text) and
  whose answers end only at ``max_len`` (no EOS for the search to settle
  on early)."""
  eos_id: int = 99

  def step_ended(self, state, token):
    del state
    return (token >= 2) & (token <= 4)


ENV = ShortSteps(vocab_size=16, max_len=20)
# Step level: S = 6 tokens in pages of 2; most steps are shorter than S.
# Room for 32 nodes but a pool of 24 pages (a quarter of the slab's 32 x 6
# slots): a fresh search of 8 simulations (<= 3 pages per node) never runs
# out; the deeper PUCT search of 30 simulations that continues it after a
# reroot does.
STEP = tsearch.LMSearchConfig(
    mode="step", policy="gumbel", num_simulations=8, num_children=3,
    step_length=6, max_depth=3, keep_logits=True, reserve_tokens=6,
    capacity=32, page_size=2, num_pages=24)
MORE = dataclasses.replace(STEP, policy="puct", num_simulations=30,
                           max_depth=5, pb_c_init=4.0)


@functools.cache
def model():
  return make_model(num_layers=1)


@functools.cache
def search(config, key=3):
  g, st = model()
  prompt, lengths = prompts()
  return tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(key),
                           config=config)


def assert_tree_exact(g, st, tree, prompt, lengths, committed=None):
  """Every node's logits and value equal a full forward of its sequence
  (tests/test_lm_search.py's check, in fixed [64, 48] batches so that one
  compiled forward serves the module; the priors of steps are compared
  with the slab layout's bit for bit instead)."""
  seqs = node_sequences(tree, prompt, lengths, committed)
  emb = jax.device_get(tree.embeddings)
  values, terminal = np.asarray(tree.raw_values), np.asarray(
      tree.node_terminal)
  for lo in range(0, len(seqs), 64):
    chunk = seqs[lo:lo + 64]
    batch = np.zeros((64, 48), np.int32)
    for i, (_, _, seq) in enumerate(chunk):
      batch[i, :len(seq)] = seq
    out = jax.device_get(_fwd(g, st, jnp.asarray(batch), jnp.broadcast_to(
        jnp.arange(48), batch.shape)))
    for i, (b, n, seq) in enumerate(chunk):
      np.testing.assert_allclose(emb["logits"][b, n],
                                 out.logits[i, len(seq) - 1], atol=1e-4)
      if not terminal[b, n]:
        np.testing.assert_allclose(values[b, n], out.value[i, len(seq) - 1],
                                   atol=1e-4)
  assert len(seqs) == int(np.asarray(tree.num_nodes).sum())


def slab(config):
  return dataclasses.replace(config, page_size=0, num_pages=0)


def assert_same_tree(a, b):
  for name in ("children_actions", "children_index", "children_mask",
               "node_visits", "raw_values", "node_values", "children_visits",
               "children_values", "children_prior_logits", "num_nodes",
               "node_terminal"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name),
                                  err_msg=name)
  for name in ("logits", "start", "length"):
    x = a.embeddings.get(name, a.embeddings["kv"].get(name))
    y = b.embeddings.get(name, b.embeddings["kv"].get(name))
    np.testing.assert_array_equal(x, y, err_msg=name)


def page_count(tree, page_size):
  """Pages the used non-root nodes' own tokens need: sum ceil(len / ps)."""
  length = np.asarray(tree.embeddings["kv"]["length"])
  used = np.arange(tree.capacity)[None] < np.asarray(tree.num_nodes)[:, None]
  return np.where(used, -(-length // page_size), 0).sum(1)


def assert_pages_consistent(tree, page_size):
  """Each used node holds ceil(len / ps) pages, all distinct, < num_used."""
  kv = jax.device_get(tree.embeddings["kv"])
  used_pages = np.asarray(tree.arena["num_used"])
  for b in range(tree.batch_size):
    held = []
    for n in range(int(tree.num_nodes[b])):
      need = -(-int(kv["length"][b, n]) // page_size)
      row = kv["pages"][b, n]
      assert (row[:need] >= 0).all() and (row[need:] == -1).all(), (b, n, row)
      held += list(row[:need])
    # Handed out in node order, no gaps, none twice.
    assert held == list(range(used_pages[b])), (b, held)


def test_same_tree_as_slab_and_exact():
  g, st = model()
  prompt, lengths = prompts()
  paged, ref = search(STEP), search(slab(STEP))
  tree = paged.search_tree
  assert int(tree.node_depth.max()) >= 2  # paths through several ancestors
  assert_same_tree(tree, ref.search_tree)
  np.testing.assert_array_equal(paged.action, ref.action)
  np.testing.assert_array_equal(paged.action_weights, ref.action_weights)
  np.testing.assert_array_equal(paged.tokens_forwarded, ref.tokens_forwarded)
  assert_tree_exact(g, st, tree, prompt, lengths)
  assert "keys" not in tree.embeddings["kv"]  # no per-node slab
  np.testing.assert_array_equal(tree.arena["num_used"],
                                page_count(tree, STEP.page_size))
  assert_pages_consistent(tree, STEP.page_size)
  assert not tree.overflowed.any()


def test_pages_follow_the_tokens_held():
  tree = search(STEP).search_tree
  ps, s = STEP.page_size, STEP.step_length
  length = np.asarray(tree.embeddings["kv"]["length"])
  nodes = np.arange(tree.capacity)[None]
  below = (nodes < np.asarray(tree.num_nodes)[:, None]) & (nodes > 0)
  tokens = length[below]
  assert (tokens < s).mean() >= 0.5, tokens  # mostly short steps
  # tokens_held counts them per row, the same in both layouts, and they are
  # the sampled steps' tokens (children_actions, -1 after a step's end).
  held = np.asarray(kv_arena.tokens_held(tree))
  assert held.sum() == tokens.sum() and held.shape == (tree.batch_size,)
  acts, kids = np.asarray(tree.children_actions), np.asarray(tree.children_index)
  np.testing.assert_array_equal(
      held, [(acts[r][kids[r] > 0] >= 0).sum() for r in range(len(held))])
  # The pool: 24 pages of 2 tokens per tree, a quarter of the slab's slots.
  slots = kv_arena.tree_num_token_slots(tree)
  assert slots == tree.batch_size * STEP.num_pages * ps
  slab_tree = search(slab(STEP)).search_tree
  np.testing.assert_array_equal(kv_arena.tokens_held(slab_tree), held)
  assert 4 * kv_arena.arena_bytes(tree) == kv_arena.arena_bytes(slab_tree)
  assert 4 * slots == kv_arena.tree_num_token_slots(slab_tree)
  # The pages in use are what the step lengths imply: ceil(len / 2) each.
  in_use = int(np.asarray(kv_arena.pages_in_use(tree)).sum()) * ps
  assert in_use == (-(-tokens // ps) * ps).sum()
  # The slab gives the same nodes S slots each; their pages hold far fewer.
  ratio = in_use / (below.sum() * s)
  assert ratio == pytest.approx((-(-tokens // ps) * ps).mean() / s)
  assert ratio <= 0.75, ratio


def kept_root_slot(t):
  """The most visited non-terminal root child of each row."""
  child = np.asarray(t.children_index[:, 0])
  live = (child > 0) & ~np.take_along_axis(np.asarray(t.node_terminal),
                                           np.maximum(child, 0), axis=1)
  assert live.any(-1).all()
  visits = np.where(live, np.asarray(t.children_visits[:, 0]), -1)
  slot = visits.argmax(-1)
  acts = np.asarray(t.children_actions)
  committed = [[int(x) for x in acts[b, 0, slot[b]] if x >= 0]
               for b in range(t.batch_size)]
  return jnp.asarray(slot, jnp.int32), committed


reroot = jax.jit(tsearch.lm_reroot)


def kept_nodes(parents, child):
  """Old indices of the nodes under ``child`` (itself first), in order:
  the new node ``j`` of :func:`tsearch.reroot` is the ``j``-th of them."""
  keep = [child]
  for m in range(child + 1, len(parents)):
    if parents[m] in keep:
      keep.append(m)
  return keep


def test_step_reroot_moves_the_kept_pages():
  g, st = model()
  prompt, lengths = prompts()
  out = search(STEP)
  old = out.search_tree
  slot, committed = kept_root_slot(old)
  tree, cache = reroot(old, out.prompt_cache, slot)
  # Pages free: the pool holds the kept nodes' pages only, compacted.
  before = np.asarray(old.arena["num_used"])
  after = np.asarray(tree.arena["num_used"])
  np.testing.assert_array_equal(after, page_count(tree, STEP.page_size))
  assert (after < before).all()
  assert_pages_consistent(tree, STEP.page_size)
  pool = np.asarray(tree.arena["keys"])
  for b in range(2):
    assert not pool[b, after[b]:].any()  # free pages are zeroed
  # The new root's tokens (read through its old pages) went to the prompt
  # cache; every other kept node reads its own keys/values through its new
  # pages.
  p = prompt.shape[1]
  length = np.asarray(tree.embeddings["kv"]["length"])
  parents = jax.device_get(old.parents)
  keep = [kept_nodes(parents[b], int(old.children_index[b, 0, slot[b]]))
          for b in range(2)]
  np.testing.assert_array_equal([len(k) for k in keep], tree.num_nodes)
  own = jax.jit(kv_arena.node_keys_values)
  k0, v0 = own(old, jnp.array([k[0] for k in keep]))
  for b in range(2):
    n0 = len(committed[b])
    np.testing.assert_array_equal(cache.keys[:, b, p:p + n0], k0[b, :, :n0])
    np.testing.assert_array_equal(cache.values[:, b, p:p + n0],
                                  v0[b, :, :n0])
  for j in range(1, max(len(k) for k in keep)):
    got = own(tree, jnp.full((2,), j))
    want = own(old, jnp.array([k[min(j, len(k) - 1)] for k in keep]))
    for b in range(2):
      if j < len(keep[b]):
        for x, y in zip(got, want):
          np.testing.assert_array_equal(x[b, :, :length[b, j]],
                                        y[b, :, :length[b, j]])
  assert_tree_exact(g, st, tree, prompt, lengths, committed)


def test_search_after_reroot_is_exact_until_out_of_pages():
  g, st = model()
  prompt, lengths = prompts()
  out = search(STEP)
  slot, committed = kept_root_slot(out.search_tree)
  tree, cache = reroot(out.search_tree, out.prompt_cache, slot)
  kept, free = np.asarray(tree.num_nodes), STEP.num_pages - np.asarray(
      tree.arena["num_used"])
  more = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(6),
                           config=MORE, tree=tree, prompt_cache=cache)
  grown = more.search_tree
  used = np.asarray(grown.arena["num_used"])
  # The pool (24 pages) fills before the tree (32 nodes): the node that does
  # not fit is not stored, the row is marked overflowed (as a full tree is)
  # and grows no further.
  assert grown.overflowed.all()
  assert (np.asarray(grown.num_nodes) < grown.capacity).all()
  assert (used <= STEP.num_pages).all()
  assert (used > STEP.num_pages - STEP.step_length // STEP.page_size).all()
  assert (used - (STEP.num_pages - free) >= 3).all()  # new pages were used
  assert (np.asarray(grown.num_nodes) > kept).all()
  np.testing.assert_array_equal(used, page_count(grown, STEP.page_size))
  assert_pages_consistent(grown, STEP.page_size)
  # Nothing stored was overwritten: every node is exact (the new ones read
  # the moved pages), and the visit counts stay consistent.
  assert_tree_exact(g, st, grown, prompt, lengths, committed)

  def excess(t):  # visits beyond the first and the children's
    t = jax.device_get(t)
    return t.node_visits - 1 - t.children_visits.sum(-1)

  was, now = excess(tree), excess(grown)
  nodes = np.arange(grown.capacity)[None]
  new = ((nodes >= kept[:, None])
         & (nodes < np.asarray(grown.num_nodes)[:, None])
         & ~np.asarray(grown.node_terminal)
         & (np.asarray(grown.node_depth) < MORE.max_depth))
  assert (now[new] == 0).all()
  for b in range(2):  # kept nodes once at max_depth keep their excess
    np.testing.assert_array_equal(now[b, :kept[b]], was[b, :kept[b]])


def test_bad_page_settings():
  with pytest.raises(ValueError, match="must divide step_length"):
    tsearch.LMSearchConfig(mode="step", step_length=6, page_size=4)
  with pytest.raises(ValueError, match="page_size must be an int >= 0"):
    tsearch.LMSearchConfig(page_size=-1)
  with pytest.raises(ValueError, match="set page_size > 0 too"):
    tsearch.LMSearchConfig(num_pages=8)
  with pytest.raises(ValueError, match="cannot hold one full step"):
    tsearch.LMSearchConfig(mode="step", step_length=6, page_size=2,
                           num_pages=2)
  assert dataclasses.replace(STEP, num_pages=0).pages_per_tree == 32 * 3
  assert dataclasses.replace(  # capacity * S / page_size
      STEP, num_pages=0, capacity=None).pages_per_tree == 9 * 3
  assert STEP.pages_per_tree == 24
  assert slab(STEP).pages_per_tree == 0
  # A tree continues only with the layout that made it.
  g, st = model()
  prompt, lengths = prompts()
  out = search(slab(STEP))
  with pytest.raises(ValueError, match="has the slab layout"):
    tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(0),
                      config=STEP, tree=out.search_tree,
                      prompt_cache=out.prompt_cache)
  paged = search(STEP)
  with pytest.raises(ValueError, match="page pool has"):
    tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(0),
                      config=dataclasses.replace(STEP, num_pages=30),
                      tree=paged.search_tree,
                      prompt_cache=paged.prompt_cache)
