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


_ACTIVATIONS = ("silu", "gelu_tanh")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
  """RoPE frequency scaling of long-context checkpoints.

  Attributes:
    kind: ``'linear'`` (positions divided by ``factor``: every frequency
      over ``factor``) or ``'llama3'`` (Llama 3.1's band-wise scaling).
    factor: the scaling factor.
    low_freq_factor, high_freq_factor, original_max_position_embeddings:
      Llama 3's band edges: wavelengths above
      ``original_max_position_embeddings / low_freq_factor`` are divided by
      ``factor``, below ``... / high_freq_factor`` kept, and interpolated
      between.
  """
  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.kind not in ("linear", "llama3"):
      raise ValueError(f"RopeScaling.kind must be 'linear' or 'llama3', got "
                       f"{self.kind!r}.")
    if not self.factor > 0:
      raise ValueError(f"RopeScaling.factor must be > 0, got {self.factor}.")
    if self.kind == "llama3" and not (
        0 < self.low_freq_factor < self.high_freq_factor):
      raise ValueError("llama3 RoPE scaling needs 0 < low_freq_factor < "
                       f"high_freq_factor, got {self.low_freq_factor}, "
                       f"{self.high_freq_factor}.")


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: RopeScaling | None) -> np.ndarray:
  """``[head_dim / 2]`` float32 inverse frequencies, as the reference computes
  them (float32 powers, then the scaling)."""
  exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32)
  inv = (1.0 / (np.float32(theta) ** (exponent / np.float32(head_dim)))
         ).astype(np.float32)
  if scaling is None:
    return inv
  if scaling.kind == "linear":
    return (inv / np.float32(scaling.factor)).astype(np.float32)
  old = scaling.original_max_position_embeddings
  low_wavelen = old / scaling.low_freq_factor
  high_wavelen = old / scaling.high_freq_factor
  wavelen = 2 * np.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
  smooth = ((old / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


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
    qkv_bias: biases on the q/k/v projections (Qwen2).
    o_bias: a bias on the output projection.
    qk_norm: RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3).
    norm_offset: RMSNorm multiplies by ``norm_offset + w`` (Gemma: 1.0).
    scale_embeddings: embeddings times ``sqrt(d_model)`` (Gemma).
    activation: MLP gate activation, ``'silu'`` (SwiGLU) or ``'gelu_tanh'``
      (GeGLU, Gemma).
    sandwich_norm: Gemma's four norms per layer: ``post_attention_layernorm``
      and ``post_feedforward_layernorm`` normalise the attention and MLP
      outputs before the residual add, ``pre_feedforward_layernorm`` the MLP
      input (with it off, ``post_attention_layernorm`` is Llama's pre-MLP
      norm).
    query_pre_attn_scalar: attention scores are scaled by this ``** -0.5``
      (default ``head_dim``).
    attn_logit_softcap: scores become ``c * tanh(scores / c)`` (None: off).
    final_logit_softcap: logits become ``c * tanh(logits / c)`` (None: off).
    rope_scaling: :class:`RopeScaling` of the global (full-attention)
      layers' RoPE, or None.
    layer_types: per layer ``'full'`` or ``'sliding'`` (None: all full).
    sliding_window: a sliding layer's query at position ``q`` sees keys at
      positions ``k`` with ``q - window < k <= q``.
    rope_local_theta: RoPE base of the sliding layers (default rope_theta;
      they take no rope_scaling, as in Gemma 3).
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
  qkv_bias: bool = False
  o_bias: bool = False
  qk_norm: bool = False
  norm_offset: float = 0.0
  scale_embeddings: bool = False
  activation: str = "silu"
  sandwich_norm: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  rope_scaling: RopeScaling | None = None
  layer_types: tuple[str, ...] | None = None
  sliding_window: int | None = None
  rope_local_theta: float | None = None

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
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"ModelConfig.activation must be one of "
                       f"{sorted(_ACTIVATIONS)}, got {self.activation!r}.")
    if self.layer_types is not None:
      if (not isinstance(self.layer_types, tuple)
          or len(self.layer_types) != self.num_layers
          or any(t not in ("full", "sliding") for t in self.layer_types)):
        raise ValueError(
            f"ModelConfig.layer_types must be a tuple of {self.num_layers} "
            f"'full'/'sliding' entries (one per layer), got "
            f"{self.layer_types!r}.")
      if "sliding" in self.layer_types and not (
          self.sliding_window and self.sliding_window >= 1):
        raise ValueError("Sliding layers need sliding_window >= 1, got "
                         f"{self.sliding_window!r}.")
    for name in ("attn_logit_softcap", "final_logit_softcap",
                 "query_pre_attn_scalar", "rope_local_theta"):
      v = getattr(self, name)
      if v is not None and not v > 0:
        raise ValueError(f"ModelConfig.{name} must be positive or None, got "
                         f"{v!r}.")
    if self.rope_scaling is not None and not isinstance(self.rope_scaling,
                                                        RopeScaling):
      raise ValueError("ModelConfig.rope_scaling must be a RopeScaling or "
                       f"None, got {self.rope_scaling!r}.")

  def is_sliding(self, layer: int) -> bool:
    """Whether layer ``layer`` attends through the sliding window."""
    return self.layer_types is not None and self.layer_types[layer] == "sliding"

  @property
  def has_sliding_layers(self) -> bool:
    return self.layer_types is not None and "sliding" in self.layer_types

  def rope_inv_freq(self, layer: int) -> np.ndarray:
    """``[head_dim / 2]`` float32 RoPE frequencies of layer ``layer``."""
    if self.is_sliding(layer):
      return rope_inv_freq(self.head_dim, self.rope_local_theta or
                           self.rope_theta, None)
    return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

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
  # [B, C] int32 absolute positions of the keys; needed only by models with
  # sliding-window layers (which hide keys more than a window behind).
  positions: Array | None = None


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


def rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """Rotary embedding (half-split pairs, as in Llama/HF) of ``x [B,T,H,Dh]``
  with ``inv_freq [Dh/2]`` (:func:`rope_inv_freq`)."""
  angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(
      inv_freq, jnp.float32)  # [B, T, Dh/2]
  sin = jnp.sin(angle)[:, :, None, :]
  cos = jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class RMSNorm(nnx.Module):

  """RMSNorm; the scale is ``offset + w`` (``w`` starts at ``1 - offset``)."""

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype,
               offset: float = 0.0):
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype))
    self.eps = eps
    self.dtype = dtype
    self.offset = offset

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    w = self.scale[...].astype(jnp.float32)
    if self.offset:
      w = w + self.offset
    return (x32 * w).astype(self.dtype)


def _norm(dim: int, cfg: ModelConfig) -> RMSNorm:
  return RMSNorm(dim, eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                 param_dtype=cfg.params_dtype, offset=cfg.norm_offset)


def _softcap(x: Array, cap: float | None) -> Array:
  return x if cap is None else cap * jnp.tanh(x / cap)


def _linear(din, dout, cfg: ModelConfig, rngs, *, bias=False,
            out_dtype=None):
  return nnx.Linear(din, dout, use_bias=bias, dtype=cfg.compute_dtype,
                    bias_init=nnx.initializers.zeros,
                    preferred_element_type=out_dtype,
                    param_dtype=cfg.params_dtype,
                    kernel_init=nnx.initializers.normal(din ** -0.5),
                    rngs=rngs)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    h, hkv, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
    self.q_proj = _linear(d, h * dh, cfg, rngs, bias=cfg.qkv_bias)
    self.k_proj = _linear(d, hkv * dh, cfg, rngs, bias=cfg.qkv_bias)
    self.v_proj = _linear(d, hkv * dh, cfg, rngs, bias=cfg.qkv_bias)
    self.o_proj = _linear(h * dh, d, cfg, rngs, bias=cfg.o_bias)
    if cfg.qk_norm:
      self.q_norm = _norm(dh, cfg)
      self.k_norm = _norm(dh, cfg)
    self.cfg = cfg
    self.layer = layer

  def __call__(self, x, positions, self_mask, contexts):
    """``contexts``: sequence of ``(keys, values, mask, key_positions)``."""
    cfg = self.cfg
    b, t, _ = x.shape
    h, hkv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = h // hkv
    q = self.q_proj(x).reshape(b, t, h, dh)
    k = self.k_proj(x).reshape(b, t, hkv, dh)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = cfg.rope_inv_freq(self.layer)
    q = rope(q, positions, inv_freq)
    k = rope(k, positions, inv_freq)
    v = self.v_proj(x).reshape(b, t, hkv, dh)
    q = q.reshape(b, t, hkv, g, dh)
    scale = (cfg.query_pre_attn_scalar or dh) ** -0.5
    dt = cfg.compute_dtype
    cap = cfg.attn_logit_softcap
    window = cfg.sliding_window if cfg.is_sliding(self.layer) else None

    def in_window(key_positions):  # [B, C] -> [B, T, C]
      return positions[:, :, None] - key_positions[:, None, :] < window
    # Scores against each context separately, then one softmax over all of
    # them: the contexts' keys/values are read in place, never concatenated
    # (a concatenation would copy e.g. the whole prompt cache per call).
    scores, vals = [], []
    for ck, cv, cm, cpos in contexts:
      sc = _softcap(jnp.einsum("btkgd,bskd->bkgts", q, ck.astype(dt),
                               preferred_element_type=jnp.float32) * scale, cap)
      if cm.ndim == 2:
        cm = cm[:, None, :]  # same slots for every new token
      if window is not None:
        cm = cm & in_window(cpos)
      scores.append(jnp.where(cm[:, None, None], sc, _MASK_VALUE))
      vals.append(cv)
    s_self = _softcap(jnp.einsum("btkgd,bskd->bkgts", q, k,
                                 preferred_element_type=jnp.float32) * scale,
                      cap)
    if window is not None:
      self_mask = self_mask & in_window(positions)
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
    self.activation = cfg.activation

  def __call__(self, x):
    gate = self.gate_proj(x)
    if self.activation == "gelu_tanh":
      gate = jax.nn.gelu(gate, approximate=True)
    else:
      gate = nnx.silu(gate)
    return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block; with ``sandwich_norm`` Gemma's four norms."""

  def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    self.input_layernorm = _norm(cfg.d_model, cfg)
    self.self_attn = Attention(cfg, layer, rngs=rngs)
    self.post_attention_layernorm = _norm(cfg.d_model, cfg)
    if cfg.sandwich_norm:
      self.pre_feedforward_layernorm = _norm(cfg.d_model, cfg)
      self.post_feedforward_layernorm = _norm(cfg.d_model, cfg)
    self.mlp = MLP(cfg, rngs=rngs)
    self.sandwich = cfg.sandwich_norm

  def __call__(self, x, positions, self_mask, contexts):
    a, k, v = self.self_attn(self.input_layernorm(x), positions, self_mask,
                             contexts)
    if self.sandwich:
      x = x + self.post_attention_layernorm(a)
      x = x + self.post_feedforward_layernorm(
          self.mlp(self.pre_feedforward_layernorm(x)))
    else:
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
    self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs)
                            for i in range(cfg.num_layers)])
    self.norm = _norm(cfg.d_model, cfg)
    if not cfg.tie_embeddings:
      # Logits accumulate in float32 whatever the compute dtype.
      self.lm_head = _linear(cfg.d_model, cfg.vocab_size, cfg, rngs,
                             out_dtype=jnp.float32)
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
      if ctx.positions is not None and ctx.positions.shape != (b, c):
        raise ValueError(f"kv_context.positions must be [B, C] = {(b, c)}; "
                         f"got {ctx.positions.shape}.")
      if ctx.positions is None and cfg.has_sliding_layers:
        raise ValueError(
            "This model has sliding-window layers, which need the absolute "
            "position of every context key: pass KVContext(positions=[B, C]).")
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
    if cfg.scale_embeddings:  # in the compute dtype, as the reference does
      x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.compute_dtype)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      layer_ctx = [(c.keys[i], c.values[i], c.mask, c.positions)
                   for c in contexts]
      x, k, v = layer(x, positions, self_mask, layer_ctx)
      new_k.append(k)
      new_v.append(v)
    x = self.norm(x)
    if cfg.tie_embeddings:
      logits = jnp.einsum("btd,vd->btv", x, emb.astype(cfg.compute_dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = self.lm_head(x)
    logits = _softcap(logits.astype(jnp.float32), cfg.final_logit_softcap)
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
