"""Paged KV arena (LMSearchConfig.page_size > 0): the same trees as the slab
layout, pages that follow the tokens held, reroot frees pages, overflow."""
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

ENV = ToyEnv(vocab_size=16, max_len=20)
# Step level, Gumbel: S = 6 tokens in pages of 2; steps end at the
# delimiter, EOS or after S tokens, so most are shorter than S.
STEP = tsearch.LMSearchConfig(
    mode="step", policy="gumbel", num_simulations=8, num_children=3,
    step_length=6, max_depth=3, keep_logits=True, reserve_tokens=6,
    page_size=2)
# Token level, PUCT: one token per node in pages of 1. A fresh search adds
# at most 10 nodes, so its 10 pages never run out; a search continued after
# a reroot (room for 21 nodes) does.
TOKEN = tsearch.LMSearchConfig(
    mode="token", policy="puct", num_simulations=10, num_children=3,
    max_depth=4, keep_logits=True, capacity=21, reserve_tokens=4,
    page_size=1, num_pages=10)


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


@pytest.mark.parametrize("config", [STEP, TOKEN], ids=["step_gumbel",
                                                       "token_puct"])
def test_same_tree_as_slab_and_exact(config):
  g, st = model()
  prompt, lengths = prompts()
  paged, ref = search(config), search(slab(config))
  tree = paged.search_tree
  assert int(tree.node_depth.max()) >= 2  # paths through several ancestors
  assert_same_tree(tree, ref.search_tree)
  np.testing.assert_array_equal(paged.action, ref.action)
  np.testing.assert_array_equal(paged.action_weights, ref.action_weights)
  np.testing.assert_array_equal(paged.tokens_forwarded, ref.tokens_forwarded)
  assert_tree_exact(g, st, tree, prompt, lengths)
  assert "keys" not in tree.embeddings["kv"]  # no per-node slab
  np.testing.assert_array_equal(tree.arena["num_used"],
                                page_count(tree, config.page_size))
  assert_pages_consistent(tree, config.page_size)
  assert not tree.overflowed.any()


def test_pages_follow_the_tokens_held():
  tree = search(STEP).search_tree
  ps, s = STEP.page_size, STEP.step_length
  length = np.asarray(tree.embeddings["kv"]["length"])
  used = np.arange(tree.capacity)[None] < np.asarray(tree.num_nodes)[:, None]
  tokens = length[used & (np.arange(tree.capacity)[None] > 0)]
  assert (tokens < s).mean() >= 0.5, tokens  # mostly short steps
  # The default pool (num_pages=0) reserves a full slab's slots ...
  assert kv_arena.tree_num_token_slots(tree) == (
      tree.batch_size * tree.capacity * s)
  slab_tree = search(slab(STEP)).search_tree
  assert kv_arena.arena_bytes(tree) == kv_arena.arena_bytes(slab_tree)
  # ... of which the pages in use are what the step lengths imply.
  in_use = int(np.asarray(kv_arena.pages_in_use(tree)).sum()) * ps
  ratio = in_use / kv_arena.tree_num_token_slots(tree)
  want = (-(-tokens // ps) * ps).sum() / (tree.batch_size * tree.capacity * s)
  assert ratio == pytest.approx(want)
  # The slab gives the same nodes S slots each; pages hold far fewer.
  node_slots = int((used & (np.arange(tree.capacity)[None] > 0)).sum()) * s
  assert in_use / node_slots <= 0.75, in_use / node_slots


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


def test_step_reroot_moves_the_kept_pages():
  g, st = model()
  prompt, lengths = prompts()
  out, ref = search(STEP), search(slab(STEP))
  slot, committed = kept_root_slot(out.search_tree)
  reroot = jax.jit(tsearch.lm_reroot)
  tree, cache = reroot(out.search_tree, out.prompt_cache, slot)
  ref_tree, ref_cache = reroot(ref.search_tree, ref.prompt_cache, slot)
  # The new root's tokens reach the prompt cache as from the slab.
  for name in ("keys", "values", "mask", "positions", "num_used"):
    np.testing.assert_array_equal(getattr(cache, name),
                                  getattr(ref_cache, name), err_msg=name)
  # Pages free: the pool holds the kept nodes' pages only, compacted.
  before = np.asarray(out.search_tree.arena["num_used"])
  after = np.asarray(tree.arena["num_used"])
  np.testing.assert_array_equal(after, page_count(tree, STEP.page_size))
  assert (after < before).all()
  assert_pages_consistent(tree, STEP.page_size)
  pool = np.asarray(tree.arena["keys"])
  for b in range(2):
    assert not pool[b, after[b]:].any()  # free pages are zeroed
  # Every kept node reads its own keys/values through the new pages.
  length = np.asarray(tree.embeddings["kv"]["length"])
  for n in range(tree.capacity):
    node = jnp.full((2,), n, jnp.int32)
    got = kv_arena.node_keys_values(tree, node)
    want = kv_arena.node_keys_values(ref_tree, node)
    for b in range(2):
      if n < int(tree.num_nodes[b]):
        for x, y in zip(got, want):
          np.testing.assert_array_equal(x[b, :, :length[b, n]],
                                        y[b, :, :length[b, n]])
  assert_same_tree(tree, ref_tree)
  assert_tree_exact(g, st, tree, prompt, lengths, committed)


def test_token_reroot_then_out_of_pages():
  g, st = model()
  prompt, lengths = prompts()
  out = search(TOKEN)
  slot, committed = kept_root_slot(out.search_tree)
  tree, cache = jax.jit(tsearch.lm_reroot)(out.search_tree, out.prompt_cache,
                                           slot)
  kept = np.asarray(tree.num_nodes)
  # One page per kept node but the root (its token is in the prompt cache).
  np.testing.assert_array_equal(tree.arena["num_used"], kept - 1)
  assert (kept - 1 < np.asarray(out.search_tree.arena["num_used"])).all()
  more = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(6),
                           config=TOKEN, tree=tree, prompt_cache=cache)
  grown = more.search_tree
  # The pool (10 pages) fills before the tree (21 nodes): the node that
  # does not fit is not stored, the row is marked overflowed (as a full
  # tree is) and grows no further.
  np.testing.assert_array_equal(grown.arena["num_used"], [10, 10])
  np.testing.assert_array_equal(grown.num_nodes, [11, 11])
  assert grown.overflowed.all()
  assert_pages_consistent(grown, 1)
  # Nothing stored was overwritten: every node is still exact, the new ones
  # read the moved pages, and the visit counts stay consistent.
  assert_tree_exact(g, st, grown, prompt, lengths, committed)
  # Visits: every node's first visit plus its children's; kept nodes once at
  # max_depth (they count every visit) keep their excess.
  def excess(t):
    t = jax.device_get(t)
    return t.node_visits - 1 - t.children_visits.sum(-1)

  was, now = excess(tree), excess(grown)
  new_nodes = np.arange(grown.capacity)[None] >= kept[:, None]
  inner = (new_nodes & (np.arange(grown.capacity)[None]
                        < np.asarray(grown.num_nodes)[:, None])
           & ~np.asarray(grown.node_terminal)
           & (np.asarray(grown.node_depth) < TOKEN.max_depth))
  assert (now[inner] == 0).all()
  for b in range(2):
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
  assert STEP.pages_per_tree == 9 * 3  # capacity * S / page_size
  assert TOKEN.pages_per_tree == 10
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
                      config=dataclasses.replace(STEP, num_pages=4),
                      tree=paged.search_tree,
                      prompt_cache=paged.prompt_cache)
