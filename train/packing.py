"""Forwarding a committed sequence with its candidate steps, for the
step-level losses: :func:`packed_forward` (one forward per trajectory, no
prefix repeated) and :func:`step_logprobs` (one sequence per step; the
reference the packed forward is tested against)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = chex.Array


def step_logprobs(apply_fn, params, seq: Array, start: Array, steps: Array,
                  *, pad_id: int) -> Array:
  """Log-likelihood of candidate steps after a committed prefix.

  Args:
    apply_fn: ``(params, tokens, positions, token_mask) -> ModelOutput``.
    params: model parameters.
    seq: ``[B, L]`` committed sequences (prompt + answer).
    start: ``[B, M]`` position of each node's first new token (its prefix
      is ``seq[:, :start]``).
    steps: ``[B, M, K, S]`` candidate steps, ``-1`` padded.

  Returns:
    ``[B, M, K]`` sum of the model's token log-probabilities of each step
    (one forward over ``B * M * K`` sequences of ``L + S`` tokens).
  """
  b, l = seq.shape
  _, m, k, s = steps.shape
  lc = l + s
  pos = jnp.arange(lc)
  rel = pos[None, None, None, :] - start[:, :, None, None]  # [B, M, 1, Lc]
  rel = jnp.broadcast_to(rel, (b, m, k, lc))
  step_tok = jnp.take_along_axis(steps, jnp.clip(rel, 0, s - 1), axis=-1)
  in_step = (rel >= 0) & (rel < s) & (step_tok >= 0)
  base = jnp.pad(seq, ((0, 0), (0, s)), constant_values=pad_id)
  base = jnp.broadcast_to(base[:, None, None, :], (b, m, k, lc))
  tokens = jnp.where(rel < 0, base, jnp.where(in_step, step_tok, pad_id))
  valid = (rel < 0) | in_step
  flat = lambda x: x.reshape(b * m * k, lc)  # noqa: E731
  positions = jnp.broadcast_to(pos.astype(jnp.int32), (b * m * k, lc))
  out = apply_fn(params, flat(tokens), positions, flat(valid))
  logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), -1)
  tok_lp = jnp.take_along_axis(logp, flat(tokens)[:, 1:, None], -1)[..., 0]
  tok_lp = jnp.where(flat(in_step)[:, 1:], tok_lp, 0.0)
  return tok_lp.sum(-1).reshape(b, m, k)


def packed_forward(apply_fn, params, seq: Array, length: Array,
                   start: Array, steps: Array, *, pad_id: int,
                   max_seq_len: int, choice: Array | None = None,
                   end_token: int | None = None):
  """One forward over each committed sequence and all its candidate steps.

  Row ``b`` packs ``seq[b]`` (causal) followed by the ``M * K`` candidate
  steps, each attending to the committed prefix before its node
  (``seq[b, :start[b, m]]``) and to its own earlier tokens, at the positions
  it would have after that prefix. So the committed sequence and every
  sibling step are forwarded once, with no prefix repeated.

  Args:
    apply_fn: ``(params, tokens, positions, token_mask, attention_mask)``.
    params: model parameters.
    seq: ``[B, L]`` committed sequences; ``length [B]`` their lengths.
    start: ``[B, M]`` first position after each node's prefix.
    steps: ``[B, M, K, S]`` candidate steps, ``-1`` padded.
    choice: optional ``[B, M, K, S]`` bool (the rollout's
      ``children_choice``): a step's log-probability sums only these tokens
      (forced ones count as 0).
    end_token: optional token id: also return ``[B, M, K]`` its
      log-probability right after each step (read at the step's last token;
      0 for an empty slot).

  Returns:
    ``(out, step_logprobs, step_values)``: the model output on the ``L``
    committed positions (``logits [B, L, V]``, ``value [B, L]``), ``[B, M,
    K]`` summed token log-probabilities of each step (as
    :func:`step_logprobs`) and ``[B, M, K]`` the value head at each step's
    last token (the position after the step, which the step-level search
    reads; 0 for an empty slot).
  """
  b, l = seq.shape
  _, m, k, s = steps.shape
  n = m * k * s
  flat = steps.reshape(b, n)
  tokens = jnp.concatenate([seq, jnp.where(flat >= 0, flat, pad_id)], 1)
  j = jnp.arange(n)
  group, sj = j // s, j % s  # [n]
  node = group // k  # [n] move of each step token
  step_start = start[:, node]  # [B, n]
  positions = jnp.concatenate([
      jnp.broadcast_to(jnp.arange(l), (b, l)),
      jnp.minimum(step_start + sj[None], max_seq_len - 1)], 1)
  valid = jnp.concatenate([jnp.arange(l)[None] < length[:, None],
                           flat >= 0], 1)
  # Attention: committed part causal; a step sees its prefix and itself.
  i_seq = jnp.arange(l)
  seq_q = jnp.concatenate([
      jnp.broadcast_to(i_seq[:, None] >= i_seq[None, :], (l, l)),
      jnp.zeros((l, n), bool)], 1)  # [L, L + n]
  step_to_seq = i_seq[None, None, :] < step_start[:, :, None]  # [B, n, L]
  step_to_step = (group[:, None] == group[None, :]) & (
      sj[None, :] <= sj[:, None])  # [n, n]
  step_q = jnp.concatenate([step_to_seq, jnp.broadcast_to(
      step_to_step, (b, n, n))], 2)  # [B, n, L + n]
  attn = jnp.concatenate([jnp.broadcast_to(seq_q, (b, l, l + n)), step_q], 1)
  out = apply_fn(params, tokens, positions.astype(jnp.int32), valid, attn)
  logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), -1)
  # Token sj of a step is predicted at its previous token, or for sj == 0
  # at the last token of its prefix (in the committed part).
  pred = jnp.where(sj[None] == 0, step_start - 1, l + j[None] - 1)  # [B, n]
  pred = jnp.clip(pred, 0, l + n - 1)
  lp = jnp.take_along_axis(
      jnp.take_along_axis(logp, pred[..., None], 1),
      jnp.maximum(flat, 0)[..., None], -1)[..., 0]
  counted = flat >= 0
  if choice is not None:
    counted = counted & choice.reshape(b, n)
  lp = jnp.where(counted, lp, 0.0).reshape(b, m, k, s).sum(-1)
  steps_len = (steps >= 0).sum(-1)  # [B, M, K]
  last = l + (jnp.arange(m * k) * s).reshape(m, k)[None] + steps_len - 1
  values = jnp.take_along_axis(out.value, jnp.clip(last, 0, l + n - 1)
                               .reshape(b, m * k), 1).reshape(b, m, k)
  values = jnp.where(steps_len > 0, values, 0.0)
  committed = out.replace(logits=out.logits[:, :l], value=out.value[:, :l])
  if end_token is None:
    return committed, lp, values
  end_lp = jnp.take_along_axis(logp[..., end_token], jnp.clip(
      last, 0, l + n - 1).reshape(b, m * k), 1).reshape(b, m, k)
  return committed, lp, values, jnp.where(steps_len > 0, end_lp, 0.0)
