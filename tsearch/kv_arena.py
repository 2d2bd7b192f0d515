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
  s = kv["keys"].shape[3]
  length = jnp.where(path != NO_PARENT, kv["length"][b, safe], 0)  # [B, D+1]
  mask = jnp.arange(s)[None, None, :] < length[:, :, None]  # [B, D+1, S]

  def to_ctx(x):  # [B, D+1, L, S, H, Dh] -> [L, B, (D+1)*S, H, Dh]
    x = jnp.moveaxis(x[b, safe], 2, 0)
    return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])

  pos = kv["start"][b, safe][:, :, None] + jnp.arange(s)[None, None, :]
  return prompt.context(), KVContext(
      keys=to_ctx(kv["keys"]), values=to_ctx(kv["values"]),
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
  s = kv["keys"].shape[3]
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
      keys=put(prompt.keys, kv["keys"][:, ROOT_INDEX]),
      values=put(prompt.values, kv["values"][:, ROOT_INDEX]),
      mask=prompt.mask.at[b[:, None], slot].set(True, mode="drop"),
      positions=positions.at[b[:, None], slot].set(root_pos, mode="drop"),
      num_used=jnp.where(fits, prompt.num_used + length, prompt.num_used),
      overflowed=prompt.overflowed | ~fits)
  new_kv = dict(kv)
  new_kv["start"] = kv["start"].at[:, ROOT_INDEX].add(length)
  new_kv["length"] = kv["length"].at[:, ROOT_INDEX].set(0)
  new_kv["keys"] = kv["keys"].at[:, ROOT_INDEX].set(0)
  new_kv["values"] = kv["values"].at[:, ROOT_INDEX].set(0)
  emb = dict(tree.embeddings)
  emb["kv"] = new_kv
  return prompt, tree.replace(embeddings=emb)


def _nbytes(x) -> int:  # arrays and jax.ShapeDtypeStruct alike
  return int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize


def arena_bytes(tree: Tree) -> int:
  """Bytes of keys/values the tree's arena holds (from array shapes)."""
  kv = tree.embeddings["kv"]
  return _nbytes(kv["keys"]) + _nbytes(kv["values"])


def prompt_cache_bytes(prompt: PromptCache) -> int:
  """Bytes of keys/values of the prompt caches (from array shapes)."""
  return _nbytes(prompt.keys) + _nbytes(prompt.values)


def tree_num_token_slots(tree: Tree) -> int:
  """``B * N * S``: token slots of the arena."""
  return tree.batch_size * tree.capacity * tree.embeddings["kv"]["keys"].shape[3]

