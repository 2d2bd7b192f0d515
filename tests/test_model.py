"""Tests for models.Transformer: cached == full forward, GQA, bf16, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models

fwd = jax.jit(models.forward)


def small_config(**kw):
  base = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4,
              num_kv_heads=2, head_dim=8, mlp_dim=48, max_seq_len=64)
  base.update(kw)
  return models.ModelConfig(**base)


def split(cfg, seed=0):
  return nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(seed)))


def positions_for(b, t, start=0):
  return jnp.broadcast_to(jnp.arange(start, start + t), (b, t))


@pytest.mark.parametrize("kv_heads,tie", [(1, False), (4, True)])
def test_cached_forward_equals_full_forward(kv_heads, tie):
  cfg = small_config(num_kv_heads=kv_heads, tie_embeddings=tie)
  g, s = split(cfg)
  b, t, c = 3, 12, 7
  toks = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size)
  full = fwd(g, s, toks, positions_for(b, t))
  assert full.logits.shape == (b, t, cfg.vocab_size)
  assert full.keys.shape == (cfg.num_layers, b, t, kv_heads, cfg.head_dim)
  ctx = models.KVContext(keys=full.keys[:, :, :c], values=full.values[:, :, :c],
                         mask=jnp.ones((b, c), bool))
  part = fwd(g, s, toks[:, c:], positions_for(b, t - c, c),
                                 ctx)
  np.testing.assert_allclose(part.logits, full.logits[:, c:], atol=1e-4)
  np.testing.assert_allclose(part.value, full.value[:, c:], atol=1e-4)
  np.testing.assert_allclose(part.keys, full.keys[:, :, c:], atol=1e-4)


def test_context_mask_hides_slots_and_order_does_not_matter():
  cfg = small_config()
  g, s = split(cfg)
  b = 2
  toks = jax.random.randint(jax.random.key(2), (b, 6), 0, cfg.vocab_size)
  full = fwd(g, s, toks[:, :5], positions_for(b, 5))
  # Context: tokens 0..4 shuffled, plus two junk slots that are masked out.
  perm = jnp.array([3, 0, 4, 1, 2])
  junk = jnp.ones_like(full.keys[:, :, :2]) * 5.0
  ctx = models.KVContext(
      keys=jnp.concatenate([full.keys[:, :, perm], junk], 2),
      values=jnp.concatenate([full.values[:, :, perm], junk], 2),
      mask=jnp.array([[1, 1, 1, 1, 1, 0, 0]] * b, bool))
  o = fwd(g, s, toks[:, 5:], positions_for(b, 1, 5), ctx)
  ref = fwd(g, s, toks, positions_for(b, 6))
  np.testing.assert_allclose(o.logits[:, 0], ref.logits[:, 5], atol=1e-4)
  ctx_bad = ctx.replace(mask=jnp.ones((b, 7), bool))
  o_bad = fwd(g, s, toks[:, 5:], positions_for(b, 1, 5), ctx_bad)
  assert np.abs(o_bad.logits[:, 0] - ref.logits[:, 5]).max() > 1e-3


def test_token_mask_padding_does_not_leak():
  cfg = small_config()
  g, s = split(cfg)
  toks = jax.random.randint(jax.random.key(3), (1, 8), 0, cfg.vocab_size)
  ref = fwd(g, s, toks[:, :5], positions_for(1, 5))
  mask = jnp.arange(8)[None] < 5
  o = fwd(g, s, toks, positions_for(1, 8), token_mask=mask)
  np.testing.assert_allclose(o.logits[:, :5], ref.logits, atol=1e-4)
  assert np.isfinite(np.asarray(o.logits)).all()


def test_value_bounded_in_range():
  cfg = small_config(value_range=(0.0, 2.0))
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  # Huge value-head weights saturate the tanh.
  model.value_head.kernel[...] = model.value_head.kernel[...] * 1e4
  g, s = nnx.split(model)
  toks = jax.random.randint(jax.random.key(4), (4, 16), 0, cfg.vocab_size)
  v = fwd(g, s, toks, positions_for(4, 16)).value
  assert v.min() >= 0.0 and v.max() <= 2.0
  assert v.min() < 0.01 and v.max() > 1.99  # both ends are reached


def test_bfloat16_runs_and_is_close_to_float32():
  cfg32 = small_config()
  cfg16 = small_config(dtype="bfloat16")
  g32, s32 = split(cfg32)
  g16, _ = split(cfg16)
  toks = jax.random.randint(jax.random.key(5), (2, 10), 0, cfg32.vocab_size)
  o32 = fwd(g32, s32, toks, positions_for(2, 10))
  o16 = fwd(g16, s32, toks, positions_for(2, 10))
  assert o16.logits.dtype == jnp.float32 and o16.keys.dtype == jnp.bfloat16
  err = np.abs(np.asarray(o16.logits) - np.asarray(o32.logits)).max()
  assert 0 < err < 0.1


def test_bad_config_errors():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    small_config(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="head_dim must be even"):
    small_config(head_dim=7)
  with pytest.raises(ValueError, match="dtype"):
    small_config(dtype="float64x")
  with pytest.raises(ValueError, match="vocab_size"):
    small_config(vocab_size=0)
  with pytest.raises(ValueError, match="value_range"):
    small_config(value_range=(1.0, -1.0))


def test_bad_input_errors():
  cfg = small_config(max_seq_len=16)
  g, s = split(cfg)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    models.forward(g, s, jnp.array([[1, 37]]), positions_for(1, 2))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    models.forward(g, s, jnp.array([[-1, 2]]), positions_for(1, 2))
  with pytest.raises(ValueError, match="exceed max_seq_len"):
    fwd(g, s, jnp.zeros((1, 17), jnp.int32), positions_for(1, 17))
  with pytest.raises(ValueError, match="longer than the model's context"):
    models.forward(g, s, jnp.zeros((1, 2), jnp.int32), positions_for(1, 2, 15))
  # Under jit the ids cannot be checked: the output is NaN, never clamped.
  o = fwd(g, s, jnp.array([[1, 99]]), positions_for(1, 2))
  assert np.isnan(np.asarray(o.logits[0, 1])).all()
