"""Autoregressive sampling with an ordinary KV cache (prefill, then a scan).

Padding: ``prompt_tokens`` is ``[B, P]`` with ``prompt_lengths[b]`` real tokens.
With ``padding_side='right'`` (default) row ``b``'s prompt is
``prompt_tokens[b, :prompt_lengths[b]]``; with ``'left'`` it is
``prompt_tokens[b, P - prompt_lengths[b]:]``. Either way the real tokens get
positions ``0 .. len-1`` and padding is never attended, so both layouts give the
same result. Pad slots may hold any in-vocabulary id.
"""
from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from models.transformer import KVContext, check_tokens, forward

Array = chex.Array
_NEG = -1e30


@chex.dataclass(frozen=True)
class GenerateOutput:
  """Sampled continuations.

  ``tokens`` after a row's EOS (and beyond its length) hold ``pad_id``.
  ``logprobs[b, t]`` is the log-probability of ``tokens[b, t]`` under the
  policy: the model's logits with the legal mask applied, temperature 1, no
  top-k/top-p truncation (0 beyond the row's length). ``values[b, t]`` is the
  value head after ``tokens[b, t]`` is appended.
  """
  tokens: Array  # [B, M] int32
  lengths: Array  # [B] int32, generated tokens including the EOS
  logprobs: Array  # [B, M] float32
  values: Array  # [B, M] float32


def process_logits(logits: Array, *, temperature: float = 1.0,
                   top_k: int | None = None,
                   top_p: float | None = None) -> Array:
  """Temperature, then top-k, then top-p (nucleus) filtering of ``[..., V]``.

  Removed entries get a large negative logit. The most likely token always
  survives.
  """
  x = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(x, top_k)[0][..., -1:]
    x = jnp.where(x >= kth, x, _NEG)
  if top_p is not None:
    sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above
    keep_sorted = before < top_p
    # Smallest kept logit is the threshold.
    thresh = jnp.min(jnp.where(keep_sorted, sorted_x, jnp.inf), axis=-1,
                     keepdims=True)
    x = jnp.where(x >= thresh, x, _NEG)
  return x


def _check_sampling_args(vocab_size, max_new_tokens, temperature, top_k,
                         top_p):
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), "
                     f"got {temperature}.")
  if top_k is not None and not 1 <= top_k <= vocab_size:
    raise ValueError(f"top_k must be in [1, vocab_size={vocab_size}], got "
                     f"{top_k}.")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")


def prompt_layout(prompt_tokens: Array, prompt_lengths: Array,
                  padding_side: str = "right"):
  """``(valid [B, P] bool, positions [B, P] int32, last_index [B])``."""
  if padding_side not in ("right", "left"):
    raise ValueError(f"padding_side must be 'right' or 'left', got "
                     f"{padding_side!r}.")
  b, p = prompt_tokens.shape
  idx = jnp.arange(p)[None, :]
  lengths = prompt_lengths.astype(jnp.int32)[:, None]
  if padding_side == "right":
    valid = idx < lengths
    positions = idx
    last = prompt_lengths - 1
  else:
    valid = idx >= p - lengths
    positions = jnp.maximum(idx - (p - lengths), 0)
    last = jnp.full((b,), p - 1)
  positions = jnp.broadcast_to(positions, (b, p)).astype(jnp.int32)
  return valid, positions, last.astype(jnp.int32)


