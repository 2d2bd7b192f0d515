"""The tree as a KV cache: per-node keys/values and the prompt's cache.

Layout. Each node stores the keys and values of its *own* tokens only (one
token in token-level search, up to ``S`` tokens of a step in step-level
search) in ``Tree.embeddings['kv']``::

  keys, values: [B, N, L, S, Hkv, Dh]   (model compute dtype)
  start:        [B, N] int32  position of the node's first own token
  length:       [B, N] int32  number of own tokens (0 for the root)

``[B, N]`` lead because the Tree contract stores every per-node payload that
way (so ``empty_tree``, the search's writes and ``reroot`` move it for free).
``L`` then ``S`` matches the model's ``[L, B, T, Hkv, Dh]`` output, so a new
node is stored with one ``moveaxis`` and a gathered path becomes the model's
``[L, B, C, Hkv, Dh]`` context with one ``moveaxis`` of the gathered rows
(never of the whole arena). Keys are stored already rotated at their
absolute positions, so the order of context slots does not matter, only
their mask.

The prompt's keys/values live once per batch row in a :class:`PromptCache`
(passed to ``expand_fn`` through ``params``), never per node. A node is
evaluated against prompt + the nodes on its path (gathered along the parent
pointers with :func:`tsearch._src.tree.path_to_root`, at most ``max_depth`` of them) +
its own tokens (causal). Memory is therefore ``B * N * S`` token slots plus
``B * P`` prompt slots: it grows with the tokens in the tree, not with
nodes x context length.

Paged layout (opt-in, ``LMSearchConfig.page_size > 0``). Steps are often
much shorter than ``S``, so most of a slab's ``N x S`` slots stay empty.
With pages, keys/values live in a per-tree pool of fixed-size pages
(``Tree.arena``) and each node holds a page table instead::

  Tree.arena:  keys, values: [B, num_pages, L, page_size, Hkv, Dh]
               num_used:     [B] int32  pages handed out (a bump pointer)
  per node:    pages:  [B, N, S // page_size] int32  pool page, -1 = none
               start, length: as above

Memory is ``B * num_pages * page_size`` token slots (``num_pages`` is
``LMSearchConfig.num_pages``; its default gives the slab's ``B * N * S``).

A new node of ``len`` tokens takes ``ceil(len / page_size)`` pages, handed
out in expansion order (:func:`store_node_pages`, the search's
``store_fn``). A path is gathered through the page tables in the slab's
order (node, then token), with the slab's masks and positions, so the model
sees the same context and gives the same logits/values. :func:`compact_pages`
(called by :func:`tsearch.lm_reroot`) frees the pages of discarded subtrees:
the kept nodes' pages move to the front of the pool in node order, and the
bump pointer becomes the kept page count. Running out: a node whose pages do
not fit is not stored; its row is marked ``Tree.overflowed`` (as a full
tree is) and stores no further node until a reroot; nothing written is ever
overwritten.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from models import KVContext, ModelConfig
from models import sharding
from tsearch._src.tree import NO_PARENT, ROOT_INDEX, Tree, path_to_root

Array = chex.Array


@chex.dataclass(frozen=True)
class PromptCache:
  """Keys/values of each row's prompt (plus tokens committed by reroots).

  Slots ``[0, capacity)``; ``mask`` marks the slots in use. Committed tokens
  (see :func:`commit_root_tokens`) are written after the prompt.
  """
  keys: Array  # [L, B, C, Hkv, Dh]
  values: Array  # [L, B, C, Hkv, Dh]
  mask: Array  # [B, C] bool
  num_used: Array  # [B] int32, slots written (prompt padding included)
  overflowed: Array  # [B] bool, a commit did not fit (tokens were dropped)
  # [B, C] int32 absolute position of each slot (sliding-window models need
  # it; committed tokens sit after the prompt's padding, so a slot's index is
  # not its position). None: slot index == position, no commits.
  positions: Array | None = None

  def context(self) -> KVContext:
    return KVContext(keys=self.keys, values=self.values, mask=self.mask,
                     positions=self.positions)


def constrain_cache(x: Array) -> Array:
  """A ``[L, B, C, Hkv, Dh]`` cache (prompt cache, decoder rows) sharded on
  the batch over ``data`` and on KV heads over ``model`` under the current
  mesh (:func:`models.sharding.constrain_kv`); ``x`` itself without one."""
  return sharding.constrain_kv(x, batch_dim=1, heads_dim=3)


def constrain_arena(kv: dict, *, per_node: bool = True) -> dict:
  """The arena ``{'keys','values': [B, N, L, S, Hkv, Dh], ...}`` (or, with
  ``per_node=False``, one node's entry ``[B, L, S, Hkv, Dh]``) sharded as
  :func:`constrain_cache` says; other fields are left as they are."""
  heads = 4 if per_node else 3
  out = dict(kv)
  for name in ("keys", "values"):
    out[name] = sharding.constrain_kv(kv[name], batch_dim=0, heads_dim=heads)
  return out


def node_kv_example(config: ModelConfig, batch_size: int,
                    step_length: int) -> dict:
  """One node's arena entry ``{'keys','values': [B, L, S, Hkv, Dh], 'start',
  'length': [B]}``, zeros; the tree stores it as ``[B, N, ...]``."""
  shape = (batch_size, config.num_layers, step_length, config.num_kv_heads,
           config.head_dim)
  z = jnp.zeros(shape, config.compute_dtype)
  return dict(keys=z, values=z, start=jnp.zeros((batch_size,), jnp.int32),
              length=jnp.zeros((batch_size,), jnp.int32))


def is_paged(tree: Tree) -> bool:
  """Whether ``tree`` keeps its keys/values in a page pool."""
  return tree.arena is not None and "pages" in tree.embeddings["kv"]


def paged_node_kv_example(batch_size: int, step_length: int,
                          page_size: int) -> dict:
  """One node's paged arena entry ``{'pages': [B, S // page_size] (-1),
  'start', 'length': [B]}``; the tree stores it as ``[B, N, ...]``."""
  return dict(pages=jnp.full((batch_size, step_length // page_size), -1,
                             jnp.int32),
              start=jnp.zeros((batch_size,), jnp.int32),
              length=jnp.zeros((batch_size,), jnp.int32))


def page_pool(config: ModelConfig, batch_size: int, num_pages: int,
              page_size: int) -> dict:
  """An empty page pool ``{'keys','values': [B, num_pages, L, page_size,
  Hkv, Dh], 'num_used': [B]}`` (``Tree.arena`` of a paged tree), zeros."""
  shape = (batch_size, num_pages, config.num_layers, page_size,
           config.num_kv_heads, config.head_dim)
  z = jnp.zeros(shape, config.compute_dtype)
  return dict(keys=z, values=z, num_used=jnp.zeros((batch_size,), jnp.int32))


def constrain_pool(pool: dict) -> dict:
  """A page pool sharded as :func:`constrain_cache` says (batch, KV heads)."""
  out = dict(pool)
  for name in ("keys", "values"):
    out[name] = sharding.constrain_kv(pool[name], batch_dim=0, heads_dim=4)
  return out


def _pages_held(pages: Array, length: Array, page_size: int) -> Array:
  """``pages [..., W]`` entries that hold tokens of a node of ``length``."""
  need = -(-length // page_size)
  w = jnp.arange(pages.shape[-1])
  return (pages >= 0) & (w < need[..., None])


def _pages_to_tokens(x: Array) -> Array:
  """``[B, M, W, L, ps, H, Dh]`` pages -> ``[B, M, L, W * ps, H, Dh]``."""
  x = jnp.moveaxis(x, 3, 2)  # [B, M, L, W, ps, H, Dh]
  return x.reshape(x.shape[:3] + (-1,) + x.shape[5:])


def store_node_pages(tree: Tree, embedding: Any, node_index: Array,
                     ok: Array) -> tuple[Tree, Any, Array]:
  """The ``store_fn`` of a paged search: a new node's own keys/values
  (``embedding['kv']['new_keys'|'new_values']``, ``[B, L, S, Hkv, Dh]``)
  go into ``ceil(length / page_size)`` fresh pages of its row's pool.

  A row whose pool cannot hold them (or that overflowed before) stores
  nothing and is marked ``overflowed``. Returns ``(tree, the per-node
  embedding with its page table, rows stored)``.
  """
  del node_index  # the pages are the next free ones, whatever the node
  pool = tree.arena
  kv = dict(embedding["kv"])
  new_k, new_v = kv.pop("new_keys"), kv.pop("new_values")
  nb, nl, s = new_k.shape[:3]
  np_, ps = pool["keys"].shape[1], pool["keys"].shape[3]
  w = s // ps
  b = jnp.arange(nb)[:, None]
  need = -(-kv["length"] // ps)  # [B]
  used = pool["num_used"]
  fits = used + need <= np_
  stored = ok & fits & ~tree.overflowed
  j = jnp.arange(w)[None]
  take = stored[:, None] & (j < need[:, None])  # [B, W]
  # W distinct in-bound pages per row (w <= P), the first ``need`` of them
  # the fresh ones: an in-place, in-bounds scatter.
  idx = (used[:, None] + j) % np_

  def put(store, new):  # store [B, P, L, ps, H, Dh], new [B, L, S, H, Dh]
    new = jnp.moveaxis(new.reshape((nb, nl, w, ps) + new.shape[3:]), 2, 1)
    old = store[b, idx]
    val = jnp.where(take[..., None, None, None, None], new.astype(store.dtype),
                    old)
    return store.at[b, idx].set(val, mode="promise_in_bounds",
                                unique_indices=True)

  pool = constrain_pool(dict(
      keys=put(pool["keys"], new_k), values=put(pool["values"], new_v),
      num_used=jnp.where(stored, used + need, used).astype(jnp.int32)))
  kv["pages"] = jnp.where(take, used[:, None] + j, -1).astype(jnp.int32)
  emb = dict(embedding)
  emb["kv"] = kv
  tree = tree.replace(arena=pool,
                      overflowed=tree.overflowed | (ok & ~stored))
  return tree, emb, stored


def compact_pages(tree: Tree) -> Tree:
  """Frees the pages no node in use holds (after :func:`tsearch.reroot`).

  The held pages move to the front of the pool in node order (a node's
  pages stay in order), page tables are renumbered, free pages are zeroed
  and ``num_used`` becomes the held page count. A tree without pages is
  returned as it is. Jittable.
  """
  if not is_paged(tree):
    return tree
  kv, pool = tree.embeddings["kv"], tree.arena
  nb, n, w = kv["pages"].shape
  np_, ps = pool["keys"].shape[1], pool["keys"].shape[3]
  b = jnp.arange(nb)[:, None]
  in_use = jnp.arange(n)[None] < tree.num_nodes[:, None]  # [B, N]
  held = _pages_held(kv["pages"], kv["length"], ps) & in_use[..., None]
  flat = held.reshape(nb, n * w)
  new_id = jnp.cumsum(flat, axis=1) - 1  # [B, N * W]
  count = flat.sum(1).astype(jnp.int32)
  dest = jnp.where(flat, new_id, np_)
  src = jnp.zeros((nb, np_), jnp.int32).at[b, dest].set(
      kv["pages"].reshape(nb, n * w), mode="drop")  # [B, P] old page
  live = jnp.arange(np_)[None] < count[:, None]

  def move(x):
    moved = x[b, src]
    return jnp.where(live[..., None, None, None, None], moved,
                     jnp.zeros((), x.dtype))

  pool = constrain_pool(dict(keys=move(pool["keys"]),
                             values=move(pool["values"]), num_used=count))
  new_kv = dict(kv)
  new_kv["pages"] = jnp.where(flat, new_id, -1).reshape(nb, n, w).astype(
      jnp.int32)
  emb = dict(tree.embeddings)
  emb["kv"] = new_kv
  return tree.replace(embeddings=emb, arena=pool)


def pages_in_use(tree: Tree) -> Array:
  """``[B]`` int32: pages of the pool handed out (``num_used``)."""
  return tree.arena["num_used"]


def tokens_held(tree: Tree) -> Array:
  """``[B]`` int32: tokens the tree's nodes hold (each node its own step's
  ``length``; the root none), slab or paged. Over
  :func:`tree_num_token_slots` it is the share of the arena in use."""
  length = tree.embeddings["kv"]["length"]
  live = jnp.arange(length.shape[1])[None] < tree.num_nodes[:, None]
  return jnp.sum(jnp.where(live, length, 0), -1).astype(jnp.int32)


def node_keys_values(tree: Tree, node_index: Array) -> tuple[Array, Array]:
  """Own keys/values ``[B, L, S, Hkv, Dh]`` of ``node_index [B]`` (slab
  or paged; slots beyond the node's ``length`` hold no token)."""
  kv = tree.embeddings["kv"]
  b = jnp.arange(tree.batch_size)
  if not is_paged(tree):
    return kv["keys"][b, node_index], kv["values"][b, node_index]
  pages = jnp.maximum(kv["pages"][b, node_index], 0)  # [B, W]
  bb = b[:, None]
  get = lambda x: _pages_to_tokens(x[bb, pages][:, None])[:, 0]  # noqa: E731
  return get(tree.arena["keys"]), get(tree.arena["values"])


def path_contexts(tree: Tree, node_index: Array, max_depth: int,
                  prompt: PromptCache) -> tuple[KVContext, KVContext]:
  """What a successor of ``node_index``'s tokens attends to.

  The prompt slots, and the own tokens of every node on the path root ->
  ``node_index`` (inclusive), gathered along the parent pointers. They are
  returned as two contexts that the model attends together, so the prompt
  cache is read in place and never copied.

  Args:
    tree: the tree; ``tree.embeddings['kv']`` is the arena.
    node_index: ``[B]`` node per row, at depth ``<= max_depth``.
    max_depth: static bound on the depth of ``node_index``.
    prompt: the rows' prompt caches.

  Returns:
    ``(prompt_context, path_context)``: :class:`models.KVContext` with
    ``C = prompt capacity`` and ``C = (max_depth + 1) * S``.
  """
  kv = tree.embeddings["kv"]
  b = jnp.arange(tree.batch_size)[:, None]
  path = path_to_root(tree, node_index, max_depth)  # [B, D+1]
  safe = jnp.maximum(path, 0)
  length = jnp.where(path != NO_PARENT, kv["length"][b, safe], 0)  # [B, D+1]
  if is_paged(tree):
    pages = kv["pages"][b, safe]  # [B, D+1, W]
    ps = tree.arena["keys"].shape[3]
    s = pages.shape[2] * ps
    held = jnp.repeat(_pages_held(pages, length, ps), ps, axis=2)
    safe_pages = jnp.maximum(pages, 0)

    def to_ctx(x):  # pool [B, P, L, ps, H, Dh] -> [L, B, (D+1)*S, H, Dh]
      x = jnp.moveaxis(_pages_to_tokens(x[b[:, :, None], safe_pages]), 2, 0)
      return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])

    store = tree.arena
  else:
    s = kv["keys"].shape[3]
    held = True

    def to_ctx(x):  # [B, N, L, S, H, Dh] -> [L, B, (D+1)*S, H, Dh]
      x = jnp.moveaxis(x[b, safe], 2, 0)
      return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])

    store = kv
  # [B, D+1, S]
  mask = (jnp.arange(s)[None, None, :] < length[:, :, None]) & held

  pos = kv["start"][b, safe][:, :, None] + jnp.arange(s)[None, None, :]
  return prompt.context(), KVContext(
      keys=to_ctx(store["keys"]), values=to_ctx(store["values"]),
      mask=mask.reshape(mask.shape[0], -1),
      positions=pos.reshape(pos.shape[0], -1).astype(jnp.int32))


