"""Action selection on gathered node rows (PUCT and Gumbel MuZero).

The search never hands a whole tree to a selection rule. It gathers the
``[B]`` / ``[B, K]`` statistics of the one node per batch row that it is
standing on (a :class:`NodeRows`) and selects a child slot for each row.

The Q transforms are mctx's own functions (``qtransform(tree, node_index)`` on
an *unbatched* ``mctx.Tree``). :func:`apply_qtransform` wraps the gathered rows
into a one-node ``mctx.Tree`` per row and vmaps the transform over the batch,
so any mctx Q transform (including user ``functools.partial`` variants such as
``qtransform_by_min_max``) can be passed to tsearch unchanged. The arithmetic
of the selection scores follows ``mctx/_src/action_selection.py`` operation by
operation, so that, given the same keys, tsearch and mctx select the same
actions bit for bit.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import mctx
import numpy as np
# Sequential halving is not re-exported by mctx's package __init__.
from mctx._src import seq_halving

from tsearch._src.tree import Tree

Array = chex.Array
# qtransform(mctx_tree, node_index) -> [num_actions], as in mctx.
QTransform = Callable[..., Array]


class NodeRows(NamedTuple):
  """The statistics of one node per batch row."""
  node_visits: Array  # [B] int32
  node_values: Array  # [B] float32
  raw_values: Array  # [B] float32
  prior_logits: Array  # [B, K]
  visits: Array  # [B, K] int32
  values: Array  # [B, K]
  rewards: Array  # [B, K]
  discounts: Array  # [B, K]
  mask: Array  # [B, K] bool


def gather_rows(tree: Tree, node: Array) -> NodeRows:
  """Gathers the statistics of node ``node[b]`` of each tree ``b``."""
  b = jnp.arange(tree.batch_size)
  return NodeRows(
      node_visits=tree.node_visits[b, node],
      node_values=tree.node_values[b, node],
      raw_values=tree.raw_values[b, node],
      prior_logits=tree.children_prior_logits[b, node],
      visits=tree.children_visits[b, node],
      values=tree.children_values[b, node],
      rewards=tree.children_rewards[b, node],
      discounts=tree.children_discounts[b, node],
      mask=tree.children_mask[b, node],
  )


def apply_qtransform(qtransform: QTransform, rows: NodeRows) -> Array:
  """Runs an mctx Q transform on one node per batch row; returns ``[B, K]``."""
  batch, k = rows.visits.shape
  one_node = lambda x: x[:, None]  # [B, ...] -> [B, 1, ...]
  row_tree = mctx.Tree(
      node_visits=one_node(rows.node_visits),
      raw_values=one_node(rows.raw_values),
      node_values=one_node(rows.node_values),
      parents=jnp.full((batch, 1), -1, jnp.int32),
      action_from_parent=jnp.full((batch, 1), -1, jnp.int32),
      children_index=jnp.full((batch, 1, k), -1, jnp.int32),
      children_prior_logits=one_node(rows.prior_logits),
      children_visits=one_node(rows.visits),
      children_rewards=one_node(rows.rewards),
      children_discounts=one_node(rows.discounts),
      children_values=one_node(rows.values),
      embeddings=(),
      root_invalid_actions=~rows.mask,
      extra_data=None)
  return jax.vmap(qtransform, in_axes=(0, None))(
      row_tree, jnp.zeros((), jnp.int32))


def masked_argmax(scores: Array, mask: Array) -> Array:
  """Argmax over legal slots (``mask`` True); slot 0 if none is legal."""
  # -inf inside an argmax is safe (never inside a softmax).
  return jnp.argmax(jnp.where(mask, scores, -jnp.inf), axis=-1).astype(
      jnp.int32)


def mask_logits(logits: Array, mask: Array) -> Array:
  """``mctx``'s root masking: shift by the max, illegal slots get the min logit.

  A finite minimum (not -inf) keeps softmaxes NaN-free when no slot is legal.
  Softmaxes and score_considered are invariant (bit for bit) to the shift.
  """
  logits = logits - jnp.max(logits, axis=-1, keepdims=True)
  return jnp.where(mask, logits, jnp.finfo(logits.dtype).min)


def logits_from_probs(probs: Array) -> Array:
  return jnp.log(jnp.maximum(probs, jnp.finfo(probs.dtype).tiny))


def tie_break_noise(keys: Array, num_children: int) -> Array:
  """mctx's ``1e-7 * uniform`` tie-breaking noise, one key per row."""
  return 1e-7 * jax.vmap(
      lambda key: jax.random.uniform(key, (num_children,)))(keys)


# Cap of the curiosity bonus's surprisal, in nats: every slot with prior
# P < exp(-10) ~ 4.5e-5 (zero-prior and illegal slots included) counts as
# equally surprising, so the bonus stays finite and a near-impossible slot
# cannot outbid the rest without bound.
MAX_SURPRISAL = 10.0


def surprisal(prior_logits: Array) -> Array:
  """``min(-log softmax(prior_logits), MAX_SURPRISAL)``, finite everywhere.

  ``-inf`` logits (zero prior) are first raised to the dtype's finite
  minimum, as the tree stores them, so no slot gives ``inf`` or NaN.
  """
  logits = jnp.maximum(prior_logits, jnp.finfo(prior_logits.dtype).min)
  return jnp.minimum(-jax.nn.log_softmax(logits), MAX_SURPRISAL)