def generate(graphdef: nnx.GraphDef, state: nnx.State, prompt_tokens: Array,
             prompt_lengths: Array, rng_key: Array, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False,
             eos_id: int | None = None, pad_id: int = 0,
             padding_side: str = "right",
             logits_mask_fn: Callable[[Array, Array], Array] | None = None,
             ) -> GenerateOutput:
  """Samples ``max_new_tokens`` tokens after each prompt. Jittable.

  Hyperparameters must be static under ``jax.jit`` (close over them or mark
  them static).

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    prompt_tokens: ``[B, P]`` int32, padded (see module docstring).
    prompt_lengths: ``[B]`` int32 in ``[1, P]``.
    rng_key: PRNG key; the same key gives the same tokens.
    max_new_tokens: ``M``; ``P + M`` must not exceed ``max_seq_len``.
    temperature, top_k, top_p: sampling filters (see :func:`process_logits`).
    greedy: take the argmax of the (masked) logits instead of sampling.
    eos_id: token that ends a row; later tokens are ``pad_id``.
    pad_id: filler for tokens after a row's end.
    padding_side: ``'right'`` or ``'left'`` prompt padding.
    logits_mask_fn: optional ``fn(generated [B, M], step) -> [B, V]`` bool of
      legal next tokens (``generated`` holds the tokens so far, ``pad_id``
      beyond ``step``). Rows with no legal token fall back to the unmasked
      logits (all tokens allowed), so decoding never NaNs.

  Returns:
    :class:`GenerateOutput`.
  """
  model = nnx.merge(graphdef, state)
  cfg = model.config
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  if prompt_tokens.ndim != 2 or prompt_lengths.shape != prompt_tokens.shape[:1]:
    raise ValueError(f"prompt_tokens must be [B, P] and prompt_lengths [B]; "
                     f"got {prompt_tokens.shape} and {prompt_lengths.shape}.")
  b, p = prompt_tokens.shape
  m = max_new_tokens
  _check_sampling_args(cfg.vocab_size, m, temperature, top_k, top_p)
  if p + m > cfg.max_seq_len:
    raise ValueError(
        f"prompt length {p} + max_new_tokens {m} = {p + m} exceeds the model's "
        f"max_seq_len={cfg.max_seq_len}; shorten the prompt or generate less.")
  check_tokens(prompt_tokens, cfg.vocab_size, "prompt_tokens")
  if not isinstance(prompt_lengths, jax.core.Tracer):
    if prompt_lengths.min() < 1 or prompt_lengths.max() > p:
      raise ValueError(f"prompt_lengths must lie in [1, {p}], got "
                       f"{prompt_lengths.tolist()}.")

  valid, positions, last = prompt_layout(prompt_tokens, prompt_lengths,
                                         padding_side)
  out = forward(graphdef, state, prompt_tokens, positions, token_mask=valid)
  rows = jnp.arange(b)
  logits0 = out.logits[rows, last]  # [B, V]
  pad = ((0, 0), (0, 0), (0, m), (0, 0), (0, 0))
  cache = KVContext(keys=jnp.pad(out.keys, pad), values=jnp.pad(out.values, pad),
                    mask=jnp.pad(valid, ((0, 0), (0, m))))

  def step(carry, inputs):
    cache, logits, generated, done, lengths = carry
    t, key = inputs
    if logits_mask_fn is not None:
      legal = logits_mask_fn(generated, t)
      legal = legal | ~jnp.any(legal, axis=-1, keepdims=True)
      logits = jnp.where(legal, logits, _NEG)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
      tok = jnp.argmax(logits, axis=-1)
    else:
      filt = process_logits(logits, temperature=temperature, top_k=top_k,
                            top_p=top_p)
      tok = jax.random.categorical(key, filt, axis=-1)
    tok = tok.astype(jnp.int32)
    lp = logp[rows, tok]
    tok = jnp.where(done, pad_id, tok)
    lp = jnp.where(done, 0.0, lp)
    lengths = lengths + (~done).astype(jnp.int32)
    generated = generated.at[:, t].set(tok)
    newly_done = done if eos_id is None else done | (tok == eos_id)
    o = forward(graphdef, state, tok[:, None], (prompt_lengths + t)[:, None],
                kv_context=cache)
    slot = p + t
    cache = KVContext(
        keys=jax.lax.dynamic_update_slice_in_dim(cache.keys, o.keys, slot, 2),
        values=jax.lax.dynamic_update_slice_in_dim(cache.values, o.values,
                                                   slot, 2),
        mask=cache.mask.at[:, slot].set(True))
    value = jnp.where(done, 0.0, o.value[:, 0])
    return (cache, o.logits[:, 0], generated, newly_done, lengths), (
        tok, lp, value)

  keys = jax.random.split(rng_key, m)
  init = (cache, logits0, jnp.full((b, m), pad_id, jnp.int32),
          jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32))
  (_, _, _, _, lengths), (toks, lps, vals) = jax.lax.scan(
      step, init, (jnp.arange(m), keys))
  return GenerateOutput(tokens=toks.T, lengths=lengths, logprobs=lps.T,
                        values=vals.T)
