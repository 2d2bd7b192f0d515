"""Batched MCTS over :class:`tsearch.Tree`: PUCT and Gumbel MuZero.

One loop serves both policies: each simulation walks down one path per tree
(select), evaluates one new node per tree with the user's ``expand_fn``
(expand) and backs the leaf's value up along the parent pointers (back up).
Unlike mctx, the whole tree is never carried through a vmapped while-loop:
the batch dimension stays explicit, the walk gathers only the ``[B]`` /
``[B, K]`` rows of the nodes it stands on, and every update scatters only the
entries it touches (``x.at[b, idx].set``), so one simulation costs
O(depth * B * K) instead of O(depth * B * N * K).

With a fresh tree (``tree=None``) the searches consume random keys exactly as
``mctx.muzero_policy`` / ``mctx.gumbel_muzero_policy`` do and give the same
visit counts, action weights and actions (see ``tests/test_mctx_parity.py``).
Deliberate differences from mctx, which matter only off mctx's own problems:

* Legal-action masks (``children_mask``) are applied at every node, not only at
  the root.
* A terminal node (``ExpandOutput.terminal``) is never expanded; reaching it
  again backs up its value (0) and the reward of its edge again.
* At ``max_depth`` (or at a node without legal slots) the walk stops on the
  existing node and backs up its stored value without calling ``expand_fn``
  again (mctx re-evaluates that node; for a deterministic model the result is
  the same).
* A row whose root has no legal slot or is terminal (possible after
  :func:`tsearch.reroot`) is not searched (mctx would expand slot 0 anyway).
* A row whose tree is full (only possible with ``tree=`` given) or whose
  ``expand_fn`` output holds a NaN/inf drops that simulation and sets
  ``Tree.overflowed`` / ``Tree.nonfinite``; nothing is written out of bounds
  and nothing non-finite is backed up.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import chex
import jax
import jax.numpy as jnp
import mctx
import numpy as np

from tsearch._src import selection as sel
from tsearch._src.base import ExpandFn, ExpandOutput, PolicyOutput, RootOutput
from tsearch._src.tree import NO_PARENT, ROOT_INDEX, UNVISITED, Tree, empty_tree

Array = chex.Array
# (tree, expand_fn's embedding [B, ...], new node index [B], rows to store
# [B] bool) -> (tree, the embedding to store per node, rows stored [B]).
StoreFn = Any


# ----------------------------------------------------------------------------
# Input checks.


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_root(root: RootOutput) -> tuple[int, int, int]:
  """Checks the shapes (and, when concrete, the values) of a root."""
  logits = jnp.asarray(root.prior_logits)
  if logits.ndim != 2:
    raise ValueError(
        "RootOutput.prior_logits must have shape [B, K] (batch, child slots); "
        f"got shape {logits.shape}.")
  b, k = logits.shape
  expected = {"value": (b,), "children_mask": (b, k)}
  for name, shape in expected.items():
    got = jnp.shape(getattr(root, name))
    if got != shape:
      raise ValueError(
          f"RootOutput.{name} must have shape {shape} to match prior_logits "
          f"{logits.shape}; got {got}.")
  actions_shape = jnp.shape(root.children_actions)
  if len(actions_shape) != 3 or actions_shape[:2] != (b, k):
    raise ValueError(
        f"RootOutput.children_actions must have shape [B, K, S] = [{b}, {k}, "
        f"S] to match prior_logits; got {actions_shape}. Its K (child slots) "
        "must equal the K of prior_logits.")
  for leaf in jax.tree.leaves(root.embedding):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != b:
      raise ValueError(
          f"Every RootOutput.embedding leaf needs a leading batch dimension "
          f"{b}; got a leaf of shape {jnp.shape(leaf)}.")
  concrete = [root.prior_logits, root.value, root.children_mask]
  if all(_is_concrete(x) for x in concrete):
    value = np.asarray(root.value)
    if not np.all(np.isfinite(value)):
      rows = np.flatnonzero(~np.isfinite(value)).tolist()
      raise ValueError(
          f"RootOutput.value is NaN or infinite in batch rows {rows}; fix the "
          "value head (or its inputs) before searching.")
    bad = (np.isnan(np.asarray(logits)) | (np.asarray(logits) == np.inf))
    bad &= np.asarray(root.children_mask, bool)
    if np.any(bad):
      rows = np.flatnonzero(bad.any(-1)).tolist()
      raise ValueError(
          f"RootOutput.prior_logits are NaN or +inf on legal slots in batch "
          f"rows {rows}; fix the policy head (or its inputs) before "
          "searching.")
  return b, k, actions_shape[2]


def _check_expand_output(out: Any, tree: Tree, embedding: bool = True
                         ) -> None:
  if not isinstance(out, ExpandOutput):
    raise ValueError(
        f"expand_fn must return a tsearch.ExpandOutput; got {type(out)}.")
  b, k, s = tree.batch_size, tree.num_children, tree.action_length
  expected = {"reward": (b,), "discount": (b,), "value": (b,),
              "terminal": (b,), "prior_logits": (b, k),
              "children_mask": (b, k), "children_actions": (b, k, s)}
  for name, shape in expected.items():
    got = jnp.shape(getattr(out, name))
    if got != shape:
      raise ValueError(
          f"expand_fn returned {name} of shape {got}; the tree needs {shape} "
          f"(B={b}, K={k} child slots, S={s} tokens per action).")
  if not embedding:
    return
  want = jax.tree.structure(tree.embeddings)
  if jax.tree.structure(out.embedding) != want:
    raise ValueError(
        "expand_fn returned an embedding whose pytree structure "
        f"{jax.tree.structure(out.embedding)} differs from the root's {want}.")
  for leaf, store in zip(jax.tree.leaves(out.embedding),
                         jax.tree.leaves(tree.embeddings)):
    if jnp.shape(leaf) != (b,) + store.shape[2:]:
      raise ValueError(
          f"expand_fn returned an embedding leaf of shape {jnp.shape(leaf)}; "
          f"the tree stores [B, N, ...] = {store.shape}, so it must be "
          f"{(b,) + store.shape[2:]}.")


# ----------------------------------------------------------------------------
# Building blocks of one simulation.


def _legal_logits(logits: Array, mask: Array) -> Array:
  """Illegal slots (and -inf logits) get the finite minimum logit.

  Legal finite logits are kept exactly, so mctx problems (all slots legal)
  give bit-identical trees.
  """
  low = jnp.finfo(logits.dtype).min
  return jnp.where(mask, jnp.maximum(logits, low), low)


def _masked_set(x: Array, index: tuple, value: Array, ok: Array) -> Array:
  """``x.at[index].set(value)`` on rows ``ok``; other rows are unchanged.

  ``index`` holds one in-bounds entry per batch row (``index[0]`` is
  ``arange(B)``), so the scatter is in bounds, unique and sorted; XLA's CPU
  backend then updates ``x`` in place (a ``mode="drop"`` scatter with
  out-of-bounds indices for skipped rows was measured to cost O(size of x)).
  """
  value = jnp.asarray(value, x.dtype)
  value = jnp.broadcast_to(value, x[index].shape)
  ok = ok.reshape(ok.shape + (1,) * (value.ndim - ok.ndim))
  return x.at[index].set(jnp.where(ok, value, x[index]),
                         mode="promise_in_bounds", unique_indices=True,
                         indices_are_sorted=True)


def _write_root(tree: Tree, root: RootOutput, rows: Array) -> Tree:
  """Writes ``root`` as node 0 of the trees where ``rows`` is True."""
  b = jnp.arange(tree.batch_size)
  idx = jnp.where(rows, ROOT_INDEX, tree.capacity)  # Out of bounds: dropped.
  f32 = tree.raw_values.dtype
  value = jnp.asarray(root.value, f32)
  mask = jnp.asarray(root.children_mask, bool)

  def put(x, v):
    return x.at[b, idx].set(v, mode="drop")

  return tree.replace(
      node_visits=put(tree.node_visits, 1),
      raw_values=put(tree.raw_values, value),
      node_values=put(tree.node_values, value),
      children_prior_logits=put(
          tree.children_prior_logits,
          jnp.asarray(root.prior_logits, tree.children_prior_logits.dtype)),
      children_mask=put(tree.children_mask, mask),
      children_actions=put(tree.children_actions,
                           jnp.asarray(root.children_actions, jnp.int32)),
      embeddings=jax.tree.map(put, tree.embeddings, root.embedding),
      num_nodes=jnp.where(rows, 1, tree.num_nodes),
  )


def _exhausted(tree: Tree, max_depth: Optional[int]) -> Array:
  """``[B, N]``: nodes whose subtree holds nothing left to explore: terminal,
  without a legal slot, at ``max_depth``, or with every legal slot expanded
  into such a node
  (children have larger indices than parents; ``max_depth`` rounds of
  propagation settle every level)."""
  b = jnp.arange(tree.batch_size)[:, None, None]
  child = tree.children_index  # [B, N, K]
  safe = jnp.maximum(child, 0)
  base = tree.node_terminal | ~jnp.any(tree.children_mask, axis=-1)
  if max_depth is not None:  # the walk never goes below max_depth
    base = base | (tree.node_depth >= max_depth)

  def step(_, ex):
    done = (child != UNVISITED) & ex[b, safe]
    return base | jnp.all(done | ~tree.children_mask, axis=-1)

  rounds = max_depth if max_depth is not None else tree.capacity
  return jax.lax.fori_loop(0, rounds, step, base)


def _gather(tree: Tree, node: Array, exhausted: Optional[Array]
            ) -> sel.NodeRows:
  """The node rows; given ``exhausted``, a slot whose child's subtree is
  exhausted is not selectable (unless every legal slot is such)."""
  rows = sel.gather_rows(tree, node)
  if exhausted is None:
    return rows
  b = jnp.arange(tree.batch_size)
  child = tree.children_index[b, node]  # [B, K]
  dead = (child != UNVISITED) & exhausted[b[:, None], jnp.maximum(child, 0)]
  live = rows.mask & ~dead
  return rows._replace(mask=jnp.where(jnp.any(live, -1, keepdims=True), live,
                                      rows.mask))


def _walk(tree: Tree, keys: Optional[Array], root_select, interior_select,
          max_depth: Optional[int], active: Array,
          exhausted: Optional[Array] = None):
  """Selects one (parent, slot) per row, starting at the root.

  Follows mctx's ``simulate``: at each node select a slot; go on while the
  child exists and is below ``max_depth``. tsearch also stops before a
  terminal child or a child without legal slots.

  Returns:
    ``(parent, slot, child)``, each ``[B]``: the last node where a slot was
    selected, that slot, and the child it leads to (``UNVISITED`` if new).
  """
  b = jnp.arange(tree.batch_size)

  def split_keys(keys):
    if keys is None:
      return None, None
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]

  def goes_on(child, depth):
    safe = jnp.maximum(child, 0)
    ok = (child != UNVISITED) & ~tree.node_terminal[b, safe]
    ok &= jnp.any(tree.children_mask[b, safe], axis=-1)
    if max_depth is not None:
      ok &= depth < max_depth
    return ok

  node = jnp.full(b.shape, ROOT_INDEX, jnp.int32)
  if root_select is interior_select:
    # One select call site (compiles faster): start "above" the root.
    slot = jnp.zeros(b.shape, jnp.int32)
    child = node
    depth = jnp.zeros(b.shape, jnp.int32)
    cont = active
  else:
    keys, sel_keys = split_keys(keys)
    slot = root_select(_gather(tree, node, exhausted), sel_keys)
    child = tree.children_index[b, node, slot]
    depth = jnp.ones(b.shape, jnp.int32)
    cont = active & goes_on(child, depth)

  def body(state):
    node, slot, child, depth, cont, keys = state
    node = jnp.where(cont, child, node)
    keys, sel_keys = split_keys(keys)
    new_slot = interior_select(_gather(tree, node, exhausted), sel_keys)
    slot = jnp.where(cont, new_slot, slot)
    new_child = tree.children_index[b, node, new_slot]
    child = jnp.where(cont, new_child, child)
    depth = depth + cont
    cont = cont & goes_on(new_child, depth)
    return node, slot, child, depth, cont, keys

  state = (node, slot, child, depth, cont, keys)
  node, slot, child, _, _, _ = jax.lax.while_loop(
      lambda s: jnp.any(s[4]), body, state)
  return node, slot, child


def _finite_output(out: ExpandOutput) -> Array:
  logits = out.prior_logits
  bad_logits = (jnp.isnan(logits) | (logits == jnp.inf)) & out.children_mask
  value_ok = jnp.isfinite(out.value) | out.terminal
  return (value_ok & jnp.isfinite(out.reward) & jnp.isfinite(out.discount)
          & ~jnp.any(bad_logits, axis=-1))


def _expand(tree: Tree, out: ExpandOutput, parent: Array, slot: Array,
            ok: Array) -> tuple[Tree, Array]:
  """Stores the new nodes of rows ``ok`` at index ``num_nodes``."""
  b = jnp.arange(tree.batch_size)
  n = tree.capacity
  new = tree.num_nodes
  idx = jnp.minimum(new, n - 1)  # Rows not ``ok`` write nothing.
  f32 = tree.raw_values.dtype
  terminal = jnp.asarray(out.terminal, bool)
  value = jnp.where(terminal, 0., jnp.asarray(out.value, f32))
  mask = jnp.asarray(out.children_mask, bool)
  logits = _legal_logits(
      jnp.asarray(out.prior_logits, tree.children_prior_logits.dtype), mask)

  def put(x, v):
    return _masked_set(x, (b, idx), v, ok)

  def put_edge(x, v):
    return _masked_set(x, (b, parent, slot), v, ok)

  tree = tree.replace(
      raw_values=put(tree.raw_values, value),
      node_values=put(tree.node_values, value),
      parents=put(tree.parents, parent),
      action_from_parent=put(tree.action_from_parent, slot),
      node_depth=put(tree.node_depth, tree.node_depth[b, parent] + 1),
      node_terminal=put(tree.node_terminal, terminal),
      children_prior_logits=put(tree.children_prior_logits, logits),
      children_mask=put(tree.children_mask, mask),
      children_actions=put(tree.children_actions,
                           jnp.asarray(out.children_actions, jnp.int32)),
      embeddings=jax.tree.map(put, tree.embeddings, out.embedding),
      children_index=put_edge(tree.children_index, new),
      children_rewards=put_edge(tree.children_rewards,
                                jnp.asarray(out.reward, f32)),
      children_discounts=put_edge(tree.children_discounts,
                                  jnp.asarray(out.discount, f32)),
      num_nodes=tree.num_nodes + ok.astype(jnp.int32),
  )
  return tree, new


def _backward(tree: Tree, leaf: Array, ok: Array) -> Tree:
  """Counts one visit at ``leaf`` and backs its value up to the root.

  The arithmetic is mctx's ``backward`` (running means, same operation order).
  """
  b = jnp.arange(tree.batch_size)
  leaf = jnp.where(ok, leaf, 0)
  node_visits = _masked_set(tree.node_visits, (b, leaf),
                            tree.node_visits[b, leaf] + 1, ok)
  leaf_value = tree.node_values[b, leaf]

  # ``child_value`` carries node_values[b, index]: the leaf's value, then the
  # parent value written one level below. Reading it back from node_values
  # (which the same iteration scatters into) made XLA copy the whole [B, N]
  # array at every level.
  def body(state):
    (node_values, node_visits, children_values, children_visits, value,
     child_value, index) = state
    act = ok & (index != ROOT_INDEX)
    parent = jnp.maximum(tree.parents[b, index], 0)
    action = jnp.maximum(tree.action_from_parent[b, index], 0)
    count = node_visits[b, parent]
    reward = tree.children_rewards[b, parent, action]
    value = jnp.where(
        act, reward + tree.children_discounts[b, parent, action] * value,
        value)
    parent_value = (node_values[b, parent] * count + value) / (count + 1.0)
    child_visits = children_visits[b, parent, action] + 1
    node_values = _masked_set(node_values, (b, parent), parent_value, act)
    node_visits = _masked_set(node_visits, (b, parent), count + 1, act)
    children_values = _masked_set(children_values, (b, parent, action),
                                  child_value, act)
    children_visits = _masked_set(children_visits, (b, parent, action),
                                  child_visits, act)
    index = jnp.where(act, parent, index)
    child_value = jnp.where(act, parent_value, child_value)
    return (node_values, node_visits, children_values, children_visits, value,
            child_value, index)

  state = (tree.node_values, node_visits, tree.children_values,
           tree.children_visits, leaf_value, leaf_value, leaf)
  state = jax.lax.while_loop(
      lambda s: jnp.any(ok & (s[6] != ROOT_INDEX)), body, state)
  node_values, node_visits, children_values, children_visits = state[:4]
  return tree.replace(node_values=node_values, node_visits=node_visits,
                      children_values=children_values,
                      children_visits=children_visits)


def _virtual_visit(tree: Tree, parent: Array, slot: Array, ok: Array
                   ) -> Tree:
  """Virtual loss for leaf-parallel search: counts a pending simulation
  through edge ``(parent, slot)`` as a visit returning the lowest value in
  the row's tree, on the edge and every ancestor (Chaslot et al. 2008,
  "Parallel Monte-Carlo Tree Search", with the loss set to the tree's own
  minimum so that it is scale-free). An edge not yet expanded is also taken
  out of the selection while its node has another legal slot, so that two
  leaves of one step do not expand the same edge (a "collision"; it still
  happens where only that slot is legal, and is then stored once). The tree
  this returns is only selected on; the real statistics come from the
  expansions.
  """
  b = jnp.arange(tree.batch_size)
  mask = tree.children_mask[b, parent]  # [B, K]
  pending = (ok & (tree.children_index[b, parent, slot] == UNVISITED)
             & (jnp.sum(mask, -1) > 1))
  tree = tree.replace(children_mask=_masked_set(
      tree.children_mask, (b, parent, slot), False, pending))
  n = jnp.arange(tree.capacity)[None, :] < tree.num_nodes[:, None]
  loss = jnp.min(jnp.where(n, tree.node_values, jnp.inf), axis=-1)
  loss = jnp.where(jnp.isfinite(loss), loss, 0.).astype(tree.node_values.dtype)
  count = tree.children_visits[b, parent, slot]
  children_values = _masked_set(
      tree.children_values, (b, parent, slot),
      (tree.children_values[b, parent, slot] * count + loss) / (count + 1.),
      ok)
  children_visits = _masked_set(tree.children_visits, (b, parent, slot),
                                count + 1, ok)

  def body(state):
    node_values, node_visits, children_values, children_visits, index, act = (
        state)
    visits = node_visits[b, index]
    node_values = _masked_set(
        node_values, (b, index),
        (node_values[b, index] * visits + loss) / (visits + 1.), act)
    node_visits = _masked_set(node_visits, (b, index), visits + 1, act)
    up = act & (index != ROOT_INDEX)
    grand = jnp.maximum(tree.parents[b, index], 0)
    action = jnp.maximum(tree.action_from_parent[b, index], 0)
    edge = children_visits[b, grand, action]
    children_values = _masked_set(
        children_values, (b, grand, action),
        (children_values[b, grand, action] * edge + loss) / (edge + 1.), up)
    children_visits = _masked_set(children_visits, (b, grand, action),
                                  edge + 1, up)
    return (node_values, node_visits, children_values, children_visits,
            jnp.where(up, grand, index), up)

  state = (tree.node_values, tree.node_visits, children_values,
           children_visits, parent, ok)
  state = jax.lax.while_loop(lambda s: jnp.any(s[5]), body, state)
  return tree.replace(node_values=state[0], node_visits=state[1],
                      children_values=state[2], children_visits=state[3])


def _root_ok(tree: Tree) -> Array:
  """Rows whose root holds finite statistics."""
  logits = tree.children_prior_logits[:, ROOT_INDEX]
  bad = (jnp.isnan(logits) | (logits == jnp.inf)) & tree.children_mask[
      :, ROOT_INDEX]
  return (jnp.isfinite(tree.node_values[:, ROOT_INDEX])
          & jnp.isfinite(tree.raw_values[:, ROOT_INDEX])
          & ~jnp.any(bad, axis=-1))


def _prepare_tree(root: Optional[RootOutput], num_simulations: int,
                  capacity: Optional[int], tree: Optional[Tree]) -> Tree:
  if not isinstance(num_simulations, (int, np.integer)) or num_simulations < 0:
    raise ValueError(
        f"num_simulations must be a non-negative Python int; got "
        f"{num_simulations!r}.")
  if tree is None:
    if root is None:
      raise ValueError("Pass a RootOutput (root=...) to start a new search.")
    b, k, s = _check_root(root)
    if capacity is None:
      capacity = num_simulations + 1
    if capacity < num_simulations + 1:
      raise ValueError(
          f"capacity={capacity} is too small for num_simulations="
          f"{num_simulations}: a search adds one node per simulation plus "
          f"the root, so capacity must be >= {num_simulations + 1}. Raise "
          "capacity or lower num_simulations.")
    new = empty_tree(batch_size=b, capacity=capacity, num_children=k,
                     action_length=s, embedding_example=root.embedding)
    return _write_root(new, root, jnp.ones((b,), bool))
  if capacity is not None and capacity != tree.capacity:
    raise ValueError(
        f"capacity={capacity} differs from the given tree's capacity "
        f"{tree.capacity}; a continued search uses the tree's capacity, so "
        "leave capacity=None.")
  if tree.nonfinite is None:
    tree = tree.replace(nonfinite=jnp.zeros((tree.batch_size,), bool))
  if root is None:
    return tree
  b, k, s = _check_root(root)
  if (b, k, s) != (tree.batch_size, tree.num_children, tree.action_length):
    raise ValueError(
        f"root has [B, K, S] = {(b, k, s)} but the tree has "
        f"{(tree.batch_size, tree.num_children, tree.action_length)}.")
  return _write_root(tree, root, tree.num_nodes == 0)


def _run(params, rng_key, tree: Tree, expand_fn: ExpandFn, *,
         num_simulations: int, max_depth: Optional[int], root_select,
         interior_select, uses_noise: bool,
         skip_dead_ends: bool = False, leaves_per_step: int = 1,
         store_fn: Optional[StoreFn] = None) -> Tree:
  """The simulation loop shared by every policy.

  ``leaves_per_step = L > 1``: each step selects L leaves per tree one after
  another, each walk seeing the earlier ones as virtual losses
  (:func:`_virtual_visit`), expands all of them in one ``expand_fn`` call
  over ``[L, B]`` rows (``jax.vmap``: one model call of ``B * L`` rows),
  then stores and backs them up in selection order. A leaf selected twice
  in a step is stored once and backed up twice. L = 1 is mctx's loop.
  """
  batch, leaves = tree.batch_size, leaves_per_step
  root_ok = _root_ok(tree)
  tree = tree.replace(nonfinite=tree.nonfinite | (~root_ok & (
      tree.num_nodes > 0)))
  # Rows with no tree, a terminal root (possible after a reroot) or no legal
  # root slot are not searched.
  active = root_ok & (tree.num_nodes > 0) & jnp.any(
      tree.children_mask[:, ROOT_INDEX], axis=-1) & ~tree.node_terminal[
          :, ROOT_INDEX]
  b = jnp.arange(batch)

  def exhausted_of(tree):  # [B, N], or None under mctx's rule
    return _exhausted(tree, max_depth) if skip_dead_ends else None

  def expand_all(expand_key, tree, parents, slots):
    if leaves == 1:
      return [expand_fn(params, expand_key, tree, parents[0], slots[0])]
    outs = jax.vmap(expand_fn, in_axes=(None, 0, None, 0, 0))(
        params, jax.random.split(expand_key, leaves), tree,
        jnp.stack(parents), jnp.stack(slots))
    return [jax.tree.map(lambda x, l=l: x[l], outs) for l in range(leaves)]

  def body(state):
    sim, rng_key, tree, exhausted = state
    rng_key, simulate_key, expand_key = jax.random.split(rng_key, 3)
    walk_keys = ([simulate_key] if leaves == 1
                 else list(jax.random.split(simulate_key, leaves)))
    # A row whose whole tree is explored stops (skip_dead_ends).
    live = active if exhausted is None else active & ~exhausted[:, ROOT_INDEX]
    seen, parents, slots, lives = tree, [], [], []
    for l in range(leaves):
      # The last step may run fewer than L simulations.
      live_l = live if leaves == 1 else live & (sim + l < num_simulations)
      keys = jax.random.split(walk_keys[l], batch) if uses_noise else None
      parent, slot, _ = _walk(seen, keys, root_select, interior_select,
                              max_depth, live_l, exhausted)
      if l < leaves - 1:
        seen = _virtual_visit(seen, parent, slot, live_l)
      parents.append(parent)
      slots.append(slot)
      lives.append(live_l)
    outs = expand_all(expand_key, tree, parents, slots)
    for parent, slot, live_l, out in zip(parents, slots, lives, outs):
      # With a store_fn, the embedding it returns is checked.
      _check_expand_output(out, tree, embedding=store_fn is None)
      # Read after the earlier leaves of this step were stored: a repeated
      # pick is then a revisit of the node the first one made.
      child = tree.children_index[b, parent, slot]
      legal = tree.children_mask[b, parent, slot]
      is_new = live_l & (child == UNVISITED) & legal
      revisit = live_l & (child != UNVISITED)
      full = tree.num_nodes >= tree.capacity
      finite = _finite_output(out)
      ok = is_new & ~full & finite
      tree = tree.replace(overflowed=tree.overflowed | (is_new & full),
                          nonfinite=tree.nonfinite | (is_new & ~full
                                                      & ~finite))
      if store_fn is not None:  # it may refuse rows (and mark them)
        tree, embedding, ok = store_fn(
            tree, out.embedding, jnp.minimum(tree.num_nodes,
                                             tree.capacity - 1), ok)
        out = out.replace(embedding=embedding)
        _check_expand_output(out, tree)
      tree, new = _expand(tree, out, parent, slot, ok)
      tree = _backward(tree, jnp.where(ok, new, child), ok | revisit)
    return sim + leaves, rng_key, tree, exhausted_of(tree)

  state = (0, rng_key, tree, exhausted_of(tree))
  if not skip_dead_ends:
    _, _, tree, _ = jax.lax.fori_loop(0, -(-num_simulations // leaves),
                                      lambda i, s: body(s), state)
    return tree

  def more(state):
    sim, _, _, exhausted = state
    return (sim < num_simulations) & jnp.any(active
                                             & ~exhausted[:, ROOT_INDEX])

  _, _, tree, _ = jax.lax.while_loop(more, body, state)
  return tree


def _check_leaves(leaves_per_step) -> None:
  if (not isinstance(leaves_per_step, (int, np.integer))
      or leaves_per_step < 1):
    raise ValueError("leaves_per_step must be a positive int; got "
                     f"{leaves_per_step!r}.")


# ----------------------------------------------------------------------------
# Public policies.


def _check_curiosity(curiosity_weight) -> None:
  ok = (isinstance(curiosity_weight, (int, float, np.integer, np.floating))
        and not isinstance(curiosity_weight, bool)
        and math.isfinite(curiosity_weight) and curiosity_weight >= 0)
  if not ok:
    raise ValueError(
        "curiosity_weight must be a finite Python number >= 0 (the weight of "
        "the surprisal bonus in PUCT; 0 turns it off); got "
        f"{curiosity_weight!r}.")


def _check_max_depth(max_depth):
  if max_depth is not None and (not isinstance(max_depth, (int, np.integer))
                                or max_depth < 1):
    raise ValueError(
        f"max_depth must be None or a positive int; got {max_depth!r}.")


def puct_search(
    params: Any,
    rng_key: Array,
    root: Optional[RootOutput],
    expand_fn: ExpandFn,
    *,
    num_simulations: int,
    capacity: Optional[int] = None,
    max_depth: Optional[int] = None,
    dirichlet_fraction: float = 0.25,
    dirichlet_alpha: float = 0.3,
    pb_c_init: float = 1.25,
    pb_c_base: float = 19652,
    temperature: float = 1.0,
    qtransform: sel.QTransform = mctx.qtransform_by_parent_and_siblings,
    tree: Optional[Tree] = None,
    skip_dead_ends: bool = False,
    leaves_per_step: int = 1,
    curiosity_weight: float = 0.0,
    store_fn: Optional[StoreFn] = None,
) -> PolicyOutput:
  """AlphaZero / MuZero search with the PUCT rule (``mctx.muzero_policy``).

  Dirichlet noise is mixed into the root prior, then ``num_simulations``
  simulations select with PUCT (ties broken by mctx's tiny uniform noise)
  at every node, over legal slots only. The action is sampled from the root
  visit counts raised to ``1 / temperature``. Wrap the call in ``jax.jit``.

  Args:
    params: forwarded to ``expand_fn``.
    rng_key: a JAX key; the same key gives the same tree.
    root: the evaluated roots ``[B, K]``; may be None when ``tree`` is given
      and no row of it is empty.
    expand_fn: ``(params, rng_key, tree, parent_index [B], action_slot [B])
      -> ExpandOutput``; see :mod:`tsearch.base`.
    num_simulations: simulations per tree (a Python int).
    capacity: nodes per tree for a new tree; default ``num_simulations + 1``,
      smaller values raise ``ValueError``. Must stay None with ``tree``.
    max_depth: maximum number of edges from the root to a selected leaf.
    dirichlet_fraction: weight of the Dirichlet noise in the root prior.
    dirichlet_alpha: concentration of the Dirichlet noise.
    pb_c_init: c_1 of the PUCT formula.
    pb_c_base: c_2 of the PUCT formula.
    temperature: acting temperature on the visit counts (0 = argmax).
    qtransform: an mctx Q transform ``(mctx_tree, node_index) -> [K]``.
    tree: continue from this tree (e.g. after :func:`tsearch.reroot`): the
      existing statistics are kept and new simulations added; rows with no
      nodes are started from ``root``. Dirichlet noise is mixed into the stored
      root prior on every call (use ``dirichlet_fraction=0.`` to avoid it).
    skip_dead_ends: selection passes over a slot whose child's subtree is
      exhausted (the child is terminal, has no legal slot, or has every
      legal slot expanded into such nodes: its value is known and another
      visit would only repeat it), unless every legal slot of the node is
      such; a row whose root is exhausted stops simulating (and the search
      stops when every row has). For
      single-player puzzles with exact terminal rewards (MCTS-Solver style,
      with :func:`tsearch.solved_root_slot` to act on a found solution);
      off (the default) is mctx's rule.
    leaves_per_step: leaves selected per tree in one step (virtual loss:
      each pending leaf counts as a visit worth the tree's lowest value
      until it is evaluated) and expanded in one ``expand_fn`` call of
      ``B * leaves_per_step`` rows (``jax.vmap`` over the leaves). 1 (the
      default) is mctx's one-leaf loop; the total stays ``num_simulations``.
    curiosity_weight: ``w >= 0``, a curiosity (surprisal) exploration bonus
      in the style of COS(M+O)S: every node's PUCT score of slot ``a`` gains
      ``w * min(-log P(a), 10) / (1 + n(a))``, with ``P`` the prior the PUCT
      term uses (Dirichlet noise included at the root), ``n(a)`` the
      child's visits and the surprisal capped at 10 nats
      (``selection.MAX_SURPRISAL``) so zero-prior slots stay finite. It
      spreads visits towards children the prior finds unlikely. 0 (the
      default) leaves the term out: mctx's rule, bit for bit.
    store_fn: optional ``(tree, embedding, node_index [B], ok [B]) ->
      (tree, node_embedding, stored [B])``, called before each new node is
      stored: it may write part of ``expand_fn``'s embedding into the
      per-tree ``Tree.arena`` (e.g. a paged KV pool) and returns what is
      stored per node (matching ``tree.embeddings``) and the rows actually
      stored (``<= ok``; it marks refused rows ``overflowed`` itself; their
      simulation is dropped as for a full tree). None: the embedding is
      stored per node as it is.

  Returns:
    :class:`PolicyOutput` with ``action [B]``, ``action_weights [B, K]`` (the
    root visit distribution; zero on illegal slots) and the tree.
  """
  _check_max_depth(max_depth)
  _check_leaves(leaves_per_step)
  _check_curiosity(curiosity_weight)
  tree = _prepare_tree(root, num_simulations, capacity, tree)
  rng_key, dirichlet_key, search_key = jax.random.split(rng_key, 3)

  # Dirichlet noise at the root, as mctx.muzero_policy.
  b, k = tree.batch_size, tree.num_children
  root_logits = tree.children_prior_logits[:, ROOT_INDEX]
  root_mask = tree.children_mask[:, ROOT_INDEX]
  noise = jax.random.dirichlet(
      dirichlet_key, alpha=jnp.full([k], fill_value=dirichlet_alpha),
      shape=(b,))
  probs = jax.nn.softmax(root_logits)
  noisy = (1 - dirichlet_fraction) * probs + dirichlet_fraction * noise
  root_logits = sel.mask_logits(sel.logits_from_probs(noisy), root_mask)
  tree = tree.replace(
      children_prior_logits=tree.children_prior_logits.at[:, ROOT_INDEX].set(
          jnp.where((tree.num_nodes > 0)[:, None], root_logits,
                    tree.children_prior_logits[:, ROOT_INDEX])))

  def select(rows, keys):  # The same rule at the root and below it.
    return sel.puct_select(rows, sel.tie_break_noise(keys, k),
                           pb_c_init=pb_c_init, pb_c_base=pb_c_base,
                           qtransform=qtransform,
                           curiosity_weight=curiosity_weight)

  tree = _run(params, search_key, tree, expand_fn,
              num_simulations=num_simulations, max_depth=max_depth,
              root_select=select, interior_select=select, uses_noise=True,
              skip_dead_ends=skip_dead_ends, leaves_per_step=leaves_per_step,
              store_fn=store_fn)

  # Act proportionally to visit_counts ** (1 / temperature).
  root_mask = tree.children_mask[:, ROOT_INDEX]
  visits = tree.children_visits[:, ROOT_INDEX].astype(tree.node_values.dtype)
  total = jnp.sum(visits, axis=-1, keepdims=True)
  legal = root_mask.astype(visits.dtype)
  uniform = legal / jnp.maximum(jnp.sum(legal, -1, keepdims=True), 1.)
  action_weights = jnp.where(total > 0, visits / jnp.maximum(total, 1),
                             uniform)
  logits = sel.logits_from_probs(action_weights)
  logits = logits - jnp.max(logits, axis=-1, keepdims=True)
  logits = logits / jnp.maximum(jnp.finfo(logits.dtype).tiny, temperature)
  logits = jnp.where(root_mask | ~jnp.any(root_mask, -1, keepdims=True),
                     logits, -jnp.inf)
  action = jax.random.categorical(rng_key, logits).astype(jnp.int32)
  return PolicyOutput(action=action, action_weights=action_weights,
                      search_tree=tree)


def gumbel_search(
    params: Any,
    rng_key: Array,
    root: Optional[RootOutput],
    expand_fn: ExpandFn,
    *,
    num_simulations: int,
    max_num_considered_actions: int = 16,
    gumbel_scale: float = 1.0,
    qtransform: sel.QTransform = mctx.qtransform_completed_by_mix_value,
    capacity: Optional[int] = None,
    max_depth: Optional[int] = None,
    tree: Optional[Tree] = None,
    leaves_per_step: int = 1,
    store_fn: Optional[StoreFn] = None,
) -> PolicyOutput:
  """Gumbel MuZero search (``mctx.gumbel_muzero_policy``).

  Samples Gumbel noise for the root slots, runs Sequential Halving over the
  top ``max_num_considered_actions`` legal slots at the root and the
  deterministic Full Gumbel MuZero rule below it; acts with the best
  considered slot and returns the completed-Q improved policy
  ``softmax(prior_logits + completed_q)`` as ``action_weights``.
  Wrap the call in ``jax.jit``.

  Args:
    params: forwarded to ``expand_fn``.
    rng_key: a JAX key; the same key gives the same tree.
    root: the evaluated roots ``[B, K]``; may be None when ``tree`` is given
      and no row of it is empty.
    expand_fn: ``(params, rng_key, tree, parent_index [B], action_slot [B])
      -> ExpandOutput``; see :mod:`tsearch.base`.
    num_simulations: simulations per tree (a Python int).
    max_num_considered_actions: how many root slots Sequential Halving starts
      with; fewer when fewer slots are legal (as in mctx).
    gumbel_scale: scale of the Gumbel noise (0 for deterministic evaluation).
    qtransform: an mctx Q transform ``(mctx_tree, node_index) -> [K]``.
    capacity: nodes per tree for a new tree; default ``num_simulations + 1``.
    max_depth: maximum number of edges from the root to a selected leaf.
    tree: continue from this tree; Sequential Halving then schedules only the
      visits this call adds (the root's earlier visits still inform the
      completed Q-values).
    leaves_per_step: as in :func:`puct_search`. At the root, Sequential
      Halving's schedule reads the visits counted so far, virtual ones
      included, so the L leaves of a step take the schedule's next L
      entries (the same visits as L one-leaf steps, whose Q-values are
      only known after the step).
    store_fn: as in :func:`puct_search`.

  Returns:
    :class:`PolicyOutput` with ``action [B]``, ``action_weights [B, K]`` and
    the tree.
  """
  _check_max_depth(max_depth)
  _check_leaves(leaves_per_step)
  if (not isinstance(max_num_considered_actions, (int, np.integer))
      or max_num_considered_actions < 1):
    raise ValueError(
        "max_num_considered_actions must be a positive int; got "
        f"{max_num_considered_actions!r}.")
  tree = _prepare_tree(root, num_simulations, capacity, tree)
  b, k = tree.batch_size, tree.num_children
  # As mctx: mask the root prior, then draw the Gumbel noise.
  root_logits = sel.mask_logits(tree.children_prior_logits[:, ROOT_INDEX],
                                tree.children_mask[:, ROOT_INDEX])
  tree = tree.replace(
      children_prior_logits=tree.children_prior_logits.at[:, ROOT_INDEX].set(
          jnp.where((tree.num_nodes > 0)[:, None], root_logits,
                    tree.children_prior_logits[:, ROOT_INDEX])))
  rng_key, gumbel_key = jax.random.split(rng_key)
  gumbel = gumbel_scale * jax.random.gumbel(
      gumbel_key, shape=(b, k), dtype=tree.children_prior_logits.dtype)
  start_visits = tree.children_visits[:, ROOT_INDEX]
  m = min(max_num_considered_actions, k)
  table = sel.considered_visits_table(m, max(num_simulations, 1))

  root_select = lambda rows, keys: sel.gumbel_root_select(
      rows, gumbel, start_visits, table=table,
      max_num_considered_actions=m, qtransform=qtransform)
  interior_select = lambda rows, keys: sel.gumbel_interior_select(
      rows, qtransform=qtransform)
  tree = _run(params, rng_key, tree, expand_fn,
              num_simulations=num_simulations, max_depth=max_depth,
              root_select=root_select, interior_select=interior_select,
              uses_noise=False, leaves_per_step=leaves_per_step,
              store_fn=store_fn)

  root_rows = sel.gather_rows(tree, jnp.zeros((b,), jnp.int32))
  action, action_weights = sel.gumbel_root_policy(
      root_rows, gumbel, start_visits, qtransform=qtransform)
  action_weights = jnp.where(_root_ok(tree)[:, None], action_weights, 0.)
  return PolicyOutput(action=action, action_weights=action_weights,
                      search_tree=tree)
