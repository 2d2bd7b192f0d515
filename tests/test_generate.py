"""Tests for models.generate: greedy == repeated full forwards, sampling."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models

CFG = models.ModelConfig(vocab_size=23, num_layers=2, d_model=32, num_heads=4,
                         num_kv_heads=2, head_dim=8, mlp_dim=48, max_seq_len=32)
G, S = nnx.split(models.Transformer(CFG, rngs=nnx.Rngs(0)))
PROMPT = jax.random.randint(jax.random.key(1), (3, 6), 0, CFG.vocab_size)
LENGTHS = jnp.array([6, 3, 4])


@functools.lru_cache(maxsize=None)
def _compiled(items):
  return jax.jit(functools.partial(models.generate, G, **dict(items)))


def gen(key=jax.random.key(0), prompt=PROMPT, lengths=LENGTHS, **kw):
  kw.setdefault("max_new_tokens", 5)
  return _compiled(tuple(sorted(kw.items())))(S, prompt, lengths, key)


def test_greedy_equals_argmax_of_full_forwards():
  out = gen(greedy=True)
  fwd = jax.jit(models.forward)
  pos = jnp.arange(11)[None]
  for b in range(3):
    seq = list(np.asarray(PROMPT[b, :LENGTHS[b]]))
    for t in range(5):
      # Causal, so right padding to a fixed length leaves position -1 exact.
      x = jnp.array([seq + [0] * (11 - len(seq))])
      last = fwd(G, S, x, pos).logits[0, len(seq) - 1]
      tok = int(jnp.argmax(last))
      assert int(out.tokens[b, t]) == tok
      np.testing.assert_allclose(out.logprobs[b, t],
                                 jax.nn.log_softmax(last)[tok], atol=1e-4)
      seq.append(tok)
    x = jnp.array([seq + [0] * (11 - len(seq))])
    o = fwd(G, S, x, pos)
    np.testing.assert_allclose(out.values[b], o.value[0, len(seq) - 5:len(seq)],
                               atol=1e-4)
  np.testing.assert_array_equal(out.lengths, 5)


def test_left_padding_equals_right_padding():
  left = jnp.stack([jnp.roll(PROMPT[b], 6 - int(LENGTHS[b])) for b in range(3)])
  r = gen(greedy=True)
  l = gen(greedy=True, prompt=left, padding_side="left")
  np.testing.assert_array_equal(r.tokens, l.tokens)
  np.testing.assert_allclose(r.logprobs, l.logprobs, atol=1e-4)


def test_sampling_reproducible_and_key_dependent():
  a = gen(jax.random.key(7), max_new_tokens=8)
  b = gen(jax.random.key(7), max_new_tokens=8)
  c = gen(jax.random.key(8), max_new_tokens=8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_top_k_and_top_p_restrict_support():
  logits = jax.random.normal(jax.random.key(3), (4, CFG.vocab_size)) * 3
  k = models.process_logits(logits, top_k=3)
  assert ((k > -1e29).sum(-1) == 3).all()
  top3 = jax.lax.top_k(logits, 3)[1]
  assert (jnp.take_along_axis(k, top3, -1) > -1e29).all()
  p = models.process_logits(logits, top_p=0.5)
  probs = jax.nn.softmax(logits)
  kept = p > -1e29
  # Kept set is the smallest prefix (by probability) with mass >= 0.5.
  mass = (probs * kept).sum(-1)
  assert (mass >= 0.5 - 1e-6).all()
  smallest_kept = jnp.where(kept, probs, 1.0).min(-1)
  assert ((mass - smallest_kept) < 0.5).all()
  # Sampled tokens: only top-1 token with top_k=1.
  g1 = gen(top_k=1)
  np.testing.assert_array_equal(g1.tokens, gen(greedy=True).tokens)
  # With top_k=2, over many keys only the 2 most likely first tokens appear.
  toks = jax.vmap(lambda key: gen(key, max_new_tokens=1, top_k=2).tokens[:, 0])(
      jax.random.split(jax.random.key(0), 64))
  full = jax.jit(models.forward)(G, S, PROMPT, jnp.broadcast_to(
      jnp.arange(6), (3, 6)))
  for b in range(3):
    allowed = set(np.asarray(jax.lax.top_k(full.logits[b, LENGTHS[b] - 1],
                                           2)[1]).tolist())
    assert set(np.asarray(toks[:, b]).tolist()) == allowed


def test_eos_and_legal_mask():
  # Only tokens 4 (and EOS=5 from step 2) are legal; EOS ends the row.
  def mask_fn(generated, step):
    allowed = jnp.zeros((3, CFG.vocab_size), bool).at[:, 4].set(True)
    return allowed.at[:, 5].set(step >= 2)
  out = gen(jax.random.key(1), max_new_tokens=8, eos_id=5, pad_id=0,
            logits_mask_fn=mask_fn, temperature=100.0)
  t = np.asarray(out.tokens)
  assert (t[:, :2] == 4).all()
  for b in range(3):
    n = int(out.lengths[b])
    assert set(t[b, :n - 1].tolist()) <= {4}
    if n < 8:
      assert t[b, n - 1] == 5 and (t[b, n:] == 0).all()
      assert (np.asarray(out.logprobs[b, n:]) == 0).all()
  assert (np.asarray(out.lengths) < 8).any()


def test_bad_inputs():
  with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
    models.generate(G, S, PROMPT, LENGTHS, jax.random.key(0),
                    max_new_tokens=27)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    models.generate(G, S, PROMPT.at[0, 0].set(99), LENGTHS, jax.random.key(0),
                    max_new_tokens=2)
  with pytest.raises(ValueError, match="top_k"):
    models.generate(G, S, PROMPT, LENGTHS, jax.random.key(0), max_new_tokens=2,
                    top_k=24)
  with pytest.raises(ValueError, match="temperature"):
    models.generate(G, S, PROMPT, LENGTHS, jax.random.key(0), max_new_tokens=2,
                    temperature=0.0)
  with pytest.raises(ValueError, match="prompt_lengths"):
    models.generate(G, S, PROMPT, jnp.array([0, 3, 7]), jax.random.key(0),
                    max_new_tokens=2)