def path_context(tree: Tree, node_index: Array, max_depth: int,
                 prompt: PromptCache) -> KVContext:
  """:func:`path_contexts` as one concatenated context.

  ``C = prompt capacity + (max_depth + 1) * S``. Copies the prompt cache;
  inside search prefer :func:`path_contexts`, which the model attends
  without concatenating.
  """
  a, b = path_contexts(tree, node_index, max_depth, prompt)
  a_pos = a.positions
  if a_pos is None:
    a_pos = jnp.broadcast_to(jnp.arange(a.mask.shape[1], dtype=jnp.int32),
                             a.mask.shape)
  return KVContext(keys=jnp.concatenate([a.keys, b.keys], axis=2),
                   values=jnp.concatenate([a.values, b.values], axis=2),
                   mask=jnp.concatenate([a.mask, b.mask], axis=1),
                   positions=jnp.concatenate([a_pos, b.positions], axis=1))


def commit_root_tokens(prompt: PromptCache, tree: Tree) -> tuple[PromptCache,
                                                                  Tree]:
  """Moves the root's own tokens from the arena into the prompt cache.

  Call after :func:`tsearch.reroot`, whose new root is a former child that
  still holds its tokens (its ancestors, which held the rest of the committed
  prefix, are gone). The root's entry is emptied (``length`` 0, ``start``
  advanced), so every node again attends prompt + path exactly once. A commit
  that does not fit in the prompt cache sets ``overflowed`` (tokens dropped).
  """
  kv = tree.embeddings["kv"]
  nb = tree.batch_size
  b = jnp.arange(nb)
  root_keys, root_values = node_keys_values(
      tree, jnp.full((nb,), ROOT_INDEX, jnp.int32))
  s = root_keys.shape[2]
  cap = prompt.mask.shape[1]
  length = kv["length"][:, ROOT_INDEX]  # [B]
  j = jnp.arange(s)
  valid = j[None] < length[:, None]  # [B, S]
  slot = prompt.num_used[:, None] + j[None]  # [B, S]
  fits = prompt.num_used + length <= cap
  slot = jnp.where(valid & fits[:, None], slot, cap)  # cap: dropped
  positions = prompt.positions
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (nb, cap))
  root_pos = (kv["start"][:, ROOT_INDEX][:, None] + j[None]).astype(jnp.int32)

  def put(cache, new):  # cache [L,B,C,H,Dh], new [B, L, S, H, Dh]
    new = jnp.moveaxis(new, 1, 0)  # [L, B, S, H, Dh]
    return cache.at[:, b[:, None], slot].set(new, mode="drop")

  prompt = prompt.replace(
      keys=put(prompt.keys, root_keys),
      values=put(prompt.values, root_values),
      mask=prompt.mask.at[b[:, None], slot].set(True, mode="drop"),
      positions=positions.at[b[:, None], slot].set(root_pos, mode="drop"),
      num_used=jnp.where(fits, prompt.num_used + length, prompt.num_used),
      overflowed=prompt.overflowed | ~fits)
  new_kv = dict(kv)
  new_kv["start"] = kv["start"].at[:, ROOT_INDEX].add(length)
  new_kv["length"] = kv["length"].at[:, ROOT_INDEX].set(0)
  if is_paged(tree):  # the pages are free from now (compact_pages)
    new_kv["pages"] = kv["pages"].at[:, ROOT_INDEX].set(-1)
  else:
    new_kv["keys"] = kv["keys"].at[:, ROOT_INDEX].set(0)
    new_kv["values"] = kv["values"].at[:, ROOT_INDEX].set(0)
  emb = dict(tree.embeddings)
  emb["kv"] = new_kv
  return prompt, tree.replace(embeddings=emb)


def _nbytes(x) -> int:  # arrays and jax.ShapeDtypeStruct alike
  return int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize


def arena_bytes(tree: Tree) -> int:
  """Bytes of keys/values the tree's arena holds (from array shapes): the
  slab, or the page pool of a paged tree."""
  kv = tree.arena if is_paged(tree) else tree.embeddings["kv"]
  return _nbytes(kv["keys"]) + _nbytes(kv["values"])


def prompt_cache_bytes(prompt: PromptCache) -> int:
  """Bytes of keys/values of the prompt caches (from array shapes)."""
  return _nbytes(prompt.keys) + _nbytes(prompt.values)


def tree_num_token_slots(tree: Tree) -> int:
  """``B * N * S``: token slots of the arena (paged: ``B * P * page_size``)."""
  if is_paged(tree):
    shape = tree.arena["keys"].shape
    return shape[0] * shape[1] * shape[3]
  return tree.batch_size * tree.capacity * tree.embeddings["kv"]["keys"].shape[3]

