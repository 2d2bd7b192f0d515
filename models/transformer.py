"""A decoder-only transformer with a policy (LM) head and a scalar value head.

Llama-family layout (RoPE, RMSNorm, SwiGLU MLP, grouped-query attention) with
Llama parameter names, so that pretrained Llama/Qwen-style weights can be
mapped onto it::

  embed_tokens.embedding                      [V, D]
  layers[i].input_layernorm.scale             [D]
  layers[i].self_attn.{q,k,v,o}_proj.kernel   [D, H*Dh] ... [H*Dh, D]
  layers[i].post_attention_layernorm.scale    [D]
  layers[i].mlp.{gate,up,down}_proj.kernel
  norm.scale                                  [D]
  lm_head.kernel                              [D, V]   (absent when tied)
  value_head.kernel, value_head.bias          [D, 1], [1]

The forward is functional: new tokens at explicit positions attend to an
optional :class:`KVContext` (keys/values computed earlier, already rotated at
their own positions, with a mask) and causally among themselves. It returns
the new tokens' keys/values so that callers (a KV cache, the search tree's KV
arena) can store them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = chex.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}
# Finite, so a fully masked attention row gives a uniform mix, never NaN.
_MASK_VALUE = -1e30


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Shape and numerics of a :class:`Transformer`.

  Attributes:
    vocab_size: ``V``.
    num_layers: ``L``.
    d_model: residual width ``D``.
    num_heads: query heads ``H``.
    num_kv_heads: key/value heads ``Hkv``; must divide ``num_heads``.
    head_dim: ``Dh``; must be even (RoPE rotates pairs).
    mlp_dim: hidden width of the SwiGLU MLP.
    max_seq_len: largest position (exclusive) the model accepts.
    rope_theta: RoPE base.
    dtype: computation dtype, ``'float32'`` or ``'bfloat16'``. Logits and
      values are always returned in float32.
    param_dtype: parameter dtype.
    value_range: ``(lo, hi)``; the value head is ``tanh`` mapped onto it.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: use ``embed_tokens`` as the LM head (no ``lm_head``).
  """
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_seq_len: int
  rope_theta: float = 10000.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  value_range: tuple[float, float] = (-1.0, 1.0)
  norm_eps: float = 1e-6
  tie_embeddings: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
          f"({self.num_kv_heads}) for grouped-query attention.")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"ModelConfig.{name} must be one of "
                         f"{sorted(_DTYPES)}, got {getattr(self, name)!r}.")
    lo, hi = self.value_range
    if not lo < hi:
      raise ValueError(f"value_range must be (lo, hi) with lo < hi, got "
                       f"{self.value_range}.")
    if self.rope_theta <= 0 or self.norm_eps <= 0:
      raise ValueError("rope_theta and norm_eps must be positive.")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return _DTYPES[self.param_dtype]

  def flops_per_token(self, context_len: int = 0) -> int:
    """Approximate forward FLOPs for one token attending ``context_len`` keys."""
    d, h, hkv, dh, f = (self.d_model, self.num_heads, self.num_kv_heads,
                        self.head_dim, self.mlp_dim)
    per_layer = 2 * d * dh * (2 * h + 2 * hkv) + 2 * 3 * d * f
    attn = 2 * 2 * h * dh * context_len
    return self.num_layers * (per_layer + attn) + 2 * d * (self.vocab_size + 1)


@chex.dataclass(frozen=True)
class KVContext:
  """Keys/values that new tokens may attend to (already RoPE-rotated)."""
  keys: Array  # [L, B, C, Hkv, Dh]
  values: Array  # [L, B, C, Hkv, Dh]
  mask: Array  # [B, C] or [B, T, C] bool (per new token), True: may attend