def _is_zero(x) -> bool:
  """True for a concrete Python / NumPy zero (the bonus is left out)."""
  return isinstance(x, (int, float, np.integer, np.floating)) and x == 0


def puct_select(rows: NodeRows, noise: Array, *, pb_c_init, pb_c_base,
                qtransform: QTransform, curiosity_weight=0.0) -> Array:
  """The MuZero PUCT rule (mctx ``muzero_action_selection``), batched.

  With node visits ``N``, child visits ``n(a)`` and prior
  ``P = softmax(prior_logits)``, the selected legal slot maximises::

    Q(a) + c(N) * P(a) * sqrt(N) / (1 + n(a))
         + curiosity_weight * min(-log P(a), MAX_SURPRISAL) / (1 + n(a))

  with ``c(N) = pb_c_init + log((N + pb_c_base + 1) / pb_c_base)`` and ``Q``
  the Q transform's values. The last term is a curiosity (surprisal) bonus
  in the style of COS(M+O)S: it favours children the prior finds unlikely
  and decays with their visits like the prior term. Surprisal is in nats and
  not normalised (a uniform prior over K slots gives ``log K``).
  ``curiosity_weight = 0`` (a Python number) leaves the term out: mctx's
  rule, bit for bit.

  Args:
    rows: the node of each row.
    noise: ``[B, K]`` tie-breaking noise (:func:`tie_break_noise`).
    pb_c_init: c_1 of the PUCT formula.
    pb_c_base: c_2 of the PUCT formula.
    qtransform: an mctx Q transform.
    curiosity_weight: weight of the surprisal bonus (>= 0; 0: off).

  Returns:
    ``[B]`` int32 selected legal slots.
  """
  node_visit = rows.node_visits[:, None]
  pb_c = pb_c_init + jnp.log((node_visit + pb_c_base + 1.) / pb_c_base)
  prior_probs = jax.nn.softmax(rows.prior_logits)
  policy_score = (jnp.sqrt(node_visit) * pb_c * prior_probs
                  / (rows.visits + 1))
  value_score = apply_qtransform(qtransform, rows)
  score = value_score + policy_score
  if not _is_zero(curiosity_weight):
    score = score + (curiosity_weight * surprisal(rows.prior_logits)
                     / (rows.visits + 1))
  return masked_argmax(score + noise, rows.mask)


def gumbel_interior_select(rows: NodeRows, *,
                           qtransform: QTransform) -> Array:
  """Full Gumbel MuZero's deterministic interior selection, batched."""
  completed_qvalues = apply_qtransform(qtransform, rows)
  probs = jax.nn.softmax(rows.prior_logits + completed_qvalues)
  # mctx action_selection._prepare_argmax_input.
  to_argmax = probs - rows.visits / (
      1 + jnp.sum(rows.visits, axis=-1, keepdims=True))
  return masked_argmax(to_argmax, rows.mask)


def considered_visits_table(max_num_considered_actions: int,
                            num_simulations: int) -> Array:
  """``[M + 1, num_simulations]`` sequential-halving schedule (from mctx)."""
  return jnp.asarray(seq_halving.get_table_of_considered_visits(
      max_num_considered_actions, num_simulations), jnp.int32)


def gumbel_root_select(rows: NodeRows, gumbel: Array, start_visits: Array, *,
                       table: Array, max_num_considered_actions: int,
                       qtransform: QTransform) -> Array:
  """Sequential halving with Gumbel at the root, batched.

  ``start_visits`` are the root's child visits before this search call; the
  halving schedule counts only the visits added by this call (with a fresh
  tree they are zero and this is exactly mctx's rule).
  """
  completed_qvalues = apply_qtransform(qtransform, rows)
  new_visits = rows.visits - start_visits
  num_valid = jnp.sum(rows.mask, axis=-1).astype(jnp.int32)
  num_considered = jnp.minimum(max_num_considered_actions, num_valid)
  simulation_index = jnp.sum(new_visits, axis=-1)
  considered_visit = table[num_considered, simulation_index]
  to_argmax = jax.vmap(seq_halving.score_considered)(
      considered_visit, gumbel, rows.prior_logits, completed_qvalues,
      new_visits)
  return masked_argmax(to_argmax, rows.mask)


def gumbel_root_policy(rows: NodeRows, gumbel: Array, start_visits: Array, *,
                       qtransform: QTransform) -> tuple[Array, Array]:
  """Gumbel MuZero's action and completed-Q improved policy at the root."""
  completed_qvalues = apply_qtransform(qtransform, rows)
  new_visits = rows.visits - start_visits
  considered_visit = jnp.max(new_visits, axis=-1)
  to_argmax = jax.vmap(seq_halving.score_considered)(
      considered_visit, gumbel, rows.prior_logits, completed_qvalues,
      new_visits)
  action = masked_argmax(to_argmax, rows.mask)
  weights = jax.nn.softmax(
      mask_logits(rows.prior_logits + completed_qvalues, rows.mask))
  weights = jnp.where(jnp.any(rows.mask, -1, keepdims=True), weights, 0.)
  return action, weights