@chex.dataclass(frozen=True)
class ModelOutput:
  """What one forward returns for the ``T`` new tokens."""
  logits: Array  # [B, T, V] float32, next-token logits (the policy)
  value: Array  # [B, T] float32, in config.value_range
  keys: Array  # [L, B, T, Hkv, Dh], rotated at the new tokens' positions
  values: Array  # [L, B, T, Hkv, Dh]


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_tokens(tokens, vocab_size: int, what: str = "tokens") -> None:
  """Raises ValueError if concrete ``tokens`` fall outside ``[0, vocab_size)``.

  Traced tokens cannot be checked; under ``jit`` an out-of-range id is NOT
  clamped: its embedding is NaN, so the logits and value are NaN (loud, never a
  silently wrong token).
  """
  if _is_concrete(tokens):
    t = np.asarray(tokens)
    if t.size and (t.min() < 0 or t.max() >= vocab_size):
      bad = t[(t < 0) | (t >= vocab_size)]
      raise ValueError(
          f"{what} contain ids outside the vocabulary [0, {vocab_size}): e.g. "
          f"{bad[:5].tolist()}. Map them into the vocabulary (or raise "
          f"vocab_size) before calling the model.")


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding (half-split pairs, as in Llama/HF) of ``x [B,T,H,Dh]``."""
  dh = x.shape[-1]
  freq = theta ** (-jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)  # [Dh/2]
  angle = positions.astype(jnp.float32)[..., None] * freq  # [B, T, Dh/2]
  sin = jnp.sin(angle)[:, :, None, :]
  cos = jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def _linear(din, dout, cfg: ModelConfig, rngs, *, bias=False):
  return nnx.Linear(din, dout, use_bias=bias, dtype=cfg.compute_dtype,
                    param_dtype=cfg.params_dtype,
                    kernel_init=nnx.initializers.normal(din ** -0.5),
                    rngs=rngs)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    h, hkv, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
    self.q_proj = _linear(d, h * dh, cfg, rngs)
    self.k_proj = _linear(d, hkv * dh, cfg, rngs)
    self.v_proj = _linear(d, hkv * dh, cfg, rngs)
    self.o_proj = _linear(h * dh, d, cfg, rngs)
    self.cfg = cfg

  def __call__(self, x, positions, self_mask, contexts):
    """``contexts``: sequence of ``(keys, values, mask)`` for this layer."""
    cfg = self.cfg
    b, t, _ = x.shape
    h, hkv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = h // hkv
    q = rope(self.q_proj(x).reshape(b, t, h, dh), positions, cfg.rope_theta)
    k = rope(self.k_proj(x).reshape(b, t, hkv, dh), positions, cfg.rope_theta)
    v = self.v_proj(x).reshape(b, t, hkv, dh)
    q = q.reshape(b, t, hkv, g, dh)
    scale = dh ** -0.5
    dt = cfg.compute_dtype
    # Scores against each context separately, then one softmax over all of
    # them: the contexts' keys/values are read in place, never concatenated
    # (a concatenation would copy e.g. the whole prompt cache per call).
    scores, vals = [], []
    for ck, cv, cm in contexts:
      sc = jnp.einsum("btkgd,bskd->bkgts", q, ck.astype(dt),
                      preferred_element_type=jnp.float32) * scale
      if cm.ndim == 2:
        cm = cm[:, None, :]  # same slots for every new token
      scores.append(jnp.where(cm[:, None, None], sc, _MASK_VALUE))
      vals.append(cv)
    s_self = jnp.einsum("btkgd,bskd->bkgts", q, k,
                        preferred_element_type=jnp.float32) * scale
    scores.append(jnp.where(self_mask[:, None, None], s_self, _MASK_VALUE))
    vals.append(v)
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(dt)
    out, offset = 0, 0
    for val in vals:
      n = val.shape[1]
      out = out + jnp.einsum("bkgts,bskd->btkgd", probs[..., offset:offset + n],
                             val.astype(dt))
      offset += n
    return self.o_proj(out.reshape(b, t, h * dh)), k, v


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.gate_proj = _linear(cfg.d_model, cfg.mlp_dim, cfg, rngs)
    self.up_proj = _linear(cfg.d_model, cfg.mlp_dim, cfg, rngs)
    self.down_proj = _linear(cfg.mlp_dim, cfg.d_model, cfg, rngs)

  def __call__(self, x):
    return self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(eps=cfg.norm_eps, dtype=cfg.compute_dtype,
              param_dtype=cfg.params_dtype)
    self.input_layernorm = RMSNorm(cfg.d_model, **kw)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.d_model, **kw)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, self_mask, contexts):
    a, k, v = self.self_attn(self.input_layernorm(x), positions, self_mask,
                             contexts)
    x = x + a
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, k, v


class Transformer(nnx.Module):
  """Decoder-only LM with a policy (LM) head and a ``tanh`` value head."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    cfg = config
    self.config = cfg
    self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.d_model,
                                  dtype=cfg.compute_dtype,
                                  param_dtype=cfg.params_dtype, rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs)
                            for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                        param_dtype=cfg.params_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = _linear(cfg.d_model, cfg.vocab_size, cfg, rngs)
    self.value_head = nnx.Linear(cfg.d_model, 1, dtype=jnp.float32,
                                 param_dtype=cfg.params_dtype,
                                 kernel_init=nnx.initializers.normal(
                                     cfg.d_model ** -0.5),
                                 rngs=rngs)

  def __call__(self, tokens: Array, positions: Array,
               kv_context: KVContext | Sequence[KVContext] | None = None,
               token_mask: Array | None = None,
               attention_mask: Array | None = None) -> ModelOutput:
    """Forward over ``T`` new tokens.

    Args:
      tokens: ``[B, T]`` int token ids in ``[0, V)``. Concrete inputs are
        checked; traced out-of-range ids give NaN outputs (never clamped).
      positions: ``[B, T]`` int positions in ``[0, max_seq_len)``, used for RoPE.
      kv_context: optional earlier keys/values every new token may attend to
        where ``kv_context.mask`` is True; or a sequence of them (e.g. prompt
        cache, tree path), attended together without being concatenated.
      token_mask: optional ``[B, T]`` bool; False marks padding among the new
        tokens: no other token attends to it. Outputs at padded positions are
        finite but meaningless.

    Returns:
      :class:`ModelOutput` with the new tokens' logits, values, keys, values.
    """
    cfg = self.config
    tokens = jnp.asarray(tokens)
    positions = jnp.asarray(positions)
    if tokens.ndim != 2 or positions.shape != tokens.shape:
      raise ValueError(f"tokens and positions must both be [B, T]; got "
                       f"{tokens.shape} and {positions.shape}.")
    b, t = tokens.shape
    if t > cfg.max_seq_len:
      raise ValueError(f"{t} new tokens exceed max_seq_len={cfg.max_seq_len}.")
    check_tokens(tokens, cfg.vocab_size)
    if _is_concrete(positions) and positions.size:
      p = np.asarray(positions)
      if p.min() < 0 or p.max() >= cfg.max_seq_len:
        raise ValueError(
            f"positions must lie in [0, max_seq_len={cfg.max_seq_len}); got "
            f"range [{p.min()}, {p.max()}]. The sequence is longer than the "
            f"model's context.")
    if kv_context is None:
      contexts = ()
    elif isinstance(kv_context, KVContext):
      contexts = (kv_context,)
    else:
      contexts = tuple(kv_context)
    for ctx in contexts:
      c = ctx.mask.shape[-1]
      shape = (cfg.num_layers, b, c, cfg.num_kv_heads, cfg.head_dim)
      if ctx.mask.shape not in ((b, c), (b, t, c)):
        raise ValueError(f"kv_context.mask must be [B, C] or [B, T, C]; got "
                         f"{ctx.mask.shape} for B={b}, T={t}.")
      if ctx.keys.shape != shape or ctx.values.shape != shape:
        raise ValueError(f"kv_context keys/values must be {shape} "
                         f"[L, B, C, Hkv, Dh]; got {ctx.keys.shape}.")
    if attention_mask is not None:
      self_mask = jnp.asarray(attention_mask, bool)
      if self_mask.shape != (b, t, t):
        raise ValueError(f"attention_mask must be [B, T, T] = {(b, t, t)}; got "
                         f"{self_mask.shape}.")
      self_mask = self_mask | jnp.eye(t, dtype=bool)
    else:
      self_mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    if token_mask is not None:
      # Keys at padded positions are hidden; the diagonal stays so that no row
      # is fully masked.
      self_mask = self_mask & (token_mask[:, None, :] | jnp.eye(t, dtype=bool))

    # 'fill' mode: an out-of-range id embeds to NaN instead of being clamped.
    emb = self.embed_tokens.embedding[...]
    x = jnp.take(emb, tokens, axis=0, mode="fill", fill_value=jnp.nan)
    x = x.astype(cfg.compute_dtype)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      layer_ctx = [(c.keys[i], c.values[i], c.mask) for c in contexts]
      x, k, v = layer(x, positions, self_mask, layer_ctx)
      new_k.append(k)
      new_v.append(v)
    x = self.norm(x)
    if cfg.tie_embeddings:
      logits = jnp.einsum("btd,vd->btv", x, emb.astype(cfg.compute_dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = self.lm_head(x)
    lo, hi = cfg.value_range
    raw = jnp.tanh(self.value_head(x.astype(jnp.float32))[..., 0])
    value = lo + (raw + 1.0) * 0.5 * (hi - lo)
    return ModelOutput(logits=logits.astype(jnp.float32),
                       value=value.astype(jnp.float32),
                       keys=jnp.stack(new_k), values=jnp.stack(new_v))


def forward(graphdef: nnx.GraphDef, state: nnx.State, tokens: Array,
            positions: Array,
            kv_context: KVContext | Sequence[KVContext] | None = None,
            token_mask: Array | None = None,
            attention_mask: Array | None = None) -> ModelOutput:
  """Pure-function forward: ``nnx.merge(graphdef, state)(tokens, ...)``.

  Split the model once with ``graphdef, state = nnx.split(model)`` and call this
  inside ``jax.jit``/``lax`` loops. See :meth:`Transformer.__call__`.
  """
  return nnx.merge(graphdef, state)(tokens, positions, kv_context, token_mask,
                                    attention_mask)


def model_config_of(graphdef: nnx.GraphDef, state: nnx.State) -> ModelConfig:
  """The :class:`ModelConfig` of a split :class:`Transformer`."""
  return nnx.merge(graphdef, state).config


def kv_cache_bytes(config: ModelConfig, num_tokens: int, batch: int = 1,
                   dtype: Any = None) -> int:
  """Bytes of keys plus values for ``num_tokens`` tokens per row."""
  itemsize = jnp.dtype(dtype or config.compute_dtype).itemsize
  return (2 * config.num_layers * batch * num_tokens * config.num_kv_heads
          * config.head_dim * itemsize)
